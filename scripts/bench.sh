#!/usr/bin/env bash
# Benchmarks the chunk engine against the raw disk, in one run on one directory.
# Usage: scripts/bench.sh [--dir DIR] [--size-mib N] [--small-secs S]
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/setup.sh
cargo build --release -p chunk-engine --bin chunk-bench
exec target/release/chunk-bench "$@"
