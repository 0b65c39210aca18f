#!/usr/bin/env bash
# Installs what `make fuzz` needs beyond `make test`'s prerequisites: cargo-fuzz (libFuzzer
# driver) and the nightly toolchain it builds with (sanitizer flags are nightly-only).
# Kept apart from install-test-prereqs.sh so `make test` never needs nightly.
# With --check-only, exits 0 when everything is present and 1 otherwise, installing nothing.
set -euo pipefail

export PATH="$HOME/.cargo/bin:$PATH"

need_fuzz=0
need_nightly=0
cargo fuzz --version >/dev/null 2>&1 || need_fuzz=1
rustup run nightly rustc --version >/dev/null 2>&1 || need_nightly=1

if [ "${1:-}" = "--check-only" ]; then
  [ $need_fuzz -eq 0 ] && [ $need_nightly -eq 0 ]
  exit
fi
if [ $need_nightly -eq 1 ]; then
  echo "installing: rust nightly toolchain (minimal profile)"
  rustup toolchain install nightly --profile minimal
fi
if [ $need_fuzz -eq 1 ]; then
  echo "installing: cargo-fuzz (cargo install, about a minute)"
  cargo install cargo-fuzz --locked
fi
echo "fuzz prerequisites present"
