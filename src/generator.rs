//! `liqscan gen`: a config and a message stream for load tests, deterministic for a seed and
//! written as it is made (memory grows with the book, never with the stream's length).
//!
//! The generator plays the matching engine. It runs liqscan's fast engine on every line it
//! writes, so it knows exactly which items its own stream liquidates, and a few messages
//! later it closes and re-opens them, as an engine would after a liquidation event. Every
//! line it writes was checked by that engine: with no faults asked for, a replay rejects
//! nothing; an injected fault is written only when the engine rejects it with the code it
//! was made for, and it carries that code in an extra field (`"_fault":"invalid"`), which the
//! SPEC lets a reader ignore and a test can check.
//!
//! Two threads share the work. The generating thread draws the messages, applies each to the
//! engine as the [`Command`] it built and hands the commands in batches of 4096 over a
//! bounded channel to a writer thread, which formats the lines ([`synth::write_command`])
//! and writes them: the engine's thread spends nothing on text but the rare injected
//! faults, which are made as text because their point is text that validation refuses.

use std::{
    collections::{BTreeMap, VecDeque},
    fmt::Write as _,
    io::{self, Write},
    sync::Arc,
};

use crossbeam::channel::{Receiver, Sender, bounded};

use crate::{
    config::{Config, Mode, SymbolIdx},
    engine::{At, Engine},
    fast::FastEngine,
    fixed::{D8, scaled_text},
    protocol::{self, Command, Event, RejectCode},
    synth::{self, MarkWalk, Rng},
};

/// What to generate. See `liqscan gen --help` for each field's meaning on the command line.
#[derive(Debug, Clone)]
pub struct GenOptions {
    pub accounts: u64,
    /// Open positions in the book (spread evenly over the accounts, at most one per symbol).
    pub positions: u64,
    pub symbols: usize,
    /// Lines after the start-up snapshot (with no snapshot: all lines but the first marks).
    pub messages: u64,
    pub seed: u64,
    /// Fraction of the generated traffic that is mark prices (`mark`, and now and then a
    /// `marks`); the rest is funding, transfers, margin moves, leverage, mode and order
    /// changes, and queries. The engine's own actions come on top.
    pub mark_ratio: f64,
    /// Fraction of lines that are injected faults (see [`Fault`]).
    pub fault_rate: f64,
    /// All balances and positions first; otherwise accounts open one by one over the first
    /// half of the stream, between the other messages.
    pub snapshot: bool,
    /// Marks pick their symbol as popularity does (Zipf), instead of every symbol at the same
    /// cadence as venues publish them. The benchmarks' mark-heavy stream uses this.
    pub marks_follow_popularity: bool,
}

impl GenOptions {
    /// The defaults of `liqscan gen`.
    pub fn new(accounts: u64, symbols: usize, messages: u64, seed: u64) -> GenOptions {
        GenOptions {
            accounts,
            // Saturating: a huge --accounts is refused by `check` (or runs out of memory as
            // the book grows), never an overflow here.
            positions: accounts.saturating_mul((symbols as u64).min(3)),
            symbols,
            messages,
            seed,
            mark_ratio: 0.9,
            fault_rate: 0.0,
            snapshot: true,
            marks_follow_popularity: false,
        }
    }

    /// Refuses options that cannot make a stream, with the reason.
    pub fn check(&self) -> Result<(), String> {
        if self.accounts == 0 || self.symbols == 0 {
            return Err("--accounts and --symbols must be at least 1".into());
        }
        if self.accounts > u64::from(u32::MAX) {
            return Err(format!(
                "--accounts {} is above the {} accounts the generator's engine indexes",
                self.accounts,
                u32::MAX
            ));
        }
        if self.symbols > 10_000 {
            return Err(format!("--symbols {} is above the generator's 10000", self.symbols));
        }
        if self.positions > self.accounts.saturating_mul(self.symbols as u64) {
            return Err(format!(
                "--positions {} exceeds one per (account, symbol): {} accounts x {} symbols",
                self.positions, self.accounts, self.symbols
            ));
        }
        for (name, v) in [("--mark-ratio", self.mark_ratio), ("--fault-rate", self.fault_rate)] {
            if !(0.0..=1.0).contains(&v) {
                return Err(format!("{name} {v} is not within 0 to 1"));
            }
        }
        if self.fault_rate >= 1.0 {
            return Err("--fault-rate must stay below 1, or nothing but faults is written".into());
        }
        Ok(())
    }
}

/// The kinds of injected fault, each with the outcome a replay must show on its line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Not JSON, or not an object: rejected `malformed`, with `"seq": null`.
    Malformed,
    /// An exponent, an off-tick price, an unknown type, a missing field, leverage 0.
    Invalid,
    UnknownSymbol,
    ModeLocked,
    LeverageExceedsMax,
    WrongMode,
    InsufficientMargin,
    /// The previous line sent again with its seq: dropped silently, counted.
    Duplicate,
    /// A seq that skips ahead: a `gap` event, then the message applies as usual.
    Gap,
}

impl Fault {
    pub const ALL: [Fault; 9] = [
        Fault::Malformed,
        Fault::Invalid,
        Fault::UnknownSymbol,
        Fault::ModeLocked,
        Fault::LeverageExceedsMax,
        Fault::WrongMode,
        Fault::InsufficientMargin,
        Fault::Duplicate,
        Fault::Gap,
    ];

    /// The tag written in the faulty line's `_fault` field: the reject code, or `duplicate`
    /// or `gap`.
    pub fn tag(self) -> &'static str {
        match self.reject_code() {
            Some(code) => code.as_str(),
            None if self == Fault::Duplicate => "duplicate",
            None => "gap",
        }
    }

    /// The reject code a replay must give the line, if it is rejected.
    pub fn reject_code(self) -> Option<RejectCode> {
        Some(match self {
            Fault::Malformed => RejectCode::Malformed,
            Fault::Invalid => RejectCode::Invalid,
            Fault::UnknownSymbol => RejectCode::UnknownSymbol,
            Fault::ModeLocked => RejectCode::ModeLocked,
            Fault::LeverageExceedsMax => RejectCode::LeverageExceedsMax,
            Fault::WrongMode => RejectCode::WrongMode,
            Fault::InsufficientMargin => RejectCode::InsufficientMargin,
            Fault::Duplicate | Fault::Gap => return None,
        })
    }
}

/// What a generation wrote.
#[derive(Debug, Clone, Default)]
pub struct GenStats {
    /// Every line written.
    pub lines: u64,
    /// Lines of the start-up snapshot (first marks, balances, modes, positions).
    pub snapshot_lines: u64,
    /// Liquidation events the generator's own engine saw.
    pub liquidations: u64,
    /// Engine actions: positions closed and re-opened after a liquidation.
    pub engine_actions: u64,
    /// Injected faults, in the order of [`Fault::ALL`].
    pub faults: [u64; 9],
    /// Messages the generator made but left out because its engine refused them (a
    /// withdrawal above the available balance, say).
    pub left_out: u64,
}

/// A stage of generation as progress reports name it: what it counts, in which unit, and
/// how many it will count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Phase {
    /// `"snapshot"` (the start-up book) or `"stream"` (the lines after it).
    pub name: &'static str,
    /// What `done` counts: `"accounts"` (opened in the snapshot) or `"lines"` (written after
    /// it).
    pub unit: &'static str,
    pub total: u64,
}

/// The snapshot phase counts accounts opened; each writes its balance, modes and positions.
const SNAPSHOT: &str = "snapshot";
/// The stream phase counts the lines of `--messages`.
const STREAM: &str = "stream";

/// Progress reports: (phase, done). Each phase is reported first with 0 done, then every few
/// thousand of its units, and last with all done; phases come in order (snapshot, unless
/// there is none, then stream) and a phase's count never goes back.
pub type Progress<'a> = &'a mut dyn FnMut(Phase, u64);

/// The config text for `symbols` symbols (see [`synth::config_text`]).
pub fn config_text(symbols: usize) -> String {
    synth::config_text(symbols)
}

/// Writes the stream of `opts` to `out` (from a writer thread of its own, so `out` must be
/// `Send`); `progress` is called on the calling thread. The first write error ends the
/// generation and is returned.
pub fn generate<W: Write + Send>(
    opts: &GenOptions,
    out: W,
    progress: Progress<'_>,
) -> io::Result<GenStats> {
    opts.check().map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let cfg = Arc::new(synth::config(opts.symbols));
    let (full_tx, full_rx) = bounded::<Vec<Rec>>(QUEUE);
    // Room for every batch there can be (queued, being written, being filled), so that
    // handing an empty one back never blocks.
    let (empty_tx, empty_rx) = bounded::<Vec<Rec>>(QUEUE + 2);
    std::thread::scope(|scope| {
        let writer_cfg = cfg.clone();
        let writer = std::thread::Builder::new()
            .name("gen-writer".into())
            .spawn_scoped(scope, move || write_lines(&writer_cfg, &full_rx, &empty_tx, out))?;
        // `run` consumes the generator and with it the sender: the writer then sees the
        // channel close after the last batch.
        let generated = Gen::new(opts, cfg, full_tx, empty_rx).run(progress);
        let written = writer.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic));
        // A failed write stops the writer, and the generator then fails to hand it a batch:
        // the writer's error is the one to report.
        written?;
        generated
    })
}

/// Lines per batch handed to the writer thread.
const BATCH: usize = 4096;
/// Batches queued for the writer at most (the generator waits when it is that far ahead).
const QUEUE: usize = 4;

/// A line as the generating thread hands it to the writer thread.
enum Rec {
    /// `{"seq":SEQ,` then `"_fault":"TAG",` if tagged, then the message of the command.
    Command { seq: u64, tag: Option<&'static str>, cmd: Command },
    /// The same with a message the generator wrote as text (a fault).
    Body { seq: u64, tag: Option<&'static str>, body: String },
    /// The last line with a seq again, with its seq, tagged.
    Duplicate { tag: &'static str },
    /// A whole line, newline included (a malformed fault).
    Raw(String),
}

/// The writer thread: formats each batch's lines into one buffer and writes it to `out`,
/// handing the emptied batch back for reuse; ends when the channel closes (then flushes) or
/// at the first write error.
fn write_lines<W: Write>(
    cfg: &Config,
    full: &Receiver<Vec<Rec>>,
    empty: &Sender<Vec<Rec>>,
    mut out: W,
) -> io::Result<()> {
    let mut text = String::with_capacity(BATCH * 128);
    // The last line with a seq: its seq and its message, for duplicates.
    let (mut seq, mut last, mut body) = (0u64, String::new(), String::new());
    for mut batch in full.iter() {
        text.clear();
        for rec in batch.drain(..) {
            let tag = match rec {
                Rec::Raw(line) => {
                    text.push_str(&line);
                    continue;
                }
                Rec::Duplicate { tag } => {
                    std::mem::swap(&mut body, &mut last);
                    Some(tag)
                }
                Rec::Command { seq: s, tag, cmd } => {
                    seq = s;
                    body.clear();
                    synth::write_command(&mut body, cfg, &cmd);
                    tag
                }
                Rec::Body { seq: s, tag, body: b } => {
                    (seq, body) = (s, b);
                    tag
                }
            };
            text.push_str(r#"{"seq":"#);
            synth::push_u64(&mut text, seq);
            text.push(',');
            if let Some(tag) = tag {
                text.push_str(r#""_fault":""#);
                text.push_str(tag);
                text.push_str(r#"","#);
            }
            // Every message is a JSON object: it starts with `{`.
            text.push_str(&body[1..]);
            text.push('\n');
            std::mem::swap(&mut body, &mut last);
        }
        out.write_all(text.as_bytes())?;
        // The generator may have stopped: then nobody wants the batch back.
        let _ = empty.try_send(batch);
    }
    out.flush()
}

/// The stream of `opts` as one string (tests and benchmarks).
pub fn generate_string(opts: &GenOptions) -> String {
    let mut out = Vec::new();
    // Writing to a Vec cannot fail, and `generate` only fails on writes or on options that
    // `check` refuses, which callers of this test helper do not pass.
    generate(opts, &mut out, &mut |_, _| {}).expect("writing to memory");
    // Every line is built from ASCII JSON and `format!` of numbers and names.
    String::from_utf8(out).expect("the generator writes UTF-8")
}

/// A booked position: the generator's own record of the book it made.
#[derive(Debug, Clone, Copy)]
struct Booked {
    account: u64,
    /// Size in steps of 0.001 (the synthetic config's step).
    lots: i64,
    symbol: u16,
    isolated: bool,
}

impl Booked {
    fn size(&self) -> D8 {
        D8(i128::from(self.lots) * 100_000)
    }
}

/// An engine action owed: close and re-open a liquidated item's positions.
struct Pending {
    /// Live line count at which to act.
    due: u64,
    account: u64,
    isolated: bool,
    /// (symbol, size) of the item's positions.
    held: Vec<(SymbolIdx, D8)>,
}

/// Engine actions come this many lines after the liquidation they answer.
const ACTION_DELAY: u64 = 3;
/// One booked position is levered up (thin margin) every this many marks.
const RELEVER_EVERY: u64 = 100;

struct Gen<'o> {
    opts: &'o GenOptions,
    cfg: Arc<Config>,
    /// Lines for the writer thread, handed over when [`BATCH`] are in.
    batch: Vec<Rec>,
    to_writer: Sender<Vec<Rec>>,
    /// Batches the writer has emptied, to fill again.
    emptied: Receiver<Vec<Rec>>,
    engine: FastEngine,
    rng: Rng,
    walk: MarkWalk,
    /// The last effective seq written.
    seq: u64,
    /// Whether a line has consumed a seq yet (a duplicate needs one to repeat).
    any_seq: bool,
    /// The text of a fault's message.
    body: String,
    events: Vec<Event>,
    booked: Vec<Booked>,
    /// Index into `booked` of each opened account's first position; one more entry than
    /// accounts opened.
    first_booked: Vec<usize>,
    book: Box<dyn Iterator<Item = Command>>,
    /// The command after the last opened account's, already taken from `book`.
    book_next: Option<Command>,
    pending: VecDeque<Pending>,
    live: bool,
    live_lines: u64,
    marks: u64,
    stats: GenStats,
}

/// A price in units of 0.01 as the engine's 8-decimal fixed point.
fn d8_of_cents(v: i64) -> D8 {
    D8(i128::from(v) * 1_000_000)
}

/// A position message's command as validation makes it: a closed position (size 0) carries
/// no entry price and no isolated margin (the generator writes neither for it).
fn position(account: u64, s: usize, size: D8, entry_e2: i64, margin_e2: Option<i64>) -> Command {
    let open = !size.is_zero();
    Command::Position {
        account,
        // `s` < `opts.symbols` <= 10,000 (`GenOptions::check`).
        symbol: SymbolIdx(s as u16),
        size,
        entry_price: open.then(|| d8_of_cents(entry_e2)),
        isolated_margin: margin_e2.filter(|_| open).map(d8_of_cents),
    }
}

/// The most records the generator reserves room for at the start.
const PRESIZE: u64 = 1 << 25;

fn presize(n: u64) -> usize {
    // At most 2^25: fits any usize.
    n.min(PRESIZE) as usize
}

impl<'o> Gen<'o> {
    fn new(
        opts: &'o GenOptions,
        cfg: Arc<Config>,
        to_writer: Sender<Vec<Rec>>,
        emptied: Receiver<Vec<Rec>>,
    ) -> Self {
        let walk_seed = opts.seed ^ 0x5eed;
        let mut book = synth::book_commands(opts.accounts, opts.positions, opts.symbols, opts.seed);
        let book_next = book.next();
        Gen {
            opts,
            // Liquidations in book order, as the streams were made before session 17.
            engine: FastEngine::new(cfg.clone()).with_ranked_refreshes(false),
            cfg,
            batch: Vec::with_capacity(BATCH),
            to_writer,
            emptied,
            rng: Rng::new(opts.seed ^ 0xac7),
            walk: if opts.marks_follow_popularity {
                MarkWalk::new(opts.symbols, walk_seed)
            } else {
                MarkWalk::uniform(opts.symbols, walk_seed)
            },
            seq: 0,
            any_seq: false,
            body: String::new(),
            events: Vec::new(),
            // The book's size is known: no reallocation (and copy) of its records while it
            // is built, up to a reservation of `PRESIZE` (beyond, they grow as they must).
            booked: Vec::with_capacity(presize(opts.positions)),
            first_booked: {
                let mut v = Vec::with_capacity(presize(opts.accounts) + 1);
                v.push(0);
                v
            },
            book: Box::new(book),
            book_next,
            pending: VecDeque::new(),
            live: false,
            live_lines: 0,
            marks: 0,
            stats: GenStats::default(),
        }
    }

    fn opened(&self) -> u64 {
        // `first_booked` starts as [0] and only grows.
        self.first_booked.len() as u64 - 1
    }

    fn full(&self) -> bool {
        self.live && self.live_lines >= self.opts.messages
    }

    fn run(mut self, progress: Progress<'_>) -> io::Result<GenStats> {
        // The venue's marks first, in messages of at most 500 symbols.
        let all: Vec<usize> = (0..self.opts.symbols).collect();
        for chunk in all.chunks(500) {
            let prices: Vec<(usize, i64)> =
                chunk.iter().map(|&s| (s, self.walk.price_e2(s))).collect();
            self.offer(Self::marks(&prices))?;
        }
        if self.opts.snapshot {
            let phase = Phase { name: SNAPSHOT, unit: "accounts", total: self.opts.accounts };
            progress(phase, 0);
            while self.opened() < self.opts.accounts {
                self.open_account()?;
                if self.opened().is_multiple_of(4096) {
                    progress(phase, self.opened());
                }
            }
            progress(phase, self.opened());
        }
        self.stats.snapshot_lines = self.stats.lines;
        self.live = true;
        let total = self.opts.messages;
        let phase = Phase { name: STREAM, unit: "lines", total };
        progress(phase, 0);
        let mut reported = 0;
        while !self.full() {
            // First in the loop: the account-opening branch below `continue`s, and with no
            // snapshot it may fill the whole stream.
            if self.live_lines >= reported + 16_384 {
                reported = self.live_lines;
                progress(phase, self.live_lines);
            }
            if !self.opts.snapshot && self.opened() < self.opts.accounts {
                // Open accounts evenly over the first half of the stream.
                let due = (u128::from(self.opts.accounts) * (2 * u128::from(self.live_lines))
                    / u128::from(total.max(1)))
                .min(u128::from(self.opts.accounts)) as u64;
                if self.opened() <= due {
                    self.open_account()?;
                    continue;
                }
            }
            if self.pending.front().is_some_and(|p| p.due <= self.live_lines) {
                let p = self.pending.pop_front().expect("front checked just above");
                self.reopen(p)?;
            } else if self.rng.unit() < self.opts.fault_rate {
                self.fault()?;
            } else if self.opened() == 0 || self.rng.unit() < self.opts.mark_ratio {
                self.mark_step()?;
            } else {
                self.other_step()?;
            }
        }
        progress(phase, self.live_lines);
        self.hand_over()?;
        Ok(self.stats)
    }

    // ---- writing ----------------------------------------------------------------------

    /// Queues a line for the writer thread, counting it.
    fn write(&mut self, rec: Rec) -> io::Result<()> {
        if let Rec::Command { seq, .. } | Rec::Body { seq, .. } = rec {
            self.seq = seq;
            self.any_seq = true;
        }
        self.batch.push(rec);
        self.stats.lines += 1;
        if self.live {
            self.live_lines += 1;
        }
        if self.batch.len() >= BATCH { self.hand_over() } else { Ok(()) }
    }

    /// Hands the lines queued so far to the writer thread (waiting while it is [`QUEUE`]
    /// batches behind).
    fn hand_over(&mut self) -> io::Result<()> {
        if self.batch.is_empty() {
            return Ok(());
        }
        let next = self.emptied.try_recv().unwrap_or_else(|_| Vec::with_capacity(BATCH));
        let batch = std::mem::replace(&mut self.batch, next);
        // The writer stops only at a write error, which `generate` reports.
        self.to_writer.send(batch).map_err(|_| io::Error::other("the writer thread stopped"))
    }

    /// Writes `self.body` (a fault's JSON object) with `seq` and an optional fault tag.
    fn write_body(&mut self, seq: u64, tag: Option<&'static str>) -> io::Result<()> {
        let body = std::mem::take(&mut self.body);
        self.write(Rec::Body { seq, tag, body })
    }

    /// Checks `self.body` against the engine: validation, then apply. `Ok` means applied
    /// (and the engine's events are in `self.events`).
    fn check_body(&mut self) -> Result<(), RejectCode> {
        self.events.clear();
        let parsed = protocol::parse_envelope(self.body.as_bytes()).map_err(|r| r.code)?;
        let cmd = protocol::validate(&parsed.envelope, &self.cfg).map_err(|r| r.code)?;
        let events = &mut self.events;
        self.engine.apply(&cmd, At { line: 0, seq: 0 }, &mut |e| events.push(e)).map_err(|r| r.code)
    }

    /// Checks `cmd` against the engine. The line will say it as [`synth::write_command`]
    /// writes it, and builds with debug assertions check here that this text validates to
    /// exactly `cmd`, so the engine applies what a replay of the line will. A query changes
    /// nothing and is never refused, so it is not applied (its report would be built for
    /// nobody).
    fn check_command(&mut self, cmd: &Command) -> Result<(), RejectCode> {
        self.events.clear();
        #[cfg(debug_assertions)]
        {
            let mut text = String::new();
            synth::write_command(&mut text, &self.cfg, cmd);
            debug_assert_eq!(
                protocol::parse_envelope(text.as_bytes())
                    .ok()
                    .and_then(|p| protocol::validate(&p.envelope, &self.cfg).ok())
                    .as_ref(),
                Some(cmd),
                "the line {text} says another command",
            );
        }
        if matches!(cmd, Command::Query { .. }) {
            return Ok(());
        }
        let events = &mut self.events;
        self.engine.apply(cmd, At { line: 0, seq: 0 }, &mut |e| events.push(e)).map_err(|r| r.code)
    }

    /// Offers `cmd` as a normal message: written with the next seq when the engine applies
    /// it, left out when it refuses. Returns whether it was written.
    fn offer(&mut self, cmd: Command) -> io::Result<bool> {
        self.offer_with(cmd, self.seq + 1, None)
    }

    /// [`Gen::offer`] with a given seq and fault tag.
    fn offer_with(
        &mut self,
        cmd: Command,
        seq: u64,
        tag: Option<&'static str>,
    ) -> io::Result<bool> {
        if self.full() {
            return Ok(false);
        }
        if self.check_command(&cmd).is_err() {
            self.stats.left_out += 1;
            return Ok(false);
        }
        self.write(Rec::Command { seq, tag, cmd })?;
        self.schedule();
        Ok(true)
    }

    /// Schedules an engine action for each liquidation among `self.events`: cross items
    /// first, then isolated ones, each in the engine's order. (The engine's order within a
    /// message is free, SPEC section 6, and its isolated events come first; the streams keep
    /// the order they were made with, so a seed gives the same stream as before.)
    fn schedule(&mut self) {
        self.events.sort_by_key(|e| matches!(e, Event::Liquidation(l) if l.symbol.is_some()));
        for e in self.events.drain(..) {
            if let Event::Liquidation(l) = e {
                self.stats.liquidations += 1;
                let held = l
                    .positions
                    .iter()
                    .map(|p| {
                        // The event comes from this generator's engine on its own config: its
                        // symbol is configured and its size an 8-decimal amount.
                        let symbol = self.cfg.symbol_idx(&p.symbol).expect("a configured symbol");
                        (symbol, p.size.to_d8().expect("the engine's own size"))
                    })
                    .collect();
                self.pending.push_back(Pending {
                    due: self.live_lines + ACTION_DELAY,
                    account: l.account,
                    isolated: l.symbol.is_some(),
                    held,
                });
            }
        }
    }

    // ---- message bodies -------------------------------------------------------------------

    /// A mark of `s` at `px_e2`.
    fn mark(s: usize, px_e2: i64) -> Command {
        // `s` < `opts.symbols` <= 10,000 (`GenOptions::check`).
        Command::Mark { symbol: SymbolIdx(s as u16), price: d8_of_cents(px_e2) }
    }

    /// A `marks` message (distinct symbols, in this order).
    fn marks(prices: &[(usize, i64)]) -> Command {
        let prices = prices.iter().map(|&(s, px)| (SymbolIdx(s as u16), d8_of_cents(px)));
        Command::Marks { prices: prices.collect() }
    }

    // ---- steps ----------------------------------------------------------------------------

    /// Writes the next account's opening lines (balance, modes, positions) and books them.
    fn open_account(&mut self) -> io::Result<()> {
        let Some(first) = self.book_next.take() else {
            // The book ran out of accounts (cannot happen: one balance per account).
            self.first_booked.push(self.booked.len());
            return Ok(());
        };
        // `synth::book_commands` opens every account with its balance.
        let account = first.account().expect("a balance");
        let mut cmd = Some(first);
        while let Some(c) = cmd.take() {
            if c.account() != Some(account) {
                self.book_next = Some(c);
                break;
            }
            if let Command::Position { symbol, size, isolated_margin, .. } = &c {
                self.booked.push(Booked {
                    account,
                    lots: (size.0 / 100_000) as i64,
                    symbol: symbol.0,
                    isolated: isolated_margin.is_some(),
                });
            }
            self.offer(c)?;
            cmd = self.book.next();
        }
        self.first_booked.push(self.booked.len());
        Ok(())
    }

    /// An amount in units of 0.01: three times in five an addition of 1 up to
    /// `add_max` / 100, otherwise a removal of 1 up to `remove_max` / 100.
    fn amount_e2(&mut self, add_max: u64, remove_max: u64) -> i64 {
        if self.rng.below(5) < 3 {
            100 + self.rng.below(add_max) as i64
        } else {
            -(100 + self.rng.below(remove_max) as i64)
        }
    }

    fn random_account(&mut self) -> u64 {
        self.rng.below(self.opened())
    }

    fn random_booked(&mut self) -> Option<Booked> {
        let n = self.booked.len() as u64;
        (n > 0).then(|| self.booked[self.rng.below(n) as usize])
    }

    /// A booked position of the wanted mode (a few tries).
    fn booked_of(&mut self, isolated: bool) -> Option<Booked> {
        (0..16).map(|_| self.random_booked()).find_map(|b| b.filter(|b| b.isolated == isolated))
    }

    fn mark_step(&mut self) -> io::Result<()> {
        self.marks += 1;
        if self.rng.below(200) == 0 {
            // A `marks` message over a few symbols: one evaluation point.
            let mut prices = BTreeMap::new();
            for _ in 0..2 + self.rng.below(7) {
                let (s, px) = self.walk.next_mark();
                prices.insert(s, px);
            }
            let prices: Vec<(usize, i64)> = prices.into_iter().collect();
            self.offer(Self::marks(&prices))?;
        } else {
            let (s, px) = self.walk.next_mark();
            self.offer(Self::mark(s, px))?;
        }
        if self.marks.is_multiple_of(RELEVER_EVERY) {
            self.relever()?;
        }
        Ok(())
    }

    /// Traders keep levering up: a booked position is re-opened at the mark with 1 to 3 %
    /// margin (isolated), or its account's wallet is cut to 1 to 3 % of that notional (cross).
    fn relever(&mut self) -> io::Result<()> {
        let Some(b) = self.random_booked() else { return Ok(()) };
        let s = usize::from(b.symbol);
        let px = self.walk.price_e2(s);
        let notional_e2 = notional_e2(b.size(), px);
        let thin = notional_e2 * (1 + self.rng.below(3) as i64) / 100 + 1;
        let cmd = if b.isolated {
            position(b.account, s, b.size(), px, Some(thin))
        } else {
            Command::Balance { account: b.account, wallet: d8_of_cents(thin) }
        };
        self.offer(cmd).map(drop)
    }

    /// The engine acts on a liquidation: it closes the item's positions and re-opens them at
    /// the mark with fresh margin, 8 to 30 % of the notional (a cross account gets a fresh
    /// wallet of 8 to 50 %), so the item is healthy again and the book keeps its size.
    fn reopen(&mut self, p: Pending) -> io::Result<()> {
        self.stats.engine_actions += 1;
        if !p.isolated {
            let notional: i64 = p
                .held
                .iter()
                .map(|&(s, size)| notional_e2(size, self.walk.price_e2(usize::from(s.0))))
                .sum();
            // Above the top bracket's 5 % maintenance rate: healthy at the mark.
            let w = 100_000 + notional * (8 + self.rng.below(43) as i64) / 100;
            self.offer(Command::Balance { account: p.account, wallet: d8_of_cents(w) })?;
        }
        for &(s, size) in &p.held {
            let s = usize::from(s.0);
            let px = self.walk.price_e2(s);
            let margin = p.isolated.then_some(0);
            self.offer(position(p.account, s, D8::ZERO, px, margin))?;
            let margin =
                p.isolated.then(|| notional_e2(size, px) * (8 + self.rng.below(23) as i64) / 100);
            self.offer(position(p.account, s, size, px, margin))?;
        }
        Ok(())
    }

    /// One message of the non-mark mix.
    fn other_step(&mut self) -> io::Result<()> {
        let account = self.random_account();
        let cmd = match self.rng.below(100) {
            0..5 => {
                // `s` < `opts.symbols` <= 10,000 (`GenOptions::check`).
                let symbol = SymbolIdx(self.rng.below(self.opts.symbols as u64) as u16);
                let rate = (self.rng.below(101) as i128 - 50) * 1000; // ±0.0005
                Command::Funding { symbol, rate: D8(rate) }
            }
            5..25 => {
                let amount = d8_of_cents(self.amount_e2(100_000, 10_000));
                Command::Transfer { account, amount }
            }
            25..40 => {
                let Some(b) = self.booked_of(true) else { return Ok(()) };
                let amount = d8_of_cents(self.amount_e2(10_000, 2_000));
                Command::IsolatedMargin { account: b.account, symbol: SymbolIdx(b.symbol), amount }
            }
            40..55 => {
                let Some(b) = self.random_booked() else { return Ok(()) };
                let leverage = [1, 2, 3, 5, 10, 10, 20, 25, 50][self.rng.below(9) as usize];
                Command::Leverage { account: b.account, symbol: SymbolIdx(b.symbol), leverage }
            }
            55..65 => {
                // Only on a pair the account holds no position in: never locked.
                let s = self.rng.below(self.opts.symbols as u64) as u16;
                // `account` < opened(), and `first_booked` has opened() + 1 entries.
                let range =
                    self.first_booked[account as usize]..self.first_booked[account as usize + 1];
                if self.booked[range].iter().any(|b| b.symbol == s) {
                    return Ok(());
                }
                let mode = if self.rng.below(2) == 0 { Mode::Cross } else { Mode::Isolated };
                Command::MarginMode { account, symbol: SymbolIdx(s), mode }
            }
            65..85 => {
                let Some(b) = self.random_booked() else { return Ok(()) };
                let open_orders = self.rng.below(5);
                let margin = open_orders as i64 * (100 + self.rng.below(5_000) as i64);
                Command::Orders {
                    account: b.account,
                    symbol: SymbolIdx(b.symbol),
                    open_orders,
                    order_margin: d8_of_cents(margin),
                }
            }
            _ => Command::Query { account },
        };
        self.offer(cmd).map(drop)
    }

    // ---- faults ---------------------------------------------------------------------------

    /// Writes one injected fault (or nothing, when the state offers no way to make that one
    /// now, e.g. a duplicate before any line).
    fn fault(&mut self) -> io::Result<()> {
        let fault = Fault::ALL[self.rng.below(Fault::ALL.len() as u64) as usize];
        let s = self.rng.below(self.opts.symbols as u64) as usize;
        let px = self.walk.price_e2(s);
        let written = match fault {
            Fault::Malformed => {
                let text = match self.rng.below(3) {
                    0 => format!(
                        "{{\"_fault\":\"malformed\",\"type\":\"mark\",\"symbol\":\"S{s:03}\",\"price\":\"{}\n",
                        px / 100
                    ),
                    1 => format!(
                        "{{\"_fault\":\"malformed\",\"type\":\"mark\",\"symbol\":\"S{s:03}\",\"price\":NaN}}\n"
                    ),
                    _ => "[{\"_fault\":\"malformed\"}]\n".to_owned(),
                };
                debug_assert!(protocol::parse_envelope(text.trim_end().as_bytes()).is_err());
                self.write(Rec::Raw(text))?;
                true
            }
            Fault::Duplicate => {
                // The last seq-consuming message again, with its seq, tagged.
                if !self.any_seq || self.full() {
                    false
                } else {
                    self.write(Rec::Duplicate { tag: fault.tag() })?;
                    true
                }
            }
            Fault::Gap => {
                let (s, px) = self.walk.next_mark();
                let seq = self.seq + 2 + self.rng.below(5);
                self.offer_with(Self::mark(s, px), seq, Some(fault.tag()))?
            }
            _ => {
                if !self.fault_body(fault, s, px) {
                    return Ok(());
                }
                match self.check_body() {
                    Err(code) if Some(code) == fault.reject_code() => {
                        self.write_body(self.seq + 1, Some(fault.tag()))?;
                        true
                    }
                    Err(_) => false,
                    // Accepted after all (the state allowed it): a normal message then.
                    Ok(()) => {
                        self.write_body(self.seq + 1, None)?;
                        self.schedule();
                        false
                    }
                }
            }
        };
        if written {
            // `fault` was drawn from `Fault::ALL`.
            let i = Fault::ALL.iter().position(|&f| f == fault).expect("listed");
            self.stats.faults[i] += 1;
        }
        Ok(())
    }

    /// The body of a fault that validation or the state must reject; false when none can be
    /// made now.
    fn fault_body(&mut self, fault: Fault, s: usize, px: i64) -> bool {
        self.body.clear();
        let _ = match fault {
            Fault::Invalid => match self.rng.below(5) {
                0 => write!(self.body, r#"{{"type":"mark","symbol":"S{s:03}","price":"1e3"}}"#),
                1 => write!(
                    self.body,
                    r#"{{"type":"mark","symbol":"S{s:03}","price":"{}"}}"#,
                    scaled_text(i128::from(px) * 10 + 5, 3) // off the 0.01 tick
                ),
                2 => write!(self.body, r#"{{"type":"teleport","account":1}}"#),
                3 => write!(self.body, r#"{{"type":"transfer","account":1}}"#),
                _ => write!(
                    self.body,
                    r#"{{"type":"leverage","account":1,"symbol":"S{s:03}","leverage":0}}"#
                ),
            },
            Fault::UnknownSymbol => {
                write!(self.body, r#"{{"type":"mark","symbol":"NOSUCH","price":"1"}}"#)
            }
            Fault::ModeLocked | Fault::LeverageExceedsMax | Fault::WrongMode => {
                // A cross pair for wrong_mode; either mode for the others.
                let isolated = fault != Fault::WrongMode && self.rng.below(2) == 0;
                let Some(b) = self.booked_of(isolated) else {
                    return false;
                };
                let (a, s) = (b.account, b.symbol);
                match fault {
                    Fault::ModeLocked => write!(
                        self.body,
                        r#"{{"type":"margin_mode","account":{a},"symbol":"S{s:03}","mode":"{}"}}"#,
                        if b.isolated { "cross" } else { "isolated" }
                    ),
                    Fault::LeverageExceedsMax => write!(
                        self.body,
                        r#"{{"type":"leverage","account":{a},"symbol":"S{s:03}","leverage":126}}"#
                    ),
                    _ => write!(
                        self.body,
                        r#"{{"type":"isolated_margin","account":{a},"symbol":"S{s:03}","amount":"1"}}"#
                    ),
                }
            }
            Fault::InsufficientMargin => {
                let a = self.random_account();
                write!(
                    self.body,
                    r#"{{"type":"transfer","account":{a},"amount":"-99999999999999"}}"#
                )
            }
            Fault::Malformed | Fault::Duplicate | Fault::Gap => unreachable!("written directly"),
        };
        true
    }
}

/// |size| * price in units of 0.01 (size on the 0.001 step, price in 0.01).
fn notional_e2(size: D8, px_e2: i64) -> i64 {
    (size.0.unsigned_abs() / 100_000) as i64 * px_e2 / 1000
}
