#!/usr/bin/env bash
# Client benchmark: backup and restore throughput (MiB/s, files/s) and peak client RSS of
# peerstore-client against a local 4-node ring (r = 3), for dataset A (1,000 small files, ~32 MiB)
# and B (8 x 32 MiB), and C (a source tree: 10,000 files of a real tree's size distribution in
# ~440 directories 3-6 deep, ~150 MiB; see gen-dataset.py), next to restic backing up / restoring
# the same data to a local repository in the same run. Prints a markdown table: MiB/s, files/s,
# peak RSS and CPU per MiB of each, with the ratios peerstore/restic of speed and of time.
#
# With --entangled it runs the same datasets against two 4-node rings (r = 3), one after the
# other: entanglement off (`--entanglement none`: plain replicated blocks) and on
# (`--entanglement step`: the default code, systematic (s,t,p) = (4,8,8), B = 256 KiB), and adds
# a table of backup and restore MiB/s with entanglement on vs off and their ratio, plus du's
# overhead of each ring. Each ring runs with restic beside it (a repository of its own), the two
# taking turns operation by operation (who goes first rotates), so both rings are compared with
# restic, and "ratio on/off against restic" divides each ring's speed by restic's in the same
# phase: what the machine did between the phases cancels out. (The raw on/off ratio moved by up
# to 0.4 between runs at one commit: whichever ring ran second measured slower. With both rings
# up at once, as bench-alt runs them, the entangled ring's work after a backup slows the other
# ring as much as itself.) ON_FIRST=1 runs the entangled ring first.
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

echo "generating datasets in $WORK/data" >&2
for ds in $DATASETS; do
    python3 scripts/gen-dataset.py "$WORK/data" --only "$ds" >&2
done

export PEERSTORE_PASSPHRASE="bench passphrase"
export RESTIC_PASSWORD="bench passphrase"
HAVE_RESTIC=0
command -v restic >/dev/null 2>&1 && HAVE_RESTIC=1

RESULTS="$WORK/results.txt"
: >"$RESULTS"

# The participants of a run: the peerstore rings (named) and restic. Each ring's client runs
# with its own config and data directories under $WORK/NAME.
# client_cmd NAME: sets CC to the command line of NAME's client (for `measure`, which runs a
# program, not a shell function).
CC=()
client_cmd() {
    CC=("$CLIENT" --config-dir "$WORK/$1/client-config" --data-dir "$WORK/$1/client-data" --peer "$(<"$WORK/$1/ring.addr")")
}
ring_client() {
    client_cmd "$1"
    shift
    "${CC[@]}" "$@"
}

# setup_ring NAME [NODE ARGS...]: a fresh 4-node ring under $WORK/NAME and a client joined to it.
setup_ring() {
    local name="$1"
    shift
    echo "starting a 4-node ring '$name' (r = 3${*:+, $*})" >&2
    start_ring "$name" "$@"
    echo "$RING_ADDR" >"$WORK/$name/ring.addr"
    ring_client "$name" join "$("$NODE" invite --data-dir "$WORK/$name/node0" --role user --label bench)" >/dev/null
    ring_client "$name" init >/dev/null
}

# backup_one WHO DS: backs DS up with WHO (a ring's name, or `restic-RING`: restic beside that
# ring, with its own repository); appends
# "WHO DS seconds rss_kib cpu_s disk_ratio moved_ratio" to $WORK/backups. CPU over all
# processes: the client's (rusage) and, for a ring, its nodes' (/proc) during the run; disk:
# the ring's data directories before and right after the backup; moved: payload bytes over
# every protocol of the ring's nodes (their /metrics), per byte backed up.
backup_one() {
    local who="$1" ds="$2" dir="$WORK/data/$2" mib s rss cpu
    mib=$(find "$dir" -type f -printf '%s\n' | awk '{s += $1} END {print s / 1048576}')
    # Every timed operation starts with the earlier ones' writes on disk (an untimed `sync`):
    # otherwise their writeback lands in its time (session 19: the entangled ring's backup of
    # B ran at 26-30 MiB/s after the plain ring's run and A, against 50 MiB/s on its own, with
    # twice the CPU per MiB).
    sync
    if [[ "$who" == restic-* ]]; then
        read -r s rss cpu < <(measure restic --repo "$WORK/$who.repo" backup -q "$dir")
        echo "$who $ds $s $rss $cpu nan nan" >>"$WORK/backups"
        return
    fi
    local n0 n1 d0 d1 m0 m1
    n0=$(ring_cpu "$WORK/$who")
    d0=$(ring_disk "$WORK/$who")
    m0=$(ring_moved "$WORK/$who")
    client_cmd "$who"
    read -r s rss cpu < <(measure "${CC[@]}" backup "$dir")
    n1=$(ring_cpu "$WORK/$who")
    d1=$(ring_disk "$WORK/$who")
    m1=$(ring_moved "$WORK/$who")
    python3 -c "print('$who $ds $s $rss %.3f %.2f %.2f' % ($cpu + $n1 - $n0, ($d1 - $d0) / ($mib * 1048576), ($m1 - $m0) / ($mib * 1048576)))" >>"$WORK/backups"
}

# restore_one WHO DS REP: restores the last backup of DS with WHO into a new directory, checks
# it byte-identical and appends "WHO DS seconds rss_kib cpu_s" to $WORK/restores.
restore_one() {
    local who="$1" ds="$2" rep="$3" out="$WORK/$1/restore-$2.$3" s rss cpu
    sync
    if [[ "$who" == restic-* ]]; then
        # restic restores the latest snapshot (this dataset's).
        read -r s rss cpu < <(measure restic --repo "$WORK/$who.repo" restore latest -q --target "$out")
    else
        local n0 n1
        n0=$(ring_cpu "$WORK/$who")
        client_cmd "$who"
        read -r s rss cpu < <(measure "${CC[@]}" restore "$out")
        n1=$(ring_cpu "$WORK/$who")
        cpu=$(python3 -c "print('%.3f' % ($cpu + $n1 - $n0))")
    fi
    # (restic restores the backed-up directory's absolute path below the target.)
    local got="$out"
    [[ "$who" == restic-* ]] && got="$out$WORK/data/$ds"
    diff -r "$WORK/data/$ds" "$got" >/dev/null || { echo "$who's restore of $ds differs" >&2; exit 1; }
    echo "$who $ds $s $rss $cpu" >>"$WORK/restores"
}

# turns N WHO...: the participants rotated by N (who goes first changes from turn to turn, so
# that neither the first nor the last place favours one of them).
turns() {
    local n="$1"
    shift
    local all=("$@") i
    for ((i = 0; i < ${#all[@]}; i++)); do
        echo "${all[$(((i + n) % ${#all[@]}))]}"
    done
}

: >"$WORK/backups"
: >"$WORK/restores"
: >"$WORK/overheads"
# One ring at a time (with both up, the entangled ring's work after a backup, its parities and
# replica management, would slow the other ring's operations as much as its own), restic
# beside it taking turns operation by operation.
if [ "$ENTANGLED" = 1 ] && [ -n "${ON_FIRST:-}" ]; then
    PHASES=("on --entanglement step" "off --entanglement none")
elif [ "$ENTANGLED" = 1 ]; then
    PHASES=("off --entanglement none" "on --entanglement step")
else
    PHASES=("ring")
fi
for phase in "${PHASES[@]}"; do
    read -r -a ring_args <<<"$phase"
    ring="${ring_args[0]}"
    setup_ring "${ring_args[@]}"
    WHO=("$ring")
    if [ "$HAVE_RESTIC" = 1 ]; then
        restic init --repo "$WORK/restic-$ring.repo" -q >/dev/null
        WHO+=("restic-$ring")
    fi
    turn=0
    for ds in $DATASETS; do
        # A fresh backup (new data) by each, then the restores, each into a new directory
        # (nothing is deleted in between: see REPS above).
        mapfile -t order < <(turns "$turn" "${WHO[@]}")
        for who in "${order[@]}"; do backup_one "$who" "$ds"; done
        turn=$((turn + 1))
        for ((rep = 1; rep <= REPS; rep++)); do
            mapfile -t order < <(turns "$turn" "${WHO[@]}")
            for who in "${order[@]}"; do restore_one "$who" "$ds" "$rep"; done
            turn=$((turn + 1))
        done
        for who in "${WHO[@]}"; do
            echo "$who $ds restore seconds: $(awk -v w="$who" -v d="$ds" '$1 == w && $2 == d {printf "%s ", $3}' "$WORK/restores")" >&2
        done
        overhead=$(ring_client "$ring" --json du | python3 -c '
import json, sys
e = json.loads(sys.stdin.read().splitlines()[-1]).get("entanglement") or {}
print("%.2f" % e["overhead"] if e.get("codewords") else "nan")')
        echo "$ring $ds $overhead" >>"$WORK/overheads"
    done
    stop_nodes_under "$WORK/$ring"
done

# One row per (participant, dataset): mib files backup_s backup_rss backup_cpu disk moved
# restore_s (median) restore_rss (largest) restore_cpu (median) overhead.
python3 - "$WORK" $DATASETS >"$RESULTS" <<'PY'
import os, statistics, sys
work, datasets = sys.argv[1], sys.argv[2:]
b = {}
for l in open(os.path.join(work, "backups")):
    who, ds, *v = l.split()
    b[(who, ds)] = v
r = {}
for l in open(os.path.join(work, "restores")):
    who, ds, s, rss, cpu = l.split()
    r.setdefault((who, ds), []).append((float(s), int(rss), float(cpu)))
o = {}
if os.path.exists(os.path.join(work, "overheads")):
    for l in open(os.path.join(work, "overheads")):
        who, ds, v = l.split()
        o[(who, ds)] = v
for (who, ds), v in b.items():
    d = os.path.join(work, "data", ds)
    size = sum(os.path.getsize(os.path.join(p, f)) for p, _, fs in os.walk(d) for f in fs)
    files = sum(len(fs) for _, _, fs in os.walk(d))
    rs = r.get((who, ds), [])
    print(who, ds, "%.3f" % (size / 1048576), files, *v,
          "%.3f" % statistics.median(x[0] for x in rs), max(x[1] for x in rs),
          "%.3f" % statistics.median(x[2] for x in rs), o.get((who, ds), "nan"))
PY
python3 - "$RESULTS" "$ENTANGLED" <<'PY'
import sys
rows = [l.split() for l in open(sys.argv[1]) if l.strip()]
entangled = sys.argv[2] == "1"
by = {(r[0], r[1]): r for r in rows}
label = {"ring": "peerstore (default storage)", "on": "peerstore (default: entangled)", "off": "peerstore (entanglement off)"}
def f(x):
    return float(x)
print("| dataset | op | ring | MiB/s | files/s | peak RSS MiB | CPU s/MiB (client + nodes) | restic MiB/s | restic files/s | restic peak RSS MiB | restic CPU s/MiB | MiB/s ratio peerstore/restic | time ratio peerstore/restic |")
print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
for who, ds, mib, files, pb, pbr, pbc, disk, moved, pr, prr, prc, ovh in rows:
    if who.startswith("restic-"):
        continue
    mib, files = f(mib), int(files)
    rr = by.get(("restic-" + who, ds))
    for op, ps, prss, pc, ri in (("backup", pb, pbr, pbc, (4, 5, 6)), ("restore", pr, prr, prc, (9, 10, 11))):
        ps, pc = f(ps), f(pc)
        rs, rrss, rc = (f(rr[ri[0]]), int(rr[ri[1]]), f(rr[ri[2]])) if rr else (float("nan"), 0, float("nan"))
        print(f"| {ds} ({files} files, {mib:.0f} MiB) | {op} | {label.get(who, who)} | {mib / ps:.1f} | {files / ps:.0f} | {int(prss) / 1024:.0f} | {pc / mib:.3f} "
              f"| {mib / rs:.1f} | {files / rs:.0f} | {rrss / 1024:.0f} | {rc / mib:.3f} | {rs / ps:.2f} | {ps / rs:.2f} |")
PY
if [ "$ENTANGLED" = 1 ]; then
    rings="two rings one after the other (off: --entanglement none, every block stored 3 times; on: the default code), each taking turns with restic (its own repository) operation by operation"
else
    rings="the nodes' default storage (entanglement step, systematic (4,8,8), unless their default changes), taking turns with restic"
fi
echo "(peerstore: 4 local nodes, r = 3, $rings, over libp2p; restic: one local repository, no replication; same machine, warm page cache; restores: median of $REPS; time ratio below 1.0: peerstore faster)"

if [ "$ENTANGLED" = 1 ]; then
    echo
    # shellcheck disable=SC2086 # one argument per dataset
    python3 - "$RESULTS" $DATASETS <<'PY'
import sys
rows = {(l.split()[0], l.split()[1]): l.split() for l in open(sys.argv[1]) if l.strip()}
print("| dataset | op | entanglement off MiB/s | entanglement on MiB/s | ratio on/off | ratio on/off against restic | CPU s/MiB off | CPU s/MiB on | disk bytes per byte right after the backup, off / on | network bytes moved per byte backed up, off / on |")
print("|---|---|---|---|---|---|---|---|---|---|")
for ds in sys.argv[2:]:
    off, on = rows.get(("off", ds)), rows.get(("on", ds))
    if not off or not on:
        continue
    roff, ron = rows.get(("restic-off", ds)), rows.get(("restic-on", ds))
    mib, files = float(off[2]), int(off[3])
    for op, i, c in (("backup", 4, 6), ("restore", 9, 11)):
        a, b = mib / float(off[i]), mib / float(on[i])
        # Each ring's time over restic's in the same phase: what the machine did between the
        # phases cancels out.
        vs = f"{(float(ron[i]) / float(on[i])) / (float(roff[i]) / float(off[i])):.2f}" if roff and ron else "nan"
        disk = f"{off[7]} / {on[7]}" if op == "backup" else ""
        moved = f"{off[8]} / {on[8]}" if op == "backup" else ""
        print(f"| {ds} ({files} files, {mib:.0f} MiB) | {op} | {a:.1f} | {b:.1f} | {b / a:.2f} | {vs} | {float(off[c]) / mib:.3f} | {float(on[c]) / mib:.3f} | {disk} | {moved} |")
for ds in sys.argv[2:]:
    on = rows.get(("on", ds))
    if on:
        print(f"\ndu after {ds} on the entangled ring: parity bytes / document bytes = x{on[12]} (before replica management: (s x r + p)/s = 5 with new parities at one copy, the default; 9 with --fresh-parities replicated)", end="")
print()
PY
    echo "(two 4-node rings, r = 3, one after the other on the same machine; on: the default code, systematic (s,t,p) = (4,8,8), B = 256 KiB, replica management as by default; 'against restic': each ring's speed over restic's in its own phase, on over off)"
fi
