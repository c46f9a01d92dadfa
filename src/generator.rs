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

use std::{
    collections::{BTreeMap, VecDeque},
    fmt::Write as _,
    io::{self, Write},
    sync::Arc,
};

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

/// Writes the stream of `opts` to `out`.
pub fn generate<W: Write>(
    opts: &GenOptions,
    out: W,
    progress: Progress<'_>,
) -> io::Result<GenStats> {
    opts.check().map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    Gen::new(opts, out).run(progress)
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

struct Gen<'o, W: Write> {
    opts: &'o GenOptions,
    cfg: Arc<Config>,
    out: W,
    engine: FastEngine,
    rng: Rng,
    walk: MarkWalk,
    /// The last effective seq written.
    seq: u64,
    /// The body of the last line that consumed a seq, for duplicates.
    last_body: String,
    body: String,
    line: String,
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

fn cents(v: i64) -> String {
    let mut text = String::new();
    synth::push_scaled(&mut text, i128::from(v), 2);
    text
}

/// A price in units of 0.01 as the engine's 8-decimal fixed point.
fn d8_of_cents(v: i64) -> D8 {
    D8(i128::from(v) * 1_000_000)
}

impl<'o, W: Write> Gen<'o, W> {
    fn new(opts: &'o GenOptions, out: W) -> Self {
        let cfg = Arc::new(synth::config(opts.symbols));
        let walk_seed = opts.seed ^ 0x5eed;
        let mut book = synth::book_commands(opts.accounts, opts.positions, opts.symbols, opts.seed);
        let book_next = book.next();
        Gen {
            opts,
            engine: FastEngine::new(cfg.clone()),
            cfg,
            out,
            rng: Rng::new(opts.seed ^ 0xac7),
            walk: if opts.marks_follow_popularity {
                MarkWalk::new(opts.symbols, walk_seed)
            } else {
                MarkWalk::uniform(opts.symbols, walk_seed)
            },
            seq: 0,
            last_body: String::new(),
            body: String::new(),
            line: String::new(),
            events: Vec::new(),
            booked: Vec::new(),
            first_booked: vec![0],
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
            let cmd = self.marks_body(&prices);
            self.offer_command(&cmd)?;
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
        self.out.flush()?;
        Ok(self.stats)
    }

    // ---- writing ----------------------------------------------------------------------

    /// Writes `body` (a JSON object) with the next seq and an optional fault tag.
    fn write_seq(&mut self, seq: u64, tag: Option<&str>) -> io::Result<()> {
        self.line.clear();
        let _ = write!(self.line, r#"{{"seq":{seq},"#);
        if let Some(tag) = tag {
            let _ = write!(self.line, r#""_fault":"{tag}","#);
        }
        // Every body is a JSON object built here: it starts with `{`.
        self.line.push_str(&self.body[1..]);
        self.line.push('\n');
        self.seq = seq;
        self.last_body.clone_from(&self.body);
        let line = std::mem::take(&mut self.line);
        let written = self.write_raw(&line);
        self.line = line;
        written
    }

    fn write_raw(&mut self, text: &str) -> io::Result<()> {
        self.out.write_all(text.as_bytes())?;
        self.stats.lines += 1;
        if self.live {
            self.live_lines += 1;
        }
        Ok(())
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

    /// Offers `self.body` as a normal message: written when the engine applies it, left out
    /// when it refuses. Returns whether it was written.
    fn offer(&mut self) -> io::Result<bool> {
        self.offer_with(self.seq + 1, None)
    }

    /// Checks `cmd`, the command `self.body` says, against the engine without parsing the
    /// body again: the generator made both, and builds with debug assertions check that the
    /// body validates to exactly `cmd`. A query changes nothing and is never refused, so it
    /// is not applied (its report would be built for nobody).
    fn check_command(&mut self, cmd: &Command) -> Result<(), RejectCode> {
        self.events.clear();
        debug_assert_eq!(
            protocol::parse_envelope(self.body.as_bytes())
                .ok()
                .and_then(|p| protocol::validate(&p.envelope, &self.cfg).ok())
                .as_ref(),
            Some(cmd),
            "the body {} says another command",
            self.body
        );
        if matches!(cmd, Command::Query { .. }) {
            return Ok(());
        }
        let events = &mut self.events;
        self.engine.apply(cmd, At { line: 0, seq: 0 }, &mut |e| events.push(e)).map_err(|r| r.code)
    }

    /// [`Gen::offer`] for a body whose command the generator built itself.
    fn offer_command(&mut self, cmd: &Command) -> io::Result<bool> {
        if self.full() {
            return Ok(false);
        }
        if self.check_command(cmd).is_err() {
            self.stats.left_out += 1;
            return Ok(false);
        }
        self.write_seq(self.seq + 1, None)?;
        self.schedule();
        Ok(true)
    }

    fn offer_with(&mut self, seq: u64, tag: Option<&str>) -> io::Result<bool> {
        if self.full() {
            return Ok(false);
        }
        if self.check_body().is_err() {
            self.stats.left_out += 1;
            return Ok(false);
        }
        self.write_seq(seq, tag)?;
        self.schedule();
        Ok(true)
    }

    /// Schedules an engine action for each liquidation among `self.events`.
    fn schedule(&mut self) {
        for e in self.events.drain(..) {
            if let Event::Liquidation(l) = e {
                self.stats.liquidations += 1;
                let held = l
                    .positions
                    .iter()
                    .map(|p| {
                        // The event comes from this generator's engine on its own config: its
                        // symbol is configured and its size is a valid 8-decimal text.
                        let symbol = self.cfg.symbol_idx(&p.symbol).expect("a configured symbol");
                        (symbol, D8::parse(&p.size, 8).expect("the engine's own size"))
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

    /// `s` < `opts.symbols` <= 10,000 (`GenOptions::check`): a symbol of the config.
    fn name(&self, s: usize) -> &str {
        &self.cfg.symbol(SymbolIdx(s as u16)).name
    }

    /// The body of a mark of `s` at `px_e2`, and its command.
    fn mark_body(&mut self, s: usize, px_e2: i64) -> Command {
        self.body.clear();
        let _ = write!(self.body, r#"{{"type":"mark","symbol":"S{s:03}","price":""#);
        synth::push_scaled(&mut self.body, i128::from(px_e2), 2);
        self.body.push_str("\"}");
        // `s` < `opts.symbols` <= 10,000 (`GenOptions::check`).
        Command::Mark { symbol: SymbolIdx(s as u16), price: d8_of_cents(px_e2) }
    }

    /// The body of a `marks` message (distinct symbols, in this order), and its command.
    fn marks_body(&mut self, prices: &[(usize, i64)]) -> Command {
        self.body.clear();
        self.body.push_str(r#"{"type":"marks","prices":{"#);
        for (i, &(s, px)) in prices.iter().enumerate() {
            let comma = if i > 0 { "," } else { "" };
            let _ = write!(self.body, r#"{comma}"S{s:03}":""#);
            synth::push_scaled(&mut self.body, i128::from(px), 2);
            self.body.push('"');
        }
        self.body.push_str("}}");
        let prices = prices.iter().map(|&(s, px)| (SymbolIdx(s as u16), d8_of_cents(px)));
        Command::Marks { prices: prices.collect() }
    }

    fn position_body(
        &mut self,
        account: u64,
        s: usize,
        size: D8,
        entry_e2: i64,
        margin: Option<i64>,
    ) {
        self.body.clear();
        let _ = write!(
            self.body,
            r#"{{"type":"position","account":{account},"symbol":"S{s:03}","size":"{size}""#
        );
        if !size.is_zero() {
            let _ = write!(self.body, r#","entry_price":"{}""#, cents(entry_e2));
            if let Some(m) = margin {
                let _ = write!(self.body, r#","isolated_margin":"{}""#, cents(m));
            }
        }
        self.body.push('}');
    }

    fn balance_body(&mut self, account: u64, wallet_e2: i64) {
        self.body.clear();
        let _ = write!(
            self.body,
            r#"{{"type":"balance","account":{account},"wallet":"{}"}}"#,
            cents(wallet_e2)
        );
    }

    fn command_body(&mut self, cmd: &Command) {
        self.body.clear();
        synth::write_book_command(&mut self.body, &self.cfg, cmd);
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
            self.command_body(&c);
            self.offer_command(&c)?;
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
            let cmd = self.marks_body(&prices);
            self.offer_command(&cmd)?;
        } else {
            let (s, px) = self.walk.next_mark();
            let cmd = self.mark_body(s, px);
            self.offer_command(&cmd)?;
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
        if b.isolated {
            self.position_body(b.account, s, b.size(), px, Some(thin));
        } else {
            self.balance_body(b.account, thin);
        }
        self.offer().map(drop)
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
            self.balance_body(p.account, w);
            self.offer()?;
        }
        for &(s, size) in &p.held {
            let s = usize::from(s.0);
            let px = self.walk.price_e2(s);
            let margin = p.isolated.then_some(0);
            self.position_body(p.account, s, D8::ZERO, px, margin);
            self.offer()?;
            let margin =
                p.isolated.then(|| notional_e2(size, px) * (8 + self.rng.below(23) as i64) / 100);
            self.position_body(p.account, s, size, px, margin);
            self.offer()?;
        }
        Ok(())
    }

    /// One message of the non-mark mix.
    fn other_step(&mut self) -> io::Result<()> {
        let account = self.random_account();
        self.body.clear();
        let _ = match self.rng.below(100) {
            0..5 => {
                let s = self.rng.below(self.opts.symbols as u64) as usize;
                let rate = (self.rng.below(101) as i128 - 50) * 1000; // ±0.0005
                write!(
                    self.body,
                    r#"{{"type":"funding","symbol":"{}","rate":"{}"}}"#,
                    self.name(s).to_owned(),
                    scaled_text(rate, 8)
                )
            }
            5..25 => {
                let amount = self.amount_e2(100_000, 10_000);
                write!(
                    self.body,
                    r#"{{"type":"transfer","account":{account},"amount":"{}"}}"#,
                    cents(amount)
                )
            }
            25..40 => {
                let Some(b) = self.booked_of(true) else { return Ok(()) };
                let amount = self.amount_e2(10_000, 2_000);
                write!(
                    self.body,
                    r#"{{"type":"isolated_margin","account":{},"symbol":"S{:03}","amount":"{}"}}"#,
                    b.account,
                    b.symbol,
                    cents(amount)
                )
            }
            40..55 => {
                let Some(b) = self.random_booked() else { return Ok(()) };
                let leverage = [1, 2, 3, 5, 10, 10, 20, 25, 50][self.rng.below(9) as usize];
                write!(
                    self.body,
                    r#"{{"type":"leverage","account":{},"symbol":"S{:03}","leverage":{leverage}}}"#,
                    b.account, b.symbol
                )
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
                write!(
                    self.body,
                    r#"{{"type":"margin_mode","account":{account},"symbol":"S{s:03}","mode":"{}"}}"#,
                    mode.as_str()
                )
            }
            65..85 => {
                let Some(b) = self.random_booked() else { return Ok(()) };
                let open = self.rng.below(5);
                let margin = open as i64 * (100 + self.rng.below(5_000) as i64);
                write!(
                    self.body,
                    r#"{{"type":"orders","account":{},"symbol":"S{:03}","open_orders":{open},"order_margin":"{}"}}"#,
                    b.account,
                    b.symbol,
                    cents(margin)
                )
            }
            _ => {
                let _ = write!(self.body, r#"{{"type":"query","account":{account}}}"#);
                return self.offer_command(&Command::Query { account }).map(drop);
            }
        };
        self.offer().map(drop)
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
                self.write_raw(&text)?;
                true
            }
            Fault::Duplicate => {
                // The last seq-consuming message again, with its seq, tagged.
                if self.last_body.is_empty() || self.full() {
                    false
                } else {
                    std::mem::swap(&mut self.body, &mut self.last_body);
                    self.write_seq(self.seq, Some(fault.tag()))?;
                    true
                }
            }
            Fault::Gap => {
                let (s, px) = self.walk.next_mark();
                let _ = self.mark_body(s, px);
                let seq = self.seq + 2 + self.rng.below(5);
                self.offer_with(seq, Some(fault.tag()))?
            }
            _ => {
                if !self.fault_body(fault, s, px) {
                    return Ok(());
                }
                match self.check_body() {
                    Err(code) if Some(code) == fault.reject_code() => {
                        self.write_seq(self.seq + 1, Some(fault.tag()))?;
                        true
                    }
                    Err(_) => false,
                    // Accepted after all (the state allowed it): a normal message then.
                    Ok(()) => {
                        self.write_seq(self.seq + 1, None)?;
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
