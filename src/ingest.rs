//! From bytes to engine input: bounded line reading, then the per-line order of SPEC
//! section 6 (parse, duplicate check, gap, validation).
//!
//! This stage needs the config but no account state, so it can run on its own thread ahead
//! of the engine; its output, [`Ingested`], is what crosses to the engine.

use std::{
    io::{self, BufRead},
    sync::Arc,
    time::Instant,
};

use crate::{
    config::Config,
    protocol::{self, Command, Reject},
};

/// One line as read: its bytes, or only its length when it is over the limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Line<'a> {
    Bytes(&'a [u8]),
    TooLong(usize),
}

/// Reads newline-terminated lines without ever holding more than `max` bytes of one: the
/// rest of an over-long line is skipped as it streams past.
pub struct LineReader<R> {
    inner: R,
    buf: Vec<u8>,
    max: usize,
    /// The last line ended exactly where the input's buffered bytes did: the next read may
    /// block waiting for the sender.
    drained: bool,
}

impl<R: BufRead> LineReader<R> {
    pub fn new(inner: R, max: usize) -> Self {
        LineReader { inner, buf: Vec::with_capacity(4096), max, drained: false }
    }

    /// True when every byte the input has handed over so far is consumed, so reading the next
    /// line may wait on the sender. A pipeline hands its partial batch on at this point, so a
    /// slow live stream is never held back waiting for a batch to fill.
    pub fn input_drained(&self) -> bool {
        self.drained
    }

    /// True when a whole next line is already buffered, so reading it will not wait on the
    /// sender. A pipeline hands its partial batch on when this is false: lines already read
    /// must not wait behind a line the sender has only partly sent.
    pub fn next_line_buffered(&mut self) -> bool {
        if self.drained {
            return false;
        }
        // Not drained: bytes are buffered, so `fill_buf` returns them without reading.
        match self.inner.fill_buf() {
            Ok(available) => memchr::memchr(b'\n', available).is_some(),
            Err(_) => false,
        }
    }

    /// The next line without its `\n`; `None` at the end of input. A last line without a
    /// newline still counts.
    pub fn next_line(&mut self) -> io::Result<Option<Line<'_>>> {
        Ok(self.next_line_terminated()?.map(|(line, _)| line))
    }

    /// The next line without its `\n`, and whether it had one: false when it ran into the
    /// end of input. A network source drops such a cut-off line (the sender resends it,
    /// SPEC 9.1); a file's last line counts without its newline.
    pub fn next_line_terminated(&mut self) -> io::Result<Option<(Line<'_>, bool)>> {
        self.buf.clear();
        let mut terminated = false;
        let mut overflow: Option<usize> = None;
        let mut started = false;
        loop {
            let available = match self.inner.fill_buf() {
                Ok(b) => b,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            if available.is_empty() {
                self.drained = true;
                if !started {
                    return Ok(None);
                }
                break;
            }
            started = true;
            // memchr returns an index into `available`, so both slices are in bounds.
            let (chunk, used, done) = match memchr::memchr(b'\n', available) {
                Some(i) => (&available[..i], i + 1, true),
                None => (available, available.len(), false),
            };
            self.drained = used == available.len();
            // `buf` holds at most `max` bytes and a chunk is a slice in memory, so their sum
            // fits usize; an over-long line's length only saturates, past 2^64 bytes.
            match overflow.as_mut() {
                Some(n) => *n = n.saturating_add(chunk.len()),
                None if self.buf.len() + chunk.len() > self.max => {
                    overflow = Some(self.buf.len() + chunk.len());
                    self.buf.clear();
                }
                None => self.buf.extend_from_slice(chunk),
            }
            self.inner.consume(used);
            if done {
                terminated = true;
                break;
            }
        }
        let line = match overflow {
            Some(n) => Line::TooLong(n),
            None => Line::Bytes(&self.buf),
        };
        Ok(Some((line, terminated)))
    }
}

/// The sequencing state of SPEC section 6.
#[derive(Debug, Default, Clone)]
pub struct Sequencer {
    last: u64,
}

/// What the sequencer decides for a parsed message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    /// `seq <= last`: drop silently.
    Duplicate,
    /// Go on with this effective seq; `gap` is `(expected, got)` when seq skipped ahead.
    Next { seq: u64, gap: Option<(u64, u64)> },
    /// No `seq` after effective seq 2^64 − 1: there is none left to take, so the message is
    /// rejected `invalid` with `"seq": null` and the last effective seq stays.
    Exhausted,
}

impl Sequencer {
    /// A sequencer whose last effective seq is `last`: a stream resumed after it (a restored
    /// daemon, or `liqscan feed` resuming after a daemon's hello).
    pub fn resume(last: u64) -> Sequencer {
        Sequencer { last }
    }

    /// Decides a parsed message's fate by its `seq` field (SPEC section 6): a duplicate, the
    /// next effective seq (with the gap it skipped, if any), or, past 2^64 − 1 without a
    /// `seq`, none left to take.
    pub fn admit(&mut self, seq: Option<u64>) -> Admit {
        match seq {
            Some(s) if s <= self.last => Admit::Duplicate,
            Some(s) => {
                // `s > last`, so `last + 1` cannot overflow here.
                let expected = self.last + 1;
                self.last = s;
                Admit::Next { seq: s, gap: (s > expected).then_some((expected, s)) }
            }
            None => match self.last.checked_add(1) {
                Some(next) => {
                    self.last = next;
                    Admit::Next { seq: next, gap: None }
                }
                None => Admit::Exhausted,
            },
        }
    }

    pub fn last(&self) -> u64 {
        self.last
    }
}

/// A message its sender could not pass on whole, for the receiver to reject as one daemon
/// on the whole stream would, with `"seq": null` (SPEC section 10: a shard's stand-in).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// Over 1 MiB (SPEC section 1): this many bytes.
    TooLong(usize),
    /// No `seq`, after effective seq 2^64 − 1: none left to take (SPEC section 6).
    NoSeqLeft,
}

/// The reason of the `invalid` reject of a message without `seq` when none is left.
const NO_SEQ_LEFT: &str = "no seq left to take: the last effective seq is 18446744073709551615 (2^64 - 1), so a message without seq has none to take";

/// What a line became.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Empty or white space only: skipped, but it counted as a line.
    Blank,
    /// A `seq` at or below the last effective seq.
    Duplicate,
    /// Rejected before reaching the engine; `seq` is `None` when the line consumed none.
    Rejected { seq: Option<u64>, reject: Reject },
    /// Valid for the config: the engine applies it (and may still reject it).
    Command { seq: u64, cmd: Command },
}

/// One line after ingest.
#[derive(Debug, Clone)]
pub struct Ingested {
    pub line: u64,
    /// `(expected, got)` of a gap event to emit before the outcome.
    pub gap: Option<(u64, u64)>,
    pub outcome: Outcome,
    /// When the line was read: the start of every latency this line causes.
    pub read_at: Instant,
    /// The sender's `ts` (ns since the epoch), when present and well-typed.
    pub ts: Option<u64>,
    /// A shard's message (SPEC 10, [`Ingest::logged`]): its own `seq` field, when present.
    /// Events of the line carry it. `None` on a plain stream.
    pub origin_seq: Option<u64>,
}

impl Ingested {
    /// Line `line`, read at `read_at`, blank until ingest says otherwise.
    fn at(line: u64, read_at: Instant) -> Ingested {
        Ingested { line, gap: None, outcome: Outcome::Blank, read_at, ts: None, origin_seq: None }
    }
}

/// The ingest stage: line numbering, parsing, sequencing and validation.
pub struct Ingest {
    cfg: Arc<Config>,
    seq: Sequencer,
    line: u64,
}

impl Ingest {
    pub fn new(cfg: Arc<Config>) -> Ingest {
        Ingest { cfg, seq: Sequencer::default(), line: 0 }
    }

    /// An ingest stage resuming after effective seq `last` (a daemon restored from a
    /// snapshot, SPEC 9.4): what the engine resends up to `last` is a duplicate.
    pub fn resume(cfg: Arc<Config>, last: u64) -> Ingest {
        Ingest { cfg, seq: Sequencer::resume(last), line: 0 }
    }

    /// A new connection of the same stream: line numbers restart at 1, the seq state carries
    /// over (SPEC section 9.1).
    pub fn new_connection(&mut self) {
        self.line = 0;
    }

    /// The last effective seq admitted (0 before any): the `last_seq` of a `hello`.
    pub fn last_seq(&self) -> u64 {
        self.seq.last()
    }

    /// Ingests the next line of the stream.
    pub fn line(&mut self, line: Line<'_>, read_at: Instant) -> Ingested {
        // Each line is at least one byte read (its newline) or the last one: 2^64 of them
        // cannot be read in the life of a process.
        self.line += 1;
        let mut ingested = Ingested::at(self.line, read_at);
        let Some(parsed) = parse(line, &mut ingested) else { return ingested };
        let seq = match self.seq.admit(parsed.seq) {
            Admit::Duplicate => {
                ingested.outcome = Outcome::Duplicate;
                return ingested;
            }
            Admit::Exhausted => {
                ingested.outcome =
                    Outcome::Rejected { seq: None, reject: Reject::invalid(NO_SEQ_LEFT) };
                return ingested;
            }
            Admit::Next { seq, gap } => {
                ingested.gap = gap;
                seq
            }
        };
        self.validate(&parsed, seq, ingested)
    }

    /// Ingests the message at sequence `seq` of a sequenced log (SPEC section 10: a shard's
    /// JetStream stream). The log's sequence is the message's line number and its effective
    /// seq, so the duplicate and gap rules of section 6 apply to it; the message's own `seq`
    /// field, when it has one, becomes [`Ingested::origin_seq`]. Every message past the
    /// duplicate check takes its seq, a blank or malformed one too (whose reject still says
    /// `"seq": null`, as section 7 has it), so the log's next message is no gap.
    /// `refused`: a stand-in for a message its sender could not send whole, rejected as
    /// such.
    pub fn logged(
        &mut self,
        seq: u64,
        line: Line<'_>,
        refused: Option<Refused>,
        read_at: Instant,
    ) -> Ingested {
        self.line = seq;
        let mut ingested = Ingested::at(seq, read_at);
        match self.seq.admit(Some(seq)) {
            Admit::Duplicate => {
                ingested.outcome = Outcome::Duplicate;
                return ingested;
            }
            Admit::Next { gap, .. } => ingested.gap = gap,
            Admit::Exhausted => unreachable!("a message with a seq always has one to take"),
        }
        let line = match refused {
            None => line,
            Some(Refused::TooLong(n)) => Line::TooLong(n),
            Some(Refused::NoSeqLeft) => {
                ingested.outcome =
                    Outcome::Rejected { seq: None, reject: Reject::invalid(NO_SEQ_LEFT) };
                return ingested;
            }
        };
        let Some(parsed) = parse(line, &mut ingested) else { return ingested };
        ingested.origin_seq = parsed.seq;
        self.validate(&parsed, seq, ingested)
    }

    /// The last step of a line with effective seq `seq`: its `ts`, and validation.
    fn validate(
        &self,
        parsed: &protocol::Parsed<'_>,
        seq: u64,
        mut ingested: Ingested,
    ) -> Ingested {
        ingested.ts = parsed.envelope.ts();
        ingested.outcome = match protocol::validate(&parsed.envelope, &self.cfg) {
            Ok(cmd) => Outcome::Command { seq, cmd },
            Err(reject) => Outcome::Rejected { seq: Some(seq), reject },
        };
        ingested
    }
}

/// A line's envelope; `None` when the line ends here (blank, too long, malformed: its
/// outcome set).
fn parse<'b>(line: Line<'b>, ingested: &mut Ingested) -> Option<protocol::Parsed<'b>> {
    let bytes = match line {
        Line::TooLong(n) => {
            ingested.outcome = Outcome::Rejected { seq: None, reject: protocol::too_long(n) };
            return None;
        }
        Line::Bytes(b) => b,
    };
    if bytes.iter().all(|b| matches!(b, b' ' | b'\t' | b'\r')) {
        return None;
    }
    match protocol::parse_envelope(bytes) {
        Ok(p) => Some(p),
        Err(reject) => {
            ingested.outcome = Outcome::Rejected { seq: None, reject };
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_reader_streams_and_bounds_lines() {
        let mut input = b"a\n\nbb\r\n".to_vec();
        input.extend(vec![b'x'; 100]);
        input.extend(b"\nlast");
        let mut r = LineReader::new(io::BufReader::with_capacity(8, &input[..]), 10);
        assert_eq!(r.next_line_terminated().unwrap(), Some((Line::Bytes(b"a"), true)));
        assert!(!r.input_drained(), "more bytes are buffered");
        assert!(r.next_line_buffered(), "the blank line is buffered whole");
        assert_eq!(r.next_line().unwrap(), Some(Line::Bytes(b"")));
        assert_eq!(r.next_line().unwrap(), Some(Line::Bytes(b"bb\r")));
        assert!(!r.next_line_buffered(), "only the start of the long line is buffered");
        assert_eq!(r.next_line().unwrap(), Some(Line::TooLong(100)));
        let last = r.next_line_terminated().unwrap();
        assert_eq!(last, Some((Line::Bytes(b"last"), false)), "it ran into the end of input");
        assert!(r.input_drained());
        assert_eq!(r.next_line().unwrap(), None);
    }

    #[test]
    fn sequencing_rules() {
        let mut s = Sequencer::default();
        // (label, seq field, expected decision)
        let table = [
            ("TC1 implicit first", None, Admit::Next { seq: 1, gap: None }),
            ("TC2 explicit next", Some(2), Admit::Next { seq: 2, gap: None }),
            ("TC3 duplicate", Some(2), Admit::Duplicate),
            ("TC4 older", Some(1), Admit::Duplicate),
            ("TC5 gap", Some(5), Admit::Next { seq: 5, gap: Some((3, 5)) }),
            ("TC6 implicit after gap", None, Admit::Next { seq: 6, gap: None }),
        ];
        for (label, seq, want) in table {
            assert_eq!(s.admit(seq), want, "{label}");
        }
    }

    /// SPEC section 6 at the top of the range: after 2^64 − 1 a message without `seq` has
    /// none to take; it does not wrap to 0 or stick at the maximum, and the last seq stays.
    #[test]
    fn sequencing_at_the_end_of_the_range() {
        const MAX: u64 = u64::MAX;
        let mut s = Sequencer::default();
        // (label, seq field, expected decision, last effective seq after it)
        let table = [
            (
                "TC1 two below the top",
                Some(MAX - 2),
                Admit::Next { seq: MAX - 2, gap: Some((1, MAX - 2)) },
                MAX - 2,
            ),
            ("TC2 implicit next", None, Admit::Next { seq: MAX - 1, gap: None }, MAX - 1),
            ("TC3 implicit takes the last one", None, Admit::Next { seq: MAX, gap: None }, MAX),
            ("TC4 implicit past the top", None, Admit::Exhausted, MAX),
            ("TC5 again", None, Admit::Exhausted, MAX),
            ("TC6 explicit top is a duplicate", Some(MAX), Admit::Duplicate, MAX),
            ("TC7 explicit lower is a duplicate", Some(7), Admit::Duplicate, MAX),
        ];
        for (label, seq, want, last) in table {
            assert_eq!(s.admit(seq), want, "{label}");
            assert_eq!(s.last(), last, "{label}");
        }
        // An explicit jump straight to the top, then an implicit message.
        let mut s = Sequencer::default();
        assert_eq!(s.admit(Some(MAX)), Admit::Next { seq: MAX, gap: Some((1, MAX)) });
        assert_eq!(s.admit(None), Admit::Exhausted);
    }

    /// The ingest stage turns an exhausted seq into an `invalid` reject that consumed no seq
    /// (`"seq": null`), and the line still counts.
    #[test]
    fn ingest_rejects_a_message_without_seq_past_the_top() {
        let cfg = Arc::new(crate::synth::config(1));
        let mut ingest = Ingest::new(cfg);
        let now = Instant::now();
        let top = format!(r#"{{"type":"query","account":1,"seq":{}}}"#, u64::MAX);
        let first = ingest.line(Line::Bytes(top.as_bytes()), now);
        assert!(
            matches!(first.outcome, Outcome::Command { seq: u64::MAX, .. }),
            "{:?}",
            first.outcome
        );
        let implicit = ingest.line(Line::Bytes(br#"{"type":"query","account":1}"#), now);
        assert_eq!(implicit.line, 2);
        match implicit.outcome {
            Outcome::Rejected { seq: None, reject } => {
                assert_eq!(reject.code, crate::protocol::RejectCode::Invalid);
            }
            other => panic!("want an invalid reject without seq, got {other:?}"),
        }
        // Malformed and blank lines are unaffected; an explicit top seq is a duplicate.
        let dup = ingest.line(Line::Bytes(top.as_bytes()), now);
        assert_eq!(dup.outcome, Outcome::Duplicate);
    }

    /// A log's sequence is the line number and the effective seq: every message past the
    /// duplicate check takes it, a malformed or blank one too (so the next is no gap), the
    /// message's own seq becomes `origin_seq`, and the duplicate and gap rules apply to the
    /// log's sequence, not to the message's seq.
    #[test]
    fn a_logged_message_takes_the_logs_sequence_and_keeps_its_own_as_origin() {
        let cfg = Arc::new(crate::synth::config(1));
        let mut ingest = Ingest::resume(cfg, 4);
        let now = Instant::now();
        let q = |seq: &str| format!(r#"{{"type":"query","account":1{seq}}}"#);
        let old = ingest.logged(4, Line::Bytes(q("").as_bytes()), None, now);
        assert_eq!(old.outcome, Outcome::Duplicate, "at or below the last: a duplicate");
        let own = ingest.logged(5, Line::Bytes(q(r#","seq":900"#).as_bytes()), None, now);
        assert_eq!((own.line, own.origin_seq, own.gap), (5, Some(900), None));
        assert!(matches!(own.outcome, Outcome::Command { seq: 5, .. }), "{:?}", own.outcome);
        // Its own seq below the last one's counts for nothing: the log orders.
        let lower = ingest.logged(6, Line::Bytes(q(r#","seq":3"#).as_bytes()), None, now);
        assert!(matches!(lower.outcome, Outcome::Command { seq: 6, .. }), "{:?}", lower.outcome);
        assert_eq!(lower.origin_seq, Some(3));
        let bad = ingest.logged(7, Line::Bytes(b"{nope"), None, now);
        assert!(matches!(bad.outcome, Outcome::Rejected { seq: None, .. }), "{:?}", bad.outcome);
        assert_eq!(ingest.last_seq(), 7, "the malformed message took its seq");
        let blank = ingest.logged(8, Line::Bytes(b"  "), None, now);
        assert_eq!((blank.outcome, ingest.last_seq()), (Outcome::Blank, 8));
        let cut = ingest.logged(9, Line::TooLong(2 << 20), None, now);
        assert!(matches!(cut.outcome, Outcome::Rejected { seq: None, .. }));
        let stand_in = ingest.logged(10, Line::Bytes(b""), Some(Refused::NoSeqLeft), now);
        assert!(matches!(stand_in.outcome, Outcome::Rejected { seq: None, .. }));
        assert_eq!(ingest.last_seq(), 10);
        let ahead = ingest.logged(12, Line::Bytes(q("").as_bytes()), None, now);
        assert_eq!((ahead.gap, ahead.origin_seq), (Some((11, 12)), None));
        assert!(matches!(ahead.outcome, Outcome::Command { seq: 12, .. }));
    }
}
