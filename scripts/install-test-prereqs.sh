#!/usr/bin/env bash
# Installs what the tests need beyond crates, on a bare Debian machine: the sqlite3 CLI and
# python3 (tests write databases from separate processes with them).
# With --check-only, exits 0 when everything is present and 1 otherwise, installing nothing.
set -euo pipefail

missing=()
command -v sqlite3 >/dev/null 2>&1 || missing+=(sqlite3)
command -v python3 >/dev/null 2>&1 || missing+=(python3)

if [ "${1:-}" = "--check-only" ]; then
  [ ${#missing[@]} -eq 0 ]
  exit
fi
if [ ${#missing[@]} -eq 0 ]; then
  echo "test prerequisites present"
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then SUDO=sudo; else SUDO=; fi
echo "installing: ${missing[*]}"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}"
