//! Struct-of-arrays position books and the per-symbol integer scales they are read with.
//!
//! See `README.md` beside this file for why the columns are laid out this way.

use crate::{config::Symbol, fixed::SCALE_D8};

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
}

impl Scale {
    pub fn new(sym: &Symbol) -> Scale {
        let tick_e8 = i64::try_from(sym.tick_size.0).expect("tick below 10^9 fits");
        let step_e8 = i64::try_from(sym.step_size.0).expect("step fits");
        let lot_tick_q16 = i128::from(step_e8) * i128::from(tick_e8);
        assert_eq!(lot_tick_q16 % 10_000, 0, "tick and step decimals add up to at most 12");
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
        while notional_n12 >= self.cap_n12[k] {
            k += 1;
        }
        notional_n12 * self.mmr_e4[k] - self.cum_q16[k]
    }

    /// `upnl + (isolated margin) - mm` of a position at `ticks`, given its `base`
    /// (`isolated_margin - cost` for isolated, `-cost` for cross).
    #[inline(always)]
    pub fn buffer_q16(&self, lots: i64, base_q16: i128, ticks: i64) -> i128 {
        let value = i128::from(lots) * i128::from(ticks) * self.lot_tick_q16;
        base_q16 + value - self.mm_q16(self.notional_n12(lots, ticks))
    }

    /// `upnl - mm` change of a position when the mark moves from `from` to `to` ticks.
    #[inline(always)]
    pub fn delta_q16(&self, lots: i64, from: i64, to: i64) -> i128 {
        let value = i128::from(lots) * i128::from(to - from) * self.lot_tick_q16;
        value
            - (self.mm_q16(self.notional_n12(lots, to))
                - self.mm_q16(self.notional_n12(lots, from)))
    }

    /// Per bracket (up to [`MOVE_BRACKETS`]), the |lots| below which a position at `ticks`
    /// (> 0) is under the cap: `q · ticks · lot_tick_n12 < cap ⇔ q < ⌈cap / (ticks ·
    /// lot_tick_n12)⌉`. The last bracket's is `i64::MAX`, which no size reaches.
    fn lots_limits(&self, ticks: i64) -> [i64; MOVE_BRACKETS] {
        let per_lot = i128::from(ticks.max(1)) * self.lot_tick_n12;
        let mut limits = [i64::MAX; MOVE_BRACKETS];
        for (lim, &cap) in limits.iter_mut().zip(&self.cap_n12) {
            if cap != i128::MAX {
                *lim = i64::try_from((cap + per_lot - 1) / per_lot).unwrap_or(i64::MAX);
            }
        }
        limits
    }

    /// Cost `size * entry` in q16.
    pub fn cost_q16(&self, lots: i64, entry_e8: i64) -> i128 {
        i128::from(lots) * i128::from(self.step_e8) * i128::from(entry_e8)
    }
}

/// Brackets a [`Move`] prepares for on the stack; a symbol with more takes the general
/// formula for every position (venues publish ten or so).
pub const MOVE_BRACKETS: usize = 16;

/// One move of a symbol's mark, prepared so that each position's `upnl − mm` change costs
/// two multiplications: the bracket of a position at either price is found by comparing its
/// lots with per-move thresholds, and within one bracket mm is linear in the price. A
/// position that changes bracket takes the general [`Scale::delta_q16`]. Exact either way.
/// Held on the stack: a tick allocates nothing.
#[derive(Debug, Clone)]
pub struct Move<'a> {
    sc: &'a Scale,
    from: i64,
    to: i64,
    /// Bracket k holds |lots| below `from_lim[k]` (and not below the previous limit).
    from_lim: [i64; MOVE_BRACKETS],
    to_lim: [i64; MOVE_BRACKETS],
    /// `(to − from) · lot_tick_q16`: the upnl change per lot.
    value: i128,
    /// `(to − from) · lot_tick_n12 · mmr_k`: the mm change per lot within bracket k.
    mm_per_lot: [i128; MOVE_BRACKETS],
}

impl<'a> Move<'a> {
    /// `None` when the symbol has more than [`MOVE_BRACKETS`] brackets.
    pub fn new(sc: &'a Scale, from: i64, to: i64) -> Option<Move<'a>> {
        if sc.cap_n12.len() > MOVE_BRACKETS {
            return None;
        }
        let step = i128::from(to - from);
        let mut mm_per_lot = [0; MOVE_BRACKETS];
        for (m, mmr) in mm_per_lot.iter_mut().zip(&sc.mmr_e4) {
            *m = step * sc.lot_tick_n12 * mmr;
        }
        Some(Move {
            sc,
            from,
            to,
            from_lim: sc.lots_limits(from),
            to_lim: sc.lots_limits(to),
            value: step * sc.lot_tick_q16,
            mm_per_lot,
        })
    }

    #[inline(always)]
    pub fn delta_q16(&self, lots: i64) -> i128 {
        let q = lots.unsigned_abs() as i64;
        let k = bracket_of(&self.to_lim, q);
        if k == bracket_of(&self.from_lim, q) {
            i128::from(lots) * self.value - i128::from(q) * self.mm_per_lot[k]
        } else {
            self.sc.delta_q16(lots, self.from, self.to)
        }
    }
}

#[inline(always)]
fn bracket_of(limits: &[i64], q: i64) -> usize {
    let mut k = 0;
    while q >= limits[k] {
        k += 1;
    }
    k
}

/// The positions of one symbol in one margin mode, as parallel columns indexed by slot.
/// A slot's account appears in no other slot of the same book.
#[derive(Debug, Clone, Default)]
pub struct Book {
    pub account: Vec<AccountIdx>,
    pub lots: Vec<i64>,
    /// `isolated_margin - cost` (isolated book) or `-cost` (cross book), q16.
    pub base_q16: Vec<i128>,
    /// Isolated book: the item's liquidatable flag. Cross book: unused (all false).
    pub liquidatable: Vec<bool>,
}

impl Book {
    pub fn len(&self) -> usize {
        self.account.len()
    }

    pub fn is_empty(&self) -> bool {
        self.account.is_empty()
    }

    pub fn push(&mut self, account: AccountIdx, lots: i64, base_q16: i128) -> u32 {
        debug_assert_ne!(lots, 0);
        let slot = u32::try_from(self.len()).expect("fewer than 2^32 positions per book");
        self.account.push(account);
        self.lots.push(lots);
        self.base_q16.push(base_q16);
        self.liquidatable.push(false);
        slot
    }

    /// Removes `slot` by moving the last slot into it; returns the account that moved, if any.
    pub fn swap_remove(&mut self, slot: u32) -> Option<AccountIdx> {
        let i = slot as usize;
        assert!(i < self.len());
        self.account.swap_remove(i);
        self.lots.swap_remove(i);
        self.base_q16.swap_remove(i);
        self.liquidatable.swap_remove(i);
        (i < self.len()).then(|| self.account[i])
    }

    /// Bytes of column data per position (what a sweep reads).
    pub const BYTES_PER_POSITION: usize =
        size_of::<AccountIdx>() + size_of::<i64>() + size_of::<i128>() + size_of::<bool>();
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{exact::Exact, fixed::D8, margin};

    fn symbol() -> Symbol {
        crate::config::three_bracket_btc()
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
    fn delta_is_the_difference_of_buffers() {
        let sc = Scale::new(&symbol());
        let (lots, base) = (-2500, sc.cost_q16(-2500, 6_000_000_000_000));
        for (from, to) in [(600000, 610000), (100, 4_000_000), (4_000_000, 100)] {
            assert_eq!(
                sc.delta_q16(lots, from, to),
                sc.buffer_q16(lots, -base, to) - sc.buffer_q16(lots, -base, from)
            );
        }
    }

    #[test]
    fn prepared_move_equals_the_general_delta_at_and_across_bracket_edges() {
        let sc = Scale::new(&symbol());
        // Notional edges at 50 000 and 250 000 (0.1 ticks, 0.001 lots): 1 BTC at 50 000 is
        // 1000 lots at 500 000 ticks.
        let mut rng = crate::synth::Rng::new(17);
        let prices = [1, 7, 499_999, 500_000, 500_001, 2_500_000, 2_499_999, 250_000, 125_000];
        for _ in 0..20_000 {
            let pick = |rng: &mut crate::synth::Rng| {
                if rng.below(2) == 0 {
                    prices[rng.below(prices.len() as u64) as usize]
                } else {
                    1 + rng.below(5_000_000) as i64
                }
            };
            let (from, to) = (pick(&mut rng), pick(&mut rng));
            let q = match rng.below(3) {
                0 => [1000, 999, 1001, 5000, 4999, 10_000, 100_000_000_000][rng.below(7) as usize],
                _ => 1 + rng.below(50_000) as i64,
            };
            let lots = if rng.below(2) == 0 { q } else { -q };
            assert_eq!(
                Move::new(&sc, from, to).unwrap().delta_q16(lots),
                sc.delta_q16(lots, from, to),
                "lots {lots} from {from} to {to}"
            );
        }
    }

    #[test]
    fn more_brackets_than_a_move_holds_take_the_general_formula() {
        let brackets: Vec<String> = (1..=MOVE_BRACKETS + 1)
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
            r#"{{"default_margin_mode":"cross","default_leverage":20,"symbols":[{{"symbol":"X","tick_size":"0.1","step_size":"0.001","brackets":[{}]}}]}}"#,
            brackets.join(",")
        );
        let cfg = crate::config::Config::parse(&text).unwrap();
        let sc = Scale::new(&cfg.symbols[0]);
        assert!(Move::new(&sc, 100, 200).is_none());
        let sc = Scale::new(&symbol());
        assert!(Move::new(&sc, 100, 200).is_some());
    }
}
