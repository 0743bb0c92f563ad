#!/usr/bin/env bash
# Benchmarks, each in one run on this machine:
#   scripts/bench.sh [--dir DIR] [--size-mib N] [--small-secs S]   chunk engine vs the raw disk
#   scripts/bench.sh meta [--dir DIR] [--secs S]                    metadata service, 1 and 3 voters
#   scripts/bench.sh cluster [--dir DIR] [--size-mib N]             5-node pool: put R=1/R=3 and repair vs the raw disk
#   scripts/bench.sh block [--dir DIR] [--size-mib N] [--secs S] [--block-size B]
#                                                                   fio on csi-block volumes (R=1, R=3) vs a plain file; rebuild rate
#   scripts/bench.sh fs [--dir DIR] [--size-mib N] [--secs S] [--files N] [--threads N]
#                                                                   the shared filesystem (FUSE, R=1) vs ext4 on the same disk
#   scripts/bench.sh s3 [--size-mib N] [--objects N] [--small-ops N] [--clients N]
#                                                                   S3 on cairn-local vs the raw disk, MD5, blake3
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
if [ "${1:-}" = block ]; then
  shift
  cargo build --release --bins
  exec target/release/block-bench "$@"
fi
if [ "${1:-}" = fs ]; then
  shift
  cargo build --release --bins
  exec target/release/fs-bench "$@"
fi
if [ "${1:-}" = s3 ]; then
  shift
  cargo build --release --bins
  # A fresh all-in-one (storage node R=1, metadata, objectd) in a temp dir under data/ (the disk the
  # other benches measure), on free ports so a running cairn-local is left alone.
  mkdir -p data
  tmp="$(mktemp -d "$PWD/data/s3-bench.XXXXXX")"
  pid=""
  stop() {
    if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
      kill -TERM "$pid" 2>/dev/null || true
      for _ in $(seq 1 300); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
      kill -0 "$pid" 2>/dev/null && { echo "bench: cairn-local did not stop on SIGTERM; killing it" >&2; kill -KILL "$pid" 2>/dev/null || true; }
      wait "$pid" 2>/dev/null || true
    fi
    rm -rf "$tmp"
  }
  trap stop EXIT
  trap 'exit 130' INT TERM
  port_free() { ! ss -Htln 2>/dev/null | awk '{print $4}' | grep -qE "[:.]$1\$"; }
  for _ in $(seq 1 50); do
    base=$((20000 + RANDOM % 30000))
    ok=1
    for off in 0 1 2 3 4 5 6; do port_free $((base + off)) || { ok=0; break; }; done
    [ "$ok" = 1 ] && break
  done
  export CAIRN_LOCAL_NODE_LISTEN=127.0.0.1:$base CAIRN_LOCAL_NODE_HTTP=127.0.0.1:$((base + 1))
  export CAIRN_LOCAL_META_LISTEN=127.0.0.1:$((base + 2)) CAIRN_LOCAL_META_PEER=127.0.0.1:$((base + 3))
  export CAIRN_LOCAL_META_HTTP=127.0.0.1:$((base + 4)) CAIRN_LOCAL_S3_LISTEN=127.0.0.1:$((base + 5))
  export CAIRN_LOCAL_S3_HTTP=127.0.0.1:$((base + 6))
  target/release/cairn-local --data "$tmp" >"$tmp/cairn-local.log" 2>&1 &
  pid=$!
  for _ in $(seq 1 600); do
    [ -f "$tmp/local.env" ] && break
    if ! kill -0 "$pid" 2>/dev/null; then
      echo "bench: cairn-local exited before it was ready; its log:" >&2
      tail -n 20 "$tmp/cairn-local.log" >&2
      exit 1
    fi
    sleep 0.1
  done
  if [ ! -f "$tmp/local.env" ]; then
    echo "bench: cairn-local wrote no $tmp/local.env within 60 s; its log:" >&2
    tail -n 20 "$tmp/cairn-local.log" >&2
    exit 1
  fi
  set -a
  . "$tmp/local.env"
  set +a
  status=0
  target/release/s3-bench --dir "$tmp/bench" "$@" || status=$?
  if [ "$status" != 0 ]; then
    echo "bench: s3-bench failed; the last lines of cairn-local's log:" >&2
    tail -n 10 "$tmp/cairn-local.log" >&2
  fi
  exit "$status"
fi
cargo build --release -p chunk-engine --bin chunk-bench
exec target/release/chunk-bench "$@"
