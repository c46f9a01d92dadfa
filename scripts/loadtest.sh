#!/usr/bin/env bash
# Load test: generate a book and a stream with `liqscan gen`, replay it with the fast
# engine, and leave under a results folder: the config, the summary (stderr of the replay),
# the report JSON, the HdrHistogram log and the latency chart (SVG).
#
# MODE=daemon also runs the daemon on the same stream, on loopback: `liqscan run` with an
# engine port, an events port and HTTP; `liqscan feed` plays the stream into it and is the
# one subscriber, timing each event from the message's `ts` (stamped at send) to its arrival.
# It leaves daemon.log, feed.txt, feed.json (the feed's report), metrics.txt (the daemon's
# /metrics at the end), and latency.hlog / latency.svg of the subscriber's latency; the
# replay's report is replay.json. STALLED=1 connects a second subscriber that never reads.
# summary.json holds the figures of the run in one shape for both modes, and is printed as
# the last thing on stderr: the sizes, the generator's lines/s and liquidation count, the
# replay's throughput, apply and event latency percentiles (ns), liquidations and peak RSS,
# whether the replay's liquidations equal the generator's, and under `daemon` (null in
# replay mode) the daemon's throughput as a ratio to the replay's in the same run. Each
# step also gives its `steal_share`: the share of the machine's CPU time the hypervisor
# gave to other guests during that step (/proc/stat; null where it cannot be read). On
# the shared VMs it was 0.35 of a replay that ran at half the rate of a quiet one.
#
# Needs: the Rust toolchain (it builds liqscan in release) and jq; MODE=daemon also needs
# curl. Time on the 2-core machine: gen 15-20 s for 1M accounts and 3M messages (7.7M
# lines) and 30-50 s for the defaults' 10M (session 8, load average 5-7.5; about 80 s for
# MARK_RATIO=0.2 at 3M messages); replay ~70 s for 3M messages (session 7, load average
# 6-10), about twice that for 10M, and MARK_RATIO=0.2 several times longer (see the README's
# load-test section). Disk: ~90 bytes a message (about 1.3 GB for the defaults). Memory: ~600 MB per million
# accounts. Installs nothing.
#
# Usage: scripts/loadtest.sh [RESULTS_DIR]
# Sizes come from the environment (defaults in brackets):
#   ACCOUNTS [1000000]  SYMBOLS [1000]  MESSAGES [10000000]  SEED [1]
#   POSITIONS [3 per account]  MARK_RATIO [0.9]  FAULT_RATE [0]
#   RATE [unset]: offer the stream at this many lines/s (replay --rate) so that event
#   latency shows the engine at that load; unset replays as fast as possible, where event
#   latency is the time lines wait in the saturated pipeline's queues.
#   MODE [replay]: replay, or daemon (see above); STALLED [0]: daemon mode with a stalled
#   subscriber.
#   KEEP_STREAM=1 keeps the generated stream, KEEP_EVENTS=1 the events (both are large, so
#   by default the stream is deleted at the end and the events are not written).
set -euo pipefail
cd "$(dirname "$0")/.."

ACCOUNTS=${ACCOUNTS:-1000000}
SYMBOLS=${SYMBOLS:-1000}
MESSAGES=${MESSAGES:-10000000}
SEED=${SEED:-1}
MARK_RATIO=${MARK_RATIO:-0.9}
MODE=${MODE:-replay}
STALLED=${STALLED:-0}
FAULT_RATE=${FAULT_RATE:-0}
OUT=${1:-results/loadtest-$(date -u +%Y%m%dT%H%M%SZ)}
mkdir -p "$OUT"
command -v jq >/dev/null || { echo "loadtest.sh needs jq (apt-get install jq) for summary.json" >&2; exit 1; }

cargo build --release --quiet
BIN=${CARGO_TARGET_DIR:-target}/release/liqscan
positions=()
if [[ -n "${POSITIONS:-}" ]]; then positions=(--positions "$POSITIONS"); fi

# CPU ticks of every CPU since boot, "all steal", from /proc/stat's cpu line (nothing where it
# cannot be read): steal is the time the hypervisor ran other guests while this VM's vCPUs
# had work, the figure that tells a run slowed by the host from a slow build.
# (printf, not print: mawk prints numbers past 2^31 as 3e+09; LC_ALL=C: a locale's decimal
# comma would make the figures unreadable to jq.)
cpu_ticks() {
  LC_ALL=C awk '/^cpu / && NF >= 9 { t = 0; for (i = 2; i <= 9; i++) t += $i; printf "%.0f %.0f\n", t, $9 }' \
    /proc/stat 2>/dev/null || true
}
# The share of all CPU time since the cpu_ticks reading $1 that the host stole (nothing
# when unknown; 0 if the steal counter went back, as the bench's figure does).
steal_share() {
  [[ -n "$1" ]] || return 0
  LC_ALL=C awk -v a="$1" -v b="$(cpu_ticks)" 'BEGIN { split(a, x, " "); split(b, y, " ")
    s = y[2] - x[2]; if (s < 0) s = 0
    if (y[1] > x[1]) printf "%.4f", s / (y[1] - x[1]) }'
}

echo "== gen: $ACCOUNTS accounts, $SYMBOLS symbols, $MESSAGES messages, seed $SEED" >&2
/usr/bin/env time -v true >/dev/null 2>&1 && TIME=(/usr/bin/env time -v) || TIME=()
ticks=$(cpu_ticks)
"${TIME[@]}" "$BIN" gen --accounts "$ACCOUNTS" --symbols "$SYMBOLS" --messages "$MESSAGES" \
  --seed "$SEED" "${positions[@]}" --mark-ratio "$MARK_RATIO" --fault-rate "$FAULT_RATE" \
  --config-out "$OUT/config.json" --out "$OUT/stream.ndjson" 2> "$OUT/gen.txt"
gen_steal=$(steal_share "$ticks")
cat "$OUT/gen.txt" >&2
ls -l "$OUT/stream.ndjson" >&2

echo "== replay (fast engine)" >&2
events="$OUT/events.ndjson"
if [[ "${KEEP_EVENTS:-0}" != 1 ]]; then events=/dev/null; fi
rate=()
if [[ -n "${RATE:-}" ]]; then rate=(--rate "$RATE"); fi
ticks=$(cpu_ticks)
"${TIME[@]}" "$BIN" replay "${rate[@]}" --config "$OUT/config.json" --report "$OUT/report.json" \
  --hdr-out "$OUT/latency.hlog" --plot "$OUT/latency.svg" "$OUT/stream.ndjson" \
  > "$events" 2> "$OUT/summary.txt"
replay_steal=$(steal_share "$ticks")
cat "$OUT/summary.txt" >&2

if [[ "$MODE" == daemon ]]; then
  mv "$OUT/report.json" "$OUT/replay.json"
  mv "$OUT/latency.hlog" "$OUT/replay-latency.hlog"
  mv "$OUT/latency.svg" "$OUT/replay-latency.svg"
  echo "== daemon (fast engine) + feed${RATE:+ at $RATE lines/s}$( [[ $STALLED == 1 ]] && echo ", with a stalled subscriber")" >&2
  "$BIN" run --config "$OUT/config.json" --listen 127.0.0.1:0 --events 127.0.0.1:0 \
    --http 127.0.0.1:0 --log-format json 2> "$OUT/daemon.log" &
  daemon=$!
  trap 'kill -9 "$daemon" 2>/dev/null || true' EXIT
  # The daemon logs the addresses it bound (port 0 picks free ones).
  addr() { jq -r --arg r "$1" 'select(.role? == $r) | .addr' "$OUT/daemon.log" 2>/dev/null | head -1; }
  for _ in $(seq 300); do
    [[ -n "$(addr http)" ]] && break
    kill -0 "$daemon" 2>/dev/null || { cat "$OUT/daemon.log" >&2; exit 1; }
    sleep 0.1
  done
  engine_addr=$(addr engine); events_addr=$(addr events); http_addr=$(addr http)
  [[ -n "$http_addr" ]] || { echo "the daemon did not start" >&2; cat "$OUT/daemon.log" >&2; exit 1; }
  if [[ "$STALLED" == 1 ]]; then
    # A subscriber that connects and never reads: the daemon must cut it, not slow down.
    exec 3<>"/dev/tcp/${events_addr%:*}/${events_addr##*:}"
  fi
  ticks=$(cpu_ticks)
  "$BIN" feed --to "$engine_addr" --events "$events_addr" "${rate[@]}" --report "$OUT/feed.json" \
    --hdr-out "$OUT/latency.hlog" --plot "$OUT/latency.svg" "$OUT/stream.ndjson" 2> "$OUT/feed.txt"
  daemon_steal=$(steal_share "$ticks")
  cat "$OUT/feed.txt" >&2
  curl -sf "http://$http_addr/metrics" > "$OUT/metrics.txt"
  kill -TERM "$daemon"
  wait "$daemon" || { echo "the daemon exited with $?" >&2; exit 1; }
  trap - EXIT
  [[ "$STALLED" == 1 ]] && exec 3>&-
  metric() { awk -v m="$1" '$1 == m { print $2 }' "$OUT/metrics.txt"; }
  jq -n --slurpfile replay "$OUT/replay.json" --slurpfile feed "$OUT/feed.json" \
    --arg dropped "$(metric liqscan_subscribers_dropped_total)" \
    --arg liquidations "$(awk '/^liqscan_liquidations_total/ { n += $2 } END { print n }' "$OUT/metrics.txt")" \
    --arg stalled "$STALLED" --arg steal "$daemon_steal" '{
      stalled: ($stalled == "1"),
      lines_per_s: $feed[0].lines_per_s,
      daemon_to_replay: ($feed[0].lines_per_s / $replay[0].messages_per_s),
      liquidations: ($liquidations | tonumber),
      liquidations_at_subscriber: $feed[0].liquidations,
      subscribers_dropped: ($dropped | tonumber),
      ts_to_event_at_subscriber_ns: $feed[0].latency_ns.ts_to_event,
      steal_share: (if $steal == "" then null else ($steal | tonumber) end),
    }' > "$OUT/daemon.json"
  report="$OUT/replay.json"
else
  report="$OUT/report.json"
fi

# The summary, one shape for both modes. Peak RSS comes from `time -v` where it ran.
peak_kb() { awk -F': ' '/Maximum resident set size/ { print $2 }' "$1" | tail -1; }
gen_liquidations=$(sed -n 's/.*its engine saw \([0-9]*\) liquidations.*/\1/p' "$OUT/gen.txt" | tail -1)
gen_lines=$(sed -n 's/^liqscan gen: \([0-9]*\) lines.*/\1/p' "$OUT/gen.txt" | tail -1)
gen_s=$(sed -n 's/^liqscan gen: .* lines (.*) in \([0-9.]*\) s.*/\1/p' "$OUT/gen.txt" | tail -1)
gen_rate=$(sed -n 's/^liqscan gen: .* s (\([0-9]*\) lines\/s).*/\1/p' "$OUT/gen.txt" | tail -1)
daemon_json=null
if [[ -f "$OUT/daemon.json" ]]; then daemon_json=$(cat "$OUT/daemon.json"); fi
jq -n --slurpfile replay "$report" --argjson daemon "$daemon_json" \
  --arg mode "$MODE" --arg rate "${RATE:-}" --arg accounts "$ACCOUNTS" --arg symbols "$SYMBOLS" \
  --arg messages "$MESSAGES" --arg seed "$SEED" --arg mark_ratio "$MARK_RATIO" \
  --arg fault_rate "$FAULT_RATE" --arg gen_liq "${gen_liquidations:-}" \
  --arg gen_lines "${gen_lines:-}" --arg gen_s "${gen_s:-}" --arg gen_rate "${gen_rate:-}" \
  --arg gen_rss "$(peak_kb "$OUT/gen.txt")" --arg replay_rss "$(peak_kb "$OUT/summary.txt")" \
  --arg gen_steal "$gen_steal" --arg replay_steal "$replay_steal" '
  def num: if . == "" then null else tonumber end;
  $replay[0] as $r | {
    mode: $mode, rate: ($rate | num),
    accounts: ($accounts | num), symbols: ($symbols | num), messages: ($messages | num),
    seed: ($seed | num), mark_ratio: ($mark_ratio | num), fault_rate: ($fault_rate | num),
    gen: {
      lines: ($gen_lines | num), elapsed_s: ($gen_s | num),
      lines_per_s: ($gen_rate | num),
      liquidations: ($gen_liq | num),
      peak_rss_bytes: (($gen_rss | num) | if . then . * 1024 else null end),
      steal_share: ($gen_steal | num),
    },
    replay: {
      messages: $r.messages, elapsed_s: $r.elapsed_s, messages_per_s: $r.messages_per_s,
      apply_latency_ns: $r.latency_ns.apply, event_latency_ns: $r.latency_ns.event,
      liquidations: $r.liquidations, rejects: $r.rejects, account_events: $r.account_events,
      peak_rss_bytes: (($replay_rss | num) | if . then . * 1024 else null end),
      steal_share: ($replay_steal | num),
    },
    liquidations_equal_generator: ($r.liquidations == ($gen_liq | num)),
    daemon: $daemon,
  }' > "$OUT/summary.json"
cat "$OUT/summary.json" >&2
if [[ "${KEEP_STREAM:-0}" != 1 ]]; then rm -f "$OUT/stream.ndjson"; fi
echo "results in $OUT" >&2
