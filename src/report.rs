//! Exact figures of one account, from an engine-neutral [`AccountView`]: the cross and
//! isolated totals, available balance, and the contents of `account` and `liquidation`
//! events (SPEC sections 4 and 7); and the at-risk order and lists of SPEC section 9.3.
//!
//! A report costs O(the account's pairs): each cross position's liquidation price needs
//! `M = W + Σ over the other cross positions (upnl − mm)`, which is one total over the
//! account ([`CrossRest`]) with the position's own term taken out, never a sum per position.
//!
//! The reference engine decides liquidations with these functions; the fast engine decides
//! with its own integer arithmetic and calls these only to fill in the events it emits (and
//! liquidation prices and ratios, which need exact division, are rare and off the hot path).

use std::{cmp::Ordering, sync::Arc};

use crate::{
    config::{Config, Mode, SymbolIdx},
    engine::{At, RiskQuery},
    exact::Exact,
    fixed::D8,
    margin,
    protocol::{AccountReport, Amount, Liquidation, LiquidationPosition, PositionReport, RiskItem},
};

/// One (account, symbol) pair as an engine holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PairView {
    pub symbol: SymbolIdx,
    pub mode: Mode,
    /// The effective leverage (the default already applied).
    pub leverage: u64,
    pub size: D8,
    pub entry_price: D8,
    pub isolated_margin: D8,
    pub order_margin: D8,
}

/// An account as an engine holds it; `pairs` sorted by symbol.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AccountView {
    pub account: u64,
    pub wallet: D8,
    pub pairs: Vec<PairView>,
}

/// An item of SPEC section 6.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Item {
    Cross(u64),
    Isolated(u64, SymbolIdx),
}

/// Margin figures of one non-zero position at its symbol's mark.
pub struct Figures {
    pub mark: Exact,
    pub notional: Exact,
    pub upnl: Exact,
    pub mm: Exact,
    pub im: Exact,
}

/// What a cross position's liquidation price needs of its account (SPEC section 4's `M`),
/// from [`AccountView::cross_rest`].
#[derive(Debug, Clone)]
pub struct CrossRest {
    /// `W + Σ (upnl − mm)` over the marked non-zero cross positions.
    pub marked: Exact,
    /// Non-zero cross positions whose symbol has no mark.
    pub unmarked: usize,
    /// The symbol of the last of those.
    pub last: Option<SymbolIdx>,
}

/// The marks an engine holds, by symbol index.
pub type Marks = [Option<D8>];

fn mark_of(marks: &Marks, s: SymbolIdx) -> Option<Exact> {
    marks[s.0 as usize].map(Exact::from_d8)
}

/// The figures of a pair's position, or `None` without a mark.
pub fn figures(cfg: &Config, marks: &Marks, p: &PairView) -> Option<Figures> {
    let mark = mark_of(marks, p.symbol)?;
    let size = Exact::from_d8(p.size);
    let notional = margin::notional(&size, &mark);
    Some(Figures {
        upnl: margin::upnl(&size, &mark, &Exact::from_d8(p.entry_price)),
        mm: margin::maintenance(cfg.symbol(p.symbol), &notional),
        im: margin::initial(&notional, p.leverage),
        notional,
        mark,
    })
}

impl AccountView {
    pub fn pair(&self, s: SymbolIdx) -> Option<&PairView> {
        debug_assert!(self.pairs.is_sorted_by_key(|p| p.symbol), "pairs sorted by symbol");
        self.pairs.binary_search_by_key(&s, |p| p.symbol).ok().map(|i| &self.pairs[i])
    }

    /// Non-zero cross positions.
    pub fn cross_positions(&self) -> impl Iterator<Item = &PairView> {
        self.pairs.iter().filter(|p| p.mode == Mode::Cross && !p.size.is_zero())
    }

    /// `(W + Σ cross upnl, Σ cross mm)`, or `None` when a cross position lacks a mark.
    pub fn cross_totals(&self, cfg: &Config, marks: &Marks) -> Option<(Exact, Exact)> {
        let mut balance = Exact::from_d8(self.wallet);
        let mut maint = Exact::zero();
        for p in self.cross_positions() {
            let f = figures(cfg, marks, p)?;
            balance = &balance + &f.upnl;
            maint = &maint + &f.mm;
        }
        Some((balance, maint))
    }

    /// `W + Σ cross upnl − Σ cross im − Σ order margin`, or `None` without a needed mark.
    pub fn available(&self, cfg: &Config, marks: &Marks) -> Option<Exact> {
        let mut avail = Exact::from_d8(self.wallet);
        for p in self.cross_positions() {
            let f = figures(cfg, marks, p)?;
            avail = &(&avail + &f.upnl) - &f.im;
        }
        for p in &self.pairs {
            avail = &avail - &Exact::from_d8(p.order_margin);
        }
        Some(avail)
    }

    /// `(margin balance, maintenance)` of an item that has a non-zero position of its mode
    /// and every mark it needs; `None` otherwise (such an item is not liquidatable).
    pub fn item_totals(&self, cfg: &Config, marks: &Marks, item: Item) -> Option<(Exact, Exact)> {
        match item {
            Item::Cross(_) => {
                self.cross_positions().next()?;
                self.cross_totals(cfg, marks)
            }
            Item::Isolated(_, s) => {
                let p = self.pair(s).filter(|p| p.mode == Mode::Isolated && !p.size.is_zero())?;
                let f = figures(cfg, marks, p)?;
                Some((&Exact::from_d8(p.isolated_margin) + &f.upnl, f.mm))
            }
        }
    }

    /// `W + Σ (upnl − mm)` over the account's marked cross positions, and which are
    /// unmarked: one pass, from which every cross position's `M` is one subtraction.
    pub fn cross_rest(&self, cfg: &Config, marks: &Marks) -> CrossRest {
        let mut rest = CrossRest { marked: Exact::from_d8(self.wallet), unmarked: 0, last: None };
        for p in self.cross_positions() {
            match figures(cfg, marks, p) {
                Some(f) => rest.marked = &(&rest.marked + &f.upnl) - &f.mm,
                None => (rest.unmarked, rest.last) = (rest.unmarked + 1, Some(p.symbol)),
            }
        }
        rest
    }

    /// Liquidation price of the position in `p` (SPEC section 4), `None` when a needed mark
    /// is missing or the root is not > 0. For one position; a report of many takes
    /// [`AccountView::cross_rest`] once and [`AccountView::liquidation_price_in`] each.
    pub fn liquidation_price(&self, cfg: &Config, marks: &Marks, p: &PairView) -> Option<Exact> {
        let rest = self.cross_rest(cfg, marks);
        self.liquidation_price_in(cfg, p, &rest, figures(cfg, marks, p).as_ref())
    }

    /// Liquidation price of the non-zero position in `p` given the account's
    /// [`CrossRest`] and the position's own figures (`None` when its symbol has no mark):
    /// O(1). For a cross position `M = W + Σ over the other cross positions j of
    /// (upnl_j − mm_j)` is the marked total with the position's own term taken out; it needs
    /// every other cross symbol's mark, but not the position's own.
    pub fn liquidation_price_in(
        &self,
        cfg: &Config,
        p: &PairView,
        rest: &CrossRest,
        own: Option<&Figures>,
    ) -> Option<Exact> {
        debug_assert!(!p.size.is_zero(), "a liquidation price is of a non-zero position");
        let m = match (p.mode, own) {
            (Mode::Isolated, _) => Exact::from_d8(p.isolated_margin),
            (Mode::Cross, Some(f)) if rest.unmarked == 0 => &rest.marked - &(&f.upnl - &f.mm),
            (Mode::Cross, None) if rest.unmarked == 1 && rest.last == Some(p.symbol) => {
                rest.marked.clone()
            }
            (Mode::Cross, _) => return None,
        };
        margin::liquidation_price(
            cfg.symbol(p.symbol),
            &Exact::from_d8(p.size),
            &Exact::from_d8(p.entry_price),
            &m,
        )
    }

    /// The `liquidation` event of a liquidatable item.
    pub fn liquidation(&self, cfg: &Config, marks: &Marks, item: Item, at: At) -> Liquidation {
        let (balance, maint) =
            self.item_totals(cfg, marks, item).expect("a liquidatable item has totals");
        let (mode, symbol, positions): (_, _, Vec<&PairView>) = match item {
            Item::Cross(_) => (Mode::Cross, None, self.cross_positions().collect()),
            Item::Isolated(_, s) => (
                Mode::Isolated,
                Some(Arc::from(cfg.symbol(s).name.as_str())),
                self.pair(s).into_iter().collect(),
            ),
        };
        let rest = self.cross_rest(cfg, marks);
        let positions = positions
            .into_iter()
            .map(|p| LiquidationPosition {
                symbol: Arc::from(cfg.symbol(p.symbol).name.as_str()),
                size: p.size.into(),
                entry_price: p.entry_price.into(),
                mark_price: marks[p.symbol.0 as usize]
                    .expect("a liquidatable item has its marks")
                    .into(),
                liquidation_price: self
                    .liquidation_price_in(cfg, p, &rest, figures(cfg, marks, p).as_ref())
                    .map(|x| x.amount()),
            })
            .collect();
        Liquidation {
            line: at.line,
            seq: at.seq,
            origin_seq: None,
            account: self.account,
            mode,
            symbol,
            margin_balance: balance.amount(),
            maintenance_margin: maint.amount(),
            positions,
            latency_ns: 0,
        }
    }

    /// The `account` event (SPEC section 7).
    pub fn report(&self, cfg: &Config, marks: &Marks, at: At) -> AccountReport {
        let cross = self.cross_totals(cfg, marks);
        let rest = self.cross_rest(cfg, marks);
        let mut used = Some(Exact::zero());
        let mut positions = Vec::new();
        for p in &self.pairs {
            let isolated = p.mode == Mode::Isolated;
            if isolated {
                used = used.map(|u| &u + &Exact::from_d8(p.isolated_margin));
            }
            if p.size.is_zero() {
                continue;
            }
            let f = figures(cfg, marks, p);
            if !isolated {
                used = match (&used, &f) {
                    (Some(u), Some(f)) => Some(u + &f.im),
                    _ => None,
                };
            }
            let figure = |get: fn(&Figures) -> &Exact| f.as_ref().map(|f| get(f).amount());
            positions.push(PositionReport {
                symbol: Arc::from(cfg.symbol(p.symbol).name.as_str()),
                mode: p.mode,
                size: p.size.into(),
                entry_price: p.entry_price.into(),
                mark_price: figure(|f| &f.mark),
                leverage: p.leverage,
                notional: figure(|f| &f.notional),
                unrealized_pnl: figure(|f| &f.upnl),
                initial_margin: figure(|f| &f.im),
                maintenance_margin: figure(|f| &f.mm),
                isolated_margin: isolated.then(|| p.isolated_margin.into()),
                margin_ratio: f
                    .as_ref()
                    .filter(|_| isolated)
                    .and_then(|f| {
                        margin::margin_ratio(&f.mm, &(&Exact::from_d8(p.isolated_margin) + &f.upnl))
                    })
                    .map(|r| r.amount()),
                liquidation_price: self
                    .liquidation_price_in(cfg, p, &rest, f.as_ref())
                    .map(|x| x.amount()),
            });
        }
        AccountReport {
            line: at.line,
            seq: at.seq,
            origin_seq: None,
            account: self.account,
            wallet: self.wallet.into(),
            margin_balance: cross.as_ref().map(|(b, _)| b.amount()),
            maintenance_margin: cross.as_ref().map(|(_, m)| m.amount()),
            margin_ratio: cross
                .as_ref()
                .and_then(|(b, m)| margin::margin_ratio(m, b))
                .map(|r| r.amount()),
            used_margin: used.map(|u| u.amount()),
            available_balance: self.available(cfg, marks).map(|a| a.amount()),
            positions,
            latency_ns: 0,
        }
    }
}

// --- at-risk lists (SPEC section 9.3) --------------------------------------------------

/// The at-risk order of [`crate::engine::Engine::at_risk`] on two items' exact
/// `(margin balance, maintenance)`, ties aside: `Less` when the first is more at risk
/// (liquidatable first, then a null ratio, then the exact ratio descending).
pub fn risk_cmp(a: (&Exact, &Exact), b: (&Exact, &Exact)) -> Ordering {
    let ((bal_a, mm_a), (bal_b, mm_b)) = (a, b);
    (bal_b < mm_b).cmp(&(bal_a < mm_a)).then_with(|| {
        match (bal_a.is_positive(), bal_b.is_positive()) {
            (false, false) => Ordering::Equal,
            (false, true) => Ordering::Less,
            (true, false) => Ordering::Greater,
            // mm_a / bal_a > mm_b / bal_b ⇔ mm_a · bal_b > mm_b · bal_a (both balances > 0);
            // on the raw integers, since `Exact`'s product keeps the decimal scale.
            (true, true) => (mm_b.raw() * bal_a.raw()).cmp(&(mm_a.raw() * bal_b.raw())),
        }
    })
}

/// The at-risk entry of `item` of `view`, whose exact totals are `(balance, maint)`.
pub fn risk_item(
    cfg: &Config,
    marks: &Marks,
    view: &AccountView,
    item: Item,
    (balance, maint): (&Exact, &Exact),
) -> RiskItem {
    let l = view.liquidation(cfg, marks, item, At { line: 0, seq: 0 });
    risk_item_of(l, margin::margin_ratio(maint, balance).map(|r| r.amount()), balance < maint)
}

/// An at-risk entry from the `liquidation` event of the same item (same figures and
/// positions), its ratio and its state.
pub fn risk_item_of(l: Liquidation, margin_ratio: Option<Amount>, liquidatable: bool) -> RiskItem {
    RiskItem {
        account: l.account,
        mode: l.mode,
        symbol: l.symbol,
        margin_balance: l.margin_balance,
        maintenance_margin: l.maintenance_margin,
        margin_ratio,
        liquidatable,
        positions: l.positions,
    }
}

/// [`crate::engine::Engine::at_risk`] over `views` (any order), exactly and plainly: every
/// item's totals on [`Exact`] numbers, one sort. The reference engine's answer, and the
/// oracle the fast engine's is tested against.
pub fn at_risk(cfg: &Config, marks: &Marks, views: &[AccountView], q: &RiskQuery) -> Vec<RiskItem> {
    struct Candidate<'a> {
        view: &'a AccountView,
        item: Item,
        /// `None` for the cross item: it ranks before the account's isolated items on a tie.
        symbol: Option<SymbolIdx>,
        balance: Exact,
        maint: Exact,
    }
    let wanted = |s: SymbolIdx| q.symbol.is_none_or(|w| w == s);
    let mut candidates = Vec::new();
    for view in views {
        let mut push = |item: Item, symbol: Option<SymbolIdx>| {
            if let Some((balance, maint)) = view.item_totals(cfg, marks, item) {
                candidates.push(Candidate { view, item, symbol, balance, maint });
            }
        };
        if q.mode != Some(Mode::Isolated) && view.cross_positions().any(|p| wanted(p.symbol)) {
            push(Item::Cross(view.account), None);
        }
        if q.mode != Some(Mode::Cross) {
            let isolated = view.pairs.iter().filter(|p| p.mode == Mode::Isolated);
            for p in isolated.filter(|p| !p.size.is_zero() && wanted(p.symbol)) {
                push(Item::Isolated(view.account, p.symbol), Some(p.symbol));
            }
        }
    }
    candidates.sort_by(|a, b| {
        risk_cmp((&a.balance, &a.maint), (&b.balance, &b.maint))
            .then_with(|| (a.view.account, a.symbol).cmp(&(b.view.account, b.symbol)))
    });
    candidates.truncate(q.limit);
    (candidates.iter())
        .map(|c| risk_item(cfg, marks, c.view, c.item, (&c.balance, &c.maint)))
        .collect()
}
