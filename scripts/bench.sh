#!/usr/bin/env bash
# Benchmarks, each in one run on this machine:
#   scripts/bench.sh [--dir DIR] [--size-mib N] [--small-secs S]   chunk engine vs the raw disk
#   scripts/bench.sh meta [--dir DIR] [--secs S]                    metadata service, 1 and 3 voters
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/setup.sh
if [ "${1:-}" = meta ]; then
  shift
  cargo build --release --bins
  exec target/release/meta-bench "$@"
fi
cargo build --release -p chunk-engine --bin chunk-bench
exec target/release/chunk-bench "$@"
