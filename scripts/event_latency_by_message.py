#!/usr/bin/env python3
"""Event latency grouped by message: how much of it is the wait before a message's first
event (lines queued behind slow messages, the pipeline) and how much is events waiting for
the events of their own message built before them (the engine's cost per item).

usage: scripts/event_latency_by_message.py EVENTS.ndjson [Q:US ...]
EVENTS.ndjson is the stdout of `liqscan replay` (or a daemon's --events-file). Reads each
event's `line` and `latency_ns` (line read -> event made). See docs/latency.md.

Each Q:US (default: 99:20 99.9:200 99:200) is a latency target, "the Q-th percentile of
event latency at most US microseconds", for which it prints the floor this stream's event
counts set: the most each event after the first of its message may cost for the target to
be reachable at all, even if every message's first event were made the instant its line was
read. The k-th event of a message (k from 0) is then made k * c after its line, so the
events with k * c > US are over the target; at most (1 - Q/100) of all events may be. A
message that fires thousands of liquidations puts most of them over any target of
microseconds unless c is a few nanoseconds (less than one cache miss an item).
"""
import sys
from collections import defaultdict


def pct(v, ps=(50, 90, 99, 99.9)):
    v = sorted(v)
    n = len(v)
    out = " ".join(f"p{p}={v[min(n - 1, int(n * p / 100))] / 1000:.1f}us" for p in ps)
    return out + f" max={v[-1] / 1000:.1f}us n={n}"


def floor_ns(sizes, n, q, us):
    """The largest per-item cost c (ns) at which at most (1 - q/100) * n events of messages
    of `sizes` events have k * c > us (k = 0, 1, ...: their index in their message)."""
    allowed = int(n * (1 - q / 100))

    def over(c):
        return sum(max(0, m - (int(us * 1000 // c) + 1)) for m in sizes)

    lo, hi = 0.001, 1e9
    if over(lo) > allowed:
        return 0.0
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if over(mid) <= allowed else (lo, mid)
    return lo


def main(path, targets):
    lines, order = defaultdict(list), []
    for l in open(path):
        i, j = l.find('"line":'), l.find('"latency_ns":')
        if i < 0 or j < 0:
            continue
        ln = int(l[i + 7:l.index(",", i)])
        lat = int(l[j + 13:].split(",")[0].split("}")[0])
        if ln not in lines:
            order.append(ln)
        lines[ln].append(lat)
    if not order:
        sys.exit("no event with line and latency_ns")
    allv = [x for ln in order for x in lines[ln]]
    print("all events        ", pct(allv))
    print("first of message  ", pct([lines[ln][0] for ln in order]))
    print("k-th minus first  ", pct([x - lines[ln][0] for ln in order for x in lines[ln]]))
    idx = sorted(k for ln in order for k in range(len(lines[ln])))
    n = len(idx)
    print("index within its message: " + " ".join(
        f"p{q}={idx[min(n - 1, int(n * q / 100))]}" for q in (50, 90, 99, 99.9)))
    p99 = sorted(allv)[int(n * 0.99)]
    over = [(x - lines[ln][0], lines[ln][0]) for ln in order for x in lines[ln] if x >= p99]
    print(f"events at or above p99: {len(over)}, waiting more on their own message: "
          f"{sum(1 for w, f in over if w > f)}")
    costs = sorted((v[-1] - v[0]) / (len(v) - 1) for v in lines.values() if len(v) >= 100)
    if costs:
        c = len(costs)
        print(f"messages firing >= 100: {c}; ns per item p10 {costs[c // 10]:.0f} "
              f"p50 {costs[c // 2]:.0f} p90 {costs[c * 9 // 10]:.0f}")
    print("messages that fired the most events:")
    for ln in sorted(order, key=lambda ln: -len(lines[ln]))[:3]:
        v = lines[ln]
        print(f"  line {ln}: {len(v)} events, first {v[0] / 1e3:.1f} us, last {v[-1] / 1e3:.1f} us")
    sizes = [len(v) for v in lines.values()]
    for q, us in targets:
        c = floor_ns(sizes, n, q, us)
        print(f"floor of p{q:g} <= {us:g} us: at most {int(n * (1 - q / 100))} of {n} events "
              f"over, so at most {c:.1f} ns an item after a message's first, even with "
              f"every first event made at once")


def target(arg):
    q, us = arg.split(":")
    return float(q), float(us)


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    main(sys.argv[1], [target(a) for a in sys.argv[2:]] or [(99, 20), (99.9, 200), (99, 200)])
