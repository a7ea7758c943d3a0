#!/usr/bin/env bash
# PeerStore demo: build, start a 3-node local ring, back up an example folder with
# peerstore-client, restore it elsewhere, show that `diff -r` finds no difference, clean up.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
CARGO="${CARGO:-cargo}"

echo "== building (release)"
"$CARGO" build --release -p peerstore-node -p peerstore-client
TARGET="${CARGO_TARGET_DIR:-$ROOT/target}"
NODE="$TARGET/release/peerstore-node"
CLIENT="$TARGET/release/peerstore-client"

WORK="$(mktemp -d "${TMPDIR:-/tmp}/peerstore-demo.XXXXXX")"
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
    rm -rf "$WORK"
}
trap cleanup EXIT INT TERM

# Starts node $1 (joining through address $2 if given) and prints its address.
start_node() {
    local dir="$WORK/node$1"
    mkdir -p "$dir"
    local args=(--listen /ip4/127.0.0.1/tcp/0 --data-dir "$dir" --replication 3
                --stabilize-ms 300 --maintenance-ms 2000)
    if [ -n "${2:-}" ]; then args+=(--initial-peer "$2"); fi
    "$NODE" "${args[@]}" >"$dir/stdout.log" 2>"$dir/node.log" &
    PIDS+=("$!")
    for _ in $(seq 1 200); do
        if [ -s "$dir/node.addr" ]; then head -n1 "$dir/node.addr"; return 0; fi
        sleep 0.05
    done
    echo "node $1 did not start; its log:" >&2
    cat "$dir/node.log" >&2
    return 1
}

echo "== starting a 3-node ring in $WORK"
A0="$(start_node 0)"
A1="$(start_node 1 "$A0")"
A2="$(start_node 2 "$A0")"
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
echo "== stopping the nodes and cleaning up"
