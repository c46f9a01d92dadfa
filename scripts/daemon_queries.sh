#!/usr/bin/env bash
# What a live query costs `liqscan run` on a big book: the book of scripts/bench.sh (1M
# accounts, ~3M positions, 50 symbols; here made by `liqscan gen`) is fed to the daemon over
# stdin, which stays open; then GET /at-risk?limit=100, /at-risk?limit=10000 and
# /accounts/{id}, N times each. Prints, per kind: the client's round trip (curl), and how
# long each request held the engine thread, i.e. held ingest back
# (liqscan_control_hold_seconds: mean from _sum/_count, and the max over the run so far).
#
#   scripts/daemon_queries.sh                 # 1M accounts
#   ACCOUNTS=100000 N=50 scripts/daemon_queries.sh
set -euo pipefail
cd "$(dirname "$0")/.."
ACCOUNTS=${ACCOUNTS:-1000000}
SYMBOLS=${SYMBOLS:-50}
N=${N:-20}
ENGINE=${ENGINE:-fast}

cargo build --release --quiet
bin=${CARGO_TARGET_DIR:-target}/release/liqscan
dir=$(mktemp -d)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    rm -rf "$dir"
}
trap cleanup EXIT

echo "generating the book: $ACCOUNTS accounts, $SYMBOLS symbols" >&2
"$bin" gen --accounts "$ACCOUNTS" --symbols "$SYMBOLS" --messages 1000 --seed 1 \
    --config-out "$dir/config.json" --out "$dir/stream.ndjson" 2>/dev/null
messages=$(grep -cv '^[[:space:]]*$' "$dir/stream.ndjson")

mkfifo "$dir/in"
"$bin" run --config "$dir/config.json" --engine "$ENGINE" --http 127.0.0.1:0 \
    --log-format json <"$dir/in" >/dev/null 2>"$dir/log" &
pids+=($!)
# The stream, then an open pipe: the daemon keeps serving.
{ cat "$dir/stream.ndjson"; exec sleep 100000; } >"$dir/in" &
pids+=($!)

addr=""
for _ in $(seq 1 600); do
    addr=$(grep -o '"role":"http","addr":"[^"]*"' "$dir/log" | sed 's/.*"addr":"\([^"]*\)"/\1/' || true)
    [ -n "$addr" ] && break
    sleep 0.1
done
[ -n "$addr" ] || { echo "no HTTP address in the log" >&2; cat "$dir/log" >&2; exit 1; }

started=$(date +%s.%N)
for _ in $(seq 1 3000); do
    applied=$(curl -s "http://$addr/health" | sed 's/.*"messages":\([0-9]*\).*/\1/')
    [ "$applied" = "$messages" ] && break
    sleep 0.1
done
[ "$applied" = "$messages" ] || { echo "the book was not applied in time ($applied of $messages)" >&2; exit 1; }
loaded=$(date +%s.%N)
positions=$(curl -s "http://$addr/metrics" | awk '$1 == "liqscan_positions" { print $2 }')
printf 'book applied: %s messages, %s positions, in %.1f s\n' "$messages" "$positions" \
    "$(echo "$loaded - $started" | bc -l)"

hold() { # prints sum count max of liqscan_control_hold_seconds
    curl -s "http://$addr/metrics" | awk '
        $1 == "liqscan_control_hold_seconds_sum" { s = $2 }
        $1 == "liqscan_control_hold_seconds_count" { c = $2 }
        $1 == "liqscan_control_hold_seconds{quantile=\"1\"}" { m = $2 }
        END { print s, c, m }'
}

account=$(grep -m1 -o '"account":[0-9]*' "$dir/stream.ndjson" | cut -d: -f2)
for kind in "at-risk?limit=100" "at-risk?limit=10000" "accounts/$account"; do
    read -r s0 c0 _ <<<"$(hold)"
    total=0
    worst=0
    for _ in $(seq 1 "$N"); do
        t=$(curl -s -o /dev/null -w '%{time_total}' "http://$addr/$kind")
        total=$(echo "$total + $t" | bc -l)
        worst=$(echo "if ($t > $worst) $t else $worst" | bc -l)
    done
    read -r s1 c1 m1 <<<"$(hold)"
    # The mean is over the N requests and the scrape that read s0/c0 (microseconds).
    printf '%-22s round trip mean %7.2f ms max %7.2f ms | engine held mean %7.2f ms (max over the run %.2f ms), n=%d\n' \
        "/$kind" "$(echo "1000 * $total / $N" | bc -l)" "$(echo "1000 * $worst" | bc -l)" \
        "$(echo "1000 * ($s1 - $s0) / ($c1 - $c0)" | bc -l)" "$(echo "1000 * $m1" | bc -l)" "$N"
done
