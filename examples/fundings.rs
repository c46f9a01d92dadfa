//! What a `funding` message costs by the size of its symbol's books: applies a `liqscan gen`
//! stream (parsed first, outside the timing) on this thread, takes each funding's thread CPU
//! time with its symbol's cross and isolated book lengths at the time, and prints
//! - the fundings grouped by book size (count, mean, p99 and max CPU time, mean slots, mean
//!   positions evaluated, and how many took over 5 µs),
//! - a least-squares fit `ns = a + b · isolated + c · evaluated` over all fundings, where
//!   `isolated` is the isolated book's length (each paid in one pass) and `evaluated` the
//!   positions the funding evaluated (the refreshes of the accounts whose funding trigger it
//!   fired). Since session 16 a funding no longer settles its cross book's share of the
//!   progressive settle (the messages after it do), unless it finishes an earlier share
//!   left over: the cross book costs only its trigger scan.
//!
//! - with `SMALL=N`, after the stream: `N` more fundings of rate ±10^-6 (alternating, so the
//!   books stay where the stream left them), round-robin over the symbols of 300–1,000
//!   holders, timed together (no clock reading per funding; with no other message between
//!   them, each finishes its symbol's previous share of the settle, as a run of fundings alone
//!   does): what a small symbol's funding
//!   costs on the full book, and a steady loop for `perf record -p`.
//!
//! ```sh
//! cargo build --release --example fundings
//! target/release/examples/fundings /tmp/eng/t.config.json /tmp/eng/t.ndjson
//! SMALL=400000 target/release/examples/fundings /tmp/eng/t.config.json /tmp/eng/t.ndjson
//! ```

use std::{fs::File, io::BufReader, sync::Arc, time::Instant};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
use liqscan::{
    config::{Config, SymbolIdx},
    engine::{At, Engine},
    fast::FastEngine,
    fixed::D8,
    ingest::{Ingest, LineReader, Outcome},
    protocol::Command,
};

/// This thread's CPU time in ns.
/// Per funding: its symbol's cross and isolated book lengths, its thread CPU time (ns) and
/// the positions it evaluated (refreshes of the accounts it fired, isolated evaluations).
type Funding = (usize, usize, u64, u64);

fn cpu_ns() -> u64 {
    liqscan::latency::clock_ns(libc::CLOCK_THREAD_CPUTIME_ID)
}

/// Solves the 3×3 system `m · x = v` (Cramer's rule; the normal equations of the fit).
fn solve3(m: [[f64; 3]; 3], v: [f64; 3]) -> [f64; 3] {
    let det = |m: [[f64; 3]; 3]| {
        m[0][0] * (m[1][1] * m[2][2] - m[1][2] * m[2][1])
            - m[0][1] * (m[1][0] * m[2][2] - m[1][2] * m[2][0])
            + m[0][2] * (m[1][0] * m[2][1] - m[1][1] * m[2][0])
    };
    let d = det(m);
    let mut x = [0.0; 3];
    for (j, xj) in x.iter_mut().enumerate() {
        let mut mj = m;
        for (row, &vi) in mj.iter_mut().zip(&v) {
            row[j] = vi;
        }
        *xj = det(mj) / d;
    }
    x
}

/// `SMALL=n`: `n` fundings of ±10^-6 round-robin over the symbols of 300–1,000 holders.
fn small_fundings(engine: &mut FastEngine, n: usize) {
    let small: Vec<SymbolIdx> = engine
        .book_lens()
        .enumerate()
        .filter(|(_, (cross, isolated))| (300..1_000).contains(&(cross + isolated)))
        .map(|(s, _)| SymbolIdx(s as u16))
        .collect();
    if small.is_empty() {
        eprintln!("SMALL: no symbol has 300-1,000 holders");
        return;
    }
    let (cross, isolated) = small.iter().fold((0, 0), |(c, i), s| {
        let (bc, bi) = engine.book_lens().nth(s.0 as usize).unwrap_or_default();
        (c + bc, i + bi)
    });
    let (cpu, wall) = (cpu_ns(), Instant::now());
    for k in 0..n {
        let rate = if k % 2 == 0 { D8(100) } else { D8(-100) };
        let cmd = Command::Funding { symbol: small[k % small.len()], rate };
        let _ = engine.apply(&cmd, At { line: 0, seq: 0 }, &mut |_| {});
    }
    println!(
        "small fundings: {n} over {} symbols (mean {} cross + {} isolated holders): {:.0} ns CPU, {:.0} ns wall each",
        small.len(),
        cross / small.len(),
        isolated / small.len(),
        (cpu_ns() - cpu) as f64 / n.max(1) as f64,
        wall.elapsed().as_nanos() as f64 / n.max(1) as f64,
    );
}

fn main() -> anyhow::Result<()> {
    // As the `liqscan` binary runs: no purge of freed memory (`liqscan::heap`).
    liqscan::heap::keep_freed_memory();
    let args: Vec<String> = std::env::args().collect();
    anyhow::ensure!(args.len() == 3, "usage: fundings CONFIG STREAM");
    let cfg = Arc::new(Config::parse(&std::fs::read_to_string(&args[1])?)?);
    let mut reader = LineReader::new(BufReader::new(File::open(&args[2])?), 1 << 20);
    let mut ingest = Ingest::new(cfg.clone());
    let mut commands = Vec::new();
    let started = Instant::now();
    while let Some(line) = reader.next_line()? {
        let ingested = ingest.line(line, Instant::now());
        if let Outcome::Command { seq, cmd } = ingested.outcome {
            commands.push((At { line: ingested.line, seq }, cmd));
        }
    }
    eprintln!("{} commands read in {:.1?}", commands.len(), started.elapsed());
    let mut engine = FastEngine::new(cfg.clone());
    let mut fundings: Vec<Funding> = Vec::new();
    for (at, cmd) in &commands {
        let books = match cmd {
            Command::Funding { symbol, .. } => engine.book_lens().nth(symbol.0 as usize),
            _ => None,
        };
        let (start, evaluated) = (cpu_ns(), engine.positions_evaluated());
        let _ = engine.apply(cmd, *at, &mut |_| {});
        if let Some((cross, isolated)) = books {
            let evaluated = engine.positions_evaluated() - evaluated;
            fundings.push((cross, isolated, cpu_ns() - start, evaluated));
        }
    }
    if let Some(n) = std::env::var("SMALL").ok().and_then(|v| v.parse::<usize>().ok()) {
        small_fundings(&mut engine, n);
    }
    println!(
        "{} fundings; by the symbol's book size (cross + isolated positions):",
        fundings.len()
    );
    println!(
        "{:>16} {:>7} {:>10} {:>10} {:>10} {:>9} {:>9} {:>9} {:>9}",
        "holders",
        "count",
        "mean_ns",
        "p99_ns",
        "max_ns",
        "cross",
        "isolated",
        "evaluated",
        "over_5us"
    );
    let edges = [0, 1_000, 3_000, 10_000, 30_000, 100_000, 200_000, usize::MAX];
    for w in edges.windows(2) {
        let mut group: Vec<_> =
            fundings.iter().filter(|f| (w[0]..w[1]).contains(&(f.0 + f.1))).collect();
        if group.is_empty() {
            continue;
        }
        group.sort_unstable_by_key(|f| f.2);
        let n = group.len();
        let mean = |g: &dyn Fn(&Funding) -> f64| group.iter().map(|f| g(f)).sum::<f64>() / n as f64;
        println!(
            "{:>16} {n:>7} {:>10.0} {:>10} {:>10} {:>9.0} {:>9.0} {:>9.2} {:>9}",
            format!("{}..{}", w[0], if w[1] == usize::MAX { "".into() } else { w[1].to_string() }),
            mean(&|f| f.2 as f64),
            group[(n * 99 / 100).min(n - 1)].2,
            group[n - 1].2,
            mean(&|f| f.0 as f64),
            mean(&|f| f.1 as f64),
            mean(&|f| f.3 as f64),
            group.iter().filter(|f| f.2 > 5_000).count(),
        );
    }
    // Least squares over every funding: ns = a + b · isolated + c · evaluated.
    let (mut m, mut v) = ([[0.0f64; 3]; 3], [0.0f64; 3]);
    for &(_, isolated, ns, evaluated) in &fundings {
        let x = [1.0, isolated as f64, evaluated as f64];
        for ((row, vi), &xi) in m.iter_mut().zip(&mut v).zip(&x) {
            for (mij, &xj) in row.iter_mut().zip(&x) {
                *mij += xi * xj;
            }
            *vi += xi * ns as f64;
        }
    }
    let [a, b, c] = solve3(m, v);
    println!(
        "fit: {a:.0} ns + {b:.2} ns per paid isolated position + {c:.1} ns per position evaluated"
    );
    let total: u64 = fundings.iter().map(|f| f.2).sum();
    println!(
        "mean {:.0} ns CPU a funding, {:.3} s in all",
        total as f64 / fundings.len().max(1) as f64,
        total as f64 / 1e9
    );
    Ok(())
}
