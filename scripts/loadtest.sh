#!/usr/bin/env bash
# Load test: generate a book and a stream with `liqscan gen`, replay it with the fast
# engine, and leave under a results folder: the config, the summary (stderr of the replay),
# the report JSON, the HdrHistogram log and the latency chart (SVG).
#
# Needs: the Rust toolchain only (it builds liqscan in release). Disk: ~90 bytes a message
# (about 1.3 GB for the defaults). Memory: ~600 MB per million accounts. Installs nothing.
#
# Usage: scripts/loadtest.sh [RESULTS_DIR]
# Sizes come from the environment (defaults in brackets):
#   ACCOUNTS [1000000]  SYMBOLS [1000]  MESSAGES [10000000]  SEED [1]
#   POSITIONS [3 per account]  MARK_RATIO [0.9]  FAULT_RATE [0]
#   RATE [unset]: offer the stream at this many lines/s (replay --rate) so that event
#   latency shows the engine at that load; unset replays as fast as possible, where event
#   latency is the time lines wait in the saturated pipeline's queues.
#   KEEP_STREAM=1 keeps the generated stream, KEEP_EVENTS=1 the events (both are large, so
#   by default the stream is deleted at the end and the events are not written).
set -euo pipefail
cd "$(dirname "$0")/.."

ACCOUNTS=${ACCOUNTS:-1000000}
SYMBOLS=${SYMBOLS:-1000}
MESSAGES=${MESSAGES:-10000000}
SEED=${SEED:-1}
MARK_RATIO=${MARK_RATIO:-0.9}
FAULT_RATE=${FAULT_RATE:-0}
OUT=${1:-results/loadtest-$(date -u +%Y%m%dT%H%M%SZ)}
mkdir -p "$OUT"

cargo build --release --quiet
BIN=target/release/liqscan
positions=()
if [[ -n "${POSITIONS:-}" ]]; then positions=(--positions "$POSITIONS"); fi

echo "== gen: $ACCOUNTS accounts, $SYMBOLS symbols, $MESSAGES messages, seed $SEED" >&2
/usr/bin/env time -v true >/dev/null 2>&1 && TIME=(/usr/bin/env time -v) || TIME=()
"${TIME[@]}" "$BIN" gen --accounts "$ACCOUNTS" --symbols "$SYMBOLS" --messages "$MESSAGES" \
  --seed "$SEED" "${positions[@]}" --mark-ratio "$MARK_RATIO" --fault-rate "$FAULT_RATE" \
  --config-out "$OUT/config.json" --out "$OUT/stream.ndjson" 2> "$OUT/gen.txt"
cat "$OUT/gen.txt" >&2
ls -l "$OUT/stream.ndjson" >&2

echo "== replay (fast engine)" >&2
events="$OUT/events.ndjson"
if [[ "${KEEP_EVENTS:-0}" != 1 ]]; then events=/dev/null; fi
rate=()
if [[ -n "${RATE:-}" ]]; then rate=(--rate "$RATE"); fi
"${TIME[@]}" "$BIN" replay "${rate[@]}" --config "$OUT/config.json" --report "$OUT/report.json" \
  --hdr-out "$OUT/latency.hlog" --plot "$OUT/latency.svg" "$OUT/stream.ndjson" \
  > "$events" 2> "$OUT/summary.txt"
cat "$OUT/summary.txt" >&2
if [[ "${KEEP_STREAM:-0}" != 1 ]]; then rm -f "$OUT/stream.ndjson"; fi
echo "results in $OUT: report.json, latency.hlog, latency.svg, summary.txt, gen.txt" >&2
