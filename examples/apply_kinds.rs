//! The fast engine's apply cost per message kind, on a stream from `liqscan gen`: every line
//! is read, parsed and validated first (outside the timing), then the commands are applied
//! one by one on this thread, each timed. Prints, per kind, the count, the mean, p99, p99.9
//! and max apply time, how many took over 5 µs (`over_5us`: the kinds that make up the p99
//! of all lines, whose target is 5 µs) and the line of the max, plus the maximum while the start-up snapshot
//! grows the book (`SNAPSHOT_LINES`), so that engine-thread time is seen apart from the
//! pipeline's reading and parsing. Also runs one sweep at the end and times it.
//!
//! ```sh
//! cargo run --release --example apply_kinds -- CONFIG STREAM [SNAPSHOT_LINES]
//! CPU=1 cargo run --release --example apply_kinds -- CONFIG STREAM [SNAPSHOT_LINES]
//! ```
//! With `CPU=1` the `cpu_max` and `cpu_mean` columns and the slow-message list use each
//! message's thread CPU time (preemption on a busy machine left out) instead of its wall
//! time, and the list gives each slow message's minor page faults. `UNTIL=N` reads only the
//! first `N` lines. `AHEAD=D` names each command `4D`, `3D`, `2D` and `D` lines before its apply
//! to `Engine::prefetch`, as the pipeline does (default: the pipeline's distance,
//! `liqscan::engine::prefetch_ahead`; `AHEAD=0`: no hints). `JSON=1` also writes each event
//! as its JSON line into a buffer inside the timing, as the pipeline's `emit` does on the
//! engine thread (the buffer is emptied, not freed, every 1 MiB).
//!
//! Kinds: `first_marks` is a `mark` or `marks` that gives some symbol its first mark;
//! `marks` a `marks` message (several symbols), `mark` a single one; the account messages by
//! their type.

use std::{
    collections::BTreeMap,
    fs::File,
    io::BufReader,
    sync::Arc,
    time::{Duration, Instant},
};

use hdrhistogram::Histogram;

// The allocator of the `liqscan` binary, so that growth and event allocations cost here what
// they cost in `replay` (glibc's malloc, for one, remaps big blocks where mimalloc copies).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
use liqscan::{
    config::Config,
    engine::{At, Engine, prefetch_steps},
    fast::FastEngine,
    ingest::{Ingest, LineReader, Outcome},
    protocol::Command,
};

/// The `over_5us` column's bound: issue 14's apply p99 target.
const OVER_NS: u64 = 5_000;

/// CLOCK_MONOTONIC in ns: the clock `perf record -k CLOCK_MONOTONIC` stamps samples with,
/// so that a slow message's samples can be picked out (`perf script --time START,END`).
fn monotonic_ns() -> u64 {
    liqscan::latency::clock_ns(libc::CLOCK_MONOTONIC)
}

/// This thread's CPU time in ns: a message's CPU time leaves out the time the scheduler gave
/// other processes (on a shared 2-core machine, 4 ms slices), which wall time includes.
fn cpu_ns() -> u64 {
    liqscan::latency::clock_ns(libc::CLOCK_THREAD_CPUTIME_ID)
}

/// This thread's minor page faults so far (each a page the kernel found or zeroed for it):
/// with `CPU=1`, a slow message's count tells growth into new memory from work.
#[allow(unsafe_code)]
fn minor_faults() -> u64 {
    // SAFETY: an all-zero `rusage` is a valid value, and `getrusage` only writes into it.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `ru` is a valid, writable rusage; RUSAGE_THREAD is a constant Linux knows.
    let rc = unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut ru) };
    debug_assert_eq!(rc, 0);
    ru.ru_minflt as u64
}

struct Stats {
    hist: Histogram<u64>,
    sum_ns: u128,
    max_line: u64,
    /// The largest CPU time of one message, and its line.
    cpu_max: (u64, u64),
    /// Positions evaluated exactly (`FastEngine::positions_evaluated`).
    evaluated: u64,
    /// The engine thread's CPU time over these messages (wall time without `CPU=1`): on a
    /// shared machine its mean moves less than the wall-time mean (rayon workers' time is
    /// not in it).
    cpu_sum_ns: u128,
}

impl Stats {
    fn new() -> Stats {
        let hist = Histogram::new_with_bounds(1, 100_000_000_000, 3).expect("bounds");
        Stats { hist, sum_ns: 0, max_line: 0, cpu_max: (0, 0), evaluated: 0, cpu_sum_ns: 0 }
    }

    fn record(&mut self, ns: u64, cpu: u64, line: u64) {
        if cpu > self.cpu_max.0 {
            self.cpu_max = (cpu, line);
        }
        if ns > self.hist.max() {
            self.max_line = line;
        }
        self.hist.saturating_record(ns.max(1));
        self.sum_ns += u128::from(ns);
        self.cpu_sum_ns += u128::from(cpu);
    }

    fn row(&self, name: &str, total_ns: u128) {
        let n = self.hist.len();
        println!(
            "{name:<14} {n:>9} {:>9.0} {:>8} {:>8} {:>8} {:>10} {:>9} {:>10} {:>9} {:>6.1}% {:>9.3} {:>9.0}",
            self.sum_ns as f64 / n.max(1) as f64,
            self.hist.count_between(OVER_NS + 1, u64::MAX),
            self.hist.value_at_quantile(0.99),
            self.hist.value_at_quantile(0.999),
            self.hist.max(),
            self.max_line,
            self.cpu_max.0,
            self.cpu_max.1,
            100.0 * self.sum_ns as f64 / total_ns.max(1) as f64,
            self.evaluated as f64 / n.max(1) as f64,
            self.cpu_sum_ns as f64 / n.max(1) as f64,
        );
    }
}

fn kind(cmd: &Command, marked: &mut [bool]) -> &'static str {
    match cmd {
        Command::Mark { symbol, .. } => {
            if std::mem::replace(&mut marked[symbol.0 as usize], true) {
                "mark"
            } else {
                "first_marks"
            }
        }
        Command::Marks { prices } => {
            let mut first = false;
            for (s, _) in prices {
                first |= !std::mem::replace(&mut marked[s.0 as usize], true);
            }
            if first { "first_marks" } else { "marks" }
        }
        Command::Balance { .. } => "balance",
        Command::Transfer { .. } => "transfer",
        Command::Position { .. } => "position",
        Command::MarginMode { .. } => "margin_mode",
        Command::Leverage { .. } => "leverage",
        Command::Orders { .. } => "orders",
        Command::IsolatedMargin { .. } => "isolated_margin",
        Command::Funding { .. } => "funding",
        Command::Query { .. } => "query",
    }
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    // As the `liqscan` binary runs (`liqscan::heap`); PURGE=1 keeps mimalloc's default purge.
    if std::env::var("PURGE").is_ok_and(|v| v == "1") {
        eprintln!("mimalloc purges freed memory (its default)");
    } else {
        liqscan::heap::keep_freed_memory();
    }
    anyhow::ensure!(args.len() >= 3, "usage: apply_kinds CONFIG STREAM [SNAPSHOT_LINES]");
    let cfg = Arc::new(Config::parse(&std::fs::read_to_string(&args[1])?)?);
    let snapshot_lines: u64 = args.get(3).map_or(Ok(0), |s| s.parse())?;
    let started = Instant::now();
    let mut reader = LineReader::new(BufReader::new(File::open(&args[2])?), 1 << 20);
    let mut ingest = Ingest::new(cfg.clone());
    let mut commands = Vec::new();
    // UNTIL=N: read only the first N lines (e.g. the snapshot section, to look at growth alone).
    let until: u64 = std::env::var("UNTIL").map_or(Ok(u64::MAX), |s| s.parse())?;
    let mut read = 0u64;
    while let Some(line) = reader.next_line()? {
        read += 1;
        if read > until {
            break;
        }
        let ingested = ingest.line(line, Instant::now());
        if let Outcome::Command { seq, cmd } = ingested.outcome {
            commands.push((At { line: ingested.line, seq }, cmd));
        }
    }
    eprintln!("{} commands read in {:.1?}", commands.len(), started.elapsed());
    let mut engine = FastEngine::new(cfg.clone());
    let mut marked = vec![false; cfg.symbols.len()];
    let mut by_kind: BTreeMap<&'static str, Stats> = BTreeMap::new();
    let (mut all, mut growth, mut live) = (Stats::new(), Stats::new(), Stats::new());
    let mut events = 0u64;
    // CPU=1: also take each message's thread CPU time (two system calls a message, which
    // inflate the means by ~1 µs here), to tell work from preemption in the maxima.
    let with_cpu = std::env::var("CPU").is_ok_and(|v| v == "1");
    let mut slow = Vec::new();
    let wall = Instant::now();
    // AHEAD=D: the hints the pipeline gives (see above). Their time is counted in the
    // message that gives them.
    let ahead: usize =
        std::env::var("AHEAD").map_or(Ok(liqscan::engine::prefetch_ahead()), |s| s.parse())?;
    eprintln!("prefetch hints: {ahead} messages apart (AHEAD)");
    let json = std::env::var("JSON").is_ok_and(|v| v == "1");
    let mut buf = String::with_capacity(2 << 20);
    for (i, (at, cmd)) in commands.iter().enumerate() {
        let k = kind(cmd, &mut marked);
        let (cpu_start, faults_start) = if with_cpu { (cpu_ns(), minor_faults()) } else { (0, 0) };
        let evaluated = engine.positions_evaluated();
        let mono = if with_cpu { monotonic_ns() } else { 0 };
        let start = Instant::now();
        for (distance, step) in prefetch_steps(ahead) {
            if let Some((_, next)) = commands.get(i + distance) {
                engine.prefetch(next, step);
            }
        }
        let _ = engine.apply(cmd, *at, &mut |e| {
            events += 1;
            if json {
                e.write_json(&mut buf);
            }
        });
        if buf.len() > 1 << 20 {
            buf.clear();
        }
        let ns = start.elapsed().as_nanos() as u64;
        let evaluated = engine.positions_evaluated() - evaluated;
        let cpu = if with_cpu { cpu_ns() - cpu_start } else { ns };
        let faults = if with_cpu { minor_faults() - faults_start } else { 0 };
        let stats = by_kind.entry(k).or_insert_with(Stats::new);
        stats.record(ns, cpu, at.line);
        stats.evaluated += evaluated;
        all.record(ns, cpu, at.line);
        if cpu > 1_000_000 {
            slow.push((at.line, k, cpu, engine.n_accounts(), mono, faults));
        }
        if at.line <= snapshot_lines {
            growth.record(ns, cpu, at.line);
        } else {
            live.record(ns, cpu, at.line);
        }
    }
    let wall = wall.elapsed();
    let total = all.sum_ns;
    println!(
        "{} messages applied in {:.3} s ({:.0} msg/s engine-only), {events} events, {} accounts, {} positions",
        commands.len(),
        wall.as_secs_f64(),
        commands.len() as f64 / wall.as_secs_f64(),
        engine.n_accounts(),
        engine.n_positions(),
    );
    println!(
        "{} positions evaluated, {} of them fired cross positions re-triggered alone",
        engine.positions_evaluated(),
        engine.positions_retriggered(),
    );
    println!(
        "{:<14} {:>9} {:>9} {:>8} {:>8} {:>8} {:>10} {:>9} {:>10} {:>9} {:>7} {:>9} {:>9}",
        "kind",
        "count",
        "mean_ns",
        "over_5us",
        "p99_ns",
        "p999_ns",
        "max_ns",
        "max_line",
        "cpu_max",
        "its_line",
        "time",
        "evals/msg",
        "cpu_mean"
    );
    for (name, s) in &by_kind {
        s.row(name, total);
    }
    all.row("all", total);
    if snapshot_lines > 0 {
        growth.row("snapshot", total);
        live.row("stream", total);
    }
    // The slowest messages of each kind (a run has hundreds of slow fundings, which would
    // hide the others), with their start on CLOCK_MONOTONIC (with CPU=1) for perf.
    let mut per_kind: BTreeMap<&str, Vec<_>> = BTreeMap::new();
    for s in &slow {
        per_kind.entry(s.1).or_default().push(s);
    }
    for (k, mut list) in per_kind {
        println!("slow (> 1 ms): {k}: {} messages", list.len());
        list.sort_unstable_by_key(|s| std::cmp::Reverse(s.2));
        for (line, _, ns, accounts, mono, faults) in list.into_iter().take(5) {
            println!(
                "  line {line} {k} {:.2} ms at {accounts} accounts, {faults} page faults (start {}.{:09})",
                *ns as f64 / 1e6,
                mono / 1_000_000_000,
                mono % 1_000_000_000
            );
        }
    }
    let mut sizes: Vec<(usize, usize)> = engine.book_lens().collect();
    sizes.sort_unstable_by_key(|&(c, i)| std::cmp::Reverse(c + i));
    println!("largest books (cross, isolated positions): {:?}", &sizes[..sizes.len().min(5)]);
    let start = Instant::now();
    engine.sweep(At { line: 0, seq: 0 }, &mut |_| {});
    let sweep: Duration = start.elapsed();
    println!("sweep: {:.1} ms ({:?})", sweep.as_secs_f64() * 1e3, engine.last_sweep());
    println!("heap: {:?}", engine.heap_bytes());
    Ok(())
}
