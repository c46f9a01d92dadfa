//! `liqscan replay`: the ingest → engine → writer pipeline, and the summary (counts,
//! throughput, latency percentiles) for stderr and `--report`.

use std::{
    io::{self, BufRead, Write},
    sync::Arc,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use crossbeam::channel::bounded;

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
             account events {}\n\
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

/// Queue sizes of the pipeline. Every queue is bounded: a full queue blocks its producer
/// (back-pressure), it never drops.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// Lines per batch handed from the reader to the engine.
    pub batch_lines: usize,
    /// Batches in flight between reader and engine, and text chunks between engine and writer.
    pub queue_batches: usize,
    /// Offered load in lines per second: line n is let in at `n / rate` seconds, as a live
    /// sender would send it. `None` reads as fast as the pipeline takes lines; event latency
    /// then measures the queue a saturated pipeline builds, not the engine.
    pub rate: Option<f64>,
}

impl Default for Options {
    fn default() -> Self {
        Options { batch_lines: 1024, queue_batches: 16, rate: None }
    }
}

/// The engine side's event hand-off: stamps latency, counts, and serializes into a chunk.
struct Sink {
    buf: String,
    summary: Summary,
}

impl Sink {
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

/// Replays `input` through `engine`, writing events to `out`, with default queue sizes.
pub fn replay<R: BufRead + Send, W: Write + Send>(
    cfg: Arc<Config>,
    engine: &mut dyn Engine,
    input: R,
    out: W,
) -> io::Result<Summary> {
    replay_with(cfg, engine, input, out, Options::default())
}

/// The pipeline: a reader thread (lines, parse, sequencing, validation) → bounded queue →
/// the engine on this thread (apply + evaluate, in input order) → bounded queue → a writer
/// thread. Batches and text chunks are recycled through return queues, so the steady state
/// allocates nothing per batch. See `src/fast/README.md` for why it is cut this way.
pub fn replay_with<R: BufRead + Send, W: Write + Send>(
    cfg: Arc<Config>,
    engine: &mut dyn Engine,
    input: R,
    mut out: W,
    opts: Options,
) -> io::Result<Summary> {
    assert!(opts.batch_lines > 0 && opts.queue_batches > 0, "queues need room");
    let started = Instant::now();
    let (batch_tx, batch_rx) = bounded::<Vec<Ingested>>(opts.queue_batches);
    let (spare_batch_tx, spare_batch_rx) = bounded::<Vec<Ingested>>(opts.queue_batches + 2);
    let (text_tx, text_rx) = bounded::<String>(opts.queue_batches);
    let (spare_text_tx, spare_text_rx) = bounded::<String>(opts.queue_batches + 2);

    std::thread::scope(|scope| {
        let reader = scope.spawn(move || -> io::Result<()> {
            let mut lines = LineReader::new(input, MAX_LINE_BYTES);
            let mut ingest = Ingest::new(cfg);
            let mut batch = Vec::with_capacity(opts.batch_lines);
            // Hands the batch to the engine; false when the engine side stopped (its error
            // is reported there).
            let hand_on = |batch: &mut Vec<Ingested>| {
                let next = spare_batch_rx
                    .try_recv()
                    .unwrap_or_else(|_| Vec::with_capacity(opts.batch_lines));
                batch_tx.send(std::mem::replace(batch, next)).is_ok()
            };
            let (paced_from, mut n) = (Instant::now(), 0u64);
            while let Some(line) = lines.next_line()? {
                if let Some(rate) = opts.rate {
                    let due = paced_from + Duration::from_secs_f64(n as f64 / rate);
                    n += 1;
                    let wait = due.saturating_duration_since(Instant::now());
                    if !wait.is_zero() {
                        // What is ready goes on before the wait, as on a live stream.
                        if !batch.is_empty() && !hand_on(&mut batch) {
                            return Ok(());
                        }
                        std::thread::sleep(wait);
                    }
                }
                batch.push(ingest.line(line, Instant::now()));
                // Hand the batch on when it is full, or when the next read may block: a live
                // stream's lines must not wait for later ones.
                if (batch.len() == opts.batch_lines || lines.input_drained())
                    && !hand_on(&mut batch)
                {
                    return Ok(());
                }
            }
            if !batch.is_empty() {
                let _ = batch_tx.send(batch);
            }
            Ok(())
        });
        let writer = scope.spawn(move || -> io::Result<()> {
            for mut chunk in text_rx {
                out.write_all(chunk.as_bytes())?;
                chunk.clear();
                let _ = spare_text_tx.try_send(chunk);
            }
            out.flush()
        });

        let mut sink = Sink { buf: String::with_capacity(1 << 16), summary: Summary::default() };
        let mut apply_latency = Latency::default();
        for mut batch in batch_rx.iter() {
            for ingested in batch.drain(..) {
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
                let (read_at, ts) = (ingested.read_at, ingested.ts);
                dispatch(ingested, engine, &mut apply_latency, &mut |e| sink.emit(e, read_at, ts));
            }
            let _ = spare_batch_tx.try_send(batch);
            if !sink.buf.is_empty() {
                let fresh =
                    spare_text_rx.try_recv().unwrap_or_else(|_| String::with_capacity(1 << 16));
                if text_tx.send(std::mem::replace(&mut sink.buf, fresh)).is_err() {
                    break; // the writer failed; its error is returned below
                }
            }
        }
        drop(batch_rx); // unblocks the reader if we stopped early
        drop(text_tx);
        let written = writer.join().expect("writer thread panicked");
        let read = reader.join().expect("reader thread panicked");
        written?;
        read?;
        let mut summary = sink.summary;
        summary.apply_latency = apply_latency;
        summary.elapsed = started.elapsed();
        Ok(summary)
    })
}
