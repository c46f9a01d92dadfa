//! Where events go (SPEC sections 8 and 9.2): the [`Sink`] trait, the writer thread that runs
//! a blocking sink, and the two blocking sinks every driver has: any `Write` (stdout, a
//! buffer in tests) and an append-only events file.
//!
//! The engine hands each sink the events of a batch (or of a hand-off, see
//! [`crate::pipeline::HAND_ON_AFTER`]) in a [`Chunk`], shared by all sinks. The chunk's text
//! (NDJSON, SPEC section 7) is printed once, by the first sink that asks for it: a writer
//! thread for stdout and the events file, so that printing, about a third of a wick's cost,
//! is off the engine thread. A blocking sink (a pipe, a file) runs on its own writer thread behind a bounded
//! queue: when it falls behind, the queue fills and the engine waits (back-pressure, nothing
//! dropped). A non-blocking sink (the daemon's subscribers) is called on the engine thread
//! and must never wait: it hands chunks on with `try_send` and cuts whoever cannot keep up.

use std::{
    fs::File,
    io::{self, BufWriter, Write},
    path::Path,
    sync::{Arc, OnceLock},
    time::{Duration, Instant},
};

use crossbeam::channel::{Receiver, RecvTimeoutError, Sender};

use crate::protocol::Event;

/// Events in stream order, shared by every sink (cloning shares them). Their text, whole
/// NDJSON lines each ending in `\n`, is printed once, on the thread of the first sink that
/// calls [`Chunk::text`]; a sink that calls it while another prints waits for that text.
#[derive(Clone)]
pub struct Chunk(Arc<ChunkBody>);

struct ChunkBody {
    events: Vec<Event>,
    text: OnceLock<String>,
    /// Where the event list goes back, emptied, when the last sink drops the chunk.
    spare: Option<Sender<Vec<Event>>>,
}

impl Drop for ChunkBody {
    /// Empties the event list here (on the last sink's thread) and hands it back for the
    /// engine thread's next chunk, if it is a full-size list ([`crate::pipeline::CHUNK_EVENTS`]:
    /// not a small one made while the pool was empty, nor a restore's one bigger chunk,
    /// which is not kept for the life of the process) and the pool is not full.
    fn drop(&mut self) {
        if let Some(spare) = self.spare.take()
            && self.events.capacity() == crate::pipeline::CHUNK_EVENTS
        {
            let mut events = std::mem::take(&mut self.events);
            events.clear();
            let _ = spare.try_send(events);
        }
    }
}

impl Chunk {
    /// A chunk of `events`, not yet printed.
    pub fn new(events: Vec<Event>) -> Chunk {
        Chunk(Arc::new(ChunkBody { events, text: OnceLock::new(), spare: None }))
    }

    /// A chunk of `events` whose list goes back to `spare`, emptied, when the last clone is
    /// dropped (see [`crate::pipeline::CHUNK_LISTS`]).
    pub(crate) fn returning(events: Vec<Event>, spare: Sender<Vec<Event>>) -> Chunk {
        Chunk(Arc::new(ChunkBody { events, text: OnceLock::new(), spare: Some(spare) }))
    }

    /// The events, in stream order.
    pub fn events(&self) -> &[Event] {
        &self.0.events
    }

    /// The text was printed already (by an earlier [`Chunk::text`] call, on any thread).
    pub fn is_printed(&self) -> bool {
        self.0.text.get().is_some()
    }

    /// The events as NDJSON (SPEC section 7), printed on the first call.
    pub fn text(&self) -> &str {
        self.0.text.get_or_init(|| {
            // A liquidation or account line with three positions is ~600 bytes.
            let mut text = String::with_capacity(self.0.events.len() * 640);
            for event in &self.0.events {
                event.write_json(&mut text);
            }
            text
        })
    }
}

/// A destination for events.
pub trait Sink: Send {
    /// A name for logs and errors ("stdout", "events file /var/log/liqscan.ndjson").
    fn name(&self) -> String;

    /// Takes a chunk of events, in stream order (their text: [`Chunk::text`]). A blocking
    /// sink may buffer it.
    fn write(&mut self, chunk: &Chunk) -> io::Result<()>;

    /// The engine has nothing more queued: put what is buffered on the wire now, so that a
    /// live stream's events leave as soon as they are made (issue 11, part 3).
    fn flush(&mut self) -> io::Result<()>;

    /// The end of the stream (end of input, SIGTERM): deliver everything, flush, and make it
    /// durable where that applies. Called once, after the last `write`.
    fn finish(&mut self) -> io::Result<()>;

    /// True when `write` may block (a pipe, a file): such a sink runs on its own writer
    /// thread. False for a sink that only hands chunks on without waiting: it is called on
    /// the engine thread.
    fn blocking(&self) -> bool {
        true
    }

    /// For a blocking sink: when it next wants [`Sink::tick`] if no chunk comes first (for
    /// `--events-file`, 100 ms after the oldest unflushed event: SPEC 9.2). `None`: only
    /// idle moments and the end flush it.
    fn deadline(&self) -> Option<Instant> {
        None
    }

    /// Does what [`Sink::deadline`] asked for (a timed flush, a sync).
    fn tick(&mut self) -> io::Result<()> {
        Ok(())
    }

    /// For a blocking sink: makes what was written so far survive a crash of the process
    /// and, where the sink can, of the machine (the events file: flush and `fdatasync`).
    /// Called on the writer thread before a snapshot counts as written (SPEC 9.4). True when
    /// done; false when it could not be done by `deadline` (when the snapshot stops waiting:
    /// it is given up, and the sink carries on with nothing lost). Errors: the sink failed.
    fn make_durable(&mut self, _deadline: Instant) -> io::Result<bool> {
        self.flush().map(|()| true)
    }

    /// For a non-blocking sink: a probe that turns true once every event handed to the sink
    /// so far has left the process (or its recipient is gone). `None`: nothing is held.
    fn delivery_probe(&self) -> Option<Probe> {
        None
    }
}

/// See [`Sink::delivery_probe`].
pub type Probe = Box<dyn Fn() -> bool + Send>;

/// Confirmation that every sink delivered the events handed to it up to a point of the
/// stream ([`crate::pipeline::Point::delivery`]).
///
/// The barriers to the writer threads are sent by [`Delivery::wait`], on the thread that
/// waits, not by the engine thread that made the `Delivery`: a writer queue that is full
/// (a slow disk) then holds up the waiting thread only. A barrier sent later covers the
/// events handed on in between too, which only confirms more.
#[derive(Default)]
pub struct Delivery {
    pub(crate) writers: Vec<Sender<WriterMsg>>,
    pub(crate) probes: Vec<Probe>,
}

impl Delivery {
    /// Waits until every sink confirmed, or `deadline`; true when all did. A writer that
    /// failed or stopped never confirms.
    pub fn wait(self, deadline: Instant) -> bool {
        let mut answers = Vec::with_capacity(self.writers.len());
        for tx in self.writers {
            let (done_tx, done_rx) = crossbeam::channel::bounded(1);
            if tx.send_deadline(WriterMsg::Barrier(done_tx, deadline), deadline).is_err() {
                return false;
            }
            answers.push(done_rx);
        }
        for rx in &answers {
            if rx.recv_deadline(deadline) != Ok(true) {
                return false;
            }
        }
        for probe in &self.probes {
            while !probe() {
                if Instant::now() >= deadline {
                    return false;
                }
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        true
    }
}

/// What the engine sends a writer thread.
pub(crate) enum WriterMsg {
    /// Events to write; `flush`: the engine had nothing more queued after them.
    Chunk { chunk: Chunk, flush: bool },
    /// The engine went idle after chunks sent without `flush`.
    Flush,
    /// Make everything before this durable by the deadline ([`Sink::make_durable`]), then
    /// answer whether it is.
    Barrier(Sender<bool>, Instant),
}

/// The writer thread of one blocking sink: writes chunks in order, flushes when the engine
/// goes idle, ticks at the sink's deadlines, finishes when the queue closes. Returns the
/// first error; the engine sees the queue close and stops.
pub(crate) fn writer_thread(sink: &mut dyn Sink, rx: Receiver<WriterMsg>) -> io::Result<()> {
    loop {
        let msg = match sink.deadline() {
            Some(due) => match rx.recv_deadline(due) {
                Ok(msg) => msg,
                Err(RecvTimeoutError::Timeout) => {
                    sink.tick()?;
                    continue;
                }
                Err(RecvTimeoutError::Disconnected) => break,
            },
            None => match rx.recv() {
                Ok(msg) => msg,
                Err(_) => break,
            },
        };
        match msg {
            WriterMsg::Chunk { chunk, flush } => {
                sink.write(&chunk)?;
                if flush {
                    sink.flush()?;
                }
                // A busy engine sends chunk after chunk: the deadline is kept here too.
                if sink.deadline().is_some_and(|due| due <= Instant::now()) {
                    sink.tick()?;
                }
            }
            WriterMsg::Flush => sink.flush()?,
            WriterMsg::Barrier(done, deadline) => {
                let durable = sink.make_durable(deadline)?;
                let _ = done.send(durable);
            }
        }
    }
    sink.finish()
}

/// A sink over any writer: stdout, a pipe, a `Vec<u8>` in tests. Flushing flushes the writer.
pub struct WriterSink<W> {
    name: String,
    out: W,
}

impl<W: Write + Send> WriterSink<W> {
    pub fn new(name: impl Into<String>, out: W) -> Self {
        WriterSink { name: name.into(), out }
    }
}

impl<W: Write + Send> Sink for WriterSink<W> {
    fn name(&self) -> String {
        self.name.clone()
    }

    fn write(&mut self, chunk: &Chunk) -> io::Result<()> {
        self.out.write_all(chunk.text().as_bytes())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }

    fn finish(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

/// The longest an event written to an [`EventsFile`] stays in the daemon's buffer (SPEC 9.2).
pub const EVENTS_FILE_FLUSH_EVERY: Duration = Duration::from_millis(100);

/// How often an [`EventsFile`] is synced to disk while events are written.
pub const EVENTS_FILE_SYNC_EVERY: Duration = Duration::from_secs(1);

/// `--events-file FILE` (SPEC 9.2): events appended to a file, created if missing.
///
/// Durability: each flush (when the engine goes idle, and at most 100 ms after an event was
/// written while it is busy) hands the bytes to the operating system with `write(2)`, so a
/// crash of the daemon loses nothing that was flushed. `fdatasync` runs at most once a second
/// while events are being written (at the latest one second after the first unsynced one),
/// before every snapshot is written (with `--state-dir`: the file then holds every event of
/// the messages the snapshot covers) and at shutdown, so a crash of the machine loses at
/// most about the last second, all of it after the newest snapshot: the engine's resend
/// after a restart (SPEC 9.4) sends those events again.
pub struct EventsFile {
    name: String,
    out: BufWriter<File>,
    /// When the oldest event still in `out`'s buffer was written.
    buffered_since: Option<Instant>,
    /// When the last `fdatasync` ran.
    synced_at: Instant,
    /// Bytes were flushed to the file since the last `fdatasync`.
    unsynced: bool,
    /// The path is a regular file. Anything else (a pipe, `/dev/null`, a terminal) is
    /// written but never synced: `fdatasync` refuses them (`EINVAL`), and they hold nothing
    /// a crash of the machine could lose.
    syncable: bool,
}

impl EventsFile {
    /// Opens `path` for appending (creating it), or says why not.
    pub fn open(path: &Path) -> io::Result<EventsFile> {
        let file = File::options().create(true).append(true).open(path)?;
        let syncable = file.metadata()?.file_type().is_file();
        Ok(EventsFile {
            name: format!("events file {}", path.display()),
            out: BufWriter::with_capacity(1 << 16, file),
            buffered_since: None,
            synced_at: Instant::now(),
            unsynced: false,
            syncable,
        })
    }

    fn sync(&mut self) -> io::Result<()> {
        if self.syncable {
            self.out.get_ref().sync_data()?;
        }
        self.synced_at = Instant::now();
        self.unsynced = false;
        Ok(())
    }
}

impl Sink for EventsFile {
    fn name(&self) -> String {
        self.name.clone()
    }

    fn write(&mut self, chunk: &Chunk) -> io::Result<()> {
        self.buffered_since.get_or_insert_with(Instant::now);
        self.out.write_all(chunk.text().as_bytes())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()?;
        if self.buffered_since.take().is_some() {
            self.unsynced = true;
        }
        Ok(())
    }

    fn finish(&mut self) -> io::Result<()> {
        self.out.flush()?;
        self.sync()
    }

    /// Before each snapshot: flush and `fdatasync`, so that the file holds every event of
    /// the messages the snapshot covers even after a crash of the machine.
    fn make_durable(&mut self, _deadline: Instant) -> io::Result<bool> {
        self.flush()?;
        self.sync().map(|()| true)
    }

    fn deadline(&self) -> Option<Instant> {
        let flush = self.buffered_since.map(|t| t + EVENTS_FILE_FLUSH_EVERY);
        let sync = self.unsynced.then(|| self.synced_at + EVENTS_FILE_SYNC_EVERY);
        flush.into_iter().chain(sync).min()
    }

    fn tick(&mut self) -> io::Result<()> {
        let now = Instant::now();
        if self.buffered_since.is_some_and(|t| t + EVENTS_FILE_FLUSH_EVERY <= now) {
            self.flush()?;
        }
        if self.unsynced && self.synced_at + EVENTS_FILE_SYNC_EVERY <= now {
            self.sync()?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A returning chunk's full-size event list comes back emptied, with its room, when the
    /// last of its clones is dropped, and not before; a full pool drops it.
    #[test]
    fn a_chunks_list_comes_back_when_its_last_clone_is_dropped() {
        let (back, spare) = crossbeam::channel::bounded::<Vec<Event>>(1);
        let gap = Event::Gap { line: 1, expected: 1, got: 2 };
        let full = crate::pipeline::CHUNK_EVENTS;
        let mut list = Vec::with_capacity(full);
        list.extend(std::iter::repeat_n(gap.clone(), 10));
        let chunk = Chunk::returning(list, back.clone());
        let other = chunk.clone();
        assert_eq!(chunk.text().lines().count(), 10);
        drop(chunk);
        assert!(spare.try_recv().is_err(), "a clone still holds it");
        drop(other);
        let list = spare.try_recv().expect("handed back");
        assert!(list.is_empty() && list.capacity() == full, "{} / {}", list.len(), list.capacity());
        // The pool is full: the next list is dropped, not waited for.
        back.send(list).unwrap();
        let mut another = Vec::with_capacity(full);
        another.push(gap);
        drop(Chunk::returning(another, back));
        assert_eq!(spare.len(), 1);
    }

    /// A sink that can be made durable only from `durable_from` on.
    struct Late {
        durable_from: Instant,
        finished: Arc<OnceLock<()>>,
    }

    impl Sink for Late {
        fn name(&self) -> String {
            "late".into()
        }
        fn write(&mut self, _: &Chunk) -> io::Result<()> {
            Ok(())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
        fn finish(&mut self) -> io::Result<()> {
            let _ = self.finished.set(());
            Ok(())
        }
        fn make_durable(&mut self, deadline: Instant) -> io::Result<bool> {
            std::thread::sleep(
                deadline.min(self.durable_from).saturating_duration_since(Instant::now()),
            );
            Ok(Instant::now() >= self.durable_from)
        }
    }

    /// `--events-file /dev/null` (or a pipe) is written and made "durable" without the
    /// `fdatasync` that such files refuse: the daemon stopped at its first sync.
    #[test]
    fn an_events_file_that_is_not_a_regular_file_is_written_without_syncs() {
        let mut sink = EventsFile::open(Path::new("/dev/null")).unwrap();
        assert!(!sink.syncable);
        let chunk = Chunk::new(vec![crate::protocol::Event::Gap { line: 1, expected: 1, got: 2 }]);
        sink.write(&chunk).unwrap();
        sink.flush().unwrap();
        assert!(sink.make_durable(Instant::now()).unwrap());
        sink.tick().unwrap();
        sink.finish().unwrap();
        let dir = std::env::temp_dir().join(format!("liqscan-events-{}", std::process::id()));
        let file = EventsFile::open(&dir).unwrap();
        assert!(file.syncable, "a regular file is synced");
        drop(file);
        std::fs::remove_file(&dir).unwrap();
    }

    #[test]
    fn a_sink_not_durable_by_the_deadline_fails_that_delivery_only() {
        let finished = Arc::new(OnceLock::new());
        let durable_from = Instant::now() + Duration::from_millis(300);
        let mut sink = Late { durable_from, finished: finished.clone() };
        let (tx, rx) = crossbeam::channel::bounded(4);
        let writer = std::thread::spawn(move || writer_thread(&mut sink, rx));
        let delivery = || Delivery { writers: vec![tx.clone()], probes: Vec::new() };
        assert!(!delivery().wait(Instant::now() + Duration::from_millis(50)), "not durable yet");
        std::thread::sleep(durable_from.saturating_duration_since(Instant::now()));
        // The writer went on: a later delivery is confirmed.
        assert!(delivery().wait(Instant::now() + Duration::from_secs(10)));
        drop(tx);
        writer.join().unwrap().unwrap();
        assert!(finished.get().is_some(), "finished at the end");
    }
}
