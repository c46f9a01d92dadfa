//! Struct-of-arrays position books and the per-symbol integer scales they are read with.
//!
//! See `README.md` beside this file for why the columns are laid out this way.

use super::column::Column;
use crate::{
    config::{Mode, Symbol},
    fixed::SCALE_D8,
    protocol::PRICE_LIMIT,
};

/// Dense index of an account, assigned at first sight.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct AccountIdx(pub u32);

/// 10^8: from units of 10^-8 to units of 10^-16.
pub const E8_TO_Q16: i128 = SCALE_D8;

/// A symbol's constants for exact integer margin arithmetic.
///
/// Units: a price is `ticks` (× `tick_size`), a size is `lots` (× `step_size`), amounts are
/// `q16` (10^-16), notionals `n12` (10^-12). With at most 12 decimals in tick × step and 4 in
/// an mmr, `upnl` and `mm` are whole numbers of q16 (SPEC sections 1 and 2).
#[derive(Debug, Clone)]
pub struct Scale {
    pub tick_e8: i64,
    pub step_e8: i64,
    /// q16 value of one lot moving one tick: `step_e8 * tick_e8`.
    pub lot_tick_q16: i128,
    /// n12 notional of one lot at one tick: `step_e8 * tick_e8 / 10^4` (exact).
    pub lot_tick_n12: i128,
    /// Bracket caps in n12; the last is `i128::MAX` (the last bracket covers everything).
    pub cap_n12: Vec<i128>,
    /// mmr in units of 10^-4.
    pub mmr_e4: Vec<i128>,
    /// Maintenance amounts in q16.
    pub cum_q16: Vec<i128>,
    /// The highest mark a message can carry, in ticks.
    pub max_ticks: i64,
}

impl Scale {
    pub fn new(sym: &Symbol) -> Scale {
        // Config validation (SPEC section 2) holds tick_size < 10^9 and step_size < 10^8 (so
        // both e8 values are below 10^17 and fit i64), their decimals to at most 12 together,
        // and at least one bracket: these cannot fail on a config that loaded.
        let tick_e8 = i64::try_from(sym.tick_size.0).expect("tick_size < 10^9 fits i64 in e8");
        let step_e8 = i64::try_from(sym.step_size.0).expect("step_size < 10^8 fits i64 in e8");
        let lot_tick_q16 = i128::from(step_e8) * i128::from(tick_e8);
        assert_eq!(lot_tick_q16 % 10_000, 0, "tick and step decimals add up to at most 12");
        assert!(!sym.brackets.is_empty(), "a symbol has at least one bracket");
        let last = sym.brackets.len() - 1;
        Scale {
            tick_e8,
            step_e8,
            lot_tick_q16,
            lot_tick_n12: lot_tick_q16 / 10_000,
            cap_n12: sym
                .brackets
                .iter()
                .enumerate()
                .map(|(k, b)| if k == last { i128::MAX } else { b.cap.0 * 10_000 })
                .collect(),
            mmr_e4: sym
                .brackets
                .iter()
                .map(|b| {
                    debug_assert_eq!(b.mmr.0 % 10_000, 0, "mmr has at most 4 decimals");
                    b.mmr.0 / 10_000
                })
                .collect(),
            cum_q16: sym.brackets.iter().map(|b| b.cum.0 * E8_TO_Q16).collect(),
            max_ticks: i64::try_from((PRICE_LIMIT - 1) / i128::from(tick_e8)).expect("fits"),
        }
    }

    /// `notional` in n12 of `lots` at `ticks` (both signs allowed for `lots`).
    #[inline(always)]
    pub fn notional_n12(&self, lots: i64, ticks: i64) -> i128 {
        i128::from(lots.unsigned_abs() as i64) * i128::from(ticks) * self.lot_tick_n12
    }

    /// Maintenance margin in q16 of a notional in n12: `notional * mmr - cum` in its bracket.
    #[inline(always)]
    pub fn mm_q16(&self, notional_n12: i128) -> i128 {
        // Brackets are few (10 at most in practice) and most positions sit in the first:
        // a forward scan beats a binary search here.
        let mut k = 0;
        // The last cap is i128::MAX, above every notional, so the scan stops at the last
        // bracket at the latest.
        while notional_n12 >= self.cap_n12[k] {
            k += 1;
        }
        notional_n12 * self.mmr_e4[k] - self.cum_q16[k]
    }

    /// The signed value `size * mark` of `lots` at `ticks`, q16: `upnl` is this minus the cost.
    #[inline(always)]
    pub fn value_q16(&self, lots: i64, ticks: i64) -> i128 {
        i128::from(lots) * i128::from(ticks) * self.lot_tick_q16
    }

    /// `upnl + (isolated margin) - mm` of a position at `ticks`, given its `base`
    /// (`isolated_margin - cost` for isolated, `-cost` for cross).
    #[inline(always)]
    pub fn buffer_q16(&self, lots: i64, base_q16: i128, ticks: i64) -> i128 {
        base_q16 + self.value_q16(lots, ticks) - self.mm_q16(self.notional_n12(lots, ticks))
    }

    /// The least change of a position's buffer term `f(t) = buffer_q16(lots, base, t)` per
    /// tick, q16 (`lots != 0`): `|f(t2) - f(t1)| >= |t2 - t1| · slope_floor_q16(lots)` for
    /// any marks. The value `lots · t · lot_tick` moves by `|lots| · lot_tick_q16` a tick,
    /// and mm, continuous with non-decreasing rates `mmr_k` (SPEC section 2: `cum` makes it
    /// continuous, rates never fall), moves the same way as the notional by between 0 and
    /// `mmr_max` of it. A long's term rises by at least `|lots| · lot_tick_n12 · (10^4 −
    /// mmr_max_e4)` a tick (every mmr is below 1, so this is positive); a short's falls by
    /// at least `|lots| · lot_tick_q16`, since its mm rises as its value falls.
    #[inline]
    pub fn slope_floor_q16(&self, lots: i64) -> i128 {
        debug_assert_ne!(lots, 0);
        let q = i128::from(lots.unsigned_abs() as i64);
        if lots > 0 {
            // Rates never fall from one bracket to the next: the last is the largest.
            let mmr_max = *self.mmr_e4.last().expect("a symbol has a bracket");
            q * self.lot_tick_n12 * (10_000 - mmr_max)
        } else {
            q * self.lot_tick_q16
        }
    }

    /// The trigger (see [`fires`]) of a position at mark `t0` whose buffer term
    /// `f(t) = buffer_q16(lots, base, t)` must stay on one side of `v`: `f(t) >= v` when
    /// `keep_above`, else `f(t) <= v`. `t0` must be on that side. The trigger fires on the
    /// first mark outside the side, and never before: `f` is strictly monotone in the mark
    /// (increasing for a long, decreasing for a short, since every mmr is below 1 and mm is
    /// continuous across brackets), so the side is a range of ticks ending at `t0`'s far
    /// edge, found exactly with integer evaluations of `f`.
    pub fn trigger(&self, lots: i64, base: i128, t0: i64, v: i128, keep_above: bool) -> i64 {
        self.trigger_from(lots, base, t0, self.buffer_q16(lots, base, t0), v, keep_above)
    }

    /// [`Scale::trigger`] given `f0 = buffer_q16(lots, base, t0)`, which the caller has.
    pub fn trigger_from(
        &self,
        lots: i64,
        base: i128,
        t0: i64,
        f0: i128,
        v: i128,
        keep_above: bool,
    ) -> i64 {
        let f = |t: i64| self.buffer_q16(lots, base, t);
        debug_assert_eq!(f0, f(t0));
        let safe = |t: i64| if keep_above { f(t) >= v } else { f(t) <= v };
        debug_assert!(safe(t0), "the current mark is on the kept side");
        // The side runs from t0 down to 1 (a falling mark leaves it) or up to the limit.
        let down = (lots > 0) == keep_above;
        let (dir, reach) = if down { (-1, t0 - 1) } else { (1, self.max_ticks - t0) };
        // Guess: in t0's bracket f is linear, so the side ends |f0 - v| / slope ticks away.
        let neighbour = (t0 + dir).clamp(1, self.max_ticks);
        let slope = (f(neighbour) - f0).abs().max(1);
        let gap = (f0 - v).abs();
        // Both are non-negative; in 64 bits (the common case) the division is one
        // instruction instead of a library call.
        let guess = match (u64::try_from(gap), u64::try_from(slope)) {
            (Ok(g), Ok(d)) => i64::try_from(g / d).unwrap_or(i64::MAX),
            _ => i64::try_from(gap / slope).unwrap_or(i64::MAX),
        };
        let k = last_true(reach, guess, |k| safe(t0 + dir * k));
        match (down, k == reach) {
            (_, true) => 0,
            (true, false) => t0 - k,
            (false, false) => -(t0 + k),
        }
    }

    /// Cost `size * entry` in q16.
    pub fn cost_q16(&self, lots: i64, entry_e8: i64) -> i128 {
        i128::from(lots) * i128::from(self.step_e8) * i128::from(entry_e8)
    }

    /// The entry price (e8) of `lots` whose cost is `cost_q16`: the inverse of
    /// [`Scale::cost_q16`], exact since the cost was made by it.
    pub fn entry_e8(&self, lots: i64, cost_q16: i128) -> i64 {
        // Called for booked positions only, whose lots are non-zero (`Book::push`); the
        // quotient is the entry price the cost was made from, below 10^9 (SPEC section 1), so
        // below 10^17 in e8.
        debug_assert_ne!(lots, 0);
        let per_e8 = i128::from(lots) * i128::from(self.step_e8);
        debug_assert_eq!(cost_q16 % per_e8, 0, "a cost is a whole number of lot-entries");
        i64::try_from(cost_q16 / per_e8).expect("an entry price below 10^9 fits i64 in e8")
    }

    /// The liquidation price of SPEC section 4 (e8, `round8`, ties to even) of `lots` with
    /// cost `cost_q16`, where `m_q16` is the isolated margin or the rest of the cross
    /// account: `Some(None)` when the root is not > 0, `None` when a product would overflow
    /// `i128` (amounts near the limits: the caller then takes the exact path).
    ///
    /// In bracket k the root is `P = (M + cum − size·entry) / (q·mmr − size)`. With
    /// `d = |lots|·mmr_e4 − lots·10^4` (never 0, since mmr < 1) the denominator is
    /// `step·d·10^-12`, so `P_e8 = num_q16·10^4 / (step_e8·d)`, and the root's notional lies
    /// in `[floor, cap)` iff `|lots|·num_q16` lies in `[floor_n12·d, cap_n12·d)` (with
    /// `d > 0`, signs flipped if needed). The first bracket that holds its own root is the
    /// one, as in `margin::liquidation_price`.
    pub fn liquidation_price_e8(
        &self,
        lots: i64,
        cost_q16: i128,
        m_q16: i128,
    ) -> Option<Option<i128>> {
        let q = i128::from(lots.unsigned_abs());
        let last = self.cap_n12.len() - 1;
        for k in 0..=last {
            let num = m_q16.checked_add(self.cum_q16[k])?.checked_sub(cost_q16)?;
            let d = q.checked_mul(self.mmr_e4[k])?.checked_sub(i128::from(lots) * 10_000)?;
            debug_assert_ne!(d, 0, "mmr < 1 makes the slope non-zero");
            let (num, d) = if d < 0 { (num.checked_neg()?, -d) } else { (num, d) };
            let q_num = q.checked_mul(num)?;
            let above_floor = k == 0 || q_num >= self.cap_n12[k - 1].checked_mul(d)?;
            let below_cap = k == last || q_num < self.cap_n12[k].checked_mul(d)?;
            if above_floor && below_cap {
                if num <= 0 {
                    return Some(None);
                }
                let den = i128::from(self.step_e8).checked_mul(d)?;
                return Some(Some(super::div_round_half_even(num.checked_mul(10_000)?, den)));
            }
        }
        // A continuous strictly monotone function has its root in some bracket, so the loop
        // returns; were that ever not so, the exact path (`None`) still gives the event.
        debug_assert!(false, "no bracket holds the root");
        None
    }
}

/// Brackets a [`Quote`] prepares for on the stack; a symbol with more takes the general
/// formula (venues publish ten or so).
pub const QUOTE_BRACKETS: usize = 16;

/// A symbol's mark prepared for evaluating many positions at it: a position's bracket is
/// found by comparing its lots with per-bracket limits, and within its bracket the buffer
/// term is linear in the lots, so it costs one multiplication. Exact, and held on the stack.
#[derive(Debug, Clone)]
pub struct Quote<'a> {
    sc: &'a Scale,
    ticks: i64,
    /// Brackets in use (`QUOTE_BRACKETS + 1` when the symbol has more: general formula).
    brackets: usize,
    /// Limits compared (see [`Quote::new`]).
    counted: usize,
    /// Whether every slope fits in `i64` (then `slope_i64` holds them, and a term costs one
    /// 64 × 64 → 128-bit multiplication instead of three).
    narrow: bool,
    /// Bracket k holds |lots| below `limit[k]` (and not below the previous limit).
    limit: [i64; QUOTE_BRACKETS],
    /// Per bracket k, the buffer term of one lot `q`: `upnl − mm` is `q · slope[k][side] +
    /// cum[k]` on top of the base, with side 0 for a long (`value − mm_k` per lot) and 1 for
    /// a short (`−value − mm_k`), where `value = ticks · lot_tick_q16` and `mm_k = ticks ·
    /// lot_tick_n12 · mmr_k`.
    slope: [[i128; 2]; QUOTE_BRACKETS],
    slope_i64: [[i64; 2]; QUOTE_BRACKETS],
    cum: [i128; QUOTE_BRACKETS],
}

impl<'a> Quote<'a> {
    pub fn new(sc: &'a Scale, ticks: i64) -> Quote<'a> {
        let per_lot = i128::from(ticks) * sc.lot_tick_n12;
        let value = i128::from(ticks) * sc.lot_tick_q16;
        let (mut limit, mut slope, mut cum) =
            ([i64::MAX; QUOTE_BRACKETS], [[0; 2]; QUOTE_BRACKETS], [0; QUOTE_BRACKETS]);
        for k in 0..sc.cap_n12.len().min(QUOTE_BRACKETS) {
            // q · per_lot < cap  ⇔  q < ⌈cap / per_lot⌉ (per_lot > 0: ticks >= 1).
            let cap = sc.cap_n12[k];
            if cap != i128::MAX {
                limit[k] = i64::try_from((cap + per_lot - 1) / per_lot).unwrap_or(i64::MAX);
            }
            let mm = per_lot * sc.mmr_e4[k];
            slope[k] = [value - mm, -value - mm];
            cum[k] = sc.cum_q16[k];
        }
        let slope_i64 = slope.map(|s| s.map(|v| i64::try_from(v).unwrap_or(0)));
        let narrow = (slope.iter().flatten()).all(|&v| i64::try_from(v).is_ok());
        let brackets = sc.cap_n12.len();
        // The last bracket's limit is never reached; the others are counted in fours (the
        // padding limits are never reached either), which compiles to whole vector steps.
        let counted = (brackets - 1).next_multiple_of(4).min(QUOTE_BRACKETS);
        Quote { sc, ticks, brackets, counted, narrow, limit, slope, slope_i64, cum }
    }

    /// [`Scale::buffer_q16`] at the quoted mark.
    #[inline(always)]
    pub fn buffer_q16(&self, lots: i64, base_q16: i128) -> i128 {
        if self.brackets > QUOTE_BRACKETS {
            return self.sc.buffer_q16(lots, base_q16, self.ticks);
        }
        let q = lots.unsigned_abs() as i64;
        let k = self.bracket(q, &self.limit[..self.counted]);
        base_q16 + i128::from(q) * self.slope[k][usize::from(lots < 0)] + self.cum[k]
    }

    /// The bracket of `q` lots: the number of `limits` at or below it, counted without a
    /// branch per bracket (positions spread across brackets would make such branches
    /// unpredictable): `l - q - 1` is negative exactly when q >= l (both are non-negative, so
    /// it cannot overflow), and its sign bit counts.
    #[inline(always)]
    fn bracket(&self, q: i64, limits: &[i64]) -> usize {
        limits.iter().map(|&l| ((l - q - 1) as u64 >> 63) as usize).sum::<usize>()
    }

    /// Calls `f(k, term)` with the buffer term ([`Quote::buffer_q16`]) of every position `k`
    /// of the columns. The number of limits compared and the width of the slopes are chosen
    /// once here, so the loop `f` is inlined into has neither as a run-time variable.
    #[inline(always)]
    pub fn each_term(&self, lots: &[i64], base: &[i128], f: impl FnMut(usize, i128)) {
        if self.brackets > QUOTE_BRACKETS {
            return self.terms_with(lots, base, f, |l, b| self.sc.buffer_q16(l, b, self.ticks));
        }
        match (self.counted, self.narrow) {
            (0, true) => self.terms_with(lots, base, f, |l, b| self.term::<0, true>(l, b)),
            (4, true) => self.terms_with(lots, base, f, |l, b| self.term::<4, true>(l, b)),
            (8, true) => self.terms_with(lots, base, f, |l, b| self.term::<8, true>(l, b)),
            (12, true) => self.terms_with(lots, base, f, |l, b| self.term::<12, true>(l, b)),
            (_, true) => self.terms_with(lots, base, f, |l, b| self.term::<16, true>(l, b)),
            (0, false) => self.terms_with(lots, base, f, |l, b| self.term::<0, false>(l, b)),
            (4, false) => self.terms_with(lots, base, f, |l, b| self.term::<4, false>(l, b)),
            (8, false) => self.terms_with(lots, base, f, |l, b| self.term::<8, false>(l, b)),
            (12, false) => self.terms_with(lots, base, f, |l, b| self.term::<12, false>(l, b)),
            (_, false) => self.terms_with(lots, base, f, |l, b| self.term::<16, false>(l, b)),
        }
    }

    #[inline(always)]
    fn terms_with(
        &self,
        lots: &[i64],
        base: &[i128],
        mut f: impl FnMut(usize, i128),
        term: impl Fn(i64, i128) -> i128,
    ) {
        for (k, (&l, &b)) in lots.iter().zip(base).enumerate() {
            f(k, term(l, b));
        }
    }

    /// [`Quote::buffer_q16`] with `C` limits compared (`C == counted`) and, when `NARROW`,
    /// the `i64` slopes.
    #[inline(always)]
    fn term<const C: usize, const NARROW: bool>(&self, lots: i64, base_q16: i128) -> i128 {
        let q = lots.unsigned_abs() as i64;
        let limits: &[i64; C] = self.limit[..C].try_into().expect("C <= QUOTE_BRACKETS");
        let (k, side) = (self.bracket(q, limits), usize::from(lots < 0));
        let product = if NARROW {
            i128::from(q) * i128::from(self.slope_i64[k][side])
        } else {
            i128::from(q) * self.slope[k][side]
        };
        base_q16 + product + self.cum[k]
    }
}

/// The largest `k` in `[0, reach]` with `ok(k)`, for `ok` true at 0 and true-then-false
/// over the range; starts at `guess` and gallops, so an exact guess costs two calls.
fn last_true(reach: i64, guess: i64, ok: impl Fn(i64) -> bool) -> i64 {
    let g = guess.clamp(0, reach);
    // Invariant once set: ok(lo), !ok(hi).
    let (lo, hi) = if ok(g) {
        let (mut lo, mut step) = (g, 1i64);
        loop {
            if lo == reach {
                return reach;
            }
            let k = lo.saturating_add(step).min(reach);
            if !ok(k) {
                break (lo, k);
            }
            lo = k;
            step = step.saturating_mul(2);
        }
    } else {
        let (mut hi, mut step) = (g, 1i64);
        loop {
            let k = (hi - step).max(0);
            if ok(k) {
                break (k, hi);
            }
            hi = k;
            step = step.saturating_mul(2);
        }
    };
    let (mut lo, mut hi) = (lo, hi);
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        if ok(mid) { lo = mid } else { hi = mid }
    }
    lo
}

/// Whether a slot's trigger fires at mark `to` (ticks): `0` never fires, `t > 0` fires
/// when the mark falls below `t`, `t < 0` when it rises above `-t`.
#[inline(always)]
pub fn fires(trigger: i64, to: i64) -> bool {
    (trigger > 0) & (to < trigger) | (trigger < 0) & (to > trigger.wrapping_neg())
}

/// The trigger `old` moved `d` ticks towards the mark `t` (`d >= 0`): a falling trigger
/// (`old > 0`, fires below it) rises by `d`, a rising one (`old < 0`, fires above `-old`)
/// falls by `d`. `None` when `old` is 0 (never) or the moved trigger would fire at `t`.
/// Used by a funding for an isolated position it moved towards its flip: see
/// `commands::funding_move` for why the moved trigger still fires before the state can flip.
#[inline(always)]
pub fn moved_trigger(old: i64, d: i64, t: i64) -> Option<i64> {
    // `old < 0` cannot overflow; `old > 0` saturates at i64::MAX, which is not <= t.
    let moved = old.saturating_add(d);
    let safe = if old > 0 { moved <= t } else { old < 0 && moved <= -t };
    safe.then_some(moved)
}

/// Slots per [`Guard`].
pub const BLOCK: usize = 64;

/// What the triggers of one block of [`BLOCK`] slots can fire on, conservatively: every
/// trigger of the block fires only on a mark below `below` or above `above`. A tick reads
/// the guards and opens only the blocks whose guard it crosses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Guard {
    below: i64,
    above: i64,
}

impl Guard {
    const QUIET: Guard = Guard { below: 0, above: i64::MAX };

    #[inline(always)]
    fn include(&mut self, trigger: i64) {
        if trigger > 0 {
            self.below = self.below.max(trigger);
        } else if trigger < 0 {
            self.above = self.above.min(-trigger);
        }
    }

    #[inline(always)]
    fn open_at(&self, to: i64) -> bool {
        to < self.below || to > self.above
    }
}

/// The positions of one symbol in one margin mode, as parallel columns indexed by slot.
/// A slot's account appears in no other slot of the same book.
///
/// Beside the columns sits the trigger index: each slot's trigger (see [`fires`]) and, per
/// block of [`BLOCK`] slots, a [`Guard`] over the block's triggers. A slot's trigger is the
/// mark at which its item must be looked at again; [`Book::scan`] finds the slots a new mark
/// fires without reading the others.
#[derive(Debug, Clone)]
pub struct Book {
    /// Where the columns a slot's evaluation reads start, for [`Book::prefetch_slot`].
    bases: Bases,
    mode: Mode,
    pub account: Column<AccountIdx>,
    pub lots: Column<i64>,
    /// `isolated_margin - cost` (isolated book) or `-cost` (cross book), q16.
    pub base_q16: Column<i128>,
    /// Isolated book: the position's isolated margin, e8. Cross book: empty.
    pub isolated_e8: Column<i128>,
    /// Isolated book: the item's liquidatable flag. Cross book: empty (the flag of a cross
    /// item is its account's).
    pub liquidatable: Column<bool>,
    /// Per slot: the mark (ticks) at which the slot fires; 0 until one is set.
    trigger: Column<i64>,
    /// Per block of [`BLOCK`] slots.
    guards: Column<Guard>,
    /// Cross book: per slot, the number of the first entry of the symbol's funding log that
    /// the slot owes for: the log's end when its payments were last settled into its
    /// account's wallet (lazy funding, see `FastEngine::settle` and `FundingLog`). Isolated
    /// book: empty (isolated positions are paid at once).
    pub fund_from: Column<u32>,
    /// Cross book: per slot, its funding trigger (see [`fund_fires`]). Isolated book: empty.
    fund_trigger: Column<i128>,
    /// Cross book: per block of [`BLOCK`] slots, the least funding trigger of its longs and
    /// of its shorts ([`FUND_NEVER`] when none).
    fund_guards: Column<[i128; 2]>,
    /// At least every `|lots|` the book holds: the largest ever pushed, never lowered (a
    /// funding's largest payment, without reading every slot).
    pub max_lots: u64,
    /// Isolated book: at least every `|isolated_e8|` the book holds (e8): raised by
    /// [`Book::push`] and by every writer of a margin, never lowered. A funding whose largest
    /// payment keeps it in range (nearly always) needs no per-slot range check. Cross: 0.
    pub margin_bound_e8: i128,
    /// Isolated book: a funding's payment pass not yet run over the slots from `from` on
    /// (see [`PendingPass`]). Cross: always `None`.
    pub pending: Option<PendingPass>,
    /// Isolated book: the symbol is in the engine's queue of pending passes.
    pub pending_queued: bool,
}

/// A funding's pass over an isolated book ([`Book::pay_funding`]) that waits: the funding
/// found, from the guards, that no payment can flip a position at its mark `t`
/// ([`Book::funding_may_flip`]), so nothing is evaluated now. The slots from `from` on still
/// owe `round8(lots · c)` and their trigger moves; readers take the payment off
/// ([`Book::pending_pay`]), and the pass is run before anything reads a trigger or changes a
/// slot ([`Book::finish_pending`]): the mark is still `t` then, so the pass is the one the
/// funding would have run, and it evaluates nothing.
#[derive(Debug, Clone, Copy)]
pub struct PendingPass {
    /// The funding's per-lot payment (10^-20, as `FundingLog::c`).
    pub c: i128,
    /// Its trigger moves for longs and shorts (`commands::funding_move`).
    pub moves: [i64; 2],
    /// The mark (ticks) at the funding.
    pub t: i64,
    /// The first slot not yet paid.
    pub from: usize,
}

/// A funding trigger that never fires.
pub const FUND_NEVER: i128 = i128::MAX;
/// A funding trigger that fires on the symbol's next lazy funding.
pub const FUND_ALWAYS: i128 = i128::MIN;

/// Whether a cross slot of `lots` with funding trigger `trigger` fires when the symbol's
/// paying cumulatives are `paid = [U, V]` (`FastEngine`'s funding log: `U` rises with what a
/// long pays, `V` with what a short pays, each with a rounding allowance): a long fires when
/// `U > trigger`, a short when `V > trigger`.
#[inline(always)]
pub fn fund_fires(lots: i64, trigger: i128, paid: [i128; 2]) -> bool {
    paid[usize::from(lots < 0)] > trigger
}

/// The addresses of a book's columns, in one cache line at the start of the [`Book`], so
/// that a prefetch of a slot ([`Book::prefetch_slot`], a hint a few messages or accounts
/// ahead) reads this line instead of the headers of seven columns spread over the ~600-byte
/// `Book` (on the trade-heavy stream the hints spent a sixth of all samples on those header
/// misses). Plain addresses, refreshed whenever a column can move ([`Book::push`]): they are
/// only ever prefetched, never read through, so an address gone stale (a clone's) fetches a
/// wrong line and nothing else.
#[derive(Debug, Clone, Copy, Default)]
#[repr(C, align(64))]
struct Bases {
    len: usize,
    lots: usize,
    base_q16: usize,
    trigger: usize,
    guards: usize,
    /// Cross book: `fund_from`, `fund_trigger`, `fund_guards`. Isolated book: `isolated_e8`,
    /// `liquidatable`, 0.
    more: [usize; 3],
}

// One cache line.
const _: () = assert!(size_of::<Bases>() == 64);

/// Asks the CPU for the line at `addr` (a hint: a prefetch never faults, whatever the
/// address).
#[inline(always)]
#[allow(unsafe_code)]
fn prefetch_addr(addr: usize) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: PREFETCHT0 only hints the cache and never faults, even for an invalid address;
    // nothing is read through the pointer. SSE is part of the x86_64 baseline.
    unsafe {
        use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
        _mm_prefetch::<_MM_HINT_T0>(std::ptr::without_provenance::<i8>(addr));
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = addr;
}

impl Book {
    pub fn new(mode: Mode) -> Book {
        Book {
            bases: Bases::default(),
            mode,
            account: Column::new(),
            lots: Column::new(),
            base_q16: Column::new(),
            isolated_e8: Column::new(),
            liquidatable: Column::new(),
            trigger: Column::new(),
            guards: Column::new(),
            fund_from: Column::new(),
            fund_trigger: Column::new(),
            fund_guards: Column::new(),
            max_lots: 0,
            margin_bound_e8: 0,
            pending: None,
            pending_queued: false,
        }
    }

    pub fn len(&self) -> usize {
        self.account.len()
    }

    pub fn is_empty(&self) -> bool {
        self.account.is_empty()
    }

    /// Adds a position; `isolated_e8` is its isolated margin (0 in a cross book), and
    /// `base_q16` accounts for it already.
    pub fn push(
        &mut self,
        account: AccountIdx,
        lots: i64,
        base_q16: i128,
        isolated_e8: i128,
    ) -> u32 {
        debug_assert_ne!(lots, 0);
        // The new slot owes nothing: the pending pass must not reach it.
        self.finish_pending();
        // A book holds at most one position per account, and accounts are fewer than 2^32
        // (`FastEngine::intern`, where memory runs out first), so a slot is below `NO_SLOT`.
        let slot = u32::try_from(self.len()).expect("fewer than 2^32 positions per book");
        self.account.push(account);
        self.lots.push(lots);
        self.max_lots = self.max_lots.max(lots.unsigned_abs());
        self.base_q16.push(base_q16);
        match self.mode {
            Mode::Isolated => {
                self.margin_bound_e8 = self.margin_bound_e8.max(isolated_e8.abs());
                self.isolated_e8.push(isolated_e8);
                self.liquidatable.push(false);
            }
            Mode::Cross => {
                debug_assert_eq!(isolated_e8, 0, "a cross position has no margin");
                // The caller sets where its funding starts (the log's length).
                self.fund_from.push(0);
                self.fund_trigger.push(FUND_NEVER);
            }
        }
        self.trigger.push(0);
        if self.guards.len() * BLOCK < self.len() {
            self.guards.push(Guard::QUIET);
            if self.mode == Mode::Cross {
                self.fund_guards.push([FUND_NEVER; 2]);
            }
        }
        self.refresh_bases();
        slot
    }

    /// Removes `slot` by moving the last slot into it; returns the account that moved, if any.
    pub fn swap_remove(&mut self, slot: u32) -> Option<AccountIdx> {
        self.finish_pending();
        let i = slot as usize;
        assert!(i < self.len());
        self.account.swap_remove(i);
        self.lots.swap_remove(i);
        self.base_q16.swap_remove(i);
        if self.mode == Mode::Isolated {
            self.isolated_e8.swap_remove(i);
            self.liquidatable.swap_remove(i);
        }
        self.trigger.swap_remove(i);
        self.guards.truncate(self.len().div_ceil(BLOCK));
        if self.mode == Mode::Cross {
            self.fund_from.swap_remove(i);
            self.fund_trigger.swap_remove(i);
            self.fund_guards.truncate(self.len().div_ceil(BLOCK));
        }
        self.bases.len = self.len();
        if i < self.len() {
            self.guards[i / BLOCK].include(self.trigger[i]);
            if self.mode == Mode::Cross {
                fund_include(&mut self.fund_guards[i / BLOCK], self.lots[i], self.fund_trigger[i]);
            }
            Some(self.account[i])
        } else {
            None
        }
    }

    /// The cost `size * entry` of a slot's position, q16: what its base leaves out of the
    /// margin it holds.
    pub fn cost_q16(&self, slot: usize) -> i128 {
        let margin = self.isolated_e8.get(slot).map_or(0, |m| m * E8_TO_Q16);
        margin - self.base_q16[slot]
    }

    pub fn trigger(&self, slot: usize) -> i64 {
        self.trigger[slot]
    }

    /// Asks the CPU for what an evaluation of `slot` reads and writes (its lots, base,
    /// trigger and guard; a cross slot's funding start, funding trigger and funding guard;
    /// an isolated slot's margin and flag), ahead of it: a hint, no effect on results.
    ///
    /// It reads one line, [`Bases`], not the columns' headers.
    #[inline]
    pub fn prefetch_slot(&self, slot: usize) {
        let b = &self.bases;
        if slot >= b.len {
            return;
        }
        let block = slot / BLOCK;
        prefetch_addr(b.lots + slot * size_of::<i64>());
        prefetch_addr(b.base_q16 + slot * size_of::<i128>());
        prefetch_addr(b.trigger + slot * size_of::<i64>());
        prefetch_addr(b.guards + block * size_of::<Guard>());
        match self.mode {
            Mode::Cross => {
                prefetch_addr(b.more[0] + slot * size_of::<u32>());
                prefetch_addr(b.more[1] + slot * size_of::<i128>());
                prefetch_addr(b.more[2] + block * size_of::<[i128; 2]>());
            }
            Mode::Isolated => {
                prefetch_addr(b.more[0] + slot * size_of::<i128>());
                prefetch_addr(b.more[1] + slot * size_of::<bool>());
            }
        }
    }

    /// Asks the CPU for the `Book` itself (its column headers, lengths and bounds), a hint
    /// for a message about to read the book as a whole (a funding).
    #[inline]
    pub fn prefetch_header(&self) {
        let at = std::ptr::from_ref(self) as usize;
        (0..size_of::<Book>()).step_by(64).for_each(|k| prefetch_addr(at + k));
    }

    /// Asks the CPU for lines `lines` (64 bytes each, from the start) of every column a
    /// funding reads of this book, as far as the columns go: an isolated book's lots, margin,
    /// base, flag, trigger and guard columns (its payment pass reads them all in slot order),
    /// a cross book's funding guards (its trigger scan). Reads the one line of [`Bases`]. A
    /// hint: no effect on results.
    #[inline]
    pub fn prefetch_funding_lines(&self, lines: std::ops::Range<usize>) {
        let b = &self.bases;
        let blocks = b.len.div_ceil(BLOCK);
        let columns: [(usize, usize); 6] = match self.mode {
            Mode::Cross => [
                (b.more[2], blocks * size_of::<[i128; 2]>()),
                (0, 0),
                (0, 0),
                (0, 0),
                (0, 0),
                (0, 0),
            ],
            Mode::Isolated => [
                (b.lots, b.len * size_of::<i64>()),
                (b.more[0], b.len * size_of::<i128>()),
                (b.base_q16, b.len * size_of::<i128>()),
                (b.more[1], b.len * size_of::<bool>()),
                (b.trigger, b.len * size_of::<i64>()),
                (b.guards, blocks * size_of::<Guard>()),
            ],
        };
        for (base, bytes) in columns {
            for line in lines.clone().take_while(|l| l * 64 < bytes) {
                prefetch_addr(base + line * 64);
            }
        }
    }

    /// Refreshes [`Bases`] after the columns may have moved.
    fn refresh_bases(&mut self) {
        let at = |p: *const u8| p as usize;
        self.bases = Bases {
            len: self.len(),
            lots: at(self.lots.as_ptr().cast()),
            base_q16: at(self.base_q16.as_ptr().cast()),
            trigger: at(self.trigger.as_ptr().cast()),
            guards: at(self.guards.as_ptr().cast()),
            more: match self.mode {
                Mode::Cross => [
                    at(self.fund_from.as_ptr().cast()),
                    at(self.fund_trigger.as_ptr().cast()),
                    at(self.fund_guards.as_ptr().cast()),
                ],
                Mode::Isolated => {
                    [at(self.isolated_e8.as_ptr().cast()), at(self.liquidatable.as_ptr().cast()), 0]
                }
            },
        };
    }

    /// Sets a slot's trigger; its block's guard widens to cover it at once (it narrows
    /// again when a tick next opens the block).
    #[inline]
    pub fn set_trigger(&mut self, slot: usize, trigger: i64) {
        debug_assert!(self.pending.is_none(), "a trigger is set after the pending pass");
        self.trigger[slot] = trigger;
        self.guards[slot / BLOCK].include(trigger);
    }

    /// A cross slot's funding trigger (see [`fund_fires`]).
    pub fn fund_trigger(&self, slot: usize) -> i128 {
        self.fund_trigger[slot]
    }

    /// Sets a cross slot's funding trigger; its block's funding guard widens at once.
    #[inline]
    pub fn set_fund_trigger(&mut self, slot: usize, trigger: i128) {
        self.fund_trigger[slot] = trigger;
        fund_include(&mut self.fund_guards[slot / BLOCK], self.lots[slot], trigger);
    }

    /// The cross slots whose funding trigger fires at paying cumulatives `paid` (see
    /// [`fund_fires`]), appended to `fired`; their triggers become [`FUND_NEVER`] (the caller
    /// refreshes their accounts, which sets new ones). Reads the funding guards and the
    /// blocks they open, whose guards it tightens. Returns the slots read.
    pub fn fund_scan(&mut self, paid: [i128; 2], fired: &mut Vec<u32>) -> usize {
        let mut read = 0;
        for (b, guard) in self.fund_guards.iter_mut().enumerate() {
            if paid[0] <= guard[0] && paid[1] <= guard[1] {
                continue;
            }
            let (start, end) = (b * BLOCK, ((b + 1) * BLOCK).min(self.account.len()));
            read += end - start;
            let mut tight = [FUND_NEVER; 2];
            for k in start..end {
                let (lots, t) = (self.lots[k], &mut self.fund_trigger[k]);
                if fund_fires(lots, *t, paid) {
                    fired.push(k as u32);
                    *t = FUND_NEVER;
                } else {
                    fund_include(&mut tight, lots, *t);
                }
            }
            *guard = tight;
        }
        read
    }

    /// Moves every funding trigger by `-by` on its side (`by = [U, V]` at the moment the
    /// funding log's cumulatives restart from zero), so that each fires exactly where it did.
    /// [`FUND_NEVER`] and [`FUND_ALWAYS`] stay what they are; a moved trigger past the
    /// `i128` range saturates, which keeps it never firing (high) or firing at once (low).
    pub fn rebase_fund_triggers(&mut self, by: [i128; 2]) {
        for (t, &lots) in self.fund_trigger.iter_mut().zip(&self.lots) {
            if *t != FUND_NEVER && *t != FUND_ALWAYS {
                *t = t.saturating_sub(by[usize::from(lots < 0)]);
            }
        }
        self.rebuild_fund_guards();
    }

    fn rebuild_fund_guards(&mut self) {
        self.fund_guards.clear();
        let slots = self.lots.chunks(BLOCK).zip(self.fund_trigger.chunks(BLOCK));
        self.fund_guards.extend(slots.map(|(lots, triggers)| {
            let mut g = [FUND_NEVER; 2];
            lots.iter().zip(triggers).for_each(|(&l, &t)| fund_include(&mut g, l, t));
            g
        }));
    }

    /// Isolated book: pays a funding out of every slot at the unchanged mark `t` (a
    /// branch-light pass over the columns in slot order): slot `k` of `lots` pays
    /// `pay(k, lots)` (e8) out of its margin and base. A payment towards the slot's flip (a
    /// healthy one paying, a liquidatable one receiving) moves its trigger by
    /// `moves[side]` ticks towards the mark ([`moved_trigger`]; side 0 long, 1 short), where
    /// `moves` is at least the move every payment of this funding needs
    /// (`commands::funding_move`); when the moved trigger would fire at `t` (the payment may
    /// have flipped the slot) or the trigger was 0, the slot is appended to `evaluate` for
    /// an exact evaluation by the caller (its flag is left as it was). Returns nothing else:
    /// a payment away from the flip leaves the state and trigger valid.
    pub fn pay_funding(
        &mut self,
        pay: impl Fn(usize, i64) -> i128,
        moves: [i64; 2],
        t: i64,
        evaluate: &mut Vec<u32>,
    ) {
        self.pay_funding_range(0..self.len(), pay, moves, t, evaluate);
    }

    /// [`Book::pay_funding`] over the slots `range` only.
    fn pay_funding_range(
        &mut self,
        range: std::ops::Range<usize>,
        pay: impl Fn(usize, i64) -> i128,
        moves: [i64; 2],
        t: i64,
        evaluate: &mut Vec<u32>,
    ) {
        let n = self.account.len();
        let (lots, margin, base) =
            (&self.lots[..n], &mut self.isolated_e8[..n], &mut self.base_q16[..n]);
        let (flags, triggers) = (&self.liquidatable[..n], &mut self.trigger[..n]);
        let guards = &mut self.guards[..n.div_ceil(BLOCK)];
        for k in range {
            let q = lots[k];
            let pay = pay(k, q);
            margin[k] -= pay;
            base[k] -= pay * E8_TO_Q16;
            let towards = pay != 0 && (pay > 0) != flags[k];
            let old = triggers[k];
            let moved = moved_trigger(old, moves[usize::from(q < 0)], t);
            // Not towards: unchanged. Towards and moved: the moved trigger. Towards and not
            // moved: kept for now (the caller evaluates and sets it).
            let new = if towards { moved.unwrap_or(old) } else { old };
            triggers[k] = new;
            // `Guard::include` without its branches: `below` is never negative, so a
            // trigger <= 0 leaves it; a trigger >= 0 leaves `above`.
            let g = &mut guards[k / BLOCK];
            g.below = g.below.max(new);
            g.above = g.above.min(if new < 0 { -new } else { i64::MAX });
            if towards && moved.is_none() {
                // A slot of the book, and `Book::push` keeps slots below 2^32.
                evaluate.push(k as u32);
            }
        }
    }

    /// Whether a funding whose triggers move by at most `d` ticks (falling ones when
    /// `falling`, i.e. `c > 0`; rising ones otherwise) might leave a moved trigger firing at
    /// the mark `t`: some block's guard, moved by `d`, opens at `t`. False means no payment of
    /// it can flip a position at `t` (every moved trigger stays on its safe side), so its
    /// pass may wait ([`PendingPass`]). Reads only the guards.
    pub fn funding_may_flip(&self, d: i64, falling: bool, t: i64) -> bool {
        self.guards.iter().any(|g| {
            if falling {
                g.below > 0 && g.below.saturating_add(d) > t
            } else {
                g.above != i64::MAX && g.above.saturating_sub(d) < t
            }
        })
    }

    /// What the pending pass still owes slot `k` (e8, `round8(lots · c)`): 0 when none is
    /// pending or the pass has paid the slot.
    #[inline]
    pub fn pending_pay(&self, k: usize) -> i128 {
        match self.pending {
            Some(p) if k >= p.from => super::funding_pay_e8(self.lots[k], p.c),
            _ => 0,
        }
    }

    /// Slot `k`'s isolated margin (e8), what the pending pass owes taken off.
    #[inline]
    pub fn margin_now_e8(&self, k: usize) -> i128 {
        self.isolated_e8[k] - self.pending_pay(k)
    }

    /// Slot `k`'s base (q16), what the pending pass owes taken off.
    #[inline]
    pub fn base_now_q16(&self, k: usize) -> i128 {
        self.base_q16[k] - self.pending_pay(k) * E8_TO_Q16
    }

    /// Runs up to `max` slots of the pending pass; returns the slots paid and whether none
    /// is left pending. It evaluates nothing (see [`PendingPass`]).
    pub fn run_pending(&mut self, max: usize) -> (usize, bool) {
        let Some(p) = self.pending else { return (0, true) };
        let hi = p.from.saturating_add(max).min(self.len());
        let mut evaluate = Vec::new();
        let pay = |_, lots: i64| super::funding_pay_e8(lots, p.c);
        self.pay_funding_range(p.from..hi, pay, p.moves, p.t, &mut evaluate);
        // Invariant (`PendingPass`): no moved trigger fires at `t`, and no slot held a
        // trigger of 0 (`isolated_trigger` never gives one).
        debug_assert!(evaluate.is_empty(), "a pending pass evaluated {evaluate:?}");
        let done = hi >= self.len();
        self.pending = if done { None } else { Some(PendingPass { from: hi, ..p }) };
        (hi - p.from, done)
    }

    /// Runs what is left of the pending pass, if any.
    #[inline]
    pub fn finish_pending(&mut self) {
        if self.pending.is_some() {
            self.run_pending(usize::MAX);
        }
    }

    /// The columns an evaluation of every slot reads (lots, base) and writes (flag, trigger);
    /// call [`Book::rebuild_guards`] after writing triggers this way.
    pub fn columns_mut(&mut self) -> (&[i64], &[i128], &mut [bool], &mut [i64]) {
        self.finish_pending();
        (&self.lots, &self.base_q16, &mut self.liquidatable, &mut self.trigger)
    }

    pub fn rebuild_guards(&mut self) {
        self.guards.clear();
        self.guards.extend(self.trigger.chunks(BLOCK).map(guard_of));
    }

    /// The slots whose trigger fires at mark `to`, appended to `fired`, and the triggers
    /// they held, appended to `old` in the same order (a cross slot's old trigger is the last
    /// tick on its safe side, which `FastEngine::retrigger_alone` bounds its term by); their
    /// triggers are cleared (the caller sets new ones). Reads only the guards, and the blocks
    /// whose guard `to` crosses, whose guards it then tightens. Returns the slots read.
    pub fn scan(&mut self, to: i64, fired: &mut Vec<u32>, old: &mut Vec<i64>) -> usize {
        self.finish_pending();
        let mut read = 0;
        for (b, guard) in self.guards.iter_mut().enumerate() {
            if !guard.open_at(to) {
                continue;
            }
            let start = b * BLOCK;
            let block = &mut self.trigger[start..(start + BLOCK).min(self.account.len())];
            read += block.len();
            // Branch-free: in a wick most blocks hold a slot that fires, at no predictable
            // place, so each slot's index is written and the count advanced by whether it
            // fired; a fired slot's trigger becomes 0, which widens no guard.
            let (mut hit, mut was, mut n) = ([0u32; BLOCK], [0i64; BLOCK], 0);
            let (mut below, mut above) = (Guard::QUIET.below, Guard::QUIET.above);
            for (k, t) in block.iter_mut().enumerate() {
                let f = fires(*t, to);
                hit[n] = (start + k) as u32;
                was[n] = *t;
                n += usize::from(f);
                let kept = if f { 0 } else { *t };
                *t = kept;
                below = below.max(kept);
                above = above.min(if kept < 0 { kept.wrapping_neg() } else { i64::MAX });
            }
            fired.extend_from_slice(&hit[..n]);
            old.extend_from_slice(&was[..n]);
            *guard = Guard { below, above };
        }
        read
    }

    /// Heap bytes the book's columns hold (capacities: what was allocated, used or not).
    pub fn heap_bytes(&self) -> usize {
        self.account.heap_bytes()
            + self.lots.heap_bytes()
            + self.base_q16.heap_bytes()
            + self.isolated_e8.heap_bytes()
            + self.liquidatable.heap_bytes()
            + self.trigger.heap_bytes()
            + self.guards.heap_bytes()
            + self.fund_from.heap_bytes()
            + self.fund_trigger.heap_bytes()
            + self.fund_guards.heap_bytes()
    }

    /// Bytes of column data per position (what a sweep reads).
    pub const BYTES_PER_POSITION: usize =
        size_of::<AccountIdx>() + size_of::<i64>() + size_of::<i128>() + size_of::<bool>();
}

/// Widens a funding guard to cover a slot of `lots` with funding trigger `trigger`.
#[inline(always)]
fn fund_include(guard: &mut [i128; 2], lots: i64, trigger: i128) {
    let side = &mut guard[usize::from(lots < 0)];
    *side = (*side).min(trigger);
}

fn guard_of(triggers: &[i64]) -> Guard {
    let mut g = Guard::QUIET;
    triggers.iter().for_each(|&t| g.include(t));
    g
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{exact::Exact, fixed::D8, margin};

    fn symbol() -> Symbol {
        crate::config::three_bracket_btc()
    }

    /// The integer liquidation price equals the exact one (`margin::liquidation_price`, the
    /// reference engine's) for longs and shorts in every bracket, with roots at and around
    /// the bracket edges, null roots included; near the amount limits it declines (`None`)
    /// rather than overflow.
    #[test]
    fn integer_liquidation_price_equals_the_exact_one() {
        let sym = symbol();
        let sc = Scale::new(&sym);
        let mut rng = crate::synth::Rng::new(17);
        let (mut priced, mut null, mut brackets_hit) = (0, 0, [false; 3]);
        for _ in 0..20_000 {
            let lots = (1 + rng.below(20_000) as i64) * if rng.below(2) == 0 { 1 } else { -1 };
            let entry_e8 = (20_000 + rng.below(80_000) as i64) * 100_000_000;
            let cost = sc.cost_q16(lots, entry_e8);
            // M from −1.5 to +1.5 times the entry notional, to the 10^-8 or a round number.
            let notional_e8 = i128::from(lots.unsigned_abs()) * i128::from(entry_e8) / 1000;
            let m_e8 = notional_e8 * (rng.below(3001) as i128 - 1500) / 1000
                + rng.below(100_000_000) as i128;
            let m_e8 = if rng.below(4) == 0 { m_e8 / 100_000_000 * 100_000_000 } else { m_e8 };
            let want = margin::liquidation_price(
                &sym,
                &Exact::from_d8(D8(i128::from(lots) * i128::from(sc.step_e8))),
                &Exact::from_d8(D8(i128::from(entry_e8))),
                &Exact::from_d8(D8(m_e8)),
            );
            let got = sc.liquidation_price_e8(lots, cost, m_e8 * E8_TO_Q16);
            let got = got.expect("ordinary amounts stay inside i128");
            assert_eq!(
                got.map(D8),
                want.as_ref().map(|x| x.to_d8().unwrap()),
                "{lots} @ {entry_e8}, M {m_e8}"
            );
            match got {
                Some(p) => {
                    priced += 1;
                    let notional = i128::from(lots.unsigned_abs()) * i128::from(sc.step_e8) * p;
                    let k = sym.brackets.iter().position(|b| notional < b.cap.0 * SCALE_D8);
                    brackets_hit[k.unwrap_or(2)] = true;
                }
                None => null += 1,
            }
        }
        assert!(priced > 1000 && null > 1000, "{priced} priced, {null} null");
        assert_eq!(brackets_hit, [true; 3], "roots in every bracket");
        // An account margin near the amount limit times a huge size: declined, not wrong.
        let huge = sc.liquidation_price_e8(i64::MAX / 2, sc.cost_q16(1, 1), 10i128.pow(37));
        assert_eq!(huge, None);
    }

    #[test]
    fn integer_mm_equals_exact_mm_across_brackets() {
        let sym = symbol();
        let sc = Scale::new(&sym);
        // (lots, ticks): 1 BTC at 30000, 2 at 60000 (bracket 1), 10 at 61514.8 (bracket 2),
        // exactly at the first edge (50000 notional), and a short.
        for (lots, ticks) in
            [(1000, 300000), (2000, 600000), (10000, 615148), (1000, 500000), (-3, 7)]
        {
            let size = D8(i128::from(lots) * i128::from(sc.step_e8));
            let price = D8(i128::from(ticks) * i128::from(sc.tick_e8));
            let notional = margin::notional(&Exact::from_d8(size), &Exact::from_d8(price));
            let want = margin::maintenance(&sym, &notional);
            let got = sc.mm_q16(sc.notional_n12(lots, ticks));
            // Exact at 10^-20 times 10^16 is the q16 integer, as an Exact integer.
            let want_q16 = &want * &Exact::from_int(10i128.pow(16));
            assert_eq!(want_q16, Exact::from_int(got), "lots {lots} ticks {ticks}");
        }
    }

    #[test]
    fn quote_equals_the_general_formula_at_and_across_bracket_edges() {
        let sc = Scale::new(&symbol());
        let mut rng = crate::synth::Rng::new(17);
        // Notional edges at 50 000 and 250 000 (0.1 ticks, 0.001 lots): 1 BTC at 50 000 is
        // 1000 lots at 500 000 ticks.
        let marks = [1, 7, 499_999, 500_000, 500_001, 2_500_000, 2_499_999, 250_000, 125_000];
        for _ in 0..20_000 {
            let t = if rng.below(2) == 0 {
                marks[rng.below(marks.len() as u64) as usize]
            } else {
                1 + rng.below(5_000_000) as i64
            };
            let q = match rng.below(3) {
                0 => [1000, 999, 1001, 5000, 4999, 10_000, 100_000_000_000][rng.below(7) as usize],
                _ => 1 + rng.below(50_000) as i64,
            };
            let lots = if rng.below(2) == 0 { q } else { -q };
            let base = -sc.cost_q16(lots, 1 + rng.below(1 << 40) as i64);
            assert_eq!(
                Quote::new(&sc, t).buffer_q16(lots, base),
                sc.buffer_q16(lots, base, t),
                "lots {lots} at {t}"
            );
        }
    }

    /// A one-symbol scale with `n` brackets (caps 1000, 2000, ... ; mmr rising) and the
    /// given step size.
    fn scale_with_brackets(n: usize, step: &str) -> Scale {
        let brackets: Vec<String> = (1..=n)
            .map(|k| {
                format!(
                    r#"{{"notional_cap":"{}","max_leverage":{},"mmr":"0.{:04}"}}"#,
                    k * 1000,
                    200 - k,
                    10 + k
                )
            })
            .collect();
        let text = format!(
            r#"{{"default_margin_mode":"cross","default_leverage":20,"symbols":[{{"symbol":"X","tick_size":"0.1","step_size":"{step}","brackets":[{}]}}]}}"#,
            brackets.join(",")
        );
        Scale::new(&crate::config::Config::parse(&text).unwrap().symbols[0])
    }

    #[test]
    fn more_brackets_than_a_quote_holds_take_the_general_formula() {
        let sc = scale_with_brackets(QUOTE_BRACKETS + 1, "0.001");
        for (lots, t) in [(1, 10), (-50_000, 9_000), (100_000, 200_000), (-7, 1)] {
            assert_eq!(Quote::new(&sc, t).buffer_q16(lots, -5), sc.buffer_q16(lots, -5, t));
        }
    }

    /// `each_term` picks a loop by the number of limits compared and the width of the
    /// slopes: every pick equals the general formula, for positions spread over all brackets.
    #[test]
    fn each_term_equals_the_general_formula_for_every_bracket_count_and_width() {
        let mut rng = crate::synth::Rng::new(11);
        let mut widths = [false; 2];
        for n in [1, 2, 4, 5, 8, 9, 12, 13, 16, QUOTE_BRACKETS + 1] {
            // A lot of 0.001 at 10^4 is worth 10^17 q16 (the slopes fit in i64); a lot of
            // 10 at 100 is worth 10^19 q16 (they do not).
            for (step, t) in [("0.001", 100_000), ("10", 1_000), ("0.001", 7)] {
                let sc = scale_with_brackets(n, step);
                let quote = Quote::new(&sc, t);
                widths[usize::from(quote.narrow)] = true;
                // Lots from 1 to twice the last cap's (n · 1000 notional, 10^12 n12 each).
                let per_lot = t as u64 * sc.lot_tick_n12 as u64;
                let reach = (n as u64 * 1000 * 10u64.pow(12)).div_ceil(per_lot);
                let lots: Vec<i64> = (0..500)
                    .map(|_| {
                        let sign = if rng.below(2) == 0 { 1 } else { -1 };
                        (1 + rng.below(reach * 2) as i64) * sign
                    })
                    .collect();
                let last_cap = sc.cap_n12[n.saturating_sub(2)];
                assert!(n == 1 || lots.iter().any(|&l| sc.notional_n12(l, t) >= last_cap));
                let base: Vec<i128> =
                    lots.iter().map(|&l| -sc.cost_q16(l, 1 + rng.below(1 << 40) as i64)).collect();
                let mut got = vec![0; lots.len()];
                quote.each_term(&lots, &base, |k, term| got[k] = term);
                for (k, (&l, &b)) in lots.iter().zip(&base).enumerate() {
                    assert_eq!(
                        got[k],
                        sc.buffer_q16(l, b, t),
                        "{n} brackets, step {step}, {l} lots"
                    );
                }
            }
        }
        assert_eq!(widths, [true, true], "both slope widths are exercised");
    }

    /// The trigger fires exactly on the marks that leave the kept side: checked at the
    /// boundary, its neighbours, across bracket edges and at random marks.
    #[test]
    fn trigger_fires_exactly_where_the_side_is_left() {
        let sc = Scale::new(&symbol());
        let mut rng = crate::synth::Rng::new(5);
        // Bracket edges at 50 000 and 250 000 notional: 1000 lots at 500 000 ticks, etc.
        let marks = [1, 2, 499_999, 500_000, 500_001, 2_500_000, 250_000, 125_000];
        let mut with_edge = 0;
        for case in 0..20_000 {
            let t0 = if rng.below(2) == 0 {
                marks[rng.below(marks.len() as u64) as usize]
            } else {
                1 + rng.below(5_000_000) as i64
            };
            let q = [1, 999, 1000, 1001, 5000][rng.below(5) as usize] + rng.below(20_000) as i64;
            let lots = if rng.below(2) == 0 { q } else { -q };
            let entry = 1 + rng.below(10_000_000_000_000) as i64;
            let base = -sc.cost_q16(lots, entry) + rng.below(1 << 40) as i128 * 1000;
            let f0 = sc.buffer_q16(lots, base, t0);
            let keep_above = rng.below(2) == 0;
            let room = i128::from(rng.below(1 << 50)) * [0, 1, 1000][rng.below(3) as usize];
            let v = if keep_above { f0 - room } else { f0 + room };
            let safe = |t: i64| {
                let f = sc.buffer_q16(lots, base, t);
                if keep_above { f >= v } else { f <= v }
            };
            let trig = sc.trigger(lots, base, t0, v, keep_above);
            assert!(!fires(trig, t0), "case {case}: fires at its own mark");
            let edge = trig.abs();
            let mut probes = vec![t0, 1, sc.max_ticks, 1 + rng.below(sc.max_ticks as u64) as i64];
            if edge != 0 {
                with_edge += 1;
                probes.extend([edge - 2, edge - 1, edge, edge + 1, edge + 2]);
            }
            probes.extend(marks);
            for t in probes.into_iter().filter(|&t| (1..=sc.max_ticks).contains(&t)) {
                assert_eq!(
                    fires(trig, t),
                    !safe(t),
                    "case {case}: lots {lots} base {base} t0 {t0} v {v} above {keep_above} \
                     trigger {trig} at {t}"
                );
            }
        }
        assert!(with_edge > 15_000, "most cases have an edge to probe: {with_edge}");
    }

    /// The addresses a slot's prefetch uses follow the columns through growth (heap
    /// doublings and the move into a mapping) and removals, in both modes.
    #[test]
    fn prefetch_bases_follow_the_columns() {
        for mode in [Mode::Cross, Mode::Isolated] {
            let mut book = Book::new(mode);
            let check = |book: &Book| {
                let b = book.bases;
                assert_eq!(b.len, book.len());
                assert_eq!(b.lots, book.lots.as_ptr() as usize);
                assert_eq!(b.base_q16, book.base_q16.as_ptr() as usize);
                assert_eq!(b.trigger, book.trigger.as_ptr() as usize);
                assert_eq!(b.guards, book.guards.as_ptr() as usize);
                let more = match mode {
                    Mode::Cross => [
                        book.fund_from.as_ptr() as usize,
                        book.fund_trigger.as_ptr() as usize,
                        book.fund_guards.as_ptr() as usize,
                    ],
                    Mode::Isolated => {
                        [book.isolated_e8.as_ptr() as usize, book.liquidatable.as_ptr() as usize, 0]
                    }
                };
                assert_eq!(b.more, more);
            };
            let margin = if mode == Mode::Isolated { 5 } else { 0 };
            for k in 0..200_000u32 {
                book.push(AccountIdx(k), 1 + i64::from(k % 7), 0, margin);
                if k.is_power_of_two() || k % 65_536 == 0 {
                    check(&book);
                    book.prefetch_slot(k as usize);
                }
            }
            check(&book);
            book.swap_remove(3);
            check(&book);
            (0..book.len()).step_by(997).for_each(|k| book.prefetch_slot(k));
        }
    }

    /// A scan returns exactly the slots whose triggers fire, however the triggers were set,
    /// moved by removals or cleared by earlier scans.
    #[test]
    fn scan_finds_exactly_the_firing_slots() {
        let mut rng = crate::synth::Rng::new(9);
        let mut book = Book::new(Mode::Cross);
        let mut want: Vec<i64> = Vec::new();
        let pick = |rng: &mut crate::synth::Rng| match rng.below(3) {
            0 => 0,
            1 => 1 + rng.below(1000) as i64,
            _ => -(1 + rng.below(1000) as i64),
        };
        for round in 0..3000 {
            match rng.below(4) {
                0 | 1 => {
                    let slot = book.push(AccountIdx(round), 1, 0, 0) as usize;
                    let t = pick(&mut rng);
                    book.set_trigger(slot, t);
                    want.push(t);
                }
                2 if !book.is_empty() => {
                    let slot = rng.below(book.len() as u64) as usize;
                    book.swap_remove(slot as u32);
                    want.swap_remove(slot);
                }
                _ if !book.is_empty() => {
                    let slot = rng.below(book.len() as u64) as usize;
                    let t = pick(&mut rng);
                    book.set_trigger(slot, t);
                    want[slot] = t;
                }
                _ => {}
            }
            if round % 7 == 0 {
                let to = 1 + rng.below(1000) as i64;
                let (mut fired, mut old) = (Vec::new(), Vec::new());
                book.scan(to, &mut fired, &mut old);
                // Each fired slot with the trigger it held.
                let mut got: Vec<(u32, i64)> = fired.iter().copied().zip(old).collect();
                assert_eq!(got.len(), fired.len(), "an old trigger per fired slot");
                got.sort_unstable();
                fired.sort_unstable();
                let expected: Vec<(u32, i64)> = (0..want.len())
                    .filter(|&k| fires(want[k], to))
                    .map(|k| (k as u32, want[k]))
                    .collect();
                assert_eq!(got, expected, "round {round}, mark {to}");
                for &k in &fired {
                    want[k as usize] = 0;
                }
            }
            assert_eq!((0..book.len()).map(|k| book.trigger(k)).collect::<Vec<_>>(), want);
        }
    }
}
