//! Where the engine stream comes from (SPEC sections 8 and 9.1): the [`Source`] trait, the
//! one-stream source of `replay` and stdin, and the reader thread that turns a source's
//! connections into batches of [`Ingested`] lines.
//!
//! A source hands out connections one after another. Line numbers restart on each, the seq
//! state carries across (SPEC 9.1), so a reconnecting engine resends after the `hello`'s
//! `last_seq` and whatever it repeats is a duplicate.

use std::{
    io::{self, BufRead},
    sync::Arc,
    time::{Duration, Instant},
};

use crossbeam::channel::{Receiver, Sender, TrySendError};

use super::{
    Options, Stop,
    wait::{Doorbell, Spinner},
};
use crate::{
    config::Config,
    ingest::{Ingest, Ingested, Line, LineReader, Refused},
    protocol::MAX_LINE_BYTES,
};

/// One connection of the engine stream: bytes, read until they end, or a sequenced log's
/// messages (SPEC section 10).
pub struct Connection<'a> {
    /// Its bytes, or its log's messages.
    pub input: Input<'a>,
    /// What to do with a last line that the end of the connection cut off before its `\n`:
    /// `true` drops it (a network connection that died mid-line: the engine resends that
    /// message, whose seq was never consumed); `false` processes it (a file's last line
    /// needs no newline). A log's messages are whole: there it is never used.
    pub drop_cut_off_line: bool,
}

impl<'a> Connection<'a> {
    /// A byte stream, split into lines (SPEC section 6 numbers them and reads their seq).
    pub fn lines(input: impl BufRead + Send + 'a, drop_cut_off_line: bool) -> Connection<'a> {
        Connection { input: Input::Lines(Box::new(input)), drop_cut_off_line }
    }

    /// A sequenced log's messages (see [`LogReader`]).
    pub fn log(log: impl LogReader + 'a) -> Connection<'a> {
        Connection { input: Input::Log(Box::new(log)), drop_cut_off_line: false }
    }
}

/// What a connection carries.
pub enum Input<'a> {
    /// Bytes: lines numbered from 1, each message's effective seq from its `seq` field.
    Lines(Box<dyn BufRead + Send + 'a>),
    /// Messages of a sequenced log: each one line, whose number and effective seq are the
    /// log's sequence ([`crate::ingest::Ingest::logged`]).
    Log(Box<dyn LogReader + 'a>),
}

/// One message of a sequenced log: its sequence in the log (from 1) and its text, one
/// message of SPEC section 5 without its newline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogMessage {
    /// Its sequence in the log: its line number and effective seq.
    pub seq: u64,
    /// The message (SPEC section 5), without its newline.
    pub payload: bytes::Bytes,
    /// A stand-in for a message its sender could not send whole (`payload` empty): rejected
    /// as that message would be.
    pub refused: Option<Refused>,
}

/// A sequenced log read from some point on (SPEC section 10: a shard's JetStream stream,
/// from the seq after the last one applied).
pub trait LogReader: Send {
    /// Blocks for the next message. `Ok(None)`: this reading ends (the pipeline is
    /// stopping); an error ends the connection, as a read error ends a stream's.
    fn next(&mut self) -> io::Result<Option<LogMessage>>;

    /// A next message is already here, so that [`LogReader::next`] will not block: the
    /// reader keeps it in the batch it is filling.
    fn ready(&self) -> bool;
}

/// How a connection ended, as the reader thread tells its source.
#[derive(Debug)]
pub struct ConnectionEnd {
    /// Lines read on this connection (the cut-off line not counted).
    pub lines: u64,
    /// Bytes of a last line dropped because the connection ended before its `\n`.
    pub cut_off_bytes: usize,
    /// The read error that ended it, if one did.
    pub error: Option<io::Error>,
    /// The pipeline was asked to stop while this connection was being read.
    pub stopped: bool,
    /// The last effective seq admitted when it ended: every line read up to it is applied
    /// (a stop drains what was read), none after it.
    pub last_seq: u64,
}

/// Hands out the connections of an engine stream, one at a time.
pub trait Source<'a>: Send {
    /// Blocks until the next connection is there; `None` when the source is done (end of
    /// input, or stopping). `last_seq` is the last effective seq admitted so far: a network
    /// source writes it in the `hello` line (SPEC 9.1) before handing the connection on.
    fn next(&mut self, last_seq: u64) -> Option<Connection<'a>>;

    /// Hears how the last connection ended. An error returned here ends the pipeline with
    /// it; a source that outlives its connections logs and returns `Ok`.
    fn ended(&mut self, end: ConnectionEnd) -> io::Result<()>;
}

/// A source of exactly one stream: a file, stdin, a buffer. Its read error ends the run.
pub struct ReadSource<'a> {
    input: Option<Box<dyn BufRead + Send + 'a>>,
}

impl<'a> ReadSource<'a> {
    pub fn new(input: impl BufRead + Send + 'a) -> Self {
        ReadSource { input: Some(Box::new(input)) }
    }
}

impl<'a> Source<'a> for ReadSource<'a> {
    fn next(&mut self, _last_seq: u64) -> Option<Connection<'a>> {
        self.input
            .take()
            .map(|input| Connection { input: Input::Lines(input), drop_cut_off_line: false })
    }

    fn ended(&mut self, end: ConnectionEnd) -> io::Result<()> {
        end.error.map_or(Ok(()), Err)
    }
}

/// The reader thread: reads every connection of `source` line by line, ingests each line
/// (line numbers, parse, sequencing, validation) and hands batches to the engine. A batch
/// goes on when it is full, when the next line is not wholly buffered, so reading it may
/// block (a live stream's lines never wait for later ones, nor behind a half-sent line), and
/// at the end of each connection. With `opts.rate`, line n is let in at
/// n / rate seconds.
pub(crate) fn reader_thread<'a>(
    cfg: Arc<Config>,
    mut source: Box<dyn Source<'a> + 'a>,
    opts: Options,
    stop: &Stop,
    queue: Queue,
    resume_seq: u64,
) -> io::Result<()> {
    let mut ingest = Ingest::resume(cfg, resume_seq);
    let Queue { batch_tx, spare_rx, bell } = queue;
    let batch = Vec::with_capacity(opts.batch_lines);
    let mut out = Batcher { batch, batch_tx, spare_rx, bell, opts };
    let mut pacer = opts.rate.map(|rate| Pacer::new(rate, !opts.idle_spin.is_zero()));
    while !stop.is_stopped() {
        let Some(conn) = source.next(ingest.last_seq()) else { break };
        ingest.new_connection();
        let mut end =
            ConnectionEnd { lines: 0, cut_off_bytes: 0, error: None, stopped: false, last_seq: 0 };
        let read = match conn.input {
            Input::Lines(input) => {
                let drop_cut_off = conn.drop_cut_off_line;
                read_lines(
                    input,
                    drop_cut_off,
                    &mut ingest,
                    &mut out,
                    pacer.as_mut(),
                    stop,
                    &mut end,
                )
            }
            Input::Log(log) => read_log(log, &mut ingest, &mut out, stop, &mut end),
        };
        // Everything read goes on before the source is asked for what comes next (which may
        // block waiting for the engine to reconnect).
        if read.is_err() || !out.hand_on() {
            return Ok(());
        }
        end.last_seq = ingest.last_seq();
        // A stop ends a network read by shutting the socket's reading down: the end of input
        // seen then is the stop's.
        end.stopped |= stop.is_stopped();
        source.ended(end)?;
    }
    Ok(())
}

/// The engine side stopped (its error is reported there).
struct EngineGone;

/// The reader's ends of the engine's queues.
pub(crate) struct Queue {
    /// Batches to the engine (bounded: [`Options::queue_batches`]).
    pub batch_tx: Sender<Vec<Ingested>>,
    /// Emptied batches back from the engine, to fill again.
    pub spare_rx: Receiver<Vec<Ingested>>,
    /// Rung after each batch: wakes the engine if it parked.
    pub bell: Arc<Doorbell>,
}

/// The batch being filled, and its way to the engine.
struct Batcher {
    batch: Vec<Ingested>,
    batch_tx: Sender<Vec<Ingested>>,
    spare_rx: Receiver<Vec<Ingested>>,
    bell: Arc<Doorbell>,
    opts: Options,
}

impl Batcher {
    /// Hands the batch (if any) to the engine; false when the engine side stopped.
    fn hand_on(&mut self) -> bool {
        if self.batch.is_empty() {
            return true;
        }
        let lines = self.opts.batch_lines;
        let next = self.spare_rx.try_recv().unwrap_or_else(|_| Vec::with_capacity(lines));
        let sent = send_when_room(&self.batch_tx, std::mem::replace(&mut self.batch, next));
        self.bell.ring();
        sent
    }

    /// Adds a line; hands the batch on when it is full or `more_ready` is false (the next
    /// read may block, so a live stream's lines never wait for later ones).
    fn push(&mut self, line: Ingested, more_ready: bool) -> Result<(), EngineGone> {
        self.batch.push(line);
        if (self.batch.len() == self.opts.batch_lines || !more_ready) && !self.hand_on() {
            return Err(EngineGone);
        }
        Ok(())
    }
}

/// `--rate`: line n is let in at n / rate seconds after the first.
struct Pacer {
    rate: f64,
    from: Instant,
    n: u64,
    spinner: Spinner,
}

impl Pacer {
    /// `spin`: the last stretch before a due time is spun (see [`Spinner`]).
    fn new(rate: f64, spin: bool) -> Pacer {
        super::wait::fine_timer_slack();
        Pacer { rate, from: Instant::now(), n: 0, spinner: Spinner::new(spin) }
    }

    /// Waits for the next line's due time; what is ready in `out` goes on first, as on a
    /// live stream.
    fn wait(&mut self, out: &mut Batcher) -> Result<(), EngineGone> {
        let due = self.from + Duration::from_secs_f64(self.n as f64 / self.rate);
        self.n += 1;
        if Instant::now() < due {
            if !out.hand_on() {
                return Err(EngineGone);
            }
            self.spinner.pace_until(due);
        }
        Ok(())
    }
}

/// Reads one byte connection to its end (or a stop, or a read error, noted in `end`).
fn read_lines(
    input: Box<dyn BufRead + Send + '_>,
    drop_cut_off_line: bool,
    ingest: &mut Ingest,
    out: &mut Batcher,
    mut pacer: Option<&mut Pacer>,
    stop: &Stop,
    end: &mut ConnectionEnd,
) -> Result<(), EngineGone> {
    let mut lines = LineReader::new(input, MAX_LINE_BYTES);
    loop {
        if stop.is_stopped() {
            end.stopped = true;
            return Ok(());
        }
        let (line, terminated) = match lines.next_line_terminated() {
            Ok(Some(read)) => read,
            Ok(None) => return Ok(()),
            Err(e) => {
                end.error = Some(e);
                return Ok(());
            }
        };
        if drop_cut_off_line && !terminated {
            end.cut_off_bytes = match line {
                Line::Bytes(b) => b.len(),
                Line::TooLong(n) => n,
            };
            return Ok(());
        }
        if let Some(p) = pacer.as_deref_mut() {
            p.wait(out)?;
        }
        let ingested = ingest.line(line, Instant::now());
        end.lines += 1;
        // Paced, the engine keeps up by construction: a line it has room for goes on at
        // once rather than behind the rest of a burst (a sleep that overshot lets a dozen
        // lines in at once), and the engine's wake-up overlaps their reading.
        let engine_waits = pacer.is_some() && out.batch_tx.is_empty();
        out.push(ingested, !engine_waits && lines.next_line_buffered())?;
    }
}

/// Reads a log's messages until it ends (a stop) or fails (noted in `end`).
fn read_log(
    mut log: Box<dyn LogReader + '_>,
    ingest: &mut Ingest,
    out: &mut Batcher,
    stop: &Stop,
    end: &mut ConnectionEnd,
) -> Result<(), EngineGone> {
    loop {
        if stop.is_stopped() {
            end.stopped = true;
            return Ok(());
        }
        let message = match log.next() {
            Ok(Some(m)) => m,
            Ok(None) => return Ok(()),
            Err(e) => {
                end.error = Some(e);
                return Ok(());
            }
        };
        let text = message.payload.strip_suffix(b"\n").unwrap_or(&message.payload);
        let line =
            if text.len() > MAX_LINE_BYTES { Line::TooLong(text.len()) } else { Line::Bytes(text) };
        let ingested = ingest.logged(message.seq, line, message.refused, Instant::now());
        end.lines += 1;
        out.push(ingested, log.ready())?;
    }
}

/// How long the reader sleeps before it looks again at a full queue (see [`send_when_room`]).
pub(crate) const FULL_QUEUE_NAP: Duration = Duration::from_micros(200);

/// Sends `batch` to the engine once its queue has room; false when the engine side is gone.
///
/// A full queue means the engine is at least `queue_batches` batches behind, milliseconds of
/// work even for the cheapest lines. A reader blocked in `send` would be woken by the engine
/// taking each batch: a futex wake of a parked thread on the engine thread per batch, which
/// on this 2-core VM cost the engine more than the messages it saved waiting for. So the
/// reader naps and looks again instead; the engine never wakes it, and the queue cannot run
/// dry during a nap.
fn send_when_room(batch_tx: &Sender<Vec<Ingested>>, mut batch: Vec<Ingested>) -> bool {
    loop {
        match batch_tx.try_send(batch) {
            Ok(()) => return true,
            Err(TrySendError::Disconnected(_)) => return false,
            Err(TrySendError::Full(back)) => {
                batch = back;
                std::thread::sleep(FULL_QUEUE_NAP);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use crossbeam::channel::bounded;

    use super::*;

    /// A queue of one batch, holding an empty one.
    fn full_queue() -> (Sender<Vec<Ingested>>, Receiver<Vec<Ingested>>) {
        let (tx, rx) = bounded::<Vec<Ingested>>(1);
        tx.send(Vec::new()).unwrap();
        (tx, rx)
    }

    #[test]
    fn a_full_queue_takes_the_batch_once_the_engine_makes_room() {
        let (tx, rx) = full_queue();
        let taker = std::thread::spawn(move || {
            std::thread::sleep(FULL_QUEUE_NAP * 5);
            let first = rx.recv_timeout(Duration::from_secs(5)).unwrap();
            let second = rx.recv_timeout(Duration::from_secs(5)).unwrap();
            (first.capacity(), second.capacity())
        });
        let started = Instant::now();
        assert!(send_when_room(&tx, Vec::with_capacity(7)), "sent once there was room");
        assert!(started.elapsed() >= FULL_QUEUE_NAP * 5, "it waited for the room");
        assert_eq!(taker.join().unwrap(), (0, 7), "in order, nothing lost");
    }

    #[test]
    fn a_full_queue_whose_engine_is_gone_gives_up() {
        let (tx, rx) = full_queue();
        let dropper = std::thread::spawn(move || {
            std::thread::sleep(FULL_QUEUE_NAP * 3);
            drop(rx);
        });
        assert!(!send_when_room(&tx, Vec::new()));
        dropper.join().unwrap();
    }
}
