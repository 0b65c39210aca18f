#!/usr/bin/env bash
# Installs what the tests need beyond crates, on a bare Debian machine. It installs no
# service and starts or enables nothing:
# - apt packages: sqlite3 and python3 (tests write databases from separate processes with
#   them), lz4 (its CLI must read every LZ4 object we write), and fakeroot for a non-root
#   user (the package test's dpkg --root install);
# - promtool alone, which checks the /metrics output: taken out of Debian's `prometheus`
#   package (apt-get download + dpkg-deb, never installed) into target/tools/bin/;
# - systemd-analyze alone, which checks the packaged unit (tests/package.rs): taken out of
#   the `systemd` package the same way, into target/tools/bin/, with the library package it
#   links to (libsystemd-shared, plain libraries: apt-get install);
# - best effort, for `make static-bin`: the musl target (rustup) and musl-tools (apt);
# - s3s-fs 0.14.1, a local S3 server that verifies SigV4 signatures (cargo install into
#   ~/.cargo/bin; 0.15+ needs rustc >= 1.96).
# - moto's server (STS and S3 stand-ins for tests/credentials.rs): pip install into a venv
#   target/tools/moto/, its moto_server linked into target/tools/bin/; python3-venv from apt
#   when the venv module is missing. Best effort: without it those tests SKIP, except under
#   CI, where they fail.
# A tool already on PATH is used as it is. The tests look in target/tools/bin/, then on PATH.
# With --check-only, exits 0 when everything is present and 1 otherwise, installing nothing.
set -euo pipefail
cd "$(dirname "$0")/.."

S3S_VERSION=0.14.1
TOOLS_BIN=$PWD/target/tools/bin
export PATH="$HOME/.cargo/bin:$PATH"

have() { command -v "$1" >/dev/null 2>&1 || [ -x "$TOOLS_BIN/$1" ]; }
installed() { [ "$(dpkg-query -W -f='${Status}' "$1" 2>/dev/null)" = "install ok installed" ]; }

apt_missing=()
have sqlite3 || apt_missing+=(sqlite3)
have python3 || apt_missing+=(python3)
have lz4 || apt_missing+=(lz4)
# tests/package.rs installs the .deb into a scratch root under fakeroot when not root.
if [ "$(id -u)" -ne 0 ]; then have fakeroot || apt_missing+=(fakeroot); fi
need_promtool=0
have promtool || need_promtool=1
need_analyze=0
if ! have systemd-analyze; then
  need_analyze=1
  installed libsystemd-shared || apt_missing+=(libsystemd-shared)
fi
MOTO_VERSION=5.2.6
need_moto=0
have moto_server || need_moto=1
if [ $need_moto -eq 1 ] && ! python3 -c 'import ensurepip, venv' 2>/dev/null; then
  apt_missing+=(python3-venv)
fi
need_s3s=0
if ! s3s-fs --version 2>/dev/null | grep -q "$S3S_VERSION"; then need_s3s=1; fi

if [ "${1:-}" = "--check-only" ]; then
  [ ${#apt_missing[@]} -eq 0 ] && [ $need_promtool -eq 0 ] && [ $need_analyze -eq 0 ] && [ $need_s3s -eq 0 ] && [ $need_moto -eq 0 ]
  exit
fi

if [ "$(id -u)" -ne 0 ]; then SUDO=sudo; else SUDO=; fi
if [ ${#apt_missing[@]} -gt 0 ] || [ $need_promtool -eq 1 ] || [ $need_analyze -eq 1 ]; then
  $SUDO apt-get update -qq
fi
if [ ${#apt_missing[@]} -gt 0 ]; then
  echo "installing (apt): ${apt_missing[*]}"
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${apt_missing[@]}"
fi

# take PACKAGE[=VERSION] PATH: downloads the .deb (not installed: no maintainer script runs)
# and copies the one file ./PATH out of it into target/tools/bin/.
take() {
  local tmp deb
  mkdir -p "$TOOLS_BIN"
  tmp=$(mktemp -d "$TOOLS_BIN/../.download.XXXXXX")
  # apt-get download runs as the _apt user when it can; it must be able to write here.
  chmod 0777 "$tmp"
  (cd "$tmp" && apt-get download -qq "$1")
  deb=$(echo "$tmp"/*.deb)
  dpkg-deb --fsys-tarfile "$deb" | tar -x -C "$tmp" "./$2"
  install -m 0755 "$tmp/$2" "$TOOLS_BIN/"
  rm -rf "$tmp"
  echo "took $2 from $(basename "$deb") into $TOOLS_BIN/"
}
if [ $need_promtool -eq 1 ]; then
  take prometheus usr/bin/promtool
fi
if [ $need_analyze -eq 1 ]; then
  # The same version as the libsystemd-shared it links to.
  take "systemd=$(dpkg-query -W -f='${Version}' libsystemd-shared)" usr/bin/systemd-analyze
fi
# The static binary is built for musl when the target and a musl C compiler are present
# (make static-bin), as the design asks; both install from their registries here. Best
# effort and not checked by --check-only: without them make static-bin builds glibc with
# crt-static, which tests/empty_root.rs proves in an empty root as well.
if command -v rustup >/dev/null 2>&1 &&
  ! rustup target list --installed 2>/dev/null | grep -qx x86_64-unknown-linux-musl; then
  rustup target add x86_64-unknown-linux-musl ||
    echo "musl target not installed: make static-bin builds glibc with crt-static"
fi
if ! have x86_64-linux-musl-gcc; then
  { $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends musl-tools; } ||
    echo "musl-tools not installed: make static-bin builds glibc with crt-static"
fi
if [ $need_s3s -eq 1 ]; then
  echo "installing: s3s-fs $S3S_VERSION (cargo install into ~/.cargo/bin; about 6 minutes on 2 cores)"
  cargo install "s3s-fs@$S3S_VERSION" --locked --features binary
fi
if [ $need_moto -eq 1 ]; then
  echo "installing: moto[server] $MOTO_VERSION (pip, into the venv target/tools/moto/)"
  mkdir -p "$TOOLS_BIN"
  if python3 -m venv "$PWD/target/tools/moto" &&
    "$PWD/target/tools/moto/bin/pip" install -q "moto[server]==$MOTO_VERSION"; then
    ln -sf ../moto/bin/moto_server "$TOOLS_BIN/moto_server"
  else
    echo "moto not installed: tests/credentials.rs skips its STS tests (and fails them under CI)"
  fi
fi
echo "test prerequisites present"
