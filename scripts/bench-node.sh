#!/usr/bin/env bash
# Node benchmark: a local 5-node ring (r = 3) on 127.0.0.1, beside iperf3's loopback TCP figure
# measured in the same run. Installs iperf3 from the Debian packages if it is missing.
# The ring's peerstore-node processes (started by examples/bench-node) are stopped and their
# directories removed however the run ends: success, failure, Ctrl-C or SIGTERM.
# Env: CARGO (default cargo), CARGO_TARGET_DIR (default target).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
# shellcheck source=scripts/lib-nodes.sh
. "$ROOT/scripts/lib-nodes.sh"
CARGO="${CARGO:-cargo}"
TARGET="${CARGO_TARGET_DIR:-$ROOT/target}"

# The bench-node example makes its nodes' data directories with tempfile in $TMPDIR: it runs
# with TMPDIR=$WORK, so its nodes can be found (by their --data-dir) and stopped even when the
# example itself is killed before it can stop them.
WORK=""
SRV=""
BENCH=""
# stop_child PID NAME: SIGTERM to our child PID (if it still runs as NAME), SIGKILL after 5 s.
stop_child() {
    local pid="$1" name="$2" i
    if [ -z "$pid" ] || ! pid_alive "$pid"; then return 0; fi
    if [ -r "/proc/$pid/comm" ] && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" != "$name" ]; then
        return 0 # ours has gone and its pid is reused
    fi
    kill -TERM "$pid" 2>/dev/null || return 0
    for ((i = 0; i < 50; i++)); do
        pid_alive "$pid" || break
        sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}
cleanup() {
    local rc=$?
    set +e
    trap '' INT TERM HUP # a second Ctrl-C must not cut the clean-up short (it is bounded)
    stop_child "$SRV" iperf3
    stop_child "$BENCH" bench-node
    if [ -n "$WORK" ]; then
        stop_nodes_under "$WORK" || rc=1
        rm -rf "$WORK"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'echo "bench-node: interrupted" >&2; exit 130' INT
trap 'echo "bench-node: terminated" >&2; exit 143' TERM
trap 'exit 129' HUP

if ! command -v iperf3 >/dev/null; then
  echo "bench-node: installing iperf3" >&2
  if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
  $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq iperf3 >/dev/null
fi
"$CARGO" build --release -p peerstore-node --bin peerstore-node --example bench-node --example libp2p-baseline
WORK="$(mktemp -d "${TMPDIR:-/tmp}/peerstore-bench-node.XXXXXX")"
port=$((20000 + RANDOM % 20000))
iperf3 -s -1 -B 127.0.0.1 -p "$port" >/dev/null 2>&1 &
SRV=$!
sleep 0.5
tcp=$(iperf3 -c 127.0.0.1 -p "$port" -t 3 -J | python3 -c 'import json,sys; print(json.load(sys.stdin)["end"]["sum_received"]["bits_per_second"]/8/1048576)')
echo "loopback TCP (iperf3, one stream): ${tcp} MiB/s" >&2
# The transport floor: the node's libp2p stack between two endpoints, no node logic.
floor=$("$TARGET/release/examples/libp2p-baseline" --mib 512)
fget=$(echo "$floor" | python3 -c 'import json,sys; print(json.load(sys.stdin)["get_mib_s"])')
fput=$(echo "$floor" | python3 -c 'import json,sys; print(json.load(sys.stdin)["put_mib_s"])')
echo "libp2p request-response floor: responses ${fget} MiB/s, requests ${fput} MiB/s" >&2
# In the background and waited for, so that a signal runs the clean-up at once rather than
# after the benchmark.
TMPDIR="$WORK" "$TARGET/release/examples/bench-node" --iperf "$tcp" --floor-get "$fget" --floor-put "$fput" "$@" &
BENCH=$!
wait "$BENCH"
BENCH=""
