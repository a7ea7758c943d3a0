#!/usr/bin/env bash
# Client benchmark: backup and restore throughput (MiB/s, files/s) and peak client RSS of
# peerstore-client against a local 4-node ring (r = 3), for dataset A (1,000 small files, ~32 MiB)
# and B (8 x 32 MiB), and C (a source tree: 10,000 files of a real tree's size distribution in
# ~440 directories 3-6 deep, ~150 MiB; see gen-dataset.py), next to restic backing up / restoring
# the same data to a local repository in the same run. Prints two markdown tables: MiB/s and
# files/s, then seconds with the ratio of times peerstore/restic (below 1.0: peerstore faster).
#
# With --entangled it runs the same datasets against two 4-node rings (r = 3), one after the
# other: entanglement off (`--entanglement none`: plain replicated blocks) and on
# (`--entanglement step`: the default code, systematic (s,t,p) = (4,8,8), B = 256 KiB), and adds a table of backup and
# restore MiB/s with entanglement on vs off and their ratio, plus du's overhead of each ring.
# (The restic table then describes the ring with entanglement off.)
#
# ON_FIRST=1 runs the entangled ring first (the rings' order moves the ratios: session 19).
#
# --datasets LIST (comma-separated, default A,B,C) runs only those, e.g. `--datasets C` for the
# source tree alone.
#
# Restores are timed REPS times (default 3), peerstore and restic in turn, each into a new
# directory, and the tables show the median (stderr lists every time): on a shared machine
# single runs of either vary by 2x. Nothing is deleted between runs: ext4 without a journal
# (this machine's root file system) scans the inodes freed in the last 30 s at every inode it
# allocates, so a restore started right after a large `rm -rf` is slowed by it, whichever tool
# it is. For the same reason, avoid starting a run right after another run's clean-up.
#
# CLIENT_BIN / NODE_BIN (both, paths) run prebuilt binaries instead of building this tree, e.g.
# to measure an older build in the same way.
#
# Usage: scripts/bench-client.sh [--entangled] [--datasets A,B,C] [WORK_DIR]
set -euo pipefail

ENTANGLED=0
DATASETS="A B C"
REPS="${REPS:-3}"
while [ $# -gt 0 ]; do
    case "$1" in
    --entangled) ENTANGLED=1 ;;
    --datasets)
        [ $# -ge 2 ] || { echo "bench-client: --datasets needs a list, e.g. A,C" >&2; exit 2; }
        DATASETS="${2//,/ }"
        shift
        ;;
    --datasets=*) DATASETS="${1#--datasets=}" && DATASETS="${DATASETS//,/ }" ;;
    -*) echo "bench-client: unknown option $1" >&2; exit 2 ;;
    *) break ;;
    esac
    shift
done
for ds in $DATASETS; do
    case "$ds" in
    A | B | C) ;;
    *) echo "bench-client: unknown dataset $ds (A, B or C)" >&2; exit 2 ;;
    esac
done

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
# shellcheck source=scripts/lib-nodes.sh
. "$ROOT/scripts/lib-nodes.sh"

# The nodes are stopped and the work directory removed (unless KEEP is set) however the run
# ends: success, failure, Ctrl-C or SIGTERM. A WORK_DIR given as argument must be new or empty
# (it is removed, or emptied if it existed, at the end).
WORK=""
WORK_EXISTED=0
cleanup() {
    local rc=$?
    set +e
    trap '' INT TERM HUP # a second Ctrl-C must not cut the clean-up short (it is bounded)
    if [ -n "$WORK" ]; then
        # Every node started here has its --data-dir below $WORK (see lib-nodes.sh).
        stop_nodes_under "$WORK" || rc=1
        if [ -n "${KEEP:-}" ]; then
            echo "keeping $WORK" >&2
        elif [ "$WORK_EXISTED" = 1 ]; then
            find "$WORK" -mindepth 1 -maxdepth 1 -exec rm -rf {} +
        else
            rm -rf "$WORK"
        fi
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'echo "bench-client: interrupted" >&2; exit 130' INT
trap 'echo "bench-client: terminated" >&2; exit 143' TERM
trap 'exit 129' HUP

CARGO="${CARGO:-cargo}"
TARGET="${CARGO_TARGET_DIR:-$ROOT/target}"
if [ -n "${CLIENT_BIN:-}" ] && [ -n "${NODE_BIN:-}" ]; then
    NODE="$NODE_BIN"
    CLIENT="$CLIENT_BIN"
else
    "$CARGO" build --release -p peerstore-node -p peerstore-client >&2
    NODE="$TARGET/release/peerstore-node"
    CLIENT="$TARGET/release/peerstore-client"
fi

if ! command -v restic >/dev/null 2>&1; then
    echo "restic not found; installing it with apt-get" >&2
    (apt-get install -y restic >&2 || (apt-get update >&2 && apt-get install -y restic >&2)) ||
        echo "could not install restic: its columns stay empty" >&2
fi

if [ -n "${1:-}" ]; then
    if [ -d "$1" ]; then
        if [ -n "$(ls -A "$1")" ]; then
            echo "bench-client: WORK_DIR $1 is not empty (it would be emptied at the end)" >&2
            exit 2
        fi
        WORK_EXISTED=1
    fi
    mkdir -p "$1"
    WORK="$(cd "$1" && pwd)"
else
    WORK="$(mktemp -d "${TMPDIR:-/tmp}/peerstore-bench.XXXXXX")"
fi

# start_node DIR [FIRST_NODE_DIR] [NODE ARGS...]: starts a node in the background of this
# shell (never call it inside $(...): a subshell would own the node), its pid in DIR/node.pid;
# with FIRST_NODE_DIR it joins that node's ring (invite minted from its ring key).
start_node() {
    local dir="$1" via="${2:-}"
    shift 2 || shift $#
    local args=(--listen /ip4/127.0.0.1/tcp/0 --replication 3 --http 127.0.0.1:0 "$@")
    if [ -n "$via" ]; then args+=(--join-local "$via"); fi
    start_node_bg "$dir" "$NODE" "${args[@]}"
}

# start_ring NAME [NODE ARGS...]: a 4-node ring under $WORK/NAME, each node joining once the
# previous one is up; sets RING_ADDR to the first node's address.
RING_ADDR=""
start_ring() {
    local name="$1" i
    shift
    start_node "$WORK/$name/node0" "" "$@"
    RING_ADDR="$(wait_node_addr "$WORK/$name/node0")"
    for i in 1 2 3; do
        start_node "$WORK/$name/node$i" "$WORK/$name/node0" "$@"
        wait_node_addr "$WORK/$name/node$i" >/dev/null
    done
    sleep 3
}

# median N...: the median of the numbers given.
median() {
    python3 -c 'import statistics, sys; print("%.3f" % statistics.median(map(float, sys.argv[1:])))' "$@"
}

# measure CMD...: runs CMD, prints "<seconds> <peak RSS KiB> <CPU seconds (user + system)>".
measure() {
    python3 -c '
import resource, subprocess, sys, time
t = time.monotonic()
r = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL)
dt = time.monotonic() - t
if r.returncode:
    sys.exit("command failed (%d): %s" % (r.returncode, " ".join(sys.argv[1:])))
u = resource.getrusage(resource.RUSAGE_CHILDREN)
print("%.3f %d %.3f" % (dt, u.ru_maxrss, u.ru_utime + u.ru_stime))
' "$@"
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

# ring_moved DIR: payload bytes the nodes under DIR have received in requests and sent in
# answers so far, over every protocol (their /metrics, `peerstore_payload_bytes_total`): every
# byte that crossed the network between client and nodes or between nodes, counted once.
ring_moved() {
    python3 - "$1"/node* <<'PY'
import sys, urllib.request
total = 0
for d in sys.argv[1:]:
    try:
        addr = open(d + "/http.addr").read().strip()
        text = urllib.request.urlopen("http://%s/metrics" % addr, timeout=10).read().decode()
    except OSError:
        continue
    for line in text.splitlines():
        if line.startswith("peerstore_payload_bytes_total"):
            total += float(line.rsplit(" ", 1)[1])
print("%d" % total)
PY
}

# ring_disk DIR: bytes on the disks of the nodes under DIR (their data directories).
ring_disk() {
    du -sb "$1"/node* | awk '{s += $1} END {print s + 0}'
}

echo "generating datasets in $WORK/data" >&2
for ds in $DATASETS; do
    python3 scripts/gen-dataset.py "$WORK/data" --only "$ds" >&2
done

export PEERSTORE_PASSPHRASE="bench passphrase"
export RESTIC_PASSWORD="bench passphrase"
HAVE_RESTIC=0
if command -v restic >/dev/null 2>&1; then
    restic init --repo "$WORK/restic-repo" -q >/dev/null
    HAVE_RESTIC=1
fi

RESULTS="$WORK/results.txt"
ENT_RESULTS="$WORK/results-entangled.txt"
: >"$RESULTS"
: >"$ENT_RESULTS"

# bench_ring NAME WITH_RESTIC [NODE ARGS...]: a fresh ring and client; backup and restores of
# each dataset. Appends "NAME ds mib files backup_s restore_s overhead" to $ENT_RESULTS and,
# with WITH_RESTIC=1, the peerstore-vs-restic row to $RESULTS (restore: median of REPS, peak
# RSS: the largest).
bench_ring() {
    local name="$1" with_restic="$2"
    shift 2
    echo "starting a 4-node ring '$name' (r = 3${*:+, $*})" >&2
    start_ring "$name" "$@"
    local a0="$RING_ADDR"
    local C=("$CLIENT" --config-dir "$WORK/$name/client-config" --data-dir "$WORK/$name/client-data" --peer "$a0")
    "${C[@]}" join "$("$NODE" invite --data-dir "$WORK/$name/node0" --role user --label bench)" >/dev/null
    "${C[@]}" init >/dev/null
    for ds in $DATASETS; do
        local dir="$WORK/data/$ds" out="$WORK/$name/restore-$ds"
        local mib files
        mib=$(du -sb "$dir" | awk '{print $1 / 1048576}')
        files=$(find "$dir" -type f | wc -l)
        # A fresh backup (new data) by each, then the restores, peerstore and restic in turn,
        # each into a new directory (nothing is deleted in between: see REPS above).
        # CPU over all processes: the client's (rusage) and the nodes' (/proc) during the run;
        # disk: the nodes' data directories before and right after the backup.
        local n0 n1 d0 d1 pb_cpu rb_cpu=nan
        local m0 m1
        # Every timed operation starts with the earlier ones' writes on disk (an untimed
        # `sync`): otherwise their writeback lands in its time (session 19: the entangled
        # ring's backup of B ran at 26-30 MiB/s after the plain ring's run and A, against
        # 50 MiB/s on its own, with twice the CPU per MiB).
        sync
        n0=$(ring_cpu "$WORK/$name")
        d0=$(ring_disk "$WORK/$name")
        m0=$(ring_moved "$WORK/$name")
        read -r pb_s pb_rss pb_cpu < <(measure "${C[@]}" backup "$dir")
        n1=$(ring_cpu "$WORK/$name")
        d1=$(ring_disk "$WORK/$name")
        m1=$(ring_moved "$WORK/$name")
        local moved
        moved=$(python3 -c "print('%.2f' % (($m1 - $m0) / ($mib * 1048576)))")
        pb_cpu=$(python3 -c "print('%.3f' % ($pb_cpu + $n1 - $n0))")
        local disk_ratio
        disk_ratio=$(python3 -c "print('%.2f' % (($d1 - $d0) / ($mib * 1048576)))")
        local rb_s=nan rb_rss=0 rr_s=nan rr_rss=0 pr_all=() rr_all=() pr_rss=0 rep s rss cpu
        local pr_cpu_all=() rr_cpu_all=()
        if [ "$with_restic" = 1 ] && [ "$HAVE_RESTIC" = 1 ]; then
            sync
            read -r rb_s rb_rss rb_cpu < <(measure restic --repo "$WORK/restic-repo" backup -q "$dir")
        fi
        for ((rep = 1; rep <= REPS; rep++)); do
            sync
            n0=$(ring_cpu "$WORK/$name")
            read -r s rss cpu < <(measure "${C[@]}" restore "$out.$rep")
            n1=$(ring_cpu "$WORK/$name")
            pr_all+=("$s")
            pr_cpu_all+=("$(python3 -c "print('%.3f' % ($cpu + $n1 - $n0))")")
            ((rss > pr_rss)) && pr_rss=$rss
            diff -r "$dir" "$out.$rep" >/dev/null || { echo "peerstore restore of $ds ($name) differs" >&2; exit 1; }
            if [ "$with_restic" = 1 ] && [ "$HAVE_RESTIC" = 1 ]; then
                # restore restores the latest snapshot (this dataset).
                sync
                read -r s rss cpu < <(measure restic --repo "$WORK/restic-repo" restore latest -q --target "$WORK/restore-restic-$ds.$rep")
                rr_all+=("$s")
                rr_cpu_all+=("$cpu")
                ((rss > rr_rss)) && rr_rss=$rss
            fi
        done
        local pr_cpu rr_cpu=nan
        pr_cpu=$(median "${pr_cpu_all[@]}")
        [ "${#rr_cpu_all[@]}" = 0 ] || rr_cpu=$(median "${rr_cpu_all[@]}")
        local pr_s
        pr_s=$(median "${pr_all[@]}")
        [ "${#rr_all[@]}" = 0 ] || rr_s=$(median "${rr_all[@]}")
        echo "$name $ds restore seconds: peerstore ${pr_all[*]}${rr_all[*]:+, restic ${rr_all[*]}}" >&2
        local overhead
        overhead=$("${C[@]}" --json du | python3 -c '
import json, sys
e = json.loads(sys.stdin.read().splitlines()[-1]).get("entanglement") or {}
print("%.2f" % e["overhead"] if e.get("codewords") else "nan")')
        echo "$name $ds $mib $files $pb_s $pr_s $overhead $pb_cpu $pr_cpu $disk_ratio $moved" >>"$ENT_RESULTS"
        if [ "$with_restic" = 1 ]; then
            echo "$ds $mib $files $pb_s $pb_rss $pr_s $pr_rss $rb_s $rb_rss $rr_s $rr_rss $pb_cpu $pr_cpu ${rb_cpu:-nan} $rr_cpu $disk_ratio" >>"$RESULTS"
        fi
    done
    stop_nodes_under "$WORK/$name"
}

if [ "$ENTANGLED" = 1 ] && [ -n "${ON_FIRST:-}" ]; then
    # The entangled ring first (to see what the order does to the ratios).
    bench_ring on 0 --entanglement step
    bench_ring off 1 --entanglement none
elif [ "$ENTANGLED" = 1 ]; then
    bench_ring off 1 --entanglement none
    bench_ring on 0 --entanglement step
else
    bench_ring ring 1
fi

python3 - "$RESULTS" <<'PY'
import math, sys
rows = [l.split() for l in open(sys.argv[1]) if l.strip()]
print("| dataset | op | peerstore MiB/s | peerstore files/s | peerstore peak RSS MiB | peerstore CPU s/MiB (client + nodes) | restic MiB/s | restic files/s | restic peak RSS MiB | restic CPU s/MiB | MiB/s ratio peerstore/restic |")
print("|---|---|---|---|---|---|---|---|---|---|---|")
for ds, mib, files, pb, pbr, pr, prr, rb, rbr, rr, rrr, pbc, prc, rbc, rrc, _disk in rows:
    mib, files = float(mib), int(files)
    for op, ps, prss, rs, rrss, pc, rc in (("backup", pb, pbr, rb, rbr, pbc, rbc), ("restore", pr, prr, rr, rrr, prc, rrc)):
        ps, rs, pc, rc = float(ps), float(rs), float(pc), float(rc)
        r_mibs = mib / rs if rs == rs else float("nan")
        ratio = (mib / ps) / r_mibs if r_mibs == r_mibs else float("nan")
        print(f"| {ds} ({files} files, {mib:.0f} MiB) | {op} | {mib / ps:.1f} | {files / ps:.0f} | {int(prss) / 1024:.0f} | {pc / mib:.3f} "
              f"| {r_mibs:.1f} | {files / rs if rs == rs else float('nan'):.0f} | {int(rrss) / 1024:.0f} | {rc / mib:.3f} | {ratio:.2f} |")
PY
echo
python3 - "$RESULTS" <<'PY'
import sys
rows = [l.split() for l in open(sys.argv[1]) if l.strip()]
print("| dataset | op | peerstore s | restic s | time ratio peerstore/restic |")
print("|---|---|---|---|---|")
for ds, mib, files, pb, pbr, pr, prr, rb, rbr, rr, rrr, *_ in rows:
    for op, ps, rs in (("backup", pb, rb), ("restore", pr, rr)):
        ps, rs = float(ps), float(rs)
        print(f"| {ds} ({int(files)} files, {float(mib):.0f} MiB) | {op} | {ps:.2f} | {rs:.2f} | {ps / rs:.2f} |")
PY
if [ "$ENTANGLED" = 1 ]; then
    ring_kind="entanglement off (--entanglement none): every block stored 3 times"
else
    ring_kind="the nodes' default storage (entanglement step, systematic (4,8,8), unless their default changes)"
fi
echo "(peerstore: 4 local nodes, r = 3, $ring_kind, over libp2p; restic: one local repository, no replication; same machine, warm page cache; restores: median of $REPS)"

if [ "$ENTANGLED" = 1 ]; then
    echo
    # shellcheck disable=SC2086 # one argument per dataset
    python3 - "$ENT_RESULTS" $DATASETS <<'PY'
import sys
rows = {}
for l in open(sys.argv[1]):
    if l.strip():
        name, ds, mib, files, b, r, o, bc, rc, disk, moved = l.split()
        rows[(name, ds)] = (float(mib), int(files), float(b), float(r), o, float(bc), float(rc), disk, moved)
print("| dataset | op | entanglement off MiB/s | entanglement on MiB/s | ratio on/off | CPU s/MiB off | CPU s/MiB on | disk bytes per byte right after the backup, off / on | network bytes moved per byte backed up, off / on |")
print("|---|---|---|---|---|---|---|---|---|")
for ds in sys.argv[2:]:
    off, on = rows.get(("off", ds)), rows.get(("on", ds))
    if not off or not on:
        continue
    mib, files = off[0], off[1]
    for op, i, c in (("backup", 2, 5), ("restore", 3, 6)):
        a, b = mib / off[i], mib / on[i]
        disk = f"{off[7]} / {on[7]}" if op == "backup" else ""
        moved = f"{off[8]} / {on[8]}" if op == "backup" else ""
        print(f"| {ds} ({files} files, {mib:.0f} MiB) | {op} | {a:.1f} | {b:.1f} | {b / a:.2f} | {off[c] / mib:.3f} | {on[c] / mib:.3f} | {disk} | {moved} |")
for ds in sys.argv[2:]:
    on = rows.get(("on", ds))
    if on:
        print(f"\ndu after {ds} on the entangled ring: parity bytes / document bytes = x{on[4]} (before replica management: (s x r + p)/s = 5 with new parities at one copy, the default; 9 with --fresh-parities replicated)", end="")
print()
PY
    echo "(two 4-node rings, r = 3, run one after the other on the same machine; on: the default code, systematic (s,t,p) = (4,8,8), B = 256 KiB, replica management as by default)"
fi
