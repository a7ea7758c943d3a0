#!/usr/bin/env bash
# What a backup costs after it returns: the nodes' CPU and disk from the start of one backup
# until the ring has settled, with entanglement on (the default) against off. With the
# default code the encoders store the parities once their clients pause, and replica
# management brings blocks down to one copy once they are 10 minutes old (the minimum age of
# deletions), so the CPU of a backup's own time (bench-client's "CPU s/MiB") leaves out part
# of its cost: this measures all of it.
#
# Both 4-node rings (r = 3, default settings; off: `--entanglement none`) are up at once; one
# backup of dataset B (8 x 32 MiB) goes into each, one after the other, then both are left
# alone and every 30 s for SECS seconds (default 780: past the minimum age) the script prints
# each ring's node CPU since its backup began (user + system, all nodes, /proc) and the bytes
# in its nodes' data directories. Ends with the CPU seconds per MiB backed up, on and off,
# over the whole time: the plain ring's figure includes its idle cost, which the entangled
# ring pays too, so their difference is what entanglement costs.
#
# The nodes are stopped and the work directory removed however the run ends (success,
# failure, Ctrl-C).
#
# Usage: scripts/bench-settle.sh [SECS]
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
# shellcheck source=lib-nodes.sh
source scripts/lib-nodes.sh

SECS="${1:-780}"
case "$SECS" in
'' | *[!0-9]*)
    echo "usage: scripts/bench-settle.sh [SECS]" >&2
    exit 2
    ;;
esac

WORK=""
bench_traps bench-settle

CARGO="${CARGO:-cargo}"
TARGET="${CARGO_TARGET_DIR:-$ROOT/target}"
"$CARGO" build --release -p peerstore-node -p peerstore-client >&2
NODE="$TARGET/release/peerstore-node"
CLIENT="$TARGET/release/peerstore-client"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/peerstore-bench.XXXXXX")"
export PEERSTORE_PASSPHRASE="bench passphrase"

python3 scripts/gen-dataset.py "$WORK/data" --only B >&2
DATA="$WORK/data/B"
MIB=$(find "$DATA" -type f -printf '%s\n' | awk '{s += $1} END {print s / 1048576}')

declare -A C0
start_bench_rings --http 127.0.0.1:0
for name in off on; do
    sync
    C0[$name]=$(ring_cpu "$WORK/$name")
    t=$(date +%s.%N)
    bench_client "$name" backup "$DATA" >/dev/null 2>&1
    echo "$name: backup of $MIB MiB took $(python3 -c "import time; print('%.2f' % (time.time() - $t))") s, nodes' CPU $(python3 -c "print('%.2f' % ($(ring_cpu "$WORK/$name") - ${C0[$name]}))") s" >&2
done

echo "| seconds after the backups | CPU s on | CPU s off | disk bytes per byte on | disk bytes per byte off |"
echo "|---|---|---|---|---|"
for ((t = 0; t <= SECS; t += 30)); do
    [ "$t" -gt 0 ] && sleep 30
    python3 -c "
mib = $MIB
on, off = $(ring_cpu "$WORK/on") - ${C0[on]}, $(ring_cpu "$WORK/off") - ${C0[off]}
print('| %d | %.1f | %.1f | %.2f | %.2f |' % ($t, on, off, $(ring_disk "$WORK/on") / (mib * 1048576), $(ring_disk "$WORK/off") / (mib * 1048576)))
"
done
python3 -c "
mib = $MIB
on, off = $(ring_cpu "$WORK/on") - ${C0[on]}, $(ring_cpu "$WORK/off") - ${C0[off]}
print('nodes\\' CPU per MiB backed up, from the backup to %d s after it: on %.3f s, off %.3f s (off includes the idle cost both rings pay), on - off %.3f s' % ($SECS, on / mib, off / mib, (on - off) / mib))
"
# What the nodes did meanwhile: requests answered by kind and the nodes' own ring lookups,
# summed over each ring's nodes (their /metrics), from start to the end of the run.
python3 - "$WORK" <<'PY'
import glob, re, sys, urllib.request
work = sys.argv[1]
rows = {}
for name in ("on", "off"):
    for f in sorted(glob.glob(f"{work}/{name}/node*/http.addr")):
        addr = open(f).read().strip()
        try:
            body = urllib.request.urlopen(f"http://{addr}/metrics", timeout=10).read().decode()
        except OSError as e:
            print(f"{f}: /metrics: {e}", file=sys.stderr)
            continue
        for line in body.splitlines():
            m = re.match(r'peerstore_requests_total\{protocol="(\w+)",kind="([\w-]+)",result="[^"]*"\} (\S+)', line)
            if m:
                key = f"{m.group(1)} {m.group(2)}"
            elif line.startswith("peerstore_ring_lookups_total "):
                key = "ring lookups"
            else:
                continue
            rows.setdefault(key, {"on": 0.0, "off": 0.0})[name] += float(line.rsplit(" ", 1)[1])
print()
print("| requests answered (all nodes, whole run) | on | off |")
print("|---|---|---|")
for key in sorted(rows, key=lambda k: -rows[k]["on"]):
    r = rows[key]
    print(f"| {key} | {r['on']:,.0f} | {r['off']:,.0f} |")
PY
echo "(two 4-node rings, r = 3, up at once; on: the default code, systematic (4,8,8), B = 256 KiB, parities after the acknowledgement, replica management with the 10-minute minimum age of deletions)"
