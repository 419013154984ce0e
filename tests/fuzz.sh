#!/usr/bin/env bash
# The fuzz targets of fuzz/ (cargo-fuzz, nightly, AddressSanitizer).
#
#   bash tests/fuzz.sh                          # replay: build every target, run each once over its seeds
#                                               # (fuzz/seeds/<t>) and its regression inputs (fuzz/artifacts/<t>);
#                                               # fails if any input crashes (tests/run-all.sh runs this)
#   bash tests/fuzz.sh --minutes 10 [TARGET...] # a campaign: that long per target (all by default), one at a
#                                               # time; new inputs go to fuzz/corpus/<t>, crashes to fuzz/artifacts/<t>
#
# Needs the nightly toolchain and cargo-fuzz (tests/run-all.sh installs both). Builds into target/fuzz (or
# $KEDGE_FUZZ_TARGET_DIR), away from the library's own builds.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"

minutes=0
if [ "${1:-}" = "--minutes" ]; then
  minutes="${2:?--minutes needs a number}"
  shift 2
fi
target_dir="${KEDGE_FUZZ_TARGET_DIR:-$PWD/../target/fuzz}"
mapfile -t all < <(cargo +nightly fuzz list)
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=("${all[@]}")

# Longest input each target is given in a campaign (its README table says why).
max_len() {
  case "$1" in
    gzip_roundtrip) echo 65536 ;;
    ffi_append) echo 16384 ;;
    *) echo 8192 ;;
  esac
}

started=$SECONDS
cargo +nightly fuzz build --target-dir "$target_dir"
echo "fuzz: ${#all[@]} targets built in $((SECONDS - started)) s"

for t in "${targets[@]}"; do
  dirs=()
  [ -d "seeds/$t" ] || { echo "fuzz: $t has no seeds/$t (run: cd fuzz && cargo run --example seeds)" >&2; exit 1; }
  if [ "$minutes" -gt 0 ]; then
    mkdir -p "corpus/$t"
    dirs+=("corpus/$t")
  fi
  dirs+=("seeds/$t")
  [ -d "artifacts/$t" ] && dirs+=("artifacts/$t")
  if [ "$minutes" -gt 0 ]; then
    echo "fuzz: $t for $minutes min"
    cargo +nightly fuzz run --target-dir "$target_dir" "$t" "${dirs[@]}" -- \
      -max_total_time=$((minutes * 60)) -rss_limit_mb=2048 -max_len="$(max_len "$t")" -print_final_stats=1
  else
    # -runs=0: execute every input of the given directories once, fuzz nothing.
    n=$(find "${dirs[@]}" -type f | wc -l)
    log=$(mktemp)
    if ! cargo +nightly fuzz run --target-dir "$target_dir" "$t" "${dirs[@]}" -- -runs=0 >"$log" 2>&1; then
      cat "$log" >&2
      rm -f "$log"
      echo "fuzz: $t crashed on one of its $n seed and regression inputs (${dirs[*]})" >&2
      exit 1
    fi
    grep -q "INITED\|Done 0 runs\|DONE" "$log" || { cat "$log" >&2; echo "fuzz: $t ran nothing" >&2; exit 1; }
    rm -f "$log"
    echo "fuzz: $t: $n inputs replayed (${dirs[*]}), no crash"
  fi
done
echo "fuzz: done in $((SECONDS - started)) s"
