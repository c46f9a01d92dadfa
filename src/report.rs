//! Exact figures of one account, from an engine-neutral [`AccountView`]: the cross and
//! isolated totals, available balance, and the contents of `account` and `liquidation`
//! events (SPEC sections 4 and 7).
//!
//! The reference engine decides liquidations with these functions; the fast engine decides
//! with its own integer arithmetic and calls these only to fill in the events it emits (and
//! liquidation prices and ratios, which need exact division, are rare and off the hot path).

use crate::{
    config::{Config, Mode, SymbolIdx},
    engine::At,
    exact::Exact,
    fixed::D8,
    margin,
    protocol::{AccountReport, Liquidation, LiquidationPosition, PositionReport},
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
        self.pairs.iter().find(|p| p.symbol == s)
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

    /// Liquidation price of the position in `p` (SPEC section 4), `None` when a needed mark
    /// is missing or the root is not > 0.
    pub fn liquidation_price(&self, cfg: &Config, marks: &Marks, p: &PairView) -> Option<Exact> {
        let m = match p.mode {
            Mode::Isolated => Exact::from_d8(p.isolated_margin),
            Mode::Cross => {
                let mut m = Exact::from_d8(self.wallet);
                for q in self.cross_positions().filter(|q| q.symbol != p.symbol) {
                    let f = figures(cfg, marks, q)?;
                    m = &(&m + &f.upnl) - &f.mm;
                }
                m
            }
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
                Some(cfg.symbol(s).name.clone()),
                self.pair(s).into_iter().collect(),
            ),
        };
        let positions = positions
            .into_iter()
            .map(|p| LiquidationPosition {
                symbol: cfg.symbol(p.symbol).name.clone(),
                size: p.size.to_string(),
                entry_price: p.entry_price.to_string(),
                mark_price: marks[p.symbol.0 as usize]
                    .expect("a liquidatable item has its marks")
                    .to_string(),
                liquidation_price: self.liquidation_price(cfg, marks, p).map(|x| x.to_string()),
            })
            .collect();
        Liquidation {
            line: at.line,
            seq: at.seq,
            account: self.account,
            mode,
            symbol,
            margin_balance: balance.to_string(),
            maintenance_margin: maint.to_string(),
            positions,
            latency_ns: 0,
        }
    }

    /// The `account` event (SPEC section 7).
    pub fn report(&self, cfg: &Config, marks: &Marks, at: At) -> AccountReport {
        let cross = self.cross_totals(cfg, marks);
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
            let text = |get: fn(&Figures) -> &Exact| f.as_ref().map(|f| get(f).to_string());
            positions.push(PositionReport {
                symbol: cfg.symbol(p.symbol).name.clone(),
                mode: p.mode,
                size: p.size.to_string(),
                entry_price: p.entry_price.to_string(),
                mark_price: text(|f| &f.mark),
                leverage: p.leverage,
                notional: text(|f| &f.notional),
                unrealized_pnl: text(|f| &f.upnl),
                initial_margin: text(|f| &f.im),
                maintenance_margin: text(|f| &f.mm),
                isolated_margin: isolated.then(|| p.isolated_margin.to_string()),
                margin_ratio: f
                    .as_ref()
                    .filter(|_| isolated)
                    .and_then(|f| {
                        margin::margin_ratio(&f.mm, &(&Exact::from_d8(p.isolated_margin) + &f.upnl))
                    })
                    .map(|r| r.to_string()),
                liquidation_price: self.liquidation_price(cfg, marks, p).map(|x| x.to_string()),
            });
        }
        AccountReport {
            line: at.line,
            seq: at.seq,
            account: self.account,
            wallet: self.wallet.to_string(),
            margin_balance: cross.as_ref().map(|(b, _)| b.to_string()),
            maintenance_margin: cross.as_ref().map(|(_, m)| m.to_string()),
            margin_ratio: cross
                .as_ref()
                .and_then(|(b, m)| margin::margin_ratio(m, b))
                .map(|r| r.to_string()),
            used_margin: used.map(|u| u.to_string()),
            available_balance: self.available(cfg, marks).map(|a| a.to_string()),
            positions,
            latency_ns: 0,
        }
    }
}
