#!/usr/bin/env bash
# Builds Cairn and starts the local all-in-one system on embedded defaults, data under ./data
# (override with CAIRN_DATA=...). While it runs, ./data/local.env tells clients where it is.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/setup.sh
cargo build --release --bins
# cargo builds into CARGO_TARGET_DIR when it is set (relative to the repository, as cargo takes it).
exec "${CARGO_TARGET_DIR:-target}/release/cairn-local" --data "${CAIRN_DATA:-./data}" "$@"
