#!/usr/bin/env python3
"""Event latency grouped by message: how much of it is the wait before a message's first
event (lines queued behind slow messages, the pipeline) and how much is events waiting for
the events of their own message built before them (the engine's cost per item).

usage: scripts/event_latency_by_message.py EVENTS.ndjson [Q:US ...]
EVENTS.ndjson is the stdout of `liqscan replay` (or a daemon's --events-file, over any
number of engine connections). Reads each event's `seq`, `line` and `latency_ns` (line read
-> event made, so earlier than the summary's event latency, which runs to the hand-off to
the sinks); a message is its (seq, line), since line numbers start again on each engine
connection. Events without `latency_ns` (rejects, gaps) are left out, and counted. A file
of more than one run (a daemon appends to its --events-file; each run with its connections)
is refused at the first message whose events it meets apart, which one run never writes. See docs/latency.md.

It prints the latency percentiles of all events, of each message's first event, and of
each event less its message's first (the wait for events of its own message); the
percentiles of an event's index within its message; how many events at or above the p99
waited longer for their own message than before its first event; the cost per item of the
messages that made 100 events or more; and the three messages that made the most.

Each Q:US (default: 99:20 99.9:200 99:200) is a latency target, "the Q-th percentile of
event latency at most US microseconds" (0 < Q < 100, US > 0), for which it prints the most
an item may cost, the floor this stream's event counts set under any engine that makes a
message's events one after another: if every message's first event were made the instant
its line was read and each further one c later, the k-th (k from 0) would be made k * c
after its line, and only so many events may be over the target (the percentile taken as
the figures printed before it take it: the value at index int(n * Q / 100) of the sorted
latencies). The answer is US / j for the least whole j that leaves few enough
over, or "any" when even one event a message would meet it. A message that fires thousands
of liquidations puts most of them over any target of microseconds unless c is a few
nanoseconds (less than one cache miss an item). Under it, the same percentile of each
event's wait for the events its own message made before it ("k-th minus first", at the rank
an HdrHistogram takes): a bound from below on that percentile of the same events' latency
measured anywhere after the line (an event arrives no sooner than it is made, nor is a
message's first event made before its line is read), however quick the reading, queueing
and delivery. It is this run's: the waits are the engine's work between a message's events
and, on a busy machine, whatever took the engine thread's CPU meanwhile.
"""
import math
import sys
from collections import defaultdict


def pct(v, ps=(50, 90, 99, 99.9)):
    v = sorted(v)
    n = len(v)
    out = " ".join(f"p{p}={v[min(n - 1, int(n * p / 100))] / 1000:.1f}us" for p in ps)
    return out + f" max={v[-1] / 1000:.1f}us n={n}"


def over_allowed(n, q):
    """How many of `n` events may be over a target for its p`q` to meet it: those after the
    index `pct` takes (int(n * q / 100))."""
    return max(0, n - 1 - int(n * q / 100))


def item_cost_max_ns(sizes, n, q, us):
    """The most (ns) each event after the first of its message may cost for the p`q` of the
    `n` events of messages of `sizes` events to be at most `us` µs; None: any cost."""
    allowed = over_allowed(n, q)

    def over(j):  # events over with floor(us / c) = j: those of index k > j
        return sum(max(0, m - 1 - j) for m in sizes)

    if over(0) <= allowed:
        return None
    lo, hi = 0, max(sizes)  # over(lo) > allowed >= over(hi) = 0
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if over(mid) <= allowed else (mid, hi)
    return us * 1000 / hi


def target(arg):
    try:
        q, us = (float(x) for x in arg.split(":"))
    except ValueError:
        sys.exit(f"bad target {arg!r}: Q:US, e.g. 99:20 (p99 at most 20 microseconds)\n\n{__doc__}")
    if not (0 < q < 100 and 0 < us < float("inf")):
        sys.exit(f"bad target {arg!r}: Q must be above 0 and below 100, US above 0 and finite")
    return q, us


def field(l, name):
    i = l.find(f'"{name}":')
    if i < 0:
        return None
    rest = l[i + len(name) + 3:]
    end = min((k for k in (rest.find(","), rest.find("}")) if k >= 0), default=len(rest))
    try:
        return int(rest[:end])
    except ValueError:  # null (a reject's seq) or not a number
        return None


def main(path, targets):
    groups, order, skipped = defaultdict(list), [], 0
    try:
        src = open(path)
    except OSError as e:
        sys.exit(f"cannot read {path}: {e.strerror}")
    for l in src:
        lat, ln, seq = field(l, "latency_ns"), field(l, "line"), field(l, "seq")
        if lat is None or ln is None:
            skipped += l.strip() != ""
            continue
        key = (seq, ln)
        if key not in groups:
            order.append(key)
        elif key != order[-1]:
            # One run writes a message's events together; a (seq, line) met again after
            # another's is a second run's (a daemon appends to its --events-file, and a
            # second run's line numbers and seqs start again), and would mix with the first.
            sys.exit(f"line {ln} (seq {seq}) has events apart from each other: the file holds "
                     f"more than one run (a daemon appends to its --events-file); give it one "
                     f"run's events")
        groups[key].append(lat)
    if not order:
        sys.exit("no event with line and latency_ns")
    if skipped:
        print(f"({skipped} lines without line or latency_ns left out)")
    allv = [x for k in order for x in groups[k]]
    print("all events        ", pct(allv))
    print("first of message  ", pct([groups[k][0] for k in order]))
    print("k-th minus first  ", pct([x - groups[k][0] for k in order for x in groups[k]]))
    idx = sorted(i for k in order for i in range(len(groups[k])))
    n = len(idx)
    print("index within its message: " + " ".join(
        f"p{q}={idx[min(n - 1, int(n * q / 100))]}" for q in (50, 90, 99, 99.9)))
    p99 = sorted(allv)[int(n * 0.99)]
    over = [(x - groups[k][0], groups[k][0]) for k in order for x in groups[k] if x >= p99]
    print(f"events at or above p99: {len(over)}, waiting more on their own message: "
          f"{sum(1 for w, f in over if w > f)}")
    costs = sorted((v[-1] - v[0]) / (len(v) - 1) for v in groups.values() if len(v) >= 100)
    if costs:
        c = len(costs)
        print(f"messages firing >= 100: {c}; ns per item p10 {costs[c // 10]:.0f} "
              f"p50 {costs[c // 2]:.0f} p90 {costs[c * 9 // 10]:.0f}")
    print("messages that fired the most events:")
    for k in sorted(order, key=lambda k: -len(groups[k]))[:3]:
        v = groups[k]
        print(f"  line {k[1]} (seq {k[0]}): {len(v)} events, first {v[0] / 1e3:.1f} us, "
              f"last {v[-1] / 1e3:.1f} us")
    sizes = [len(v) for v in groups.values()]
    waits = sorted(x - groups[k][0] for k in order for x in groups[k])
    for q, us in targets:
        c = item_cost_max_ns(sizes, n, q, us)
        most = "any" if c is None else f"at most {c:.1f} ns"
        print(f"floor of p{q:g} <= {us:g} us: {over_allowed(n, q)} of {n} events may be over, "
              f"so each item after a message's first may cost {most}, even with every "
              f"first event made at once")
        # An event's latency to anywhere is at least its wait for the events its message
        # made before it, so the percentile of those waits bounds that of the same events'
        # latency from below, however quick the reading, queueing and delivery were.
        # The rank an HdrHistogram (`feed`'s, the summary's) takes for the percentile,
        # ceil(n * q / 100), never above the one the figures above take: a bound on either.
        rank = max(0, min(n - 1, math.ceil(n * q / 100) - 1))
        own, run = waits[rank] / 1000, sorted(allv)[rank] / 1000
        verdict = "already over the target" if own > us else "under the target"
        print(f"  in this run: p{q:g} >= {own:.1f} us from the waits for earlier events of "
              f"the same message alone (the bound alone is {verdict}; the run's own p{q:g}, "
              f"line read to made: {run:.1f} us)")


if __name__ == "__main__":
    if len(sys.argv) < 2 or sys.argv[1] in ("-h", "--help"):
        sys.exit(__doc__)
    targets = [target(a) for a in sys.argv[2:]] or [(99, 20), (99.9, 200), (99, 200)]
    main(sys.argv[1], targets)
