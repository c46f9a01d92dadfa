//! The fast engine's read side (SPEC section 9.3): account reports and at-risk lists.
//!
//! An at-risk list needs every item's margin balance and maintenance, and the engine keeps
//! neither per cross account (its ticks need only the buffer's sign, see `README.md`). So
//! [`FastEngine::risk_items`] computes them all with the sweep's cross pass
//! ([`super::cross_pass`]): each position's `upnl` and `upnl − mm` added to its account's two
//! sums, every chunk of every book one parallel job with sums per worker when they fit (64 MB
//! on a 1M-account book and two workers), the isolated books beside it; otherwise the books
//! one at a time, then the isolated books. Every figure is exact in `i128` q16.
//!
//! Choosing the `limit` items most at risk out of millions then takes two stages:
//! 1. **Preselection on a float key.** `maintenance / balance` as `f64` (`+∞` for a balance
//!    <= 0) is within a relative 2⁻⁴⁹ of the exact ratio (see [`approx`]). A min-heap holds the `limit`
//!    largest keys seen; an item whose key is below the heap's least times `1 − 10⁻¹²` can
//!    never be among the `limit` most at risk, and is dropped. What is kept is a superset of
//!    the answer, ties included (see [`Preselect`]).
//! 2. **Exact order** of that superset: ratios compared by cross-multiplying in 256 bits
//!    ([`mul_wide`]), ties by account id and symbol. The float never decides the order.
//!
//! Only the `limit` items returned get exact decimal strings and liquidation prices, through
//! the same path as liquidation events (`FastEngine::liquidation_event`).

use std::{
    cmp::Ordering,
    collections::BinaryHeap,
    sync::{Mutex, PoisonError, TryLockError},
};

use rayon::prelude::*;

use super::{
    CHUNK, FastEngine, PREFETCH_AHEAD, Sum,
    book::{AccountIdx, E8_TO_Q16, Quote},
    cross_pass, prefetch,
};
use crate::{
    config::{Mode, SymbolIdx},
    engine::{At, RiskQuery},
    exact::{Exact, round8_ratio},
    protocol::{AccountReport, Amount, PositionReport, RiskItem},
    report::{self, Item},
};

/// What an at-risk answer keeps between answers: per account `[Σ upnl, Σ (upnl − mm)]`, once
/// per worker when they fit (see [`super::cross_pass`]), zero between answers (32 bytes per
/// account and way, allocated by the first answer), so that an answer does not allocate,
/// fault in and free 64 MB on a 1M-account book each time. (The gain was within the noise
/// of the shared machine it was measured on.)
#[derive(Debug, Default)]
pub(super) struct Scratch {
    sums: Mutex<Sums>,
}

#[derive(Debug, Default)]
struct Sums {
    sums: Vec<[Sum; 2]>,
    /// Every sum is zero.
    clean: bool,
}

/// Sets every sum to zero.
fn zero(sums: &[[Sum; 2]]) {
    sums.par_iter().with_min_len(CHUNK).flatten().for_each(|s| s.set(0));
}

impl Scratch {
    /// Heap bytes held.
    pub(super) fn heap_bytes(&self) -> usize {
        let sums = self.sums.lock().unwrap_or_else(PoisonError::into_inner);
        sums.sums.capacity() * size_of::<[Sum; 2]>()
    }
}

/// Relative slack of the preselection: far above the float key's error (2⁻⁴⁹ ≈ 1.8e-15),
/// far below any ratio difference that matters for how many items are kept.
const PRESELECT_SLACK: f64 = 1e-12;

/// The least share of `n` items a rayon worker takes in the preselection: a few shares per
/// worker, so that few heaps fill up apart (each keeps everything until it holds `limit`
/// keys) and few merges follow. At least a chunk, unless the engine is set to split even
/// small books (`FastEngine::with_parallel_min`, which tests use to hold the merges to the
/// reference).
fn share(n: usize, parallel_min: usize) -> usize {
    (n / (4 * rayon::current_num_threads())).max(CHUNK.min(parallel_min))
}

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
#[inline(always)]
fn key_bits(balance_q16: i128, maint_q16: i128) -> u64 {
    debug_assert!(maint_q16 >= 0, "maintenance of non-zero positions is positive");
    let key =
        if balance_q16 <= 0 { f64::INFINITY } else { approx(maint_q16) / approx(balance_q16) };
    key.to_bits()
}

/// `x` as a float within a relative 6·2⁻⁵³, in hardware conversions (`x as f64` on an `i128`
/// is a library call, and the preselection makes two per item). Beyond `i64`, `x` is
/// `hi·2⁶⁴ + lo` with `|x| >= 2⁶³`: each part's conversion and their sum round once each, so
/// the error is at most 2⁻⁵³ (|hi|·2⁶⁴ + 2⁶⁴ + |x|) <= 6·2⁻⁵³ |x|.
#[inline(always)]
fn approx(x: i128) -> f64 {
    match i64::try_from(x) {
        Ok(v) => v as f64,
        Err(_) => ((x >> 64) as i64) as f64 * 18_446_744_073_709_551_616.0 + (x as u64) as f64,
    }
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
struct Preselect<T> {
    limit: usize,
    /// The `limit` largest keys seen (a min-heap).
    heap: BinaryHeap<std::cmp::Reverse<u64>>,
    /// `threshold` of the heap's least once it holds `limit` keys, `−∞` before: a key below
    /// it is dropped with one comparison.
    cut: f64,
    kept: Vec<(u64, T)>,
}

impl<T> Preselect<T> {
    fn new(limit: usize) -> Preselect<T> {
        Preselect { limit, heap: BinaryHeap::new(), cut: f64::NEG_INFINITY, kept: Vec::new() }
    }

    /// Offers an item of key `key`; `make` builds what is kept of it, if it is kept.
    #[inline]
    fn offer(&mut self, key: u64, make: impl FnOnce() -> T) {
        if self.limit == 0 || f64::from_bits(key) < self.cut {
            return;
        }
        if self.heap.len() < self.limit {
            self.heap.push(std::cmp::Reverse(key));
        } else if self.heap.peek().is_some_and(|least| key > least.0) {
            self.heap.pop();
            self.heap.push(std::cmp::Reverse(key));
        }
        if self.heap.len() >= self.limit {
            self.cut = threshold(self.heap.peek().expect("limit > 0 keys").0);
            if f64::from_bits(key) < self.cut {
                return;
            }
        }
        self.kept.push((key, make()));
        // Keys arriving in rising order would keep everything: drop what fell behind.
        if self.kept.len() >= self.limit.max(1024).saturating_mul(4) {
            self.prune();
        }
    }

    /// The preselection of both parts' items: `other`'s kept items (which hold its heap's)
    /// offered to `self`.
    fn merge(self, other: Preselect<T>) -> Preselect<T> {
        let (mut into, from) =
            if self.kept.len() >= other.kept.len() { (self, other) } else { (other, self) };
        for (key, item) in from.kept {
            into.offer(key, || item);
        }
        into
    }

    fn prune(&mut self) {
        let cut = self.cut;
        self.kept.retain(|&(k, _)| f64::from_bits(k) >= cut);
    }

    fn finish(mut self) -> Vec<T> {
        self.prune();
        self.kept.into_iter().map(|(_, item)| item).collect()
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
            // Maintenance is >= 0 (a sum of non-negative mm) and both balances are > 0 here.
            let wide = |x: i128, y: i128| {
                debug_assert!(x >= 0 && y > 0, "maintenance {x}, balance {y}");
                mul_wide(x.unsigned_abs(), y.unsigned_abs())
            };
            wide(b.maint_q16, a.balance_q16).cmp(&wide(a.maint_q16, b.balance_q16))
        }
    };
    (liquidatable(b).cmp(&liquidatable(a)))
        .then_with(by_ratio)
        .then_with(|| (a.account, a.symbol).cmp(&(b.account, b.symbol)))
}

fn amount16(x: Option<i128>) -> Option<Amount> {
    x.map(Amount::q16)
}

/// `round8(maint / balance)`, `None` for a balance <= 0 (SPEC section 4).
fn ratio(balance_q16: i128, maint_q16: i128) -> Option<Amount> {
    if balance_q16 <= 0 {
        return None;
    }
    match maint_q16.checked_mul(10i128.pow(8)) {
        Some(num) => Some(Amount::e8(super::div_round_half_even(num, balance_q16))),
        // Maintenance near the limits: the exact path.
        None => {
            Some(round8_ratio(&Exact::from_int(maint_q16), &Exact::from_int(balance_q16)).amount())
        }
    }
}

impl FastEngine {
    /// See [`crate::engine::Engine::account_report`].
    pub(super) fn report_of(&self, account: u64, at: At) -> Option<AccountReport> {
        let a = self.lookup(account)?;
        let ints = self.report_of_held(a, self.wallet_now_e8(a), at);
        Some(ints.unwrap_or_else(|| self.exact_report(account, at)))
    }

    /// The `account` event a `query` of `account` (index `found`, as the caller looked it
    /// up and then settled: its stored wallet is its true one) emits now (SPEC section 7):
    /// from the books' integers
    /// ([`FastEngine::report_of_held`]), or for an account the engine does not hold (all zero)
    /// and at the amount limits on the exact path the reference engine uses.
    pub(super) fn query_report(
        &self,
        account: u64,
        found: Option<AccountIdx>,
        at: At,
    ) -> AccountReport {
        debug_assert_eq!(found, self.lookup(account));
        let ints = found.and_then(|a| {
            let wallet_e8 = self.accounts.wallet_e8[a.0 as usize];
            debug_assert_eq!(wallet_e8, self.wallet_now_e8(a), "settled by the caller");
            self.report_of_held(a, wallet_e8, at)
        });
        ints.unwrap_or_else(|| self.exact_report(account, at))
    }

    fn exact_report(&self, account: u64, at: At) -> AccountReport {
        self.view(account).report(&self.cfg, &self.marks, at)
    }

    /// [`report::AccountView::report`] computed in `i128` at the scales of the books: every
    /// figure is exact (q16, n12 or e8) and printed by the same rules, so the text is the
    /// same; the exact path cost ~100 µs a query on big-integer decimals, this one a few µs.
    /// `None` when a liquidation price's products would overflow `i128` (the caller then
    /// takes the exact path). `wallet_e8` is the account's true wallet
    /// ([`FastEngine::wallet_now_e8`], which the caller has).
    fn report_of_held(&self, a: AccountIdx, wallet_e8: i128, at: At) -> Option<AccountReport> {
        let i = a.0 as usize;
        let wallet_q16 = wallet_e8 * E8_TO_Q16;
        // A pair, its position, and its figures at the mark if any: (ticks, upnl, mm, im),
        // amounts in q16.
        struct Held<'p> {
            p: &'p super::Pair,
            lots: i64,
            cost: i128,
            at_mark: Option<(i64, i128, i128, i128)>,
        }
        let pairs = &self.accounts.pairs[i];
        let mut held = Vec::with_capacity(pairs.len());
        // Cross totals: `W + Σ upnl` and `Σ mm` (None when a cross position lacks a mark),
        // `W + Σ (upnl − mm)` over the marked ones and which are unmarked; used margin and
        // available balance (None when a cross position lacks a mark).
        let (mut balance, mut maint) = (Some(wallet_q16), Some(0i128));
        let (mut rest, mut unmarked, mut last) = (wallet_q16, 0usize, None);
        let (mut used, mut avail) = (Some(0i128), Some(wallet_q16));
        for p in pairs {
            let si = p.symbol.0 as usize;
            let funds = self.funds(a, p);
            avail = avail.map(|v| v - funds.order_margin_e8 * E8_TO_Q16);
            let (lots, cost) = (self.lots_of(p), self.cost_of(p));
            let isolated = p.mode == Mode::Isolated;
            if isolated {
                let margin = match p.slot {
                    super::NO_SLOT => funds.idle_isolated_e8,
                    k => self.isolated[si].margin_now_e8(k as usize),
                };
                used = used.map(|u| u + margin * E8_TO_Q16);
            }
            if lots == 0 {
                held.push(Held { p, lots, cost, at_mark: None });
                continue;
            }
            let sc = &self.scales[si];
            let at_mark = self.mark_ticks[si].map(|t| {
                let upnl = sc.value_q16(lots, t) - cost;
                let mm = sc.mm_q16(sc.notional_n12(lots, t));
                (t, upnl, mm, self.im_q16(sc, lots, t, self.leverage_of(p.symbol, p)))
            });
            if !isolated {
                match at_mark {
                    Some((_, upnl, mm, im)) => {
                        balance = balance.map(|b| b + upnl);
                        maint = maint.map(|m| m + mm);
                        rest += upnl - mm;
                        used = used.map(|u| u + im);
                        avail = avail.map(|v| v + upnl - im);
                    }
                    None => {
                        (balance, maint, used, avail) = (None, None, None, None);
                        (unmarked, last) = (unmarked + 1, Some(p.symbol));
                    }
                }
            }
            held.push(Held { p, lots, cost, at_mark });
        }
        let mut positions = Vec::with_capacity(held.len());
        for h in held.iter().filter(|h| h.lots != 0) {
            let (p, si) = (h.p, h.p.symbol.0 as usize);
            let sc = &self.scales[si];
            let isolated = p.mode == Mode::Isolated;
            let margin_e8 = isolated.then(|| self.isolated[si].margin_now_e8(p.slot as usize));
            // SPEC section 4's M, as `report::AccountView::liquidation_price_in` takes it.
            let m = match (isolated, h.at_mark) {
                (true, _) => margin_e8.map(|m| m * E8_TO_Q16),
                (false, Some((_, upnl, mm, _))) if unmarked == 0 => Some(rest - (upnl - mm)),
                (false, None) if unmarked == 1 && last == Some(p.symbol) => Some(rest),
                (false, _) => None,
            };
            let liquidation_price = match m {
                Some(m) => sc.liquidation_price_e8(h.lots, h.cost, m)?,
                None => None,
            };
            let figure =
                |pick: fn(&(i64, i128, i128, i128)) -> i128| amount16(h.at_mark.as_ref().map(pick));
            positions.push(PositionReport {
                symbol: self.names[p.symbol.0 as usize].clone(),
                mode: p.mode,
                size: Amount::e8(i128::from(h.lots) * i128::from(sc.step_e8)),
                entry_price: Amount::e8(i128::from(sc.entry_e8(h.lots, h.cost))),
                mark_price: h.at_mark.and(self.marks[si]).map(Amount::from_d8),
                leverage: u64::from(self.leverage_of(p.symbol, p)),
                notional: h.at_mark.map(|(t, ..)| Amount::scaled(sc.notional_n12(h.lots, t), 12)),
                unrealized_pnl: figure(|f| f.1),
                initial_margin: figure(|f| f.3),
                maintenance_margin: figure(|f| f.2),
                isolated_margin: margin_e8.map(Amount::e8),
                margin_ratio: match (margin_e8, h.at_mark) {
                    (Some(m), Some((_, upnl, mm, _))) => ratio(m * E8_TO_Q16 + upnl, mm),
                    _ => None,
                },
                liquidation_price: liquidation_price.map(Amount::e8),
            });
        }
        Some(AccountReport {
            line: at.line,
            seq: at.seq,
            origin_seq: None,
            account: self.accounts.id[i],
            wallet: Amount::e8(wallet_e8),
            margin_balance: amount16(balance),
            maintenance_margin: amount16(maint),
            margin_ratio: balance.zip(maint).and_then(|(b, m)| ratio(b, m)),
            used_margin: amount16(used),
            available_balance: amount16(avail),
            positions,
            latency_ns: 0,
        })
    }

    /// See [`crate::engine::Engine::at_risk`] and this module's doc.
    pub(super) fn risk_items(&self, q: &RiskQuery) -> Vec<RiskItem> {
        if q.limit == 0 {
            return Vec::new();
        }
        // On a worker thread each parallel loop within is a cheap fork-join; from the engine
        // thread each would wait for a hand-off (as in the sweep).
        rayon::scope(|_| self.risk_items_on_workers(q))
    }

    fn risk_items_on_workers(&self, q: &RiskQuery) -> Vec<RiskItem> {
        let isolated = || {
            let pick = Preselect::new(q.limit);
            if q.mode == Some(Mode::Cross) { pick } else { self.offer_isolated(q.symbol, q.limit) }
        };
        let pick = if q.mode == Some(Mode::Isolated) {
            isolated()
        } else {
            // Kept between answers, zero between them; a panic mid-answer leaves it marked
            // not clean, and the next answer zeroes it first. Held across the workers'
            // waits, so an answer that finds it taken (two answers on one engine at once:
            // the daemon asks from its engine thread only, but `&self` allows it) makes sums
            // of its own rather than wait, since a worker waiting for the lock could be the
            // one whose job the other answer waits for.
            let mut unshared = Sums::default();
            let mut guard = match self.risk.sums.try_lock() {
                Ok(guard) => Some(guard),
                Err(TryLockError::Poisoned(poisoned)) => Some(poisoned.into_inner()),
                Err(TryLockError::WouldBlock) => None,
            };
            let Sums { sums, clean } = match &mut guard {
                Some(guard) => &mut **guard,
                None => &mut unshared,
            };
            if !*clean {
                zero(sums);
            }
            // As in a sweep: sums per worker when they fit, never shrunk (what a later
            // answer on fewer ways leaves unread stays zero).
            let n = self.accounts.id.len();
            let workers = rayon::current_num_threads();
            let parallel = workers > 1 && self.n_positions() + n >= self.parallel_min;
            let fit = n.saturating_mul(workers).saturating_mul(size_of::<[Sum; 2]>())
                <= self.own_sums_max_bytes;
            let ways = if parallel && fit { workers } else { 1 };
            if sums.len() < n * ways {
                // Exactly: doubling would copy and hold 128 MB at 1M accounts and two ways.
                sums.reserve_exact(n * ways - sums.len());
                sums.resize_with(n * ways, Default::default);
            }
            let sums = &sums[..n * ways];
            *clean = false;
            let cross = || {
                self.add_cross_sums(sums, parallel, ways);
                self.offer_cross(sums, ways, q.symbol, q.limit)
            };
            // With sums of their own, the workers take the isolated books beside the cross
            // books, as in a sweep.
            let pick = if ways > 1 {
                let (cross, isolated) = rayon::join(cross, isolated);
                cross.merge(isolated)
            } else {
                cross().merge(isolated())
            };
            *clean = true;
            pick
        };
        let mut candidates = pick.finish();
        if candidates.len() > q.limit {
            candidates.select_nth_unstable_by(q.limit - 1, risk_order);
            candidates.truncate(q.limit);
        }
        candidates.sort_unstable_by(risk_order);
        // Building an item (its strings and liquidation prices) costs microseconds: for a
        // long list, the workers share it (collect keeps the order).
        candidates.par_iter().with_min_len(64).map(|c| self.risk_item(c)).collect()
    }

    /// Adds to each account's `[Σ upnl, Σ (upnl − mm)]` (q16, zero before; in `ways` runs of
    /// one per account, as [`super::cross_pass`] hands them out) its cross positions whose
    /// symbol has a mark, each less what it owes for lazy fundings (so that `W + Σ upnl` is
    /// the true margin balance); accounts with an unmarked cross symbol are left out by the
    /// caller.
    fn add_cross_sums(&self, sums: &[[Sum; 2]], parallel: bool, ways: usize) {
        let marked = (self.cross.iter().zip(&self.scales).zip(&self.mark_ticks).enumerate())
            .filter_map(|(si, ((book, sc), t))| {
                t.filter(|_| !book.is_empty()).map(|t| (si, Quote::new(sc, t)))
            });
        let quotes: Vec<_> = marked.collect();
        cross_pass(&self.cross, &quotes, parallel, ways, sums, |si, quote, sums, c| {
            let (book, log, sc) = (&self.cross[si], &self.funding[si], &self.scales[si]);
            let t = self.mark_ticks[si].expect("only marked books are quoted");
            let (lo, hi) = (c * CHUNK, ((c + 1) * CHUNK).min(book.len()));
            let ahead = book.account.get(lo + PREFETCH_AHEAD..).unwrap_or_default();
            let (held, lots) = (&book.account[lo..hi], &book.lots[lo..hi]);
            let base = &book.base_q16[lo..hi];
            let from = if log.c.is_empty() { &[][..] } else { &book.fund_from[lo..hi] };
            quote.each_term(lots, base, |k, term| {
                if let Some(b) = ahead.get(k) {
                    sums.get(b.0 as usize).map(prefetch);
                }
                // What the slot owes for lazy fundings comes off the balance (added to both
                // sums, so that the maintenance, their difference, is unchanged); nothing
                // when the symbol's log is empty.
                let owed = from.get(k).map_or(0, |&f| log.owed(lots[k], f) * E8_TO_Q16);
                let [upnl, buffer] = &sums[held[k].0 as usize];
                upnl.add(base[k] + sc.value_q16(lots[k], t) - owed);
                buffer.add(term - owed);
            });
        });
    }

    /// Offers every cross item (with `symbol`, those holding a cross position in it), the
    /// accounts split between rayon workers, each preselecting its share; an account's
    /// figures are the sum of its `ways` runs of sums. Leaves every sum at zero.
    fn offer_cross(
        &self,
        sums: &[[Sum; 2]],
        ways: usize,
        symbol: Option<SymbolIdx>,
        limit: usize,
    ) -> Preselect<Candidate> {
        debug_assert!(
            ways >= 1 && sums.len().is_multiple_of(ways),
            "{} sums in {ways} runs",
            sums.len()
        );
        let n = sums.len() / ways;
        // The account's figures, from its sums (taken, when `take`, leaving zero).
        let offer = |mut pick: Preselect<Candidate>, a: AccountIdx, take: bool| {
            let i = a.0 as usize;
            let (mut upnl, mut buffer) = (0, 0);
            for [u, b] in (0..ways).map(|w| &sums[w * n + i]) {
                upnl += if take { u.take() } else { u.get() };
                buffer += if take { b.take() } else { b.get() };
            }
            let h = &self.accounts.hot[i];
            if h.n_cross > 0 && h.n_unmarked == 0 {
                let (balance_q16, maint_q16) =
                    (self.accounts.wallet_e8[i] * E8_TO_Q16 + upnl, upnl - buffer);
                pick.offer(key_bits(balance_q16, maint_q16), || Candidate {
                    at: Ref::Cross(a),
                    balance_q16,
                    maint_q16,
                    account: self.accounts.id[i],
                    symbol: None,
                });
            }
            pick
        };
        let new = || Preselect::new(limit);
        match symbol {
            // An index outside the config holds nothing (the reference engine agrees).
            Some(s) => {
                let held = self.cross.get(s.0 as usize).map_or(&[][..], |b| &b.account[..]);
                let held = held.par_iter().with_min_len(share(held.len(), self.parallel_min));
                let pick = held.fold(new, |p, &a| offer(p, a, false)).reduce(new, Preselect::merge);
                zero(sums);
                pick
            }
            None => {
                // Every account is read once, and its sums taken on the way.
                let n = u32::try_from(n).expect("fewer than 2^32 accounts");
                let all = (0..n).into_par_iter().with_min_len(share(n as usize, self.parallel_min));
                all.fold(new, |p, a| offer(p, AccountIdx(a), true)).reduce(new, Preselect::merge)
            }
        }
    }

    /// Offers every isolated item whose symbol has a mark (with `symbol`, of that symbol),
    /// the books cut in chunks that rayon workers take, each preselecting its share.
    fn offer_isolated(&self, symbol: Option<SymbolIdx>, limit: usize) -> Preselect<Candidate> {
        let mut chunks = Vec::new();
        for (si, book) in self.isolated.iter().enumerate() {
            let s = SymbolIdx(si as u16);
            if self.mark_ticks[si].is_some() && symbol.is_none_or(|w| w == s) {
                chunks.extend((0..book.len()).step_by(CHUNK).map(|lo| (s, lo)));
            }
        }
        let offer = |mut pick: Preselect<Candidate>, &(s, lo): &(SymbolIdx, usize)| {
            let (si, book) = (s.0 as usize, &self.isolated[s.0 as usize]);
            let t = self.mark_ticks[si].expect("only marked books are cut in chunks");
            let hi = (lo + CHUNK).min(book.len());
            let lots = &book.lots[lo..hi];
            // What a pending funding pass owes taken off (a copy only while one is pending).
            let owed: Vec<i128>;
            let base = if book.pending.is_some() {
                owed = (lo..hi).map(|k| book.base_now_q16(k)).collect();
                &owed[..]
            } else {
                &book.base_q16[lo..hi]
            };
            let (sc, quote) = (&self.scales[si], Quote::new(&self.scales[si], t));
            quote.each_term(lots, base, |k, term| {
                // balance = isolated margin + upnl = base + value; maintenance = balance − term.
                let balance_q16 = base[k] + sc.value_q16(lots[k], t);
                let maint_q16 = balance_q16 - term;
                pick.offer(key_bits(balance_q16, maint_q16), || Candidate {
                    at: Ref::Isolated(s, (lo + k) as u32),
                    balance_q16,
                    maint_q16,
                    account: self.accounts.id[book.account[lo + k].0 as usize],
                    symbol: Some(s),
                });
            });
            pick
        };
        let new = || Preselect::new(limit);
        // Chunks are already a worker's unit (a share as in `share`, counted in chunks).
        let chunks = chunks.par_iter().with_min_len(share(chunks.len(), 1));
        chunks.fold(new, offer).reduce(new, Preselect::merge)
    }

    /// The at-risk entry of a chosen candidate: its figures and positions as its liquidation
    /// event would give them, and its ratio.
    fn risk_item(&self, c: &Candidate) -> RiskItem {
        let (a, isolated) = match c.at {
            Ref::Cross(a) => (a, None),
            Ref::Isolated(s, slot) => {
                (self.isolated[s.0 as usize].account[slot as usize], Some((s, slot)))
            }
        };
        let at = At { line: 0, seq: 0 };
        let l = self.liquidation_event(a, isolated, at).unwrap_or_else(|| {
            // Products past i128 (amounts near the limits): the exact path, as for events.
            let item =
                isolated.map_or(Item::Cross(c.account), |(s, _)| Item::Isolated(c.account, s));
            self.view(c.account).liquidation(&self.cfg, &self.marks, item, at)
        });
        debug_assert_eq!(l.margin_balance, Amount::q16(c.balance_q16));
        debug_assert_eq!(l.maintenance_margin, Amount::q16(c.maint_q16));
        let ratio = ratio(c.balance_q16, c.maint_q16);
        report::risk_item_of(l, ratio, c.balance_q16 < c.maint_q16)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use num_bigint::BigInt;

    use super::*;
    use crate::{engine::Engine, fixed::D8, protocol::Command, synth};

    /// On a 3,000-account synthetic book whose marks then fall 3 % and whose two most-held
    /// symbols then fund lazily (so answers take off what slots owe), the fast answer equals
    /// the plain exact one ([`report::at_risk`] over every account's view) at every limit and
    /// filter, with the preselection cut in many shares (so its merges are exercised) and in
    /// one; on one engine, the cross sums per worker, then shared, then per worker again,
    /// with accounts arriving between the answers (so the sums' layout changes), and every
    /// sum zero after each answer.
    #[test]
    fn fast_at_risk_equals_the_exact_oracle_on_a_book() {
        let symbols = 6;
        let own = super::super::OWN_SUMS_MAX_BYTES;
        for parallel_min in [1, usize::MAX] {
            let cfg = Arc::new(synth::config(symbols));
            let mut engine = FastEngine::new(cfg.clone()).with_parallel_min(parallel_min);
            let at = At { line: 0, seq: 0 };
            let apply = |engine: &mut FastEngine, cmd: Command| {
                engine.apply(&cmd, at, &mut |_| {}).unwrap();
            };
            for cmd in synth::book_commands(3_000, 8_000, symbols, 11) {
                apply(&mut engine, cmd);
            }
            // The last symbol keeps no mark: its holders are left out.
            let prices = (0..symbols - 1)
                .map(|s| {
                    // A multiple of the 0.01 tick, as validation makes every mark.
                    let e2 = i128::from(synth::base_price_e2(s)) * 97 / 100;
                    (SymbolIdx(s as u16), D8(e2 * 1_000_000))
                })
                .collect();
            apply(&mut engine, Command::Marks { prices });
            for (round, own_sums_max_bytes) in [own, 0, own].into_iter().enumerate() {
                engine.own_sums_max_bytes = own_sums_max_bytes;
                for k in 0..100 * round as u64 {
                    let account = 1_000_000 + 1_000 * round as u64 + k;
                    apply(&mut engine, Command::Balance { account, wallet: D8(500 * 100_000_000) });
                }
                // 0.01 % and -0.025 %: lazy fundings (every holder stays in range).
                apply(&mut engine, Command::Funding { symbol: SymbolIdx(0), rate: D8(10_000) });
                apply(&mut engine, Command::Funding { symbol: SymbolIdx(1), rate: D8(-25_000) });
                assert!(!engine.funding[0].c.is_empty(), "the funding is owed lazily");
                let views: Vec<_> = engine.accounts.id.iter().map(|&id| engine.view(id)).collect();
                let mut liquidatable = 0;
                for limit in [1, 100, usize::MAX] {
                    for symbol in [None, Some(SymbolIdx(0)), Some(SymbolIdx(5))] {
                        for mode in [None, Some(Mode::Cross), Some(Mode::Isolated)] {
                            let q = RiskQuery { limit, symbol, mode };
                            let want = report::at_risk(&cfg, &engine.marks, &views, &q);
                            let got = engine.at_risk(&q);
                            let how = format!("parallel_min {parallel_min}, round {round}");
                            assert_eq!(got, want, "{q:?}, {how}");
                            liquidatable += got.iter().filter(|i| i.liquidatable).count();
                        }
                    }
                }
                assert!(liquidatable > 0, "the fall liquidates some items");
                let n = engine.accounts.id.len();
                let threads = rayon::current_num_threads();
                let ways = if parallel_min == 1 && own_sums_max_bytes > 0 { threads } else { 1 };
                let scratch = engine.risk.sums.lock().unwrap();
                assert!(scratch.clean && scratch.sums.len() >= n * ways, "{n} accounts, {ways}");
                let zero = scratch.sums.iter().flatten().all(|s| s.get() == 0);
                assert!(zero, "an answer leaves its sums at zero");
                drop(scratch);
                let all =
                    engine.at_risk(&RiskQuery { limit: usize::MAX, symbol: None, mode: None });
                assert!(all.len() > 3_000 && all.iter().any(|i| !i.liquidatable));
            }
        }
    }

    /// A cross book of several chunks (two symbols, 12,000 accounts: each book over
    /// `2 · CHUNK` slots), both funded lazily, answered on pools of 2, 1 and 3 workers (so
    /// each way count runs, and a worker's chunks are not the whole book), and once more after
    /// the kept sums were left dirty, as a panic mid-answer leaves them, and while they are in
    /// use: every answer equals the exact oracle, every kept sum is zero after it.
    #[test]
    fn fast_at_risk_over_many_chunks_on_any_pool_and_after_a_dirty_scratch() {
        let symbols = 2;
        let cfg = Arc::new(synth::config(symbols));
        let mut engine = FastEngine::new(cfg.clone()).with_parallel_min(1);
        let at = At { line: 0, seq: 0 };
        let apply = |engine: &mut FastEngine, cmd: Command| {
            engine.apply(&cmd, at, &mut |_| {}).unwrap();
        };
        for cmd in synth::book_commands(12_000, 24_000, symbols, 5) {
            apply(&mut engine, cmd);
        }
        let prices = (0..symbols)
            .map(|s| {
                let e2 = i128::from(synth::base_price_e2(s)) * 97 / 100;
                (SymbolIdx(s as u16), D8(e2 * 1_000_000))
            })
            .collect();
        apply(&mut engine, Command::Marks { prices });
        apply(&mut engine, Command::Funding { symbol: SymbolIdx(0), rate: D8(10_000) });
        apply(&mut engine, Command::Funding { symbol: SymbolIdx(1), rate: D8(-25_000) });
        assert!(engine.cross.iter().all(|b| b.len() > 2 * CHUNK), "books of several chunks");
        assert!(engine.funding.iter().all(|log| !log.c.is_empty()), "fundings owed lazily");
        let views: Vec<_> = engine.accounts.id.iter().map(|&id| engine.view(id)).collect();
        let queries = [
            RiskQuery { limit: usize::MAX, symbol: None, mode: None },
            RiskQuery { limit: 50, symbol: Some(SymbolIdx(1)), mode: Some(Mode::Cross) },
        ];
        let wants: Vec<_> =
            queries.iter().map(|q| report::at_risk(&cfg, &engine.marks, &views, q)).collect();
        assert!(wants[0].iter().any(|i| i.liquidatable) && wants[1].len() == 50);
        for (round, workers) in [2, 1, 3, 2].into_iter().enumerate() {
            if round == 3 {
                // What a panic mid-answer leaves: sums not zero, the scratch marked so.
                let mut scratch = engine.risk.sums.lock().unwrap();
                for [u, b] in scratch.sums.iter().step_by(7) {
                    u.set(-3);
                    b.set(1 << 70);
                }
                scratch.clean = false;
            }
            let pool = rayon::ThreadPoolBuilder::new().num_threads(workers).build().unwrap();
            for (q, want) in queries.iter().zip(&wants) {
                let got = pool.install(|| engine.at_risk(q));
                assert_eq!(&got, want, "{q:?}, round {round} on {workers} workers");
            }
            let scratch = engine.risk.sums.lock().unwrap();
            assert!(scratch.clean, "round {round}");
            assert!(scratch.sums.iter().flatten().all(|s| s.get() == 0), "round {round}");
        }
        // The kept sums in use (another answer at once): this one makes its own, not waits.
        let held = engine.risk.sums.lock().unwrap();
        for (q, want) in queries.iter().zip(&wants) {
            assert_eq!(&engine.at_risk(q), want, "{q:?}, the kept sums in use");
        }
        drop(held);
    }

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

    #[test]
    fn approx_is_within_its_bound() {
        let mut rng = crate::synth::Rng::new(9);
        let edges = [0, 1, -1, i64::MAX as i128, i64::MAX as i128 + 1, i64::MIN as i128 - 1];
        let random = (0..10_000).map(|k| {
            let x = ((u128::from(rng.next_u64()) << 64) | u128::from(rng.next_u64())) as i128;
            x >> (k % 120) // every magnitude
        });
        for x in edges.into_iter().chain([i128::MAX, i128::MIN + 1]).chain(random) {
            let (got, nearest) = (approx(x), x as f64);
            // `nearest` is within 2⁻⁵³ of x, so got must be within 7·2⁻⁵³ of it.
            assert!((got - nearest).abs() <= 7.0 * f64::EPSILON / 2.0 * nearest.abs(), "{x}");
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
                pick.offer(key_bits(b, m), || at(i as u32));
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
