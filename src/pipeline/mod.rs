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
//! metrics, snapshots), so every answer is a consistent point of the stream. When both
//! queues are empty it parks, and whoever queues something rings it awake
//! ([`wait::Doorbell`]), so a query on a quiet stream is answered at once. See
//! `src/pipeline/README.md` for why it is cut this way.

pub mod sink;
pub mod source;
pub mod stalls;
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

use crossbeam::channel::{Receiver, Sender, TryRecvError, TrySendError, bounded};
pub use sink::{Chunk, Delivery, EventsFile, Probe, Sink, WriterSink};
pub use source::{Connection, ConnectionEnd, Input, LogMessage, LogReader, ReadSource, Source};
pub use summary::{REJECT_CODES, Summary, mode_index, reject_index};
use wait::Doorbell;

use crate::{
    config::Config,
    engine::{At, Engine, prefetch_ahead, prefetch_steps},
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
    /// How long a batch's first line may have waited for the engine before the engine counts
    /// as behind its reader and hands a batch's events on at its end only (see
    /// [`HAND_ON_AFTER`]; default [`BEHIND_AFTER`]).
    pub behind_after: Duration,
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
            behind_after: BEHIND_AFTER,
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

/// A bounded control queue: [`Controls`] for the askers, [`ControlQueue`] for
/// [`Pipeline::controls`]. `capacity`: the requests that may wait at once (more are refused
/// with [`TrySendError::Full`]).
pub fn control_queue(capacity: usize) -> (Controls, ControlQueue) {
    let (tx, rx) = bounded(capacity);
    let bell = Arc::new(Doorbell::default());
    (Controls { tx, bell: bell.clone() }, ControlQueue { rx, bell })
}

/// The askers' side of a pipeline's control queue (SPEC 9.3's queries and metrics, 9.4's
/// snapshots); cloned by each.
#[derive(Clone)]
pub struct Controls {
    tx: Sender<Control>,
    bell: Arc<Doorbell>,
}

impl Controls {
    /// Queues `control` and wakes an idle engine; it is answered between two batches.
    /// Errors: the queue is full, or the pipeline has stopped taking requests.
    pub fn try_send(&self, control: Control) -> Result<(), TrySendError<Control>> {
        self.tx.try_send(control)?;
        self.bell.ring();
        Ok(())
    }
}

/// The engine's side of a control queue: given to [`Pipeline::controls`].
pub struct ControlQueue {
    rx: Receiver<Control>,
    bell: Arc<Doorbell>,
}

/// Rings the doorbell when the reader thread ends, however it ends (a panic included), after
/// its sender of the batch queue is gone: a parked engine wakes to find the queue closed.
struct ReaderEnd(Arc<Doorbell>);

impl Drop for ReaderEnd {
    fn drop(&mut self) {
        self.0.close();
    }
}

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
    /// Control requests ([`control_queue`]); `None` when nobody asks.
    pub controls: Option<ControlQueue>,
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
        // The engine parks on this thread; the reader and the askers ring it awake.
        let bell = controls.as_ref().map_or_else(Arc::default, |q| q.bell.clone());
        bell.answer_here();
        let controls = controls.map(|q| q.rx);

        std::thread::scope(|scope| {
            let stop_reader = stop.clone();
            let reader_bell = bell.clone();
            // Named threads (`top -H`, `perf sched`): unnamed ones would take the name of the
            // thread that started them, the daemon's `engine`.
            let reader = std::thread::Builder::new()
                .name("liqscan-reader".into())
                .spawn_scoped(scope, move || {
                    let _end = ReaderEnd(reader_bell.clone());
                    let seq = resume.at.seq;
                    let queue = source::Queue { batch_tx, spare_rx, bell: reader_bell };
                    source::reader_thread(cfg, source, opts, &stop_reader, queue, seq)
                })
                .expect("the reader thread starts");
            let mut writers = Vec::new();
            let mut direct: Vec<Box<dyn Sink + 'a>> = Vec::new();
            for mut sink in sinks {
                if sink.blocking() {
                    let (tx, rx) = bounded::<WriterMsg>(opts.queue_batches);
                    let handle = std::thread::Builder::new()
                        .name("liqscan-writer".into())
                        .spawn_scoped(scope, move || {
                            let name = sink.name();
                            writer_thread(sink.as_mut(), rx)
                                .map_err(|e| io::Error::new(e.kind(), format!("{name}: {e}")))
                        })
                        .expect("a writer thread starts");
                    writers.push((tx, handle));
                } else {
                    direct.push(sink);
                }
            }
            let senders: Vec<&Sender<WriterMsg>> = writers.iter().map(|(tx, _)| tx).collect();
            let mut fanout = Fanout {
                writers: senders,
                direct: &mut direct,
                unflushed: false,
                lists: ChunkLists::faulted(),
            };
            let mut state = EngineLoop {
                engine,
                summary: resume.summary.clone(),
                at: resume.at,
                events: fanout.lists.next(CHUNK_EVENTS),
                pending: Pending::default(),
                progress: &progress,
                idle_spin: opts.idle_spin,
                behind_after: opts.behind_after,
                spinner: wait::Spinner::default(),
                stalls: stalls::threshold_from_env().map(stalls::StallLog::new),
            };
            let engine_result = state
                .send_initial(initial_events, &mut fanout)
                .and_then(|()| state.run(&batch_rx, &spare_tx, controls, &bell, &mut fanout));
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
    /// Event lists for the next chunks.
    lists: ChunkLists,
}

/// How many emptied event lists wait for the engine thread's next chunks: enough for a wick
/// of [`CHUNK_EVENTS`] × 8 events to be handed on in lists that were written before.
pub const CHUNK_LISTS: usize = 8;

/// The event lists chunks are made of, handed back by the last sink to drop a chunk
/// ([`Chunk::returning`]) and taken again by the engine thread: a list of [`CHUNK_EVENTS`]
/// is 128 KB, and a fresh one on the engine thread is 32 page faults (~2 µs each on the VMs
/// here). The pool starts with [`CHUNK_LISTS`] full-size lists written once, so that the
/// first big wick of a run does not fault them in (src/fast/README.md, "Session 22").
struct ChunkLists {
    back: Sender<Vec<Event>>,
    spare: Receiver<Vec<Event>>,
}

impl ChunkLists {
    fn faulted() -> ChunkLists {
        let (back, spare) = bounded::<Vec<Event>>(CHUNK_LISTS);
        for _ in 0..CHUNK_LISTS {
            let mut list = Vec::with_capacity(CHUNK_EVENTS);
            // Any event writes each 4 KiB page of the list at least once.
            list.resize(CHUNK_EVENTS, Event::Gap { line: 0, expected: 0, got: 0 });
            list.clear();
            let _ = back.try_send(list);
        }
        ChunkLists { back, spare }
    }

    /// An empty list for the next events: a handed-back one (full-size), or, while every
    /// list is out (sinks holding chunks: a slow subscriber's buffer), a new one of
    /// `capacity`, sized for what the last chunk held so that chunks held in numbers stay
    /// small.
    fn next(&self, capacity: usize) -> Vec<Event> {
        self.spare.try_recv().unwrap_or_else(|_| Vec::with_capacity(capacity))
    }

    /// `events` as a chunk whose list comes back here.
    fn chunk(&self, events: Vec<Event>) -> Chunk {
        Chunk::returning(events, self.back.clone())
    }
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
    /// Events not yet handed to the sinks (printed by the first sink that needs their text:
    /// see [`Chunk`]).
    events: Vec<Event>,
    /// When the events in `events` were made, whose latencies are recorded when they are
    /// handed on.
    pending: Pending,
    progress: &'p Progress,
    /// [`Options::idle_spin`].
    idle_spin: Duration,
    /// [`Options::behind_after`].
    behind_after: Duration,
    spinner: wait::Spinner,
    /// `LIQSCAN_STALL_US`: slow batches logged with the thread's own accounting.
    stalls: Option<stalls::StallLog>,
}

impl EngineLoop<'_, '_> {
    /// Sends the events a restore made before any message (see [`Resume::events`]).
    fn send_initial(&mut self, events: Vec<Event>, fanout: &mut Fanout<'_, '_>) -> io::Result<()> {
        if events.is_empty() {
            return Ok(());
        }
        let now = Instant::now();
        for event in events {
            emit(&mut self.summary, &mut self.events, &mut self.pending, event, now, None);
        }
        self.hand_on(fanout, true)
    }

    /// Hands the events made so far to every sink (`flush`: put them on the wire now) and
    /// records their latencies: line read to hand-off, `ts` to hand-off.
    fn hand_on(&mut self, fanout: &mut Fanout<'_, '_>, flush: bool) -> io::Result<()> {
        hand_on(&mut self.summary, &mut self.events, &mut self.pending, fanout, flush)
    }

    fn run(
        &mut self,
        batch_rx: &Receiver<Vec<Ingested>>,
        spare_tx: &Sender<Vec<Ingested>>,
        mut controls: Option<Receiver<Control>>,
        bell: &Doorbell,
        fanout: &mut Fanout<'_, '_>,
    ) -> io::Result<()> {
        loop {
            // Poll before parking: a live stream's next batch then finds the engine awake.
            self.spinner.spin_until(self.idle_spin, || {
                !batch_rx.is_empty() || controls.as_ref().is_some_and(|c| !c.is_empty())
            });
            // One control, then one batch: a control waits for at most one batch and the
            // controls ahead of it, and a stream of controls never holds ingest back for
            // more than one answer a batch.
            let mut answered = false;
            if let Some(control_rx) = &controls {
                match control_rx.try_recv() {
                    Ok(control) => {
                        self.answer(control, fanout);
                        answered = true;
                    }
                    Err(TryRecvError::Disconnected) => controls = None,
                    Err(TryRecvError::Empty) => {}
                }
            }
            let mut batch = match batch_rx.try_recv() {
                Ok(batch) => batch,
                Err(TryRecvError::Disconnected) => return Ok(()),
                Err(TryRecvError::Empty) => {
                    // Nothing was queued: parks until a batch or a control is, or the reader
                    // ends (see `Doorbell`), then goes round again.
                    if !answered {
                        bell.park_unless(|| {
                            !batch_rx.is_empty() || controls.as_ref().is_some_and(|c| !c.is_empty())
                        });
                    }
                    continue;
                }
            };
            self.apply_batch(&mut batch, fanout)?;
            let _ = spare_tx.try_send(batch);
            let idle = batch_rx.is_empty();
            if !self.events.is_empty() {
                self.hand_on(fanout, idle)?;
            } else if idle {
                fanout.idle()?;
            }
        }
    }

    /// Answers a control request at the point of the last message applied.
    fn answer(&mut self, control: Control, fanout: &Fanout<'_, '_>) {
        let delivery = || fanout.delivery();
        let point = Point { at: self.at, summary: &self.summary, delivery: &delivery };
        let engine = &*self.engine;
        let start = Instant::now();
        // A request only reads the engine, so a panic in one (a bug) leaves the state whole:
        // its asker gets no answer, ingest goes on.
        let answered =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| control(engine, &point)));
        if answered.is_err() {
            self.summary.control_panics += 1;
        }
        // How long ingest waited for it.
        self.summary.control_latency.record(start.elapsed().as_nanos() as u64);
    }

    /// Applies a batch. Events go to the sinks at the end of the batch, or earlier once the
    /// oldest of them has waited [`HAND_ON_AFTER`], unless the engine is behind (checked at
    /// each event and after each message): a message that fires thousands of items, or a long
    /// batch, does not hold its first events back until its last is made. Errors: a sink that
    /// failed.
    fn apply_batch(
        &mut self,
        batch: &mut Vec<Ingested>,
        fanout: &mut Fanout<'_, '_>,
    ) -> io::Result<()> {
        // One look at the clock a batch (see `HAND_ON_AFTER`).
        let behind = batch.first().is_some_and(|l| l.read_at.elapsed() >= self.behind_after);
        let mut failed: Option<io::Error> = None;
        if let Some(s) = self.stalls.as_mut() {
            s.start();
        }
        let ahead = prefetch_ahead();
        let mut lines = batch.drain(..);
        while let Some(ingested) = lines.next() {
            // The commands ahead in the batch, named to the engine (a hint; see
            // `Engine::prefetch`). A batch of one line (a paced stream) has none.
            for (k, step) in prefetch_steps(ahead) {
                if let Some(Ingested { outcome: Outcome::Command { cmd, .. }, .. }) =
                    lines.as_slice().get(k - 1)
                {
                    self.engine.prefetch(cmd, step);
                }
            }
            let line = ingested.line;
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
            let (read_at, ts, origin) = (ingested.read_at, ingested.ts, ingested.origin_seq);
            let (summary, events, pending) =
                (&mut self.summary, &mut self.events, &mut self.pending);
            let applied = dispatch(ingested, self.engine, &mut |mut e| {
                if origin.is_some() {
                    e.set_origin_seq(origin);
                }
                emit(summary, events, pending, e, read_at, ts);
                if failed.is_none()
                    && let Err(e) = hand_on_if_due(summary, events, pending, behind, fanout)
                {
                    failed = Some(e);
                }
            });
            if let Some(applied) = applied {
                let waited = applied.started.saturating_duration_since(read_at);
                self.summary.queue_latency.record(waited.as_nanos() as u64);
                self.summary.apply_latency.record(applied.apply_ns);
            }
            if let Some(s) = self.stalls.as_mut() {
                s.line(line, applied.map(|a| a.apply_ns));
            }
            if let Some(e) = failed.take() {
                return Err(e);
            }
            hand_on_if_due(&mut self.summary, &mut self.events, &mut self.pending, behind, fanout)?;
        }
        if let Some(s) = self.stalls.as_mut() {
            s.end();
        }
        self.progress.last_seq.store(self.at.seq, Ordering::Relaxed);
        self.progress.last_line.store(self.at.line, Ordering::Relaxed);
        self.progress.messages.store(self.summary.messages, Ordering::Relaxed);
        Ok(())
    }
}

/// The longest an event made waits for the end of its batch before the events made so far
/// are handed to the sinks (and flushed), and the shortest time between two such flushes. A
/// wick that fires 3,600 items takes milliseconds to build them; without this its first
/// event waited all of that. Checked when an event is made and after each message: an event
/// made when the sinks were last flushed this long ago or more (or never) goes on at once
/// (since session 17: it used to wait this long itself, so a wick's first liquidation, made
/// within 20 µs of its line, reached the sinks after 100), the ones made after it go on
/// with the next flush, this long after. At most one timed hand-off (a write per sink) per
/// this long.
///
/// Only while the engine is not behind: while the batch being applied was taken less than
/// [`BEHIND_AFTER`] after its first line was read. A saturated pipeline (the reader ahead,
/// the queue full) hands its events on once per batch instead: there an event has already
/// waited for the batches queued before it, the hand-off would buy it at most the rest of one
/// batch, and each one costs the engine thread a futex wake of a parked writer (a few µs on
/// this VM: 5.4 % of the engine thread's samples in an unpaced replay of the trade-heavy
/// stream, about one every 100 µs). A long message on a live or paced stream was taken as
/// soon as it was read, and keeps handing its events on while the lines that arrive meanwhile
/// queue up behind it (a paced reader hands them on a line or a few at a time: a count of
/// queued batches would not tell the two apart).
pub const HAND_ON_AFTER: Duration = Duration::from_micros(100);

/// The events made but not yet handed to the sinks.
#[derive(Default)]
struct Pending {
    /// Per event: when its line was read, and its message's `ts`.
    events: Vec<(Instant, Option<u64>)>,
    /// When the sinks were last flushed with events (`None`: never).
    last_flush: Option<Instant>,
}

impl Pending {
    fn push(&mut self, read_at: Instant, ts: Option<u64>) {
        self.events.push((read_at, ts));
    }

    /// Events wait, and the sinks were last flushed [`HAND_ON_AFTER`] or more before `now()`
    /// (or never): the first event after a quiet spell goes on at once, the ones made after
    /// it wait for the next step of [`HAND_ON_AFTER`]. So no event waits longer than that,
    /// and there is at most one timed flush per [`HAND_ON_AFTER`]. The clock is read only
    /// while events wait.
    fn due(&self, now: impl FnOnce() -> Instant) -> bool {
        !self.events.is_empty()
            && self.last_flush.is_none_or(|t| now().saturating_duration_since(t) >= HAND_ON_AFTER)
    }

    /// The events were handed on now (`flush`: and put on the wire): records line read →
    /// hand-off, and `ts` → hand-off.
    fn handed(&mut self, summary: &mut Summary, flush: bool) {
        if self.events.is_empty() {
            return;
        }
        let now = Instant::now();
        if flush {
            self.last_flush = Some(now);
        }
        let epoch_ns = now_epoch_ns();
        for (read_at, ts) in self.events.drain(..) {
            summary.event_latency.record(now.saturating_duration_since(read_at).as_nanos() as u64);
            if let Some(ts) = ts {
                summary.ts_latency.record(epoch_ns.saturating_sub(ts));
            }
        }
    }
}

/// How long a batch's first line may have waited for the engine before the engine counts as
/// behind its reader (see [`HAND_ON_AFTER`]). A saturated pipeline's batches wait for the 16
/// batches queued before them: 5 ms or more even at 3M lines/s.
const BEHIND_AFTER: Duration = Duration::from_millis(2);

/// The most events a chunk holds: a message that makes more (a wick liquidating thousands)
/// hands them on in chunks of this many as it goes, flushed or not by the rule of
/// [`HAND_ON_AFTER`]. So a chunk's event list (256 bytes an event) never grows past 128 KB,
/// in memory the allocator has handed out before, instead of doubling into megabytes of
/// fresh pages on the engine thread (a 5,000-event wick: ~500 page faults and the copies),
/// and the writer prints the first events while the engine makes the rest.
pub const CHUNK_EVENTS: usize = 512;

/// Hands the events made so far to the sinks: flushed, once the oldest has waited
/// [`HAND_ON_AFTER`] unless the engine is `behind` (see there); unflushed, once there are
/// [`CHUNK_EVENTS`] of them.
fn hand_on_if_due(
    summary: &mut Summary,
    events: &mut Vec<Event>,
    pending: &mut Pending,
    behind: bool,
    fanout: &mut Fanout<'_, '_>,
) -> io::Result<()> {
    let due = !behind && pending.due(Instant::now);
    if !due && events.len() < CHUNK_EVENTS {
        return Ok(());
    }
    hand_on(summary, events, pending, fanout, due)
}

/// Hands `events` to every sink in one [`Chunk`] (`flush`: put them on the wire now) and
/// records their latencies.
fn hand_on(
    summary: &mut Summary,
    events: &mut Vec<Event>,
    pending: &mut Pending,
    fanout: &mut Fanout<'_, '_>,
    flush: bool,
) -> io::Result<()> {
    let capacity = events.len().next_power_of_two().clamp(1 << 4, CHUNK_EVENTS);
    let next = fanout.lists.next(capacity);
    let chunk = fanout.lists.chunk(std::mem::replace(events, next));
    let result = fanout.send(chunk, flush);
    pending.handed(summary, flush);
    result
}

fn now_epoch_ns() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0)
}

/// The engine side's event hand-off: stamps the event's `latency_ns` (line read to the event
/// made), counts, keeps it in `events`; its latencies are recorded when `events` are handed
/// on. Printing is the sinks' (see [`Chunk`]).
fn emit(
    summary: &mut Summary,
    events: &mut Vec<Event>,
    pending: &mut Pending,
    mut event: Event,
    read_at: Instant,
    ts: Option<u64>,
) {
    let latency = read_at.elapsed().as_nanos() as u64;
    event.set_latency_ns(latency);
    pending.push(read_at, ts);
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
    events.push(event);
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
            emit(Event::Reject { line, seq, origin_seq: None, reject });
            None
        }
        Outcome::Command { seq, cmd } => {
            let started = Instant::now();
            if let Err(reject) = engine.apply(&cmd, At { line, seq }, emit) {
                emit(Event::Reject { line, seq: Some(seq), origin_seq: None, reject });
            }
            Some(Applied { started, apply_ns: started.elapsed().as_nanos() as u64 })
        }
    }
}

#[cfg(test)]
mod tests {
    use std::{io::Write as _, time::Duration};

    use super::*;

    /// The pool of chunk lists starts with [`CHUNK_LISTS`] lists of [`CHUNK_EVENTS`], whose
    /// pages are written: filling them all faults (almost) nothing in; then lists are new,
    /// of the size asked; only full-size lists come back.
    #[test]
    fn chunk_lists_start_full_size_and_faulted_in() {
        let lists = ChunkLists::faulted();
        let gap = Event::Gap { line: 1, expected: 1, got: 2 };
        let before = stalls::ThreadTimes::now().minflt;
        let mut taken = Vec::new();
        for _ in 0..CHUNK_LISTS {
            let mut list = lists.next(16);
            assert!(list.is_empty() && list.capacity() >= CHUNK_EVENTS, "{}", list.capacity());
            list.resize(CHUNK_EVENTS, gap.clone());
            taken.push(list);
        }
        let faults = stalls::ThreadTimes::now().minflt - before;
        // Unwritten, the lists are 8 x 32 pages.
        assert!(faults < 32, "{faults} page faults filling {CHUNK_LISTS} lists");
        assert!(lists.spare.is_empty(), "all taken");
        assert_eq!(lists.next(16).capacity(), 16, "then new lists of the size asked");
        // A chunk of a taken list hands it back; a smaller or bigger list is not kept.
        drop(lists.chunk(taken.pop().unwrap()));
        assert_eq!(lists.spare.len(), 1);
        drop(lists.chunk(Vec::with_capacity(16)));
        drop(lists.chunk(Vec::with_capacity(4 * CHUNK_EVENTS)));
        assert_eq!(lists.spare.len(), 1, "only full-size lists are kept");
    }

    /// An engine that takes `per_event` to make each event: a message that fires many.
    struct SlowEvents {
        inner: crate::fast::FastEngine,
        per_event: Duration,
    }

    impl Engine for SlowEvents {
        fn apply(
            &mut self,
            cmd: &crate::protocol::Command,
            at: At,
            out: &mut dyn FnMut(Event),
        ) -> Result<(), crate::protocol::Reject> {
            let per_event = self.per_event;
            self.inner.apply(cmd, at, &mut |e| {
                std::thread::sleep(per_event);
                out(e);
            })
        }
        fn account_report(&self, account: u64, at: At) -> Option<crate::protocol::AccountReport> {
            self.inner.account_report(account, at)
        }
        fn at_risk(&self, query: &crate::engine::RiskQuery) -> Vec<crate::protocol::RiskItem> {
            self.inner.at_risk(query)
        }
        fn n_accounts(&self) -> u64 {
            Engine::n_accounts(&self.inner)
        }
        fn n_positions(&self) -> u64 {
            Engine::n_positions(&self.inner)
        }
        fn copy_state(
            &self,
            reuse: Option<Box<dyn std::any::Any + Send>>,
        ) -> Box<dyn crate::engine::StateCopy> {
            self.inner.copy_state(reuse)
        }
    }

    /// A sink that notes when each chunk came.
    struct Timed(Arc<std::sync::Mutex<Vec<(Instant, String)>>>);

    impl Sink for Timed {
        fn name(&self) -> String {
            "timed".into()
        }
        fn write(&mut self, chunk: &Chunk) -> io::Result<()> {
            self.0.lock().unwrap().push((Instant::now(), chunk.text().to_owned()));
            Ok(())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
        fn finish(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    /// The hand-off rule: the first event after a quiet spell is due at once; after a flush,
    /// events wait for the next step of `HAND_ON_AFTER`; an unflushed hand-off (a full chunk
    /// under load) does not restart the wait; nothing is due with no event waiting, and the
    /// clock is then not read.
    #[test]
    fn the_first_event_after_a_quiet_spell_goes_on_at_once() {
        let t0 = Instant::now();
        let mut summary = Summary::default();
        let mut pending = Pending::default();
        assert!(!pending.due(|| panic!("no clock read without an event")));
        pending.push(t0, None);
        assert!(pending.due(|| t0), "never flushed: at once");
        pending.handed(&mut summary, true);
        let flushed = pending.last_flush.unwrap();
        pending.push(flushed, None);
        let step = HAND_ON_AFTER;
        assert!(!pending.due(|| flushed + step / 2), "half a step after the flush");
        assert!(pending.due(|| flushed + step), "a step after the flush");
        pending.handed(&mut summary, false);
        pending.push(flushed, None);
        assert!(pending.due(|| flushed + step), "an unflushed hand-off does not count");
        assert_eq!(summary.event_latency.histogram().len(), 2, "the two hand-offs recorded");
    }

    /// A message that fires many items hands its first events to the sinks while the engine
    /// still builds the rest, in order, none lost.
    #[test]
    fn a_long_message_hands_its_events_on_as_they_are_made() {
        const PER_EVENT: Duration = Duration::from_millis(2);
        // Never behind, however late a loaded machine lets the engine thread take the batch.
        let (chunks, handed_in_order) = run_slow_wick(PER_EVENT, None, 1, Duration::MAX);
        let with_events: Vec<_> =
            chunks.iter().filter(|(_, c)| c.contains("liquidation")).collect();
        // Each event takes 2 ms to make and events wait at most HAND_ON_AFTER (0.1 ms): the
        // first goes on long before the last is made.
        assert!(with_events.len() >= 2, "{} chunks", with_events.len());
        let (first, last) = (with_events[0].0, with_events[with_events.len() - 1].0);
        assert!(last - first >= PER_EVENT * (WICK_ACCOUNTS as u32 - 2), "{:?}", last - first);
        assert!(handed_in_order);
    }

    /// A batch that waited in the queue (a second wick queued behind a first that takes
    /// 80 ms) hands its events on in one chunk at its end, since each hand-off costs the
    /// engine a wake of the writer; the first wick, taken at once, hands its events on as
    /// they are made. Nothing is lost or reordered.
    #[test]
    fn behind_a_backlog_a_long_message_hands_its_events_on_at_its_end() {
        // The first wick takes 8 x 10 ms: the second wick's batch waits at least 80 ms, the
        // first wick's batches only as long as a loaded machine delays the engine thread.
        let (chunks, handed_in_order) =
            run_slow_wick(Duration::from_millis(10), Some(1), 2, Duration::from_millis(40));
        let accounts_in = |c: &str| -> Vec<u64> {
            c.lines()
                .filter(|l| l.contains("liquidation"))
                .filter_map(|l| l.split("\"account\":").nth(1))
                .filter_map(|t| t.split(|ch: char| !ch.is_ascii_digit()).next())
                .filter_map(|t| t.parse().ok())
                .collect()
        };
        let chunks_of = |first_wick: bool| {
            let of_it = |a: &u64| (*a <= WICK_ACCOUNTS) == first_wick;
            chunks.iter().filter(|(_, c)| accounts_in(c).iter().any(of_it)).count()
        };
        assert!(chunks_of(true) >= 2, "the first wick, taken at once, hands on as it goes");
        assert_eq!(chunks_of(false), 1, "the queued wick's events came in one chunk");
        assert!(handed_in_order);
    }

    /// Accounts liquidated by [`run_slow_wick`]'s wick.
    const WICK_ACCOUNTS: u64 = 8;

    /// Runs a stream of `wicks` wicks, one a symbol, each liquidating [`WICK_ACCOUNTS`]
    /// accounts (the first wick accounts 1..=N, the next N+1..=2N), each event taking
    /// `per_event` to make, through a pipeline of `batch_lines` (default when `None`) to a
    /// direct sink, behind its reader after `behind_after` ([`Options::behind_after`]; set
    /// by the tests so that a loaded machine does not change what they check). Returns the chunks it received with their arrival times, and whether they
    /// hold the events of a plain replay of the stream, in its order.
    fn run_slow_wick(
        per_event: Duration,
        batch_lines: Option<usize>,
        wicks: u64,
        behind_after: Duration,
    ) -> (Vec<(Instant, String)>, bool) {
        const N: u64 = WICK_ACCOUNTS;
        let cfg = Arc::new(crate::synth::config(wicks as usize));
        let mut stream = String::new();
        for w in 0..wicks {
            stream += &format!("{{\"type\":\"mark\",\"symbol\":\"S{w:03}\",\"price\":\"100\"}}\n");
            for a in w * N + 1..=(w + 1) * N {
                stream += &format!("{{\"type\":\"balance\",\"account\":{a},\"wallet\":\"5\"}}\n");
                stream += &format!(
                    "{{\"type\":\"position\",\"account\":{a},\"symbol\":\"S{w:03}\",\"size\":\"1\",\"entry_price\":\"100\"}}\n"
                );
            }
        }
        // Every account's 5 of wallet is lost 19 times over: all N of a symbol are
        // liquidated by its wick.
        for w in 0..wicks {
            stream += &format!("{{\"type\":\"mark\",\"symbol\":\"S{w:03}\",\"price\":\"1\"}}\n");
        }
        let chunks = Arc::new(std::sync::Mutex::new(Vec::new()));
        let mut engine = SlowEvents { inner: crate::fast::FastEngine::new(cfg.clone()), per_event };
        let source = ReadSource::new(io::Cursor::new(stream.clone().into_bytes()));
        // A direct (non-blocking) sink, as the daemon's subscribers are: called on the engine
        // thread at each hand-off.
        struct Direct(Timed);
        impl Sink for Direct {
            fn name(&self) -> String {
                self.0.name()
            }
            fn write(&mut self, chunk: &Chunk) -> io::Result<()> {
                self.0.write(chunk)
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
            fn finish(&mut self) -> io::Result<()> {
                Ok(())
            }
            fn blocking(&self) -> bool {
                false
            }
        }
        let sink = Direct(Timed(chunks.clone()));
        let mut pipeline = Pipeline::new(cfg.clone(), Box::new(source), vec![Box::new(sink)]);
        if let Some(lines) = batch_lines {
            pipeline.opts.batch_lines = lines;
        }
        pipeline.opts.behind_after = behind_after;
        let summary = pipeline.run(&mut engine).unwrap();
        assert_eq!(summary.liquidations, N * wicks, "every account is liquidated");
        assert_eq!(summary.event_latency.summary().count, N * wicks);
        let chunks = std::mem::take(&mut *chunks.lock().unwrap());
        let in_order = same_as_plain_replay(cfg, stream, &chunks);
        (chunks, in_order)
    }

    /// The chunks hold the events of a plain replay of `stream` (fast engine), in its order,
    /// `latency_ns` aside.
    fn same_as_plain_replay(
        cfg: Arc<Config>,
        stream: String,
        chunks: &[(Instant, String)],
    ) -> bool {
        let mut plain = Vec::new();
        let mut fast = crate::fast::FastEngine::new(cfg.clone());
        crate::replay::replay(cfg, &mut fast, io::Cursor::new(stream.into_bytes()), &mut plain)
            .unwrap();
        let strip = |s: &str| -> Vec<String> {
            s.lines().map(|l| l.split("\"latency_ns\"").next().unwrap_or(l).to_owned()).collect()
        };
        let handed: String = chunks.iter().map(|(_, c)| c.as_str()).collect();
        strip(&handed) == strip(&String::from_utf8(plain).unwrap())
    }

    /// The engine thread hands chunks of events on unprinted; a writer thread prints each
    /// once, and every clone shares that one text, equal to the events' own lines.
    #[test]
    fn events_are_printed_by_the_sink_not_the_engine() {
        struct Checks(Arc<std::sync::Mutex<(usize, usize, String)>>);
        impl Sink for Checks {
            fn name(&self) -> String {
                "checks".into()
            }
            fn write(&mut self, chunk: &Chunk) -> io::Result<()> {
                let mut seen = self.0.lock().unwrap();
                seen.0 += 1;
                seen.1 += usize::from(chunk.is_printed());
                let copy = chunk.clone();
                let text = chunk.text();
                assert!(copy.is_printed() && std::ptr::eq(text, copy.text()), "printed once");
                let mut own = String::new();
                chunk.events().iter().for_each(|e| e.write_json(&mut own));
                assert_eq!(text, own);
                seen.2 += text;
                Ok(())
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
            fn finish(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let cfg = Arc::new(crate::synth::config(1));
        let mut stream = String::new();
        for a in 1..=20 {
            stream += &format!("{{\"type\":\"balance\",\"account\":{a},\"wallet\":\"5\"}}\n");
            stream += &format!("{{\"type\":\"query\",\"account\":{a}}}\n");
        }
        stream += "not json\n";
        let seen = Arc::new(std::sync::Mutex::new((0, 0, String::new())));
        let source = ReadSource::new(io::Cursor::new(stream.into_bytes()));
        let mut pipeline =
            Pipeline::new(cfg.clone(), Box::new(source), vec![Box::new(Checks(seen.clone()))]);
        pipeline.opts.batch_lines = 4;
        let summary = pipeline.run(&mut crate::fast::FastEngine::new(cfg)).unwrap();
        let (chunks, printed_before, text) = std::mem::take(&mut *seen.lock().unwrap());
        assert!(chunks >= 2, "{chunks} chunks");
        assert_eq!(printed_before, 0, "no chunk came printed from the engine thread");
        assert_eq!(text.lines().count() as u64, summary.accounts + summary.rejects);
        assert_eq!((summary.accounts, summary.rejects), (20, 1));
    }

    /// A message that liquidates more than [`CHUNK_EVENTS`] accounts hands its events on in
    /// chunks of at most that many, all of them, in order.
    #[test]
    fn a_big_wick_goes_in_bounded_chunks() {
        const N: u64 = CHUNK_EVENTS as u64 * 2 + 37;
        let cfg = Arc::new(crate::synth::config(1));
        let mut stream =
            String::from("{\"type\":\"mark\",\"symbol\":\"S000\",\"price\":\"100\"}\n");
        for a in 1..=N {
            stream += &format!("{{\"type\":\"balance\",\"account\":{a},\"wallet\":\"5\"}}\n");
            stream += &format!(
                "{{\"type\":\"position\",\"account\":{a},\"symbol\":\"S000\",\"size\":\"1\",\"entry_price\":\"100\"}}\n"
            );
        }
        stream += "{\"type\":\"mark\",\"symbol\":\"S000\",\"price\":\"1\"}\n";
        let chunks = Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = Timed(chunks.clone());
        let source = ReadSource::new(io::Cursor::new(stream.clone().into_bytes()));
        let mut pipeline = Pipeline::new(cfg.clone(), Box::new(source), vec![Box::new(sink)]);
        // Always behind: no hand-off by time, only by size.
        pipeline.opts.behind_after = Duration::ZERO;
        let summary = pipeline.run(&mut crate::fast::FastEngine::new(cfg.clone())).unwrap();
        assert_eq!(summary.liquidations, N);
        let chunks = std::mem::take(&mut *chunks.lock().unwrap());
        let sizes: Vec<usize> = chunks.iter().map(|(_, c)| c.lines().count()).collect();
        assert!(sizes.iter().all(|&n| n <= CHUNK_EVENTS), "{sizes:?}");
        assert!(sizes.len() >= 3, "{sizes:?}");
        assert!(same_as_plain_replay(cfg, stream, &chunks), "every event, in order");
    }

    /// The engine parks on its doorbell and a request rings it awake: a control request is
    /// answered while the stream is open and idle, at the point of the last message applied.
    #[test]
    fn a_control_is_answered_on_an_idle_open_stream() {
        let cfg = Arc::new(crate::synth::config(2));
        let (pipe_rx, mut pipe_tx) = std::io::pipe().unwrap();
        let (control_tx, control_rx) = control_queue(1);
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
            assert!(control_tx.try_send(ask).is_ok(), "the one request waiting");
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

    /// A control queue kept full does not stop ingest: the engine takes a batch after each
    /// answer. An asker refills the queue as soon as a slot frees, each answer taking 200 µs,
    /// while 200 one-line batches are read; with controls answered before every batch the
    /// batches would wait for the asker to give up (20 s).
    #[test]
    fn a_stream_of_controls_does_not_hold_ingest_back() {
        const LINES: u64 = 200;
        let cfg = Arc::new(crate::synth::config(2));
        let (control_tx, control_rx) = control_queue(4);
        let stream: String = (1..=LINES)
            .map(|i| {
                format!("{{\"type\":\"balance\",\"account\":{i},\"wallet\":\"5\",\"seq\":{i}}}\n")
            })
            .collect();
        let done = Arc::new(AtomicBool::new(false));
        let asking = done.clone();
        let asker = std::thread::spawn(move || {
            let (start, mut asked) = (Instant::now(), 0u64);
            while !asking.load(Ordering::Acquire) && start.elapsed() < Duration::from_secs(20) {
                let ask: Control = Box::new(|_, _| std::thread::sleep(Duration::from_micros(200)));
                match control_tx.try_send(ask) {
                    Ok(()) => asked += 1,
                    Err(_) => std::thread::yield_now(),
                }
            }
            asked
        });
        let started = Instant::now();
        let source = ReadSource::new(io::Cursor::new(stream.into_bytes()));
        let sink = WriterSink::new("sink", io::sink());
        let mut pipeline = Pipeline::new(cfg.clone(), Box::new(source), vec![Box::new(sink)]);
        pipeline.controls = Some(control_rx);
        pipeline.opts.batch_lines = 1;
        let summary = pipeline.run(&mut crate::fast::FastEngine::new(cfg)).unwrap();
        let took = started.elapsed();
        done.store(true, Ordering::Release);
        let asked = asker.join().unwrap();
        assert_eq!(summary.messages, LINES);
        assert!(asked >= 2, "the queue was kept busy ({asked} asked)");
        assert!(took < Duration::from_secs(10), "ingest waited for the controls: {took:?}");
    }
}
