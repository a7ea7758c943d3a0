#!/usr/bin/env bash
# PeerStore demo: build, start a 3-node local ring, back up an example folder with
# peerstore-client, restore it elsewhere, show that `diff -r` finds no difference, clean up.
# The nodes are stopped and the work directory removed however the demo ends: success,
# failure, Ctrl-C or SIGTERM (scripts/test-demo.sh checks it).
#
# Env: CARGO (default cargo; CARGO=true skips the build), CARGO_TARGET_DIR (where the release
# binaries are), PEERSTORE_DEMO_WORK_PARENT (directory to create the work directory in,
# default $TMPDIR or /tmp), PEERSTORE_STOP_TIMEOUT (whole seconds the nodes get to leave the ring
# before SIGKILL, default 10).
set -euo pipefail

WORK_PARENT="${PEERSTORE_DEMO_WORK_PARENT:-${TMPDIR:-/tmp}}"
case "$WORK_PARENT" in /*) ;; *) WORK_PARENT="$PWD/$WORK_PARENT" ;; esac
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
# shellcheck source=scripts/lib-nodes.sh
. "$ROOT/scripts/lib-nodes.sh"
CARGO="${CARGO:-cargo}"

WORK=""
cleanup() {
    local rc=$?
    set +e
    trap '' INT TERM HUP # a second Ctrl-C must not cut the clean-up short (it is bounded)
    if [ -n "$WORK" ]; then
        echo "== stopping the nodes and cleaning up"
        # Every node of this demo has its --data-dir below $WORK (see lib-nodes.sh).
        stop_nodes_under "$WORK" || rc=1
        rm -rf "$WORK"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'echo "demo: interrupted" >&2; exit 130' INT
trap 'echo "demo: terminated" >&2; exit 143' TERM
trap 'exit 129' HUP

echo "== building (release)"
"$CARGO" build --release -p peerstore-node -p peerstore-client
TARGET="${CARGO_TARGET_DIR:-$ROOT/target}"
NODE="$TARGET/release/peerstore-node"
CLIENT="$TARGET/release/peerstore-client"

# Absolute (the clean-up finds the nodes by this path in their command lines).
WORK="$(mktemp -d "$WORK_PARENT/peerstore-demo.XXXXXX")"

# start_node N [NODE ARGS...]: starts node N in the background of this shell (not in a
# $(...) subshell, so that the clean-up knows it), its pid in $WORK/nodeN/node.pid.
start_node() {
    local n="$1"
    shift
    start_node_bg "$WORK/node$n" "$NODE" --listen /ip4/127.0.0.1/tcp/0 --replication 3 \
        --stabilize-ms 300 --maintenance-ms 2000 "$@"
}

echo "== starting a 3-node ring in $WORK"
# The first node creates the ring (and its key, node0/ring.key); the others join with an
# invite minted from that key (--join-local reads it; across machines: peerstore-node invite).
start_node 0
A0="$(wait_node_addr "$WORK/node0")"
start_node 1 --join-local "$WORK/node0"
A1="$(wait_node_addr "$WORK/node1")"
start_node 2 --join-local "$WORK/node0"
A2="$(wait_node_addr "$WORK/node2")"
printf '   %s\n' "$A0" "$A1" "$A2"
sleep 2 # let the ring stabilize

echo "== generating an example folder"
SRC="$WORK/example"
mkdir -p "$SRC/docs/notes" "$SRC/photos/2024" "$SRC/empty"
printf 'Hello, PeerStore!\n' >"$SRC/hello.txt"
printf 'Meeting notes\n- encrypt everything\n- keep three copies\n' >"$SRC/docs/notes/meeting.md"
printf 'name,value\nalpha,1\nbeta,2\n' >"$SRC/docs/data.csv"
head -c 3000000 /dev/urandom >"$SRC/photos/2024/picture.bin"
printf 'a file with spaces and ünïcødé\n' >"$SRC/docs/spaced ünïcødé name.txt"
ln -s docs/data.csv "$SRC/link-to-data"

export PEERSTORE_PASSPHRASE="demo passphrase"
C=("$CLIENT" --config-dir "$WORK/client-config" --data-dir "$WORK/client-data"
   --node-data-dir "$WORK/node0")

echo "== peerstore-client join (a user's invite from the ring's first node)"
"${C[@]}" join "$("$NODE" invite --data-dir "$WORK/node0" --role user --label demo)"
echo "== peerstore-client init"
"${C[@]}" init
echo "== peerstore-client backup $SRC"
"${C[@]}" backup "$SRC"
echo "== peerstore-client ls"
"${C[@]}" ls
echo "== peerstore-client restore $WORK/restored"
"${C[@]}" restore "$WORK/restored"
echo "== peerstore-client du"
"${C[@]}" du

echo "== diff -r $SRC $WORK/restored"
if diff -r "$SRC" "$WORK/restored"; then
    echo "diff is empty: the restored tree is identical"
else
    echo "DIFF FOUND" >&2
    exit 1
fi
