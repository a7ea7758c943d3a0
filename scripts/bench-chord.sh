#!/usr/bin/env bash
# Chord scale table: writes docs/BENCH-CHORD.md. Not a test; run with `make bench-chord`.
# Env: SEED (default 1), LOOKUPS (default 2000), JOIN_MAX (largest N built by concurrent
# joins, default 4096).
set -euo pipefail
cd "$(dirname "$0")/.."
SEED=${SEED:-1}
LOOKUPS=${LOOKUPS:-2000}
JOIN_MAX=${JOIN_MAX:-4096}
OUT=docs/BENCH-CHORD.md
cargo build --release -p chord --bin chord-sim >/dev/null
BIN=${CARGO_TARGET_DIR:-target}/release/chord-sim
START=$(date +%s)
field() { python3 -c "import json,sys; d=json.loads(sys.argv[1]); v=d.get(sys.argv[2]); print('-' if v is None else (f'{v:.2f}' if isinstance(v,float) else v))" "$1" "$2"; }
rows_join=""; rows_hops=""; rows_crash=""
for N in 64 128 256 512 1024 2048 4096; do
  R=$(python3 -c "import math; print(max(8, math.ceil(2*math.log2($N))))")
  if [ "$N" -le "$JOIN_MAX" ]; then
    J=$(/usr/bin/time -f %U -o /tmp/bench-chord-cpu.$$ "$BIN" --scenario concurrent-join --nodes "$N" --seed "$SEED" --successors "$R")
    CPU=$(tail -1 /tmp/bench-chord-cpu.$$); rm -f /tmp/bench-chord-cpu.$$
    rows_join+="| $N | $R | $(field "$J" rounds_to_ideal) | $(field "$J" rounds_to_ideal_pred_lists) | $(field "$J" messages) | $(python3 -c "print(f'{$(field "$J" wall_ms)/1000:.2f}')") | $CPU | $(field "$J" invariant_violations) |"$'\n'
  else
    rows_join+="| $N | $R | not run (N > JOIN_MAX=$JOIN_MAX) | | | | | |"$'\n'
  fi
  L=$("$BIN" --scenario lookups --nodes "$N" --seed "$SEED" --successors "$R" --direct-build --lookups "$LOOKUPS")
  rows_hops+="| $N | $(field "$L" mean_hops) | $(field "$L" p99_hops) | $(field "$L" half_log2_n) | $(field "$L" lookups_failed) | $(field "$L" wrong_owners) | $(python3 -c "print(f'{$(field "$L" wall_ms)/1000:.2f}')") |"$'\n'
  row="| $N |"
  for F in 0.1 0.25 0.5; do
    for FF in "" "--fail-fast"; do
      C=$("$BIN" --scenario mass-crash --nodes "$N" --seed "$SEED" --successors "$R" --direct-build --lookups "$LOOKUPS" --crash-fraction "$F" $FF)
      fails=$(field "$C" lookups_failed); n=$(field "$C" lookups); wrong=$(field "$C" wrong_owners)
      row+=" $(python3 -c "print(f'{100*$fails/max(1,$n):.1f}%')") / $wrong |"
    done
  done
  rows_crash+="$row"$'\n'
done
END=$(date +%s)
{
  echo "# Chord benchmark (deterministic simulator)"
  echo
  echo "Made by \`make bench-chord\` (scripts/bench-chord.sh) with SEED=$SEED LOOKUPS=$LOOKUPS JOIN_MAX=$JOIN_MAX"
  echo "on $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(date -u +%Y-%m-%d)."
  echo "Total wall time: $((END-START)) s (the machine is shared with other builds, so wall times are upper bounds)."
  echo
  echo "Latency 5..50 ms per message, stabilize every 1 s (a round), rpc timeout 2 s, lookup timeout 10 s;"
  echo "r = max(8, ceil(2 log2 N))."
  echo
  echo "## Concurrent joins: node 0 creates the ring, N-1 nodes join through it within 10 ms"
  echo
  echo "| N | r | rounds to Ideal | rounds to full predecessor lists | messages | wall s | CPU s (user) | invariant violations |"
  echo "|---|---|---|---|---|---|---|---|"
  printf "%s" "$rows_join"
  echo
  echo "## Lookup path length ($LOOKUPS random lookups from random members on a settled ring)"
  echo
  echo "| N | mean hops | p99 hops | 0.5 log2 N | failed | wrong owner | wall s |"
  echo "|---|---|---|---|---|---|---|"
  printf "%s" "$rows_hops"
  echo
  echo "Hops count every remote node that answered, including the owner itself (the literature's"
  echo "path length counts the hops to the owner's predecessor)."
  echo
  echo "## Lookups after a fraction of nodes crashes at once, stabilization frozen"
  echo
  echo "Cells: failed lookups / wrong owners. *silent*: a dead node never answers (a hop silent for"
  echo "0.5 s gets a parallel query to the next candidate, up to 3 at once; the 10 s lookup timeout"
  echo "fails the lookup); *refused*: the transport reports the failure (\`--fail-fast\`)."
  echo
  echo "| N | 10% silent | 10% refused | 25% silent | 25% refused | 50% silent | 50% refused |"
  echo "|---|---|---|---|---|---|---|"
  printf "%s" "$rows_crash"
} > "$OUT"
echo "wrote $OUT"
