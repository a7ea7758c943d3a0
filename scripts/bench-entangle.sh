#!/usr/bin/env bash
# Entanglement figures: codec encode/decode MiB/s, blocks read per repaired block, and the
# durability table (step-archive vs replication at the same overhead). Prints Markdown.
# Usage: scripts/bench-entangle.sh [--quick]   (QUICK=1 works too)
# The durability tables are what docs/ENTANGLE-SIM.md records.
set -euo pipefail
cd "$(dirname "$0")/.."
CARGO=${CARGO:-cargo}
quick=${QUICK:-0}
[ "${1:-}" = "--quick" ] && quick=1

seeds=10
bench_args=()
if [ "$quick" = 1 ]; then
  seeds=3
  bench_args=(--quick)
fi

$CARGO build --release -p entangle --bin entangle-sim --example bench >&2
target_dir=$($CARGO metadata --format-version 1 --no-deps | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
sim="$target_dir/release/entangle-sim"
bench="$target_dir/release/examples/bench"

echo "# Entanglement benchmark ($(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores, load $(cut -d' ' -f1 /proc/loadavg))"
echo
"$bench" "${bench_args[@]}"
echo
echo "## Durability: 100 nodes, 20,000 data blocks, $seeds seeds, % of data lost after repair"
for code in "2 10 6" "1 10 3" "4 8 12" "2 8 6"; do
  read -r s t p <<<"$code"
  echo
  echo "\`entangle-sim --nodes 100 --blocks 20000 --kill 0.3,0.4,0.5 --seeds $seeds --s $s --t $t --p $p\`"
  echo
  "$sim" --nodes 100 --blocks 20000 --kill 0.3,0.4,0.5 --seeds "$seeds" --s "$s" --t "$t" --p "$p" | tail -n +2
done
