#!/usr/bin/env bash
# Times `liqscan gen` alone on the load test's book (issue 14 target 7: at least 500k lines/s
# on the default load test). Each run prints the generator's own summary, the wall, user and
# sys time, the peak RSS and the stream's SHA-256 (the same on every run of a seed: compare
# it across builds to check the bytes did not change). With PERF=1 (needs `perf`) each run is
# recorded with `perf record -e task-clock` and the CPU seconds of each thread are printed:
# the generating thread (named liqscan; it runs the engine), `gen-writer` (formats and
# writes the lines) and the engine's rayon workers. The last line is a JSON summary of the
# runs (median lines/s among them).
#
# Usage: scripts/gen.sh [OUT_DIR]   (default /tmp/liqscan-gen; the stream is deleted after
# each run). Sizes from the environment (defaults in brackets):
#   ACCOUNTS [1000000]  SYMBOLS [1000]  MESSAGES [10000000]  SEED [1]  MARK_RATIO [0.9]
#   FAULT_RATE [0]  RUNS [1]  PERF [0]
# Time on the 2-core machine (session 8, load average 5-7): 15-20 s a run at MESSAGES=3000000,
# 30-50 s at the default 10M. Disk: ~90 bytes a message, one stream at a time.
set -euo pipefail
cd "$(dirname "$0")/.."

ACCOUNTS=${ACCOUNTS:-1000000}
SYMBOLS=${SYMBOLS:-1000}
MESSAGES=${MESSAGES:-10000000}
SEED=${SEED:-1}
MARK_RATIO=${MARK_RATIO:-0.9}
FAULT_RATE=${FAULT_RATE:-0}
RUNS=${RUNS:-1}
PERF=${PERF:-0}
OUT=${1:-/tmp/liqscan-gen}
mkdir -p "$OUT"

cargo build --release --quiet
BIN=${CARGO_TARGET_DIR:-target}/release/liqscan
rates=()
for run in $(seq 1 "$RUNS"); do
  echo "== run $run: $ACCOUNTS accounts, $SYMBOLS symbols, $MESSAGES messages, seed $SEED," \
    "mark ratio $MARK_RATIO, fault rate $FAULT_RATE; $(uptime)" >&2
  cmd=("$BIN" gen --accounts "$ACCOUNTS" --symbols "$SYMBOLS" --messages "$MESSAGES"
    --seed "$SEED" --mark-ratio "$MARK_RATIO" --fault-rate "$FAULT_RATE"
    --config-out "$OUT/config.json" --out "$OUT/stream.ndjson")
  if [[ "$PERF" == 1 ]]; then
    cmd=(perf record -q -e task-clock -F 1000 -o "$OUT/perf.data" "${cmd[@]}")
  fi
  /usr/bin/env time -f "wall %e s, user %U s, sys %S s, peak RSS %M KB" "${cmd[@]}" \
    2> "$OUT/gen.txt"
  grep -v "config written" "$OUT/gen.txt" >&2
  echo "sha256 $(sha256sum < "$OUT/stream.ndjson" | cut -c1-64)" >&2
  rm -f "$OUT/stream.ndjson"
  if [[ "$PERF" == 1 ]]; then
    # task-clock samples at 1000 Hz: one sample is a millisecond of the thread's CPU time.
    perf script -i "$OUT/perf.data" -F comm,tid 2>/dev/null | awk '
      { n[$1 " " $2]++ } END { for (k in n) printf "  thread %s: %.2f s CPU\n", k, n[k] / 1000 }' |
      sort -k4 -rn >&2
  fi
  rates+=("$(sed -n 's/^liqscan gen: .* s (\([0-9]*\) lines\/s).*/\1/p' "$OUT/gen.txt" | tail -1)")
done
median=$(printf '%s\n' "${rates[@]}" | sort -n | awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)] }')
echo "{\"accounts\":$ACCOUNTS,\"symbols\":$SYMBOLS,\"messages\":$MESSAGES,\"seed\":$SEED,\"mark_ratio\":$MARK_RATIO,\"fault_rate\":$FAULT_RATE,\"runs\":[$(IFS=,; echo "${rates[*]}")],\"median_lines_per_s\":$median}"
