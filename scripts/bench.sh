#!/usr/bin/env bash
# Builds liqscan in release and prints the benchmark figures of issue 3 as one JSON object:
# full-book sweep, memory bandwidth measured in the same run, a tick on a 1M-holder symbol,
# tick latency, resident memory per position, replay throughput of both engines and the
# end-to-end pipeline rate.
#
# Needs: the Rust toolchain only. About 2 minutes after the build, and under 3 GiB of memory,
# at full size on a 2-core machine. Scale down with LIQSCAN_BENCH_ACCOUNTS,
# LIQSCAN_BENCH_POSITIONS and LIQSCAN_BENCH_MARKS (defaults 1000000, 3000000, 1000000);
# LIQSCAN_BENCH_ONLY=book prints the big book's sweep and memory figures alone.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo bench --quiet --bench figures 2>/dev/null
