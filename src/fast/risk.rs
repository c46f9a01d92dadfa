//! The fast engine's read side (SPEC section 9.3): account reports and at-risk lists.
//!
//! An at-risk list needs every item's margin balance and maintenance, and the engine keeps
//! neither per cross account (its ticks need only the buffer's sign, see `README.md`). So
//! [`FastEngine::risk_items`] computes them all, the way the sweep does: the cross books one
//! at a time, each position's `upnl` and `upnl − mm` added to its account's two sums (rayon
//! workers split a big book; a book holds an account once, so no two workers add to one sum),
//! then the isolated books. Every figure is exact in `i128` q16.
//!
//! Choosing the `limit` items most at risk out of millions then takes two stages:
//! 1. **Preselection on a float key.** `maintenance / balance` as `f64` (`+∞` for a balance
//!    <= 0) is within a relative 4·2⁻⁵³ of the exact ratio. A min-heap holds the `limit`
//!    largest keys seen; an item whose key is below the heap's least times `1 − 10⁻¹²` can
//!    never be among the `limit` most at risk, and is dropped. What is kept is a superset of
//!    the answer, ties included (see [`Preselect`]).
//! 2. **Exact order** of that superset: ratios compared by cross-multiplying in 256 bits
//!    ([`mul_wide`]), ties by account id and symbol. The float never decides the order.
//!
//! Only the `limit` items returned get exact decimal strings and liquidation prices, through
//! the same path as liquidation events (`FastEngine::liquidation_event`).

use std::{cmp::Ordering, collections::BinaryHeap};

use rayon::prelude::*;

use super::{
    CHUNK, FastEngine, PREFETCH_AHEAD, Sum,
    book::{AccountIdx, E8_TO_Q16, Quote},
    prefetch,
};
use crate::{
    config::{Mode, SymbolIdx},
    engine::{At, RiskQuery},
    exact::{Exact, round8_ratio},
    fixed::D8,
    protocol::{AccountReport, RiskItem},
    report::{self, Item},
};

/// Relative slack of the preselection: far above the float key's error (4·2⁻⁵³ ≈ 4.4e-16),
/// far below any ratio difference that matters for how many items are kept.
const PRESELECT_SLACK: f64 = 1e-12;

/// Where an at-risk candidate is in the books.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ref {
    Cross(AccountIdx),
    /// Symbol and slot in its isolated book.
    Isolated(SymbolIdx, u32),
}

/// A candidate with its exact figures (q16) and its tie key.
#[derive(Debug, Clone, Copy)]
struct Candidate {
    at: Ref,
    balance_q16: i128,
    maint_q16: i128,
    account: u64,
    /// `None` for a cross item (before the account's isolated items on a tie).
    symbol: Option<SymbolIdx>,
}

/// The preselection key of an item: `maintenance / balance` as a float, `+∞` when the balance
/// is <= 0 (a null ratio ranks first). Non-negative (maintenance is > 0 for a non-zero
/// position), so its bit pattern orders as the float does.
fn key_bits(balance_q16: i128, maint_q16: i128) -> u64 {
    debug_assert!(maint_q16 >= 0, "maintenance of non-zero positions is positive");
    let key = if balance_q16 <= 0 { f64::INFINITY } else { maint_q16 as f64 / balance_q16 as f64 };
    key.to_bits()
}

/// The float threshold below which a key cannot be among the `limit` largest, given that the
/// `limit`-th largest key seen so far is `least`.
fn threshold(least: u64) -> f64 {
    f64::from_bits(least) * (1.0 - PRESELECT_SLACK)
}

/// Stage 1: keeps a superset of the `limit` items of largest exact ratio.
///
/// Why a superset: let τ be the `limit`-th largest key at the end. At least `limit` items
/// have a key >= τ, so an exact ratio >= τ / (1 + ε); every item of the exact top `limit`
/// (ties included) therefore has an exact ratio >= τ / (1 + ε) and a key >= τ (1 − ε) /
/// (1 + ε) > τ (1 − 10⁻¹²). The heap's least only grows, so an item dropped on the way had a
/// key below the final threshold too. (A key of `+∞` is exact: only null ratios have it.)
struct Preselect {
    limit: usize,
    /// The `limit` largest keys seen (a min-heap).
    heap: BinaryHeap<std::cmp::Reverse<u64>>,
    kept: Vec<(u64, Ref)>,
}

impl Preselect {
    fn new(limit: usize) -> Preselect {
        Preselect { limit, heap: BinaryHeap::new(), kept: Vec::new() }
    }

    /// The current threshold, once `limit` keys are in.
    fn least(&self) -> Option<u64> {
        (self.heap.len() >= self.limit).then(|| self.heap.peek().map_or(u64::MAX, |r| r.0))
    }

    fn offer(&mut self, key: u64, at: Ref) {
        if self.limit == 0 {
            return;
        }
        match self.least() {
            None => self.heap.push(std::cmp::Reverse(key)),
            Some(least) => {
                if key > least {
                    self.heap.pop();
                    self.heap.push(std::cmp::Reverse(key));
                }
                let least = self.least().expect("the heap stays full");
                if f64::from_bits(key) < threshold(least) {
                    return;
                }
            }
        }
        self.kept.push((key, at));
        // Keys arriving in rising order would keep everything: drop what fell behind.
        if self.kept.len() >= self.limit.max(1024).saturating_mul(4) {
            self.prune();
        }
    }

    fn prune(&mut self) {
        if let Some(least) = self.least() {
            let t = threshold(least);
            self.kept.retain(|&(k, _)| f64::from_bits(k) >= t);
        }
    }

    fn finish(mut self) -> Vec<Ref> {
        self.prune();
        self.kept.into_iter().map(|(_, at)| at).collect()
    }
}

/// `a · b` as 256 bits `(high, low)`.
pub(super) fn mul_wide(a: u128, b: u128) -> (u128, u128) {
    const LO: u128 = u64::MAX as u128;
    let (a1, a0, b1, b0) = (a >> 64, a & LO, b >> 64, b & LO);
    let (p00, p01, p10, p11) = (a0 * b0, a0 * b1, a1 * b0, a1 * b1);
    // Each term is below 2^64, so the sum is below 3 · 2^64.
    let mid = (p00 >> 64) + (p01 & LO) + (p10 & LO);
    let low = (p00 & LO) | (mid << 64);
    let high = p11 + (p01 >> 64) + (p10 >> 64) + (mid >> 64);
    (high, low)
}

/// Stage 2: the at-risk order of [`crate::engine::Engine::at_risk`] on exact q16 figures:
/// `Less` when `a` is more at risk. Liquidatable first, a null ratio (balance <= 0) next,
/// then `mm_a / bal_a` against `mm_b / bal_b` as `mm_a · bal_b` against `mm_b · bal_a` in 256
/// bits (both factors non-negative here), then account id and symbol.
fn risk_order(a: &Candidate, b: &Candidate) -> Ordering {
    let liquidatable = |c: &Candidate| c.balance_q16 < c.maint_q16;
    let by_ratio = || match (a.balance_q16 > 0, b.balance_q16 > 0) {
        (false, false) => Ordering::Equal,
        (false, true) => Ordering::Less,
        (true, false) => Ordering::Greater,
        (true, true) => {
            let wide = |x: i128, y: i128| {
                mul_wide(u128::try_from(x).unwrap_or(0), u128::try_from(y).unwrap_or(0))
            };
            wide(b.maint_q16, a.balance_q16).cmp(&wide(a.maint_q16, b.balance_q16))
        }
    };
    (liquidatable(b).cmp(&liquidatable(a)))
        .then_with(by_ratio)
        .then_with(|| (a.account, a.symbol).cmp(&(b.account, b.symbol)))
}

/// `round8(maint / balance)` as text, `None` for a balance <= 0 (SPEC section 4).
fn ratio_text(balance_q16: i128, maint_q16: i128) -> Option<String> {
    if balance_q16 <= 0 {
        return None;
    }
    match maint_q16.checked_mul(10i128.pow(8)) {
        Some(num) => Some(D8(super::div_round_half_even(num, balance_q16)).to_string()),
        // Maintenance near the limits: the exact path.
        None => Some(
            round8_ratio(&Exact::from_int(maint_q16), &Exact::from_int(balance_q16)).to_string(),
        ),
    }
}

impl FastEngine {
    /// See [`crate::engine::Engine::account_report`].
    pub(super) fn report_of(&self, account: u64, at: At) -> Option<AccountReport> {
        self.lookup(account)?;
        Some(self.view(account).report(&self.cfg, &self.marks, at))
    }

    /// See [`crate::engine::Engine::at_risk`] and this module's doc.
    pub(super) fn risk_items(&self, q: &RiskQuery) -> Vec<RiskItem> {
        if q.limit == 0 {
            return Vec::new();
        }
        let mut pick = Preselect::new(q.limit);
        let sums = if q.mode != Some(Mode::Isolated) { self.cross_sums() } else { Vec::new() };
        if q.mode != Some(Mode::Isolated) {
            self.offer_cross(&sums, q.symbol, &mut pick);
        }
        if q.mode != Some(Mode::Cross) {
            self.offer_isolated(q.symbol, &mut pick);
        }
        let mut candidates: Vec<Candidate> =
            pick.finish().into_iter().map(|at| self.candidate(&sums, at)).collect();
        if candidates.len() > q.limit {
            candidates.select_nth_unstable_by(q.limit - 1, risk_order);
            candidates.truncate(q.limit);
        }
        candidates.sort_unstable_by(risk_order);
        candidates.iter().map(|c| self.risk_item(c)).collect()
    }

    /// Per account `[Σ upnl, Σ (upnl − mm)]` (q16) over its cross positions whose symbol has a
    /// mark; accounts with an unmarked cross symbol are left out by the caller.
    fn cross_sums(&self) -> Vec<[Sum; 2]> {
        let n = self.accounts.id.len();
        let sums: Vec<[Sum; 2]> = (0..n).map(|_| Default::default()).collect();
        let parallel = rayon::current_num_threads() > 1;
        for (book, (sc, t)) in self.cross.iter().zip(self.scales.iter().zip(&self.mark_ticks)) {
            let Some(t) = *t else { continue };
            let quote = Quote::new(sc, t);
            let sums = &sums;
            let add = |c: usize| {
                let (lo, hi) = (c * CHUNK, ((c + 1) * CHUNK).min(book.len()));
                let ahead = book.account.get(lo + PREFETCH_AHEAD..).unwrap_or_default();
                let (held, lots) = (&book.account[lo..hi], &book.lots[lo..hi]);
                let base = &book.base_q16[lo..hi];
                quote.each_term(lots, base, |k, term| {
                    if let Some(b) = ahead.get(k) {
                        sums.get(b.0 as usize).map(prefetch);
                    }
                    let [upnl, buffer] = &sums[held[k].0 as usize];
                    upnl.add(base[k] + sc.value_q16(lots[k], t));
                    buffer.add(term);
                });
            };
            let chunks = book.len().div_ceil(CHUNK);
            if parallel && book.len() >= self.parallel_min && chunks > 1 {
                (0..chunks).into_par_iter().for_each(add);
            } else {
                (0..chunks).for_each(add);
            }
        }
        sums
    }

    /// `(margin balance, maintenance)` of cross account `a` from its sums.
    fn cross_figures(&self, sums: &[[Sum; 2]], a: AccountIdx) -> (i128, i128) {
        let i = a.0 as usize;
        let [upnl, buffer] = &sums[i];
        let (upnl, buffer) = (upnl.get(), buffer.get());
        (self.accounts.wallet_e8[i] * E8_TO_Q16 + upnl, upnl - buffer)
    }

    /// Offers every cross item (with `symbol`, those holding a cross position in it).
    fn offer_cross(&self, sums: &[[Sum; 2]], symbol: Option<SymbolIdx>, pick: &mut Preselect) {
        let mut offer = |a: AccountIdx| {
            let h = &self.accounts.hot[a.0 as usize];
            if h.n_cross > 0 && h.n_unmarked == 0 {
                let (balance, maint) = self.cross_figures(sums, a);
                pick.offer(key_bits(balance, maint), Ref::Cross(a));
            }
        };
        match symbol {
            // An index outside the config holds nothing (the reference engine agrees).
            Some(s) => {
                let held = self.cross.get(s.0 as usize).map_or(&[][..], |b| &b.account[..]);
                held.iter().copied().for_each(offer)
            }
            None => (0..self.accounts.id.len()).for_each(|i| offer(AccountIdx(i as u32))),
        }
    }

    /// Offers every isolated item whose symbol has a mark (with `symbol`, of that symbol).
    fn offer_isolated(&self, symbol: Option<SymbolIdx>, pick: &mut Preselect) {
        for (si, book) in self.isolated.iter().enumerate() {
            let s = SymbolIdx(si as u16);
            let Some(t) = self.mark_ticks[si].filter(|_| symbol.is_none_or(|w| w == s)) else {
                continue;
            };
            let (sc, quote) = (&self.scales[si], Quote::new(&self.scales[si], t));
            quote.each_term(&book.lots, &book.base_q16, |k, term| {
                // balance = isolated margin + upnl = base + value; maintenance = balance − term.
                let balance = book.base_q16[k] + sc.value_q16(book.lots[k], t);
                pick.offer(key_bits(balance, balance - term), Ref::Isolated(s, k as u32));
            });
        }
    }

    /// The exact figures and tie key of a preselected item.
    fn candidate(&self, sums: &[[Sum; 2]], at: Ref) -> Candidate {
        match at {
            Ref::Cross(a) => {
                let (balance_q16, maint_q16) = self.cross_figures(sums, a);
                let account = self.accounts.id[a.0 as usize];
                Candidate { at, balance_q16, maint_q16, account, symbol: None }
            }
            Ref::Isolated(s, slot) => {
                let (si, k) = (s.0 as usize, slot as usize);
                let (book, sc) = (&self.isolated[si], &self.scales[si]);
                let t = self.mark_ticks[si].expect("only marked isolated items are offered");
                let lots = book.lots[k];
                let balance_q16 = book.base_q16[k] + sc.value_q16(lots, t);
                let maint_q16 = sc.mm_q16(sc.notional_n12(lots, t));
                let account = self.accounts.id[book.account[k].0 as usize];
                Candidate { at, balance_q16, maint_q16, account, symbol: Some(s) }
            }
        }
    }

    /// The at-risk entry of a chosen candidate: its figures and positions as its liquidation
    /// event would give them, and its ratio.
    fn risk_item(&self, c: &Candidate) -> RiskItem {
        let (a, isolated) = match c.at {
            Ref::Cross(a) => (a, None),
            Ref::Isolated(s, slot) => (self.isolated[s.0 as usize].account[slot as usize], Some(s)),
        };
        let at = At { line: 0, seq: 0 };
        let l = self.liquidation_event(a, isolated, at).unwrap_or_else(|| {
            // Products past i128 (amounts near the limits): the exact path, as for events.
            let item = isolated.map_or(Item::Cross(c.account), |s| Item::Isolated(c.account, s));
            self.view(c.account).liquidation(&self.cfg, &self.marks, item, at)
        });
        debug_assert_eq!(l.margin_balance, super::q16_text(c.balance_q16));
        debug_assert_eq!(l.maintenance_margin, super::q16_text(c.maint_q16));
        let ratio = ratio_text(c.balance_q16, c.maint_q16);
        report::risk_item_of(l, ratio, c.balance_q16 < c.maint_q16)
    }
}

#[cfg(test)]
mod tests {
    use num_bigint::BigInt;

    use super::*;

    #[test]
    fn mul_wide_is_the_exact_product() {
        let samples =
            [0, 1, 2, u64::MAX as u128, 1 << 64, (1 << 127) - 1, u128::MAX, 12_345_678_901];
        let mut rng = crate::synth::Rng::new(3);
        let random =
            (0..200).map(|_| (u128::from(rng.next_u64()) << 64) | u128::from(rng.next_u64()));
        let values: Vec<u128> = samples.into_iter().chain(random).collect();
        for &a in &values {
            for &b in values.iter().step_by(7) {
                let (high, low) = mul_wide(a, b);
                let got = (BigInt::from(high) << 128) + BigInt::from(low);
                assert_eq!(got, BigInt::from(a) * BigInt::from(b), "{a} * {b}");
            }
        }
    }

    /// The preselection keeps every item of the exact top `limit` even when keys differ by
    /// less than a float can tell, and drops what is clearly behind.
    #[test]
    fn preselect_keeps_a_superset_of_the_top() {
        let at = |i: u32| Ref::Cross(AccountIdx(i));
        // (balance, maint): ratios 0.5, 2, 2 + 1e-30 (a float cannot tell it from 2), null.
        let big = 10i128.pow(36);
        let items = [(2 * big, big), (big, 2 * big), (big, 2 * big + 10_000), (-1, 5), (4, 1)];
        for limit in 1..=items.len() {
            let mut pick = Preselect::new(limit);
            for (i, &(b, m)) in items.iter().enumerate() {
                pick.offer(key_bits(b, m), at(i as u32));
            }
            let kept = pick.finish();
            // Exact order: null (3), 2 + 1e-30 (2), 2 (1), 0.5 (0), 0.25 (4).
            let top = [3, 2, 1, 0, 4];
            for &i in &top[..limit] {
                assert!(kept.contains(&at(i)), "limit {limit}: {i} dropped, kept {kept:?}");
            }
            if limit == 1 {
                assert_eq!(kept, vec![at(3)], "only the null ratio has an infinite key");
            }
            if limit == 2 {
                assert_eq!(kept.len(), 3, "both ratios near 2 are kept, not 0.5: {kept:?}");
            }
        }
    }
}
