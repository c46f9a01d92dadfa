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
    engine::{At, Engine, should_emit},
    exact::Exact,
    fixed::D8,
    margin,
    protocol::{
        AMOUNT_LIMIT, AccountReport, Command, Event, Liquidation, LiquidationPosition,
        PositionReport, Reject, RejectCode,
    },
};

#[derive(Debug, Clone)]
struct Pair {
    mode: Mode,
    /// `None` until a `leverage` message sets it.
    leverage: Option<u64>,
    open_orders: u64,
    order_margin: Exact,
    size: Exact,
    entry: Exact,
    isolated_margin: Exact,
    /// The isolated item's flag: liquidatable after the last message that evaluated it.
    liquidatable: bool,
}

#[derive(Debug, Clone, Default)]
struct Account {
    wallet: Exact,
    pairs: BTreeMap<SymbolIdx, Pair>,
    /// The cross item's flag.
    cross_liquidatable: bool,
}

/// An item of SPEC section 6.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Item {
    Cross(u64),
    Isolated(u64, SymbolIdx),
}

/// Margin figures of one non-zero position at the current marks (`None` without a mark).
struct Figures {
    notional: Exact,
    upnl: Exact,
    mm: Exact,
    im: Exact,
}

pub struct ReferenceEngine {
    cfg: Arc<Config>,
    marks: Vec<Option<Exact>>,
    accounts: BTreeMap<u64, Account>,
    /// Accounts with a non-zero position, per symbol.
    holders: Vec<BTreeSet<u64>>,
}

fn limit_check(what: &str, v: &Exact) -> Result<(), Reject> {
    if v.abs() < Exact::from_d8(AMOUNT_LIMIT) {
        Ok(())
    } else {
        Err(Reject::invalid(format!("{what} would become {v}, outside |x| < 10^15")))
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
            order_margin: Exact::zero(),
            size: Exact::zero(),
            entry: Exact::zero(),
            isolated_margin: Exact::zero(),
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

    fn wallet(&self, account: u64) -> Exact {
        self.accounts.get(&account).map(|a| a.wallet.clone()).unwrap_or_default()
    }

    fn leverage_of(&self, s: SymbolIdx, p: &Pair) -> u64 {
        p.leverage.unwrap_or_else(|| u64::from(self.cfg.default_leverage_for(s)))
    }

    fn figures(&self, s: SymbolIdx, p: &Pair) -> Option<Figures> {
        let mark = self.marks[s.0 as usize].as_ref()?;
        let sym = self.cfg.symbol(s);
        let notional = margin::notional(&p.size, mark);
        Some(Figures {
            upnl: margin::upnl(&p.size, mark, &p.entry),
            mm: margin::maintenance(sym, &notional),
            im: margin::initial(&notional, self.leverage_of(s, p)),
            notional,
        })
    }

    /// A's non-zero cross positions.
    fn cross_positions(&self, account: u64) -> Vec<(SymbolIdx, &Pair)> {
        self.accounts
            .get(&account)
            .map(|a| {
                a.pairs
                    .iter()
                    .filter(|(_, p)| p.mode == Mode::Cross && !p.size.is_zero())
                    .map(|(s, p)| (*s, p))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// `(margin balance, maintenance)` of A's cross item; `None` when a mark is missing.
    fn cross_totals(&self, account: u64) -> Option<(Exact, Exact)> {
        let mut balance = self.wallet(account);
        let mut maint = Exact::zero();
        for (s, p) in self.cross_positions(account) {
            let f = self.figures(s, p)?;
            balance = &balance + &f.upnl;
            maint = &maint + &f.mm;
        }
        Some((balance, maint))
    }

    /// `W + sum(cross upnl) - sum(cross im) - sum(order margin of all pairs)`.
    fn available(&self, account: u64) -> Option<Exact> {
        let mut avail = self.wallet(account);
        for (s, p) in self.cross_positions(account) {
            let f = self.figures(s, p)?;
            avail = &(&avail + &f.upnl) - &f.im;
        }
        if let Some(a) = self.accounts.get(&account) {
            for p in a.pairs.values() {
                avail = &avail - &p.order_margin;
            }
        }
        Some(avail)
    }

    fn available_or_no_mark(&self, account: u64) -> Result<Exact, Reject> {
        self.available(account).ok_or_else(|| {
            Reject::new(RejectCode::NoMark, "a cross position's symbol has no mark price yet")
        })
    }

    /// `M` of the liquidation-price formula for a cross position in `s`.
    fn cross_backing(&self, account: u64, s: SymbolIdx) -> Option<Exact> {
        let mut m = self.wallet(account);
        for (t, p) in self.cross_positions(account) {
            if t != s {
                let f = self.figures(t, p)?;
                m = &(&m + &f.upnl) - &f.mm;
            }
        }
        Some(m)
    }

    fn liquidation_price(&self, account: u64, s: SymbolIdx, p: &Pair) -> Option<Exact> {
        let m = match p.mode {
            Mode::Isolated => p.isolated_margin.clone(),
            Mode::Cross => self.cross_backing(account, s)?,
        };
        margin::liquidation_price(self.cfg.symbol(s), &p.size, &p.entry, &m)
    }

    /// `(margin balance, maintenance)` of an item if it is evaluable (has a non-zero position
    /// of its mode, every mark known).
    fn item_totals(&self, item: Item) -> Option<(Exact, Exact)> {
        match item {
            Item::Cross(a) => {
                if self.cross_positions(a).is_empty() {
                    return None;
                }
                self.cross_totals(a)
            }
            Item::Isolated(a, s) => {
                let p = self.pair(a, s);
                if p.mode != Mode::Isolated || p.size.is_zero() {
                    return None;
                }
                let f = self.figures(s, &p)?;
                Some((&p.isolated_margin + &f.upnl, f.mm))
            }
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
            let totals = self.item_totals(item);
            let now = matches!(&totals, Some((bal, mm)) if bal < mm);
            let Some(flag) = self.flag_mut(item) else {
                continue;
            };
            let was = std::mem::replace(flag, now);
            if should_emit(was, now, rearmed.contains(&item)) {
                let (balance, maint) = totals.expect("liquidatable implies totals");
                out(Event::Liquidation(self.liquidation_event(item, balance, maint, at)));
            }
        }
    }

    fn liquidation_event(&self, item: Item, balance: Exact, maint: Exact, at: At) -> Liquidation {
        let (account, mode, symbol, positions) = match item {
            Item::Cross(a) => (
                a,
                Mode::Cross,
                None,
                self.cross_positions(a)
                    .into_iter()
                    .map(|(s, p)| (s, p.clone()))
                    .collect::<Vec<_>>(),
            ),
            Item::Isolated(a, s) => (
                a,
                Mode::Isolated,
                Some(self.cfg.symbol(s).name.clone()),
                vec![(s, self.pair(a, s))],
            ),
        };
        let positions = positions
            .iter()
            .map(|(s, p)| LiquidationPosition {
                symbol: self.cfg.symbol(*s).name.clone(),
                size: p.size.to_string(),
                entry_price: p.entry.to_string(),
                mark_price: self.marks[s.0 as usize]
                    .as_ref()
                    .expect("liquidatable implies marks")
                    .to_string(),
                liquidation_price: self.liquidation_price(account, *s, p).map(|x| x.to_string()),
            })
            .collect();
        Liquidation {
            line: at.line,
            seq: at.seq,
            account,
            mode,
            symbol,
            margin_balance: balance.to_string(),
            maintenance_margin: maint.to_string(),
            positions,
            latency_ns: 0,
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

    fn pair_mut(&mut self, account: u64, s: SymbolIdx) -> &mut Pair {
        let fresh = self.new_pair();
        self.accounts.entry(account).or_default().pairs.entry(s).or_insert(fresh)
    }

    fn set_wallet(&mut self, account: u64, w: Exact) {
        self.accounts.entry(account).or_default().wallet = w;
    }

    fn report(&self, account: u64, at: At) -> AccountReport {
        let wallet = self.wallet(account);
        let cross = self.cross_totals(account);
        let mut used = Some(Exact::zero());
        let mut positions = Vec::new();
        if let Some(a) = self.accounts.get(&account) {
            for (&s, p) in &a.pairs {
                if p.mode == Mode::Isolated {
                    used = used.map(|u| &u + &p.isolated_margin);
                }
                if p.size.is_zero() {
                    continue;
                }
                let f = self.figures(s, p);
                if p.mode == Mode::Cross {
                    used = match (&used, &f) {
                        (Some(u), Some(f)) => Some(u + &f.im),
                        _ => None,
                    };
                }
                let isolated = p.mode == Mode::Isolated;
                positions.push(PositionReport {
                    symbol: self.cfg.symbol(s).name.clone(),
                    mode: p.mode,
                    size: p.size.to_string(),
                    entry_price: p.entry.to_string(),
                    mark_price: self.marks[s.0 as usize].as_ref().map(|m| m.to_string()),
                    leverage: self.leverage_of(s, p),
                    notional: f.as_ref().map(|f| f.notional.to_string()),
                    unrealized_pnl: f.as_ref().map(|f| f.upnl.to_string()),
                    initial_margin: f.as_ref().map(|f| f.im.to_string()),
                    maintenance_margin: f.as_ref().map(|f| f.mm.to_string()),
                    isolated_margin: isolated.then(|| p.isolated_margin.to_string()),
                    margin_ratio: f
                        .as_ref()
                        .filter(|_| isolated)
                        .and_then(|f| margin::margin_ratio(&f.mm, &(&p.isolated_margin + &f.upnl)))
                        .map(|r| r.to_string()),
                    liquidation_price: self.liquidation_price(account, s, p).map(|x| x.to_string()),
                });
            }
        }
        AccountReport {
            line: at.line,
            seq: at.seq,
            account,
            wallet: wallet.to_string(),
            margin_balance: cross.as_ref().map(|(b, _)| b.to_string()),
            maintenance_margin: cross.as_ref().map(|(_, m)| m.to_string()),
            margin_ratio: cross
                .as_ref()
                .and_then(|(b, m)| margin::margin_ratio(m, b))
                .map(|r| r.to_string()),
            used_margin: used.map(|u| u.to_string()),
            available_balance: self.available(account).map(|a| a.to_string()),
            positions,
            latency_ns: 0,
        }
    }
}

impl Engine for ReferenceEngine {
    fn apply(&mut self, cmd: &Command, at: At, out: &mut dyn FnMut(Event)) -> Result<(), Reject> {
        // Each arm checks every rule before it mutates anything, then names the items whose
        // inputs changed and the items the message re-arms.
        let mut items = BTreeSet::new();
        let mut rearmed = BTreeSet::new();
        match *cmd {
            Command::Mark { symbol, price } => {
                self.marks[symbol.0 as usize] = Some(Exact::from_d8(price));
                items = self.holders_items(symbol);
            }
            Command::Marks { ref prices } => {
                for &(s, price) in prices {
                    self.marks[s.0 as usize] = Some(Exact::from_d8(price));
                }
                for &(s, _) in prices {
                    items.extend(self.holders_items(s));
                }
            }
            Command::Balance { account, wallet } => {
                self.set_wallet(account, Exact::from_d8(wallet));
                rearmed.insert(Item::Cross(account));
            }
            Command::Transfer { account, amount } => {
                let amount = Exact::from_d8(amount);
                if !amount.is_positive() {
                    let available = self.available_or_no_mark(account)?;
                    if (&available + &amount).signum() < 0 {
                        return Err(Reject::new(
                            RejectCode::InsufficientMargin,
                            format!(
                                "withdrawal of {} exceeds available balance {available}",
                                amount.abs()
                            ),
                        ));
                    }
                }
                let w = &self.wallet(account) + &amount;
                limit_check("wallet", &w)?;
                self.set_wallet(account, w);
                rearmed.insert(Item::Cross(account));
            }
            Command::Position { account, symbol, size, entry_price, isolated_margin } => {
                let mode = self.pair(account, symbol).mode;
                match (mode, isolated_margin) {
                    (Mode::Cross, Some(_)) => {
                        return Err(Reject::new(
                            RejectCode::WrongMode,
                            "isolated_margin given for a cross pair",
                        ));
                    }
                    (Mode::Isolated, None) if !size.is_zero() => {
                        return Err(Reject::new(
                            RejectCode::WrongMode,
                            "isolated_margin is required for a position on an isolated pair",
                        ));
                    }
                    _ => {}
                }
                let p = self.pair_mut(account, symbol);
                p.size = Exact::from_d8(size);
                p.entry = entry_price.map(Exact::from_d8).unwrap_or_default();
                if mode == Mode::Isolated {
                    p.isolated_margin = Exact::from_d8(isolated_margin.unwrap_or(D8::ZERO));
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
                        return Err(Reject::new(
                            RejectCode::ModeLocked,
                            format!(
                                "margin mode is locked: position {} and {} open orders",
                                p.size, p.open_orders
                            ),
                        ));
                    }
                    self.pair_mut(account, symbol).mode = mode;
                }
            }
            Command::Leverage { account, symbol, leverage } => {
                let p = self.pair(account, symbol);
                let sym = self.cfg.symbol(symbol);
                let notional = match (&self.marks[symbol.0 as usize], p.size.is_zero()) {
                    (Some(mark), _) => margin::notional(&p.size, mark),
                    (None, false) => margin::notional(&p.size, &p.entry),
                    (None, true) => Exact::zero(),
                };
                let max = margin::bracket(sym, &notional).max_leverage;
                if leverage > u64::from(max) {
                    return Err(Reject::new(
                        RejectCode::LeverageExceedsMax,
                        format!(
                            "leverage {leverage} exceeds max leverage {max} of {} at notional {notional}",
                            sym.name
                        ),
                    ));
                }
                self.pair_mut(account, symbol).leverage = Some(leverage);
            }
            Command::Orders { account, symbol, open_orders, order_margin } => {
                let p = self.pair_mut(account, symbol);
                p.open_orders = open_orders;
                p.order_margin = Exact::from_d8(order_margin);
            }
            Command::IsolatedMargin { account, symbol, amount } => {
                let p = self.pair(account, symbol);
                if p.mode != Mode::Isolated {
                    return Err(Reject::new(
                        RejectCode::WrongMode,
                        "isolated_margin message on a cross pair",
                    ));
                }
                if p.size.is_zero() {
                    return Err(Reject::new(
                        RejectCode::WrongMode,
                        "isolated_margin message without a position",
                    ));
                }
                let amount = Exact::from_d8(amount);
                if amount.is_positive() {
                    let available = self.available_or_no_mark(account)?;
                    if (&available - &amount).signum() < 0 {
                        return Err(Reject::new(
                            RejectCode::InsufficientMargin,
                            format!("adding {amount} exceeds available balance {available}"),
                        ));
                    }
                } else {
                    let f = self.figures(symbol, &p).ok_or_else(|| {
                        Reject::new(
                            RejectCode::NoMark,
                            format!("{} has no mark price yet", self.cfg.symbol(symbol).name),
                        )
                    })?;
                    let left = &p.isolated_margin + &amount;
                    if left.signum() < 0 {
                        return Err(Reject::new(
                            RejectCode::InsufficientMargin,
                            format!(
                                "removing {} exceeds isolated margin {}",
                                amount.abs(),
                                p.isolated_margin
                            ),
                        ));
                    }
                    if &left + &f.upnl < f.im {
                        return Err(Reject::new(
                            RejectCode::InsufficientMargin,
                            format!(
                                "removing {} leaves margin {left} + upnl {} below initial margin {}",
                                amount.abs(),
                                f.upnl,
                                f.im
                            ),
                        ));
                    }
                }
                let w = &self.wallet(account) - &amount;
                let m = &p.isolated_margin + &amount;
                limit_check("wallet", &w)?;
                limit_check("isolated margin", &m)?;
                self.set_wallet(account, w);
                self.pair_mut(account, symbol).isolated_margin = m;
                items.insert(Item::Cross(account));
                rearmed.insert(Item::Cross(account));
                rearmed.insert(Item::Isolated(account, symbol));
            }
            Command::Funding { symbol, rate } => {
                let Some(mark) = self.marks[symbol.0 as usize].clone() else {
                    return Err(Reject::new(
                        RejectCode::NoMark,
                        format!(
                            "funding for {} before its first mark",
                            self.cfg.symbol(symbol).name
                        ),
                    ));
                };
                let rate = Exact::from_d8(rate);
                // Compute every new balance first: a payment that would leave a balance out
                // of range rejects the message as a whole.
                let mut updates = Vec::new();
                for &a in &self.holders[symbol.0 as usize] {
                    let p = self.pair(a, symbol);
                    let pay = margin::funding_payment(&p.size, &mark, &rate);
                    let (what, new) = match p.mode {
                        Mode::Cross => ("wallet", &self.wallet(a) - &pay),
                        Mode::Isolated => ("isolated margin", &p.isolated_margin - &pay),
                    };
                    limit_check(what, &new)?;
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
                out(Event::Account(self.report(account, at)));
            }
        }
        // A re-armed item is evaluated even when its inputs did not change, so that the
        // literal rule of SPEC section 6 holds for it too.
        items.extend(rearmed.iter().copied());
        self.evaluate(&items, &rearmed, at, out);
        Ok(())
    }
}
