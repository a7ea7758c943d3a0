#!/usr/bin/env bash
# Node benchmark: a local 5-node ring (r = 3) on 127.0.0.1, beside iperf3's loopback TCP figure
# measured in the same run. Installs iperf3 from the Debian packages if it is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v iperf3 >/dev/null; then
  echo "bench-node: installing iperf3" >&2
  if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
  $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq iperf3 >/dev/null
fi
cargo build --release -p peerstore-node --bin peerstore-node --example bench-node --example libp2p-baseline
port=$((20000 + RANDOM % 20000))
iperf3 -s -1 -B 127.0.0.1 -p "$port" >/dev/null 2>&1 &
srv=$!
trap 'kill $srv 2>/dev/null || true' EXIT
sleep 0.5
tcp=$(iperf3 -c 127.0.0.1 -p "$port" -t 3 -J | python3 -c 'import json,sys; print(json.load(sys.stdin)["end"]["sum_received"]["bits_per_second"]/8/1048576)')
echo "loopback TCP (iperf3, one stream): ${tcp} MiB/s" >&2
# The transport floor: the node's libp2p stack between two endpoints, no node logic.
floor=$(target/release/examples/libp2p-baseline --mib 512)
fget=$(echo "$floor" | python3 -c 'import json,sys; print(json.load(sys.stdin)["get_mib_s"])')
fput=$(echo "$floor" | python3 -c 'import json,sys; print(json.load(sys.stdin)["put_mib_s"])')
echo "libp2p request-response floor: responses ${fget} MiB/s, requests ${fput} MiB/s" >&2
target/release/examples/bench-node --iperf "$tcp" --floor-get "$fget" --floor-put "$fput" "$@"
