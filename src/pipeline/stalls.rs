//! Where the engine thread's wall time goes when a batch takes long: an opt-in diagnostic.
//!
//! With `LIQSCAN_STALL_US=N`, every batch whose apply took at least N µs of wall time is
//! logged on stderr with the engine thread's own accounting over the same interval: CPU time
//! (`CLOCK_THREAD_CPUTIME_ID`) and time spent runnable but waiting for a CPU (the scheduler's
//! run-queue delay, from `/proc/thread-self/schedstat`), minor and major page faults
//! (`stat`), voluntary and involuntary context switches (`status`), and the batch's slowest
//! message. Wall time minus
//! CPU time minus run-queue delay is time the thread was blocked (a page fault that waited
//! on I/O, a lock). So a stall reads at once as engine work (CPU ≈ wall), preemption (run
//! queue ≈ wall − CPU) or faults (`minflt`, whose kernel time is in the CPU time).
//!
//! Off by default: it reads three small `/proc` files twice per batch.

use std::time::{Duration, Instant};

/// The environment variable: log batches whose apply took at least this many µs.
pub const STALL_ENV: &str = "LIQSCAN_STALL_US";

/// The threshold of this process, when [`STALL_ENV`] is set to a number of µs.
pub fn threshold_from_env() -> Option<Duration> {
    std::env::var(STALL_ENV)
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_micros)
}

/// The calling thread's CPU time, ns.
fn thread_cpu_ns() -> u64 {
    crate::latency::clock_ns(libc::CLOCK_THREAD_CPUTIME_ID)
}

/// The engine thread's counters at one moment, from `/proc/thread-self` (zeros where the
/// system does not say).
#[derive(Debug, Clone, Copy, Default)]
pub struct ThreadTimes {
    /// CPU time, ns (`CLOCK_THREAD_CPUTIME_ID`: up to date when read). Until session 28 it
    /// was `schedstat`'s run time, which the kernel brings up to date for a running thread only
    /// at its ticks and context switches: a thread reading its own saw it move in steps of a
    /// tick (4 ms at this VM's 250 Hz), so a busy batch of 3 ms could read as 0 µs of CPU.
    pub cpu_ns: u64,
    /// Time runnable but not running (waiting on a run queue), ns.
    pub runqueue_ns: u64,
    /// Page faults without and with I/O.
    pub minflt: u64,
    pub majflt: u64,
    /// Voluntary (blocked) and involuntary (preempted) context switches.
    pub nvcsw: u64,
    pub nivcsw: u64,
}

impl ThreadTimes {
    /// The calling thread's counters now.
    pub fn now() -> ThreadTimes {
        let mut t = ThreadTimes::default();
        // proc(5): after the command name in parentheses, field 10 is minflt and 12 majflt.
        if let Ok(s) = std::fs::read_to_string("/proc/thread-self/stat") {
            let rest = s.rsplit_once(')').map_or("", |(_, r)| r);
            let f: Vec<u64> = rest.split_whitespace().map(|v| v.parse().unwrap_or(0)).collect();
            // `rest` starts at field 3 (state).
            t.minflt = f.get(10 - 3).copied().unwrap_or(0);
            t.majflt = f.get(12 - 3).copied().unwrap_or(0);
        }
        if let Ok(s) = std::fs::read_to_string("/proc/thread-self/status") {
            for l in s.lines() {
                let value = |l: &str| l.split_whitespace().nth(1).and_then(|v| v.parse().ok());
                if l.starts_with("voluntary_ctxt_switches") {
                    t.nvcsw = value(l).unwrap_or(0);
                } else if l.starts_with("nonvoluntary_ctxt_switches") {
                    t.nivcsw = value(l).unwrap_or(0);
                }
            }
        }
        // Last, so that a batch's CPU time and run-queue wait start with its wall time, after
        // the reads above (a wait in them would otherwise count in the batch's).
        t.runqueue_ns = runqueue_ns();
        t.cpu_ns = thread_cpu_ns();
        t
    }
}

/// The calling thread's time spent runnable but waiting for a CPU, ns (`schedstat`'s second
/// field, "run-queue wait time": brought up to date when the thread gets a CPU, so a running
/// thread's own reading is current).
fn runqueue_ns() -> u64 {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        .unwrap_or(0)
}

/// Watches one batch at a time.
#[derive(Debug)]
pub struct StallLog {
    threshold: Duration,
    started: Instant,
    before: ThreadTimes,
    /// The slowest message of the batch: (line, apply ns).
    slowest: (u64, u64),
    first_line: u64,
    lines: u64,
}

impl StallLog {
    pub fn new(threshold: Duration) -> StallLog {
        StallLog {
            threshold,
            started: Instant::now(),
            before: ThreadTimes::default(),
            slowest: (0, 0),
            first_line: 0,
            lines: 0,
        }
    }

    /// A batch starts.
    pub fn start(&mut self) {
        self.before = ThreadTimes::now();
        self.started = Instant::now();
        self.slowest = (0, 0);
        self.lines = 0;
    }

    /// One line of the batch was handled; `apply_ns` when the engine applied it.
    pub fn line(&mut self, line: u64, apply_ns: Option<u64>) {
        if self.lines == 0 {
            self.first_line = line;
        }
        self.lines += 1;
        if let Some(ns) = apply_ns.filter(|&ns| ns >= self.slowest.1) {
            self.slowest = (line, ns);
        }
    }

    /// The batch ended: logs it when it took at least the threshold.
    pub fn end(&mut self) {
        // CPU time read with the wall time, and the run-queue wait right after, before the
        // other `/proc` reads.
        let (wall, cpu_ns) = (self.started.elapsed(), thread_cpu_ns());
        if wall < self.threshold {
            return;
        }
        let runqueue_ns = runqueue_ns();
        let (a, b) = (self.before, ThreadTimes { cpu_ns, runqueue_ns, ..ThreadTimes::now() });
        let us = |ns: u64| ns / 1000;
        eprintln!(
            "liqscan stall: lines {}+{} wall {} us cpu {} us runqueue {} us \
             minflt {} majflt {} nvcsw {} nivcsw {} slowest line {} apply {} us",
            self.first_line,
            self.lines,
            wall.as_micros(),
            us(b.cpu_ns.saturating_sub(a.cpu_ns)),
            us(b.runqueue_ns.saturating_sub(a.runqueue_ns)),
            b.minflt.saturating_sub(a.minflt),
            b.majflt.saturating_sub(a.majflt),
            b.nvcsw.saturating_sub(a.nvcsw),
            b.nivcsw.saturating_sub(a.nivcsw),
            self.slowest.0,
            us(self.slowest.1),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Keeps this thread busy until `d` after `since`.
    fn busy_until(since: Instant, d: Duration) {
        let mut x = 0u64;
        while since.elapsed() < d {
            x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
        }
    }

    /// The counters move the right way and in nanoseconds: CPU work shows as CPU time, and
    /// CPU time and run-queue delay together do not exceed the wall time they cover. (Their
    /// sum may fall short of it: time the host takes the virtual CPU away, steal, is neither;
    /// a CI run beside other jobs once saw 23.3 of 30 ms, and the test asked for 25.)
    #[test]
    fn thread_times_count_cpu_work() {
        let t = Instant::now();
        let a = ThreadTimes::now();
        busy_until(t, Duration::from_millis(30));
        let b = ThreadTimes::now();
        let wall_ns = t.elapsed().as_nanos() as u64;
        // On a loaded machine the thread may get less than all of the 30 ms, never nothing.
        assert!(b.cpu_ns >= a.cpu_ns + 1_000_000, "{a:?} {b:?}");
        assert!(b.runqueue_ns >= a.runqueue_ns, "{a:?} {b:?}");
        let accounted = (b.cpu_ns - a.cpu_ns) + (b.runqueue_ns - a.runqueue_ns);
        // A wait is added up when the thread gets its CPU back, so a reading may leave out
        // one still going or count one begun before the spin (a tick's worth at most: 10 ms
        // at any HZ).
        assert!(accounted <= wall_ns + 10_000_000, "{accounted} ns in {wall_ns} ns: {a:?} {b:?}");
    }

    /// The CPU time is current when read, not a tick behind: 20 spins of 300 µs each (under a
    /// tick at any HZ up to 1000) each show CPU time, but for a few that a loaded machine
    /// may preempt whole. A tick-driven count (`schedstat`'s run time, read by the running
    /// thread, which this used before) shows none for most of them.
    #[test]
    fn thread_cpu_time_moves_within_a_tick() {
        let mut moved = 0;
        for _ in 0..20 {
            let a = ThreadTimes::now();
            busy_until(Instant::now(), Duration::from_micros(300));
            let b = ThreadTimes::now();
            moved += usize::from(b.cpu_ns > a.cpu_ns + 50_000);
        }
        assert!(moved >= 15, "CPU time moved in {moved} of 20 spins of 300 µs");
    }
}
