//! The figures of `scripts/bench.sh`, printed as one JSON object. Run with
//! `cargo bench --bench figures` (release profile). Sizes can be scaled down for a quick
//! look with LIQSCAN_BENCH_ACCOUNTS / _POSITIONS / _MARKS; LIQSCAN_BENCH_ONLY=book prints
//! the big book's sweep, at-risk and memory figures alone, LIQSCAN_BENCH_ONLY=small the
//! 300k-position book swept on one worker and on two. LIQSCAN_BENCH_THP=0 turns transparent
//! huge pages off for this process (to measure what they are worth).
//!
//! Every ratio is measured within this one run, since the machines are shared and noisy.

#![recursion_limit = "256"]

use std::{
    hint::black_box,
    sync::Arc,
    time::{Duration, Instant},
};

use liqscan::{
    config::SymbolIdx,
    engine::{At, Engine, RiskQuery},
    fast::{FastEngine, SweepPhases, book::Book},
    fixed::D8,
    generator::{self, GenOptions},
    latency::Latency,
    protocol::Command,
    reference::ReferenceEngine,
    replay, synth,
};
use rayon::prelude::*;

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// The 1 GiB buffer [`mem_read_bps`] reads: larger than any cache, so that a read of it
/// streams from memory (and leaves nothing of a sweep's data in the caches).
fn read_buffer() -> Vec<u64> {
    (0..(1u64 << 30) / 8).collect()
}

/// One read of `buf` on every worker, and its time.
fn read_once(buf: &[u64]) -> Duration {
    let t = Instant::now();
    black_box(
        buf.par_chunks(1 << 16)
            .map(|c| c.iter().fold(0u64, |a, &x| a.wrapping_add(x)))
            .sum::<u64>(),
    );
    t.elapsed()
}

/// Sequential read bandwidth of `buf`, bytes/s: one thread (best of 5), and all threads
/// (best of 9, and the median of those 9).
fn mem_read_bps(buf: &[u64]) -> (f64, f64, f64) {
    let bytes = std::mem::size_of_val(buf) as f64;
    let one: Vec<Duration> = (0..5)
        .map(|_| {
            let t = Instant::now();
            black_box(buf.iter().fold(0u64, |a, &x| a.wrapping_add(x)));
            t.elapsed()
        })
        .collect();
    let all: Vec<Duration> = (0..9).map(|_| read_once(buf)).collect();
    let best = |v: &[Duration]| v.iter().min().copied().unwrap_or_default().as_secs_f64();
    (bytes / best(&one), bytes / best(&all), bytes / median(all).as_secs_f64())
}

/// Sweeps of `engine`, each right after a read of `buf` on every worker: the sweep then
/// finds none of its data in the caches (on a machine whose last-level cache holds much of
/// a warm sweep's 200 MB, the warm figure depends on what the neighbours left there), and
/// each sweep is compared with a bandwidth measured the moment before, so that a change of
/// load between the two measurements cannot skew the ratio. Returns the median sweep, the
/// median read bandwidth (bytes/s) and the median of the per-pair ratios of the sweep's
/// rate (`bytes` a sweep) to the read's.
fn time_cold_sweeps(
    engine: &mut FastEngine,
    buf: &[u64],
    bytes: f64,
    n: usize,
) -> serde_json::Value {
    let at = At { line: 0, seq: 0 };
    let read_bytes = std::mem::size_of_val(buf) as f64;
    let pairs: Vec<(Duration, Duration)> = (0..n)
        .map(|_| {
            let read = read_once(buf);
            let t = Instant::now();
            engine.sweep(at, &mut ignore);
            (t.elapsed(), read)
        })
        .collect();
    let mut fractions: Vec<f64> = (pairs.iter())
        .map(|(s, r)| (bytes / s.as_secs_f64()) / (read_bytes / r.as_secs_f64()))
        .collect();
    fractions.sort_by(f64::total_cmp);
    let sweep = median(pairs.iter().map(|p| p.0).collect());
    let read = median(pairs.iter().map(|p| p.1).collect());
    serde_json::json!({
        "sweep_ms": sweep.as_secs_f64() * 1e3,
        "mem_read_gbps": read_bytes / read.as_secs_f64() / 1e9,
        "bandwidth_fraction": fractions[fractions.len() / 2],
    })
}

/// Nanoseconds a step of a dependent multiply-add chain takes (best of 3 runs of 2^24
/// steps): the speed of the core this thread runs on, which a virtual machine's CPU
/// frequency or a neighbour on the same physical core changes from run to run.
fn cpu_ns_per_step() -> f64 {
    const STEPS: u64 = 1 << 24;
    let once = || {
        let t = Instant::now();
        let mut x = black_box(1u64);
        for _ in 0..STEPS {
            x = black_box(x)
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
        }
        black_box(x);
        t.elapsed()
    };
    (0..3).map(|_| once()).min().unwrap_or_default().as_secs_f64() * 1e9 / STEPS as f64
}

/// With LIQSCAN_BENCH_THP=0, turns transparent huge pages off for this process
/// (`PR_SET_THP_DISABLE`: `MADV_HUGEPAGE` regions included), to measure what they are
/// worth without touching the machine's settings. Returns whether they are off.
fn thp_off_if_asked() -> bool {
    if !std::env::var("LIQSCAN_BENCH_THP").is_ok_and(|v| v == "0") {
        return false;
    }
    #[allow(unsafe_code)]
    // SAFETY: prctl(PR_SET_THP_DISABLE, 1, 0, 0, 0) only sets a flag of this process; no
    // memory is passed.
    let r = unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) };
    assert_eq!(r, 0, "prctl(PR_SET_THP_DISABLE): {}", std::io::Error::last_os_error());
    true
}

// The allocator the `liqscan` binary runs with (see `src/main.rs`), so that resident memory
// and timings are those of the product.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn ignore(_: liqscan::protocol::Event) {}

fn build(accounts: u64, positions: u64, symbols: usize) -> FastEngine {
    book_of(symbols, synth::book_commands(accounts, positions, symbols, 42))
}

/// The book of [`build`] with its positions booked in random order: every balance (and
/// margin mode) first, so account indexes are assigned as in [`build`], then the positions
/// shuffled. A book's slots are then in no account order, as after long trading, and a
/// sweep reaches the account sums at random.
fn build_shuffled(accounts: u64, positions: u64, symbols: usize) -> FastEngine {
    let (mut held, settings): (Vec<Command>, Vec<Command>) =
        synth::book_commands(accounts, positions, symbols, 42)
            .partition(|c| matches!(c, Command::Position { .. }));
    let mut rng = synth::Rng::new(43);
    for k in (1..held.len()).rev() {
        held.swap(k, rng.below(k as u64 + 1) as usize);
    }
    book_of(symbols, settings.into_iter().chain(held))
}

/// A fast engine that has applied `cmds` and then marks every symbol at its base price.
fn book_of(symbols: usize, cmds: impl Iterator<Item = Command>) -> FastEngine {
    let mut engine = FastEngine::new(Arc::new(synth::config(symbols)));
    let at = At { line: 0, seq: 0 };
    for cmd in cmds {
        engine.apply(&cmd, at, &mut ignore).expect("the generated book is valid");
    }
    let prices = (0..symbols)
        .map(|s| (SymbolIdx(s as u16), D8(i128::from(synth::base_price_e2(s)) * 1_000_000)))
        .collect();
    engine.apply(&Command::Marks { prices }, at, &mut ignore).unwrap();
    engine
}

/// What session 8's figures counted as the bytes of a full sweep (hot records as 16 bytes,
/// where they are 32), kept so that a fraction can be compared with the old ones:
/// [`FastEngine::sweep_bytes`] is the count now.
fn sweep_bytes_session8(engine: &FastEngine, cross: usize, isolated: usize) -> f64 {
    let cross_b = cross * (4 + 8 + 16);
    let iso_b = isolated * (8 + 16 + 1);
    let acct_b = engine.n_accounts() * (16 + 2 * 16 + 16);
    (cross_b + iso_b + acct_b) as f64
}

/// Bytes a tick must touch, from the engine's counters over the tick: the guards of the
/// symbol's two books, the triggers in the blocks they opened, and per position evaluated
/// its columns and trigger (account records and pairs of refreshed accounts not counted,
/// so the figure errs low).
fn tick_bytes(books: (usize, usize), triggers_read: u64, evaluated: u64) -> f64 {
    let guards = (books.0.div_ceil(64) + books.1.div_ceil(64)) * 16;
    (guards as u64 + triggers_read * 8 + evaluated * (Book::BYTES_PER_POSITION as u64 + 8)) as f64
}

/// What [`time_ticks`] measured: the median time, and per tick the triggers read, the
/// positions evaluated and the liquidation events emitted.
struct Ticks {
    median: Duration,
    triggers_read: f64,
    evaluated: f64,
    events: f64,
}

/// Medians of `n` full-book sweeps of `engine`, after one untimed warm-up sweep.
struct Sweeps {
    /// The whole sweep.
    total: Duration,
    /// The fastest sweep.
    best: Duration,
    /// Mean time per sweep this process's threads spent runnable but waiting for a core
    /// (ms): what other processes on the machine took from the sweep.
    runqueue_wait_ms: f64,
    /// The median of the sweeps no thread of this process waited for a core in (run-queue
    /// wait under 2 % of the sweep), and how many there were.
    quiet: Option<Duration>,
    n_quiet: usize,
    /// Its phases, as the engine timed them (`FastEngine::last_sweep`).
    cross: Duration,
    isolated: Duration,
}

fn time_sweeps(engine: &mut FastEngine, n: usize) -> Sweeps {
    let at = At { line: 0, seq: 0 };
    engine.sweep(at, &mut ignore);
    let waited = runqueue_wait_ns();
    let mut quiet = Vec::new();
    let runs: Vec<(Duration, SweepPhases)> = (0..n)
        .map(|_| {
            let before = runqueue_wait_ns();
            let t = Instant::now();
            engine.sweep(at, &mut ignore);
            let elapsed = t.elapsed();
            if ((runqueue_wait_ns() - before) as f64) < 0.02 * elapsed.as_nanos() as f64 {
                quiet.push(elapsed);
            }
            (elapsed, engine.last_sweep())
        })
        .collect();
    let runqueue_wait_ms = (runqueue_wait_ns() - waited) as f64 / n as f64 / 1e6;
    let n_quiet = quiet.len();
    let quiet = if quiet.is_empty() { None } else { Some(median(quiet)) };
    Sweeps {
        total: median(runs.iter().map(|r| r.0).collect()),
        best: runs.iter().map(|r| r.0).min().unwrap_or_default(),
        runqueue_wait_ms,
        quiet,
        n_quiet,
        cross: median(runs.iter().map(|r| r.1.cross).collect()),
        isolated: median(runs.iter().map(|r| r.1.isolated).collect()),
    }
}

/// CPU time of this process so far, ns: every thread's time on a CPU
/// (`/proc/self/task/*/schedstat`), so that a figure taken on a shared, busy machine can be
/// told apart from time spent waiting for a core.
fn cpu_ns() -> u64 {
    schedstat_ns(0)
}

/// Time this process's threads have spent runnable but waiting for a CPU so far, ns (the
/// second field of `schedstat`): on a shared machine, what the neighbours took.
fn runqueue_wait_ns() -> u64 {
    schedstat_ns(1)
}

/// The sum over this process's threads of field `k` of `/proc/self/task/*/schedstat`.
fn schedstat_ns(k: usize) -> u64 {
    let tasks = std::fs::read_dir("/proc/self/task").into_iter().flatten().flatten();
    tasks
        .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().nth(k)?.parse::<u64>().ok())
        .sum()
}

/// Bytes of this process's memory in transparent huge pages (`AnonHugePages` of
/// `/proc/self/smaps_rollup`; 0 where the kernel does not say).
fn anon_huge_bytes() -> u64 {
    let text = std::fs::read_to_string("/proc/self/smaps_rollup").unwrap_or_default();
    text.lines()
        .find_map(|l| l.strip_prefix("AnonHugePages:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// `(all, steal)` CPU ticks of every CPU since boot, from `/proc/stat`'s `cpu` line: steal is
/// the time the hypervisor ran other guests while this VM's vCPUs had work. `None` where the
/// line or its steal field is missing.
fn cpu_ticks() -> Option<(u64, u64)> {
    let text = std::fs::read_to_string("/proc/stat").ok()?;
    let line = text.lines().find(|l| l.starts_with("cpu "))?;
    // user nice system idle iowait irq softirq steal (guest time is counted in user already).
    let ticks: Vec<u64> =
        line.split_whitespace().skip(1).take(8).map_while(|v| v.parse().ok()).collect();
    (ticks.len() == 8).then(|| (ticks.iter().sum(), ticks[7]))
}

/// The share of all CPU time since `start` (a [`cpu_ticks`] reading) that the host stole
/// (0 to 1; `None` without `/proc/stat` or when no tick passed).
fn steal_share(start: Option<(u64, u64)>) -> Option<f64> {
    let ((all0, steal0), (all1, steal1)) = (start?, cpu_ticks()?);
    (all1 > all0).then(|| steal1.saturating_sub(steal0) as f64 / (all1 - all0) as f64)
}

/// The 1-minute load average, as `/proc/loadavg` gives it (0 where it cannot be read).
fn load_average() -> f64 {
    let text = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    text.split_whitespace().next().and_then(|v| v.parse().ok()).unwrap_or(0.0)
}

/// Median and least time of `n` at-risk answers of `limit` items (no filter) on `engine`,
/// after one untimed warm-up: the engine time a `GET /at-risk?limit=N` costs (SPEC section
/// 9.3), and the mean CPU time of one answer over all threads (ms).
fn time_at_risk(engine: &FastEngine, limit: usize, n: usize) -> (Duration, Duration, f64) {
    let q = RiskQuery { limit, symbol: None, mode: None };
    let got = engine.at_risk(&q).len();
    assert_eq!(got, limit.min(engine.n_positions()), "the book holds enough items");
    let cpu = cpu_ns();
    let times: Vec<Duration> = (0..n)
        .map(|_| {
            let t = Instant::now();
            black_box(engine.at_risk(&q));
            t.elapsed()
        })
        .collect();
    let least = times.iter().copied().min().unwrap_or_default();
    (median(times), least, (cpu_ns() - cpu) as f64 / n as f64 / 1e6)
}

/// The 300k-position book of the Criterion bench (100k accounts, 50 symbols) swept on a pool
/// of one worker and on a pool of two, alternately, `n` times each: the medians (ms) and the
/// speedup of two workers over one (issue 14 target 5).
fn small_book_scaling(n: usize) -> serde_json::Value {
    let mut engine = build(100_000, 300_000, 50);
    let at = At { line: 0, seq: 0 };
    let pools: Vec<rayon::ThreadPool> = [1, 2]
        .iter()
        .map(|&k| rayon::ThreadPoolBuilder::new().num_threads(k).build().unwrap())
        .collect();
    let mut times = [Vec::new(), Vec::new()];
    // The sweeps no thread of this process waited for a core in (run-queue wait under 2 %
    // of the sweep): on a shared machine, the ones the neighbours left alone.
    let mut quiet = [Vec::new(), Vec::new()];
    for i in 0..=n {
        for ((pool, t), q) in pools.iter().zip(&mut times).zip(&mut quiet) {
            let waited = runqueue_wait_ns();
            let start = Instant::now();
            pool.install(|| engine.sweep(at, &mut ignore));
            let elapsed = start.elapsed();
            // The first round warms the caches up and is not counted.
            if i > 0 {
                t.push(elapsed);
                if ((runqueue_wait_ns() - waited) as f64) < 0.02 * elapsed.as_nanos() as f64 {
                    q.push(elapsed);
                }
            }
        }
    }
    let best = |v: &[Duration]| v.iter().min().copied().unwrap_or_default().as_secs_f64();
    let (best_one, best_two) = (best(&times[0]), best(&times[1]));
    let quiet_n = quiet.each_ref().map(Vec::len);
    let quiet_ms = quiet.map(|q| if q.is_empty() { None } else { Some(median(q)) });
    let [one, two] = times.map(median);
    let ms = |d: Option<Duration>| d.map(|d| d.as_secs_f64() * 1e3);
    serde_json::json!({
        "one_worker_ms": one.as_secs_f64() * 1e3,
        "two_workers_ms": two.as_secs_f64() * 1e3,
        "two_workers_speedup": one.as_secs_f64() / two.as_secs_f64(),
        "best_one_worker_ms": best_one * 1e3,
        "best_two_workers_ms": best_two * 1e3,
        "best_two_workers_speedup": best_one / best_two,
        "quiet_sweeps": { "one_worker": quiet_n[0], "two_workers": quiet_n[1] },
        "quiet_one_worker_ms": ms(quiet_ms[0]),
        "quiet_two_workers_ms": ms(quiet_ms[1]),
        "quiet_two_workers_speedup": match quiet_ms {
            [Some(a), Some(b)] => Some(a.as_secs_f64() / b.as_secs_f64()),
            _ => None,
        },
    })
}

fn time_ticks(engine: &mut FastEngine, cmds: &[Command]) -> Ticks {
    let (t0, e0) = (engine.triggers_read(), engine.positions_evaluated());
    let at = At { line: 0, seq: 0 };
    let mut events = 0u64;
    let times = cmds
        .iter()
        .map(|cmd| {
            let t = Instant::now();
            engine.apply(cmd, at, &mut |_| events += 1).unwrap();
            t.elapsed()
        })
        .collect();
    let n = cmds.len() as f64;
    Ticks {
        median: median(times),
        triggers_read: (engine.triggers_read() - t0) as f64 / n,
        evaluated: (engine.positions_evaluated() - e0) as f64 / n,
        events: events as f64 / n,
    }
}

fn main() {
    let thp_off = thp_off_if_asked();
    let cpu_start = cpu_ns_per_step();
    if std::env::var("LIQSCAN_BENCH_ONLY").is_ok_and(|v| v == "small") {
        // The small book's scaling alone (issue 14 target 5).
        let n = env("LIQSCAN_BENCH_SMALL_SWEEPS", 101) as usize;
        println!("{}", serde_json::to_string_pretty(&small_book_scaling(n)).unwrap());
        return;
    }
    let accounts = env("LIQSCAN_BENCH_ACCOUNTS", 1_000_000);
    let positions = env("LIQSCAN_BENCH_POSITIONS", 3_000_000);
    let marks = env("LIQSCAN_BENCH_MARKS", 1_000_000) as usize;
    let symbols = 50;

    // --- the big book ------------------------------------------------------------------
    // Resident memory is measured before anything else has run: an allocator keeps freed
    // pages for reuse, so a buffer freed earlier would hide the book's growth.
    let load_start = load_average();
    let steal_start = cpu_ticks();
    let rss_before = rss_bytes();
    let mut engine = build(accounts, positions, symbols);
    let rss_after = rss_bytes();
    let huge_book = anon_huge_bytes();
    let n = engine.n_positions();
    let heap: serde_json::Map<_, _> = (engine.heap_bytes().iter())
        .map(|&(part, b)| (part.to_string(), (b as f64 / n as f64).into()))
        .collect();
    let (cross, isolated) = engine.book_sizes();
    let at = At { line: 0, seq: 0 };
    let steal_before_sweeps = cpu_ticks();
    let sweeps = time_sweeps(&mut engine, env("LIQSCAN_BENCH_SWEEPS", 15) as usize);
    let steal_sweeps = steal_share(steal_before_sweeps);
    let sweep = sweeps.total;
    let phases = serde_json::json!({
        "cross_ms": sweeps.cross.as_secs_f64() * 1e3,
        "isolated_ms": sweeps.isolated.as_secs_f64() * 1e3,
        "best_ms": sweeps.best.as_secs_f64() * 1e3,
        "runqueue_wait_ms": sweeps.runqueue_wait_ms,
        "quiet_ms": sweeps.quiet.map(|d| d.as_secs_f64() * 1e3),
        "n_quiet": sweeps.n_quiet,
        "steal_share": steal_sweeps,
    });
    let huge_swept = anon_huge_bytes();
    let bytes = engine.sweep_bytes() as f64;
    let bytes8 = sweep_bytes_session8(&engine, cross, isolated);
    let n_at_risk = env("LIQSCAN_BENCH_AT_RISK", 9) as usize;
    let (at_risk_100, least_100, cpu_100) = time_at_risk(&engine, 100, n_at_risk);
    let (at_risk_10k, least_10k, cpu_10k) = time_at_risk(&engine, 10_000, n_at_risk);
    let at_risk = serde_json::json!({
        "limit_100_ms": at_risk_100.as_secs_f64() * 1e3,
        "limit_100_min_ms": least_100.as_secs_f64() * 1e3,
        "limit_10000_min_ms": least_10k.as_secs_f64() * 1e3,
        "limit_100_cpu_ms": cpu_100,
        "limit_10000_ms": at_risk_10k.as_secs_f64() * 1e3,
        "limit_10000_cpu_ms": cpu_10k,
        "limit_100_per_sweep": at_risk_100.as_secs_f64() / sweep.as_secs_f64(),
        "limit_10000_per_sweep": at_risk_10k.as_secs_f64() / sweep.as_secs_f64(),
    });
    if std::env::var("LIQSCAN_BENCH_ONLY").is_ok_and(|v| v == "book") {
        // A quick look at the big book alone (bandwidth from one thread-pool read).
        let buf = read_buffer();
        let cold =
            time_cold_sweeps(&mut engine, &buf, bytes, env("LIQSCAN_BENCH_SWEEPS", 15) as usize);
        let (_, read_all, read_median) = mem_read_bps(&buf);
        let figures = serde_json::json!({
            "load_average_1m": { "start": load_start, "end": load_average() },
            "steal_share": steal_share(steal_start),
            "thp_off": thp_off,
            "cpu_ns_per_step": { "start": cpu_start, "end": cpu_ns_per_step() },
            "anon_huge_bytes_after_build": huge_book,
            "anon_huge_bytes_after_sweeps": huge_swept,
            "mem_read_gbps": read_all / 1e9,
            "mem_read_gbps_median": read_median / 1e9,
            "sweep_ms": sweep.as_secs_f64() * 1e3,
            "sweep_bytes_per_position": bytes / n as f64,
            "sweep_bandwidth_fraction": bytes / sweep.as_secs_f64() / read_all,
            "sweep_bandwidth_fraction_session8_count": bytes8 / sweep.as_secs_f64() / read_all,
            "sweep_after_cold_read": cold,
            "sweep_best_bandwidth_fraction": bytes / sweeps.best.as_secs_f64() / read_all,
            "sweep_quiet_bandwidth_fraction":
                sweeps.quiet.map(|d| bytes / d.as_secs_f64() / read_all),
            "sweep_phases": phases,
            "at_risk": at_risk,
            "rss_bytes_per_position": (rss_after.saturating_sub(rss_before)) as f64 / n as f64,
            "heap_bytes_per_position": heap,
        });
        println!("{}", serde_json::to_string_pretty(&figures).unwrap());
        return;
    }

    // Ticks on the big book, symbols as skewed as the book.
    let cfg = synth::config(symbols);
    let mut tick_latency = Latency::default();
    for line in synth::mark_lines(symbols, 3_000, 9).lines() {
        let p = liqscan::protocol::parse_envelope(line.as_bytes()).unwrap();
        let cmd = liqscan::protocol::validate(&p.envelope, &cfg).unwrap();
        let t = Instant::now();
        engine.apply(&cmd, at, &mut ignore).unwrap();
        tick_latency.record(t.elapsed().as_nanos() as u64);
    }
    let ticks = tick_latency.summary();
    let rss_steady = rss_bytes();
    // The 1 GiB buffer of the bandwidth figures, made only now so that it cannot hide in a
    // resident-memory figure above.
    let buf = read_buffer();
    let cold = time_cold_sweeps(&mut engine, &buf, bytes, env("LIQSCAN_BENCH_SWEEPS", 15) as usize);
    drop(engine);

    // --- one symbol with 1M holders -------------------------------------------------------
    let mut one = build(1_000_000, 1_000_000, 1);
    let (c1, i1) = one.book_sizes();
    let base = synth::base_price_e2(0);
    let mark =
        |e2: i64| Command::Mark { symbol: SymbolIdx(0), price: D8(i128::from(e2) * 1_000_000) };
    // Small moves (one tick either way), as most marks are: the index opens few blocks.
    let small: Vec<Command> = (0..31).map(|k| mark(base + (k % 3) - 1)).collect();
    let small = time_ticks(&mut one, &small);
    let small_bytes = tick_bytes((c1, i1), small.triggers_read as u64, small.evaluated as u64);
    // Wicks of 3 % down and back, the largest one-message moves the generator makes: each
    // fires every holder whose room is smaller, and refreshes its account.
    let wicks: Vec<Command> =
        (0..10).map(|k| mark(if k % 2 == 0 { base * 97 / 100 } else { base })).collect();
    let wick = time_ticks(&mut one, &wicks);
    let wick_bytes = tick_bytes((c1, i1), wick.triggers_read as u64, wick.evaluated as u64);
    // The same book swept in full, for comparison with the wick.
    let sweep_1m = time_sweeps(&mut one, 5).total;
    drop(one);

    // --- the big book again, its slots in random account order ----------------------------
    let mut shuffled = build_shuffled(accounts, positions, symbols);
    let sweeps_shuffled = time_sweeps(&mut shuffled, env("LIQSCAN_BENCH_SWEEPS", 15) as usize);
    let phases_shuffled = serde_json::json!({
        "cross_ms": sweeps_shuffled.cross.as_secs_f64() * 1e3,
        "isolated_ms": sweeps_shuffled.isolated.as_secs_f64() * 1e3,
    });
    drop(shuffled);

    let small_book = small_book_scaling(env("LIQSCAN_BENCH_SMALL_SWEEPS", 101) as usize);

    // --- replay throughput: 10 000 accounts, mark-heavy --------------------------------
    // The generator plays the matching engine (closes liquidated items, re-opens them, keeps
    // levering up), so liquidations keep a steady, realistic rate.
    let cfg = Arc::new(synth::config(symbols));
    // The reference engine re-evaluates every holder on exact big integers (~1 ms a tick on
    // this book), so the comparison stream is shorter; both engines replay the same one.
    // Marks only (besides the engine's own actions), their symbols picked by popularity: the
    // heaviest ticks a 10 000-account book gets.
    let stream = |messages: usize| {
        let mut opts = GenOptions::new(10_000, symbols, messages as u64, 7);
        opts.mark_ratio = 1.0;
        opts.marks_follow_popularity = true;
        generator::generate_string(&opts)
    };
    let short = stream((marks / 100).max(1));
    let long = stream(marks);
    // The same marks with no positions held: what parse, queue, apply and write cost alone.
    let marks_only = synth::mark_lines(symbols, marks, 8);
    let run = |engine: &mut dyn Engine, text: &str| {
        let s = replay::replay(cfg.clone(), engine, text.as_bytes(), std::io::sink()).unwrap();
        (s.messages as f64 / s.elapsed.as_secs_f64(), s)
    };
    let (ref_rate, ref_summary) = run(&mut ReferenceEngine::new(cfg.clone()), &short);
    let (fast_rate, fast_summary) = run(&mut FastEngine::new(cfg.clone()), &short);
    assert_eq!(ref_summary.liquidations, fast_summary.liquidations, "engines disagree");
    let mut pipe_engine = FastEngine::new(cfg.clone());
    let (pipe_rate, pipe_summary) = run(&mut pipe_engine, &long);
    let (bare_rate, _) = run(&mut FastEngine::new(cfg.clone()), &marks_only);
    // Per mark on that stream (counted, not estimated): positions evaluated exactly, and
    // triggers read in the blocks the index opened.
    let holders_per_tick = pipe_engine.positions_evaluated() as f64 / marks as f64;
    let triggers_per_tick = pipe_engine.triggers_read() as f64 / marks as f64;

    let (read_1t, read_all, read_median) = mem_read_bps(&buf);
    let sweep_bps = bytes / sweep.as_secs_f64();

    let figures = serde_json::json!({
        "machine": { "cores": std::thread::available_parallelism().map_or(0, |n| n.get()) },
        "load_average_1m": { "start": load_start, "end": load_average() },
        "steal_share": steal_share(steal_start),
        "thp_off": thp_off,
        "cpu_ns_per_step": { "start": cpu_start, "end": cpu_ns_per_step() },
        "anon_huge_bytes_after_build": huge_book,
        "anon_huge_bytes_after_sweeps": huge_swept,
        "positions": n,
        "accounts": accounts,
        "symbols": symbols,
        "cross_positions": cross,
        "isolated_positions": isolated,
        "sweep_ms": sweep.as_secs_f64() * 1e3,
        "sweep_bytes_per_position": bytes / n as f64,
        "sweep_phases": phases,
        "at_risk": at_risk,
        "sweep_positions_per_s": n as f64 / sweep.as_secs_f64(),
        "mem_read_gbps": read_all / 1e9,
        "mem_read_gbps_median": read_median / 1e9,
        "mem_read_gbps_one_thread": read_1t / 1e9,
        "sweep_bandwidth_fraction": sweep_bps / read_all,
        "sweep_bandwidth_fraction_session8_count": bytes8 / sweep.as_secs_f64() / read_all,
        "sweep_after_cold_read": cold,
        "sweep_best_bandwidth_fraction": bytes / sweeps.best.as_secs_f64() / read_all,
        "sweep_quiet_bandwidth_fraction": sweeps.quiet.map(|d| bytes / d.as_secs_f64() / read_all),
        "sweep_shuffled_ms": sweeps_shuffled.total.as_secs_f64() * 1e3,
        "sweep_shuffled_phases": phases_shuffled,
        "sweep_shuffled_bandwidth_fraction":
            bytes / sweeps_shuffled.total.as_secs_f64() / read_all,
        "tick_1m_holders_ms": small.median.as_secs_f64() * 1e3,
        "tick_1m_holders_bytes": small_bytes,
        "tick_1m_holders_bandwidth_fraction":
            small_bytes / small.median.as_secs_f64() / read_all,
        "tick_1m_holders_positions_evaluated": small.evaluated,
        "wick_1m_holders_ms": wick.median.as_secs_f64() * 1e3,
        "wick_1m_holders_positions_evaluated": wick.evaluated,
        "wick_1m_holders_events": wick.events,
        "wick_1m_holders_bandwidth_fraction": wick_bytes / wick.median.as_secs_f64() / read_all,
        "sweep_1m_holders_ms": sweep_1m.as_secs_f64() * 1e3,
        "sweep_300k_positions": small_book,
        "tick_latency_ns": { "p50": ticks.p50, "p99": ticks.p99, "p999": ticks.p999, "max": ticks.max },
        "rss_bytes_per_position": (rss_after.saturating_sub(rss_before)) as f64 / n as f64,
        "heap_bytes_per_position": heap,
        "rss_bytes_per_position_after_sweeps_and_ticks":
            (rss_steady.saturating_sub(rss_before)) as f64 / n as f64,
        "replay_stream_messages": ref_summary.messages,
        "replay_messages_per_s": { "fast": fast_rate, "reference": ref_rate },
        "speedup_vs_reference": fast_rate / ref_rate,
        "pipeline_stream_messages": pipe_summary.messages,
        "pipeline_messages_per_s": pipe_rate,
        "pipeline_liquidations": pipe_summary.liquidations,
        "pipeline_positions_per_tick": holders_per_tick,
        "pipeline_triggers_read_per_tick": triggers_per_tick,
        "pipeline_only_messages_per_s": bare_rate,
    });
    println!("{}", serde_json::to_string_pretty(&figures).unwrap());
}
