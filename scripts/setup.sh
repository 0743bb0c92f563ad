#!/usr/bin/env bash
# Installs what building and testing Cairn needs on Debian 12 (as root), only what is missing.
# Sourced by run-local.sh and test.sh; safe to run again.
set -euo pipefail

need_pkgs=(build-essential pkg-config libclang-dev librocksdb-dev fuse3 e2fsprogs xfsprogs util-linux procps iproute2 curl ca-certificates qemu-utils fio)
missing=()
for p in "${need_pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "setup: installing ${missing[*]}" >&2
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# Rust: the workspace needs 1.95 or newer (edition 2024).
if ! command -v cargo >/dev/null 2>&1; then
  if [ -x "$HOME/.cargo/bin/cargo" ]; then
    export PATH="$HOME/.cargo/bin:$PATH"
  else
    echo "setup: installing Rust with rustup" >&2
    curl -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal --default-toolchain 1.95.0 >/dev/null
    export PATH="$HOME/.cargo/bin:$PATH"
  fi
fi

# Link the system RocksDB (see .cargo/config.toml for why).
ROCKSDB_LIB_DIR="$(dirname "$(dpkg -L librocksdb-dev | grep -m1 'librocksdb\.so$')")"
export ROCKSDB_LIB_DIR
