#!/usr/bin/env bash
# The soak: kedge-send, streaming and queued, against the test endpoint and its DM over Azurite (HTTPS on loopback,
# tokens that expire), with random faults, SIGKILLs and spools that fill up, for N minutes; then a drain with the
# faults off and the count: records sent, accepted, arrived, lost, duplicated, and a table of RSS, descriptors and
# spool bytes over time. Fails on a lost record, growth, or a spool left non-empty. See tests/soak.rs.
#
#   tests/soak.sh --minutes N [--seed S] [--report FILE]     (report: default target/soak-report.txt)
set -euo pipefail
cd "$(dirname "$0")/.."

minutes=10
while [ $# -gt 0 ]; do
  case "$1" in
    --minutes) minutes="${2:?--minutes needs a value}"; shift 2 ;;
    --seed) export SOAK_SEED="${2:?--seed needs a value}"; shift 2 ;;
    --report) export SOAK_REPORT="$(realpath -m "${2:?--report needs a file}")"; shift 2 ;;
    -h|--help) sed -n '2,7p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "soak.sh: unknown argument '$1' (see --help)" >&2; exit 64 ;;
  esac
done
case "$minutes" in
  ''|*[!0-9.]*) echo "soak.sh: --minutes '$minutes': expected a number" >&2; exit 64 ;;
esac
export SOAK_MINUTES="$minutes"
exec cargo test --locked --test soak -- --ignored --exact soak --nocapture
