#!/usr/bin/env bash
# Soak: runs the lifecycle harness (tests/tests/lifecycle.rs) for as many crash rounds as asked
# and prints, per frontend, the rounds, acknowledged writes and lost / wrong / partial counts.
#   scripts/soak.sh --rounds 100
# Needs root (FUSE, loop devices, mounts), like the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=20
while (($#)); do
  case "$1" in
    --rounds) rounds="$2"; shift 2 ;;
    --rounds=*) rounds="${1#*=}"; shift ;;
    -h|--help) sed -n 2,5p "$0"; exit 0 ;;
    *) echo "soak.sh: unknown argument $1 (try --rounds N)" >&2; exit 2 ;;
  esac
done
[[ "$rounds" =~ ^[1-9][0-9]*$ ]] || { echo "soak.sh: --rounds takes a positive number, not '$rounds'" >&2; exit 2; }
. scripts/setup.sh
cargo build --workspace --bins
log=$(mktemp -t cairn-soak.XXXXXX)
start=$(date +%s)
set +e
CAIRN_LIFECYCLE_ROUNDS="$rounds" cargo test -p integration-tests --test lifecycle -- --nocapture 2>&1 | tee "$log" \
  | grep --line-buffered -E '^lifecycle (round|summary|aging)'
rc=${PIPESTATUS[0]}
set -e
echo "soak: $rounds rounds in $(( $(date +%s) - start )) s; full output in $log"
grep -E '^lifecycle summary' "$log" || true
exit "$rc"
