#!/usr/bin/env bash
# Runs every test: unit tests beside the code and the integration tests in tests/, which start
# the real binaries (so they are built first). Needs root for the mount tests of later layers.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/setup.sh
cargo build --workspace --bins
cargo test --workspace --no-fail-fast
