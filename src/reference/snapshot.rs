//! Snapshots of the reference engine (SPEC section 9.4): a plain clone of its maps as the
//! copy (it is the oracle, not the fast path: its copy is not held to the stall target), the
//! image written from it, and the engine rebuilt from an image.

use std::{
    any::Any,
    collections::{BTreeMap, BTreeSet},
    io,
    sync::Arc,
};

use super::{Account, Pair, ReferenceEngine};
use crate::{
    config::{Config, Mode, SymbolIdx},
    engine::StateCopy,
    fixed::D8,
    protocol::Event,
    report::Item,
    state::{AccountImage, Image, PairImage},
};

/// The reference engine's state as `copy_state` takes it.
pub struct ReferenceCopy {
    marks: Vec<Option<D8>>,
    accounts: BTreeMap<u64, Account>,
}

impl ReferenceEngine {
    pub(super) fn copy_into(&self) -> Box<ReferenceCopy> {
        Box::new(ReferenceCopy { marks: self.marks.clone(), accounts: self.accounts.clone() })
    }

    /// Rebuilds an engine from a snapshot image under `cfg` (see
    /// [`crate::fast::FastEngine::restore`], whose contract this one shares): flags from the
    /// image, then every item evaluated; with `rearm_all` every liquidatable item is reported.
    pub fn restore(
        cfg: Arc<Config>,
        image: &Image,
        rearm_all: bool,
        out: &mut dyn FnMut(Event),
    ) -> Result<ReferenceEngine, String> {
        let mut e = ReferenceEngine::new(cfg);
        e.marks.clone_from(&image.marks);
        let mut items = BTreeSet::new();
        for a in &image.accounts {
            let mut account = Account {
                wallet: D8(a.wallet_e8),
                pairs: BTreeMap::new(),
                cross_liquidatable: a.cross_liquidatable,
            };
            for p in &a.pairs {
                let s = SymbolIdx(
                    u16::try_from(p.symbol).map_err(|_| format!("symbol index {}", p.symbol))?,
                );
                let mode = if p.isolated { Mode::Isolated } else { Mode::Cross };
                let pair = Pair {
                    mode,
                    leverage: (p.leverage != 0).then_some(p.leverage),
                    open_orders: p.open_orders,
                    order_margin: D8(p.order_margin_e8),
                    size: D8(p.size_e8),
                    entry: D8(p.entry_e8),
                    isolated_margin: D8(p.isolated_margin_e8),
                    liquidatable: p.liquidatable,
                };
                if p.size_e8 != 0 {
                    e.holders[s.0 as usize].insert(a.id);
                    if p.isolated {
                        items.insert(Item::Isolated(a.id, s));
                    }
                }
                account.pairs.insert(s, pair);
            }
            items.insert(Item::Cross(a.id));
            if e.accounts.insert(a.id, account).is_some() {
                return Err(format!("account {} appears twice", a.id));
            }
        }
        let rearmed = if rearm_all { items.clone() } else { BTreeSet::new() };
        e.evaluate(&items, &rearmed, image.at, out);
        Ok(e)
    }
}

impl StateCopy for ReferenceCopy {
    fn n_accounts(&self) -> u64 {
        self.accounts.len() as u64
    }

    fn marks(&self) -> Vec<Option<D8>> {
        self.marks.clone()
    }

    fn each_account(&self, f: &mut dyn FnMut(&AccountImage) -> io::Result<()>) -> io::Result<()> {
        for (&id, a) in &self.accounts {
            let pairs = a
                .pairs
                .iter()
                .map(|(s, p)| PairImage {
                    symbol: u32::from(s.0),
                    isolated: p.mode == Mode::Isolated,
                    leverage: p.leverage.unwrap_or(0),
                    open_orders: p.open_orders,
                    order_margin_e8: p.order_margin.0,
                    size_e8: p.size.0,
                    entry_e8: if p.size.is_zero() { 0 } else { p.entry.0 },
                    isolated_margin_e8: p.isolated_margin.0,
                    liquidatable: p.mode == Mode::Isolated && p.liquidatable,
                })
                .collect();
            f(&AccountImage {
                id,
                wallet_e8: a.wallet.0,
                cross_liquidatable: a.cross_liquidatable,
                pairs,
            })?;
        }
        Ok(())
    }

    fn into_any(self: Box<Self>) -> Box<dyn Any + Send> {
        self
    }
}
