//! The reference engine: SPEC sections 3 to 6 written for clarity, on unbounded exact
//! numbers ([`Exact`]) and ordered maps.
//!
//! It is the oracle the fast engine is tested against and the baseline it is benchmarked
//! against, so it favours the obvious over the quick: every evaluation recomputes from the
//! state with the formulas of [`crate::margin`]; nothing is cached but the per-item
//! "liquidatable after the last message" flags that SPEC section 6 needs.

mod snapshot;

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::Arc,
};

use crate::{
    config::{Config, Mode, SymbolIdx},
    engine::{At, Engine, RiskQuery, rejects, should_emit},
    exact::Exact,
    fixed::D8,
    margin,
    protocol::{AMOUNT_LIMIT, AccountReport, Command, Event, Reject, RiskItem},
    report::{self, AccountView, Item, PairView},
};

#[derive(Debug, Clone)]
struct Pair {
    mode: Mode,
    /// `None` until a `leverage` message sets it.
    leverage: Option<u64>,
    open_orders: u64,
    order_margin: D8,
    size: D8,
    entry: D8,
    isolated_margin: D8,
    /// The isolated item's flag: liquidatable after the last message that evaluated it.
    liquidatable: bool,
}

#[derive(Debug, Clone, Default)]
struct Account {
    wallet: D8,
    pairs: BTreeMap<SymbolIdx, Pair>,
    /// The cross item's flag.
    cross_liquidatable: bool,
}

/// The reference engine. A [`SymbolIdx`] is minted only by the config, so it indexes
/// `marks` and `holders` (one entry per config symbol) without a bound check failing;
/// amounts are unbounded [`Exact`]s, and every stored balance passes `in_limits` first.
pub struct ReferenceEngine {
    cfg: Arc<Config>,
    marks: Vec<Option<D8>>,
    accounts: BTreeMap<u64, Account>,
    /// Accounts with a non-zero position, per symbol.
    holders: Vec<BTreeSet<u64>>,
}

/// A new balance as a `D8`, refused when it leaves SPEC section 1's range.
fn in_limits(what: &str, v: Exact) -> Result<D8, Reject> {
    match v.to_d8() {
        Some(d) if d.abs() < AMOUNT_LIMIT => Ok(d),
        _ => Err(rejects::out_of_range(what, v)),
    }
}

impl ReferenceEngine {
    pub fn new(cfg: Arc<Config>) -> ReferenceEngine {
        let n = cfg.symbols.len();
        ReferenceEngine {
            cfg,
            marks: vec![None; n],
            accounts: BTreeMap::new(),
            holders: vec![BTreeSet::new(); n],
        }
    }

    /// The ids of the accounts held, ascending. An account exists from the first applied
    /// message that names it (SPEC section 3); a rejected one makes none.
    pub fn accounts(&self) -> impl Iterator<Item = u64> + '_ {
        self.accounts.keys().copied()
    }

    /// The (account id, symbol) pairs held, flat or not, ascending. A rejected message makes
    /// none (SPEC section 5).
    pub fn pairs(&self) -> impl Iterator<Item = (u64, SymbolIdx)> + '_ {
        self.accounts.iter().flat_map(|(&id, a)| a.pairs.keys().map(move |&s| (id, s)))
    }

    fn new_pair(&self) -> Pair {
        Pair {
            mode: self.cfg.default_margin_mode,
            leverage: None,
            open_orders: 0,
            order_margin: D8::ZERO,
            size: D8::ZERO,
            entry: D8::ZERO,
            isolated_margin: D8::ZERO,
            liquidatable: false,
        }
    }

    /// The pair's state, or a fresh pair with the config defaults.
    fn pair(&self, account: u64, s: SymbolIdx) -> Pair {
        self.accounts
            .get(&account)
            .and_then(|a| a.pairs.get(&s))
            .cloned()
            .unwrap_or_else(|| self.new_pair())
    }

    fn pair_mut(&mut self, account: u64, s: SymbolIdx) -> &mut Pair {
        let fresh = self.new_pair();
        self.accounts.entry(account).or_default().pairs.entry(s).or_insert(fresh)
    }

    fn wallet(&self, account: u64) -> D8 {
        self.accounts.get(&account).map(|a| a.wallet).unwrap_or_default()
    }

    fn set_wallet(&mut self, account: u64, w: D8) {
        self.accounts.entry(account).or_default().wallet = w;
    }

    fn pair_view(&self, s: SymbolIdx, p: &Pair) -> PairView {
        PairView {
            symbol: s,
            mode: p.mode,
            leverage: p.leverage.unwrap_or_else(|| u64::from(self.cfg.default_leverage_for(s))),
            size: p.size,
            entry_price: p.entry,
            isolated_margin: p.isolated_margin,
            order_margin: p.order_margin,
        }
    }

    fn view(&self, account: u64) -> AccountView {
        let a = self.accounts.get(&account);
        AccountView {
            account,
            wallet: a.map(|a| a.wallet).unwrap_or_default(),
            pairs: a
                .map(|a| a.pairs.iter().map(|(s, p)| self.pair_view(*s, p)).collect())
                .unwrap_or_default(),
        }
    }

    fn flag_mut(&mut self, item: Item) -> Option<&mut bool> {
        match item {
            Item::Cross(a) => self.accounts.get_mut(&a).map(|x| &mut x.cross_liquidatable),
            Item::Isolated(a, s) => self
                .accounts
                .get_mut(&a)
                .and_then(|x| x.pairs.get_mut(&s))
                .map(|p| &mut p.liquidatable),
        }
    }

    /// Evaluates `items` after a message; `rearmed` ⊆ `items`.
    fn evaluate(
        &mut self,
        items: &BTreeSet<Item>,
        rearmed: &BTreeSet<Item>,
        at: At,
        out: &mut dyn FnMut(Event),
    ) {
        for &item in items {
            let account = match item {
                Item::Cross(a) | Item::Isolated(a, _) => a,
            };
            let view = self.view(account);
            let now = matches!(view.item_totals(&self.cfg, &self.marks, item), Some((bal, mm)) if bal < mm);
            let Some(flag) = self.flag_mut(item) else {
                continue;
            };
            let was = std::mem::replace(flag, now);
            if should_emit(was, now, rearmed.contains(&item)) {
                out(Event::Liquidation(view.liquidation(&self.cfg, &self.marks, item, at)));
            }
        }
    }

    /// The item a position of `account` in `s` belongs to.
    fn item_of(&self, account: u64, s: SymbolIdx) -> Item {
        match self.pair(account, s).mode {
            Mode::Cross => Item::Cross(account),
            Mode::Isolated => Item::Isolated(account, s),
        }
    }

    fn holders_items(&self, s: SymbolIdx) -> BTreeSet<Item> {
        self.holders[s.0 as usize].iter().map(|&a| self.item_of(a, s)).collect()
    }
}

/// What an accepted command will do: every value it writes, decided by
/// [`ReferenceEngine::check`] from the state before it (check, then commit: a rejected
/// message cannot leave a trace, SPEC section 5).
#[derive(Debug)]
enum Plan<'c> {
    Mark(SymbolIdx, D8),
    Marks(&'c [(SymbolIdx, D8)]),
    /// A `balance`, or a `transfer` within its rules.
    Wallet {
        account: u64,
        wallet: D8,
    },
    Position {
        account: u64,
        symbol: SymbolIdx,
        mode: Mode,
        size: D8,
        entry: D8,
        isolated_margin: D8,
    },
    MarginMode {
        account: u64,
        symbol: SymbolIdx,
        mode: Mode,
    },
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
    /// The new wallet and isolated margin after a margin move.
    IsolatedMargin {
        account: u64,
        symbol: SymbolIdx,
        wallet: D8,
        margin: D8,
    },
    /// Every holder's new balance: its wallet (cross) or its isolated margin (isolated).
    Funding {
        symbol: SymbolIdx,
        updates: Vec<(u64, Mode, D8)>,
    },
    Query {
        account: u64,
    },
    /// Applied, and changes nothing (a `margin_mode` to the pair's current mode).
    Nothing,
}

/// The items a committed message changed, and those it re-arms (SPEC section 6).
#[derive(Default)]
struct Changed {
    items: BTreeSet<Item>,
    rearmed: BTreeSet<Item>,
}

impl Changed {
    fn rearm(items: impl IntoIterator<Item = Item>) -> Changed {
        Changed { items: BTreeSet::new(), rearmed: items.into_iter().collect() }
    }
}

impl ReferenceEngine {
    /// Decides what `cmd` will do, or why it is rejected, without changing anything.
    fn check<'c>(&self, cmd: &'c Command) -> Result<Plan<'c>, Reject> {
        Ok(match *cmd {
            Command::Mark { symbol, price } => Plan::Mark(symbol, price),
            Command::Marks { ref prices } => Plan::Marks(prices),
            Command::Balance { account, wallet } => Plan::Wallet { account, wallet },
            Command::Transfer { account, amount } => self.check_transfer(account, amount)?,
            Command::Position { account, symbol, size, entry_price, isolated_margin } => {
                let mode = self.pair(account, symbol).mode;
                match (mode, isolated_margin) {
                    (Mode::Cross, Some(_)) => return Err(rejects::isolated_margin_on_cross()),
                    (Mode::Isolated, None) if !size.is_zero() => {
                        return Err(rejects::isolated_margin_missing());
                    }
                    _ => {}
                }
                let (entry, isolated_margin) =
                    (entry_price.unwrap_or_default(), isolated_margin.unwrap_or_default());
                Plan::Position { account, symbol, mode, size, entry, isolated_margin }
            }
            Command::MarginMode { account, symbol, mode } => {
                let p = self.pair(account, symbol);
                if p.mode == mode {
                    Plan::Nothing
                } else if !p.size.is_zero() || p.open_orders > 0 {
                    return Err(rejects::mode_locked(p.size, p.open_orders));
                } else {
                    Plan::MarginMode { account, symbol, mode }
                }
            }
            Command::Leverage { account, symbol, leverage } => {
                self.check_leverage(account, symbol, leverage)?
            }
            Command::Orders { account, symbol, open_orders, order_margin } => {
                Plan::Orders { account, symbol, open_orders, order_margin }
            }
            Command::IsolatedMargin { account, symbol, amount } => {
                self.check_isolated_margin(account, symbol, amount)?
            }
            Command::Funding { symbol, rate } => self.check_funding(symbol, rate)?,
            Command::Query { account } => Plan::Query { account },
        })
    }

    /// Does what `plan` says and names the items it changed and re-arms. Cannot fail.
    fn commit(&mut self, plan: Plan<'_>, at: At, out: &mut dyn FnMut(Event)) -> Changed {
        match plan {
            Plan::Mark(symbol, price) => {
                self.marks[symbol.0 as usize] = Some(price);
                Changed { items: self.holders_items(symbol), ..Changed::default() }
            }
            Plan::Marks(prices) => {
                for &(s, price) in prices {
                    self.marks[s.0 as usize] = Some(price);
                }
                let items = prices.iter().flat_map(|&(s, _)| self.holders_items(s)).collect();
                Changed { items, ..Changed::default() }
            }
            Plan::Wallet { account, wallet } => {
                self.set_wallet(account, wallet);
                Changed::rearm([Item::Cross(account)])
            }
            Plan::Position { account, symbol, mode, size, entry, isolated_margin } => {
                let p = self.pair_mut(account, symbol);
                p.size = size;
                p.entry = entry;
                if mode == Mode::Isolated {
                    p.isolated_margin = isolated_margin;
                }
                let holders = &mut self.holders[symbol.0 as usize];
                if size.is_zero() {
                    holders.remove(&account);
                } else {
                    holders.insert(account);
                }
                Changed::rearm([Item::Cross(account), Item::Isolated(account, symbol)])
            }
            Plan::MarginMode { account, symbol, mode } => {
                self.pair_mut(account, symbol).mode = mode;
                Changed::default()
            }
            Plan::Leverage { account, symbol, leverage } => {
                self.pair_mut(account, symbol).leverage = Some(leverage);
                Changed::default()
            }
            Plan::Orders { account, symbol, open_orders, order_margin } => {
                let p = self.pair_mut(account, symbol);
                p.open_orders = open_orders;
                p.order_margin = order_margin;
                Changed::default()
            }
            Plan::IsolatedMargin { account, symbol, wallet, margin } => {
                self.set_wallet(account, wallet);
                self.pair_mut(account, symbol).isolated_margin = margin;
                Changed::rearm([Item::Cross(account), Item::Isolated(account, symbol)])
            }
            Plan::Funding { symbol, updates } => {
                for (a, mode, new) in updates {
                    match mode {
                        Mode::Cross => self.set_wallet(a, new),
                        Mode::Isolated => self.pair_mut(a, symbol).isolated_margin = new,
                    }
                }
                Changed { items: self.holders_items(symbol), ..Changed::default() }
            }
            Plan::Query { account } => {
                out(Event::Account(self.view(account).report(&self.cfg, &self.marks, at)));
                Changed::default()
            }
            Plan::Nothing => Changed::default(),
        }
    }

    /// A deposit, or a withdrawal within the available balance (SPEC section 5).
    fn check_transfer(&self, account: u64, amount: D8) -> Result<Plan<'static>, Reject> {
        let amount = Exact::from_d8(amount);
        if !amount.is_positive() {
            let available = self
                .view(account)
                .available(&self.cfg, &self.marks)
                .ok_or_else(rejects::no_cross_mark)?;
            if (&available + &amount).signum() < 0 {
                return Err(rejects::withdrawal_exceeds(amount.abs(), available));
            }
        }
        let wallet = in_limits("wallet", &Exact::from_d8(self.wallet(account)) + &amount)?;
        Ok(Plan::Wallet { account, wallet })
    }

    /// Leverage up to the max of the bracket at the current notional: at the mark, else at
    /// the entry price, else 0 (SPEC section 5).
    fn check_leverage(
        &self,
        account: u64,
        symbol: SymbolIdx,
        leverage: u64,
    ) -> Result<Plan<'static>, Reject> {
        let p = self.pair(account, symbol);
        let sym = self.cfg.symbol(symbol);
        let size = Exact::from_d8(p.size);
        let notional = match (self.marks[symbol.0 as usize], p.size.is_zero()) {
            (Some(mark), _) => margin::notional(&size, &Exact::from_d8(mark)),
            (None, false) => margin::notional(&size, &Exact::from_d8(p.entry)),
            (None, true) => Exact::zero(),
        };
        let max = margin::bracket(sym, &notional).max_leverage;
        if leverage > u64::from(max) {
            return Err(rejects::leverage_exceeds_max(leverage, max, &sym.name, notional));
        }
        Ok(Plan::Leverage { account, symbol, leverage })
    }

    /// A margin move on an isolated pair with a position (SPEC section 5).
    fn check_isolated_margin(
        &self,
        account: u64,
        symbol: SymbolIdx,
        amount: D8,
    ) -> Result<Plan<'static>, Reject> {
        let cfg = &self.cfg;
        let p = self.pair(account, symbol);
        if p.mode != Mode::Isolated {
            return Err(rejects::margin_move_on_cross());
        }
        if p.size.is_zero() {
            return Err(rejects::margin_move_without_position());
        }
        let view = self.view(account);
        let amount = Exact::from_d8(amount);
        let margin_now = Exact::from_d8(p.isolated_margin);
        if amount.is_positive() {
            let available = view.available(cfg, &self.marks).ok_or_else(rejects::no_cross_mark)?;
            if (&available - &amount).signum() < 0 {
                return Err(rejects::addition_exceeds(amount, available));
            }
        } else {
            // A non-zero size means the pair was stored, so the view lists it.
            let pv = view.pair(symbol).expect("a pair with a position is in the view");
            let f = report::figures(cfg, &self.marks, pv)
                .ok_or_else(|| rejects::no_mark(&cfg.symbol(symbol).name))?;
            let left = &margin_now + &amount;
            if left.signum() < 0 {
                return Err(rejects::removal_exceeds_margin(amount.abs(), margin_now));
            }
            if &left + &f.upnl < f.im {
                return Err(rejects::removal_below_initial(amount.abs(), left, f.upnl, f.im));
            }
        }
        let wallet = in_limits("wallet", &Exact::from_d8(view.wallet) - &amount)?;
        let margin = in_limits("isolated margin", &margin_now + &amount)?;
        Ok(Plan::IsolatedMargin { account, symbol, wallet, margin })
    }

    /// Every holder's payment and new balance, all checked before any is changed (all or
    /// nothing); the first failure in account order names the reject.
    fn check_funding(&self, symbol: SymbolIdx, rate: D8) -> Result<Plan<'static>, Reject> {
        let Some(mark) = self.marks[symbol.0 as usize] else {
            return Err(rejects::funding_without_mark(&self.cfg.symbol(symbol).name));
        };
        let (mark, rate) = (Exact::from_d8(mark), Exact::from_d8(rate));
        let mut updates = Vec::new();
        for &a in &self.holders[symbol.0 as usize] {
            let p = self.pair(a, symbol);
            let pay = margin::funding_payment(&Exact::from_d8(p.size), &mark, &rate);
            let new = match p.mode {
                Mode::Cross => in_limits("wallet", &Exact::from_d8(self.wallet(a)) - &pay)?,
                Mode::Isolated => {
                    in_limits("isolated margin", &Exact::from_d8(p.isolated_margin) - &pay)?
                }
            };
            updates.push((a, p.mode, new));
        }
        Ok(Plan::Funding { symbol, updates })
    }
}

impl Engine for ReferenceEngine {
    fn account_report(&self, account: u64, at: At) -> Option<AccountReport> {
        self.report_of(account, at)
    }

    fn at_risk(&self, query: &RiskQuery) -> Vec<RiskItem> {
        self.risk_items(query)
    }

    fn apply(&mut self, cmd: &Command, at: At, out: &mut dyn FnMut(Event)) -> Result<(), Reject> {
        let plan = self.check(cmd)?;
        let Changed { mut items, rearmed } = self.commit(plan, at, out);
        // A re-armed item is evaluated even when its inputs did not change, so that the
        // literal rule of SPEC section 6 holds for it too.
        items.extend(rearmed.iter().copied());
        self.evaluate(&items, &rearmed, at, out);
        Ok(())
    }

    fn n_accounts(&self) -> u64 {
        self.accounts.len() as u64
    }

    fn n_positions(&self) -> u64 {
        self.holders.iter().map(|h| h.len() as u64).sum()
    }

    fn copy_state(
        &self,
        _reuse: Option<Box<dyn std::any::Any + Send>>,
    ) -> Box<dyn crate::engine::StateCopy> {
        self.copy_into() // src/reference/snapshot.rs
    }
}

/// The read side (SPEC section 9.3): account reports and at-risk lists, recomputed from the
/// state with [`crate::report`], as every evaluation here is.
impl ReferenceEngine {
    fn report_of(&self, account: u64, at: At) -> Option<AccountReport> {
        self.accounts
            .contains_key(&account)
            .then(|| self.view(account).report(&self.cfg, &self.marks, at))
    }

    fn risk_items(&self, query: &RiskQuery) -> Vec<RiskItem> {
        let views: Vec<AccountView> = self.accounts.keys().map(|&a| self.view(a)).collect();
        report::at_risk(&self.cfg, &self.marks, &views, query)
    }
}
