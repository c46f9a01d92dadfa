//! The wire protocol of SPEC sections 5 and 7: input lines to [`Command`]s, and [`Event`]s
//! to output lines.
//!
//! A line goes through two steps here, because the SPEC orders the sequencing rules between
//! them (section 6):
//! 1. [`parse_envelope`]: UTF-8, JSON object, no duplicate keys, a well-typed `seq`. A failure
//!    is `malformed` (or `invalid` for the seq) and consumes no seq. The common line (a flat
//!    object of plain strings and numbers) is read by a short scanner; every other line, and
//!    every error, by serde_json, whose messages are the malformed reasons.
//! 2. [`validate`]: every field rule that needs only the config (types, section-1 limits,
//!    known symbol, tick and step multiples). A failure consumes the seq.
//!
//! Rules that need account state (`wrong_mode`, `mode_locked`, `leverage_exceeds_max`,
//! `insufficient_margin`, `no_mark`) belong to the engines.

use std::{borrow::Cow, fmt, fmt::Write as _, sync::Arc};

use serde::{
    Deserialize, Deserializer,
    de::{MapAccess, Visitor},
};
use serde_json::value::RawValue;

use crate::{
    config::{Config, Mode, SymbolIdx},
    fixed::{D8, SCALE_D8, parse_decimal},
};

/// The longest line accepted, in bytes (SPEC section 5: "a line over 1 MiB" is malformed).
pub const MAX_LINE_BYTES: usize = 1 << 20;

/// The reject codes of SPEC section 5.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RejectCode {
    Malformed,
    Invalid,
    UnknownSymbol,
    ModeLocked,
    LeverageExceedsMax,
    WrongMode,
    InsufficientMargin,
    NoMark,
}

impl RejectCode {
    pub fn as_str(self) -> &'static str {
        match self {
            RejectCode::Malformed => "malformed",
            RejectCode::Invalid => "invalid",
            RejectCode::UnknownSymbol => "unknown_symbol",
            RejectCode::ModeLocked => "mode_locked",
            RejectCode::LeverageExceedsMax => "leverage_exceeds_max",
            RejectCode::WrongMode => "wrong_mode",
            RejectCode::InsufficientMargin => "insufficient_margin",
            RejectCode::NoMark => "no_mark",
        }
    }
}

/// A rejected message: its code and the human reason that goes into the `reject` event.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}: {reason}", code.as_str())]
pub struct Reject {
    pub code: RejectCode,
    pub reason: String,
}

impl Reject {
    pub fn new(code: RejectCode, reason: impl Into<String>) -> Reject {
        Reject { code, reason: reason.into() }
    }

    pub fn malformed(reason: impl Into<String>) -> Reject {
        Reject::new(RejectCode::Malformed, reason)
    }

    pub fn invalid(reason: impl Into<String>) -> Reject {
        Reject::new(RejectCode::Invalid, reason)
    }
}

/// A JSON value's text exactly as the line has it: a string with its quotes and escapes, a
/// number token, an object. Read by [`validate`] once the message type says how.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Raw<'a>(&'a str);

impl<'a> Raw<'a> {
    /// The value's JSON text.
    pub fn get(self) -> &'a str {
        self.0
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Raw<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        <&'de RawValue>::deserialize(d).map(|raw| Raw(raw.get()))
    }
}

/// Every field any message type may carry, each kept as raw JSON text until the message type
/// says how to read it. Unknown fields are ignored; `null` counts as absent.
#[derive(Debug, Default, PartialEq, Eq, Deserialize)]
pub struct Envelope<'a> {
    #[serde(rename = "type", borrow, default)]
    pub ty: Option<Raw<'a>>,
    #[serde(borrow, default)]
    pub seq: Option<Raw<'a>>,
    #[serde(borrow, default)]
    pub ts: Option<Raw<'a>>,
    #[serde(borrow, default)]
    pub symbol: Option<Raw<'a>>,
    #[serde(borrow, default)]
    pub price: Option<Raw<'a>>,
    #[serde(borrow, default)]
    pub prices: Option<Raw<'a>>,
    #[serde(borrow, default)]
    pub account: Option<Raw<'a>>,
    #[serde(borrow, default)]
    pub wallet: Option<Raw<'a>>,
    #[serde(borrow, default)]
    pub amount: Option<Raw<'a>>,
    #[serde(borrow, default)]
    pub size: Option<Raw<'a>>,
    #[serde(borrow, default)]
    pub entry_price: Option<Raw<'a>>,
    #[serde(borrow, default)]
    pub isolated_margin: Option<Raw<'a>>,
    #[serde(borrow, default)]
    pub mode: Option<Raw<'a>>,
    #[serde(borrow, default)]
    pub leverage: Option<Raw<'a>>,
    #[serde(borrow, default)]
    pub open_orders: Option<Raw<'a>>,
    #[serde(borrow, default)]
    pub order_margin: Option<Raw<'a>>,
    #[serde(borrow, default)]
    pub rate: Option<Raw<'a>>,
}

impl Envelope<'_> {
    /// The sender's `ts`, when present and well-typed (ill-typed ones fail [`validate`]).
    pub fn ts(&self) -> Option<u64> {
        self.ts.and_then(json_uint)
    }
}

/// What step 1 yields: the envelope and its sender seq, if any.
#[derive(Debug)]
pub struct Parsed<'a> {
    pub envelope: Envelope<'a>,
    pub seq: Option<u64>,
}

/// Step 1: bytes to an envelope with a well-typed seq. Every error here has `seq: null`.
pub fn parse_envelope(line: &[u8]) -> Result<Parsed<'_>, Reject> {
    if line.len() > MAX_LINE_BYTES {
        return Err(too_long(line.len()));
    }
    let text = std::str::from_utf8(line).map_err(|e| {
        Reject::malformed(format!("not UTF-8 (bad byte at offset {})", e.valid_up_to()))
    })?;
    let first = text.trim_start_matches([' ', '\t', '\r', '\n']).as_bytes().first();
    if first != Some(&b'{') {
        // Checked first: serde would read a JSON array positionally into the struct.
        return Err(match serde_json::from_str::<serde::de::IgnoredAny>(text) {
            Ok(_) => Reject::malformed("not a JSON object"),
            Err(e) => Reject::malformed(format!("not JSON: {e}")),
        });
    }
    // The common line (a flat object of plain strings and well-formed numbers) is read by a
    // short scanner; anything else, every error included, goes through serde_json, whose
    // messages are the reasons of the malformed rejects.
    let envelope = match fast_envelope(text) {
        Some(envelope) => envelope,
        None => serde_envelope(text)?,
    };
    let seq = match envelope.seq {
        None => None,
        Some(raw) => match json_uint(raw) {
            Some(n) if n > 0 => Some(n),
            _ => {
                return Err(Reject::invalid(format!(
                    "seq {} is not an integer in 1..=2^64-1",
                    clip(raw.get())
                )));
            }
        },
    };
    Ok(Parsed { envelope, seq })
}

/// For the fuzz targets (`fuzz/checks.rs`): `Err` with the line when the short scanner took
/// a line and read it otherwise than serde_json does (or took one serde refuses). A line the
/// scanner leaves goes to serde itself, so it agrees by construction.
#[doc(hidden)]
pub fn scanner_disagrees_with_serde(line: &[u8]) -> Result<(), String> {
    let Ok(text) = std::str::from_utf8(line) else { return Ok(()) };
    let Some(fast) = fast_envelope(text) else { return Ok(()) };
    match serde_envelope(text) {
        Ok(slow) if slow == fast => Ok(()),
        Ok(slow) => Err(format!("{text:?}: scanner {fast:?}, serde {slow:?}")),
        Err(e) => Err(format!("{text:?}: the scanner took a line serde refuses: {}", e.reason)),
    }
}

/// The envelope by serde_json: every line the scanner leaves, with serde's error messages.
fn serde_envelope(text: &str) -> Result<Envelope<'_>, Reject> {
    serde_json::from_str(text).map_err(|e| {
        if e.classify() == serde_json::error::Category::Data {
            Reject::malformed(format!("bad JSON object: {e}"))
        } else {
            Reject::malformed(format!("not JSON: {e}"))
        }
    })
}

/// The envelope of a line that is one flat JSON object whose keys and string values have no
/// escapes or control characters, whose values are strings, well-formed numbers, `true`,
/// `false` or `null`, and which names no envelope field twice; `None` for anything else
/// (nested values, escapes, any error), which serde_json then reads. On the lines it accepts
/// it yields what serde_json yields (the test `fast_envelope_equals_serde` checks it): the
/// same raw text per field, `null` as absent, unknown fields ignored.
fn fast_envelope(text: &str) -> Option<Envelope<'_>> {
    let mut scan = Scan { b: text.as_bytes(), at: 0 };
    let mut env = Envelope::default();
    let mut seen = 0u32;
    scan.ws();
    scan.eat(b'{')?;
    scan.ws();
    if scan.eat(b'}').is_none() {
        loop {
            let key = scan.plain_string()?;
            scan.ws();
            scan.eat(b':')?;
            scan.ws();
            let value = scan.scalar()?;
            let raw = &text[value.0..value.1];
            // The key's span includes its quotes; a plain string's bytes are its text.
            let slot = match &text[key.0 + 1..key.1 - 1] {
                "type" => Some((0, &mut env.ty)),
                "seq" => Some((1, &mut env.seq)),
                "ts" => Some((2, &mut env.ts)),
                "symbol" => Some((3, &mut env.symbol)),
                "price" => Some((4, &mut env.price)),
                "prices" => Some((5, &mut env.prices)),
                "account" => Some((6, &mut env.account)),
                "wallet" => Some((7, &mut env.wallet)),
                "amount" => Some((8, &mut env.amount)),
                "size" => Some((9, &mut env.size)),
                "entry_price" => Some((10, &mut env.entry_price)),
                "isolated_margin" => Some((11, &mut env.isolated_margin)),
                "mode" => Some((12, &mut env.mode)),
                "leverage" => Some((13, &mut env.leverage)),
                "open_orders" => Some((14, &mut env.open_orders)),
                "order_margin" => Some((15, &mut env.order_margin)),
                "rate" => Some((16, &mut env.rate)),
                _ => None,
            };
            if let Some((bit, field)) = slot {
                if seen & (1 << bit) != 0 {
                    return None; // a duplicate field: serde's error names it
                }
                seen |= 1 << bit;
                *field = (raw != "null").then_some(Raw(raw));
            }
            scan.ws();
            if scan.eat(b',').is_some() {
                scan.ws();
                continue;
            }
            scan.eat(b'}')?;
            break;
        }
    }
    scan.ws();
    (scan.at == scan.b.len()).then_some(env)
}

/// A cursor over a line for [`fast_envelope`]; every method fails (`None`) rather than judge
/// anything it does not know to be well-formed JSON.
struct Scan<'a> {
    b: &'a [u8],
    at: usize,
}

impl Scan<'_> {
    fn peek(&self) -> Option<u8> {
        self.b.get(self.at).copied()
    }

    /// Skips JSON white space.
    fn ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.at += 1;
        }
    }

    fn eat(&mut self, c: u8) -> Option<()> {
        (self.peek()? == c).then(|| self.at += 1)
    }

    fn digits(&mut self) -> usize {
        let n = leading_digits(&self.b[self.at..]);
        self.at += n;
        n
    }

    /// A string without escapes or control characters: its span, quotes included.
    fn plain_string(&mut self) -> Option<(usize, usize)> {
        let from = self.at;
        self.eat(b'"')?;
        // Strings here are short (names, decimals): a word at a time beats a memchr set-up.
        self.at += plain_bytes(&self.b[self.at..]);
        self.eat(b'"')?;
        Some((from, self.at))
    }

    /// A number by the JSON grammar, `-? (0 | [1-9][0-9]*) (. [0-9]+)? ([eE] [+-]? [0-9]+)?`:
    /// its span.
    fn number(&mut self) -> Option<(usize, usize)> {
        let from = self.at;
        let _ = self.eat(b'-');
        match self.peek()? {
            b'0' => self.at += 1,
            b'1'..=b'9' => {
                self.digits();
            }
            _ => return None,
        }
        if self.eat(b'.').is_some() && self.digits() == 0 {
            return None;
        }
        if matches!(self.peek(), Some(b'e' | b'E')) {
            self.at += 1;
            if matches!(self.peek(), Some(b'+' | b'-')) {
                self.at += 1;
            }
            if self.digits() == 0 {
                return None;
            }
        }
        Some((from, self.at))
    }

    /// A string, a number, `true`, `false` or `null`: its span. An object or array: `None`.
    fn scalar(&mut self) -> Option<(usize, usize)> {
        let from = self.at;
        let word: &[u8] = match self.peek()? {
            b'"' => return self.plain_string(),
            b'-' | b'0'..=b'9' => return self.number(),
            b't' => b"true",
            b'f' => b"false",
            b'n' => b"null",
            _ => return None,
        };
        if !self.b.get(from..)?.starts_with(word) {
            return None;
        }
        self.at += word.len();
        Some((from, self.at))
    }
}

/// The reject for a line longer than [`MAX_LINE_BYTES`].
pub fn too_long(len: usize) -> Reject {
    Reject::malformed(format!("line of {len} bytes is over the 1 MiB limit"))
}

/// The message types of SPEC section 5 that name an `account` (a shard takes them by it,
/// SPEC section 10); `mark`, `marks` and `funding` name none.
pub const ACCOUNT_MESSAGE_TYPES: [&str; 8] = [
    "balance",
    "transfer",
    "position",
    "margin_mode",
    "leverage",
    "orders",
    "isolated_margin",
    "query",
];

/// A validated message: well-formed, within section-1 limits, symbols resolved, prices on the
/// tick and sizes on the step. Engines apply these.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Mark {
        symbol: SymbolIdx,
        price: D8,
    },
    /// Distinct symbols, in the order they were written.
    Marks {
        prices: Vec<(SymbolIdx, D8)>,
    },
    Balance {
        account: u64,
        wallet: D8,
    },
    /// `amount != 0`.
    Transfer {
        account: u64,
        amount: D8,
    },
    /// `entry_price` is `Some` when `size != 0`.
    Position {
        account: u64,
        symbol: SymbolIdx,
        size: D8,
        entry_price: Option<D8>,
        isolated_margin: Option<D8>,
    },
    MarginMode {
        account: u64,
        symbol: SymbolIdx,
        mode: Mode,
    },
    /// `leverage >= 1`; the upper bound needs state.
    Leverage {
        account: u64,
        symbol: SymbolIdx,
        leverage: u64,
    },
    Orders {
        account: u64,
        symbol: SymbolIdx,
        open_orders: u64,
        order_margin: D8,
    },
    /// `amount != 0`.
    IsolatedMargin {
        account: u64,
        symbol: SymbolIdx,
        amount: D8,
    },
    Funding {
        symbol: SymbolIdx,
        rate: D8,
    },
    Query {
        account: u64,
    },
}

impl Command {
    /// The account the message is about, if any.
    pub fn account(&self) -> Option<u64> {
        match *self {
            Command::Balance { account, .. }
            | Command::Transfer { account, .. }
            | Command::Position { account, .. }
            | Command::MarginMode { account, .. }
            | Command::Leverage { account, .. }
            | Command::Orders { account, .. }
            | Command::IsolatedMargin { account, .. }
            | Command::Query { account } => Some(account),
            Command::Mark { .. } | Command::Marks { .. } | Command::Funding { .. } => None,
        }
    }
}

/// The numeric kinds of SPEC section 1 and their limits.
#[derive(Debug, Clone, Copy)]
enum Kind {
    /// (0, 10^9)
    Price,
    /// |x| < 10^8
    Size,
    /// |x| < 10^15
    Amount,
    /// |x| < 1
    Rate,
}

/// Marks and prices are below 10^9 (SPEC section 1).
pub const PRICE_LIMIT: i128 = 1_000_000_000 * SCALE_D8;
const SIZE_LIMIT: i128 = 100_000_000 * SCALE_D8;
/// |balance|, |margin|, |amount| < 10^15 (SPEC section 1). Engines keep state within it too.
pub const AMOUNT_LIMIT: D8 = D8(1_000_000_000_000_000 * SCALE_D8);

/// Step 2: validate an envelope against the config.
pub fn validate(env: &Envelope<'_>, cfg: &Config) -> Result<Command, Reject> {
    if let Some(ts) = env.ts {
        json_uint(ts).ok_or_else(|| {
            Reject::invalid(format!("ts {} is not a u64 nanosecond time", clip(ts.get())))
        })?;
    }
    let ty = string_field(env.ty, "type")?;
    let account = || -> Result<u64, Reject> {
        let raw = required(env.account, "account")?;
        json_uint(raw).ok_or_else(|| {
            Reject::invalid(format!("account {} is not a u64 integer", clip(raw.get())))
        })
    };
    let symbol = || symbol_field(env.symbol, cfg);
    Ok(match ty.as_ref() {
        "mark" => {
            let symbol = symbol()?;
            let price = decimal(env.price, "price", Kind::Price)?;
            Command::Mark { symbol, price: on_tick(price, symbol, cfg, "price")? }
        }
        "marks" => Command::Marks { prices: marks_prices(env.prices, cfg)? },
        "balance" => Command::Balance {
            account: account()?,
            wallet: decimal(env.wallet, "wallet", Kind::Amount)?,
        },
        "transfer" => {
            let account = account()?;
            let amount = decimal(env.amount, "amount", Kind::Amount)?;
            if amount.is_zero() {
                return Err(Reject::invalid("transfer amount must be non-zero"));
            }
            Command::Transfer { account, amount }
        }
        "position" => {
            let account = account()?;
            let symbol = symbol()?;
            let size = decimal(env.size, "size", Kind::Size)?;
            let step = cfg.symbol(symbol).step_size;
            if !size.is_multiple_of(step) {
                return Err(Reject::invalid(format!(
                    "size {size} is not a multiple of step_size {step}"
                )));
            }
            let entry_price = match env.entry_price {
                None if !size.is_zero() => {
                    return Err(Reject::invalid("entry_price is required when size != 0"));
                }
                None => None,
                Some(_) => Some(decimal(env.entry_price, "entry_price", Kind::Price)?),
            };
            let isolated_margin = match env.isolated_margin {
                None => None,
                Some(_) => {
                    let m = decimal(env.isolated_margin, "isolated_margin", Kind::Amount)?;
                    if m.0 < 0 {
                        return Err(Reject::invalid(format!("isolated_margin {m} must be >= 0")));
                    }
                    Some(m)
                }
            };
            Command::Position {
                account,
                symbol,
                size,
                // A closed position has no entry price; one sent with size 0 is checked
                // above and then dropped.
                entry_price: entry_price.filter(|_| !size.is_zero()),
                isolated_margin,
            }
        }
        "margin_mode" => {
            let account = account()?;
            let symbol = symbol()?;
            let text = string_field(env.mode, "mode")?;
            let mode = Mode::parse(&text).ok_or_else(|| {
                Reject::invalid(format!("mode \"{}\" is not cross or isolated", clip(&text)))
            })?;
            Command::MarginMode { account, symbol, mode }
        }
        "leverage" => {
            let account = account()?;
            let symbol = symbol()?;
            let raw = required(env.leverage, "leverage")?;
            let leverage = json_int_at_least_1(raw, "leverage")?;
            Command::Leverage { account, symbol, leverage }
        }
        "orders" => {
            let account = account()?;
            let symbol = symbol()?;
            let raw = required(env.open_orders, "open_orders")?;
            let open_orders = json_uint(raw).ok_or_else(|| {
                let t = raw.get();
                if !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()) {
                    return Reject::invalid(format!(
                        "open_orders {} is above the largest count, {}",
                        clip(t),
                        u64::MAX
                    ));
                }
                Reject::invalid(format!("open_orders {} is not an integer >= 0", clip(t)))
            })?;
            let order_margin = match env.order_margin {
                None => D8::ZERO,
                Some(_) => decimal(env.order_margin, "order_margin", Kind::Amount)?,
            };
            if order_margin.0 < 0 {
                return Err(Reject::invalid(format!("order_margin {order_margin} must be >= 0")));
            }
            Command::Orders { account, symbol, open_orders, order_margin }
        }
        "isolated_margin" => {
            let account = account()?;
            let symbol = symbol()?;
            let amount = decimal(env.amount, "amount", Kind::Amount)?;
            if amount.is_zero() {
                return Err(Reject::invalid("isolated_margin amount must be non-zero"));
            }
            Command::IsolatedMargin { account, symbol, amount }
        }
        "funding" => {
            Command::Funding { symbol: symbol()?, rate: decimal(env.rate, "rate", Kind::Rate)? }
        }
        "query" => Command::Query { account: account()? },
        other => {
            return Err(Reject::invalid(format!("unknown message type \"{}\"", clip(other))));
        }
    })
}

fn required<'a>(raw: Option<Raw<'a>>, name: &str) -> Result<Raw<'a>, Reject> {
    raw.ok_or_else(|| Reject::invalid(format!("missing field {name}")))
}

/// Shortens user text quoted back in a reason, so a reject never echoes a megabyte.
fn clip(s: &str) -> &str {
    match s.char_indices().nth(64) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

/// A JSON string's contents, unescaped only when it has escapes.
fn json_string(raw: Raw<'_>) -> Option<Cow<'_, str>> {
    let t = raw.get();
    let inner = t.strip_prefix('"')?.strip_suffix('"')?;
    if inner.contains('\\') {
        serde_json::from_str::<String>(t).ok().map(Cow::Owned)
    } else {
        Some(Cow::Borrowed(inner))
    }
}

pub(crate) fn string_field<'a>(raw: Option<Raw<'a>>, name: &str) -> Result<Cow<'a, str>, Reject> {
    let raw = required(raw, name)?;
    json_string(raw)
        .ok_or_else(|| Reject::invalid(format!("{name} {} is not a string", clip(raw.get()))))
}

fn symbol_field(raw: Option<Raw<'_>>, cfg: &Config) -> Result<SymbolIdx, Reject> {
    let name = string_field(raw, "symbol")?;
    lookup_symbol(&name, cfg)
}

fn lookup_symbol(name: &str, cfg: &Config) -> Result<SymbolIdx, Reject> {
    cfg.symbol_idx(name).ok_or_else(|| {
        Reject::new(
            RejectCode::UnknownSymbol,
            format!("symbol \"{}\" is not in the config", clip(name)),
        )
    })
}

/// A non-negative JSON integer token (no sign, fraction or exponent) that fits in u64.
///
/// One pass over the digits, with no overflow checks up to 19 of them (10^19 - 1 < 2^64);
/// a longer token goes to the checked `str::parse`, which checks every digit's product past
/// 16 digits: with the second read of each `ts`, about half of what a 19-digit `ts` on every
/// line cost the reader (session 26).
pub fn json_uint(raw: Raw<'_>) -> Option<u64> {
    let t = raw.get();
    if t.len() > 19 {
        return if t.bytes().all(|b| b.is_ascii_digit()) { t.parse().ok() } else { None };
    }
    if t.is_empty() {
        return None;
    }
    // No step below can overflow: 19 digits are at most 10^19 - 1 < 2^64 (~1.8 * 10^19).
    let mut n = 0u64;
    for b in t.bytes() {
        let digit = b.wrapping_sub(b'0');
        if digit > 9 {
            return None;
        }
        n = n * 10 + u64::from(digit);
    }
    Some(n)
}

/// The number of ASCII digits `b` begins with, eight bytes a step (a 19-digit `ts` in three
/// steps instead of 19).
///
/// In a little-endian word the first byte is the lowest. A digit is `0x30..=0x39`: its high
/// nibble is 3, and stays 3 when 6 is added; every other byte fails one of the two tests. A
/// carry starts only at a byte of `0xfa` or above, not a digit, so it spoils only bytes after
/// the first non-digit.
fn leading_digits(b: &[u8]) -> usize {
    const HIGH: u64 = 0xf0f0_f0f0_f0f0_f0f0;
    const THREES: u64 = 0x3030_3030_3030_3030;
    const SIXES: u64 = 0x0606_0606_0606_0606;
    run_of(
        b,
        |x| ((x & HIGH) ^ THREES) | ((x.wrapping_add(SIXES) & HIGH) ^ THREES),
        |c| c.is_ascii_digit(),
    )
}

/// The number of bytes `b` begins with that may stand in a JSON string as they are: not a
/// quote, a backslash or a control character; eight bytes a step.
///
/// Each test sets the high bit of the bytes it stops at (a byte `v` is zero when
/// `(v - 1) & !v` has its high bit set; below 0x20 when `(v - 0x20) & !v` has). A borrow
/// starts only at a byte the test stops at, so it spoils only later bytes.
fn plain_bytes(b: &[u8]) -> usize {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH_BITS: u64 = 0x8080_8080_8080_8080;
    let zero_at = |v: u64| v.wrapping_sub(ONES) & !v & HIGH_BITS;
    run_of(
        b,
        |x| {
            zero_at(x ^ (ONES * u64::from(b'"')))
                | zero_at(x ^ (ONES * u64::from(b'\\')))
                | (x.wrapping_sub(ONES * 0x20) & !x & HIGH_BITS)
        },
        |c| c != b'"' && c != b'\\' && c >= 0x20,
    )
}

/// The length of the run of bytes `b` begins with that `member` admits, a word of eight at a
/// time: `stops(x)` of a little-endian word `x` (its first byte the lowest) is nonzero in the
/// first byte that ends the run and zero in every byte before it; bytes after it may be
/// either. The last `b.len() % 8` bytes are tested one by one.
fn run_of(b: &[u8], stops: impl Fn(u64) -> u64, member: impl Fn(u8) -> bool) -> usize {
    let mut n = 0;
    let mut chunks = b.chunks_exact(8);
    for chunk in &mut chunks {
        let mut bytes = [0u8; 8];
        bytes.copy_from_slice(chunk);
        let stop = stops(u64::from_le_bytes(bytes));
        if stop != 0 {
            return n + (stop.trailing_zeros() / 8) as usize;
        }
        n += 8;
    }
    n + chunks.remainder().iter().take_while(|&&c| member(c)).count()
}

/// A JSON integer >= 1. Integers above u64 saturate: they are still integers, and the
/// engine's bound check then names them `leverage_exceeds_max`.
fn json_int_at_least_1(raw: Raw<'_>, name: &str) -> Result<u64, Reject> {
    let t = raw.get();
    let digits = t.strip_prefix('-').unwrap_or(t);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(Reject::invalid(format!("{name} {} is not a JSON integer", clip(t))));
    }
    let negative = t.starts_with('-');
    let is_zero = digits.bytes().all(|b| b == b'0');
    if negative || is_zero {
        return Err(Reject::invalid(format!("{name} {} must be >= 1", clip(t))));
    }
    Ok(digits.parse().unwrap_or(u64::MAX))
}

/// A decimal field of the given kind, from a JSON string or a plain JSON number.
fn decimal(raw: Option<Raw<'_>>, name: &str, kind: Kind) -> Result<D8, Reject> {
    let raw = required(raw, name)?;
    let t = raw.get();
    let text: Cow<str> = if t.starts_with('"') {
        json_string(raw).ok_or_else(|| Reject::invalid(format!("{name} is not a decimal")))?
    } else if t.starts_with(|c: char| c == '-' || c.is_ascii_digit()) {
        Cow::Borrowed(t)
    } else {
        return Err(Reject::invalid(format!(
            "{name} {} is not a decimal string or number",
            clip(t)
        )));
    };
    let parsed = parse_decimal(&text)
        .map_err(|e| Reject::invalid(format!("{name} \"{}\" {e}", clip(&text))))?;
    let value = parsed.to_d8().ok_or_else(|| {
        let why =
            if parsed.scale > 8 { "has more than 8 decimal places" } else { "is out of range" };
        Reject::invalid(format!("{name} {} {why}", clip(&text)))
    })?;
    let ok = match kind {
        Kind::Price => value.0 > 0 && value.0 < PRICE_LIMIT,
        Kind::Size => value.0.abs() < SIZE_LIMIT,
        Kind::Amount => value.abs() < AMOUNT_LIMIT,
        Kind::Rate => value.0.abs() < SCALE_D8,
    };
    if !ok {
        let rule = match kind {
            Kind::Price => "must be > 0 and < 10^9",
            Kind::Size => "must satisfy |size| < 10^8",
            Kind::Amount => "must satisfy |x| < 10^15",
            Kind::Rate => "must satisfy |rate| < 1",
        };
        return Err(Reject::invalid(format!("{name} {value} {rule}")));
    }
    Ok(value)
}

fn on_tick(price: D8, symbol: SymbolIdx, cfg: &Config, name: &str) -> Result<D8, Reject> {
    let sym = cfg.symbol(symbol);
    if price.is_multiple_of(sym.tick_size) {
        Ok(price)
    } else {
        Err(Reject::invalid(format!(
            "{name} {price} is not a multiple of tick_size {} of {}",
            sym.tick_size, sym.name
        )))
    }
}

/// Entries up to which a `marks` message's duplicate check scans instead of using a bitset.
const MARKS_SCAN_MAX: usize = 32;

/// The `prices` object of a `marks` message, in written order. Any bad entry fails it all.
fn marks_prices(raw: Option<Raw<'_>>, cfg: &Config) -> Result<Vec<(SymbolIdx, D8)>, Reject> {
    let raw = required(raw, "prices")?;
    let entries: Entries = serde_json::from_str(raw.get())
        .map_err(|_| Reject::invalid(format!("prices {} is not an object", clip(raw.get()))))?;
    if entries.0.is_empty() {
        return Err(Reject::invalid("prices must not be empty"));
    }
    let mut out: Vec<(SymbolIdx, D8)> = Vec::with_capacity(entries.0.len());
    // The duplicate check scans the entries so far while a message has few; past that, a
    // bitset over the config's symbols keeps a message of n entries at O(n), not O(n²)
    // (65,535 entries would otherwise cost 2·10^9 compares).
    let mut seen =
        (entries.0.len() > MARKS_SCAN_MAX).then(|| vec![0u64; cfg.symbols.len().div_ceil(64)]);
    for (name, value) in entries.0 {
        let symbol = lookup_symbol(&name, cfg)?;
        let twice = match seen.as_mut() {
            Some(bits) => {
                // A looked-up symbol's index is below the config's symbol count, so its word
                // is in `bits`.
                let (word, bit) = (usize::from(symbol.0) / 64, symbol.0 % 64);
                let was = bits[word] & (1 << bit) != 0;
                bits[word] |= 1 << bit;
                was
            }
            None => out.iter().any(|&(s, _)| s == symbol),
        };
        if twice {
            return Err(Reject::invalid(format!("prices lists {name} twice")));
        }
        let field = format!("price of {}", clip(&name));
        let price = decimal(Some(Raw(value.get())), &field, Kind::Price)?;
        out.push((symbol, on_tick(price, symbol, cfg, &field)?));
    }
    Ok(out)
}

/// A JSON object's entries in written order, duplicates kept.
struct Entries<'a>(Vec<(Cow<'a, str>, &'a RawValue)>);

impl<'de> Deserialize<'de> for Entries<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Entries<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut v = Vec::new();
                while let Some((k, val)) = map.next_entry::<Cow<'de, str>, &'de RawValue>()? {
                    v.push((k, val));
                }
                Ok(Entries(v))
            }
        }
        d.deserialize_map(V)
    }
}

// ---------------------------------------------------------------------------------------
// Events (SPEC section 7)
// ---------------------------------------------------------------------------------------

/// An exact decimal figure of an event or report (SPEC section 7's decimal strings): built by
/// an engine from the integers it already holds, with no text and no heap, and printed only
/// when the event is written ([`Event::write_json`], [`RiskItem::write_json`], `Display`).
///
/// [`Amount::Scaled`] is `mantissa / 10^scale`: an e8 amount or price ([`Amount::from_d8`],
/// scale 8), a q16 total (scale 16), an n12 notional (scale 12), an exact value of the
/// reference engine (scale 20, see `exact::Exact::amount`). The text is the shortest exact
/// decimal ([`crate::fixed::format_scaled`]: no exponent, no trailing zeros, `"0"`, never
/// `"-0"`). [`Amount::Wide`] holds the text of a value no `i128` mantissa holds at any scale
/// (the reference engine's unbounded numbers; in practice a ratio near the limits).
///
/// Equality is of the decimal value: `Scaled { 150_000_000, 8 }` (1.50) equals
/// `Scaled { 15, 1 }` and `Wide("1.5")`. Since the text of a value is unique, two amounts are
/// equal exactly when their texts are, so comparing events compares what they print.
#[derive(Clone)]
pub enum Amount {
    Scaled { mantissa: i128, scale: u8 },
    Wide(Box<str>),
}

impl Amount {
    /// Zero (scale 0).
    pub const ZERO: Amount = Amount::Scaled { mantissa: 0, scale: 0 };

    /// `mantissa / 10^scale`. Scales above 47 print their leading zeros one push at a time.
    pub const fn scaled(mantissa: i128, scale: u8) -> Amount {
        Amount::Scaled { mantissa, scale }
    }

    /// An e8 amount or price.
    pub const fn from_d8(d: D8) -> Amount {
        Amount::Scaled { mantissa: d.0, scale: 8 }
    }

    /// An e8 amount given by its raw integer (units of 10^-8).
    pub const fn e8(raw: i128) -> Amount {
        Amount::Scaled { mantissa: raw, scale: 8 }
    }

    /// A q16 figure given by its raw integer (units of 10^-16).
    pub const fn q16(raw: i128) -> Amount {
        Amount::Scaled { mantissa: raw, scale: 16 }
    }

    /// The exact decimal text of a value too wide for [`Amount::Scaled`]. The text must be
    /// the shortest form (as `fixed::format_scaled` or `exact::Exact`'s `Display` write it),
    /// or equality with a scaled amount of the same value fails.
    pub fn wide(text: String) -> Amount {
        debug_assert!(is_shortest_decimal(&text), "{text:?}");
        Amount::Wide(text.into_boxed_str())
    }

    /// Appends the decimal text (no quotes).
    pub fn write_to(&self, out: &mut String) {
        match self {
            Amount::Scaled { mantissa, scale } => {
                crate::fixed::format_scaled(*mantissa, u32::from(*scale), out)
            }
            Amount::Wide(text) => out.push_str(text),
        }
    }

    /// The decimal text in a fresh string (for tests and the rare reader that wants one).
    pub fn text(&self) -> String {
        let mut s = String::with_capacity(48);
        self.write_to(&mut s);
        s
    }

    /// The value as a [`D8`] when it has at most 8 decimals and fits; `None` otherwise.
    pub fn to_d8(&self) -> Option<D8> {
        match *self {
            Amount::Scaled { mantissa, scale } if scale <= 8 => {
                10i128.pow(8 - u32::from(scale)).checked_mul(mantissa).map(D8)
            }
            Amount::Scaled { mantissa, scale } => {
                let unit = 10i128.checked_pow(u32::from(scale) - 8)?;
                (mantissa % unit == 0).then(|| D8(mantissa / unit))
            }
            Amount::Wide(ref text) => parse_decimal(text).ok()?.to_d8(),
        }
    }
}

/// `-?(0|[1-9][0-9]*)(\.[0-9]*[1-9])?` and not `-0`: the one text of a value.
fn is_shortest_decimal(text: &str) -> bool {
    let digits = text.strip_prefix('-').unwrap_or(text);
    let (int, frac) = digits.split_once('.').unwrap_or((digits, ""));
    let all_digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    all_digits(int)
        && (int == "0" || !int.starts_with('0'))
        && (frac.is_empty() || (all_digits(frac) && !frac.ends_with('0')))
        && text != "-0"
}

/// `a / 10^sa == b / 10^sb` on the integers: the mantissa of the smaller scale is brought to
/// the larger one; when that overflows, its value is larger than any `i128` at that scale
/// and so differs (zero aside, which never overflows).
fn same_scaled(a: i128, sa: u8, b: i128, sb: u8) -> bool {
    let ((lo, s_lo), (hi, s_hi)) = if sa <= sb { ((a, sa), (b, sb)) } else { ((b, sb), (a, sa)) };
    if lo == 0 || hi == 0 {
        return lo == hi;
    }
    10i128
        .checked_pow(u32::from(s_hi - s_lo))
        .and_then(|f| lo.checked_mul(f))
        .is_some_and(|lo_up| lo_up == hi)
}

impl PartialEq for Amount {
    fn eq(&self, other: &Amount) -> bool {
        match (self, other) {
            (
                Amount::Scaled { mantissa: a, scale: sa },
                Amount::Scaled { mantissa: b, scale: sb },
            ) => same_scaled(*a, *sa, *b, *sb),
            (Amount::Wide(a), Amount::Wide(b)) => a == b,
            // A value's shortest text is unique.
            _ => self.text() == other.text(),
        }
    }
}

impl Eq for Amount {}

/// An amount equals a text when its own text is that text (`amount == "1.5"` in tests).
impl PartialEq<str> for Amount {
    fn eq(&self, other: &str) -> bool {
        match self {
            Amount::Wide(text) => &**text == other,
            Amount::Scaled { .. } => self.text() == other,
        }
    }
}

impl PartialEq<&str> for Amount {
    fn eq(&self, other: &&str) -> bool {
        *self == **other
    }
}

impl From<D8> for Amount {
    fn from(d: D8) -> Amount {
        Amount::from_d8(d)
    }
}

impl fmt::Display for Amount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Amount::Wide(text) => f.write_str(text),
            Amount::Scaled { .. } => f.write_str(&self.text()),
        }
    }
}

/// The text, as the event prints it: test failures show values, not mantissas.
impl fmt::Debug for Amount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Amount({self})")
    }
}

/// One output event. Decimal fields are exact [`Amount`]s, printed by the writer, so both
/// engines share this type and the writer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Liquidation(Liquidation),
    Reject {
        line: u64,
        /// `None` for rejects that consume no seq (malformed, ill-typed seq).
        seq: Option<u64>,
        /// On a shard (SPEC 10): the message's own `seq` field, when it had one.
        origin_seq: Option<u64>,
        reject: Reject,
    },
    Gap {
        line: u64,
        expected: u64,
        got: u64,
    },
    Account(AccountReport),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Liquidation {
    pub line: u64,
    pub seq: u64,
    /// On a shard (SPEC 10), where `seq` is the JetStream stream sequence: the message's own
    /// `seq` field, when it had one, so the shards' events can be joined. `None` elsewhere
    /// (and not printed). Set by the pipeline, never by an engine.
    pub origin_seq: Option<u64>,
    pub account: u64,
    pub mode: Mode,
    /// The symbol of an isolated item; `None` for a cross account. Symbol names are shared
    /// (`Arc<str>`): an engine clones a reference, not the text, per event.
    pub symbol: Option<Arc<str>>,
    pub margin_balance: Amount,
    pub maintenance_margin: Amount,
    pub positions: Vec<LiquidationPosition>,
    pub latency_ns: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiquidationPosition {
    pub symbol: Arc<str>,
    pub size: Amount,
    pub entry_price: Amount,
    pub mark_price: Amount,
    pub liquidation_price: Option<Amount>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccountReport {
    pub line: u64,
    pub seq: u64,
    /// As [`Liquidation::origin_seq`].
    pub origin_seq: Option<u64>,
    pub account: u64,
    pub wallet: Amount,
    pub margin_balance: Option<Amount>,
    pub maintenance_margin: Option<Amount>,
    pub margin_ratio: Option<Amount>,
    pub used_margin: Option<Amount>,
    pub available_balance: Option<Amount>,
    pub positions: Vec<PositionReport>,
    pub latency_ns: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PositionReport {
    pub symbol: Arc<str>,
    pub mode: Mode,
    pub size: Amount,
    pub entry_price: Amount,
    pub mark_price: Option<Amount>,
    pub leverage: u64,
    pub notional: Option<Amount>,
    pub unrealized_pnl: Option<Amount>,
    pub initial_margin: Option<Amount>,
    pub maintenance_margin: Option<Amount>,
    pub isolated_margin: Option<Amount>,
    pub margin_ratio: Option<Amount>,
    pub liquidation_price: Option<Amount>,
}

/// One item of an at-risk answer (SPEC section 9.3, `GET /at-risk`): a cross account
/// (`mode` cross, `symbol` `None`, `positions` all its non-zero cross positions) or an
/// isolated position (`symbol` set, `positions` that one), with its figures at the current
/// marks. Amounts are exact [`Amount`]s as in events; `margin_ratio` is
/// `round8(maintenance / margin balance)`, `None` when the margin balance is <= 0;
/// `liquidatable` is `margin balance < maintenance` (SPEC section 4). Built by
/// [`crate::engine::Engine::at_risk`], which also defines the order of a list of them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RiskItem {
    pub account: u64,
    pub mode: Mode,
    /// The symbol of an isolated item; `None` for a cross account.
    pub symbol: Option<Arc<str>>,
    pub margin_balance: Amount,
    pub maintenance_margin: Amount,
    pub margin_ratio: Option<Amount>,
    pub liquidatable: bool,
    pub positions: Vec<LiquidationPosition>,
}

impl RiskItem {
    /// Appends the item as one JSON object (no newline): `account`, `mode`, `symbol`,
    /// `margin_balance`, `maintenance_margin`, `margin_ratio`, `liquidatable`, and
    /// `positions` with the fields of a `liquidation` event's positions.
    pub fn write_json(&self, out: &mut String) {
        let mut w = JsonObject::open(out);
        w.uint("account", self.account);
        w.str("mode", self.mode.as_str());
        w.opt_str("symbol", self.symbol.as_deref());
        w.amount("margin_balance", &self.margin_balance);
        w.amount("maintenance_margin", &self.maintenance_margin);
        w.opt_amount("margin_ratio", self.margin_ratio.as_ref());
        w.bool("liquidatable", self.liquidatable);
        w.key("positions");
        write_liquidation_positions(w.out, &self.positions);
        w.close();
    }
}

/// `[{symbol, size, entry_price, mark_price, liquidation_price}, ...]`
fn write_liquidation_positions(out: &mut String, positions: &[LiquidationPosition]) {
    out.push('[');
    for (i, p) in positions.iter().enumerate() {
        out.push_str(if i == 0 { "{\"symbol\":" } else { ",{\"symbol\":" });
        push_json_string(out, &p.symbol);
        push_amount_field(out, ",\"size\":", &p.size);
        push_amount_field(out, ",\"entry_price\":", &p.entry_price);
        push_amount_field(out, ",\"mark_price\":", &p.mark_price);
        push_opt_amount_field(out, ",\"liquidation_price\":", p.liquidation_price.as_ref());
        out.push('}');
    }
    out.push(']');
}

/// An amount as a JSON string: its text needs no escape (digits, `-`, `.`), so it is printed
/// straight into the output between quotes.
fn push_amount(out: &mut String, v: &Amount) {
    out.push('"');
    v.write_to(out);
    out.push('"');
}

fn push_opt_amount(out: &mut String, v: Option<&Amount>) {
    match v {
        Some(v) => push_amount(out, v),
        None => out.push_str("null"),
    }
}

/// `key` (`,"name":`, punctuation included) and the amount.
fn push_amount_field(out: &mut String, key: &str, v: &Amount) {
    out.push_str(key);
    push_amount(out, v);
}

/// `key` (`,"name":`, punctuation included) and the amount or `null`.
fn push_opt_amount_field(out: &mut String, key: &str, v: Option<&Amount>) {
    out.push_str(key);
    push_opt_amount(out, v);
}

fn push_opt_symbol(out: &mut String, v: Option<&str>) {
    match v {
        Some(v) => push_json_string(out, v),
        None => out.push_str("null"),
    }
}

/// The start of a `liquidation` or `account` line: `{"type":"<kind>","line":..,"seq":..,
/// ["origin_seq":..,]"account":..` (`open` is `{"type":"<kind>","line":`).
fn push_event_head(
    out: &mut String,
    open: &str,
    (line, seq, origin_seq): (u64, u64, Option<u64>),
    account: u64,
) {
    out.push_str(open);
    crate::fixed::push_u64(out, line);
    out.push_str(",\"seq\":");
    crate::fixed::push_u64(out, seq);
    if let Some(origin) = origin_seq {
        out.push_str(",\"origin_seq\":");
        crate::fixed::push_u64(out, origin);
    }
    out.push_str(",\"account\":");
    crate::fixed::push_u64(out, account);
}

impl Liquidation {
    /// The `liquidation` line of SPEC section 7 (see [`Event::write_json`]).
    fn write_json(&self, out: &mut String) {
        let open = "{\"type\":\"liquidation\",\"line\":";
        push_event_head(out, open, (self.line, self.seq, self.origin_seq), self.account);
        out.push_str(match self.mode {
            Mode::Cross => ",\"mode\":\"cross\",\"symbol\":",
            Mode::Isolated => ",\"mode\":\"isolated\",\"symbol\":",
        });
        push_opt_symbol(out, self.symbol.as_deref());
        push_amount_field(out, ",\"margin_balance\":", &self.margin_balance);
        push_amount_field(out, ",\"maintenance_margin\":", &self.maintenance_margin);
        out.push_str(",\"positions\":");
        write_liquidation_positions(out, &self.positions);
        out.push_str(",\"latency_ns\":");
        crate::fixed::push_u64(out, self.latency_ns);
        out.push_str("}\n");
    }
}

impl AccountReport {
    /// The `account` line of SPEC section 7 (see [`Event::write_json`]).
    fn write_json(&self, out: &mut String) {
        let head = (self.line, self.seq, self.origin_seq);
        push_event_head(out, "{\"type\":\"account\",\"line\":", head, self.account);
        push_amount_field(out, ",\"wallet\":", &self.wallet);
        push_opt_amount_field(out, ",\"margin_balance\":", self.margin_balance.as_ref());
        push_opt_amount_field(out, ",\"maintenance_margin\":", self.maintenance_margin.as_ref());
        push_opt_amount_field(out, ",\"margin_ratio\":", self.margin_ratio.as_ref());
        push_opt_amount_field(out, ",\"used_margin\":", self.used_margin.as_ref());
        push_opt_amount_field(out, ",\"available_balance\":", self.available_balance.as_ref());
        out.push_str(",\"positions\":[");
        for (i, p) in self.positions.iter().enumerate() {
            out.push_str(if i == 0 { "{\"symbol\":" } else { ",{\"symbol\":" });
            push_json_string(out, &p.symbol);
            out.push_str(match p.mode {
                Mode::Cross => ",\"mode\":\"cross\",\"size\":",
                Mode::Isolated => ",\"mode\":\"isolated\",\"size\":",
            });
            push_amount(out, &p.size);
            push_amount_field(out, ",\"entry_price\":", &p.entry_price);
            push_opt_amount_field(out, ",\"mark_price\":", p.mark_price.as_ref());
            out.push_str(",\"leverage\":");
            crate::fixed::push_u64(out, p.leverage);
            for (key, v) in [
                (",\"notional\":", &p.notional),
                (",\"unrealized_pnl\":", &p.unrealized_pnl),
                (",\"initial_margin\":", &p.initial_margin),
                (",\"maintenance_margin\":", &p.maintenance_margin),
                (",\"isolated_margin\":", &p.isolated_margin),
                (",\"margin_ratio\":", &p.margin_ratio),
                (",\"liquidation_price\":", &p.liquidation_price),
            ] {
                push_opt_amount_field(out, key, v.as_ref());
            }
            out.push('}');
        }
        out.push_str("],\"latency_ns\":");
        crate::fixed::push_u64(out, self.latency_ns);
        out.push_str("}\n");
    }
}

impl Event {
    pub fn line(&self) -> u64 {
        match self {
            Event::Liquidation(l) => l.line,
            Event::Reject { line, .. } | Event::Gap { line, .. } => *line,
            Event::Account(a) => a.line,
        }
    }

    /// Sets the hand-off latency on the events that carry one.
    pub fn set_latency_ns(&mut self, ns: u64) {
        match self {
            Event::Liquidation(l) => l.latency_ns = ns,
            Event::Account(a) => a.latency_ns = ns,
            Event::Reject { .. } | Event::Gap { .. } => {}
        }
    }

    /// Sets `origin_seq` (SPEC 10) on the events that carry one: all but `gap`.
    pub fn set_origin_seq(&mut self, origin: Option<u64>) {
        match self {
            Event::Liquidation(l) => l.origin_seq = origin,
            Event::Account(a) => a.origin_seq = origin,
            Event::Reject { origin_seq, .. } => *origin_seq = origin,
            Event::Gap { .. } => {}
        }
    }

    /// Appends the event as one JSON line (with the trailing newline).
    ///
    /// A `liquidation` or `account` event (the many, and the big) is written from constant
    /// fragments that hold the punctuation and keys between its values (no key is scanned for
    /// escapes, each copy is one constant), and its amounts are printed straight into `out`.
    pub fn write_json(&self, out: &mut String) {
        match self {
            Event::Liquidation(l) => l.write_json(out),
            Event::Account(a) => a.write_json(out),
            Event::Reject { line, seq, origin_seq, reject } => {
                let mut w = JsonObject::open(out);
                w.str("type", "reject");
                w.uint("line", *line);
                match seq {
                    Some(s) => w.uint("seq", *s),
                    None => w.null("seq"),
                }
                if let Some(origin) = origin_seq {
                    w.uint("origin_seq", *origin);
                }
                w.str("code", reject.code.as_str());
                w.str("reason", &reject.reason);
                w.close();
                out.push('\n');
            }
            Event::Gap { line, expected, got } => {
                let mut w = JsonObject::open(out);
                w.str("type", "gap");
                w.uint("line", *line);
                w.uint("expected", *expected);
                w.uint("got", *got);
                w.close();
                out.push('\n');
            }
        }
    }
}

/// A minimal JSON object writer: keys in the order written, strings escaped.
struct JsonObject<'a> {
    out: &'a mut String,
    first: bool,
}

impl<'a> JsonObject<'a> {
    fn open(out: &'a mut String) -> Self {
        out.push('{');
        JsonObject { out, first: true }
    }

    fn key(&mut self, k: &str) {
        if !self.first {
            self.out.push(',');
        }
        self.first = false;
        push_json_string(self.out, k);
        self.out.push(':');
    }

    fn str(&mut self, k: &str, v: &str) {
        self.key(k);
        push_json_string(self.out, v);
    }

    fn opt_str(&mut self, k: &str, v: Option<&str>) {
        match v {
            Some(v) => self.str(k, v),
            None => self.null(k),
        }
    }

    /// A decimal figure as a JSON string. Its text (digits, `-`, `.`) needs no escape: it is
    /// printed straight into the output, with no string of its own.
    fn amount(&mut self, k: &str, v: &Amount) {
        self.key(k);
        self.out.push('"');
        v.write_to(self.out);
        self.out.push('"');
    }

    fn opt_amount(&mut self, k: &str, v: Option<&Amount>) {
        match v {
            Some(v) => self.amount(k, v),
            None => self.null(k),
        }
    }

    fn uint(&mut self, k: &str, v: u64) {
        self.key(k);
        crate::fixed::push_u64(self.out, v);
    }

    fn bool(&mut self, k: &str, v: bool) {
        self.key(k);
        self.out.push_str(if v { "true" } else { "false" });
    }

    fn null(&mut self, k: &str) {
        self.key(k);
        self.out.push_str("null");
    }

    fn close(self) {
        self.out.push('}');
    }
}

fn push_json_string(out: &mut String, s: &str) {
    out.push('"');
    // Decimal texts, symbol names and keys need no escape: one copy.
    if !s.bytes().any(|b| b == b'"' || b == b'\\' || b < 0x20) {
        out.push_str(s);
        out.push('"');
        return;
    }
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> Config {
        Config::parse(
            r#"{"default_margin_mode":"cross","default_leverage":20,"symbols":[
            {"symbol":"BTCUSDT","tick_size":"0.1","step_size":"0.001","brackets":[
            {"notional_cap":"50000","max_leverage":125,"mmr":"0.004"}]},
            {"symbol":"ETHUSDT","tick_size":"0.01","step_size":"0.01","brackets":[
            {"notional_cap":"50000","max_leverage":100,"mmr":"0.005"}]}]}"#,
        )
        .unwrap()
    }

    fn check(line: &str) -> Result<Command, Reject> {
        let p = parse_envelope(line.as_bytes())?;
        validate(&p.envelope, &cfg())
    }

    fn code(line: &str) -> RejectCode {
        check(line).unwrap_err().code
    }

    #[test]
    fn strings_and_numbers_read_exactly() {
        let a = check(r#"{"type":"mark","symbol":"BTCUSDT","price":"65000.1"}"#).unwrap();
        let b = check(r#"{"type":"mark","symbol":"BTCUSDT","price":65000.10}"#).unwrap();
        assert_eq!(a, b);
        assert_eq!(a, Command::Mark { symbol: SymbolIdx(0), price: D8(6_500_010_000_000) });
    }

    /// The one-pass `json_uint` equals the checked `str::parse` of an all-digit token, and
    /// `leading_digits` counts what a byte-by-byte loop counts: at the 19/20-digit edge,
    /// around `u64::MAX`, with leading zeros and with any byte among the digits (a bound off
    /// by one, or a digit test that lets ':' or '/' through, fails).
    #[test]
    fn json_uint_equals_the_checked_parse() {
        fn checked(t: &str) -> Option<u64> {
            if t.is_empty() || !t.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            t.parse().ok()
        }
        let max = u64::MAX.to_string();
        let mut cases: Vec<String> = vec![
            String::new(),
            "0".into(),
            "9999999999999999999".into(),
            "10000000000000000000".into(),
            max.clone(),
            "18446744073709551616".into(),
            "99999999999999999999".into(),
            "000000000000000000001".into(),
            "0000000000000000000".into(),
            "-1".into(),
            "1e3".into(),
            "1.0".into(),
            "\"7\"".into(),
        ];
        let mut rng = crate::synth::Rng::new(26);
        for _ in 0..20_000 {
            let len = (rng.next_u64() % 23) as usize;
            let mut t: String =
                (0..len).map(|_| char::from(b'0' + (rng.next_u64() % 10) as u8)).collect();
            if len > 0 && rng.next_u64().is_multiple_of(4) {
                // One character out of the digits: next to them in ASCII, or of two bytes.
                let at = (rng.next_u64() % len as u64) as usize;
                let odd = ["/", ":", " ", "-", "a", "é"][(rng.next_u64() % 6) as usize];
                t.replace_range(at..at + 1, odd);
            }
            cases.push(t);
        }
        for t in &cases {
            assert_eq!(json_uint(Raw(t)), checked(t), "{t:?}");
            let run = t.bytes().take_while(u8::is_ascii_digit).count();
            assert_eq!(leading_digits(t.as_bytes()), run, "{t:?}");
        }
        // Every byte that ends a string's plain run (quote, backslash, control) does so at
        // every place of a word, after any bytes that do not (0x80.. and 0x21 included).
        let plain: Vec<u8> =
            (0..=255u8).filter(|&c| c != b'"' && c != b'\\' && c >= 0x20).collect();
        for at in 0..17 {
            for stop in [b'"', b'\\'].into_iter().chain(0..0x20) {
                for fill in [b'a', b' ', b'!', b'#', b']', 0x7f, 0x80, 0xff] {
                    let mut bytes = vec![fill; 17];
                    bytes[at] = stop;
                    assert_eq!(plain_bytes(&bytes), at, "{stop:#x} at {at} after {fill:#x}");
                }
            }
            let mut bytes: Vec<u8> =
                (0..17).map(|i| plain[(i * 37 + at * 11) % plain.len()]).collect();
            assert_eq!(plain_bytes(&bytes), 17);
            bytes[at] = b'"';
            assert_eq!(plain_bytes(&bytes), at);
        }
        // Every byte that is not a digit ends a run of digits, at every place of a word
        // (':' and '/' border the digits; 0xfa.. carry out of their byte).
        for at in 0..17 {
            for odd in (0..=255u8).filter(|b| !b.is_ascii_digit()) {
                let mut bytes = vec![b'7'; 17];
                bytes[at] = odd;
                assert_eq!(leading_digits(&bytes), at, "{odd:#x} at {at}");
            }
        }
        assert_eq!(json_uint(Raw(&max)), Some(u64::MAX));
    }

    #[test]
    fn malformed_lines() {
        // (label, line)
        let cases: [(&str, &[u8]); 6] = [
            ("TC1 truncated", br#"{"type":"mark","symbol":"BTC"#),
            ("TC2 array", br#"[1,2]"#),
            ("TC3 string", br#""mark""#),
            ("TC4 bare NaN", br#"{"type":"mark","symbol":"BTCUSDT","price":NaN}"#),
            ("TC5 invalid utf8", b"{\"type\":\"mark\",\"symbol\":\"\xff\"}"),
            ("TC6 duplicate key", br#"{"type":"mark","type":"mark"}"#),
        ];
        for (label, line) in cases {
            let err = parse_envelope(line).unwrap_err();
            assert_eq!(err.code, RejectCode::Malformed, "{label}: {err}");
        }
        let long = vec![b' '; MAX_LINE_BYTES + 1];
        assert_eq!(parse_envelope(&long).unwrap_err().code, RejectCode::Malformed);
    }

    #[test]
    fn ill_typed_seq_is_rejected_at_parse() {
        for line in [
            r#"{"type":"query","account":1,"seq":"5"}"#,
            r#"{"type":"query","account":1,"seq":0}"#,
            r#"{"type":"query","account":1,"seq":-1}"#,
            r#"{"type":"query","account":1,"seq":1.5}"#,
            r#"{"type":"query","account":1,"seq":18446744073709551616}"#,
        ] {
            let err = parse_envelope(line.as_bytes()).unwrap_err();
            assert_eq!(err.code, RejectCode::Invalid, "{line}");
        }
        let p = parse_envelope(br#"{"type":"query","account":1,"seq":7}"#).unwrap();
        assert_eq!(p.seq, Some(7));
    }

    #[test]
    fn invalid_fields() {
        let cases = [
            ("TC1 exponent number", r#"{"type":"mark","symbol":"BTCUSDT","price":1e3}"#),
            ("TC2 exponent string", r#"{"type":"mark","symbol":"BTCUSDT","price":"1e3"}"#),
            ("TC3 NaN string", r#"{"type":"mark","symbol":"BTCUSDT","price":"NaN"}"#),
            ("TC4 Infinity", r#"{"type":"mark","symbol":"BTCUSDT","price":"Infinity"}"#),
            ("TC5 empty", r#"{"type":"mark","symbol":"BTCUSDT","price":""}"#),
            ("TC6 zero price", r#"{"type":"mark","symbol":"BTCUSDT","price":"0"}"#),
            ("TC7 negative price", r#"{"type":"mark","symbol":"BTCUSDT","price":"-5"}"#),
            ("TC8 off tick", r#"{"type":"mark","symbol":"BTCUSDT","price":"100.05"}"#),
            ("TC9 price too big", r#"{"type":"mark","symbol":"BTCUSDT","price":"1000000000"}"#),
            ("TC10 9 decimals", r#"{"type":"balance","account":1,"wallet":"0.000000001"}"#),
            (
                "TC11 off step",
                r#"{"type":"position","account":1,"symbol":"BTCUSDT","size":"0.0001","entry_price":"1"}"#,
            ),
            (
                "TC12 missing entry",
                r#"{"type":"position","account":1,"symbol":"BTCUSDT","size":"1"}"#,
            ),
            ("TC13 unknown type", r#"{"type":"nope"}"#),
            ("TC14 missing type", r#"{"account":1}"#),
            (
                "TC15 leverage 0",
                r#"{"type":"leverage","account":1,"symbol":"BTCUSDT","leverage":0}"#,
            ),
            (
                "TC16 leverage string",
                r#"{"type":"leverage","account":1,"symbol":"BTCUSDT","leverage":"5"}"#,
            ),
            (
                "TC17 leverage fraction",
                r#"{"type":"leverage","account":1,"symbol":"BTCUSDT","leverage":5.0}"#,
            ),
            ("TC18 account string", r#"{"type":"query","account":"1"}"#),
            ("TC19 rate 1", r#"{"type":"funding","symbol":"BTCUSDT","rate":"1"}"#),
            (
                "TC20 size 1e8",
                r#"{"type":"position","account":1,"symbol":"BTCUSDT","size":"100000000","entry_price":"1"}"#,
            ),
            ("TC21 zero transfer", r#"{"type":"transfer","account":1,"amount":"0"}"#),
            ("TC22 wallet 1e15", r#"{"type":"balance","account":1,"wallet":"1000000000000000"}"#),
            ("TC23 empty marks", r#"{"type":"marks","prices":{}}"#),
            ("TC24 bad ts", r#"{"type":"query","account":1,"ts":-3}"#),
            (
                "TC25 negative open orders",
                r#"{"type":"orders","account":1,"symbol":"BTCUSDT","open_orders":-1}"#,
            ),
            (
                "TC26 bad mode",
                r#"{"type":"margin_mode","account":1,"symbol":"BTCUSDT","mode":"both"}"#,
            ),
            ("TC27 marks bad entry", r#"{"type":"marks","prices":{"BTCUSDT":"1","ETHUSDT":"0"}}"#),
        ];
        for (label, line) in cases {
            assert_eq!(code(line), RejectCode::Invalid, "{label}");
        }
    }

    /// A decimal refused for its places says so, and one refused for its size says that,
    /// not both.
    #[test]
    fn a_refused_decimal_names_its_one_reason() {
        let reason = |line: &str| check(line).unwrap_err().reason;
        let places = reason(r#"{"type":"balance","account":1,"wallet":"0.000000001"}"#);
        assert!(places.ends_with("has more than 8 decimal places"), "{places}");
        let big = "9".repeat(35);
        let range = reason(&format!(r#"{{"type":"mark","symbol":"BTCUSDT","price":"{big}"}}"#));
        assert!(range.ends_with("is out of range") && !range.contains("places"), "{range}");
    }

    #[test]
    fn unknown_symbols() {
        for line in [
            r#"{"type":"mark","symbol":"DOGE","price":"1"}"#,
            r#"{"type":"marks","prices":{"BTCUSDT":"1","DOGE":"1"}}"#,
            r#"{"type":"funding","symbol":"DOGE","rate":"0.0001"}"#,
        ] {
            assert_eq!(code(line), RejectCode::UnknownSymbol, "{line}");
        }
    }

    /// A `marks` message's duplicate check: the scan for few entries and the bitset for many
    /// find the same duplicates, anywhere in the message; all distinct passes; and the first
    /// bad entry in written order still decides the code (a duplicate before an unknown
    /// symbol is `invalid`, an unknown symbol before a duplicate is `unknown_symbol`).
    #[test]
    fn marks_duplicates_on_both_paths() {
        let cfg = crate::synth::config(200);
        let marks = |syms: &[usize], tail: &str| {
            let entries: Vec<String> =
                syms.iter().map(|&i| format!(r#""{}":"1""#, cfg.symbols[i].name)).collect();
            format!(r#"{{"type":"marks","prices":{{{}{tail}}}}}"#, entries.join(","))
        };
        let run = |line: &str| {
            let p = parse_envelope(line.as_bytes()).unwrap();
            validate(&p.envelope, &cfg)
        };
        for n in [3, MARKS_SCAN_MAX, MARKS_SCAN_MAX + 1, 200] {
            let distinct: Vec<usize> = (0..n).rev().collect();
            let ok = run(&marks(&distinct, "")).unwrap();
            assert!(matches!(ok, Command::Marks { ref prices } if prices.len() == n), "{n}");
            for (first, second) in [(0, 1), (0, n - 1), (n - 2, n - 1)] {
                let mut twice = distinct.clone();
                twice[second] = twice[first];
                let err = run(&marks(&twice, "")).unwrap_err();
                assert_eq!(err.code, RejectCode::Invalid, "{n} {first} {second}");
                assert!(err.reason.contains("twice"), "{}", err.reason);
            }
            let mut dup_then_unknown = distinct.clone();
            dup_then_unknown[1] = dup_then_unknown[0];
            let err = run(&marks(&dup_then_unknown, r#","NOPE":"1""#)).unwrap_err();
            assert_eq!(err.code, RejectCode::Invalid, "{n}");
        }
        let unknown_then_dup = r#"{"type":"marks","prices":{"NOPE":"1","S001":"1","S001":"1"}}"#;
        assert_eq!(run(unknown_then_dup).unwrap_err().code, RejectCode::UnknownSymbol);
    }

    /// The scanner agrees with serde_json on every line it accepts: handmade edge cases, every
    /// line of the committed fixtures and fuzz corpus, and every prefix and one-byte change of
    /// the first lines of each (bounded: about 10^5 inputs). It must also take the common
    /// lines, or it would be dead weight.
    #[test]
    fn fast_envelope_equals_serde() {
        let check = |text: &str| -> bool {
            let Some(fast) = fast_envelope(text) else { return false };
            match serde_envelope(text) {
                Ok(slow) => assert_eq!(fast, slow, "{text:?}"),
                Err(e) => panic!("the scanner took a line serde refuses: {text:?}: {e}"),
            }
            true
        };
        // (label, line, taken by the scanner)
        let table = [
            ("TC1 plain", r#"{"type":"mark","symbol":"S1","price":"1.5"}"#, true),
            ("TC2 white space", " { \"type\" : \"query\" ,\t\"account\":1 }\r", true),
            ("TC3 null is absent", r#"{"type":"query","account":1,"seq":null}"#, true),
            ("TC4 unknown fields", r#"{"x":true,"y":false,"z":-0.5e+3,"type":"query"}"#, true),
            ("TC5 empty", "{}", true),
            ("TC6 nested", r#"{"type":"marks","prices":{"S1":"1"}}"#, false),
            ("TC7 escape", r#"{"type":"m\u0061rk"}"#, false),
            ("TC8 duplicate", r#"{"type":"mark","type":"mark"}"#, false),
            ("TC9 duplicate null", r#"{"seq":null,"seq":1}"#, false),
            ("TC10 trailing comma", r#"{"type":"mark",}"#, false),
            ("TC11 leading zero", r#"{"account":01}"#, false),
            ("TC12 bare minus", r#"{"account":-}"#, false),
            ("TC13 fraction without digits", r#"{"price":1.}"#, false),
            ("TC14 exponent without digits", r#"{"price":1e}"#, false),
            ("TC15 trailing text", r#"{"type":"mark"} x"#, false),
            ("TC16 truex", r#"{"a":truex}"#, false),
            ("TC17 control character", "{\"type\":\"a\u{1}b\"}", false),
            ("TC18 array", r#"{"a":[1]}"#, false),
            ("TC19 unicode text", r#"{"type":"mark","symbol":"ÄÖ€"}"#, true),
            ("TC20 huge number", r#"{"leverage":99999999999999999999999e999}"#, true),
        ];
        for (label, line, taken) in table {
            assert_eq!(check(line), taken, "{label}");
        }
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let mut files = Vec::new();
        for dir in ["fixtures/golden", "fixtures/gen", "fuzz/corpus/line_path"] {
            for entry in std::fs::read_dir(root.join(dir)).unwrap() {
                let path = entry.unwrap().path();
                if path.is_file() {
                    files.push(path);
                }
            }
        }
        files.sort();
        let (mut lines, mut taken) = (0usize, 0usize);
        let specials = [b'"', b'\\', b'{', b'}', b',', b':', b' ', b'0', b'-', b'e', b'.', 1];
        for path in files {
            let bytes = std::fs::read(&path).unwrap();
            for (i, line) in bytes.split(|&b| b == b'\n').enumerate() {
                let Ok(text) = std::str::from_utf8(line) else { continue };
                lines += 1;
                taken += usize::from(check(text));
                if i >= 5 {
                    continue;
                }
                for cut in 0..line.len() {
                    if let Ok(prefix) = std::str::from_utf8(&line[..cut]) {
                        check(prefix);
                    }
                    for &c in &specials {
                        let mut changed = line.to_vec();
                        changed[cut] = c;
                        if let Ok(text) = std::str::from_utf8(&changed) {
                            check(text);
                        }
                    }
                }
            }
        }
        assert!(taken * 2 > lines, "the scanner took {taken} of {lines} fixture lines");
    }

    #[test]
    fn huge_leverage_saturates_for_the_engine_to_refuse() {
        let c = check(r#"{"type":"leverage","account":1,"symbol":"BTCUSDT","leverage":99999999999999999999999}"#)
            .unwrap();
        assert!(matches!(c, Command::Leverage { leverage: u64::MAX, .. }));
    }

    /// An amount prints the exact shortest text (as the exact decimal does), reads back to
    /// the same value, and equals every other amount of that value, whatever its scale or
    /// form, and no amount of another value.
    #[test]
    fn amounts_round_trip_and_compare_by_value() {
        use crate::exact::Exact;
        // The text read back as digits and a point (std's i128 parse takes all 39 digits).
        let parse = |text: &str| {
            let (int, frac) = text.split_once('.').unwrap_or((text, ""));
            Amount::scaled(format!("{int}{frac}").parse().unwrap(), frac.len() as u8)
        };
        // (amount, its text)
        let cases = [
            (Amount::e8(150_000_000), "1.5"),
            (Amount::scaled(15, 1), "1.5"),
            (Amount::q16(15 * 10i128.pow(15)), "1.5"),
            (Amount::scaled(1_500_000_000_000_000_000_000, 21), "1.5"),
            (Amount::wide("1.5".into()), "1.5"),
            (Amount::ZERO, "0"),
            (Amount::q16(0), "0"),
            (Amount::e8(-1), "-0.00000001"),
            (Amount::scaled(-7, 20), "-0.00000000000000000007"),
            (Amount::scaled(i128::MAX, 0), "170141183460469231731687303715884105727"),
            (Amount::scaled(i128::MIN, 38), "-1.70141183460469231731687303715884105728"),
            (Amount::scaled(-12_300, 2), "-123"),
        ];
        for (amount, text) in &cases {
            assert_eq!(amount.text(), *text, "{amount:?}");
            assert_eq!(amount.to_string(), *text);
            assert_eq!(parse(text), *amount, "{text} read back");
            assert!(*amount == *text);
            for (other, other_text) in &cases {
                assert_eq!(amount == other, text == other_text, "{amount:?} vs {other:?}");
            }
        }
        // Values one unit apart at a large scale, and past i128 once aligned, differ.
        assert_ne!(Amount::scaled(1, 0), Amount::scaled(10i128.pow(30) + 1, 30));
        assert_ne!(Amount::scaled(i128::MAX, 0), Amount::scaled(1, 38));
        assert_eq!(Amount::scaled(0, 0), Amount::scaled(0, 60));
        // D8 readings: exact or refused.
        assert_eq!(Amount::q16(12_345_678 * 10i128.pow(8)).to_d8(), Some(D8(12_345_678)));
        assert_eq!(Amount::q16(1).to_d8(), None);
        assert_eq!(Amount::scaled(-3, 0).to_d8(), Some(D8(-300_000_000)));
        assert_eq!(Amount::wide("2.5".into()).to_d8(), Some(D8(250_000_000)));
        // The reference engine's values: scaled when they fit, wide past i128, always the
        // exact text; random values read back equal at every scale they are given at.
        let x = |text: &str| {
            let p = parse_decimal(text).unwrap();
            &Exact::from_int(p.mantissa) * &Exact::from_d8(D8(10i128.pow(8 - p.scale.min(8))))
        };
        let big = &x("17014118346046923173168730371588410572") * &x("10");
        let wide = &(&big * &big) + &x("0.5");
        for e in [x("0"), x("-1.25"), big.clone(), &big + &x("0.00000001"), wide.clone()] {
            assert_eq!(e.amount().text(), e.to_string(), "{e:?}");
        }
        assert!(matches!(big.amount(), Amount::Scaled { scale: 0, .. }));
        assert!(matches!(wide.amount(), Amount::Wide(_)));
        let mut rng = crate::synth::Rng::new(12);
        for _ in 0..2_000 {
            let m = (i128::from(rng.below(u64::MAX)) << rng.below(60)) - (1 << 50);
            let scale = rng.below(21) as u8;
            let a = Amount::scaled(m, scale);
            assert_eq!(parse(&a.text()), a, "{m} at {scale}");
            assert_eq!(Amount::wide(a.text()), a);
            if let Some(up) = m.checked_mul(1000) {
                assert_eq!(Amount::scaled(up, scale + 3), a);
                assert_ne!(Amount::scaled(up + 1, scale + 3), a);
            }
        }
    }

    /// The writer prints each figure of an event as the text of its amount.
    #[test]
    fn event_amounts_print_their_text() {
        let position = LiquidationPosition {
            symbol: Arc::from("BTCUSDT"),
            size: Amount::e8(-150_000_000),
            entry_price: Amount::scaled(650_001, 1),
            mark_price: Amount::wide("64000".into()),
            liquidation_price: None,
        };
        let event = Event::Liquidation(Liquidation {
            line: 9,
            seq: 4,
            origin_seq: None,
            account: 7,
            mode: Mode::Cross,
            symbol: None,
            margin_balance: Amount::q16(-5 * 10i128.pow(15)),
            maintenance_margin: Amount::scaled(1_000_000, 20),
            positions: vec![position],
            latency_ns: 11,
        });
        let mut s = String::new();
        event.write_json(&mut s);
        assert_eq!(
            s,
            concat!(
                r#"{"type":"liquidation","line":9,"seq":4,"account":7,"mode":"cross","symbol":null,"#,
                r#""margin_balance":"-0.5","maintenance_margin":"0.00000000000001","positions":"#,
                r#"[{"symbol":"BTCUSDT","size":"-1.5","entry_price":"65000.1","mark_price":"64000","#,
                r#""liquidation_price":null}],"latency_ns":11}"#,
                "\n"
            )
        );
    }

    #[test]
    fn event_json_escapes_and_orders_fields() {
        let mut s = String::new();
        Event::Reject {
            line: 3,
            seq: None,
            origin_seq: None,
            reject: Reject::invalid("say \"hi\"\n"),
        }
        .write_json(&mut s);
        assert_eq!(
            s,
            "{\"type\":\"reject\",\"line\":3,\"seq\":null,\"code\":\"invalid\",\"reason\":\"say \\\"hi\\\"\\n\"}\n"
        );
        let v: serde_json::Value = serde_json::from_str(&s).unwrap();
        assert_eq!(v["reason"], "say \"hi\"\n");
    }
}
