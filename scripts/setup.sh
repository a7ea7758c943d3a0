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
# Optional: the web page test (peerstore-node/tests/http.rs) renders the page in headless
# Chromium when it is installed, and skips that part when it is not. Never fails setup.
if ! command -v chromium >/dev/null && ! command -v chromium-headless-shell >/dev/null && ! command -v google-chrome >/dev/null; then
  if [ "$(id -u)" = 0 ]; then sudo=(); else sudo=(sudo -n); fi
  { "${sudo[@]}" apt-get install -y -qq chromium >/dev/null 2>&1 \
      || { "${sudo[@]}" apt-get update -qq >/dev/null 2>&1 && "${sudo[@]}" apt-get install -y -qq chromium >/dev/null 2>&1; }; } \
    || echo "setup: chromium not installed (optional: the web page test skips its browser part)" >&2
fi
