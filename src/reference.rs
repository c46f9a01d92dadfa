//! The reference engine: SPEC sections 3 to 6 written for clarity, on unbounded exact
//! numbers ([`Exact`]) and ordered maps.
//!
//! It is the oracle the fast engine is tested against and the baseline it is benchmarked
//! against, so it favours the obvious over the quick: every evaluation recomputes from the
//! state with the formulas of [`crate::margin`]; nothing is cached but the per-item
//! "liquidatable after the last message" flags that SPEC section 6 needs.

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

impl Engine for ReferenceEngine {
    fn account_report(&self, account: u64, at: At) -> Option<AccountReport> {
        self.report_of(account, at)
    }

    fn at_risk(&self, query: &RiskQuery) -> Vec<RiskItem> {
        self.risk_items(query)
    }

    fn apply(&mut self, cmd: &Command, at: At, out: &mut dyn FnMut(Event)) -> Result<(), Reject> {
        // Each arm checks every rule before it mutates anything, then names the items whose
        // inputs changed and the items the message re-arms.
        let mut items = BTreeSet::new();
        let mut rearmed = BTreeSet::new();
        let cfg = self.cfg.clone();
        match *cmd {
            Command::Mark { symbol, price } => {
                self.marks[symbol.0 as usize] = Some(price);
                items = self.holders_items(symbol);
            }
            Command::Marks { ref prices } => {
                for &(s, price) in prices {
                    self.marks[s.0 as usize] = Some(price);
                }
                for &(s, _) in prices {
                    items.extend(self.holders_items(s));
                }
            }
            Command::Balance { account, wallet } => {
                self.set_wallet(account, wallet);
                rearmed.insert(Item::Cross(account));
            }
            Command::Transfer { account, amount } => {
                let amount = Exact::from_d8(amount);
                if !amount.is_positive() {
                    let available = self
                        .view(account)
                        .available(&cfg, &self.marks)
                        .ok_or_else(rejects::no_cross_mark)?;
                    if (&available + &amount).signum() < 0 {
                        return Err(rejects::withdrawal_exceeds(amount.abs(), available));
                    }
                }
                let w = in_limits("wallet", &Exact::from_d8(self.wallet(account)) + &amount)?;
                self.set_wallet(account, w);
                rearmed.insert(Item::Cross(account));
            }
            Command::Position { account, symbol, size, entry_price, isolated_margin } => {
                let mode = self.pair(account, symbol).mode;
                match (mode, isolated_margin) {
                    (Mode::Cross, Some(_)) => {
                        return Err(rejects::isolated_margin_on_cross());
                    }
                    (Mode::Isolated, None) if !size.is_zero() => {
                        return Err(rejects::isolated_margin_missing());
                    }
                    _ => {}
                }
                let p = self.pair_mut(account, symbol);
                p.size = size;
                p.entry = entry_price.unwrap_or_default();
                if mode == Mode::Isolated {
                    p.isolated_margin = isolated_margin.unwrap_or(D8::ZERO);
                }
                let holders = &mut self.holders[symbol.0 as usize];
                if size.is_zero() {
                    holders.remove(&account);
                } else {
                    holders.insert(account);
                }
                rearmed.insert(Item::Cross(account));
                rearmed.insert(Item::Isolated(account, symbol));
            }
            Command::MarginMode { account, symbol, mode } => {
                let p = self.pair(account, symbol);
                if p.mode != mode {
                    if !p.size.is_zero() || p.open_orders > 0 {
                        return Err(rejects::mode_locked(p.size, p.open_orders));
                    }
                    self.pair_mut(account, symbol).mode = mode;
                }
            }
            Command::Leverage { account, symbol, leverage } => {
                let p = self.pair(account, symbol);
                let sym = cfg.symbol(symbol);
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
                self.pair_mut(account, symbol).leverage = Some(leverage);
            }
            Command::Orders { account, symbol, open_orders, order_margin } => {
                let p = self.pair_mut(account, symbol);
                p.open_orders = open_orders;
                p.order_margin = order_margin;
            }
            Command::IsolatedMargin { account, symbol, amount } => {
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
                    let available =
                        view.available(&cfg, &self.marks).ok_or_else(rejects::no_cross_mark)?;
                    if (&available - &amount).signum() < 0 {
                        return Err(rejects::addition_exceeds(amount, available));
                    }
                } else {
                    let pv = view.pair(symbol).expect("the pair exists");
                    let f = report::figures(&cfg, &self.marks, pv)
                        .ok_or_else(|| rejects::no_mark(&cfg.symbol(symbol).name))?;
                    let left = &margin_now + &amount;
                    if left.signum() < 0 {
                        return Err(rejects::removal_exceeds_margin(amount.abs(), margin_now));
                    }
                    if &left + &f.upnl < f.im {
                        return Err(rejects::removal_below_initial(
                            amount.abs(),
                            left,
                            f.upnl,
                            f.im,
                        ));
                    }
                }
                let w = in_limits("wallet", &Exact::from_d8(view.wallet) - &amount)?;
                let m = in_limits("isolated margin", &margin_now + &amount)?;
                self.set_wallet(account, w);
                self.pair_mut(account, symbol).isolated_margin = m;
                rearmed.insert(Item::Cross(account));
                rearmed.insert(Item::Isolated(account, symbol));
            }
            Command::Funding { symbol, rate } => {
                let Some(mark) = self.marks[symbol.0 as usize] else {
                    return Err(rejects::funding_without_mark(&cfg.symbol(symbol).name));
                };
                let (mark, rate) = (Exact::from_d8(mark), Exact::from_d8(rate));
                // Every new balance first: one out of range rejects the message as a whole.
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
                for (a, mode, new) in updates {
                    match mode {
                        Mode::Cross => self.set_wallet(a, new),
                        Mode::Isolated => self.pair_mut(a, symbol).isolated_margin = new,
                    }
                }
                items = self.holders_items(symbol);
            }
            Command::Query { account } => {
                out(Event::Account(self.view(account).report(&cfg, &self.marks, at)));
            }
        }
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
