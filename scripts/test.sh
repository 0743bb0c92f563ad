#!/usr/bin/env bash
# Runs every test: unit tests beside the code and the integration tests in tests/, which start
# the real binaries (so they are built first), and the chart tests, which use helm and
# kubernetes-validate (installed into target/k8s-tools). Needs root for the mount tests.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/setup.sh
# The build and the tests' data need room: a full disk shows up as ENOSPC failures deep in
# the storage tests, so say it plainly up front.
free_gib=$(df -P --block-size=1G . /tmp | awk 'NR>1 {print $4}' | sort -n | head -1)
if [ "${free_gib:-0}" -lt 15 ]; then
  echo "test.sh: warning: only ${free_gib} GiB free on the build or /tmp file system; about 15 GiB are needed" >&2
fi
scripts/install-k8s-tools.sh target/k8s-tools
cargo build --workspace --bins
cargo test --workspace --no-fail-fast
