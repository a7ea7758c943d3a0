# shellcheck shell=bash
# Sourced (not run) by the scripts that start peerstore-node daemons: demo.sh, test-demo.sh and
# the benchmarks. Starting a node in the background and waiting for its address, a bounded stop
# of exactly the nodes a script started, a benchmark's clean-up traps, and the CPU and disk of
# a ring's nodes.
#
# A process counts as a script's own node only if its command name is peerstore-node and its
# command line contains the script's own temporary directory (every node it starts gets a
# --data-dir below it): nothing else on the machine is ever signalled, not even if a recorded
# pid has been reused, and nodes are found even when their pid was never recorded (started in a
# subshell, or by a benchmark binary, or interrupted between `&` and the pid file).
#
# Env: PEERSTORE_STOP_TIMEOUT: whole seconds the nodes get to leave the ring after SIGTERM (they hand
# their keys on first) before SIGKILL, default 10.

PEERSTORE_STOP_TIMEOUT="${PEERSTORE_STOP_TIMEOUT:-10}"

# node_pids_under DIR: prints the pids of the live (not zombie) peerstore-node processes whose
# command line contains DIR/, one a line.
node_pids_under() {
    local dir="${1%/}/" d comm stat arg
    if [ -r /proc/self/cmdline ]; then
        for d in /proc/[0-9]*; do
            { read -r comm <"$d/comm" && read -r stat <"$d/stat"; } 2>/dev/null || continue
            [ "$comm" = peerstore-node ] || continue
            stat="${stat##*) }"
            [ "${stat%% *}" != Z ] || continue
            while IFS= read -r -d '' arg; do
                if [[ "$arg" == *"$dir"* ]]; then
                    echo "${d#/proc/}"
                    break
                fi
            done 2>/dev/null <"$d/cmdline" || true
        done
    else
        # No /proc (not Linux): ps. The command name is the third field, before the arguments.
        ps -ww -e -o pid= -o stat= -o comm= -o args= 2>/dev/null |
            NODES_DIR="$dir" awk '$2 !~ /^Z/ && ($3 == "peerstore-node" || $3 ~ /\/peerstore-node$/) &&
                index($0, ENVIRON["NODES_DIR"]) { print $1 }'
    fi
}

# pid_alive PID: PID exists and is not a zombie (a child that has exited but is not reaped).
pid_alive() {
    kill -0 "$1" 2>/dev/null || return 1
    local stat
    stat="$(cat "/proc/$1/stat" 2>/dev/null)" || return 0 # no /proc: trust kill -0
    stat="${stat##*) }"
    [ "${stat%% *}" != Z ]
}

# stop_nodes_under DIR: SIGTERM to every node of node_pids_under DIR (they leave the ring), up
# to PEERSTORE_STOP_TIMEOUT seconds for them to exit, then SIGKILL to those left. Returns
# non-zero only if some node still runs after that. Safe to call again and from traps.
stop_nodes_under() {
    local dir="$1" i
    local -a pids
    mapfile -t pids < <(node_pids_under "$dir")
    [ "${#pids[@]}" -gt 0 ] || return 0
    echo "stopping ${#pids[@]} peerstore-node process(es) under $dir (pids ${pids[*]})" >&2
    kill -TERM "${pids[@]}" 2>/dev/null || true
    for ((i = 0; i < PEERSTORE_STOP_TIMEOUT * 10; i++)); do
        mapfile -t pids < <(node_pids_under "$dir")
        [ "${#pids[@]}" -gt 0 ] || return 0
        sleep 0.1
    done
    echo "peerstore-node pids ${pids[*]} did not leave within ${PEERSTORE_STOP_TIMEOUT} s: SIGKILL" >&2
    kill -KILL "${pids[@]}" 2>/dev/null || true
    for ((i = 0; i < 50; i++)); do
        mapfile -t pids < <(node_pids_under "$dir")
        [ "${#pids[@]}" -gt 0 ] || return 0
        sleep 0.1
    done
    echo "peerstore-node pids ${pids[*]} are still running" >&2
    return 1
}

# start_node_bg DIR NODE_BINARY [NODE ARGS...]: starts a node with --data-dir DIR in the
# background of the calling shell (call it directly, never inside $(...): a subshell would
# own the node), logs to DIR/node.log and DIR/stdout.log and records its pid in DIR/node.pid.
start_node_bg() {
    local dir="$1" bin="$2"
    shift 2
    mkdir -p "$dir"
    "$bin" --data-dir "$dir" "$@" >"$dir/stdout.log" 2>"$dir/node.log" &
    echo "$!" >"$dir/node.pid"
}

# wait_node_addr DIR: waits (up to 10 s) for the node started by start_node_bg DIR to write
# its address and prints it; fails, showing the node's log, if the node exits or is too slow.
wait_node_addr() {
    local dir="$1" pid i
    pid="$(<"$dir/node.pid")"
    for ((i = 0; i < 200; i++)); do
        if [ -s "$dir/node.addr" ]; then
            head -n1 "$dir/node.addr"
            return 0
        fi
        pid_alive "$pid" || break
        sleep 0.05
    done
    echo "the node in $dir did not start; its log:" >&2
    cat "$dir/node.log" >&2 || true
    return 1
}

# bench_traps NAME: a benchmark's clean-up however it ends (success, failure, Ctrl-C,
# SIGTERM): every node under $WORK is stopped and $WORK removed (a second Ctrl-C does not cut
# the bounded clean-up short). NAME prefixes the messages.
bench_traps() {
    BENCH_NAME="$1"
    trap bench_cleanup EXIT
    trap 'echo "$BENCH_NAME: interrupted" >&2; exit 130' INT
    trap 'echo "$BENCH_NAME: terminated" >&2; exit 143' TERM
    trap 'exit 129' HUP
}

bench_cleanup() {
    local rc=$?
    set +e
    trap '' INT TERM HUP
    if [ -n "${WORK:-}" ]; then
        stop_nodes_under "$WORK" >/dev/null || rc=1
        rm -rf "$WORK"
    fi
    exit "$rc"
}

# ring_cpu DIR: CPU seconds (user + system) the live nodes under DIR have used so far.
ring_cpu() {
    local pids
    mapfile -t pids < <(node_pids_under "$1")
    python3 -c '
import os, sys
tck = os.sysconf("SC_CLK_TCK")
total = 0
for pid in sys.argv[1:]:
    try:
        f = open("/proc/%s/stat" % pid).read().rsplit(")", 1)[1].split()
        total += (int(f[11]) + int(f[12])) / tck
    except (OSError, IndexError, ValueError):
        pass
print("%.3f" % total)
' "${pids[@]}"
}

# ring_disk DIR: bytes in the data directories of the nodes under DIR.
ring_disk() {
    du -sb "$1"/node* | awk '{s += $1} END {print s + 0}'
}

# start_bench_rings [NODE ARGS...]: two 4-node loopback rings (r = 3) under $WORK/off
# (`--entanglement none`) and $WORK/on (the default), node i joining through node 0, each
# node also given NODE ARGS; fills the global associative array ADDR (ring -> node 0's
# address), then joins and inits a client per ring (bench_client). Needs NODE, CLIENT, WORK.
start_bench_rings() {
    local name i
    local -a args
    declare -gA ADDR
    for name in off on; do
        args=(--listen /ip4/127.0.0.1/tcp/0 --replication 3 "$@")
        [ "$name" = off ] && args+=(--entanglement none)
        start_node_bg "$WORK/$name/node0" "$NODE" "${args[@]}"
        ADDR[$name]="$(wait_node_addr "$WORK/$name/node0")"
        for i in 1 2 3; do
            start_node_bg "$WORK/$name/node$i" "$NODE" "${args[@]}" --join-local "$WORK/$name/node0"
            wait_node_addr "$WORK/$name/node$i" >/dev/null
        done
    done
    sleep 3
    for name in off on; do
        bench_client "$name" join "$("$NODE" invite --data-dir "$WORK/$name/node0" --role user --label bench)" >/dev/null
        bench_client "$name" init >/dev/null
    done
}

# bench_client RING ARGS...: peerstore-client of the ring's user (start_bench_rings).
bench_client() {
    local name="$1"
    shift
    "$CLIENT" --config-dir "$WORK/$name/client-config" --data-dir "$WORK/$name/client-data" \
        --peer "${ADDR[$name]}" "$@"
}
