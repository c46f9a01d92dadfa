//! The one pipeline every driver runs (`liqscan replay`, `liqscan run`):
//!
//! ```text
//! Source ──> reader thread ──[bounded batches]──> engine thread ──[chunks]──> Sink, Sink, ...
//!            lines, parse,                        apply + evaluate,          (blocking sinks
//!            seq, validate                        control requests           on writer threads)
//!                                   [bounded controls]──┘
//! ```
//!
//! The engine runs on the thread that calls [`Pipeline::run`] and never awaits anything:
//! between two batches it answers [`Control`] requests (account queries, the at-risk list,
//! metrics, later snapshots), so every answer is a consistent point of the stream. When the
//! stream is idle it waits on both queues at once, so a query on a quiet stream is answered
//! at once. See `src/pipeline/README.md` for why it is cut this way.

pub mod sink;
pub mod source;
mod summary;
pub mod wait;

use std::{
    io,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use crossbeam::{
    channel::{Receiver, Sender, bounded, never},
    select,
};
pub use sink::{Chunk, Delivery, EventsFile, Probe, Sink, WriterSink};
pub use source::{Connection, ConnectionEnd, ReadSource, Source};
pub use summary::{REJECT_CODES, Summary, mode_index, reject_index};

use crate::{
    config::Config,
    engine::{At, Engine},
    ingest::{Ingested, Outcome},
    protocol::Event,
};
use sink::{WriterMsg, writer_thread};

/// Queue sizes and pacing of the pipeline. Every queue is bounded: a full queue blocks its
/// producer (back-pressure), it never drops.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// Lines per batch handed from the reader to the engine.
    pub batch_lines: usize,
    /// Batches in flight between reader and engine, and chunks between the engine and each
    /// blocking sink's writer thread.
    pub queue_batches: usize,
    /// Offered load in lines per second: line n is let in at `n / rate` seconds, as a live
    /// sender would send it. `None` reads as fast as the pipeline takes lines; event latency
    /// then measures the queue a saturated pipeline builds, not the engine.
    pub rate: Option<f64>,
    /// How long the engine thread polls its queues after a batch before it parks. A live
    /// stream's next batch then finds the engine awake: no futex wake-up (tens of µs on a
    /// 2-core virtual machine) between a line's hand-off and its apply. Zero parks at once.
    /// The cost is CPU: up to this long of spinning after the last batch of a burst; a
    /// preempted spin backs off (see [`wait::Spinner`]). Zero also makes a paced reader
    /// (`rate`) only sleep.
    pub idle_spin: Duration,
}

impl Default for Options {
    /// Batches of 1,024 lines, 16 in flight, unpaced, and the spin of
    /// [`wait::spin_from_env`] (none unless `LIQSCAN_SPIN_US` says otherwise).
    fn default() -> Self {
        Options {
            batch_lines: 1024,
            queue_batches: 16,
            rate: None,
            idle_spin: wait::spin_from_env(),
        }
    }
}

/// What a control request sees besides the engine: the point of the stream it is answered at.
pub struct Point<'a> {
    /// Line and effective seq of the last message that consumed a seq (0, 0 before any).
    pub at: At,
    /// Counts and latencies so far.
    pub summary: &'a Summary,
    /// Asks every sink to confirm delivery of every event handed to it so far (all events of
    /// messages up to `at`): what a snapshot waits for before it counts as written, so that
    /// a crash after it loses no event the engine will not resend (SPEC 9.4).
    pub delivery: &'a dyn Fn() -> Delivery,
}

/// Where a pipeline resumes: a daemon restored from a snapshot (SPEC 9.4).
#[derive(Clone, Default)]
pub struct Resume {
    /// The last message the restored state holds; the sequencer resumes after its seq.
    pub at: At,
    /// The counts carried over (latencies start empty).
    pub summary: Summary,
    /// Events of the restore itself (the liquidatable items of a restore under a changed
    /// config), sent before the first message.
    pub events: Vec<Event>,
}

/// A request answered on the engine thread between two batches, with read access to the
/// engine. It replies through a channel it carries (a `oneshot`, a crossbeam channel); it
/// must do only its own work, since ingest waits while it runs.
pub type Control = Box<dyn FnOnce(&dyn Engine, &Point<'_>) + Send>;

/// Asks a running pipeline to stop: the reader stops before its next line, the engine
/// applies what was read, every sink gets every event and finishes (SPEC 9.5). A source that
/// may block in a read must also be woken by its owner (the daemon closes its sockets).
#[derive(Clone, Default)]
pub struct Stop(Arc<AtomicBool>);

impl Stop {
    pub fn stop(&self) {
        self.0.store(true, Ordering::Release);
    }

    pub fn is_stopped(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

/// Figures the engine thread publishes after every batch, for readers that must never wait
/// on the engine (`/health`).
#[derive(Debug, Default)]
pub struct Progress {
    /// The last effective seq applied (SPEC 9.3's `last_seq`).
    pub last_seq: AtomicU64,
    /// Messages handled.
    pub messages: AtomicU64,
    /// The line of the last effective seq applied.
    pub last_line: AtomicU64,
}

/// One run of the pipeline: where lines come from, where events go, who may ask questions.
pub struct Pipeline<'a> {
    pub cfg: Arc<Config>,
    pub source: Box<dyn Source<'a> + 'a>,
    pub sinks: Vec<Box<dyn Sink + 'a>>,
    /// Control requests; `None` when nobody asks.
    pub controls: Option<Receiver<Control>>,
    pub stop: Stop,
    pub progress: Arc<Progress>,
    pub opts: Options,
    /// Start from a restored state's seq and counts instead of from zero.
    pub resume: Option<Resume>,
}

impl<'a> Pipeline<'a> {
    /// A pipeline from `source` to `sinks` with default options, no controls.
    pub fn new(
        cfg: Arc<Config>,
        source: Box<dyn Source<'a> + 'a>,
        sinks: Vec<Box<dyn Sink + 'a>>,
    ) -> Self {
        Pipeline {
            cfg,
            source,
            sinks,
            controls: None,
            stop: Stop::default(),
            progress: Arc::default(),
            opts: Options::default(),
            resume: None,
        }
    }

    /// Runs until the source is done (or stopped) and every event reached every sink.
    /// Errors: the source's read error (a one-stream source), or the first sink that could
    /// not be written; the pipeline stops at it.
    pub fn run(self, engine: &mut dyn Engine) -> io::Result<Summary> {
        let Pipeline { cfg, source, sinks, controls, stop, progress, opts, resume } = self;
        let mut resume = resume.unwrap_or_default();
        let initial_events = std::mem::take(&mut resume.events);
        // A restored state's point and counts are the progress until the first batch.
        progress.last_seq.store(resume.at.seq, Ordering::Relaxed);
        progress.last_line.store(resume.at.line, Ordering::Relaxed);
        progress.messages.store(resume.summary.messages, Ordering::Relaxed);
        assert!(opts.batch_lines > 0, "a batch holds at least one line");
        assert!(opts.queue_batches > 0, "a queue holds at least one batch");
        let started = Instant::now();
        let (batch_tx, batch_rx) = bounded::<Vec<Ingested>>(opts.queue_batches);
        let (spare_tx, spare_rx) = bounded::<Vec<Ingested>>(opts.queue_batches + 2);

        std::thread::scope(|scope| {
            let stop_reader = stop.clone();
            let reader = scope.spawn(move || {
                let seq = resume.at.seq;
                source::reader_thread(cfg, source, opts, &stop_reader, batch_tx, spare_rx, seq)
            });
            let mut writers = Vec::new();
            let mut direct: Vec<Box<dyn Sink + 'a>> = Vec::new();
            for mut sink in sinks {
                if sink.blocking() {
                    let (tx, rx) = bounded::<WriterMsg>(opts.queue_batches);
                    let handle = scope.spawn(move || {
                        let name = sink.name();
                        writer_thread(sink.as_mut(), rx)
                            .map_err(|e| io::Error::new(e.kind(), format!("{name}: {e}")))
                    });
                    writers.push((tx, handle));
                } else {
                    direct.push(sink);
                }
            }
            let senders: Vec<&Sender<WriterMsg>> = writers.iter().map(|(tx, _)| tx).collect();
            let mut fanout = Fanout { writers: senders, direct: &mut direct, unflushed: false };
            let mut state = EngineLoop {
                engine,
                summary: resume.summary.clone(),
                at: resume.at,
                buf: String::with_capacity(1 << 16),
                progress: &progress,
                idle_spin: opts.idle_spin,
                spinner: wait::Spinner::default(),
            };
            let engine_result = state
                .send_initial(initial_events, &mut fanout)
                .and_then(|()| state.run(&batch_rx, &spare_tx, controls, &mut fanout));
            drop(fanout);
            drop(batch_rx); // unblocks the reader if the engine stopped early
            let finished: io::Result<()> =
                direct.iter_mut().try_for_each(|sink| sink.finish().map_err(|e| named(&**sink, e)));
            // A writer's own error says more than the engine's "a writer stopped".
            let mut writer_error = None;
            for (tx, handle) in writers {
                drop(tx);
                let written = handle.join().unwrap_or_else(|_| {
                    Err(io::Error::other("a writer thread panicked")) // invariant: none panics
                });
                writer_error = writer_error.or(written.err());
            }
            let read = reader.join().unwrap_or_else(|_| Err(io::Error::other("reader panicked")));
            let first_error =
                writer_error.or(engine_result.err()).or(finished.err()).or(read.err());
            if let Some(e) = first_error {
                return Err(e);
            }
            let mut summary = state.summary;
            summary.elapsed = started.elapsed();
            Ok(summary)
        })
    }
}

fn named(sink: &dyn Sink, e: io::Error) -> io::Error {
    io::Error::new(e.kind(), format!("{}: {e}", sink.name()))
}

/// Hands chunks to every sink.
struct Fanout<'s, 'a> {
    writers: Vec<&'s Sender<WriterMsg>>,
    direct: &'s mut Vec<Box<dyn Sink + 'a>>,
    /// Chunks went out without a flush since the engine was last idle.
    unflushed: bool,
}

impl Fanout<'_, '_> {
    /// Sends `chunk` to every sink; `idle`: nothing more is queued, so flush. An error means
    /// a sink failed: a writer thread that stopped (its own error is reported when it is
    /// joined) or a direct sink's write.
    fn send(&mut self, chunk: Chunk, idle: bool) -> io::Result<()> {
        for tx in &self.writers {
            tx.send(WriterMsg::Chunk { chunk: chunk.clone(), flush: idle })
                .map_err(|_| io::Error::other("a writer stopped"))?;
        }
        for sink in self.direct.iter_mut() {
            sink.write(&chunk).map_err(|e| named(&**sink, e))?;
            if idle {
                sink.flush().map_err(|e| named(&**sink, e))?;
            }
        }
        self.unflushed = !idle;
        Ok(())
    }

    /// What confirms delivery of what every sink was handed so far: a barrier through each
    /// writer thread's queue (sent by [`Delivery::wait`]; the writer flushes and makes its
    /// file durable, then answers), and each direct sink's probe.
    fn delivery(&self) -> Delivery {
        let mut d = Delivery::default();
        d.writers.extend(self.writers.iter().map(|&tx| tx.clone()));
        d.probes.extend(self.direct.iter().filter_map(|sink| sink.delivery_probe()));
        d
    }

    /// The engine went idle: flush what went out since it was last idle.
    fn idle(&mut self) -> io::Result<()> {
        if !std::mem::take(&mut self.unflushed) {
            return Ok(());
        }
        for tx in &self.writers {
            tx.send(WriterMsg::Flush).map_err(|_| io::Error::other("a writer stopped"))?;
        }
        for sink in self.direct.iter_mut() {
            sink.flush().map_err(|e| named(&**sink, e))?;
        }
        Ok(())
    }
}

/// The engine thread's state.
struct EngineLoop<'e, 'p> {
    engine: &'e mut dyn Engine,
    summary: Summary,
    at: At,
    /// Events of the current batch, serialized.
    buf: String,
    progress: &'p Progress,
    /// [`Options::idle_spin`].
    idle_spin: Duration,
    spinner: wait::Spinner,
}

impl EngineLoop<'_, '_> {
    /// Sends the events a restore made before any message (see [`Resume::events`]).
    fn send_initial(&mut self, events: Vec<Event>, fanout: &mut Fanout<'_, '_>) -> io::Result<()> {
        if events.is_empty() {
            return Ok(());
        }
        let now = Instant::now();
        for event in events {
            emit(&mut self.summary, &mut self.buf, event, now, None);
        }
        let chunk = std::mem::replace(&mut self.buf, String::with_capacity(1 << 12));
        fanout.send(Arc::new(chunk), true)
    }

    fn run(
        &mut self,
        batch_rx: &Receiver<Vec<Ingested>>,
        spare_tx: &Sender<Vec<Ingested>>,
        mut controls: Option<Receiver<Control>>,
        fanout: &mut Fanout<'_, '_>,
    ) -> io::Result<()> {
        let no_controls = never();
        loop {
            let control_rx = controls.as_ref().unwrap_or(&no_controls);
            // Poll before parking: a live stream's next batch then finds the engine awake.
            self.spinner
                .spin_until(self.idle_spin, || !batch_rx.is_empty() || !control_rx.is_empty());
            select! {
                recv(batch_rx) -> batch => {
                    let Ok(mut batch) = batch else { return Ok(()) };
                    self.apply_batch(&mut batch);
                    let _ = spare_tx.try_send(batch);
                    let idle = batch_rx.is_empty();
                    if !self.buf.is_empty() {
                        let chunk = std::mem::replace(&mut self.buf, String::with_capacity(1 << 12));
                        fanout.send(Arc::new(chunk), idle)?;
                    } else if idle {
                        fanout.idle()?;
                    }
                }
                recv(control_rx) -> control => match control {
                    Ok(control) => {
                        let fan = &*fanout;
                        let delivery = || fan.delivery();
                        let point = Point { at: self.at, summary: &self.summary, delivery: &delivery };
                        let engine = &*self.engine;
                        let start = Instant::now();
                        // A request only reads the engine, so a panic in one (a bug) leaves
                        // the state whole: its asker gets no answer, ingest goes on.
                        let answered = std::panic::catch_unwind(std::panic::AssertUnwindSafe(
                            || control(engine, &point),
                        ));
                        if answered.is_err() {
                            self.summary.control_panics += 1;
                        }
                        // How long ingest waited for it.
                        self.summary.control_latency.record(start.elapsed().as_nanos() as u64);
                    }
                    Err(_) => controls = None,
                },
            }
        }
    }

    fn apply_batch(&mut self, batch: &mut Vec<Ingested>) {
        for ingested in batch.drain(..) {
            let counts = &mut self.summary;
            counts.lines += 1;
            match &ingested.outcome {
                Outcome::Blank => {}
                Outcome::Duplicate => {
                    counts.messages += 1;
                    counts.duplicates += 1;
                }
                Outcome::Rejected { seq, .. } => {
                    counts.messages += 1;
                    if let Some(seq) = *seq {
                        self.at = At { line: ingested.line, seq };
                    }
                }
                Outcome::Command { seq, .. } => {
                    counts.messages += 1;
                    self.at = At { line: ingested.line, seq: *seq };
                }
            }
            let (read_at, ts) = (ingested.read_at, ingested.ts);
            let (summary, buf) = (&mut self.summary, &mut self.buf);
            let applied =
                dispatch(ingested, self.engine, &mut |e| emit(summary, buf, e, read_at, ts));
            if let Some(applied) = applied {
                let queued = applied.started.saturating_duration_since(read_at);
                self.summary.queue_latency.record(queued.as_nanos() as u64);
                self.summary.apply_latency.record(applied.apply_ns);
            }
        }
        self.progress.last_seq.store(self.at.seq, Ordering::Relaxed);
        self.progress.last_line.store(self.at.line, Ordering::Relaxed);
        self.progress.messages.store(self.summary.messages, Ordering::Relaxed);
    }
}

fn now_epoch_ns() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0)
}

/// The engine side's event hand-off: stamps latency, counts, and serializes into `buf`.
fn emit(
    summary: &mut Summary,
    buf: &mut String,
    mut event: Event,
    read_at: Instant,
    ts: Option<u64>,
) {
    let latency = read_at.elapsed().as_nanos() as u64;
    event.set_latency_ns(latency);
    match &event {
        Event::Liquidation(l) => {
            summary.liquidations += 1;
            summary.liquidations_by_mode[mode_index(l.mode)] += 1;
        }
        Event::Reject { reject, .. } => {
            summary.rejects += 1;
            summary.rejects_by_code[reject_index(reject.code)] += 1;
        }
        Event::Gap { .. } => summary.gaps += 1,
        Event::Account(_) => summary.accounts += 1,
    }
    summary.event_latency.record(latency);
    if let Some(ts) = ts {
        summary.ts_latency.record(now_epoch_ns().saturating_sub(ts));
    }
    event.write_json(buf);
}

/// When and for how long the engine applied a command: what [`dispatch`] measured.
#[derive(Debug, Clone, Copy)]
pub struct Applied {
    /// When the engine started on it (the end of its wait in the pipeline's queues).
    pub started: Instant,
    /// Apply + evaluate, in ns.
    pub apply_ns: u64,
}

/// Feeds one ingested line to the engine, events to `emit`. Shared by every driver. Returns
/// the timing of the apply for a command, `None` for a line the engine never saw.
pub fn dispatch(
    ingested: Ingested,
    engine: &mut dyn Engine,
    emit: &mut dyn FnMut(Event),
) -> Option<Applied> {
    let line = ingested.line;
    if let Some((expected, got)) = ingested.gap {
        emit(Event::Gap { line, expected, got });
    }
    match ingested.outcome {
        Outcome::Blank | Outcome::Duplicate => None,
        Outcome::Rejected { seq, reject } => {
            emit(Event::Reject { line, seq, reject });
            None
        }
        Outcome::Command { seq, cmd } => {
            let started = Instant::now();
            if let Err(reject) = engine.apply(&cmd, At { line, seq }, emit) {
                emit(Event::Reject { line, seq: Some(seq), reject });
            }
            Some(Applied { started, apply_ns: started.elapsed().as_nanos() as u64 })
        }
    }
}

#[cfg(test)]
mod tests {
    use std::{io::Write as _, time::Duration};

    use super::*;

    /// The engine waits on both queues: a control request is answered while the stream is
    /// open and idle, at the point of the last message applied.
    #[test]
    fn a_control_is_answered_on_an_idle_open_stream() {
        let cfg = Arc::new(crate::synth::config(2));
        let (pipe_rx, mut pipe_tx) = std::io::pipe().unwrap();
        let (control_tx, control_rx) = bounded::<Control>(1);
        let run = std::thread::spawn(move || {
            let mut engine = crate::fast::FastEngine::new(cfg.clone());
            let source = ReadSource::new(io::BufReader::new(pipe_rx));
            let sink = WriterSink::new("sink", io::sink());
            let mut pipeline = Pipeline::new(cfg, Box::new(source), vec![Box::new(sink)]);
            pipeline.controls = Some(control_rx);
            pipeline.run(&mut engine).unwrap()
        });
        writeln!(pipe_tx, r#"{{"type":"balance","account":7,"wallet":"5","seq":3}}"#).unwrap();
        pipe_tx.flush().unwrap();
        let mut seen = None;
        for _ in 0..500 {
            let (answer_tx, answer_rx) = bounded(1);
            let ask: Control = Box::new(move |engine, point| {
                let _ = answer_tx.send((point.at, engine.n_accounts(), point.summary.messages));
            });
            control_tx.send(ask).unwrap();
            let answer = answer_rx
                .recv_timeout(Duration::from_secs(5))
                .expect("answered while the stream is open and idle");
            if answer.0.seq == 3 {
                seen = Some(answer);
                break;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        assert_eq!(seen, Some((At { line: 1, seq: 3 }, 1, 1)));
        drop(pipe_tx);
        let summary = run.join().unwrap();
        assert_eq!(summary.messages, 1);
        assert!(summary.control_latency.summary().count >= 1);
    }
}
