#!/usr/bin/env bash
# Makes sure the S3 client tools used by the objectd tests are installed: a Python interpreter
# with boto3 and the aws CLI (run as `<python> -m awscli`), and rclone. Idempotent; prints
# nothing but errors, and on its last stdout line the path of that Python interpreter.
# Works on a fresh Debian 12 as root (uses sudo only when not root).
#
#   PY=$(scripts/s3-tools.sh | tail -n1); "$PY" tests/s3/objects.py
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
apt_updated=""
# Runs a command quietly; shows what it printed only when it fails.
quiet() {
  local out
  if ! out=$("$@" 2>&1); then
    echo "s3-tools: '$*' failed:" >&2
    echo "$out" >&2
    return 1
  fi
}
apt_install() {
  if [ -z "$apt_updated" ]; then
    quiet $SUDO apt-get update -qq
    apt_updated=1
  fi
  quiet $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@"
}
have_pkg() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"; }

# rclone
if ! command -v rclone >/dev/null 2>&1; then
  apt_install rclone ca-certificates
fi

# Python with boto3 + awscli.
py=""
if command -v python3 >/dev/null 2>&1 && python3 -c 'import boto3, awscli' >/dev/null 2>&1 && command -v aws >/dev/null 2>&1; then
  py=$(python3 -c 'import sys; print(sys.executable)')
else
  venv="$PWD/target/s3-tools/venv"
  if ! [ -x "$venv/bin/python" ] || ! "$venv/bin/python" -c 'import boto3, awscli' >/dev/null 2>&1; then
    command -v python3 >/dev/null 2>&1 || apt_install python3
    if ! python3 -c 'import venv, ensurepip' >/dev/null 2>&1; then
      have_pkg python3-venv || apt_install python3-venv
    fi
    rm -rf "$venv"
    mkdir -p "$(dirname "$venv")"
    quiet python3 -m venv "$venv"
    quiet "$venv/bin/python" -m pip install -q --disable-pip-version-check boto3 awscli
  fi
  py="$venv/bin/python"
fi
"$py" -c 'import boto3, awscli' >/dev/null || { echo "s3-tools: $py cannot import boto3/awscli" >&2; exit 1; }
command -v rclone >/dev/null 2>&1 || { echo "s3-tools: rclone is not installed" >&2; exit 1; }
echo "$py"
