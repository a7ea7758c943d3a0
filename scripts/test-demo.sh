#!/usr/bin/env bash
# Test of scripts/demo.sh, run by `make test` after the cargo tests (the binaries are built).
# Three runs of the demo, each with its work directory under a directory of this test:
#   done:      to the end; it must exit 0 and print "diff is empty";
#   ctrl-c:    SIGINT to the demo's whole process group once its ring is up, as a terminal's
#              Ctrl-C sends it; it must exit 130;
#   sigterm:   SIGTERM to the demo script alone while peerstore-client runs, as `kill` or
#              `timeout` sends it; it must exit 143.
# After each run no peerstore-node process of it may be left and its work directory must be
# gone. Before the signals, its three nodes must be seen running (so the check can see them).
#
# Env: CARGO and CARGO_TARGET_DIR are passed through to demo.sh (CARGO=true: no build, the
# binaries in $CARGO_TARGET_DIR/release); DEMO_TIMEOUT: seconds one demo run may take
# (default 300); PEERSTORE_STOP_TIMEOUT: see lib-nodes.sh.
# Prints "test-demo: PASS" or "test-demo: FAIL" last and exits non-zero on failure. It stops
# whatever it started (a demo still running, nodes left under its directory) and removes its
# directory however it ends, Ctrl-C included.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
# shellcheck source=scripts/lib-nodes.sh
. "$ROOT/scripts/lib-nodes.sh"
DEMO_TIMEOUT="${DEMO_TIMEOUT:-300}"

PARENT=""
DEMO_PID=""
DEMO_RC=""
FAILED=0
fail() {
    echo "test-demo: FAIL: $*" >&2
    FAILED=$((FAILED + 1))
}

# stop_demo: stops a demo run still going: SIGTERM to its process group (the script, its
# nodes, its client), SIGKILL if it has not finished after the nodes' stop timeout + 10 s.
stop_demo() {
    local i
    [ -n "$DEMO_PID" ] || return 0
    if pid_alive "$DEMO_PID"; then
        kill -TERM -- "-$DEMO_PID" 2>/dev/null || true
        for ((i = 0; i < (PEERSTORE_STOP_TIMEOUT + 10) * 10; i++)); do
            pid_alive "$DEMO_PID" || break
            sleep 0.1
        done
        kill -KILL -- "-$DEMO_PID" 2>/dev/null || true
    fi
    wait "$DEMO_PID" 2>/dev/null || true
    DEMO_PID=""
}

cleanup() {
    local rc=$?
    set +e
    trap '' INT TERM HUP
    stop_demo
    if [ -n "$PARENT" ]; then
        # Whatever is left of any demo run here (its nodes have --data-dir below $PARENT).
        stop_nodes_under "$PARENT" || rc=1
        rm -rf "$PARENT"
    fi
    if [ "$rc" = 0 ] && [ "$FAILED" = 0 ]; then
        echo "test-demo: PASS"
    else
        [ "$rc" != 0 ] || rc=1
        echo "test-demo: FAIL ($FAILED check(s) failed, exit status $rc)"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'fail "interrupted"; exit 130' INT
trap 'fail "terminated"; exit 143' TERM
trap 'exit 129' HUP

PARENT="$(mktemp -d "${TMPDIR:-/tmp}/peerstore-test-demo.XXXXXX")"

# start_demo NAME: starts demo.sh in the background, in its own process group (set -m) as a
# shell with job control starts a command, so that it does not ignore SIGINT (a script's
# background jobs otherwise do) and its group can be sent a terminal's Ctrl-C. Its work
# directory goes under $PARENT/NAME, its output to $PARENT/NAME.log.
start_demo() {
    local name="$1"
    mkdir -p "$PARENT/$name"
    : >"$PARENT/$name.log"
    set -m
    PEERSTORE_DEMO_WORK_PARENT="$PARENT/$name" bash "$ROOT/scripts/demo.sh" \
        </dev/null >"$PARENT/$name.log" 2>&1 &
    DEMO_PID=$!
    set +m
}

# wait_output NAME TEXT: waits until the demo's output contains TEXT; fails (and stops the
# demo) if the demo ends first or after DEMO_TIMEOUT seconds.
wait_output() {
    local name="$1" text="$2" i
    for ((i = 0; i < DEMO_TIMEOUT * 10; i++)); do
        if grep -qF -- "$text" "$PARENT/$name.log"; then return 0; fi
        pid_alive "$DEMO_PID" || break
        sleep 0.1
    done
    fail "$name: the demo did not print \"$text\""
    stop_demo
    return 1
}

# wait_demo NAME: waits (up to DEMO_TIMEOUT seconds) for the demo to end; its exit status
# in DEMO_RC (empty if it had to be stopped).
wait_demo() {
    local name="$1" i
    DEMO_RC=""
    [ -n "$DEMO_PID" ] || return 0
    for ((i = 0; i < DEMO_TIMEOUT * 10; i++)); do
        pid_alive "$DEMO_PID" || break
        sleep 0.1
    done
    if pid_alive "$DEMO_PID"; then
        fail "$name: the demo did not end within $DEMO_TIMEOUT s"
        stop_demo
        return 0
    fi
    DEMO_RC=0
    wait "$DEMO_PID" || DEMO_RC=$?
    DEMO_PID=""
}

# running_nodes NAME: the demo's node pids now.
running_nodes() {
    node_pids_under "$PARENT/$1"
}

# check_clean NAME: no node of the run left, its work directory gone, nothing left beside it.
check_clean() {
    local name="$1" work
    local -a left
    mapfile -t left < <(running_nodes "$name")
    if [ "${#left[@]}" -gt 0 ]; then
        fail "$name: peerstore-node processes left running: ${left[*]}"
        ps -o pid=,args= -p "$(IFS=,; echo "${left[*]}")" >&2 || true
    fi
    work="$(sed -n 's/^== starting a 3-node ring in //p' "$PARENT/$name.log" | head -n1)"
    if [ -z "$work" ]; then
        fail "$name: the demo did not print its work directory"
    elif [[ "$work" != "$PARENT/$name/"* ]]; then
        fail "$name: the demo's work directory $work is not under PEERSTORE_DEMO_WORK_PARENT=$PARENT/$name"
    elif [ -e "$work" ]; then
        fail "$name: the demo's work directory $work is still there"
    fi
    if [ -n "$(ls -A "$PARENT/$name")" ]; then
        fail "$name: left in $PARENT/$name: $(ls -A "$PARENT/$name" | tr '\n' ' ')"
    fi
}

# report NAME FAILED_BEFORE: shows the run's output if one of its checks failed.
report() {
    if [ "$FAILED" != "$2" ]; then
        echo "---- output of the demo run '$1':" >&2
        cat "$PARENT/$1.log" >&2
        echo "----" >&2
    else
        echo "test-demo: ok: $1"
    fi
}

# run_interrupted NAME WAIT_FOR SIGNAL TARGET EXPECTED_RC: starts the demo, waits for the line
# WAIT_FOR, checks its three nodes run, sends SIGNAL to TARGET (group: the demo's process
# group; script: the demo script alone), checks the exit status and the clean-up.
run_interrupted() {
    local name="$1" wait_for="$2" sig="$3" target="$4" expected="$5" before="$FAILED"
    local -a nodes
    echo "test-demo: run '$name': SIG$sig to the demo's $target after \"$wait_for\""
    start_demo "$name"
    if wait_output "$name" "$wait_for"; then
        mapfile -t nodes < <(running_nodes "$name")
        if [ "${#nodes[@]}" != 3 ]; then
            fail "$name: expected the demo's 3 nodes running, found ${#nodes[@]}: ${nodes[*]}"
        fi
        # (|| true: the demo may have just ended; its exit status says so.)
        if [ "$target" = group ]; then
            kill -"$sig" -- "-$DEMO_PID" || true
        else
            kill -"$sig" "$DEMO_PID" || true
        fi
    fi
    wait_demo "$name"
    if [ -n "$DEMO_RC" ] && [ "$DEMO_RC" != "$expected" ]; then
        fail "$name: the demo exited with $DEMO_RC, expected $expected"
    fi
    check_clean "$name"
    report "$name" "$before"
}

echo "test-demo: run 'done': the whole demo (work directories under $PARENT)"
before="$FAILED"
start_demo done
wait_demo done
if [ "$DEMO_RC" != 0 ]; then
    fail "done: the demo exited with ${DEMO_RC:-no status}, expected 0"
fi
if ! grep -q "diff is empty" "$PARENT/done.log"; then
    fail "done: the demo did not print \"diff is empty\""
fi
check_clean done
report done "$before"

run_interrupted ctrl-c "== generating an example folder" INT group 130
run_interrupted sigterm "== peerstore-client init" TERM script 143
