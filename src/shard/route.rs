//! Where each line of an engine stream goes among N shards (SPEC section 10), and the id
//! under which it is stored there. Pure: no I/O, no async.
//!
//! A message that names an `account` goes to shard `account mod N`; `mark`, `marks` and
//! `funding` go to every shard; a line that names no account (malformed, an unknown type, an
//! account that is not an integer) goes to shard 0, which rejects it. Blank lines carry no
//! message and go nowhere. The publisher runs the sequencing of SPEC section 6 itself: a
//! duplicate (`seq` at or below the last effective seq) is dropped there, as one daemon on
//! the whole stream would drop it, so that a shard never applies a message the whole
//! stream's daemon ignored.

use crate::{
    ingest::{Admit, Line, Refused, Sequencer},
    protocol,
};

/// Where a line goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// To this shard only.
    One(u32),
    /// To every shard (`mark`, `marks`, `funding`).
    All,
}

/// A line's place in the stream, the same every time the same input is read. It orders
/// the stream, and its text is the line's `Nats-Msg-Id`, so a resent line is not stored
/// twice.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Key {
    /// The line's effective seq (SPEC section 6); for a line that takes none (malformed, no
    /// seq left), the last one before it.
    pub seq: u64,
    /// 0 for a line with its own effective seq; for one without, its count among such lines
    /// since `seq` (from 1).
    pub seqless: u64,
}

impl Key {
    /// `"812"`, or `"812.3"` for the third line without a seq of its own after 812.
    pub fn id(&self) -> String {
        match self.seqless {
            0 => self.seq.to_string(),
            k => format!("{}.{k}", self.seq),
        }
    }

    /// Reads [`Key::id`] back; `None` for any other text.
    pub fn parse(id: &str) -> Option<Key> {
        let (seq, seqless) = match id.split_once('.') {
            Some((a, k)) => (a.parse().ok()?, k.parse().ok().filter(|&k| k > 0)?),
            None => (id.parse().ok()?, 0),
        };
        Some(Key { seq, seqless })
    }
}

/// What to do with one line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Nothing to send: a blank line.
    Blank,
    /// A duplicate of SPEC section 6: not sent.
    Duplicate,
    /// Send it under `key` to `route`; with `refused`, as a stand-in that the shard rejects
    /// (the line itself is not sent).
    Send { key: Key, route: Route, refused: Option<Refused> },
}

/// `too-long BYTES` or `no-seq-left`: the [`super::REFUSED_HEADER`] of a stand-in.
pub fn refused_header(refused: Refused) -> String {
    match refused {
        Refused::TooLong(n) => format!("too-long {n}"),
        Refused::NoSeqLeft => "no-seq-left".into(),
    }
}

/// Reads [`refused_header`] back.
pub fn parse_refused_header(text: &str) -> Option<Refused> {
    match text.split_once(' ') {
        Some(("too-long", n)) => n.parse().ok().map(Refused::TooLong),
        None if text == "no-seq-left" => Some(Refused::NoSeqLeft),
        _ => None,
    }
}

/// The router of one stream into `shards` shards.
#[derive(Debug)]
pub struct Router {
    shards: u32,
    seq: Sequencer,
    seqless: u64,
    gaps: u64,
}

impl Router {
    /// A router into `shards` (at least 1) shards, from the start of a stream.
    pub fn new(shards: u32) -> Router {
        assert!(shards >= 1, "at least one shard");
        Router { shards, seq: Sequencer::default(), seqless: 0, gaps: 0 }
    }

    /// Decides the next line of the stream.
    pub fn line(&mut self, line: Line<'_>) -> Decision {
        let bytes = match line {
            Line::TooLong(n) => return self.seqless(Some(Refused::TooLong(n))),
            Line::Bytes(b) => b,
        };
        if bytes.iter().all(|b| matches!(b, b' ' | b'\t' | b'\r')) {
            return Decision::Blank;
        }
        let Ok(parsed) = protocol::parse_envelope(bytes) else { return self.seqless(None) };
        let seq = match self.seq.admit(parsed.seq) {
            Admit::Duplicate => return Decision::Duplicate,
            Admit::Exhausted => return self.seqless(Some(Refused::NoSeqLeft)),
            Admit::Next { seq, gap } => {
                self.gaps += u64::from(gap.is_some());
                seq
            }
        };
        self.seqless = 0;
        let key = Key { seq, seqless: 0 };
        let ty = protocol::string_field(parsed.envelope.ty, "type");
        let shard = match ty.as_deref() {
            Ok("mark" | "marks" | "funding") => {
                return Decision::Send { key, route: Route::All, refused: None };
            }
            Ok(ty) if protocol::ACCOUNT_MESSAGE_TYPES.contains(&ty) => parsed
                .envelope
                .account
                .and_then(protocol::json_uint)
                .map_or(0, |account| (account % u64::from(self.shards)) as u32),
            // No type, or one no shard knows: shard 0 rejects it.
            _ => 0,
        };
        Decision::Send { key, route: Route::One(shard), refused: None }
    }

    /// Gaps of SPEC section 6 in the stream so far (a `seq` above the last + 1). A shard's
    /// seq is its stream's, which has none: they are reported here, not as shard events.
    pub fn gaps(&self) -> u64 {
        self.gaps
    }

    /// A line that takes no seq: to shard 0, the next key after the last.
    fn seqless(&mut self, refused: Option<Refused>) -> Decision {
        self.seqless += 1;
        let key = Key { seq: self.seq.last(), seqless: self.seqless };
        Decision::Send { key, route: Route::One(0), refused }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(r: &mut Router, line: &str) -> Decision {
        r.line(Line::Bytes(line.as_bytes()))
    }

    fn send(seq: u64, seqless: u64, route: Route) -> Decision {
        Decision::Send { key: Key { seq, seqless }, route, refused: None }
    }

    #[test]
    fn accounts_go_to_their_shard_marks_to_all_the_rest_seqless() {
        let mut r = Router::new(3);
        let pos = r#"{"type":"position","account":7,"symbol":"S","size":"1","entry_price":"1"}"#;
        assert_eq!(route(&mut r, pos), send(1, 0, Route::One(1)));
        assert_eq!(
            route(&mut r, r#"{"type":"mark","symbol":"S","price":"2"}"#),
            send(2, 0, Route::All)
        );
        assert_eq!(route(&mut r, r#"{"type":"marks","prices":{}}"#), send(3, 0, Route::All));
        assert_eq!(
            route(&mut r, r#"{"type":"funding","symbol":"S","rate":"0"}"#),
            send(4, 0, Route::All)
        );
        assert_eq!(route(&mut r, r#"{"type":"query","account":9}"#), send(5, 0, Route::One(0)));
        // Names no account that is an integer, or none at all: shard 0 rejects it.
        assert_eq!(route(&mut r, r#"{"type":"balance","account":"x"}"#), send(6, 0, Route::One(0)));
        assert_eq!(route(&mut r, r#"{"type":"nope","seq":10}"#), send(10, 0, Route::One(0)));
        // An unknown type names no account, whatever its fields: shard 0.
        assert_eq!(route(&mut r, r#"{"type":"teleport","account":1}"#), send(11, 0, Route::One(0)));
        // The type is read as validation reads it, escapes and all.
        assert_eq!(route(&mut r, r#"{"type":"m\u0061rk","symbol":"S"}"#), send(12, 0, Route::All));
        assert_eq!(route(&mut r, r#"{"type":"orders","account":8}"#), send(13, 0, Route::One(2)));
        assert_eq!(route(&mut r, "   "), Decision::Blank);
    }

    #[test]
    fn duplicates_are_dropped_and_seqless_lines_numbered_after_the_last_seq() {
        let mut r = Router::new(2);
        assert_eq!(
            route(&mut r, r#"{"type":"query","account":3,"seq":5}"#),
            send(5, 0, Route::One(1))
        );
        assert_eq!(route(&mut r, r#"{"type":"query","account":3,"seq":5}"#), Decision::Duplicate);
        assert_eq!(route(&mut r, r#"{"type":"query","account":3,"seq":4}"#), Decision::Duplicate);
        assert_eq!(r.gaps(), 1, "1 to 5 skipped 1..=4");
        assert_eq!(route(&mut r, "not json"), send(5, 1, Route::One(0)));
        let too_long = Decision::Send {
            key: Key { seq: 5, seqless: 2 },
            route: Route::One(0),
            refused: Some(Refused::TooLong(2 << 20)),
        };
        assert_eq!(r.line(Line::TooLong(2 << 20)), too_long);
        assert_eq!(route(&mut r, r#"{"type":"query","account":4}"#), send(6, 0, Route::One(0)));
        assert_eq!(route(&mut r, "{"), send(6, 1, Route::One(0)));
    }

    #[test]
    fn a_line_without_seq_after_the_last_seq_goes_to_shard_0_refused() {
        let mut r = Router::new(2);
        let top = format!(r#"{{"type":"query","account":3,"seq":{}}}"#, u64::MAX);
        assert_eq!(route(&mut r, &top), send(u64::MAX, 0, Route::One(1)));
        let refused = Decision::Send {
            key: Key { seq: u64::MAX, seqless: 1 },
            route: Route::One(0),
            refused: Some(Refused::NoSeqLeft),
        };
        assert_eq!(route(&mut r, r#"{"type":"query","account":3}"#), refused);
    }

    #[test]
    fn keys_order_the_stream_and_read_back_from_their_ids() {
        let keys = [
            Key { seq: 0, seqless: 1 },
            Key { seq: 5, seqless: 0 },
            Key { seq: 5, seqless: 2 },
            Key { seq: 12, seqless: 0 },
        ];
        assert!(keys.windows(2).all(|w| w[0] < w[1]));
        for k in keys {
            assert_eq!(Key::parse(&k.id()), Some(k), "{}", k.id());
        }
        assert_eq!(Key::parse("5.0"), None);
        assert_eq!(Key::parse("x"), None);
        assert_eq!(Key::parse("5."), None);
        for refused in [Refused::TooLong(1 << 21), Refused::NoSeqLeft] {
            assert_eq!(parse_refused_header(&refused_header(refused)), Some(refused));
        }
        assert_eq!(parse_refused_header("too-long x"), None);
    }

    /// The list of types that name an account agrees with validation: on a stream of every
    /// type, a valid message has an account exactly when its type is in the list.
    #[test]
    fn the_types_that_name_an_account_are_those_whose_commands_have_one() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/gen/");
        let cfg =
            crate::config::Config::load(std::path::Path::new(&format!("{dir}faults.config.json")))
                .unwrap();
        let input = std::fs::read(format!("{dir}faults.ndjson")).unwrap();
        let mut seen = std::collections::BTreeSet::new();
        for line in input.split(|&b| b == b'\n') {
            let Ok(parsed) = protocol::parse_envelope(line) else { continue };
            let Ok(cmd) = protocol::validate(&parsed.envelope, &cfg) else { continue };
            let ty = protocol::string_field(parsed.envelope.ty, "type").unwrap().into_owned();
            let listed = protocol::ACCOUNT_MESSAGE_TYPES.contains(&ty.as_str());
            assert_eq!(cmd.account().is_some(), listed, "{ty}");
            seen.insert(ty);
        }
        assert!(seen.len() >= 10, "the stream has nearly every type: {seen:?}");
    }
}
