//! The fast engine's commands as check, then commit (`STYLE.md`): each command is first
//! checked against `&self`, which decides everything it will do into a [`Plan`] or rejects
//! it, and the plan is then committed by an infallible `&mut self` step. Nothing mutable is
//! reached before a check has passed, so a rejected message leaves the state exactly as it
//! was (SPEC section 5: no account, no pair, no flag, no counter), by construction; and
//! [`Engine::apply`] is the two calls.

use rayon::prelude::*;

use super::{
    CHUNK, E8_TO_Q16, FastEngine, NO_SLOT,
    book::{AccountIdx, PendingPass},
    in_limits, prefetch,
};
use crate::{
    config::{Mode, SymbolIdx},
    engine::{At, Engine, RiskQuery, rejects},
    exact::Exact,
    fixed::D8,
    margin,
    protocol::{AMOUNT_LIMIT, AccountReport, Command, Event, Reject, RiskItem},
};

/// What an accepted command will do: every value it writes, decided by [`FastEngine::check`]
/// from the state before it. Accounts are named by id where the commit may create them (an
/// applied message creates what it first names, SPEC section 3), with the index the check
/// found for the id if any (`found`: the commit does not look the id up again; nothing
/// happens between the two, and accounts are never removed), and by index alone where the
/// check found them.
#[derive(Debug)]
enum Plan<'c> {
    /// Move one symbol's mark.
    Mark(SymbolIdx, D8),
    /// Move several marks at one evaluation point (`marks`: distinct symbols, validated).
    Marks(&'c [(SymbolIdx, D8)]),
    /// Set the cross wallet (a `balance`) and re-arm the account's cross item.
    Wallet {
        account: u64,
        wallet_e8: i128,
    },
    /// Move the cross wallet by `amount_e8` (a `transfer` within its rules) and re-arm the
    /// account's cross item.
    Transfer {
        account: u64,
        found: Option<AccountIdx>,
        amount_e8: i128,
        /// The true wallet of a held account when the check computed it (a withdrawal):
        /// the commit settles to it instead of summing what the account owes again.
        wallet_now_e8: Option<i128>,
    },
    /// Replace the pair's position (`lots == 0` closes it); `isolated_e8` is its isolated
    /// margin, 0 in cross mode.
    Position {
        account: u64,
        found: Option<AccountIdx>,
        symbol: SymbolIdx,
        mode: Mode,
        lots: i64,
        entry_e8: i64,
        isolated_e8: i128,
    },
    /// Change the mode of a pair without position or open orders.
    MarginMode {
        account: u64,
        found: Option<AccountIdx>,
        symbol: SymbolIdx,
        mode: Mode,
    },
    Leverage {
        account: u64,
        found: Option<AccountIdx>,
        symbol: SymbolIdx,
        leverage: u32,
    },
    Orders {
        account: u64,
        symbol: SymbolIdx,
        open_orders: u64,
        order_margin_e8: i128,
    },
    /// Move `amount_e8` from the wallet into the isolated position at `slot` of its symbol's
    /// book (negative: back to the wallet).
    IsolatedMargin {
        account: AccountIdx,
        symbol: SymbolIdx,
        slot: usize,
        amount_e8: i128,
        /// The account's true wallet when the check computed it (an addition); see
        /// `Plan::Transfer`.
        wallet_now_e8: Option<i128>,
    },
    /// Pay a funding of `c` per lot (10^-20, before rounding) whose largest cross payment is
    /// `pay_max` (e8): the cross holders lazily (`cross_pay` is `None`: no wallet can leave
    /// the range) or each its payment by book slot; the isolated ones at once, at the
    /// unchanged mark `ticks`, each `round8(lots · c)` (`iso_pay` is `None`: no margin can
    /// leave the range) or its payment by slot as the check computed it.
    Funding {
        symbol: SymbolIdx,
        ticks: i64,
        c: i128,
        pay_max: i128,
        cross_pay: Option<Vec<i128>>,
        iso_pay: Option<Vec<i128>>,
    },
    Query {
        account: u64,
    },
    /// Applied, and changes nothing (a `margin_mode` to the pair's current mode).
    Nothing,
}

impl Engine for FastEngine {
    fn account_report(&self, account: u64, at: At) -> Option<AccountReport> {
        self.report_of(account, at)
    }

    fn at_risk(&self, query: &RiskQuery) -> Vec<RiskItem> {
        self.risk_items(query)
    }

    fn apply(&mut self, cmd: &Command, at: At, out: &mut dyn FnMut(Event)) -> Result<(), Reject> {
        let plan = self.check(cmd)?;
        let funding = matches!(plan, Plan::Funding { .. });
        self.commit(plan, at, out);
        // A funding is the message the progressive settle's shares are taken off: it settles
        // none of the shares due (but what is left of its own symbol's, first).
        if !funding {
            self.settle_deferred();
        }
        Ok(())
    }

    fn n_accounts(&self) -> u64 {
        FastEngine::n_accounts(self) as u64
    }

    fn n_positions(&self) -> u64 {
        FastEngine::n_positions(self) as u64
    }

    fn copy_state(
        &self,
        reuse: Option<Box<dyn std::any::Any + Send>>,
    ) -> Box<dyn crate::engine::StateCopy> {
        self.copy_into(reuse) // src/fast/snapshot.rs
    }

    fn prefetch(&self, cmd: &Command, step: crate::engine::PrefetchStep) {
        self.prefetch_command(cmd, step); // src/fast/hint.rs
    }
}

impl FastEngine {
    /// Decides what `cmd` will do, or why it is rejected, without changing anything.
    fn check<'c>(&self, cmd: &'c Command) -> Result<Plan<'c>, Reject> {
        Ok(match *cmd {
            Command::Mark { symbol, price } => Plan::Mark(symbol, price),
            Command::Marks { ref prices } => Plan::Marks(prices),
            Command::Balance { account, wallet } => Plan::Wallet { account, wallet_e8: wallet.0 },
            Command::Transfer { account, amount } => self.check_transfer(account, amount)?,
            Command::Position { account, symbol, size, entry_price, isolated_margin } => {
                self.check_position(account, symbol, size, entry_price, isolated_margin)?
            }
            Command::MarginMode { account, symbol, mode } => {
                self.check_margin_mode(account, symbol, mode)?
            }
            Command::Leverage { account, symbol, leverage } => {
                self.check_leverage(account, symbol, leverage)?
            }
            Command::Orders { account, symbol, open_orders, order_margin } => {
                Plan::Orders { account, symbol, open_orders, order_margin_e8: order_margin.0 }
            }
            Command::IsolatedMargin { account, symbol, amount } => {
                self.check_isolated_margin(account, symbol, amount)?
            }
            Command::Funding { symbol, rate } => self.check_funding(symbol, rate)?,
            Command::Query { account } => Plan::Query { account },
        })
    }

    /// Does what `plan` says and evaluates what it changed (SPEC section 6). Cannot fail.
    fn commit(&mut self, plan: Plan<'_>, at: At, out: &mut dyn FnMut(Event)) {
        self.msg_no += 1;
        match plan {
            Plan::Mark(symbol, price) => {
                let (ticks, first) = self.set_mark(symbol, price, at, out);
                self.emit_crossed_isolated(at, out);
                self.tick_cross(symbol, ticks, first);
                self.finish_message(at, out);
            }
            Plan::Marks(prices) => {
                // Every isolated book first, and their events out, then every cross book. A
                // symbol's isolated items are evaluated at its mark before the message ends,
                // which is its final mark: validation refuses a `marks` message naming a
                // symbol twice (`protocol.rs`).
                debug_assert!(
                    prices.iter().map(|p| p.0).collect::<std::collections::HashSet<_>>().len()
                        == prices.len(),
                    "a marks message names each symbol once"
                );
                let mut moved = std::mem::take(&mut self.moved);
                moved.clear();
                for &(symbol, price) in prices {
                    moved.push(self.set_mark(symbol, price, at, out));
                }
                self.emit_crossed_isolated(at, out);
                for (&(symbol, _), &(ticks, first)) in prices.iter().zip(&moved) {
                    self.tick_cross(symbol, ticks, first);
                }
                self.moved = moved;
                self.finish_message(at, out);
            }
            Plan::Wallet { account, wallet_e8 } => {
                let a = self.intern(account);
                self.settle(a);
                let delta_e8 = wallet_e8 - self.accounts.wallet_e8[a.0 as usize];
                self.move_wallet_rearmed(a, delta_e8, at, out);
            }
            Plan::Transfer { account, found, amount_e8, wallet_now_e8 } => {
                let a = self.intern_found(account, found);
                self.settle_to(a, wallet_now_e8);
                self.move_wallet_rearmed(a, amount_e8, at, out);
            }
            Plan::Position { account, found, symbol, mode, lots, entry_e8, isolated_e8 } => {
                let a = self.intern_found(account, found);
                self.commit_position(a, symbol, mode, lots, entry_e8, isolated_e8);
                self.refresh(a, true, at, out);
                self.eval_isolated(a, symbol, true, at, out);
            }
            Plan::MarginMode { account, found, symbol, mode } => {
                let a = self.intern_found(account, found);
                self.pair_mut(a, symbol).mode = mode;
            }
            Plan::Leverage { account, found, symbol, leverage } => {
                let a = self.intern_found(account, found);
                self.pair_mut(a, symbol).leverage = leverage;
            }
            Plan::Orders { account, symbol, open_orders, order_margin_e8 } => {
                let a = self.intern(account);
                // The pair exists from now on (reports list it): `update_funds` makes it.
                self.update_funds(a, symbol, |f| {
                    (f.open_orders, f.order_margin_e8) = (open_orders, order_margin_e8);
                });
            }
            Plan::IsolatedMargin { account, symbol, slot, amount_e8, wallet_now_e8 } => {
                self.settle_to(account, wallet_now_e8);
                let book = &mut self.isolated[symbol.0 as usize];
                book.finish_pending();
                book.isolated_e8[slot] += amount_e8;
                book.margin_bound_e8 = book.margin_bound_e8.max(book.isolated_e8[slot].abs());
                book.base_q16[slot] += amount_e8 * E8_TO_Q16;
                self.move_wallet_rearmed(account, -amount_e8, at, out);
                self.eval_isolated(account, symbol, true, at, out);
            }
            Plan::Funding { symbol, ticks, c, pay_max, cross_pay, iso_pay } => {
                self.commit_funding(symbol, ticks, c, pay_max, cross_pay, iso_pay);
                self.finish_message(at, out);
            }
            Plan::Query { account } => {
                // Paid what it owes for lazy fundings once, rather than on every read.
                let found = self.lookup(account);
                if let Some(a) = found {
                    self.prefetch_positions(a);
                    self.settle(a);
                }
                out(Event::Account(self.query_report(account, found, at)));
            }
            Plan::Nothing => {}
        }
    }

    /// Asks for the cache lines that a message about `a` reads of its positions, all at
    /// once: its wallet and hot record, and per position its lots, base and `fund_from`
    /// (cross: what the settle reads and writes) or isolated margin. On the 1M-account book
    /// each is a cache miss, and the walks that read them (the settle, a check's available
    /// balance, a report) would take them one after another, each waiting for the last.
    /// Reads only the pair list (which those walks read first anyway).
    fn prefetch_positions(&self, a: AccountIdx) {
        let i = a.0 as usize;
        prefetch(&self.accounts.wallet_e8[i]);
        prefetch(&self.accounts.hot[i]);
        // A big account's walks are long enough to overlap their own misses; a few
        // positions' lines are what the CPU can have in flight.
        for p in self.accounts.pairs[i].iter().filter(|p| p.slot != NO_SLOT).take(8) {
            let (book, k) = (self.book(p.mode, p.symbol), p.slot as usize);
            prefetch(&book.lots[k]);
            prefetch(&book.base_q16[k]);
            match p.mode {
                Mode::Cross => prefetch(&book.fund_from[k]),
                Mode::Isolated => prefetch(&book.isolated_e8[k]),
            }
        }
    }

    // --- checks: `&self` only ----------------------------------------------------------

    /// A deposit, or a withdrawal within the available balance (SPEC section 5); an account
    /// not seen yet has wallet 0 and nothing else, so it may only deposit.
    ///
    /// What the account owes for lazy fundings is computed at most once here (a withdrawal's
    /// available balance needs it), and a deposit whose sum stays in range on the bound of
    /// every true wallet (`wallet_bound_e8`, nearly always) needs it not at all: the commit
    /// settles the account and moves its wallet by the amount.
    fn check_transfer(&self, account: u64, amount: D8) -> Result<Plan<'static>, Reject> {
        let a = self.lookup(account);
        if let Some(a) = a {
            self.prefetch_positions(a);
        }
        let wallet_e8 = if amount.0 < 0 {
            let wallet_e8 = a.map_or(0, |a| self.wallet_now_e8(a));
            let available = a.map_or(Ok(0), |a| self.available_q16(a, wallet_e8))?;
            if available + amount.0 * E8_TO_Q16 < 0 {
                return Err(rejects::withdrawal_exceeds(amount.abs(), super::q16_text(available)));
            }
            Some(wallet_e8)
        } else {
            None
        };
        // |true wallet| <= wallet_bound_e8 (see `FastEngine::wallet_bound_e8`).
        if wallet_e8.is_none()
            && self.wallet_bound_e8.checked_add(amount.0).is_none_or(|w| w >= AMOUNT_LIMIT.0)
        {
            in_limits("wallet", a.map_or(0, |a| self.wallet_now_e8(a)) + amount.0)?;
        } else if let Some(wallet_e8) = wallet_e8 {
            in_limits("wallet", wallet_e8 + amount.0)?;
        }
        // A held account's wallet as the check computed it (withdrawals only).
        let wallet_now_e8 = wallet_e8.filter(|_| a.is_some());
        Ok(Plan::Transfer { account, found: a, amount_e8: amount.0, wallet_now_e8 })
    }

    fn check_position(
        &self,
        account: u64,
        symbol: SymbolIdx,
        size: D8,
        entry_price: Option<D8>,
        isolated_margin: Option<D8>,
    ) -> Result<Plan<'static>, Reject> {
        let found = self.lookup(account);
        let mode = self.mode_of(found, symbol);
        match (mode, isolated_margin) {
            (Mode::Cross, Some(_)) => return Err(rejects::isolated_margin_on_cross()),
            (Mode::Isolated, None) if !size.is_zero() => {
                return Err(rejects::isolated_margin_missing());
            }
            _ => {}
        }
        let sc = &self.scales[symbol.0 as usize];
        // Validation put the size on the step and |size| < 10^8 (SPEC section 1), and the
        // step is at least 10^-8, so |lots| < 10^16: the quotient is exact and fits i64.
        let lots = (size.0 / i128::from(sc.step_e8)) as i64;
        // An entry price is below 10^9 (section 1), so its e8 value is below 10^17.
        let entry_e8 = entry_price.map_or(0, |e| e.0 as i64);
        let isolated_e8 = isolated_margin.map_or(0, |m| m.0);
        Ok(Plan::Position { account, found, symbol, mode, lots, entry_e8, isolated_e8 })
    }

    /// Same mode: applied, nothing to do. Otherwise locked while the pair holds a position
    /// or open orders.
    fn check_margin_mode(
        &self,
        account: u64,
        symbol: SymbolIdx,
        mode: Mode,
    ) -> Result<Plan<'static>, Reject> {
        let a = self.lookup(account);
        if self.mode_of(a, symbol) == mode {
            return Ok(Plan::Nothing);
        }
        let p = a.and_then(|a| self.pair(a, symbol));
        let has_position = p.is_some_and(|p| p.slot != NO_SLOT);
        let open_orders = a.zip(p).map_or(0, |(a, p)| self.funds(a, p).open_orders);
        if has_position || open_orders > 0 {
            let step_e8 = i128::from(self.scales[symbol.0 as usize].step_e8);
            let size = p.map_or(D8::ZERO, |p| D8(i128::from(self.lots_of(p)) * step_e8));
            return Err(rejects::mode_locked(size, open_orders));
        }
        Ok(Plan::MarginMode { account, found: a, symbol, mode })
    }

    /// Leverage up to the max of the bracket at the current notional: at the mark, else at
    /// the entry price, else 0 (SPEC section 5).
    fn check_leverage(
        &self,
        account: u64,
        symbol: SymbolIdx,
        leverage: u64,
    ) -> Result<Plan<'static>, Reject> {
        let si = symbol.0 as usize;
        let sym = self.cfg.symbol(symbol);
        let a = self.lookup(account);
        let (lots, cost_q16) = a
            .and_then(|a| self.pair(a, symbol))
            .map_or((0, 0), |p| (self.lots_of(p), self.cost_of(p)));
        let sc = &self.scales[si];
        let k = match self.mark_ticks[si] {
            Some(t) => {
                let n = sc.notional_n12(lots, t);
                sym.bracket_index_by(|cap| n < cap.0 * 10_000)
            }
            None => {
                let n_q16 = cost_q16.abs();
                sym.bracket_index_by(|cap| n_q16 < cap.0 * E8_TO_Q16)
            }
        };
        let max = sym.brackets[k].max_leverage;
        match u32::try_from(leverage) {
            Ok(leverage) if leverage <= max => {
                Ok(Plan::Leverage { account, found: a, symbol, leverage })
            }
            _ => {
                // The reason's notional, exactly as the reference engine words it.
                let notional = self
                    .view(account)
                    .pair(symbol)
                    .map(|p| {
                        let px = self.marks[si].unwrap_or(p.entry_price);
                        margin::notional(&Exact::from_d8(p.size), &Exact::from_d8(px))
                    })
                    .unwrap_or_default();
                Err(rejects::leverage_exceeds_max(leverage, max, &sym.name, notional))
            }
        }
    }

    /// A margin move on an isolated pair with a position: an addition within the available
    /// balance, a removal that keeps the margin >= 0 and margin + upnl >= im (SPEC section 5).
    fn check_isolated_margin(
        &self,
        account: u64,
        symbol: SymbolIdx,
        amount: D8,
    ) -> Result<Plan<'static>, Reject> {
        let si = symbol.0 as usize;
        let a = self.lookup(account);
        if let Some(a) = a {
            self.prefetch_positions(a);
        }
        let pair = a.and_then(|a| self.pair(a, symbol).map(|p| (a, p)));
        let mode = pair.map_or(self.cfg.default_margin_mode, |(_, p)| p.mode);
        if mode != Mode::Isolated {
            return Err(rejects::margin_move_on_cross());
        }
        let Some((a, p)) = pair.filter(|(_, p)| p.slot != NO_SLOT) else {
            return Err(rejects::margin_move_without_position());
        };
        let slot = p.slot as usize;
        let book = &self.isolated[si];
        let margin_now = book.margin_now_e8(slot);
        // What the account owes for lazy fundings, computed once: an addition needs it for the
        // available balance; a removal only when the wallet's bound leaves the sum in doubt.
        let mut wallet_now = None;
        if amount.0 > 0 {
            let wallet_e8 = self.wallet_now_e8(a);
            wallet_now = Some(wallet_e8);
            let available = self.available_q16(a, wallet_e8)?;
            if available - amount.0 * E8_TO_Q16 < 0 {
                return Err(rejects::addition_exceeds(amount, super::q16_text(available)));
            }
        } else {
            let t = self.mark_ticks[si]
                .ok_or_else(|| rejects::no_mark(&self.cfg.symbol(symbol).name))?;
            let sc = &self.scales[si];
            let lots = book.lots[slot];
            let left = margin_now + amount.0;
            if left < 0 {
                return Err(rejects::removal_exceeds_margin(amount.abs(), D8(margin_now)));
            }
            let upnl = sc.value_q16(lots, t) - book.cost_q16(slot);
            let im = self.im_q16(sc, lots, t, self.leverage_of(symbol, p));
            if left * E8_TO_Q16 + upnl < im {
                return Err(rejects::removal_below_initial(
                    amount.abs(),
                    D8(left),
                    super::q16_text(upnl),
                    super::q16_text(im),
                ));
            }
        }
        // An addition lowers the wallet, and |true wallet| <= wallet_bound_e8.
        let bounded = self.wallet_bound_e8.checked_add(amount.0.abs());
        if bounded.is_none_or(|w| w >= AMOUNT_LIMIT.0) {
            let wallet_e8 = wallet_now.unwrap_or_else(|| self.wallet_now_e8(a));
            in_limits("wallet", wallet_e8 - amount.0)?;
        }
        in_limits("isolated margin", margin_now + amount.0)?;
        Ok(Plan::IsolatedMargin {
            account: a,
            symbol,
            slot,
            amount_e8: amount.0,
            wallet_now_e8: wallet_now,
        })
    }

    /// Every holder's payment `round8(size * P * rate)`, and every new balance checked before
    /// any is changed (all or nothing, SPEC section 5). When even the largest payment on the
    /// largest wallet stays in range (nearly always), no cross holder can fail: the plan pays
    /// them lazily and no wallet is read. Likewise, when the largest payment on the book's
    /// margin bound stays in range, no isolated holder can fail, and the check reads no slot:
    /// the commit computes each payment as it pays it. Otherwise every holder's true wallet
    /// or margin is checked, and the plan carries each payment.
    fn check_funding(&self, s: SymbolIdx, rate: D8) -> Result<Plan<'static>, Reject> {
        let si = s.0 as usize;
        let t = self.mark_ticks[si]
            .ok_or_else(|| rejects::funding_without_mark(&self.cfg.symbols[si].name))?;
        let sc = &self.scales[si];
        // round8(size * P * rate) = round8(lots * c) with c the per-lot product: the signed
        // notional (n12, |x| < 10^29 within SPEC section 1's limits) times the rate (e8,
        // |r| < 10^8) is exact at 10^-20 and below 10^37, and so is c (one lot or more).
        let c = i128::from(t) * rate.0 * sc.lot_tick_n12;
        let pay_e8 = |&lots: &i64| super::funding_pay_e8(lots, c);
        let (cross, isolated) = (&self.cross[si], &self.isolated[si]);
        // A big book's payments and checks are split between rayon workers: on the most-held
        // symbol of a 1M-account book (350k holders) they are most of a funding's cost.
        let parallel = cross.len() + isolated.len() >= self.parallel_min;
        let pays = |lots: &[i64]| -> Vec<i128> {
            if parallel {
                lots.par_iter().with_min_len(CHUNK).map(pay_e8).collect()
            } else {
                lots.iter().map(pay_e8).collect()
            }
        };
        // Rounding is monotone and symmetric, so no cross payment exceeds that of the most
        // lots the book ever held.
        let pay_max = super::div_1e12_round_half_even(i128::from(cross.max_lots) * c.abs());
        let lazy = self.wallet_bound_e8.checked_add(pay_max).is_some_and(|w| w < AMOUNT_LIMIT.0);
        let iso_pay_max = super::div_1e12_round_half_even(i128::from(isolated.max_lots) * c.abs());
        let iso_safe =
            isolated.margin_bound_e8.checked_add(iso_pay_max).is_some_and(|m| m < AMOUNT_LIMIT.0);
        if lazy && iso_safe {
            let (cross_pay, iso_pay) = (None, None);
            return Ok(Plan::Funding { symbol: s, ticks: t, c, pay_max, cross_pay, iso_pay });
        }
        let cross_pay = if lazy { None } else { Some(pays(&cross.lots)) };
        let iso_pay = pays(&isolated.lots);
        // Of several balances that would leave the range, name the lowest account id, as the
        // reference engine (which walks ids in order) does. Most fundings have none, so the
        // scan only finds the failing slots; their rejects are made after.
        let no_pays = Vec::new();
        let cross_pay_ref = cross_pay.as_ref().unwrap_or(&no_pays);
        let cross_fails = |k: usize| {
            let a = cross.account[k];
            let left = self.wallet_now_e8(a) - cross_pay_ref[k];
            in_limits("wallet", left).err().map(|r| (self.accounts.id[a.0 as usize], r))
        };
        let iso_fails = |k: usize| {
            let a = isolated.account[k].0 as usize;
            let left = isolated.margin_now_e8(k) - iso_pay[k];
            in_limits("isolated margin", left).err().map(|r| (self.accounts.id[a], r))
        };
        let lowest = |x: Option<(u64, Reject)>, y: Option<(u64, Reject)>| match (x, y) {
            (Some(x), Some(y)) => Some(if y.0 < x.0 { y } else { x }),
            (x, y) => x.or(y),
        };
        let cross_len = cross_pay_ref.len();
        let failure = if parallel {
            let c = (0..cross_len).into_par_iter().with_min_len(CHUNK).map(cross_fails);
            let i = (0..isolated.len()).into_par_iter().with_min_len(CHUNK).map(iso_fails);
            c.chain(i).reduce(|| None, lowest)
        } else {
            let c = (0..cross_len).map(cross_fails);
            c.chain((0..isolated.len()).map(iso_fails)).fold(None, lowest)
        };
        match failure {
            Some((_, reject)) => Err(reject),
            None => {
                let iso_pay = Some(iso_pay);
                Ok(Plan::Funding { symbol: s, ticks: t, c, pay_max, cross_pay, iso_pay })
            }
        }
    }

    // --- commits: infallible ---------------------------------------------------------------

    /// Sets the mark of `s` and moves its isolated book there, emitting the isolated items
    /// that crossed ([`FastEngine::tick_isolated`]); the caller then moves the cross book with
    /// [`FastEngine::tick_cross`] (SPEC section 6 evaluates the cross items at the end of the
    /// message). Returns the mark in ticks and whether it was the symbol's first.
    fn set_mark(
        &mut self,
        s: SymbolIdx,
        price: D8,
        at: At,
        out: &mut dyn FnMut(Event),
    ) -> (i64, bool) {
        let si = s.0 as usize;
        self.marks[si] = Some(price);
        // Validation put the price on the tick and below 10^9 (SPEC section 1), so the
        // quotient is exact and below 10^17 ticks: it fits i64.
        let ticks = (price.0 / i128::from(self.scales[si].tick_e8)) as i64;
        (ticks, self.tick_isolated(s, ticks, at, out))
    }

    /// The account `account`: the index its check found, or a new one.
    fn intern_found(&mut self, account: u64, found: Option<AccountIdx>) -> AccountIdx {
        debug_assert_eq!(found, self.lookup(account));
        found.unwrap_or_else(|| self.intern(account))
    }

    fn commit_position(
        &mut self,
        a: AccountIdx,
        symbol: SymbolIdx,
        mode: Mode,
        lots: i64,
        entry_e8: i64,
        isolated_e8: i128,
    ) {
        // What its positions owe is paid before one of them moves or goes (a closed slot's
        // log position would be lost).
        self.settle(a);
        self.remove_position(a, symbol);
        self.pair_mut(a, symbol); // a mentioned pair exists from now on, flat or not
        if mode == Mode::Isolated {
            // The margin goes with the position, or stays with the pair if flat.
            let idle = if lots == 0 { isolated_e8 } else { 0 };
            self.update_funds(a, symbol, |f| f.idle_isolated_e8 = idle);
        }
        if lots != 0 {
            self.insert_position(a, symbol, lots, entry_e8, isolated_e8);
        }
    }

    fn commit_funding(
        &mut self,
        s: SymbolIdx,
        ticks: i64,
        c: i128,
        pay_max: i128,
        cross_pay: Option<Vec<i128>>,
        iso_pay: Option<Vec<i128>>,
    ) {
        let si = s.0 as usize;
        if c == 0 {
            // Rate 0: every payment is round8(0) = 0, so no wallet, margin, flag or trigger
            // moves, and a log entry of 0 would only cost the settle work it schedules.
            return;
        }
        match cross_pay {
            None => {
                // Every true wallet was within the bound and moves by at most `pay_max`; the
                // check found the sum in range.
                self.wallet_bound_e8 += pay_max;
                self.fund_lazily(s, c);
            }
            Some(cross_pay) => {
                // The check computed one payment per slot of the book as it is now.
                debug_assert_eq!(cross_pay.len(), self.cross[si].len());
                // Holders are in no account order: each is a cache miss or two, so the records
                // a few holders ahead are asked for first. Each account is settled first (its
                // stored wallet is then its true one); one whose reserve takes its payment
                // needs no evaluation (`Hot::absorb`), the others are refreshed when the
                // message ends.
                const AHEAD: usize = 64;
                for (k, pay) in cross_pay.into_iter().enumerate() {
                    if let Some(&b) = self.cross[si].account.get(k + AHEAD) {
                        super::prefetch(&self.accounts.hot[b.0 as usize]);
                        super::prefetch(&self.accounts.wallet_e8[b.0 as usize]);
                    }
                    let a = self.cross[si].account[k];
                    self.settle(a);
                    if !self.move_wallet(a, -pay) {
                        self.touch(a);
                    }
                }
            }
        }
        self.pay_isolated(s, ticks, c, iso_pay.as_deref());
    }

    /// Pays funding `c` (per lot, 10^-20) out of every isolated position of `s` at the
    /// unchanged mark `ticks`: each `round8(lots · c)`, or `pays[k]` when the check computed
    /// them. A payment that moves a position away from its flip (a healthy one receiving, a
    /// liquidatable one paying) leaves its state and trigger valid (the trigger fires early
    /// at most). One that moves it towards its flip moves its trigger by this funding's
    /// [`funding_move`] for its side when that keeps the mark on the trigger's safe side
    /// (the state is then unchanged, so nothing is evaluated), and is evaluated exactly
    /// otherwise. One branch-light pass over the book's columns in slot order
    /// ([`Book::pay_funding`](super::book::Book::pay_funding)), then the few exact
    /// evaluations: the exact search of every payer's trigger was most of a funding's cost
    /// on the trade-heavy mix, and a division per payer after it.
    fn pay_isolated(&mut self, s: SymbolIdx, ticks: i64, c: i128, pays: Option<&[i128]>) {
        let si = s.0 as usize;
        let (book, sc) = (&mut self.isolated[si], &self.scales[si]);
        debug_assert!(pays.is_none_or(|p| p.len() == book.len()));
        if c == 0 || book.is_empty() {
            // Every payment is round8(0) = 0: nothing moves.
            return;
        }
        // Every |margin| was within the bound and moves by at most the largest payment (of
        // the most lots the book ever held: rounding is monotone and symmetric); the check
        // found the sum in range.
        let pay_max = super::div_1e12_round_half_even(i128::from(book.max_lots) * c.abs());
        book.margin_bound_e8 += pay_max;
        let moves = [funding_move(sc, c, true), funding_move(sc, c, false)];
        // The previous funding's pass, if it still waits, before this one.
        book.finish_pending();
        if pays.is_none() && !book.funding_may_flip(moves[0].max(moves[1]), c > 0, ticks) {
            // No payment can flip a position at this mark: the pass waits, run a slice at a
            // time after later messages (`settle_deferred`) or before the book is next read
            // or changed (`PendingPass`).
            book.pending = Some(PendingPass { c, moves, t: ticks, from: 0 });
            if !std::mem::replace(&mut book.pending_queued, true) {
                self.pending_queue.push_back(si as u32);
            }
            return;
        }
        let mut evaluate = std::mem::take(&mut self.fired);
        evaluate.clear();
        match pays {
            Some(pays) => book.pay_funding(|k, _| pays[k], moves, ticks, &mut evaluate),
            None => {
                let pay = |_, lots: i64| super::funding_pay_e8(lots, c);
                book.pay_funding(pay, moves, ticks, &mut evaluate);
            }
        }
        for &k in &evaluate {
            let k = k as usize;
            let (lots, base, was) = (book.lots[k], book.base_q16[k], book.liquidatable[k]);
            let now = sc.buffer_q16(lots, base, ticks) < 0;
            book.liquidatable[k] = now;
            book.set_trigger(k, super::isolated_trigger(sc, lots, base, ticks, now));
            if now && !was {
                self.emit_isolated.push((s, k as u32));
            }
        }
        self.positions_evaluated += evaluate.len() as u64;
        self.fired = evaluate;
    }
}

/// How far (ticks) a funding of `c` (per lot, 10^-20) moves the trigger of an isolated
/// position of the side `long` that it pays towards its flip (a healthy one paid, a
/// liquidatable one receiving), whatever its lots: `d = ⌈(|c| + ½·10^12) / (10^4 · K)⌉`, with
/// `K` the least move of one lot's buffer term a tick
/// ([`Scale::slope_floor_q16`](super::book::Scale::slope_floor_q16) of one lot:
/// `lot_tick_n12 · (10^4 − mmr_max)` for a long, `lot_tick_q16` for a short; the floor of
/// `q` lots is `q · K`).
///
/// Why every payer of the funding may move by `d`: its payment is `round8(q · c / 10^12)`
/// (e8), so `|pay| <= q · |c| / 10^12 + ½`, and the move it needs, `|pay| · 10^8 / (q · K)`
/// ticks (q16 over q16 a tick), is at most `(|c| + ½ · 10^12 / q) / (10^4 · K) <= (|c| + ½ ·
/// 10^12) / (10^4 · K) <= d`. A trigger's safe side is a ray of marks ending at it, on
/// which the term was on the flag's side (`f >= 0` healthy, `f <= −1` liquidatable); every
/// mark `m` of the ray moved by `d` towards the flip has `m ∓ d` in the old ray, so its term
/// is at least `d · q · K >= |pay|` (q16) further from the flip than the old bound, and after
/// the payment it is still on the flag's side. So the moved trigger
/// ([`moved_trigger`](super::book::moved_trigger)) fires before the state can flip, and with
/// the mark on its safe side the state is unchanged. It fires early by the rounding of `d`,
/// the gap between `K` and the position's own slope (mm's rate of its bracket instead of
/// the largest) and at most half of 10^-8 a lot; a mark that fires it evaluates and
/// re-triggers exactly. One figure per side and funding: no division per position.
pub(super) fn funding_move(sc: &super::book::Scale, c: i128, long: bool) -> i64 {
    let k = sc.slope_floor_q16(if long { 1 } else { -1 }).unsigned_abs();
    // |c| < 2^123 (see `check_funding`), so the sum fits; a slope past u128 / 10^4 gives d = 1,
    // still at least the move needed (below 1 tick then).
    let need = c.unsigned_abs() + super::FUND_ROUNDING as u128;
    i64::try_from(need.div_ceil(k.saturating_mul(10_000))).unwrap_or(i64::MAX)
}
