#!/usr/bin/env bash
# Profile a replay: generate a stream with `liqscan gen`, replay it with the fast engine
# under `perf record` (call graphs) when perf works here, or under
# `valgrind --tool=callgrind` otherwise, and leave the profile and a short text of the top
# functions under a results folder.
#
# Needs: the Rust toolchain, and perf (Debian: linux-perf) or valgrind. It installs
# nothing: without either tool it stops and says what to install. The release profile
# keeps line tables (Cargo.toml), so symbols and lines resolve.
#
# Usage: scripts/profile.sh [RESULTS_DIR]
# Sizes from the environment (defaults in brackets; callgrind runs ~50x slower, so its
# defaults are a tenth):
#   ACCOUNTS [100000 | 10000]  SYMBOLS [200]  MESSAGES [1000000 | 100000]  SEED [1]
#   PROFILER=perf|callgrind to choose.
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ -z "${PROFILER:-}" ]]; then
  if command -v perf >/dev/null && perf record -o /dev/null -q true >/dev/null 2>&1; then
    PROFILER=perf
  elif command -v valgrind >/dev/null; then
    PROFILER=callgrind
  else
    echo "profile.sh needs perf (apt-get install linux-perf) or valgrind (apt-get install valgrind); neither works here" >&2
    exit 1
  fi
fi
if [[ $PROFILER == perf ]]; then scale=1; else scale=10; fi
ACCOUNTS=${ACCOUNTS:-$((100000 / scale))}
SYMBOLS=${SYMBOLS:-200}
MESSAGES=${MESSAGES:-$((1000000 / scale))}
SEED=${SEED:-1}
OUT=${1:-results/profile-$(date -u +%Y%m%dT%H%M%SZ)}
mkdir -p "$OUT"

cargo build --release --quiet
BIN=${CARGO_TARGET_DIR:-target}/release/liqscan
echo "== gen: $ACCOUNTS accounts, $SYMBOLS symbols, $MESSAGES messages" >&2
"$BIN" gen --accounts "$ACCOUNTS" --symbols "$SYMBOLS" --messages "$MESSAGES" --seed "$SEED" \
  --config-out "$OUT/config.json" --out "$OUT/stream.ndjson"
replay=("$BIN" replay --config "$OUT/config.json" --report "$OUT/report.json" "$OUT/stream.ndjson")

echo "== replay under $PROFILER" >&2
case $PROFILER in
  perf)
    perf record -g -o "$OUT/perf.data" -- "${replay[@]}" > /dev/null 2> "$OUT/summary.txt"
    perf report -i "$OUT/perf.data" --no-children --percent-limit 1 --stdio \
      > "$OUT/report.txt" 2>/dev/null
    grep -E '^ +[0-9.]+%' "$OUT/report.txt" | sed -n 1,30p > "$OUT/top.txt" || true
    ;;
  callgrind)
    valgrind --tool=callgrind --callgrind-out-file="$OUT/callgrind.out" -- "${replay[@]}" \
      > /dev/null 2> "$OUT/summary.txt"
    callgrind_annotate "$OUT/callgrind.out" > "$OUT/report.txt" 2>/dev/null
    grep -E '^ *[0-9,]+ \([ 0-9.]+%\)' "$OUT/report.txt" | sed -n 1,30p > "$OUT/top.txt" || true
    ;;
  *) echo "PROFILER must be perf or callgrind, not $PROFILER" >&2; exit 2 ;;
esac
rm -f "$OUT/stream.ndjson"
grep -E '^(messages|liquidations)' "$OUT/summary.txt" >&2 || true
echo "== top functions ($OUT/top.txt)" >&2
cat "$OUT/top.txt" >&2
echo "profile in $OUT (perf.data: perf report -i $OUT/perf.data; callgrind.out: callgrind_annotate or kcachegrind)" >&2
