//! `liqscan feed`: the matching engine's side of SPEC section 9.1, for load tests and for
//! people trying the daemon.
//!
//! It connects to a daemon's `--listen` address, reads the `hello` line, and sends the input
//! from the first line whose effective seq (SPEC section 6) is above the hello's `last_seq`
//! (from the first line when it is 0), optionally paced. When the connection drops it
//! reconnects with back-off and resends from the new hello, so a daemon that restarts (or one
//! that replaced the connection) ends with every line applied once: anything resent at or
//! below its last seq is a duplicate there.
//!
//! With `--events ADDR` it is also a subscriber (SPEC section 9.2): it reads the daemon's
//! events and measures, per event, the time from the `ts` it stamped on the message to the
//! event's arrival.
//!
//! This is a client tool: plain blocking `std::net` sockets, no async runtime.

use std::{
    fs::File,
    io::{self, BufReader, BufWriter, Read, Seek, SeekFrom, Write},
    net::{Shutdown, TcpStream, ToSocketAddrs},
    path::{Path, PathBuf},
    sync::{
        Arc, LazyLock,
        atomic::{AtomicU64, Ordering},
    },
    thread,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use memchr::memmem;

use crate::{
    ingest::{Admit, Line, LineReader, Sequencer},
    latency::Latency,
    pipeline::wait::Spinner,
    protocol::{self, MAX_LINE_BYTES},
};

/// Lines between two resume checkpoints of the input index.
const CHECKPOINT_LINES: u64 = 4096;

/// Send times kept for matching events to the `ts` of their message, by seq modulo this.
/// An event that arrives more than this many messages after its message is not timed.
const TS_RING: usize = 1 << 20;

/// How `feed` runs.
#[derive(Debug, Clone)]
pub struct FeedOptions {
    /// The daemon's `--listen` address (`host:port`).
    pub to: String,
    /// Lines per second; `None` sends as fast as the connection takes them.
    pub rate: Option<f64>,
    /// Stamp `"ts"` (ns since the epoch, at send time) on every message that has none.
    pub stamp_ts: bool,
    /// The daemon's `--events` address: subscribe and time events.
    pub events: Option<String>,
    /// Give up when no connection could be made (or kept) for this long.
    pub give_up_after: Duration,
    /// With `events`: after the last line, wait until no event came for this long.
    pub events_idle: Duration,
    /// How long to wait for a connection and its `hello` line.
    pub io_timeout: Duration,
    /// After the last line: how long to wait for the daemon's `bye` and close before the
    /// connection counts as lost (reconnect, and resume from the next hello).
    pub close_timeout: Duration,
    /// With `rate`: zero paces by sleeps alone; otherwise the last stretch before a line's
    /// due time is spun (see [`crate::pipeline::wait`]). `LIQSCAN_SPIN_US` by default.
    pub pace_spin: Duration,
}

impl FeedOptions {
    /// Defaults for sending to `to`: unpaced, no stamping, give up after 30 s without a
    /// connection.
    pub fn new(to: impl Into<String>) -> FeedOptions {
        FeedOptions {
            to: to.into(),
            rate: None,
            stamp_ts: false,
            events: None,
            give_up_after: Duration::from_secs(30),
            events_idle: Duration::from_secs(1),
            io_timeout: Duration::from_secs(10),
            close_timeout: Duration::from_secs(10),
            pace_spin: crate::pipeline::wait::spin_from_env(),
        }
    }
}

/// What a feed did.
#[derive(Clone, Default)]
pub struct FeedSummary {
    /// Lines written to a connection, resent ones included.
    pub lines_sent: u64,
    /// Bytes written, newlines included.
    pub bytes_sent: u64,
    /// Lines of the input (the last effective seq of the input is `last_seq`).
    pub input_lines: u64,
    /// The input's last effective seq.
    pub last_seq: u64,
    /// Connections made (each began with a hello).
    pub connections: u64,
    /// Lines sent more than once (after a reconnect resumed below what was sent).
    pub lines_resent: u64,
    /// The `last_seq` of each hello, in order.
    pub hellos: Vec<u64>,
    pub elapsed: Duration,
    /// Events read as a subscriber, and how many of them were liquidations.
    pub events: u64,
    /// Connections made to the events address: more than one when the daemon closed a
    /// subscription while lines were being sent (the events of the gap were not seen).
    pub subscriptions: u64,
    /// The daemon closed the last subscription while lines were being sent and none could be
    /// made again: the events after it were not seen.
    pub subscription_lost: bool,
    pub liquidations: u64,
    /// Stamped `ts` to the event's arrival, for events whose message feed stamped.
    pub ts_to_event: Latency,
}

impl FeedSummary {
    /// Lines sent per second of wall time.
    pub fn lines_per_s(&self) -> f64 {
        let s = self.elapsed.as_secs_f64();
        if s > 0.0 { self.lines_sent as f64 / s } else { 0.0 }
    }

    /// The human summary for stderr.
    pub fn human(&self) -> String {
        let mut s = format!(
            "liqscan feed\n\
             sent          {} lines ({} bytes) in {:.3} s ({:.0} lines/s)\n\
             input         {} lines, last seq {}\n\
             connections   {} (hello last_seq: {})\n\
             resent        {} lines\n",
            self.lines_sent,
            self.bytes_sent,
            self.elapsed.as_secs_f64(),
            self.lines_per_s(),
            self.input_lines,
            self.last_seq,
            self.connections,
            self.hellos.iter().map(u64::to_string).collect::<Vec<_>>().join(", "),
            self.lines_resent,
        );
        // With --events (a subscription was made), even when no event came.
        if self.subscriptions > 0 {
            let l = self.ts_to_event.summary();
            s += &format!(
                "events        {} received, {} liquidations\n\
                 ts→event ns   p50 {} p90 {} p99 {} p99.9 {} max {} (n={})\n",
                self.events, self.liquidations, l.p50, l.p90, l.p99, l.p999, l.max, l.count
            );
            let closed = self.subscriptions - 1 + u64::from(self.subscription_lost);
            if closed > 0 {
                s += &format!(
                    "subscriptions {} (the daemon closed {closed} while lines were being sent{}; \
                     events made while none was open, if any, were not seen)\n",
                    self.subscriptions,
                    if self.subscription_lost { ", the last for good" } else { "" },
                );
            }
        }
        s
    }

    /// The `--report` JSON.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "lines_sent": self.lines_sent,
            "bytes_sent": self.bytes_sent,
            "input_lines": self.input_lines,
            "last_seq": self.last_seq,
            "connections": self.connections,
            "hellos": self.hellos,
            "lines_resent": self.lines_resent,
            "elapsed_s": self.elapsed.as_secs_f64(),
            "lines_per_s": self.lines_per_s(),
            "events": self.events,
            "subscriptions": self.subscriptions,
            "subscription_lost": self.subscription_lost,
            "liquidations": self.liquidations,
            "latency_ns": { "ts_to_event": self.ts_to_event.summary().to_json() },
        })
    }
}

/// Why a feed stopped before the end of its input.
#[derive(Debug, thiserror::Error)]
pub enum FeedError {
    #[error("cannot read input {path}")]
    Input { path: PathBuf, source: io::Error },
    #[error("no connection to {to} for {secs:.1} s after: {cause}{}", last_error(.cause, .last))]
    GaveUp { to: String, secs: f64, cause: String, last: String },
    #[error(
        "{to} kept closing the connection having read up to seq {seq} and no further for \
         {secs:.1} s; the last time: {last}"
    )]
    Stalled { to: String, secs: f64, seq: u64, last: String },
    #[error("{to} did not answer with a hello line: {reason}")]
    NoHello { to: String, reason: String },
    #[error("cannot subscribe to events at {addr}")]
    Subscribe { addr: String, source: io::Error },
    #[error(
        "{addr} answered with a hello: it is a daemon's engine port (--listen), not its --events port"
    )]
    NotEvents { addr: String },
}

/// The give-up message's last error, when it is not the failure that began the streak.
fn last_error(cause: &str, last: &str) -> String {
    if cause == last { String::new() } else { format!(" (last error: {last})") }
}

/// A point of the input where sending can resume: the byte offset of a line, its line
/// number, and the sequencer's last effective seq before it.
#[derive(Debug, Clone, Copy)]
struct Checkpoint {
    offset: u64,
    line: u64,
    seq_before: u64,
}

/// The input file with a sparse index of checkpoints, built as it is first read with the
/// full parse (the skip before sending, or [`Input::exact_last_seq`]; lines taken at their
/// leading seq while sending, see [`leading_seq`], extend no index).
struct Input {
    path: PathBuf,
    checkpoints: Vec<Checkpoint>,
    /// How far the index reaches: every line before this offset is indexed.
    indexed_to: u64,
    /// The input's last effective seq, once read to the end with the full parse.
    exact_last: Option<u64>,
}

impl Input {
    fn open(path: &Path) -> Result<Input, FeedError> {
        File::open(path).map_err(|source| FeedError::Input { path: path.to_owned(), source })?;
        Ok(Input {
            path: path.to_owned(),
            checkpoints: vec![Checkpoint { offset: 0, line: 0, seq_before: 0 }],
            indexed_to: 0,
            exact_last: None,
        })
    }

    /// Indexes the line `line_no` (from 1) at `line_offset`, `line_len` bytes before its
    /// newline, read with the full parse, with the sequencer at `seq_before` before it.
    fn index(&mut self, line_offset: u64, line_len: usize, line_no: u64, seq_before: u64) {
        if line_offset >= self.indexed_to
            && line_no > 1
            && (line_no - 1).is_multiple_of(CHECKPOINT_LINES)
        {
            self.checkpoints.push(Checkpoint {
                offset: line_offset,
                line: line_no - 1,
                seq_before,
            });
        }
        self.indexed_to = self.indexed_to.max(line_offset + line_len as u64 + 1);
    }

    /// The input's last effective seq as the daemon counts it: read with the full parse from
    /// the last checkpoint to the end (once; the index grows on the way). Needed only where a
    /// send took lines at their leading seq ([`leading_seq`]) and the daemon's `bye` says it
    /// read less than they add up to: a line that begins like a message and is malformed
    /// after its seq counts for nothing there.
    fn exact_last_seq(&mut self) -> Result<u64, FeedError> {
        if let Some(last) = self.exact_last {
            return Ok(last);
        }
        let from = *self.checkpoints.last().expect("the first checkpoint is never removed");
        let mut lines = self.lines_from(from)?;
        let mut seq = Sequencer::resume(from.seq_before);
        while let Some(line) = lines.next().map_err(|e| self.err(e))? {
            let before = seq.last();
            if let Some(parsed) = line.bytes.and_then(|b| protocol::parse_envelope(b).ok()) {
                seq.admit(parsed.seq);
            }
            let (offset, len, no) = (line.offset, line.len, line.no);
            self.index(offset, len, no, before);
        }
        self.exact_last = Some(seq.last());
        Ok(seq.last())
    }

    /// The input from checkpoint `from` on.
    fn lines_from(&self, from: Checkpoint) -> Result<InputLines, FeedError> {
        let mut file = File::open(&self.path).map_err(|e| self.err(e))?;
        file.seek(SeekFrom::Start(from.offset)).map_err(|e| self.err(e))?;
        let reader = LineReader::new(BufReader::with_capacity(1 << 16, file), MAX_LINE_BYTES);
        Ok(InputLines { reader, offset: from.offset, line_no: from.line })
    }

    /// The latest known checkpoint at which the sequencer had not passed `last_seq`. The
    /// sequencer's last seq never decreases, so the checkpoints are ordered by it.
    fn resume_point(&self, last_seq: u64) -> Checkpoint {
        let i = self.checkpoints.partition_point(|c| c.seq_before <= last_seq);
        // i >= 1: the first checkpoint has seq_before 0 <= any last_seq.
        self.checkpoints[i.saturating_sub(1)]
    }

    fn err(&self, source: io::Error) -> FeedError {
        FeedError::Input { path: self.path.clone(), source }
    }
}

/// The input read line by line from a checkpoint, each line with its place.
struct InputLines {
    reader: LineReader<BufReader<File>>,
    /// Where the next line starts, and the number of the last line read (from 1).
    offset: u64,
    line_no: u64,
}

/// A line of [`InputLines`].
struct InputLine<'a> {
    /// `None` for a line over [`MAX_LINE_BYTES`].
    bytes: Option<&'a [u8]>,
    /// Its length without the newline.
    len: usize,
    /// Where it starts, and its number (from 1).
    offset: u64,
    no: u64,
}

impl InputLines {
    fn next(&mut self) -> io::Result<Option<InputLine<'_>>> {
        let (bytes, len) = match self.reader.next_line()? {
            None => return Ok(None),
            Some(Line::TooLong(n)) => (None, n),
            Some(Line::Bytes(b)) => (Some(b), b.len()),
        };
        // The reader does not say whether the line ended in '\n'; the last line of a file
        // may not. Offsets are only used at checkpoints, which the next line confirms.
        let offset = self.offset;
        self.offset += len as u64 + 1;
        self.line_no += 1;
        Ok(Some(InputLine { bytes, len, offset, no: self.line_no }))
    }
}

/// Nanoseconds since the epoch now.
fn now_epoch_ns() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0)
}

/// Send times by seq, shared with the subscriber thread: slot `seq % TS_RING` holds
/// `(seq, ts)`.
struct TsRing {
    slots: Vec<[AtomicU64; 2]>,
}

impl TsRing {
    fn new() -> TsRing {
        TsRing { slots: (0..TS_RING).map(|_| Default::default()).collect() }
    }

    fn put(&self, seq: u64, ts: u64) {
        let slot = &self.slots[(seq % TS_RING as u64) as usize];
        slot[0].store(0, Ordering::Release); // invalid while being written
        slot[1].store(ts, Ordering::Release);
        slot[0].store(seq, Ordering::Release);
    }

    fn get(&self, seq: u64) -> Option<u64> {
        let slot = &self.slots[(seq % TS_RING as u64) as usize];
        let ts = slot[1].load(Ordering::Acquire);
        (slot[0].load(Ordering::Acquire) == seq && seq != 0).then_some(ts)
    }
}

/// How one connection ended.
enum Connection {
    /// Every line was sent and the daemon closed its side after reading them.
    Done,
    /// The connection failed; reconnect and resume from the next hello. `read_to`: the
    /// daemon closed it with a `bye` short of the input, saying how far it read.
    Lost { error: String, read_to: Option<u64> },
}

impl Connection {
    /// A connection lost without a word from the daemon on how far it read.
    fn lost(error: String) -> Connection {
        Connection::Lost { error, read_to: None }
    }
}

/// Sends `input` to the daemon at `opts.to` as SPEC section 9.1 describes, reconnecting
/// until every line past the daemon's `last_seq` was sent on a connection the daemon then
/// closed cleanly, or until `opts.give_up_after` passes with no connection.
///
/// Errors: the input cannot be read, no connection for `give_up_after`, a peer that does
/// not speak the hello, or (with `events`) a subscription that cannot be made.
pub fn feed(input: &Path, opts: &FeedOptions) -> Result<FeedSummary, FeedError> {
    let mut input = Input::open(input)?;
    let mut summary = FeedSummary::default();
    let ring = Arc::new(TsRing::new());
    let subscriber = match &opts.events {
        Some(addr) => Some(Subscriber::start(addr, ring.clone())?),
        None => None,
    };
    // The rate is of the sending: after the subscription's check (up to `HELLO_PEEK`).
    let started = Instant::now();
    let mut sent_up_to = 0u64; // highest line number ever sent, for counting resends
    let mut cause = String::new();
    let mut backoff = Duration::from_millis(50);
    let mut failing_since: Option<Instant> = None;
    // The highest seq the daemon said it had (hellos and byes), since when connections have
    // been ending without it saying a higher one, and how the last of them ended. A peer that
    // takes every connection and ends each the same way (a short `bye`, a reset) would
    // otherwise be fed the same lines for ever: each connection restarts the give-up clock.
    let (mut known, mut stalled_since): (u64, Option<Instant>) = (0, None);
    let mut last_lost = String::new();
    let mut paced = Pacer::new(opts.rate);
    if opts.rate.is_some() {
        crate::pipeline::wait::fine_timer_slack();
    }
    loop {
        // A peer that takes the connection but sends no hello (a daemon that is stopping, or
        // another port) is waited for no longer than what is left of --give-up-after, so the
        // feed gives up on time (the first attempt: at most that long as well).
        let left = opts
            .give_up_after
            .saturating_sub(failing_since.map_or(Duration::ZERO, |t| t.elapsed()));
        let wait = opts.io_timeout.min(left).max(Duration::from_millis(50));
        let attempt_started = Instant::now();
        let attempt = connect(&opts.to, wait).and_then(|(stream, last_seq)| {
            summary.connections += 1;
            summary.hellos.push(last_seq);
            failing_since = None;
            // A peer that has got no further keeps its back-off: it is reconnected to ever
            // more slowly (up to 2 s), not every 50 ms.
            if last_seq > known || summary.connections == 1 {
                (known, stalled_since) = (known.max(last_seq), None);
                backoff = Duration::from_millis(50);
            } else if let Some(since) = stalled_since
                && since.elapsed() >= opts.give_up_after
            {
                let (to, secs) = (opts.to.clone(), since.elapsed().as_secs_f64());
                let last = last_lost.clone();
                return Err(Attempt::Fatal(FeedError::Stalled { to, secs, seq: known, last }));
            }
            send_from(
                &mut input,
                stream,
                last_seq,
                opts,
                &ring,
                &mut paced,
                &mut summary,
                &mut sent_up_to,
            )
        });
        // When this failure began: a connection that was made and then lost failed when it
        // was lost (it may have lasted longer than --give-up-after), an attempt that made
        // none failed from its start.
        let (last_error, failed_at) = match attempt {
            Ok(Connection::Done) => break,
            Ok(Connection::Lost { error, read_to }) => {
                // A `bye` above every seq said before is progress; any other end starts (or
                // continues) the stall, which the next hello ends if it says a higher seq. A
                // `bye` at or below it says for sure that the daemon got no further.
                last_lost.clone_from(&error);
                if let Some(seq) = read_to.filter(|&seq| seq > known) {
                    (known, stalled_since) = (seq, None);
                } else {
                    let since = *stalled_since.get_or_insert_with(Instant::now);
                    if read_to.is_some() && since.elapsed() >= opts.give_up_after {
                        let (to, secs) = (opts.to.clone(), since.elapsed().as_secs_f64());
                        return Err(FeedError::Stalled { to, secs, seq: known, last: error });
                    }
                }
                (error, Instant::now())
            }
            Err(Attempt::Retry(e)) => (e, attempt_started),
            Err(Attempt::Fatal(e)) => return Err(e),
        };
        if failing_since.is_none() {
            // What began this run of failures: a lost connection (a daemon that stopped
            // before reading everything says how far it read) says more than the refused
            // connects after it.
            cause = last_error.clone();
        }
        // The failing time counts from the first failure of this run of failures.
        let since = *failing_since.get_or_insert(failed_at);
        if since.elapsed() >= opts.give_up_after {
            return Err(FeedError::GaveUp {
                to: opts.to.clone(),
                secs: since.elapsed().as_secs_f64(),
                cause,
                last: last_error,
            });
        }
        // The last wait ends when the give-up time does, so the feed gives up on time.
        thread::sleep(backoff.min(opts.give_up_after.saturating_sub(since.elapsed())));
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
    summary.elapsed = started.elapsed();
    if let Some(sub) = subscriber {
        let got = sub.finish(opts.events_idle);
        summary.events = got.events;
        summary.liquidations = got.liquidations;
        summary.ts_to_event = got.latency;
        summary.subscriptions = got.connections;
        summary.subscription_lost = got.lost;
    }
    // After the timing and the events: where lines were taken at their leading seq, the
    // input is read once more in full for its last effective seq.
    summary.last_seq = input.exact_last_seq()?;
    Ok(summary)
}

/// A connection attempt that failed.
enum Attempt {
    Retry(String),
    Fatal(FeedError),
}

impl From<FeedError> for Attempt {
    fn from(e: FeedError) -> Attempt {
        Attempt::Fatal(e)
    }
}

/// Connects and reads the hello line; returns the stream and the hello's `last_seq`.
fn connect(to: &str, io_timeout: Duration) -> Result<(TcpStream, u64), Attempt> {
    let addrs: Vec<_> = to
        .to_socket_addrs()
        .map_err(|e| Attempt::Retry(format!("cannot resolve {to}: {e}")))?
        .collect();
    let mut last = format!("{to} resolves to no address");
    for addr in addrs {
        match TcpStream::connect_timeout(&addr, io_timeout) {
            Ok(stream) => {
                // Lines go out as they are flushed: Nagle's algorithm would hold a paced
                // line back until the previous one is acknowledged (up to a delayed ACK).
                let _ = stream.set_nodelay(true);
                let last_seq = read_hello(&stream, to, io_timeout)?;
                return Ok((stream, last_seq));
            }
            Err(e) => last = format!("connect {addr}: {e}"),
        }
    }
    Err(Attempt::Retry(last))
}

/// Reads the hello line byte by byte (so nothing after it is consumed) within `timeout`.
fn read_hello(mut stream: &TcpStream, to: &str, timeout: Duration) -> Result<u64, Attempt> {
    stream.set_read_timeout(Some(timeout)).map_err(|e| Attempt::Retry(e.to_string()))?;
    let mut line = Vec::with_capacity(128);
    let mut byte = [0u8; 1];
    loop {
        match stream.read(&mut byte) {
            Ok(0) => return Err(Attempt::Retry(format!("{to} closed before its hello"))),
            Ok(_) if byte[0] == b'\n' => break,
            Ok(_) if line.len() >= 4096 => {
                return Err(no_hello(to, "first line over 4096 bytes"));
            }
            Ok(_) => line.push(byte[0]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            // The read timeout's error reads "Resource temporarily unavailable".
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {
                // Said without the wait, which shrinks towards the give-up time: the give-up
                // message names the cause once when the last error is the same.
                return Err(Attempt::Retry(format!("{to} took the connection but sent no hello")));
            }
            Err(e) => return Err(Attempt::Retry(format!("reading hello from {to}: {e}"))),
        }
    }
    stream.set_read_timeout(None).map_err(|e| Attempt::Retry(e.to_string()))?;
    #[derive(serde::Deserialize)]
    struct Hello {
        #[serde(rename = "type")]
        kind: String,
        last_seq: u64,
    }
    match serde_json::from_slice::<Hello>(&line) {
        Ok(h) if h.kind == "hello" => Ok(h.last_seq),
        Ok(h) => Err(no_hello(to, &format!("first line has type {:?}", h.kind))),
        Err(e) => Err(no_hello(to, &format!("{e}: {}", String::from_utf8_lossy(&line)))),
    }
}

fn no_hello(to: &str, reason: &str) -> Attempt {
    Attempt::Fatal(FeedError::NoHello { to: to.to_owned(), reason: reason.to_owned() })
}

/// Offered load: line n of the run is let out at `n / rate` seconds after the first.
struct Pacer {
    rate: Option<f64>,
    start: Option<Instant>,
    n: u64,
}

impl Pacer {
    fn new(rate: Option<f64>) -> Pacer {
        Pacer { rate, start: None, n: 0 }
    }

    /// How long to wait before the next line (zero when unpaced or late).
    fn wait(&mut self) -> Duration {
        let Some(rate) = self.rate else { return Duration::ZERO };
        let start = *self.start.get_or_insert_with(Instant::now);
        let due = start + Duration::from_secs_f64(self.n as f64 / rate);
        self.n += 1;
        due.saturating_duration_since(Instant::now())
    }
}

/// Sends the input on one connection from the first line whose effective seq is above
/// `last_seq` (from the first line when it is 0); then half-closes and waits for the daemon
/// to close after reading it all.
#[allow(clippy::too_many_arguments)] // one call site; the parts are the feed's whole state
fn send_from(
    input: &mut Input,
    stream: TcpStream,
    last_seq: u64,
    opts: &FeedOptions,
    ring: &TsRing,
    pacer: &mut Pacer,
    summary: &mut FeedSummary,
    sent_up_to: &mut u64,
) -> Result<Connection, Attempt> {
    let from = input.resume_point(last_seq);
    let mut lines = input.lines_from(from)?;
    let mut seq = Sequencer::resume(from.seq_before);
    // A daemon that has applied nothing of this stream gets all of it, the lines before the
    // first message included (a malformed line has no seq to skip it by, and its reject is
    // one of the stream's events). After a hello above 0, sending starts at the first line
    // whose effective seq is above it: a malformed line just before that one may or may not
    // have reached the daemon, and is not sent again.
    let mut sending = last_seq == 0;
    // Every line of this pass so far was read with the full parse, so `seq` is the daemon's
    // count and the lines can be indexed. Once sending, a line that begins with its seq is
    // taken at its word ([`leading_seq`]): the full parse was most of feed's CPU time, which
    // on a load test's two cores is taken from the daemon.
    let mut exact = true;
    let mut out = BufWriter::with_capacity(1 << 16, &stream);
    let mut spinner = Spinner::new(!opts.pace_spin.is_zero());
    let mut clock = StampClock::new();
    while let Some(line) = lines.next().map_err(|e| input.err(e))? {
        let (bytes, consumed, line_no) = (line.bytes, line.len, line.no);
        // Only the seq that follows the last one is taken unparsed (the common stream: seqs
        // in a row): a line that begins with another seq (a gap, a duplicate, or a malformed
        // line's far-off seq, which would make every later line look like a duplicate) is
        // parsed in full, so a malformed line can put the count at most one ahead.
        let quick = bytes
            .filter(|_| sending)
            .and_then(leading_seq)
            .filter(|&n| Some(n) == seq.last().checked_add(1));
        exact &= quick.is_none();
        if exact {
            input.index(line.offset, consumed, line_no, seq.last());
        }
        let parsed = match quick {
            Some(_) => None,
            None => bytes.and_then(|b| protocol::parse_envelope(b).ok()),
        };
        let admitted = match quick {
            Some(n) => Some(seq.admit(Some(n))),
            None => parsed.as_ref().map(|p| seq.admit(p.seq)),
        };
        let effective = match admitted {
            Some(Admit::Next { seq, .. }) => Some(seq),
            _ => None,
        };
        if !sending {
            match effective {
                Some(s) if s > last_seq => sending = true,
                _ => continue,
            }
        }
        let wait = pacer.wait();
        if !wait.is_zero() {
            if let Err(e) = out.flush() {
                return Ok(Connection::lost(format!("send: {e}")));
            }
            // Sleeps (with a fine timer slack, see `fine_timer_slack`), then, with spinning
            // allowed, spins the last stretch.
            spinner.pace_until(Instant::now() + wait);
        }
        let Some(bytes) = bytes else {
            // An over-long line is sent as a line of its length, so the daemon rejects it
            // as it would the original (malformed, over 1 MiB).
            if let Err(e) = write_long_line(&mut out, consumed) {
                return Ok(Connection::lost(format!("send: {e}")));
            }
            count_sent(summary, sent_up_to, line_no, consumed);
            continue;
        };
        // A stamp goes on a message that holds no `ts` key ([`may_hold_ts`]; a line taken at
        // its leading seq holds none), and must not push a line over the daemon's limit: a
        // valid line would become a reject.
        let stampable = (quick.is_some() || (parsed.is_some() && !may_hold_ts(bytes)))
            && bytes.len() + STAMP_BYTES <= MAX_LINE_BYTES;
        let result = if opts.stamp_ts && stampable {
            let ts = clock.now(if opts.rate.is_some() { 1 } else { UNPACED_TS_LINES });
            if let Some(s) = effective {
                ring.put(s, ts);
            }
            stamp(bytes, clock.digits(), &mut out)
        } else {
            out.write_all(bytes).and_then(|()| out.write_all(b"\n")).map(|()| bytes.len())
        };
        match result {
            Ok(written) => count_sent(summary, sent_up_to, line_no, written),
            Err(e) => return Ok(Connection::lost(format!("send: {e}"))),
        }
    }
    summary.input_lines = summary.input_lines.max(lines.line_no);
    if exact {
        input.exact_last = Some(seq.last());
    }
    if let Err(e) = out.flush() {
        return Ok(Connection::lost(format!("send: {e}")));
    }
    drop(out);
    if !sending {
        // The hello's last_seq covers the whole input: the daemon has every line, and this
        // connection carried none, so there is nothing to confirm.
        return Ok(Connection::Done);
    }
    let (end, bye) = wait_for_close(&stream, opts.close_timeout);
    let Some((read_to, reason)) = bye else { return Ok(end) };
    // `seq` counted lines taken at their leading seq (an upper bound of the daemon's count):
    // a bye below it is checked against the input read in full.
    let last = if read_to < seq.last() { input.exact_last_seq()? } else { seq.last() };
    Ok(if read_to < last {
        Connection::Lost {
            error: format!(
                "the daemon closed the connection ({reason}) having read up to seq {read_to}; \
                 the input goes on to seq {last}"
            ),
            read_to: Some(read_to),
        }
    } else {
        Connection::Done
    })
}

/// The seq of a line that begins `{"seq":N,` or `{"seq":N}` (N a positive integer in plain
/// digits, as `liqscan gen` and most engines write) and holds no `"ts"` and no backslash,
/// so that no `ts` key can hide in it, escaped or not; `None` for any other line, which is
/// then parsed in full. Taken at its word while sending: such a line is the next message
/// unless it is malformed after its seq, which only [`Input::exact_last_seq`] needs to know.
fn leading_seq(line: &[u8]) -> Option<u64> {
    let rest = line.strip_prefix(b"{\"seq\":")?;
    let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
    // No leading zero (not JSON; and seq 0 is no seq); past 2^64 - 1 the parse refuses it.
    if !(1..=20).contains(&digits)
        || rest[0] == b'0'
        || !matches!(rest.get(digits), Some(b',' | b'}'))
    {
        return None;
    }
    if may_hold_ts(line) {
        return None;
    }
    std::str::from_utf8(&rest[..digits]).ok()?.parse().ok()
}

/// Whether a `ts` key may be in the line: it holds `"ts"` or a backslash (an escaped key).
/// A stamp goes only on a line without: the parse reads `"ts":null` as no `ts`, and a second
/// key would make the line a duplicate-field reject, its message lost.
fn may_hold_ts(line: &[u8]) -> bool {
    // The searcher built once: `memmem::find` builds one a call, which cost as much as the
    // parse it spares.
    static TS_KEY: LazyLock<memmem::Finder<'static>> =
        LazyLock::new(|| memmem::Finder::new(b"\"ts\""));
    memchr::memchr(b'\\', line).is_some() || TS_KEY.find(line).is_some()
}

fn count_sent(summary: &mut FeedSummary, sent_up_to: &mut u64, line_no: u64, len: usize) {
    summary.lines_sent += 1;
    summary.bytes_sent += len as u64 + 1;
    if line_no <= *sent_up_to {
        summary.lines_resent += 1;
    }
    *sent_up_to = (*sent_up_to).max(line_no);
}

/// Writes `n` filler bytes and a newline: a line the daemon must reject as over-long.
fn write_long_line(out: &mut impl Write, n: usize) -> io::Result<()> {
    let chunk = [b'x'; 4096];
    let mut left = n;
    while left > 0 {
        let k = left.min(chunk.len());
        out.write_all(&chunk[..k])?;
        left -= k;
    }
    out.write_all(b"\n")
}

/// The most bytes a stamp adds to a line: `"ts":`, 20 digits and a comma.
const STAMP_BYTES: usize = 26;

/// Lines an unpaced send stamps with one clock reading: they leave within microseconds of
/// each other (the send buffer holds ~900 lines of a load test before it is written, so a
/// line's `ts` was already up to that much before its send), and a reading and its digits
/// per line were a sixth of the feed's CPU time, which on two cores is the daemon's.
const UNPACED_TS_LINES: u32 = 32;

/// The `ts` stamped on sent lines, ns since the epoch, and its digits.
struct StampClock {
    ts: u64,
    digits: [u8; 39],
    len: usize,
    /// Lines the current reading still stamps.
    left: u32,
}

impl StampClock {
    fn new() -> StampClock {
        StampClock { ts: 0, digits: [0; 39], len: 0, left: 0 }
    }

    /// The `ts` for the next line: a new reading once the last has stamped `every` lines.
    fn now(&mut self, every: u32) -> u64 {
        if self.left == 0 {
            self.ts = now_epoch_ns();
            self.len = crate::fixed::u64_digits(self.ts, &mut self.digits).len();
            self.left = every;
        }
        self.left -= 1;
        self.ts
    }

    /// The digits of the last `ts`.
    fn digits(&self) -> &[u8] {
        // `u64_digits` writes them at the end of the buffer.
        &self.digits[self.digits.len() - self.len..]
    }
}

/// Writes the line with `"ts":<digits>,` inserted after its opening brace, and a newline;
/// returns the length of the stamped line (the newline not counted). Only called for a line
/// that parsed as a JSON object without a `ts` field, or was taken at its leading seq. No
/// allocation: on an unpaced load test this runs for every line, on the same two cores as
/// the daemon.
fn stamp(line: &[u8], digits: &[u8], out: &mut impl Write) -> io::Result<usize> {
    // A parsed object starts with '{' after optional white space.
    let brace = line.iter().position(|&b| b == b'{').map_or(0, |i| i + 1);
    let (head, rest) = line.split_at(brace);
    let empty = rest.iter().all(|b| b.is_ascii_whitespace() || *b == b'}');
    out.write_all(head)?;
    out.write_all(b"\"ts\":")?;
    out.write_all(digits)?;
    if !empty {
        out.write_all(b",")?;
    }
    out.write_all(rest)?;
    out.write_all(b"\n")?;
    Ok(line.len() + b"\"ts\":".len() + digits.len() + usize::from(!empty))
}

/// After the last line: half-close, then wait for the daemon to close its side, which it
/// does once it has read everything we sent. Before it closes, liqscan's daemon writes a
/// `bye` line with the last seq it applied (see `daemon::input::bye`), returned beside how
/// the connection ended: one below the input's last effective seq means it stopped before
/// reading the rest (SIGTERM mid-stream: the lines were in its socket, not applied), and
/// `send_from` counts the connection as lost, so the rest is resent after the next hello, or
/// the feed gives up and says so. A close without a `bye` (another daemon, or a connection a
/// newer one replaced) counts as done, as before. No close within `timeout` (a daemon far
/// behind) counts as lost too: the next connection's hello says how far it read, and a
/// hello that covers the whole input ends the feed (`send_from`).
fn wait_for_close(stream: &TcpStream, timeout: Duration) -> (Connection, Option<(u64, String)>) {
    if let Err(e) = stream.shutdown(Shutdown::Write) {
        return (Connection::lost(format!("shutdown: {e}")), None);
    }
    let _ = stream.set_read_timeout(Some(timeout));
    // What the daemon writes after the hello: a `bye` line, nothing else; more is not kept.
    const KEEP: usize = 4096;
    let mut said = Vec::new();
    let mut buf = [0u8; 1024];
    let mut reader = stream;
    let end = loop {
        match reader.read(&mut buf) {
            Ok(0) => break Connection::Done,
            Ok(n) => said.extend_from_slice(&buf[..n.min(KEEP.saturating_sub(said.len()))]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {
                break Connection::lost(format!(
                    "the daemon did not confirm the end of the input within {timeout:?} \
                     (reconnecting to ask how far it read)"
                ));
            }
            // A stopped daemon that had not read everything resets the connection; the bye
            // it wrote first, if it came, says how far it read.
            Err(e) => break Connection::lost(format!("waiting for the daemon to close: {e}")),
        }
    };
    (end, bye_of(&said))
}

/// The last `bye` line among what the daemon wrote after its hello: its `last_seq` and
/// `reason`.
fn bye_of(said: &[u8]) -> Option<(u64, String)> {
    #[derive(serde::Deserialize)]
    struct Bye {
        #[serde(rename = "type")]
        kind: String,
        last_seq: u64,
        #[serde(default)]
        reason: String,
    }
    said.split(|&b| b == b'\n')
        .rev()
        .filter_map(|line| serde_json::from_slice::<Bye>(line).ok())
        .find(|b| b.kind == "bye")
        .map(|b| (b.last_seq, b.reason))
}

/// The subscriber side of `--events`: reads events, times those whose message was stamped.
/// A subscription the daemon closes while lines are still being sent (a daemon restarted, a
/// subscriber cut for a full buffer) is made again, with back-off; the events made while it
/// was away are not seen (SPEC 9.2: a subscriber gets events from the moment it connects).
struct Subscriber {
    handle: thread::JoinHandle<Subscription>,
    /// Unset (`u64::MAX`) while lines are being sent; then how long a quiet spell ends it.
    idle_ns: Arc<AtomicU64>,
}

/// What the subscriber thread counted.
#[derive(Default)]
struct Subscription {
    events: u64,
    liquidations: u64,
    latency: Latency,
    /// Connections made to the events address (more than one after a reconnect).
    connections: u64,
    /// The daemon closed the last one while lines were being sent, and none was made again.
    lost: bool,
}

impl Subscriber {
    /// Connects once here, so that an address nothing listens on is an error at once, and so
    /// is a daemon's engine port (it greets with a hello at once, where an events port says
    /// nothing until an event; taken for one, the subscription and the feed's own engine
    /// connection kept replacing each other).
    fn start(addr: &str, ring: Arc<TsRing>) -> Result<Subscriber, FeedError> {
        let err = |source| FeedError::Subscribe { addr: addr.to_owned(), source };
        let stream = subscriber_connect(addr).map_err(err)?;
        stream.set_read_timeout(Some(HELLO_PEEK)).map_err(err)?;
        let mut head = [0u8; 16];
        if let Ok(n) = stream.peek(&mut head)
            && head[..n].starts_with(br#"{"type":"hello""#)
        {
            return Err(FeedError::NotEvents { addr: addr.to_owned() });
        }
        stream.set_read_timeout(Some(SUBSCRIBER_TICK)).map_err(err)?;
        let idle_ns = Arc::new(AtomicU64::new(u64::MAX));
        let idle = idle_ns.clone();
        let addr = addr.to_owned();
        let handle = thread::spawn(move || subscribe(&addr, stream, &ring, &idle));
        Ok(Subscriber { handle, idle_ns })
    }

    /// Waits until no event came for `idle` (or the daemon closed), then returns the counts.
    fn finish(self, idle: Duration) -> Subscription {
        self.idle_ns.store(idle.as_nanos().min(u64::MAX as u128 - 1) as u64, Ordering::Relaxed);
        self.handle.join().unwrap_or_default()
    }
}

/// How long a new subscription is watched for a hello (which says it is an engine port): a
/// daemon greets an engine connection at once; an events port says nothing until an event.
const HELLO_PEEK: Duration = Duration::from_millis(200);

/// The subscriber's read timeout: how often it looks whether a quiet spell ends it.
const SUBSCRIBER_TICK: Duration = Duration::from_millis(50);

fn subscriber_connect(addr: &str) -> io::Result<TcpStream> {
    let stream = TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(SUBSCRIBER_TICK))?;
    Ok(stream)
}

/// The subscriber thread: reads events until a quiet spell of `idle_ns` once that is set, or
/// until the daemon closes once it is set; a close before is followed by a new connection
/// (tried every 50 ms, backing off to 1 s).
fn subscribe(addr: &str, first: TcpStream, ring: &TsRing, idle_ns: &AtomicU64) -> Subscription {
    let mut counts = Subscription { connections: 1, ..Subscription::default() };
    let mut last_event = Instant::now();
    let finished = |last_event: Instant| {
        let idle = idle_ns.load(Ordering::Relaxed);
        idle != u64::MAX && last_event.elapsed().as_nanos() >= u128::from(idle)
    };
    let sending = || idle_ns.load(Ordering::Relaxed) == u64::MAX;
    let mut stream = Some(first);
    let mut backoff = Duration::from_millis(50);
    loop {
        let Some(s) = stream.take() else {
            if !sending() {
                break; // the feed is done and the daemon closed: nothing more will come
            }
            thread::sleep(backoff);
            match subscriber_connect(addr) {
                Ok(s) => {
                    counts.connections += 1;
                    counts.lost = false;
                    backoff = Duration::from_millis(50);
                    stream = Some(s);
                }
                Err(_) => backoff = (backoff * 2).min(Duration::from_secs(1)),
            }
            continue;
        };
        if read_events(s, ring, &mut counts, &mut last_event, &finished) {
            break;
        }
        // Closed by the daemon: while lines are still being sent, events are being missed.
        counts.lost |= sending();
    }
    counts
}

/// Reads events from one subscription into `counts`; true when `finished` (a quiet spell at
/// the end), false when the daemon closed the subscription or it failed.
fn read_events(
    mut stream: TcpStream,
    ring: &TsRing,
    counts: &mut Subscription,
    last_event: &mut Instant,
    finished: &dyn Fn(Instant) -> bool,
) -> bool {
    // Bytes read and not yet split into lines: `buf[..filled]`, whole lines first.
    let mut buf = vec![0u8; 1 << 16];
    let mut filled = 0;
    loop {
        if filled == buf.len() {
            buf.resize(2 * buf.len(), 0); // a line longer than the buffer
        }
        match stream.read(&mut buf[filled..]) {
            Ok(0) => return false, // the daemon closed the subscription
            Ok(n) => {
                // Every line of this read arrived now: timed here, not after the lines before
                // it in the read were looked at (a wick's hundreds of events come in one read).
                let now = now_epoch_ns();
                *last_event = Instant::now();
                // The bytes kept from the last read hold no newline: look only at the new ones.
                let mut from = filled;
                filled += n;
                let mut start = 0;
                while let Some(k) = memchr::memchr(b'\n', &buf[from..filled]) {
                    let line = &buf[start..from + k];
                    (start, from) = (from + k + 1, from + k + 1);
                    counts.events += 1;
                    let (kind, seq) = event_head(line);
                    if kind == Some(b"liquidation".as_slice()) {
                        counts.liquidations += 1;
                    }
                    if let Some(ts) = seq.and_then(|s| ring.get(s)) {
                        counts.latency.record(now.saturating_sub(ts));
                    }
                }
                buf.copy_within(start..filled, 0);
                filled -= start;
            }
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {
                if finished(*last_event) {
                    return true;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return false,
        }
    }
}

/// The `type` and `seq` of an event line as the daemon prints it (SPEC section 7): the first
/// `"type":"..."` and the first `"seq":` of the line, since the nested position objects carry
/// neither key and a key inside a string would be escaped (`\"seq\":`). `None` where the key is
/// absent, and for a `null` seq. A look at the line's head instead of a JSON parse: a wick's
/// hundreds of events arrive together, and parsing each in full (~2 µs) made the last ones
/// look hundreds of µs later than they came.
fn event_head(line: &[u8]) -> (Option<&[u8]>, Option<u64>) {
    let after = |key: &[u8]| memchr::memmem::find(line, key).map(|i| &line[i + key.len()..]);
    let kind = after(b"\"type\":\"").and_then(|v| v.split(|&b| b == b'"').next());
    let seq = after(b"\"seq\":").and_then(|v| {
        let digits = v.iter().take_while(|b| b.is_ascii_digit()).count();
        std::str::from_utf8(&v[..digits]).ok()?.parse().ok()
    });
    (kind, seq)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamp_inserts_ts_first() {
        let table: [(&str, &[u8], u64, &str); 5] = [
            ("TC1 fields", br#"{"type":"mark"}"#, 7, "{\"ts\":7,\"type\":\"mark\"}\n"),
            ("TC2 leading space", br#"  {"a":1}"#, 7, "  {\"ts\":7,\"a\":1}\n"),
            ("TC3 empty object", b"{ }", 7, "{\"ts\":7 }\n"),
            ("TC4 zero", b"{}", 0, "{\"ts\":0}\n"),
            ("TC5 u64::MAX", b"{\"a\":1}", u64::MAX, "{\"ts\":18446744073709551615,\"a\":1}\n"),
        ];
        for (label, line, ts, want) in table {
            let (mut out, mut digits) = (Vec::new(), [0u8; 39]);
            let len = stamp(line, crate::fixed::u64_digits(ts, &mut digits), &mut out).unwrap();
            assert_eq!(String::from_utf8(out).unwrap(), want, "{label}");
            assert_eq!(len + 1, want.len(), "{label}: the length written, newline aside");
        }
    }

    #[test]
    fn leading_seq_takes_only_a_plain_seq_first_and_no_ts() {
        let table: [(&str, &[u8], Option<u64>); 12] = [
            ("TC1 gen's line", br#"{"seq":17,"type":"mark","symbol":"S1","price":"1"}"#, Some(17)),
            ("TC2 seq alone", br#"{"seq":3}"#, Some(3)),
            ("TC3 u64::MAX", br#"{"seq":18446744073709551615,"type":"x"}"#, Some(u64::MAX)),
            ("TC4 past u64", br#"{"seq":18446744073709551616,"type":"x"}"#, None),
            ("TC5 seq 0", br#"{"seq":0,"type":"x"}"#, None),
            ("TC6 leading zero", br#"{"seq":01,"type":"x"}"#, None),
            ("TC7 fraction", br#"{"seq":1.0,"type":"x"}"#, None),
            ("TC8 seq not first", br#"{"type":"x","seq":4}"#, None),
            ("TC9 white space", br#"{ "seq":4}"#, None),
            ("TC10 has a ts", br#"{"seq":4,"ts":9}"#, None),
            ("TC11 an escape (a ts key may hide)", br#"{"seq":4,"\u0074s":9}"#, None),
            ("TC12 null", br#"{"seq":null,"type":"x"}"#, None),
        ];
        // `may_hold_ts`: a null ts is a key all the same.
        assert!(may_hold_ts(br#"{"seq":2,"type":"balance","ts":null}"#));
        assert!(!may_hold_ts(br#"{"seq":2,"type":"balance","account":7}"#));
        for (label, line, want) in table {
            assert_eq!(leading_seq(line), want, "{label}");
        }
    }

    #[test]
    fn stamp_clock_reads_once_per_every_lines() {
        let mut clock = StampClock::new();
        let first: Vec<u64> = (0..3).map(|_| clock.now(3)).collect();
        assert!(first.iter().all(|&t| t == first[0] && t > 0), "{first:?}");
        let mut digits = [0u8; 39];
        assert_eq!(clock.digits(), crate::fixed::u64_digits(first[0], &mut digits));
        // The fourth line takes a new reading (the clock moved on: ns since the epoch).
        thread::sleep(Duration::from_millis(2));
        let fourth = clock.now(3);
        assert!(fourth > first[0], "{fourth} after {first:?}");
        assert_eq!(clock.digits(), crate::fixed::u64_digits(fourth, &mut digits));
    }

    #[test]
    fn event_head_reads_type_and_seq() {
        let table: [(&str, &str, Option<&str>, Option<u64>); 5] = [
            (
                "TC1 liquidation with positions",
                r#"{"type":"liquidation","line":4,"seq":17,"account":9,"mode":"cross","symbol":null,"margin_balance":"-1","maintenance_margin":"2","positions":[{"symbol":"S1","size":"1","entry_price":"100","mark_price":"1","liquidation_price":"99"}],"latency_ns":5}"#,
                Some("liquidation"),
                Some(17),
            ),
            (
                "TC2 reject with a null seq and a quote in its reason",
                r#"{"type":"reject","line":2,"seq":null,"code":"malformed","reason":"not JSON: \"seq\":3"}"#,
                Some("reject"),
                None,
            ),
            (
                "TC3 gap: no seq",
                r#"{"type":"gap","line":1,"expected":1,"got":10}"#,
                Some("gap"),
                None,
            ),
            (
                "TC4 largest seq",
                r#"{"type":"account","seq":18446744073709551615}"#,
                Some("account"),
                Some(u64::MAX),
            ),
            ("TC5 not an event", "garbage", None, None),
        ];
        for (label, line, kind, seq) in table {
            let (k, s) = event_head(line.as_bytes());
            assert_eq!(k, kind.map(str::as_bytes), "{label}");
            assert_eq!(s, seq, "{label}");
        }
    }

    #[test]
    fn ts_ring_keeps_the_newest_seq_per_slot() {
        let ring = TsRing::new();
        ring.put(5, 100);
        assert_eq!(ring.get(5), Some(100));
        ring.put(5 + TS_RING as u64, 200);
        assert_eq!(ring.get(5), None, "overwritten by a later seq");
        assert_eq!(ring.get(5 + TS_RING as u64), Some(200));
        assert_eq!(ring.get(0), None);
    }

    #[test]
    fn pacer_spaces_lines() {
        let mut p = Pacer::new(None);
        assert!(p.wait().is_zero());
        let mut p = Pacer::new(Some(10.0));
        assert!(p.wait() <= Duration::from_millis(1), "the first line goes at once");
        let w = p.wait();
        assert!(w > Duration::from_millis(50) && w <= Duration::from_millis(100), "{w:?}");
    }
}
