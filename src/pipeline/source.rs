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

use super::{Options, Stop, wait::Spinner};
use crate::{
    config::Config,
    ingest::{Ingest, Ingested, Line, LineReader},
    protocol::MAX_LINE_BYTES,
};

/// One connection of the engine stream: bytes, read until they end.
pub struct Connection<'a> {
    pub input: Box<dyn BufRead + Send + 'a>,
    /// What to do with a last line that the end of the connection cut off before its `\n`:
    /// `true` drops it (a network connection that died mid-line: the engine resends that
    /// message, whose seq was never consumed); `false` processes it (a file's last line
    /// needs no newline).
    pub drop_cut_off_line: bool,
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
        self.input.take().map(|input| Connection { input, drop_cut_off_line: false })
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
    batch_tx: Sender<Vec<Ingested>>,
    spare_rx: Receiver<Vec<Ingested>>,
    resume_seq: u64,
) -> io::Result<()> {
    let mut ingest = Ingest::resume(cfg, resume_seq);
    let mut batch = Vec::with_capacity(opts.batch_lines);
    // Hands the batch to the engine; false when the engine side stopped (its error is
    // reported there).
    let hand_on = |batch: &mut Vec<Ingested>| {
        let next = spare_rx.try_recv().unwrap_or_else(|_| Vec::with_capacity(opts.batch_lines));
        send_when_room(&batch_tx, std::mem::replace(batch, next))
    };
    let (paced_from, mut n_paced) = (Instant::now(), 0u64);
    let paced = opts.rate.is_some();
    if paced {
        super::wait::fine_timer_slack();
    }
    let mut spinner = Spinner::new(!opts.idle_spin.is_zero());
    while !stop.is_stopped() {
        let Some(conn) = source.next(ingest.last_seq()) else { break };
        ingest.new_connection();
        let mut lines = LineReader::new(conn.input, MAX_LINE_BYTES);
        let mut end =
            ConnectionEnd { lines: 0, cut_off_bytes: 0, error: None, stopped: false, last_seq: 0 };
        loop {
            if stop.is_stopped() {
                end.stopped = true;
                break;
            }
            let (line, terminated) = match lines.next_line_terminated() {
                Ok(Some(read)) => read,
                Ok(None) => break,
                Err(e) => {
                    end.error = Some(e);
                    break;
                }
            };
            if conn.drop_cut_off_line && !terminated {
                end.cut_off_bytes = match line {
                    Line::Bytes(b) => b.len(),
                    Line::TooLong(n) => n,
                };
                break;
            }
            if let Some(rate) = opts.rate {
                let due = paced_from + Duration::from_secs_f64(n_paced as f64 / rate);
                n_paced += 1;
                if Instant::now() < due {
                    // What is ready goes on before the wait, as on a live stream.
                    if !batch.is_empty() && !hand_on(&mut batch) {
                        return Ok(());
                    }
                    spinner.pace_until(due);
                }
            }
            batch.push(ingest.line(line, Instant::now()));
            end.lines += 1;
            // Paced, the engine keeps up by construction: a line it has room for goes on at
            // once rather than behind the rest of a burst (a sleep that overshot lets a dozen
            // lines in at once), and the engine's wake-up overlaps their reading.
            let engine_waits = paced && batch_tx.is_empty();
            if (batch.len() == opts.batch_lines || engine_waits || !lines.next_line_buffered())
                && !hand_on(&mut batch)
            {
                return Ok(());
            }
        }
        // Everything read goes on before the source is asked for what comes next (which may
        // block waiting for the engine to reconnect).
        if !batch.is_empty() && !hand_on(&mut batch) {
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
