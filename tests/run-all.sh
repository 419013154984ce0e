#!/usr/bin/env bash
# Every test of kusto-edge, from a fresh Debian machine with a Rust toolchain (rustup): installs the C and
# cross toolchains, emulators, valgrind, the nightly toolchain and cargo-fuzz the tests need, then runs rustfmt,
# clippy, the Rust tests, the C tests (also under valgrind's memcheck and with ASan + UBSan), the ARM tests, and
# replays the fuzz targets' seeds and regression inputs. Prints how long each step took at the end.
set -euo pipefail
cd "$(dirname "$0")/.."

# Every tool is installed below: a test that finds one missing fails instead of skipping (kusto_devserver::tools).
export KEDGE_REQUIRE_TOOLS=1
timings=()
step() {
  local name="$1" start=$SECONDS
  shift
  echo "run-all: $name"
  "$@"
  timings+=("$(printf '%5d s  %s' $((SECONDS - start)) "$name")")
}

packages=(gcc g++ make cmake pkg-config
          gcc-arm-linux-gnueabihf gcc-aarch64-linux-gnu libc6-dev-armhf-cross libc6-dev-arm64-cross
          g++-arm-linux-gnueabihf g++-aarch64-linux-gnu
          qemu-user-static
          valgrind
          python3 python3-venv python3-pip)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "run-all: installing ${missing[*]}"
  sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# Azurite (the Azure Storage emulator the devserver's data-management side stands on), pinned, needs Node.js
# and npm; the tests find it in target/azurite (or $KEDGE_AZURITE_DIR).
if ! command -v npm >/dev/null; then
  echo "run-all: installing nodejs npm"
  sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends nodejs npm >/dev/null
fi
azurite_dir="${KEDGE_AZURITE_DIR:-target/azurite}"
grep -qs '"version": "3.37.0"' "$azurite_dir/node_modules/azurite/package.json" ||
  npm install --no-save --no-audit --no-fund --prefix "$azurite_dir" azurite@3.37.0
# The official Python SDK (tests/sdk_fidelity.rs compares our queued ingestion with it), pinned, in a venv; the
# copy of the requirements inside marks a finished install, so the test itself then downloads nothing.
sdk_venv="${KEDGE_SDK_VENV:-target/sdk-venv}"
if ! cmp -s tests/sdk/requirements.txt "$sdk_venv/kedge-requirements.txt"; then
  [ -x "$sdk_venv/bin/python" ] || python3 -m venv "$sdk_venv"
  "$sdk_venv/bin/python" -m pip install --quiet --disable-pip-version-check -r tests/sdk/requirements.txt
  cp tests/sdk/requirements.txt "$sdk_venv/kedge-requirements.txt"
fi
targets=(armv7-unknown-linux-gnueabihf thumbv7neon-unknown-linux-gnueabihf aarch64-unknown-linux-gnu)
installed=$(rustup target list --installed)
for t in "${targets[@]}"; do
  grep -qx "$t" <<<"$installed" || rustup target add "$t"
done
components=$(rustup component list --installed 2>/dev/null)
grep -q '^rustfmt' <<<"$components" || rustup component add rustfmt
grep -q '^clippy' <<<"$components" || rustup component add clippy
# The fuzz targets build with nightly (-Zsanitizer=address) and cargo-fuzz, pinned.
grep -q '^nightly' <<<"$(rustup toolchain list)" || rustup toolchain install nightly --profile minimal
cargo_fuzz_version=0.13.2
grep -qF "$cargo_fuzz_version" <<<"$(cargo fuzz --version 2>/dev/null || true)" ||
  cargo install cargo-fuzz --locked --version "$cargo_fuzz_version"

step "cargo fmt --check" cargo fmt --all -- --check
step "cargo clippy" cargo clippy --workspace --all-targets --locked -- -D warnings
step "cargo test --workspace" cargo test --workspace --locked
# The core's unit tests without the optional token sources (the minimal firmware build's feature set).
step "cargo test --lib (core, no default features)" cargo test --locked --lib -p kusto-edge-core --no-default-features
# The library's unit tests on 32-bit ARM, under qemu (the runner in .cargo/config.toml).
step "cargo test --lib (armv7, qemu)" cargo test --locked --lib --target armv7-unknown-linux-gnueabihf \
  -p kusto-edge-core -p kusto-edge
# The exhaustive power-loss sweeps of the spool (#[ignore] in plain cargo test): ~25 s in the debug build that
# cargo test just made, with overflow checks on (a release build of them would cost a 3-minute build for 4 s).
step "spool power-loss sweeps" cargo test --locked --lib -p kusto-edge-core -- --ignored \
  spooled_chunks_survive_power_cuts_exhaustive recovery_itself_survives_a_second_power_cut
step "fuzz replay (seeds + artifacts)" bash tests/fuzz.sh
# The soak, 3 minutes of it: kedge-send streaming and queued under random faults, SIGKILLs, full spools and
# expiring tokens; fails on a lost record, growth or a spool left non-empty (the long run: --minutes 60).
step "soak (3 minutes)" bash tests/soak.sh --minutes 3

echo "run-all: passed; time per step:"
printf '%s\n' "${timings[@]}"
