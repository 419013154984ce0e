#!/usr/bin/env bash
# Every test of kusto-edge, from a fresh Debian machine with a Rust toolchain (rustup): installs the C and
# cross toolchains and emulators the tests need, then runs the Rust tests, the C tests and the ARM tests.
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(gcc g++ make cmake pkg-config
          gcc-arm-linux-gnueabihf gcc-aarch64-linux-gnu libc6-dev-armhf-cross libc6-dev-arm64-cross
          g++-arm-linux-gnueabihf g++-aarch64-linux-gnu
          qemu-user-static
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
targets=(armv7-unknown-linux-gnueabihf aarch64-unknown-linux-gnu)
installed=$(rustup target list --installed)
for t in "${targets[@]}"; do
  grep -qx "$t" <<<"$installed" || rustup target add "$t"
done
rustup component list --installed 2>/dev/null | grep -q '^rustfmt' || rustup component add rustfmt

cargo fmt --all -- --check
cargo test --workspace --locked
# The library's unit tests on 32-bit ARM, under qemu (the runner in .cargo/config.toml).
cargo test --locked --lib --target armv7-unknown-linux-gnueabihf
# The soak, 3 minutes of it: kedge-send streaming and queued under random faults, SIGKILLs, full spools and
# expiring tokens; fails on a lost record, growth or a spool left non-empty (the long run: --minutes 60).
bash tests/soak.sh --minutes 3
