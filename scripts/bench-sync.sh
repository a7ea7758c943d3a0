#!/usr/bin/env bash
# Sync benchmark (issue 12): two-way folder sync between two devices of one user through a local
# 5-node ring (r = 3, loopback), next to Syncthing 1.x between two local instances, in the same
# run. Measures, from A to B:
#   - "1 MiB file": from a 1 MiB file (random bytes) appearing in device A's folder to the file
#     complete on device B (right size and sha256), REPS times (default 20);
#   - "100 small files": from 100 files of 1-8 KiB (random sizes and bytes) appearing in A's
#     folder to all 100 complete on B, SMALL_REPS times (default 5).
# Every file is written outside the folder (same file system) and renamed into it, so that no
# tool sees a partial file; the clock starts right before the (first) rename, and B's folder is
# polled every 20 ms. Between repetitions PAUSE seconds (default 1) let both sides settle. Files
# stay in the folders (each repetition adds new names).
#
# PeerStore: 5 peerstore-node processes (--replication 3), device A = `peerstore-client init`
# talking to node 0, device B = a copy of A's config directory (key and ring credential) with a
# data directory of its own, talking to node 3 (as peerstore-testkit/tests/e2e_devices.rs does);
# each runs `sync <folder> --debounce-ms 100`.
# Syncthing (installed with apt-get if missing; its columns stay empty if that fails): two fresh
# instances per configuration, with the folder's fsWatcherDelayS at its default (10 s) and at
# 1 s, rescanIntervalS 3600. Only loopback: listen/GUI on 127.0.0.1, each device knows the other's
# address tcp://127.0.0.1:<port>; global and local discovery, relays, NAT, STUN, usage and crash
# reporting, auto-upgrade are off. setLowPriority is off too (Syncthing's default renices
# itself, which would handicap it against the nodes on a busy machine).
#
# Median and p99 (nearest rank: with fewer than 100 repetitions, the slowest) in seconds, and
# the ratio of times peerstore/syncthing (below 1: PeerStore faster). Table on stdout, log on
# stderr. Every process started here (nodes, sync clients, Syncthing) is stopped and the work
# directory removed (unless KEEP is set) however the run ends: success, failure, Ctrl-C, SIGTERM.
#
# Env: REPS (20), SMALL_REPS (5), PAUSE (1), TIMEOUT (seconds one repetition may take, 60),
# CLIENT_BIN / NODE_BIN (prebuilt binaries; default target/release, built if missing).
# Usage: scripts/bench-sync.sh
set -euo pipefail

REPS="${REPS:-20}"
SMALL_REPS="${SMALL_REPS:-5}"
PAUSE="${PAUSE:-1}"
TIMEOUT="${TIMEOUT:-60}"

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
# shellcheck source=scripts/lib-nodes.sh
. "$ROOT/scripts/lib-nodes.sh"

# procs_under NAME DIR: pids of the live processes whose command name is NAME (as the kernel
# keeps it: 15 characters) and whose command line contains DIR/ (see node_pids_under).
procs_under() {
    local name="${1:0:15}" dir="${2%/}/" d comm stat arg
    for d in /proc/[0-9]*; do
        { read -r comm <"$d/comm" && read -r stat <"$d/stat"; } 2>/dev/null || continue
        [ "$comm" = "$name" ] || continue
        stat="${stat##*) }"
        [ "${stat%% *}" != Z ] || continue
        while IFS= read -r -d '' arg; do
            if [[ "$arg" == *"$dir"* ]]; then
                echo "${d#/proc/}"
                break
            fi
        done 2>/dev/null <"$d/cmdline" || true
    done
}

# stop_procs_under NAME DIR: SIGTERM to procs_under NAME DIR, SIGKILL to those left after 10 s.
stop_procs_under() {
    local name="$1" dir="$2" i
    local -a pids
    mapfile -t pids < <(procs_under "$name" "$dir")
    [ "${#pids[@]}" -gt 0 ] || return 0
    kill -TERM "${pids[@]}" 2>/dev/null || true
    for ((i = 0; i < 100; i++)); do
        mapfile -t pids < <(procs_under "$name" "$dir")
        [ "${#pids[@]}" -gt 0 ] || return 0
        sleep 0.1
    done
    echo "$name pids ${pids[*]} did not stop within 10 s: SIGKILL" >&2
    kill -KILL "${pids[@]}" 2>/dev/null || true
    for ((i = 0; i < 50; i++)); do
        mapfile -t pids < <(procs_under "$name" "$dir")
        [ "${#pids[@]}" -gt 0 ] || return 0
        sleep 0.1
    done
    echo "$name pids ${pids[*]} are still running" >&2
    return 1
}

WORK=""
cleanup() {
    local rc=$?
    set +e
    trap '' INT TERM HUP # a second Ctrl-C must not cut the clean-up short (it is bounded)
    if [ -n "$WORK" ]; then
        # Every process started here has a path below $WORK on its command line.
        stop_procs_under peerstore-client "$WORK" || rc=1
        stop_procs_under syncthing "$WORK" || rc=1
        stop_nodes_under "$WORK" || rc=1
        if [ -n "${KEEP:-}" ]; then
            echo "keeping $WORK" >&2
        else
            rm -rf "$WORK"
        fi
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'echo "bench-sync: interrupted" >&2; exit 130' INT
trap 'echo "bench-sync: terminated" >&2; exit 143' TERM
trap 'exit 129' HUP

if [ -n "${CLIENT_BIN:-}" ] && [ -n "${NODE_BIN:-}" ]; then
    NODE="$NODE_BIN"
    CLIENT="$CLIENT_BIN"
else
    TARGET="${CARGO_TARGET_DIR:-$ROOT/target}"
    NODE="$TARGET/release/peerstore-node"
    CLIENT="$TARGET/release/peerstore-client"
    if [ ! -x "$NODE" ] || [ ! -x "$CLIENT" ]; then
        "${CARGO:-cargo}" build --release --workspace --bins >&2
    fi
fi

if ! command -v syncthing >/dev/null 2>&1; then
    echo "syncthing not found; installing it with apt-get" >&2
    (apt-get install -y syncthing >&2 || (apt-get update >&2 && apt-get install -y syncthing >&2)) ||
        echo "could not install syncthing: its columns stay empty" >&2
fi

WORK="$(mktemp -d "${TMPDIR:-/tmp}/peerstore-bench-sync.XXXXXX")"
RESULTS="$WORK/results.txt"
: >"$RESULTS"
mkdir -p "$WORK/stage" # files are written here, then renamed into a folder (same file system)

# The probe: writes files into A's folder (by rename) and polls B's until they are complete.
cat >"$WORK/probe.py" <<'PY'
import hashlib, os, random, signal, sys, time

signal.signal(signal.SIGINT, lambda *_: sys.exit(130))  # Ctrl-C: quietly (the script reports it)

def wait_complete(want, deadline, t0):
    """want: {path on B: (size, sha256)}. Polls every 20 ms; returns seconds since t0."""
    pending = dict(want)
    while pending:
        for p, (size, digest) in list(pending.items()):
            try:
                if os.stat(p).st_size != size:
                    continue
                with open(p, "rb") as f:
                    if hashlib.sha256(f.read()).hexdigest() == digest:
                        del pending[p]
            except OSError:
                pass
        if not pending:
            break
        if time.monotonic() > deadline:
            sys.exit("timeout: %d of %d file(s) not complete on B" % (len(pending), len(want)))
        time.sleep(0.02)
    return time.monotonic() - t0

mode, stage, a, b, name, timeout = sys.argv[1:7]
timeout = float(timeout)
if mode == "wait":  # a file already in A: wait for it on B
    with open(os.path.join(a, name), "rb") as f:
        data = f.read()
    t0 = time.monotonic()
    want = {os.path.join(b, name): (len(data), hashlib.sha256(data).hexdigest())}
    print("%.3f" % wait_complete(want, t0 + timeout, t0))
    sys.exit(0)
if mode == "one":  # one file of SIZE bytes
    files = [(name, int(sys.argv[7]))]
else:  # "many": COUNT files of MIN..MAX bytes, named NAME-i
    count, lo, hi = map(int, sys.argv[7:10])
    rnd = random.Random(name)
    files = [("%s-%03d" % (name, i), rnd.randint(lo, hi)) for i in range(count)]
want = {}
for n, size in files:
    data = os.urandom(size)
    with open(os.path.join(stage, n), "wb") as f:
        f.write(data)
    want[os.path.join(b, n)] = (size, hashlib.sha256(data).hexdigest())
t0 = time.monotonic()
for n, _ in files:
    os.rename(os.path.join(stage, n), os.path.join(a, n))
print("%.3f" % wait_complete(want, t0 + timeout, t0))
PY

# measure SYSTEM A_DIR B_DIR: the timed writes A -> B; appends "SYSTEM ROW SECONDS" (or
# "SYSTEM ROW FAIL" after a timeout, then that row's remaining repetitions are skipped).
measure() {
    local sys="$1" a="$2" b="$3" rep s
    local -a times=()
    for ((rep = 1; rep <= REPS; rep++)); do
        sleep "$PAUSE"
        if ! s=$(python3 "$WORK/probe.py" one "$WORK/stage" "$a" "$b" "big-$rep.bin" "$TIMEOUT" 1048576); then
            echo "$sys: 1 MiB file, repetition $rep: timed out after $TIMEOUT s" >&2
            echo "$sys big FAIL" >>"$RESULTS"
            break
        fi
        times+=("$s")
        echo "$sys big $s" >>"$RESULTS"
    done
    echo "$sys: 1 MiB file, seconds: ${times[*]}" >&2
    times=()
    for ((rep = 1; rep <= SMALL_REPS; rep++)); do
        sleep "$PAUSE"
        if ! s=$(python3 "$WORK/probe.py" many "$WORK/stage" "$a" "$b" "small-$rep" "$TIMEOUT" 100 1024 8192); then
            echo "$sys: 100 small files, repetition $rep: timed out after $TIMEOUT s" >&2
            echo "$sys small FAIL" >>"$RESULTS"
            break
        fi
        times+=("$s")
        echo "$sys small $s" >>"$RESULTS"
    done
    echo "$sys: 100 small files, seconds: ${times[*]}" >&2
}

# initial_file DIR: the file both tools must have synced before timing starts.
initial_file() {
    head -c 65536 /dev/urandom >"$WORK/stage/initial.bin"
    mv "$WORK/stage/initial.bin" "$1/initial.bin"
}

# show_logs FILE...: the last lines of each log, on stderr (after a failure).
show_logs() {
    local f
    for f in "$@"; do
        [ -s "$f" ] || continue
        echo "--- last lines of $f:" >&2
        tail -n 20 "$f" >&2
    done
}

# ---------------------------------------------------------------- PeerStore
bench_peerstore() {
    local R="$WORK/ps" i addr0 addr3
    echo "starting a 5-node ring (r = 3)" >&2
    # As bench-client.sh's start_node: loopback, port 0, node i joins through node 0.
    start_node_bg "$R/node0" "$NODE" --listen /ip4/127.0.0.1/tcp/0 --replication 3 --http 127.0.0.1:0
    addr0="$(wait_node_addr "$R/node0")"
    for i in 1 2 3 4; do
        start_node_bg "$R/node$i" "$NODE" --listen /ip4/127.0.0.1/tcp/0 --replication 3 --http 127.0.0.1:0 \
            --join-local "$R/node0"
        wait_node_addr "$R/node$i" >/dev/null
    done
    addr3="$(head -n1 "$R/node3/node.addr")"
    sleep 3

    export PEERSTORE_PASSPHRASE="bench passphrase"
    local CA=("$CLIENT" --config-dir "$R/a-config" --data-dir "$R/a-data" --peer "$addr0")
    local CB=("$CLIENT" --config-dir "$R/b-config" --data-dir "$R/b-data" --peer "$addr3")
    "${CA[@]}" join "$("$NODE" invite --data-dir "$R/node0" --role user --label bench)" >/dev/null
    "${CA[@]}" init >/dev/null
    # Device B: a copy of A's config directory (key file, ring credential), its own data dir.
    mkdir -p "$R/b-config"
    find "$R/a-config" -maxdepth 1 -type f -exec cp -p {} "$R/b-config/" \;
    mkdir -p "$R/a" "$R/b"
    initial_file "$R/a"
    "${CA[@]}" sync "$R/a" --debounce-ms 100 >"$R/a-sync.out" 2>"$R/a-sync.log" &
    "${CB[@]}" sync "$R/b" --debounce-ms 100 >"$R/b-sync.out" 2>"$R/b-sync.log" &
    local t
    if ! t=$(python3 "$WORK/probe.py" wait "$WORK/stage" "$R/a" "$R/b" initial.bin "$TIMEOUT"); then
        echo "peerstore: the initial file did not reach device B" >&2
        show_logs "$R/a-sync.log" "$R/b-sync.log"
        return 1
    fi
    echo "peerstore: initial file on B after $t s (both syncs started together)" >&2
    measure peerstore "$R/a" "$R/b"
    if grep -q "^peerstore .*FAIL" "$RESULTS"; then show_logs "$R/a-sync.log" "$R/b-sync.log"; fi
    stop_procs_under peerstore-client "$R"
    stop_nodes_under "$R"
}

# ---------------------------------------------------------------- Syncthing
# free_ports N: N distinct free TCP ports on 127.0.0.1.
free_ports() {
    python3 - "$1" <<'PY'
import socket, sys
socks = []
for _ in range(int(sys.argv[1])):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    socks.append(s)
print(" ".join(str(s.getsockname()[1]) for s in socks))
PY
}

# st_config HOME MY_NAME GUI_PORT API_KEY LISTEN_PORT OTHER_ID OTHER_NAME OTHER_PORT FOLDER DELAY:
# rewrites the generated HOME/config.xml: loopback only, nothing phoned home, the other device
# at its address, one shared folder.
st_config() {
    python3 - "$@" <<'PY'
import copy, sys
import xml.etree.ElementTree as ET
home, name, gui_port, api_key, port, other_id, other_name, other_port, folder, delay = sys.argv[1:]
path = home + "/config.xml"
tree = ET.parse(path)
root = tree.getroot()
me = root.find("device")
me.set("name", name)
my_id = me.get("id")
gui = root.find("gui")
gui.find("address").text = "127.0.0.1:" + gui_port
gui.find("apikey").text = api_key
opts = root.find("options")
def opt(key, value):
    e = opts.find(key)
    if e is None:
        e = ET.SubElement(opts, key)
    e.text = value
for e in opts.findall("listenAddress"):
    opts.remove(e)
ET.SubElement(opts, "listenAddress").text = "tcp://127.0.0.1:" + port
for key, value in [
    ("globalAnnounceEnabled", "false"), ("localAnnounceEnabled", "false"),
    ("relaysEnabled", "false"), ("natEnabled", "false"), ("startBrowser", "false"),
    ("urAccepted", "-1"), ("urSeen", "3"), ("autoUpgradeIntervalH", "0"),
    ("crashReportingEnabled", "false"), ("announceLANAddresses", "false"),
    ("stunKeepaliveStartS", "0"), ("restartOnWakeup", "false"), ("setLowPriority", "false"),
    # Never used with the switches above; pointed at a closed local port all the same.
    ("urURL", "http://127.0.0.1:1/"), ("releasesURL", "http://127.0.0.1:1/"),
    ("crashReportingURL", "http://127.0.0.1:1/"),
]:
    opt(key, value)
defaults = root.find("defaults")
other = copy.deepcopy(defaults.find("device"))
other.set("id", other_id)
other.set("name", other_name)
other.find("address").text = "tcp://127.0.0.1:" + other_port
root.insert(list(root).index(me) + 1, other)
f = copy.deepcopy(defaults.find("folder"))
for k, v in [("id", "bench"), ("label", "bench"), ("path", folder), ("type", "sendreceive"),
             ("rescanIntervalS", "3600"), ("fsWatcherEnabled", "true"), ("fsWatcherDelayS", delay)]:
    f.set(k, v)
for d in f.findall("device"):
    f.remove(d)
for i, dev in enumerate((my_id, other_id)):
    d = ET.Element("device", {"id": dev, "introducedBy": ""})
    ET.SubElement(d, "encryptionPassword").text = ""
    f.insert(1 + i, d)
root.insert(list(root).index(other) + 1, f)
tree.write(path)
PY
}

# st_api PORT PATH: GET of the REST API of the instance whose GUI listens on PORT.
st_api() {
    curl -sf --noproxy '*' --max-time 5 -H "X-API-Key: $ST_KEY" "http://127.0.0.1:$1$2"
}

ST_KEY="bench-sync-api-key-$$"
# bench_syncthing LABEL DELAY: two fresh instances, fsWatcherDelayS DELAY, timed writes.
bench_syncthing() {
    local label="$1" delay="$2" S="$WORK/$1"
    local ga gb la lb ida idb
    mkdir -p "$S"
    read -r ga gb la lb < <(free_ports 4)
    for x in a b; do
        STNODEFAULTFOLDER=1 STNOUPGRADE=1 syncthing generate --home="$S/$x-home" --no-default-folder \
            --skip-port-probing >"$S/$x-generate.log" 2>&1 || { cat "$S/$x-generate.log" >&2; return 1; }
        mkdir -p "$S/$x/.stfolder" # the folder marker Syncthing expects
    done
    ida="$(syncthing serve --home="$S/a-home" --device-id)"
    idb="$(syncthing serve --home="$S/b-home" --device-id)"
    st_config "$S/a-home" bench-a "$ga" "$ST_KEY" "$la" "$idb" bench-b "$lb" "$S/a" "$delay"
    st_config "$S/b-home" bench-b "$gb" "$ST_KEY" "$lb" "$ida" bench-a "$la" "$S/b" "$delay"
    initial_file "$S/a"
    echo "starting two Syncthing instances (fsWatcherDelayS $delay)" >&2
    for x in a b; do
        env -u http_proxy -u https_proxy -u HTTP_PROXY -u HTTPS_PROXY -u all_proxy -u ALL_PROXY \
            STNODEFAULTFOLDER=1 STNOUPGRADE=1 STNORESTART=1 \
            syncthing serve --home="$S/$x-home" --no-browser --no-restart --no-upgrade \
            --no-default-folder >"$S/$x.log" 2>&1 &
    done
    # Connected, the initial file on B, both folders idle.
    local i ok=0 t0=$SECONDS
    for ((i = 0; i < TIMEOUT * 5; i++)); do
        if st_api "$ga" /rest/system/connections 2>/dev/null | python3 -c '
import json, sys
c = json.load(sys.stdin)["connections"]
sys.exit(0 if c.get(sys.argv[1], {}).get("connected") else 1)' "$idb" 2>/dev/null; then
            ok=1
            break
        fi
        sleep 0.2
    done
    if [ "$ok" = 0 ]; then
        echo "syncthing ($label): the instances did not connect within $TIMEOUT s" >&2
        show_logs "$S/a.log" "$S/b.log"
        return 1
    fi
    if ! python3 "$WORK/probe.py" wait "$WORK/stage" "$S/a" "$S/b" initial.bin "$TIMEOUT" >/dev/null; then
        echo "syncthing ($label): the initial file did not reach B" >&2
        show_logs "$S/a.log" "$S/b.log"
        return 1
    fi
    ok=0
    for ((i = 0; i < TIMEOUT * 5; i++)); do
        if [ "$(st_api "$ga" "/rest/db/status?folder=bench" | python3 -c 'import json,sys; print(json.load(sys.stdin)["state"])' 2>/dev/null)" = idle ] &&
            [ "$(st_api "$gb" "/rest/db/status?folder=bench" | python3 -c 'import json,sys; print(json.load(sys.stdin)["state"])' 2>/dev/null)" = idle ]; then
            ok=1
            break
        fi
        sleep 0.2
    done
    if [ "$ok" = 0 ]; then
        echo "syncthing ($label): the folders did not become idle" >&2
        show_logs "$S/a.log" "$S/b.log"
        return 1
    fi
    echo "syncthing ($label): connected and in sync after $((SECONDS - t0)) s" >&2
    measure "$label" "$S/a" "$S/b"
    if grep -q "^$label .*FAIL" "$RESULTS"; then show_logs "$S/a.log" "$S/b.log"; fi
    # Nothing but loopback: the peers of the instances' sockets (ss, if present).
    if command -v ss >/dev/null 2>&1; then
        local p
        for p in $(procs_under syncthing "$S"); do
            ss -Htanp 2>/dev/null | grep "pid=$p," | awk '{print $5}' |
                grep -v -e '^127\.0\.0\.1:' -e '^\*:' -e '^0\.0\.0\.0:' -e '^\[::\]:' -e '^\[::ffff:127\.0\.0\.1\]:' |
                sed "s/^/syncthing ($label): socket to a non-loopback address: /" >&2 || true
        done
    fi
    stop_procs_under syncthing "$S"
}

T0=$SECONDS
bench_peerstore
if command -v syncthing >/dev/null 2>&1; then
    syncthing --version 2>/dev/null | head -n1 >&2
    bench_syncthing st10 10
    bench_syncthing st1 1
fi
echo "whole run: $((SECONDS - T0)) s" >&2

python3 - "$RESULTS" "$REPS" "$SMALL_REPS" <<'PY'
import math, statistics, sys
res = {}
for line in open(sys.argv[1]):
    sysname, row, v = line.split()
    res.setdefault((sysname, row), []).append(v)

def stats(sysname, row):
    """(median, p99) or None when not measured, "timeout" when a repetition timed out."""
    v = res.get((sysname, row))
    if not v:
        return None
    if "FAIL" in v:
        return "timeout"
    x = sorted(map(float, v))
    return statistics.median(x), x[max(0, math.ceil(0.99 * len(x)) - 1)]

def cell(s):
    if s is None:
        return " | "
    if s == "timeout":
        return "timeout | timeout"
    return "%.3f | %.3f" % s

def ratio(p, s):
    if not isinstance(p, tuple) or not isinstance(s, tuple):
        return ""
    return "%.2f / %.2f" % (p[0] / s[0], p[1] / s[1])

print("| case | peerstore median s | peerstore p99 s | syncthing (fsWatcherDelayS 10, default) median s | p99 s "
      "| syncthing (fsWatcherDelayS 1) median s | p99 s | ratio peerstore/syncthing default, median / p99 "
      "| ratio peerstore/syncthing delay 1, median / p99 |")
print("|---|---|---|---|---|---|---|---|---|")
for row, label, n in (("big", "1 MiB file", sys.argv[2]), ("small", "100 small files (1-8 KiB)", sys.argv[3])):
    p, a, b = stats("peerstore", row), stats("st10", row), stats("st1", row)
    print(f"| {label} (x{n}) | {cell(p)} | {cell(a)} | {cell(b)} | {ratio(p, a)} | {ratio(p, b)} |")
PY
echo "(seconds from the write on device A to the file(s) complete on device B; peerstore: 5 local nodes, r = 3, sync --debounce-ms 100 on both devices; syncthing: two local instances, rescanIntervalS 3600; p99: nearest rank, the slowest of fewer than 100; same machine, one run)"
