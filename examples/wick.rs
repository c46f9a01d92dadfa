//! The cost of one message alone, typically a wick (a mark that fires thousands of holders):
//! applies a `liqscan gen` stream up to line `LINE - 1`, then line `LINE`, and prints that
//! message's thread CPU time, wall time (and when its first, median, 90th-percentile and
//! last events were made), events and positions evaluated. Lines after `LINE`
//! are not read.
//!
//! ```sh
//! cargo run --release --example wick -- CONFIG STREAM LINE [REPEAT]
//! ```
//! With `REPEAT` > 0 it then applies, `REPEAT` times over, the symbol's previous mark (the
//! accounts recover) and line `LINE`'s mark again (they fire again), and prints the CPU time
//! of each wick: a repeatable load for `perf`. With `PERF_CTL=FIFO` it writes `enable` to that
//! fifo before the first wick and `disable` after the last, so that
//! `perf record --control fifo:FIFO -D -1 ...` samples the wicks only. `PARALLEL_EVENTS=N`
//! builds the events of a message with at least N liquidations on the rayon workers
//! (`FastEngine::with_parallel_events`; off by default, as in `liqscan`). `PARALLEL_REFRESH=N`
//! plans the refreshes of a message touching at least N cross accounts on the workers
//! (`FastEngine::with_parallel_refresh`; off by default,
//! as in `liqscan` unless `LIQSCAN_PARALLEL_REFRESH` is set). `JSON=1` also writes each
//! event of a timed message as its JSON line into a buffer, inside the timing, as the
//! pipeline's `emit` does on the engine thread. The engine has `liqscan`'s wick scratch
//! (`FastEngine::with_wick_scratch(WICK_SCRATCH)`) unless `WICK_SCRATCH=0`.

use std::{
    fs::File,
    io::{BufReader, Write},
    sync::Arc,
    time::Instant,
};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
use liqscan::{
    config::{Config, Mode},
    engine::{At, Engine},
    fast::{FastEngine, WICK_SCRATCH},
    ingest::{Ingest, LineReader, Outcome},
    protocol::{Command, Event},
};

/// This thread's CPU time in ns.
fn cpu_ns() -> u64 {
    clock_ns(libc::CLOCK_THREAD_CPUTIME_ID)
}

/// The CPU time of every thread of the process in ns (rayon workers included).
fn process_cpu_ns() -> u64 {
    clock_ns(libc::CLOCK_PROCESS_CPUTIME_ID)
}

fn clock_ns(clock: libc::clockid_t) -> u64 {
    liqscan::latency::clock_ns(clock)
}

/// Applies `cmd` and prints what it cost.
fn timed(engine: &mut FastEngine, cmd: &Command, at: At, what: &str) -> u64 {
    let (evaluated, alone) = (engine.positions_evaluated(), engine.positions_retriggered());
    let (mut events, mut liquidations, mut isolated) = (0u64, 0u64, 0u64);
    // When each event was made, from the start of the message (room for a big wick's, so
    // that the timing holds no reallocation; one clock reading an event, ~25 ns).
    let mut made = Vec::with_capacity(1 << 16);
    let json = std::env::var("JSON").is_ok_and(|v| v == "1");
    // Touched before the timing: the pipeline's buffers are reused, their pages mapped.
    let mut buf = " ".repeat(if json { 4 << 20 } else { 0 });
    buf.clear();
    let (cpu, all) = (cpu_ns(), process_cpu_ns());
    let wall = Instant::now();
    let _ = engine.apply(cmd, at, &mut |e| {
        if json {
            e.write_json(&mut buf);
        }
        made.push(wall.elapsed());
        events += 1;
        liquidations += u64::from(matches!(e, Event::Liquidation(_)));
        isolated += u64::from(matches!(e, Event::Liquidation(l) if l.mode == Mode::Isolated));
    });
    let wall = wall.elapsed();
    let (cpu, all) = (cpu_ns() - cpu, process_cpu_ns() - all);
    // Made-time of the first event, and of the events at the median and the 90th percentile.
    let at_ms = |q: usize| match made.len() {
        0 => "-".to_string(),
        n => format!("{:.3}", made[(n - 1) * q / 100].as_secs_f64() * 1e3),
    };
    println!(
        "{what}: line {} cpu {:.3} ms (all threads {:.3} ms) wall {:.3} ms (events made at: first {} / p50 {} / p90 {} / last {} ms), {events} events ({liquidations} liquidations, {isolated} isolated), {} positions evaluated ({} fired positions re-triggered alone), {} CPU per event",
        at.line,
        cpu as f64 / 1e6,
        all as f64 / 1e6,
        wall.as_secs_f64() * 1e3,
        at_ms(0),
        at_ms(50),
        at_ms(90),
        at_ms(100),
        engine.positions_evaluated() - evaluated,
        engine.positions_retriggered() - alone,
        match events {
            0 => "-".to_string(),
            n => format!("{:.2} us", cpu as f64 / 1e3 / n as f64),
        },
    );
    cpu
}

fn main() -> anyhow::Result<()> {
    // As the `liqscan` binary runs: no purge of freed memory (`liqscan::heap`).
    liqscan::heap::keep_freed_memory();
    let args: Vec<String> = std::env::args().collect();
    anyhow::ensure!(args.len() >= 4, "usage: wick CONFIG STREAM LINE [REPEAT]");
    let cfg = Arc::new(Config::parse(&std::fs::read_to_string(&args[1])?)?);
    let target: u64 = args[3].parse()?;
    let repeat: usize = args.get(4).map_or(Ok(0), |s| s.parse())?;
    let mut reader = LineReader::new(BufReader::new(File::open(&args[2])?), 1 << 20);
    let mut ingest = Ingest::new(cfg.clone());
    let mut engine = FastEngine::new(cfg.clone());
    let scratch = std::env::var("WICK_SCRATCH").map_or(Ok(WICK_SCRATCH), |v| v.parse())?;
    if scratch > 0 {
        engine = engine.with_wick_scratch(scratch);
    }
    if let Ok(n) = std::env::var("PARALLEL_EVENTS") {
        engine = engine.with_parallel_events(n.parse()?);
    }
    if let Ok(n) = std::env::var("PARALLEL_REFRESH") {
        engine = engine.with_parallel_refresh(n.parse()?);
    }
    let mut last_mark: Vec<Option<Command>> = vec![None; cfg.symbols.len()];
    let started = Instant::now();
    let (mut wick, mut n, mut last_line) = (None, 0u64, 0u64);
    while let Some(line) = reader.next_line()? {
        let ingested = ingest.line(line, Instant::now());
        last_line = ingested.line;
        let Outcome::Command { seq, cmd } = ingested.outcome else { continue };
        let at = At { line: ingested.line, seq };
        if at.line == target {
            wick = Some((at, cmd));
            break;
        }
        if let Command::Mark { symbol, .. } = &cmd {
            last_mark[symbol.0 as usize] = Some(cmd.clone());
        }
        let _ = engine.apply(&cmd, at, &mut |_| {});
        n += 1;
    }
    let (at, cmd) = wick.ok_or_else(|| match target {
        t if t > last_line => {
            anyhow::anyhow!("line {t} is past the stream's end (line {last_line})")
        }
        t => anyhow::anyhow!("line {t} holds no command (a blank, rejected or duplicate line)"),
    })?;
    eprintln!("{n} messages applied in {:.1?}", started.elapsed());
    let mut ctl = match std::env::var("PERF_CTL") {
        Ok(path) => Some(std::fs::OpenOptions::new().write(true).open(path)?),
        Err(_) => None,
    };
    if let Some(f) = ctl.as_mut() {
        f.write_all(b"enable\n")?;
    }
    timed(&mut engine, &cmd, at, "wick");
    let back = match &cmd {
        Command::Mark { symbol, .. } => last_mark[symbol.0 as usize].clone(),
        _ => None,
    };
    if repeat > 0 && back.is_none() {
        eprintln!(
            "REPEAT {repeat} ignored: line {target} is not a `mark` of a symbol marked before it"
        );
    }
    let mut cpus = Vec::new();
    if let Some(back) = back.filter(|_| repeat > 0) {
        for r in 0..repeat {
            let back_at = At { line: at.line, seq: at.seq + 1 + 2 * r as u64 };
            timed(&mut engine, &back, back_at, "back (the mark before it)");
            let again = At { line: at.line, seq: back_at.seq + 1 };
            cpus.push(timed(&mut engine, &cmd, again, "again"));
        }
    }
    if let Some(f) = ctl.as_mut() {
        f.write_all(b"disable\n")?;
    }
    if !cpus.is_empty() {
        cpus.sort_unstable();
        println!(
            "again: median cpu {:.3} ms over {}",
            cpus[cpus.len() / 2] as f64 / 1e6,
            cpus.len()
        );
    }
    Ok(())
}
