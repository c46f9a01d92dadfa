//! The fast engine: the reference engine's semantics, event for event, on struct-of-arrays
//! books and exact integer arithmetic.
//!
//! Layout and arithmetic are explained in `README.md` beside this file. In one paragraph:
//! positions live in per-symbol, per-mode column books ([`book::Book`]); prices are ticks,
//! sizes lots, amounts `i128` at 10^-16. A cross account keeps a single number,
//! `buffer = W + Σ (upnl − mm)` over its marked cross positions, and a count of unmarked ones,
//! so a tick updates each holder by `Δupnl − Δmm` and the liquidation test is `buffer < 0`.
//! Only the contents of emitted events (and queries) go through the exact, slower
//! [`crate::report`] path.

pub mod book;

use std::sync::Arc;

use rayon::prelude::*;
use rustc_hash::FxHashMap;

use self::book::{AccountIdx, Book, E8_TO_Q16, Move, Scale};
use crate::{
    config::{Config, Mode, SymbolIdx},
    engine::{At, Engine, rejects, should_emit},
    exact::Exact,
    fixed::{D8, scaled_text},
    margin,
    protocol::{AMOUNT_LIMIT, Command, Event, Reject},
    report::{AccountView, Item, PairView},
};

/// Books at least this long are evaluated on rayon workers; shorter ones are not worth the
/// hand-off.
pub const PARALLEL_MIN_POSITIONS: usize = 16 * 1024;

const NO_SLOT: u32 = u32::MAX;

/// One (account, symbol) pair's settings and where its position sits.
#[derive(Debug, Clone)]
struct Pair {
    symbol: SymbolIdx,
    mode: Mode,
    /// 0 until a `leverage` message sets it.
    leverage: u32,
    open_orders: u64,
    order_margin_e8: i128,
    entry_e8: i64,
    isolated_e8: i128,
    /// Slot in `cross[symbol]` or `isolated[symbol]` (by `mode`), or `NO_SLOT` when flat.
    slot: u32,
}

/// Per-account columns, indexed by [`AccountIdx`].
#[derive(Debug, Default)]
struct Accounts {
    id: Vec<u64>,
    wallet_e8: Vec<i128>,
    /// What a tick reads and writes, one record per account.
    hot: Vec<Hot>,
    /// Σ order margin over all pairs, e8.
    order_margin_e8: Vec<i128>,
    /// Pairs sorted by symbol.
    pairs: Vec<Vec<Pair>>,
}

/// The part of a cross account that a tick reads and writes, kept in one 32-byte record:
/// a tick reaches its holders' accounts in random order, so each holder costs one cache
/// miss here instead of one per column.
#[derive(Debug, Clone, Copy, Default)]
struct Hot {
    /// `W + Σ (upnl − mm)` over the marked cross positions, q16.
    buffer_q16: i128,
    /// The message number that last touched the account (dedupes evaluation per message).
    stamp: u64,
    /// Non-zero cross positions (at most one per symbol, and the config holds < 65536).
    n_cross: u16,
    /// Non-zero cross positions whose symbol has no mark yet.
    n_unmarked: u16,
    /// The cross item's flag.
    liquidatable: bool,
}

// Two records per 64-byte cache line; a field added here must not grow it.
const _: () = assert!(std::mem::size_of::<Hot>() == 32);

impl Hot {
    fn liquidatable_now(&self) -> bool {
        self.n_cross > 0 && self.n_unmarked == 0 && self.buffer_q16 < 0
    }
}

pub struct FastEngine {
    cfg: Arc<Config>,
    scales: Vec<Scale>,
    marks: Vec<Option<D8>>,
    mark_ticks: Vec<Option<i64>>,
    cross: Vec<Book>,
    isolated: Vec<Book>,
    accounts: Accounts,
    index: FxHashMap<u64, AccountIdx>,
    /// Message counter for `Accounts::stamp`.
    msg_no: u64,
    /// Scratch, reused across messages: cross accounts touched by this message.
    touched: Vec<AccountIdx>,
    /// Scratch: per-position deltas of a parallel tick.
    deltas: Vec<i128>,
    /// Scratch: isolated slots of this message that crossed below maintenance.
    emit_isolated: Vec<(SymbolIdx, u32)>,
    /// Scratch: cross accounts of this message evaluated in the tick that crossed below
    /// maintenance.
    emit_cross: Vec<AccountIdx>,
    /// Positions evaluated so far (see [`FastEngine::positions_evaluated`]).
    positions_evaluated: u64,
    /// Books at least this long go to rayon workers.
    parallel_min: usize,
}

/// Fills `out[i] = f(lots[i], base[i])` over a book's slots, on rayon workers when the book
/// is big enough to pay for the hand-off. `out` is scratch reused across calls.
fn map_book(
    out: &mut Vec<i128>,
    book: &Book,
    parallel_min: usize,
    f: impl Fn(i64, i128) -> i128 + Sync,
) {
    out.clear();
    out.resize(book.len(), 0);
    let fill = |(d, (&lots, &base)): (&mut i128, (&i64, &i128))| *d = f(lots, base);
    if book.len() >= parallel_min {
        out.par_iter_mut()
            .zip(book.lots.par_iter().zip(book.base_q16.par_iter()))
            .with_min_len(4096)
            .for_each(fill);
    } else {
        out.iter_mut().zip(book.lots.iter().zip(book.base_q16.iter())).for_each(fill);
    }
}

/// How many holders ahead a tick asks for an account record: enough misses in flight to
/// cover memory latency. Measured on a 1M-account book (200 symbols, 15k holders a tick):
/// 16 ahead cut the replay from 72 to 47 s, 48 to 28 s; 96 to 256 all gave 25 to 29 s.
const PREFETCH_AHEAD: usize = 160;

/// Asks the CPU to bring `r`'s cache line in (a hint: no effect on results).
#[inline(always)]
#[allow(unsafe_code)]
fn prefetch<T>(r: &T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: PREFETCHT0 only hints the cache; it never faults, even for an invalid
    // address, and `r` is a valid reference. SSE is part of the x86_64 baseline.
    unsafe {
        use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
        _mm_prefetch::<_MM_HINT_T0>(std::ptr::from_ref(r).cast::<i8>());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = r;
}

/// `n / d` rounded to the nearest integer, ties to even (`d > 0`).
fn div_round_half_even(n: i128, d: i128) -> i128 {
    debug_assert!(d > 0);
    let (q, r) = (n.div_euclid(d), n.rem_euclid(d));
    match (2 * r).cmp(&d) {
        std::cmp::Ordering::Less => q,
        std::cmp::Ordering::Greater => q + 1,
        std::cmp::Ordering::Equal => q + (q & 1),
    }
}

fn in_limits(what: &str, v_e8: i128) -> Result<i128, Reject> {
    if v_e8.abs() < AMOUNT_LIMIT.0 { Ok(v_e8) } else { Err(rejects::out_of_range(what, D8(v_e8))) }
}

fn q16_text(v: i128) -> String {
    scaled_text(v, 16)
}

impl FastEngine {
    pub fn new(cfg: Arc<Config>) -> FastEngine {
        let n = cfg.symbols.len();
        FastEngine {
            scales: cfg.symbols.iter().map(Scale::new).collect(),
            marks: vec![None; n],
            mark_ticks: vec![None; n],
            cross: vec![Book::default(); n],
            isolated: vec![Book::default(); n],
            accounts: Accounts::default(),
            index: FxHashMap::default(),
            msg_no: 0,
            touched: Vec::new(),
            deltas: Vec::new(),
            emit_isolated: Vec::new(),
            emit_cross: Vec::new(),
            positions_evaluated: 0,
            parallel_min: PARALLEL_MIN_POSITIONS,
            cfg,
        }
    }

    /// Sets the book length from which evaluation runs on rayon workers (default
    /// [`PARALLEL_MIN_POSITIONS`]); tests set 1 to check the parallel paths on small books.
    pub fn with_parallel_min(mut self, positions: usize) -> FastEngine {
        self.parallel_min = positions.max(1);
        self
    }

    /// Number of non-zero positions held.
    pub fn n_positions(&self) -> usize {
        self.cross.iter().chain(&self.isolated).map(Book::len).sum()
    }

    /// Non-zero positions in the cross books and in the isolated books.
    pub fn book_sizes(&self) -> (usize, usize) {
        (self.cross.iter().map(Book::len).sum(), self.isolated.iter().map(Book::len).sum())
    }

    pub fn n_accounts(&self) -> usize {
        self.accounts.id.len()
    }

    fn intern(&mut self, id: u64) -> AccountIdx {
        if let Some(&a) = self.index.get(&id) {
            return a;
        }
        let acc = &mut self.accounts;
        let a = AccountIdx(u32::try_from(acc.id.len()).expect("fewer than 2^32 accounts"));
        acc.id.push(id);
        acc.wallet_e8.push(0);
        acc.hot.push(Hot::default());
        acc.order_margin_e8.push(0);
        acc.pairs.push(Vec::new());
        self.index.insert(id, a);
        a
    }

    fn pair(&self, a: AccountIdx, s: SymbolIdx) -> Option<&Pair> {
        let pairs = &self.accounts.pairs[a.0 as usize];
        pairs.binary_search_by_key(&s, |p| p.symbol).ok().map(|i| &pairs[i])
    }

    fn pair_mut(&mut self, a: AccountIdx, s: SymbolIdx) -> &mut Pair {
        let mode = self.cfg.default_margin_mode;
        let pairs = &mut self.accounts.pairs[a.0 as usize];
        let i = match pairs.binary_search_by_key(&s, |p| p.symbol) {
            Ok(i) => i,
            Err(i) => {
                // Exact growth: accounts hold few pairs, and doubling would waste up to half
                // of each account's pair storage (measured: ~20 bytes per position).
                pairs.reserve_exact(1);
                pairs.insert(
                    i,
                    Pair {
                        symbol: s,
                        mode,
                        leverage: 0,
                        open_orders: 0,
                        order_margin_e8: 0,
                        entry_e8: 0,
                        isolated_e8: 0,
                        slot: NO_SLOT,
                    },
                );
                i
            }
        };
        &mut pairs[i]
    }

    fn mode_of(&self, a: Option<AccountIdx>, s: SymbolIdx) -> Mode {
        a.and_then(|a| self.pair(a, s)).map_or(self.cfg.default_margin_mode, |p| p.mode)
    }

    fn leverage_of(&self, s: SymbolIdx, p: &Pair) -> u32 {
        if p.leverage == 0 { self.cfg.default_leverage_for(s) } else { p.leverage }
    }

    fn book(&self, mode: Mode, s: SymbolIdx) -> &Book {
        match mode {
            Mode::Cross => &self.cross[s.0 as usize],
            Mode::Isolated => &self.isolated[s.0 as usize],
        }
    }

    fn lots_of(&self, p: &Pair) -> i64 {
        if p.slot == NO_SLOT { 0 } else { self.book(p.mode, p.symbol).lots[p.slot as usize] }
    }

    fn touch(&mut self, a: AccountIdx) {
        let stamp = &mut self.accounts.hot[a.0 as usize].stamp;
        if *stamp != self.msg_no {
            *stamp = self.msg_no;
            self.touched.push(a);
        }
    }

    // --- views for events and queries --------------------------------------------------

    fn view(&self, id: u64) -> AccountView {
        let Some(&a) = self.index.get(&id) else {
            return AccountView { account: id, ..AccountView::default() };
        };
        let pairs = self.accounts.pairs[a.0 as usize]
            .iter()
            .map(|p| {
                let sc = &self.scales[p.symbol.0 as usize];
                PairView {
                    symbol: p.symbol,
                    mode: p.mode,
                    leverage: u64::from(self.leverage_of(p.symbol, p)),
                    size: D8(i128::from(self.lots_of(p)) * i128::from(sc.step_e8)),
                    entry_price: D8(i128::from(p.entry_e8)),
                    isolated_margin: D8(p.isolated_e8),
                    order_margin: D8(p.order_margin_e8),
                }
            })
            .collect();
        AccountView { account: id, wallet: D8(self.accounts.wallet_e8[a.0 as usize]), pairs }
    }

    // --- evaluation --------------------------------------------------------------------

    fn eval_cross(&mut self, a: AccountIdx, rearmed: bool, at: At, out: &mut dyn FnMut(Event)) {
        let hot = &mut self.accounts.hot[a.0 as usize];
        let now = hot.liquidatable_now();
        let was = std::mem::replace(&mut hot.liquidatable, now);
        if should_emit(was, now, rearmed) {
            self.emit_cross_event(a, at, out);
        }
    }

    fn emit_cross_event(&self, a: AccountIdx, at: At, out: &mut dyn FnMut(Event)) {
        let id = self.accounts.id[a.0 as usize];
        let ev = self.view(id).liquidation(&self.cfg, &self.marks, Item::Cross(id), at);
        out(Event::Liquidation(ev));
    }

    /// Evaluates the isolated item (a, s), if the pair holds an isolated position.
    fn eval_isolated(
        &mut self,
        a: AccountIdx,
        s: SymbolIdx,
        rearmed: bool,
        at: At,
        out: &mut dyn FnMut(Event),
    ) {
        let Some(p) = self.pair(a, s) else { return };
        if p.mode != Mode::Isolated || p.slot == NO_SLOT {
            return;
        }
        let slot = p.slot as usize;
        let book = &mut self.isolated[s.0 as usize];
        let now = self.mark_ticks[s.0 as usize].is_some_and(|t| {
            self.scales[s.0 as usize].buffer_q16(book.lots[slot], book.base_q16[slot], t) < 0
        });
        let was = std::mem::replace(&mut book.liquidatable[slot], now);
        if should_emit(was, now, rearmed) {
            self.emit_isolated_event(a, s, at, out);
        }
    }

    fn emit_isolated_event(&self, a: AccountIdx, s: SymbolIdx, at: At, out: &mut dyn FnMut(Event)) {
        let id = self.accounts.id[a.0 as usize];
        let ev = self.view(id).liquidation(&self.cfg, &self.marks, Item::Isolated(id, s), at);
        out(Event::Liquidation(ev));
    }

    /// Evaluates the cross accounts touched by this message and emits the isolated items
    /// that crossed, then clears the scratch lists.
    fn finish_message(&mut self, at: At, out: &mut dyn FnMut(Event)) {
        // Book order, which is deterministic; the SPEC leaves the order within a message free.
        let mut touched = std::mem::take(&mut self.touched);
        for &a in &touched {
            self.eval_cross(a, false, at, out);
        }
        touched.clear();
        self.touched = touched;
        let mut crossed = std::mem::take(&mut self.emit_cross);
        for &a in &crossed {
            self.emit_cross_event(a, at, out);
        }
        crossed.clear();
        self.emit_cross = crossed;
        let mut isolated = std::mem::take(&mut self.emit_isolated);
        for &(s, slot) in &isolated {
            let a = self.isolated[s.0 as usize].account[slot as usize];
            self.emit_isolated_event(a, s, at, out);
        }
        isolated.clear();
        self.emit_isolated = isolated;
    }

    /// Moves symbol `s` to `to` ticks: updates every cross holder's buffer and evaluates
    /// every isolated position, recording those that crossed below maintenance.
    ///
    /// When the tick is the message's only change (`alone`, a `mark` message), each cross
    /// holder is evaluated in the same pass, while its record is in cache: a holder appears
    /// once per book, so its buffer is final. Otherwise (a `marks` message) holders are
    /// touched and evaluated once all the message's symbols have moved.
    fn tick(&mut self, s: SymbolIdx, to: i64, alone: bool) {
        let si = s.0 as usize;
        let from = self.mark_ticks[si].replace(to);
        let sc = &self.scales[si];
        let step = from.map(|from| (from, Move::new(sc, from, to)));
        let delta = |lots, base| match &step {
            Some((_, Some(step))) => step.delta_q16(lots),
            Some((from, None)) => sc.delta_q16(lots, *from, to),
            None => sc.buffer_q16(lots, base, to),
        };
        // Cross: each holder's delta goes to its account. Big books compute the deltas in
        // parallel first; small ones in the same pass. Accounts are unique within a book.
        let book = &self.cross[si];
        self.positions_evaluated += book.len() as u64;
        let parallel = book.len() >= self.parallel_min;
        if parallel {
            map_book(&mut self.deltas, book, self.parallel_min, delta);
        }
        let (msg_no, hot) = (self.msg_no, &mut self.accounts.hot);
        for (k, &a) in book.account.iter().enumerate() {
            if let Some(ahead) = book.account.get(k + PREFETCH_AHEAD) {
                prefetch(&hot[ahead.0 as usize]);
            }
            let d = if parallel { self.deltas[k] } else { delta(book.lots[k], book.base_q16[k]) };
            let h = &mut hot[a.0 as usize];
            h.buffer_q16 += d;
            if from.is_none() {
                h.n_unmarked -= 1;
            }
            if alone {
                let now = h.liquidatable_now();
                let was = std::mem::replace(&mut h.liquidatable, now);
                // A tick re-arms nothing: only a fresh crossing emits.
                if should_emit(was, now, false) {
                    self.emit_cross.push(a);
                }
            } else if h.stamp != msg_no {
                h.stamp = msg_no;
                self.touched.push(a);
            }
        }
        self.check_isolated(s, to);
    }

    /// Evaluates every isolated position of `s` at `ticks`, flipping flags in place and
    /// recording those that crossed below maintenance. Each position is its own item.
    fn check_isolated(&mut self, s: SymbolIdx, ticks: i64) {
        let si = s.0 as usize;
        let sc = &self.scales[si];
        let book = &mut self.isolated[si];
        self.positions_evaluated += book.len() as u64;
        let check = |(slot, (flag, (&lots, &base))): (usize, (&mut bool, (&i64, &i128)))| {
            let now = sc.buffer_q16(lots, base, ticks) < 0;
            let was = std::mem::replace(flag, now);
            (now && !was).then_some((s, slot as u32))
        };
        if book.lots.len() >= self.parallel_min {
            let columns = book
                .liquidatable
                .par_iter_mut()
                .zip(book.lots.par_iter().zip(book.base_q16.par_iter()));
            self.emit_isolated.par_extend(columns.enumerate().with_min_len(4096).filter_map(check));
        } else {
            self.emit_isolated.extend(
                book.liquidatable
                    .iter_mut()
                    .zip(book.lots.iter().zip(book.base_q16.iter()))
                    .enumerate()
                    .filter_map(check),
            );
        }
    }

    /// Recomputes every cross buffer from scratch and re-evaluates every item: the full-book
    /// sweep (start-up, on demand, and the check that incremental updates never drift).
    /// Emits as a message would, without re-arming.
    pub fn sweep(&mut self, at: At, out: &mut dyn FnMut(Event)) {
        self.msg_no += 1;
        let acc = &mut self.accounts;
        for (h, w) in acc.hot.iter_mut().zip(&acc.wallet_e8) {
            h.buffer_q16 = w * E8_TO_Q16;
            h.n_unmarked = 0;
        }
        for si in 0..self.cross.len() {
            let book = &self.cross[si];
            let Some(t) = self.mark_ticks[si] else {
                for &a in &book.account {
                    self.accounts.hot[a.0 as usize].n_unmarked += 1;
                }
                continue;
            };
            let sc = &self.scales[si];
            map_book(&mut self.deltas, book, self.parallel_min, |lots, base| {
                sc.buffer_q16(lots, base, t)
            });
            self.positions_evaluated += book.len() as u64;
            let hot = &mut self.accounts.hot;
            for (k, (&a, &d)) in book.account.iter().zip(&self.deltas).enumerate() {
                if let Some(ahead) = book.account.get(k + PREFETCH_AHEAD) {
                    prefetch(&hot[ahead.0 as usize]);
                }
                hot[a.0 as usize].buffer_q16 += d;
            }
        }
        for i in 0..self.accounts.id.len() {
            if self.accounts.hot[i].n_cross > 0 {
                self.touch(AccountIdx(i as u32));
            }
        }
        for si in 0..self.isolated.len() {
            if let Some(t) = self.mark_ticks[si] {
                self.check_isolated(SymbolIdx(si as u16), t);
            }
        }
        self.finish_message(at, out);
    }

    /// Positions evaluated so far (by ticks, funding and sweeps): what a tick costs grows
    /// with this, so benchmarks report it per tick.
    pub fn positions_evaluated(&self) -> u64 {
        self.positions_evaluated
    }

    /// The cross buffers, for tests that compare incremental state with a fresh sweep.
    pub fn cross_buffers(&self) -> Vec<(u64, i128, u32)> {
        let acc = &self.accounts;
        acc.id
            .iter()
            .zip(&acc.hot)
            .map(|(&id, h)| (id, h.buffer_q16, u32::from(h.n_unmarked)))
            .collect()
    }

    // --- state rules ---------------------------------------------------------------------

    /// Available balance in q16 (SPEC section 4); `Err(no_mark)` without a cross mark.
    fn available_q16(&self, a: AccountIdx) -> Result<i128, Reject> {
        let i = a.0 as usize;
        let mut avail = (self.accounts.wallet_e8[i] - self.accounts.order_margin_e8[i]) * E8_TO_Q16;
        for p in &self.accounts.pairs[i] {
            if p.mode != Mode::Cross || p.slot == NO_SLOT {
                continue;
            }
            let si = p.symbol.0 as usize;
            let t = self.mark_ticks[si].ok_or_else(rejects::no_cross_mark)?;
            let sc = &self.scales[si];
            let lots = self.cross[si].lots[p.slot as usize];
            let upnl =
                i128::from(lots) * i128::from(t) * sc.lot_tick_q16 - sc.cost_q16(lots, p.entry_e8);
            avail += upnl - self.im_q16(sc, lots, t, self.leverage_of(p.symbol, p));
        }
        Ok(avail)
    }

    /// `ceil8(notional / leverage)` in q16.
    fn im_q16(&self, sc: &Scale, lots: i64, ticks: i64, leverage: u32) -> i128 {
        let notional = sc.notional_n12(lots, ticks);
        let unit = i128::from(leverage) * 10_000; // n12 / leverage → e8 units
        (notional + unit - 1).div_euclid(unit) * E8_TO_Q16
    }

    /// Adds `delta_e8` to the wallet (and buffer) of `a`.
    fn add_wallet(&mut self, a: AccountIdx, delta_e8: i128) {
        let i = a.0 as usize;
        self.accounts.wallet_e8[i] += delta_e8;
        self.accounts.hot[i].buffer_q16 += delta_e8 * E8_TO_Q16;
    }

    /// Takes the position of pair (a, s) out of its book and the account's aggregates.
    fn remove_position(&mut self, a: AccountIdx, s: SymbolIdx) {
        let Some(p) = self.pair(a, s) else { return };
        if p.slot == NO_SLOT {
            return;
        }
        let (mode, slot, si) = (p.mode, p.slot, s.0 as usize);
        let book = match mode {
            Mode::Cross => &mut self.cross[si],
            Mode::Isolated => &mut self.isolated[si],
        };
        let (lots, base) = (book.lots[slot as usize], book.base_q16[slot as usize]);
        if let Some(moved) = book.swap_remove(slot) {
            self.pair_mut(moved, s).slot = slot;
        }
        self.pair_mut(a, s).slot = NO_SLOT;
        if mode == Mode::Cross {
            let h = &mut self.accounts.hot[a.0 as usize];
            h.n_cross -= 1;
            match self.mark_ticks[si] {
                Some(t) => h.buffer_q16 -= self.scales[si].buffer_q16(lots, base, t),
                None => h.n_unmarked -= 1,
            }
        }
    }

    fn insert_position(&mut self, a: AccountIdx, s: SymbolIdx, lots: i64, base_q16: i128) {
        let si = s.0 as usize;
        let mode = self.pair_mut(a, s).mode;
        let slot = match mode {
            Mode::Cross => self.cross[si].push(a, lots, base_q16),
            Mode::Isolated => self.isolated[si].push(a, lots, base_q16),
        };
        self.pair_mut(a, s).slot = slot;
        if mode == Mode::Cross {
            let h = &mut self.accounts.hot[a.0 as usize];
            h.n_cross += 1;
            match self.mark_ticks[si] {
                Some(t) => h.buffer_q16 += self.scales[si].buffer_q16(lots, base_q16, t),
                None => h.n_unmarked += 1,
            }
        }
    }

    fn funding(
        &mut self,
        s: SymbolIdx,
        rate: D8,
        at: At,
        out: &mut dyn FnMut(Event),
    ) -> Result<(), Reject> {
        let si = s.0 as usize;
        let t = self.mark_ticks[si]
            .ok_or_else(|| rejects::funding_without_mark(&self.cfg.symbols[si].name))?;
        let sc = &self.scales[si];
        // round8(size * P * rate): signed notional (n12) times rate (e8) is exact at 10^-20.
        let pay_e8 = |lots: i64| {
            let signed_n12 = i128::from(lots) * i128::from(t) * sc.lot_tick_n12;
            div_round_half_even(signed_n12 * rate.0, 10i128.pow(12))
        };
        let cross_pay: Vec<i128> = self.cross[si].lots.iter().map(|&l| pay_e8(l)).collect();
        let iso_pay: Vec<i128> = self.isolated[si].lots.iter().map(|&l| pay_e8(l)).collect();
        // Check every new balance before changing any (all or nothing). Of several that fail,
        // name the lowest account id, as the reference engine (which walks ids in order) does.
        let mut failure: Option<(u64, Reject)> = None;
        let mut note = |a: AccountIdx, result: Result<i128, Reject>| {
            if let Err(r) = result {
                let id = self.accounts.id[a.0 as usize];
                if failure.as_ref().is_none_or(|(f, _)| id < *f) {
                    failure = Some((id, r));
                }
            }
        };
        for (&a, &pay) in self.cross[si].account.iter().zip(&cross_pay) {
            note(a, in_limits("wallet", self.accounts.wallet_e8[a.0 as usize] - pay));
        }
        for (&a, &pay) in self.isolated[si].account.iter().zip(&iso_pay) {
            let pairs = &self.accounts.pairs[a.0 as usize];
            let p = &pairs[pairs.binary_search_by_key(&s, |p| p.symbol).expect("booked")];
            note(a, in_limits("isolated margin", p.isolated_e8 - pay));
        }
        if let Some((_, reject)) = failure {
            return Err(reject);
        }
        for (k, pay) in cross_pay.into_iter().enumerate() {
            let a = self.cross[si].account[k];
            self.add_wallet(a, -pay);
            self.touch(a);
        }
        for (k, pay) in iso_pay.into_iter().enumerate() {
            let a = self.isolated[si].account[k];
            self.pair_mut(a, s).isolated_e8 -= pay;
            self.isolated[si].base_q16[k] -= pay * E8_TO_Q16;
        }
        // Re-check the isolated positions at the unchanged mark.
        self.check_isolated(s, t);
        self.finish_message(at, out);
        Ok(())
    }
}

impl Engine for FastEngine {
    fn apply(&mut self, cmd: &Command, at: At, out: &mut dyn FnMut(Event)) -> Result<(), Reject> {
        self.msg_no += 1;
        match *cmd {
            Command::Mark { symbol, price } => {
                let si = symbol.0 as usize;
                self.marks[si] = Some(price);
                let ticks = price.0 / i128::from(self.scales[si].tick_e8);
                self.tick(symbol, ticks as i64, true);
                self.finish_message(at, out);
            }
            Command::Marks { ref prices } => {
                for &(s, price) in prices {
                    let si = s.0 as usize;
                    self.marks[si] = Some(price);
                    let ticks = price.0 / i128::from(self.scales[si].tick_e8);
                    self.tick(s, ticks as i64, false);
                }
                self.finish_message(at, out);
            }
            Command::Balance { account, wallet } => {
                let a = self.intern(account);
                let old = self.accounts.wallet_e8[a.0 as usize];
                self.add_wallet(a, wallet.0 - old);
                self.eval_cross(a, true, at, out);
            }
            Command::Transfer { account, amount } => {
                let a = self.intern(account);
                if amount.0 < 0 {
                    let available = self.available_q16(a)?;
                    if available + amount.0 * E8_TO_Q16 < 0 {
                        return Err(rejects::withdrawal_exceeds(amount.abs(), q16_text(available)));
                    }
                }
                in_limits("wallet", self.accounts.wallet_e8[a.0 as usize] + amount.0)?;
                self.add_wallet(a, amount.0);
                self.eval_cross(a, true, at, out);
            }
            Command::Position { account, symbol, size, entry_price, isolated_margin } => {
                let mode = self.mode_of(self.index.get(&account).copied(), symbol);
                match (mode, isolated_margin) {
                    (Mode::Cross, Some(_)) => return Err(rejects::isolated_margin_on_cross()),
                    (Mode::Isolated, None) if !size.is_zero() => {
                        return Err(rejects::isolated_margin_missing());
                    }
                    _ => {}
                }
                let a = self.intern(account);
                self.remove_position(a, symbol);
                let sc = &self.scales[symbol.0 as usize];
                let lots = (size.0 / i128::from(sc.step_e8)) as i64;
                let entry_e8 = entry_price.map_or(0, |e| e.0 as i64);
                let iso_e8 = isolated_margin.map_or(0, |m| m.0);
                let base = if mode == Mode::Isolated { iso_e8 * E8_TO_Q16 } else { 0 }
                    - sc.cost_q16(lots, entry_e8);
                let p = self.pair_mut(a, symbol);
                p.entry_e8 = entry_e8;
                if mode == Mode::Isolated {
                    p.isolated_e8 = iso_e8;
                }
                if lots != 0 {
                    self.insert_position(a, symbol, lots, base);
                }
                self.eval_cross(a, true, at, out);
                self.eval_isolated(a, symbol, true, at, out);
            }
            Command::MarginMode { account, symbol, mode } => {
                let a = self.index.get(&account).copied();
                if self.mode_of(a, symbol) != mode {
                    let p = a.and_then(|a| self.pair(a, symbol));
                    let (has_position, open_orders) =
                        p.map_or((false, 0), |p| (p.slot != NO_SLOT, p.open_orders));
                    if has_position || open_orders > 0 {
                        let size = p.map_or(D8::ZERO, |p| {
                            D8(i128::from(self.lots_of(p))
                                * i128::from(self.scales[symbol.0 as usize].step_e8))
                        });
                        return Err(rejects::mode_locked(size, open_orders));
                    }
                    let a = self.intern(account);
                    self.pair_mut(a, symbol).mode = mode;
                }
            }
            Command::Leverage { account, symbol, leverage } => {
                let si = symbol.0 as usize;
                let cfg = Arc::clone(&self.cfg); // rare message: a clone beats borrow gymnastics
                let sym = cfg.symbol(symbol);
                let a = self.index.get(&account).copied();
                let (lots, entry_e8) = a
                    .and_then(|a| self.pair(a, symbol))
                    .map_or((0, 0), |p| (self.lots_of(p), p.entry_e8));
                let sc = &self.scales[si];
                // The bracket at the notional at the mark, else at the entry price, else 0.
                let k = match self.mark_ticks[si] {
                    Some(t) => {
                        let n = sc.notional_n12(lots, t);
                        sym.bracket_index_by(|cap| n < cap.0 * 10_000)
                    }
                    None => {
                        let n_q16 = i128::from(lots.unsigned_abs() as i64)
                            * i128::from(sc.step_e8)
                            * i128::from(entry_e8);
                        sym.bracket_index_by(|cap| n_q16 < cap.0 * E8_TO_Q16)
                    }
                };
                let max = sym.brackets[k].max_leverage;
                if leverage > u64::from(max) {
                    let view = self.view(account);
                    let notional = view
                        .pair(symbol)
                        .map(|p| {
                            let px = self.marks[si].unwrap_or(p.entry_price);
                            margin::notional(&Exact::from_d8(p.size), &Exact::from_d8(px))
                        })
                        .unwrap_or_default();
                    return Err(rejects::leverage_exceeds_max(leverage, max, &sym.name, notional));
                }
                let a = self.intern(account);
                self.pair_mut(a, symbol).leverage = leverage as u32;
            }
            Command::Orders { account, symbol, open_orders, order_margin } => {
                let a = self.intern(account);
                let p = self.pair_mut(a, symbol);
                let old = std::mem::replace(&mut p.order_margin_e8, order_margin.0);
                p.open_orders = open_orders;
                self.accounts.order_margin_e8[a.0 as usize] += order_margin.0 - old;
            }
            Command::IsolatedMargin { account, symbol, amount } => {
                let si = symbol.0 as usize;
                let a = self.index.get(&account).copied();
                let p = a.and_then(|a| self.pair(a, symbol));
                let mode = p.map_or(self.cfg.default_margin_mode, |p| p.mode);
                if mode != Mode::Isolated {
                    return Err(rejects::margin_move_on_cross());
                }
                let Some(p) = p.filter(|p| p.slot != NO_SLOT) else {
                    return Err(rejects::margin_move_without_position());
                };
                let a = a.expect("a pair implies an account");
                let (slot, margin_now) = (p.slot as usize, p.isolated_e8);
                if amount.0 > 0 {
                    let available = self.available_q16(a)?;
                    if available - amount.0 * E8_TO_Q16 < 0 {
                        return Err(rejects::addition_exceeds(amount, q16_text(available)));
                    }
                } else {
                    let t = self.mark_ticks[si]
                        .ok_or_else(|| rejects::no_mark(&self.cfg.symbol(symbol).name))?;
                    let sc = &self.scales[si];
                    let lots = self.isolated[si].lots[slot];
                    let left = margin_now + amount.0;
                    if left < 0 {
                        return Err(rejects::removal_exceeds_margin(amount.abs(), D8(margin_now)));
                    }
                    let upnl = i128::from(lots) * i128::from(t) * sc.lot_tick_q16
                        - sc.cost_q16(lots, p.entry_e8);
                    let im = self.im_q16(sc, lots, t, self.leverage_of(symbol, p));
                    if left * E8_TO_Q16 + upnl < im {
                        return Err(rejects::removal_below_initial(
                            amount.abs(),
                            D8(left),
                            q16_text(upnl),
                            q16_text(im),
                        ));
                    }
                }
                in_limits("wallet", self.accounts.wallet_e8[a.0 as usize] - amount.0)?;
                in_limits("isolated margin", margin_now + amount.0)?;
                self.add_wallet(a, -amount.0);
                self.pair_mut(a, symbol).isolated_e8 += amount.0;
                self.isolated[si].base_q16[slot] += amount.0 * E8_TO_Q16;
                self.eval_cross(a, true, at, out);
                self.eval_isolated(a, symbol, true, at, out);
            }
            Command::Funding { symbol, rate } => self.funding(symbol, rate, at, out)?,
            Command::Query { account } => {
                out(Event::Account(self.view(account).report(&self.cfg, &self.marks, at)));
            }
        }
        Ok(())
    }
}
