//! What a snapshot holds (SPEC section 9.4), in a form neither engine owns: exact decimals at
//! 10^-8, symbols by name. Both engines write it from a copy of their state and rebuild from
//! it ([`crate::fast::FastEngine::restore`], [`crate::reference::ReferenceEngine::restore`]).

use serde::{Deserialize, Serialize};

use crate::{config::Config, engine::At, fixed::D8, pipeline::Summary};

/// One (account, symbol) pair: settings, order figures, position, isolated margin (also one
/// left on a flat pair) and the isolated item's liquidatable flag. Amounts are `i128` at
/// 10^-8 (a [`D8`]'s mantissa).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PairImage {
    /// The symbol's index in the snapshot's symbol table ([`Prelude::symbols`]); after
    /// [`Image::for_config`], in the config.
    pub symbol: u32,
    pub isolated: bool,
    /// 0 until a `leverage` message set it (the config default applies).
    pub leverage: u64,
    pub open_orders: u64,
    pub order_margin_e8: i128,
    /// Signed size; 0 for a flat pair.
    pub size_e8: i128,
    /// Entry price; 0 for a flat pair.
    pub entry_e8: i128,
    pub isolated_margin_e8: i128,
    /// The isolated item's flag (false for a cross pair).
    pub liquidatable: bool,
}

/// One account: wallet, the cross item's flag, its pairs by symbol.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccountImage {
    pub id: u64,
    pub wallet_e8: i128,
    pub cross_liquidatable: bool,
    pub pairs: Vec<PairImage>,
}

/// The counts a pipeline keeps that the metrics expose as counters (SPEC 9.3), carried across
/// a restart so that `liqscan_messages_total` and the others keep counting.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counters {
    pub lines: u64,
    pub messages: u64,
    pub liquidations: u64,
    pub liquidations_by_mode: [u64; 2],
    pub rejects: u64,
    pub rejects_by_code: [u64; 8],
    pub gaps: u64,
    pub duplicates: u64,
    pub accounts: u64,
}

impl Counters {
    pub fn of(s: &Summary) -> Counters {
        Counters {
            lines: s.lines,
            messages: s.messages,
            liquidations: s.liquidations,
            liquidations_by_mode: s.liquidations_by_mode,
            rejects: s.rejects,
            rejects_by_code: s.rejects_by_code,
            gaps: s.gaps,
            duplicates: s.duplicates,
            accounts: s.accounts,
        }
    }

    /// A summary that starts from these counts (latencies empty).
    pub fn to_summary(self) -> Summary {
        Summary {
            lines: self.lines,
            messages: self.messages,
            liquidations: self.liquidations,
            liquidations_by_mode: self.liquidations_by_mode,
            rejects: self.rejects,
            rejects_by_code: self.rejects_by_code,
            gaps: self.gaps,
            duplicates: self.duplicates,
            accounts: self.accounts,
            ..Summary::default()
        }
    }
}

/// What precedes the accounts in a snapshot body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Prelude {
    /// The config's symbol names, in its order: the table [`PairImage::symbol`] indexes.
    pub symbols: Vec<String>,
    /// The mark of each symbol of the table, 10^-8, or none yet.
    pub marks_e8: Vec<Option<i128>>,
    /// Line and effective seq of the last message the state holds.
    pub line: u64,
    pub counters: Counters,
}

/// A whole snapshot, decoded and mapped onto the config it is restored under.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Image {
    /// One per config symbol.
    pub marks: Vec<Option<D8>>,
    /// Accounts in the order the engine that wrote them held them; each account's pairs by
    /// symbol ascending.
    pub accounts: Vec<AccountImage>,
    pub at: At,
    pub counters: Counters,
}

impl Image {
    /// Maps a decoded snapshot (its symbols by name) onto `cfg`. Under the config it was
    /// made with this changes nothing. Under another, every symbol that holds a mark or a
    /// pair must be in `cfg`, every mark a multiple of its new tick size and every size of its
    /// new step size; `Err` says which is not.
    pub fn for_config(
        prelude: Prelude,
        mut accounts: Vec<AccountImage>,
        seq: u64,
        cfg: &Config,
    ) -> Result<Image, String> {
        let map: Vec<Option<u32>> = prelude
            .symbols
            .iter()
            .map(|name| cfg.symbol_idx(name).map(|s| u32::from(s.0)))
            .collect();
        let mut marks = vec![None; cfg.symbols.len()];
        for (k, mark) in prelude.marks_e8.iter().enumerate() {
            let Some(mark) = *mark else { continue };
            let name = prelude.symbols.get(k).map_or("?", String::as_str);
            let s = map.get(k).copied().flatten().ok_or_else(|| {
                format!("symbol {name} has a mark in the snapshot but is not in the config")
            })?;
            let sym = &cfg.symbols[s as usize];
            if !D8(mark).is_multiple_of(sym.tick_size) {
                return Err(format!(
                    "the mark {} of {name} is not a multiple of its tick_size {}",
                    D8(mark),
                    sym.tick_size
                ));
            }
            marks[s as usize] = Some(D8(mark));
        }
        for account in &mut accounts {
            for pair in &mut account.pairs {
                let name = prelude.symbols.get(pair.symbol as usize).map_or("?", String::as_str);
                let s = map.get(pair.symbol as usize).copied().flatten().ok_or_else(|| {
                    format!(
                        "account {} holds a pair in {name}, which is not in the config",
                        account.id
                    )
                })?;
                let sym = &cfg.symbols[s as usize];
                if !D8(pair.size_e8).is_multiple_of(sym.step_size) {
                    return Err(format!(
                        "account {}: size {} in {name} is not a multiple of its step_size {}",
                        account.id,
                        D8(pair.size_e8),
                        sym.step_size
                    ));
                }
                pair.symbol = s;
            }
            account.pairs.sort_by_key(|p| p.symbol);
        }
        Ok(Image {
            marks,
            accounts,
            at: At { line: prelude.line, seq },
            counters: prelude.counters,
        })
    }

    /// Non-zero positions held.
    pub fn n_positions(&self) -> u64 {
        self.accounts.iter().flat_map(|a| &a.pairs).filter(|p| p.size_e8 != 0).count() as u64
    }
}

/// A stable 64-bit hash of what a config decides (SPEC section 2): default mode and leverage,
/// and each symbol's name, tick and step sizes and brackets, in order. Two configs with the
/// same hash evaluate alike; white space and key order in the JSON do not matter.
pub fn config_hash(cfg: &Config) -> u64 {
    use std::fmt::Write as _;
    let mut text = String::with_capacity(64 + cfg.symbols.len() * 96);
    let _ = write!(
        text,
        "liqscan-config-1|{}|{}",
        cfg.default_margin_mode.as_str(),
        cfg.default_leverage
    );
    for s in &cfg.symbols {
        let _ = write!(text, "|{}:{}:{}", s.name, s.tick_size, s.step_size);
        for b in &s.brackets {
            let _ = write!(text, ":{},{},{}", b.cap, b.max_leverage, b.mmr);
        }
    }
    xxhash_rust::xxh3::xxh3_64(text.as_bytes())
}
