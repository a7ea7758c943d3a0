#!/usr/bin/env bash
# Installs what the build and the tests need on a fresh Debian machine. Safe to run again.
set -euo pipefail
need=()
command -v cargo >/dev/null || { echo "setup: cargo not found; install Rust from rustup.rs, then rerun" >&2; exit 1; }
rustup component list --installed 2>/dev/null | grep -q '^rustfmt' || rustup component add rustfmt clippy || true
command -v make >/dev/null || need+=(make)
command -v cc >/dev/null || need+=(gcc)
# The multi-host tests (network namespaces, veth, tc) need iproute2; without it they skip.
command -v ip >/dev/null || need+=(iproute2)
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq "${need[@]}"; else sudo apt-get update -qq && sudo apt-get install -y -qq "${need[@]}"; fi
fi
