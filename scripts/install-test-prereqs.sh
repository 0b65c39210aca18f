#!/usr/bin/env bash
# Installs what the tests need beyond crates, on a bare Debian machine:
# - the sqlite3 CLI and python3 (tests write databases from separate processes with them);
# - promtool (Debian package `prometheus`), which checks the /metrics output;
# - the lz4 CLI, which must read every LZ4 object we write;
# - s3s-fs 0.14.1, a local S3 server that verifies SigV4 signatures (0.15+ needs rustc >= 1.96).
# With --check-only, exits 0 when everything is present and 1 otherwise, installing nothing.
set -euo pipefail

S3S_VERSION=0.14.1
export PATH="$HOME/.cargo/bin:$PATH"

apt_missing=()
command -v sqlite3 >/dev/null 2>&1 || apt_missing+=(sqlite3)
command -v python3 >/dev/null 2>&1 || apt_missing+=(python3)
command -v promtool >/dev/null 2>&1 || apt_missing+=(prometheus)
command -v lz4 >/dev/null 2>&1 || apt_missing+=(lz4)
need_s3s=0
if ! s3s-fs --version 2>/dev/null | grep -q "$S3S_VERSION"; then need_s3s=1; fi

if [ "${1:-}" = "--check-only" ]; then
  [ ${#apt_missing[@]} -eq 0 ] && [ $need_s3s -eq 0 ]
  exit
fi
if [ ${#apt_missing[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then SUDO=sudo; else SUDO=; fi
  echo "installing: ${apt_missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${apt_missing[@]}"
fi
if [ $need_s3s -eq 1 ]; then
  echo "installing: s3s-fs $S3S_VERSION (cargo install, about 2 minutes)"
  cargo install "s3s-fs@$S3S_VERSION" --locked --features binary
fi
echo "test prerequisites present"
