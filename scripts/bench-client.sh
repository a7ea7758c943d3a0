#!/usr/bin/env bash
# Client benchmark: backup and restore throughput (MiB/s, files/s) and peak client RSS of
# peerstore-client against a local 4-node ring (r = 3), for dataset A (1,000 small files, ~32 MiB)
# and B (8 x 32 MiB), next to restic backing up / restoring the same data to a local repository.
# Prints a markdown table. Usage: scripts/bench-client.sh [WORK_DIR]
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
CARGO="${CARGO:-cargo}"
"$CARGO" build --release -p peerstore-node -p peerstore-client >&2
TARGET="${CARGO_TARGET_DIR:-$ROOT/target}"
NODE="$TARGET/release/peerstore-node"
CLIENT="$TARGET/release/peerstore-client"

if ! command -v restic >/dev/null 2>&1; then
    echo "restic not found; installing it with apt-get" >&2
    (apt-get install -y restic >&2 || (apt-get update >&2 && apt-get install -y restic >&2)) ||
        echo "could not install restic: its columns stay empty" >&2
fi

WORK="${1:-$(mktemp -d "${TMPDIR:-/tmp}/peerstore-bench.XXXXXX")}"
mkdir -p "$WORK"
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
    if [ -z "${KEEP:-}" ]; then rm -rf "$WORK"; fi
}
trap cleanup EXIT INT TERM

start_node() {
    local dir="$WORK/node$1"
    mkdir -p "$dir"
    local args=(--listen /ip4/127.0.0.1/tcp/0 --data-dir "$dir" --replication 3)
    if [ -n "${2:-}" ]; then args+=(--initial-peer "$2"); fi
    "$NODE" "${args[@]}" >/dev/null 2>"$dir/node.log" &
    PIDS+=("$!")
    for _ in $(seq 1 200); do
        if [ -s "$dir/node.addr" ]; then head -n1 "$dir/node.addr"; return 0; fi
        sleep 0.05
    done
    cat "$dir/node.log" >&2
    return 1
}

# measure CMD...: runs CMD, prints "<seconds> <peak RSS KiB>".
measure() {
    python3 -c '
import resource, subprocess, sys, time
t = time.monotonic()
r = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL)
dt = time.monotonic() - t
if r.returncode:
    sys.exit("command failed (%d): %s" % (r.returncode, " ".join(sys.argv[1:])))
print("%.3f %d" % (dt, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss))
' "$@"
}

echo "generating datasets in $WORK/data" >&2
python3 scripts/gen-dataset.py "$WORK/data" >&2

echo "starting a 4-node ring (r = 3)" >&2
A0="$(start_node 0)"
for i in 1 2 3; do start_node "$i" "$A0" >/dev/null; done
sleep 3

export PEERSTORE_PASSPHRASE="bench passphrase"
export RESTIC_PASSWORD="bench passphrase"
C=("$CLIENT" --config-dir "$WORK/client-config" --data-dir "$WORK/client-data" --peer "$A0")
"${C[@]}" init >/dev/null
HAVE_RESTIC=0
if command -v restic >/dev/null 2>&1; then
    restic init --repo "$WORK/restic-repo" -q >/dev/null
    HAVE_RESTIC=1
fi

RESULTS="$WORK/results.txt"
: >"$RESULTS"
for ds in A B; do
    dir="$WORK/data/$ds"
    mib=$(du -sb "$dir" | awk '{print $1 / 1048576}')
    files=$(find "$dir" -type f | wc -l)
    # peerstore: a fresh backup (new data) and a restore into an empty directory.
    read -r pb_s pb_rss < <(measure "${C[@]}" backup "$dir")
    read -r pr_s pr_rss < <(measure "${C[@]}" restore "$WORK/restore-ps-$ds")
    diff -r "$dir" "$WORK/restore-ps-$ds" >/dev/null || { echo "peerstore restore of $ds differs" >&2; exit 1; }
    # restore restores the latest snapshot (this dataset).
    rb_s=nan rb_rss=0 rr_s=nan rr_rss=0
    if [ "$HAVE_RESTIC" = 1 ]; then
        read -r rb_s rb_rss < <(measure restic --repo "$WORK/restic-repo" backup -q "$dir")
        read -r rr_s rr_rss < <(measure restic --repo "$WORK/restic-repo" restore latest -q --target "$WORK/restore-restic-$ds")
    fi
    echo "$ds $mib $files $pb_s $pb_rss $pr_s $pr_rss $rb_s $rb_rss $rr_s $rr_rss" >>"$RESULTS"
done

python3 - "$RESULTS" <<'PY'
import math, sys
rows = [l.split() for l in open(sys.argv[1]) if l.strip()]
print("| dataset | op | peerstore MiB/s | peerstore files/s | peerstore peak RSS MiB | restic MiB/s | restic files/s | restic peak RSS MiB | MiB/s ratio peerstore/restic |")
print("|---|---|---|---|---|---|---|---|---|")
for ds, mib, files, pb, pbr, pr, prr, rb, rbr, rr, rrr in rows:
    mib, files = float(mib), int(files)
    for op, ps, prss, rs, rrss in (("backup", pb, pbr, rb, rbr), ("restore", pr, prr, rr, rrr)):
        ps, rs = float(ps), float(rs)
        r_mibs = mib / rs if rs == rs else float("nan")
        ratio = (mib / ps) / r_mibs if r_mibs == r_mibs else float("nan")
        print(f"| {ds} ({files} files, {mib:.0f} MiB) | {op} | {mib / ps:.1f} | {files / ps:.0f} | {int(prss) / 1024:.0f} "
              f"| {r_mibs:.1f} | {files / rs if rs == rs else float('nan'):.0f} | {int(rrss) / 1024:.0f} | {ratio:.2f} |")
PY
echo "(peerstore: 4 local nodes, r = 3, every block stored 3 times over libp2p; restic: one local repository, no replication; same machine, warm page cache)"
