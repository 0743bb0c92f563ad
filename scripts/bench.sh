#!/usr/bin/env bash
# Benchmarks, each in one run on this machine:
#   scripts/bench.sh [--dir DIR] [--size-mib N] [--small-secs S]   chunk engine vs the raw disk
#   scripts/bench.sh meta [--dir DIR] [--secs S]                    metadata service, 1 and 3 voters
#   scripts/bench.sh cluster [--dir DIR] [--size-mib N]             5-node pool: put R=1/R=3 and repair vs the raw disk
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/setup.sh
if [ "${1:-}" = meta ]; then
  shift
  cargo build --release --bins
  exec target/release/meta-bench "$@"
fi
if [ "${1:-}" = cluster ]; then
  shift
  cargo build --release --bins
  exec target/release/cluster-bench "$@"
fi
cargo build --release -p chunk-engine --bin chunk-bench
exec target/release/chunk-bench "$@"
