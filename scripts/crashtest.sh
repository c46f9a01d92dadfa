#!/usr/bin/env bash
# The crash test of issue 13 (SPEC section 9.4): N cycles (default 100) of starting the real
# daemon on one state directory (snapshot interval 20 ms) with an event subscriber, feeding a
# `liqscan gen` stream with `liqscan feed`, and kill -9 at a random moment (once the daemon
# has applied a random seq in the cycle's share of the stream, plus 0-20 ms, so the kills are
# spread over the whole stream);
# each restart restores the newest valid snapshot and feed resends from the hello. The last
# cycle lets the stream finish. Then: every liquidation event of an uninterrupted replay of
# the stream was received (by seq and item, with the same content), none that the replay
# lacks, and every account's final /accounts answer equals the replay's query.
#
# Prints the counts as one JSON object: cycles, kills, kills_during_snapshot_writes (the
# restart found a half-written temporary snapshot), kills_mid_stream (the stream was not yet
# all applied), resent_messages (over all restarts: where the killed daemon had got to minus
# what the next one restored, which feed sent again), replay_liquidations,
# received_liquidations, repeats (deliveries beyond the first: at-least-once), lost (0, or
# the run fails), accounts_compared.
#
#   scripts/crashtest.sh [CYCLES]        LIQSCAN_CRASH_ACCOUNTS (20000), LIQSCAN_CRASH_SEED (1),
#                                        LIQSCAN_CRASH_MESSAGES (CYCLES * 2500) and
#                                        LIQSCAN_CRASH_RATE (lines/s; 0, the default, sends as fast
#                                        as the daemon reads) change the run
#
# The driver is the test `crash_cycles_from_env` in tests/daemon/state.rs (a short run of
# the same code is among the ordinary tests); it runs the debug build of the binary, whose
# slower snapshot writes make kills during a write more frequent.
set -euo pipefail
cd "$(dirname "$0")/.."
export LIQSCAN_CRASH_CYCLES="${1:-100}"
exec cargo test --test daemon -- --ignored --exact state::crash_cycles_from_env --nocapture
