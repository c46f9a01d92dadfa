//! `liqscan replay`: a stream through ingest and an engine, events to a writer, and the
//! summary (counts, throughput, latency percentiles) for stderr and `--report`.

use std::{
    io::{self, BufRead, Write},
    sync::Arc,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use crate::{
    config::Config,
    engine::{At, Engine},
    ingest::{Ingest, Ingested, LineReader, Outcome},
    latency::Latency,
    protocol::{Event, MAX_LINE_BYTES},
};

/// Counts and latencies of one replay.
#[derive(Clone, Default)]
pub struct Summary {
    /// Lines read, blank ones included.
    pub lines: u64,
    /// Non-blank lines: every message, whatever became of it.
    pub messages: u64,
    pub liquidations: u64,
    pub rejects: u64,
    pub gaps: u64,
    pub duplicates: u64,
    pub accounts: u64,
    pub elapsed: Duration,
    /// Line read to event handed to the sink, per event.
    pub event_latency: Latency,
    /// Sender `ts` to event hand-off, per event of a message that carried `ts`.
    pub ts_latency: Latency,
    /// Apply + evaluate time per command.
    pub apply_latency: Latency,
}

impl Summary {
    pub fn messages_per_s(&self) -> f64 {
        let s = self.elapsed.as_secs_f64();
        if s > 0.0 { self.messages as f64 / s } else { 0.0 }
    }

    /// The `--report` JSON.
    pub fn to_json(&self, engine: &str) -> serde_json::Value {
        serde_json::json!({
            "engine": engine,
            "lines": self.lines,
            "messages": self.messages,
            "elapsed_s": self.elapsed.as_secs_f64(),
            "messages_per_s": self.messages_per_s(),
            "liquidations": self.liquidations,
            "rejects": self.rejects,
            "gaps": self.gaps,
            "duplicates": self.duplicates,
            "account_events": self.accounts,
            "latency_ns": {
                "event": self.event_latency.summary().to_json(),
                "ts_to_event": self.ts_latency.summary().to_json(),
                "apply": self.apply_latency.summary().to_json(),
            },
        })
    }

    /// The human summary for stderr.
    pub fn human(&self, engine: &str) -> String {
        let e = self.event_latency.summary();
        let a = self.apply_latency.summary();
        format!(
            "liqscan replay ({engine} engine)\n\
             messages      {} in {:.3} s ({:.0} msg/s), {} lines\n\
             liquidations  {}\n\
             rejects       {}\n\
             gaps          {}\n\
             duplicates    {}\n\
             account       {}\n\
             event latency ns  p50 {} p90 {} p99 {} p99.9 {} max {} (n={})\n\
             apply latency ns  p50 {} p90 {} p99 {} p99.9 {} max {} (n={})\n",
            self.messages,
            self.elapsed.as_secs_f64(),
            self.messages_per_s(),
            self.lines,
            self.liquidations,
            self.rejects,
            self.gaps,
            self.duplicates,
            self.accounts,
            e.p50,
            e.p90,
            e.p99,
            e.p999,
            e.max,
            e.count,
            a.p50,
            a.p90,
            a.p99,
            a.p999,
            a.max,
            a.count,
        )
    }
}

fn now_epoch_ns() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0)
}

/// Hands events to the writer, stamping latency and counting. The one place events leave.
struct Sink<W: Write> {
    out: W,
    buf: String,
    summary: Summary,
}

impl<W: Write> Sink<W> {
    fn emit(&mut self, mut event: Event, read_at: Instant, ts: Option<u64>) {
        let latency = read_at.elapsed().as_nanos() as u64;
        event.set_latency_ns(latency);
        match &event {
            Event::Liquidation(_) => self.summary.liquidations += 1,
            Event::Reject { .. } => self.summary.rejects += 1,
            Event::Gap { .. } => self.summary.gaps += 1,
            Event::Account(_) => self.summary.accounts += 1,
        }
        self.summary.event_latency.record(latency);
        if let Some(ts) = ts {
            self.summary.ts_latency.record(now_epoch_ns().saturating_sub(ts));
        }
        event.write_json(&mut self.buf);
    }

    /// Writes what is buffered once it is large enough (or when `force`).
    fn flush(&mut self, force: bool) -> io::Result<()> {
        if force || self.buf.len() >= 1 << 16 {
            self.out.write_all(self.buf.as_bytes())?;
            self.buf.clear();
        }
        if force {
            self.out.flush()?;
        }
        Ok(())
    }
}

/// Feeds one ingested line to the engine, events to `emit`. Shared by every driver.
pub fn dispatch(
    ingested: Ingested,
    engine: &mut dyn Engine,
    apply_latency: &mut Latency,
    emit: &mut dyn FnMut(Event),
) {
    let line = ingested.line;
    if let Some((expected, got)) = ingested.gap {
        emit(Event::Gap { line, expected, got });
    }
    match ingested.outcome {
        Outcome::Blank | Outcome::Duplicate => {}
        Outcome::Rejected { seq, reject } => emit(Event::Reject { line, seq, reject }),
        Outcome::Command { seq, cmd } => {
            let start = Instant::now();
            if let Err(reject) = engine.apply(&cmd, At { line, seq }, emit) {
                emit(Event::Reject { line, seq: Some(seq), reject });
            }
            apply_latency.record(start.elapsed().as_nanos() as u64);
        }
    }
}

/// Replays `input` through `engine`, writing events to `out`.
pub fn replay<R: BufRead, W: Write>(
    cfg: Arc<Config>,
    engine: &mut dyn Engine,
    input: R,
    out: W,
) -> io::Result<Summary> {
    let started = Instant::now();
    let mut reader = LineReader::new(input, MAX_LINE_BYTES);
    let mut ingest = Ingest::new(cfg);
    let mut sink = Sink { out, buf: String::with_capacity(1 << 17), summary: Summary::default() };
    let mut apply_latency = Latency::default();
    while let Some(line) = reader.next_line()? {
        let read_at = Instant::now();
        let ingested = ingest.line(line, read_at);
        let counts = &mut sink.summary;
        counts.lines += 1;
        match ingested.outcome {
            Outcome::Blank => {}
            Outcome::Duplicate => {
                counts.messages += 1;
                counts.duplicates += 1;
            }
            _ => counts.messages += 1,
        }
        let ts = ingested.ts;
        dispatch(ingested, engine, &mut apply_latency, &mut |e| sink.emit(e, read_at, ts));
        sink.flush(false)?;
    }
    sink.flush(true)?;
    let mut summary = sink.summary;
    summary.apply_latency = apply_latency;
    summary.elapsed = started.elapsed();
    Ok(summary)
}
