//! Snapshots of the fast engine (SPEC section 9.4): the copy taken on the engine thread, its
//! image written on the snapshot writer thread, and the engine rebuilt from an image.
//!
//! The copy is the only part that stops ingest. It copies the columns a snapshot needs
//! (books without their trigger index, account columns, the funds side table) into the
//! buffers of the previous copy, which the writer thread hands back and readies
//! ([`StateCopy::warm`]): after the first snapshot no memory is allocated or faulted in, and
//! the copy is a set of `memcpy`s split in 64 KiB-element chunks between the rayon workers.
//! The per-account pair lists (one small allocation each) are flattened into one list and
//! a column of ends, so a million accounts cost two buffers, not a million. The
//! cross books' `fund_from` and the funding logs are copied too, so that the writer thread
//! computes each account's true wallet (what lazy fundings owe taken off) for the image. The
//! trigger index is not kept: a restore computes every trigger anew, which also checks the
//! flags the snapshot holds (`benches/snapshot.rs` measures the stall, the write and the
//! restore on the 1M-account book).

use std::{any::Any, io, sync::Arc};

use rayon::prelude::*;

use super::{AccountIdx, Book, Column, E8_TO_Q16, FastEngine, Hot, NO_SLOT, Pair, Scale};
use crate::{
    config::{Config, Mode, SymbolIdx},
    engine::StateCopy,
    fixed::D8,
    protocol::Event,
    state::{AccountImage, Image, PairImage},
};

/// The fast engine's state as [`FastEngine::copy_state`] takes it.
#[derive(Default)]
pub struct FastCopy {
    scales: Vec<Scale>,
    marks: Vec<Option<D8>>,
    cross: Vec<Book>,
    isolated: Vec<Book>,
    id: Column<u64>,
    /// The stored wallets: the image holds the true ones, these less what each account's
    /// cross positions owe for lazy fundings (from the books' `fund_from` and `funding`),
    /// computed on the writer thread.
    wallet_e8: Column<i128>,
    /// Per symbol, its funding log: the number of its first entry and its entries
    /// (`FundingLog::first` and `FundingLog::c`; at most `2 · settle_rounds` of them).
    funding: Vec<(u32, Vec<i128>)>,
    hot: Column<Hot>,
    /// Every account's pairs, one account after another; account `i`'s are
    /// `pairs[pair_end[i - 1]..pair_end[i]]`.
    pairs: Column<Pair>,
    pair_end: Column<u32>,
    funds: super::funds::FundsTable,
}

/// Elements a rayon task copies at once.
const COPY_CHUNK: usize = 1 << 16;

/// `to = from`, reusing `to`'s buffer: what it already holds is overwritten in parallel
/// chunks, what `from` holds beyond that is appended.
fn par_copy<T: Copy + Send + Sync>(to: &mut Column<T>, from: &[T]) {
    to.truncate(from.len());
    let held = to.len();
    to.extend_from_slice(&from[held..]);
    if held < 2 * COPY_CHUNK {
        to[..held].copy_from_slice(&from[..held]);
        return;
    }
    let pieces = to[..held].par_chunks_mut(COPY_CHUNK).zip(from[..held].par_chunks(COPY_CHUNK));
    pieces.for_each(|(t, f)| t.copy_from_slice(f));
}

/// Copies the columns a snapshot reads (not the trigger index) into `to`, reusing its buffers.
fn copy_book(to: &mut Book, from: &Book) {
    par_copy(&mut to.account, &from.account);
    par_copy(&mut to.lots, &from.lots);
    par_copy(&mut to.base_q16, &from.base_q16);
    par_copy(&mut to.isolated_e8, &from.isolated_e8);
    par_copy(&mut to.liquidatable, &from.liquidatable);
    par_copy(&mut to.fund_from, &from.fund_from);
    // A funding pass still pending: the image's margins take off what it owes.
    to.pending = from.pending;
}

/// Accounts a rayon task flattens at once.
const PAIR_CHUNK: usize = 1 << 14;

/// Flattens the per-account pair lists into `pairs` and `ends` (see [`FastCopy::pairs`]).
fn flatten_pairs(pairs: &mut Column<Pair>, ends: &mut Column<u32>, from: &[Vec<Pair>]) {
    ends.clear();
    let mut end = 0u32;
    // A pair is 12 bytes and memory holds far fewer than 2^32 of them per process here
    // (the columns of 4G pairs would take 48 GB): the running end fits u32.
    ends.extend(from.iter().map(|p| {
        end += p.len() as u32;
        end
    }));
    let total = end as usize;
    pairs.truncate(total);
    let filler =
        Pair { symbol: SymbolIdx(0), mode: Mode::Cross, funded: false, leverage: 0, slot: NO_SLOT };
    pairs.resize(total, filler);
    // Disjoint output slices, one per chunk of accounts.
    let mut outputs = Vec::with_capacity(from.len().div_ceil(PAIR_CHUNK));
    let mut rest = &mut pairs[..];
    for (c, lists) in from.chunks(PAIR_CHUNK).enumerate() {
        let lo = if c == 0 { 0 } else { ends[c * PAIR_CHUNK - 1] as usize };
        let hi = ends[c * PAIR_CHUNK + lists.len() - 1] as usize;
        let (mine, more) = std::mem::take(&mut rest).split_at_mut(hi - lo);
        outputs.push((mine, lists));
        rest = more;
    }
    outputs.into_par_iter().for_each(|(out, lists)| {
        let mut k = 0;
        for list in lists {
            out[k..k + list.len()].clone_from_slice(list);
            k += list.len();
        }
    });
}

fn copy_books(to: &mut Vec<Book>, from: &[Book], mode: Mode) {
    to.resize_with(from.len(), || Book::new(mode));
    to.truncate(from.len());
    for (t, f) in to.iter_mut().zip(from) {
        copy_book(t, f);
    }
}

impl FastEngine {
    /// See [`crate::engine::Engine::copy_state`].
    pub(super) fn copy_into(&self, reuse: Option<Box<dyn Any + Send>>) -> Box<FastCopy> {
        let mut c = reuse.and_then(|r| r.downcast::<FastCopy>().ok()).unwrap_or_default();
        let acc = &self.accounts;
        let FastCopy {
            scales,
            marks,
            cross,
            isolated,
            id,
            wallet_e8,
            funding,
            hot,
            pairs,
            pair_end,
            funds,
        } = &mut *c;
        scales.clone_from(&self.scales);
        marks.clone_from(&self.marks);
        funding.resize_with(self.funding.len(), Default::default);
        for (to, from) in funding.iter_mut().zip(&self.funding) {
            to.0 = from.first;
            to.1.clone_from(&from.c);
        }
        // On a rayon worker, each parallel copy below is a cheap fork-join; from the engine
        // thread each would be a hand-off.
        rayon::scope(|_| {
            copy_books(cross, &self.cross, Mode::Cross);
            copy_books(isolated, &self.isolated, Mode::Isolated);
            par_copy(id, &acc.id);
            par_copy(wallet_e8, &acc.wallet_e8);
            par_copy(hot, &acc.hot);
            rayon::join(
                || flatten_pairs(pairs, pair_end, &acc.pairs),
                || funds.clone_from(&acc.funds),
            );
        });
        c
    }

    /// Rebuilds an engine from a snapshot image (SPEC section 9.4) under `cfg`, which the
    /// image was mapped onto ([`Image::for_config`]). Every item is evaluated at the image's
    /// marks, which sets every trigger anew. With `rearm_all` (the config changed), every
    /// item liquidatable under `cfg` is reported to `out`; without, the flags come from the
    /// image, and only an item whose flag disagrees with its exact state (none, for a
    /// snapshot this build wrote under the same config) is reported.
    ///
    /// `Err` when the image cannot be a state: an account id twice, a leverage or an entry
    /// price out of range.
    pub fn restore(
        cfg: Arc<Config>,
        image: &Image,
        rearm_all: bool,
        out: &mut dyn FnMut(Event),
    ) -> Result<FastEngine, String> {
        let mut e = FastEngine::new(cfg);
        for (si, mark) in image.marks.iter().enumerate() {
            let Some(mark) = *mark else { continue };
            let tick = i128::from(e.scales[si].tick_e8);
            let ticks =
                i64::try_from(mark.0 / tick).map_err(|_| format!("mark {mark} out of range"))?;
            e.marks[si] = Some(mark);
            e.mark_ticks[si] = Some(ticks);
        }
        for account in &image.accounts {
            e.restore_account(account)?;
        }
        let at = image.at;
        e.msg_no += 1;
        // Isolated items: every book evaluated with fresh triggers.
        for si in 0..e.isolated.len() {
            if let Some(t) = e.mark_ticks[si] {
                e.evaluate_isolated_book(SymbolIdx(si as u16), t, super::Retrigger::All);
            }
        }
        if rearm_all {
            e.emit_isolated.clear();
            for si in 0..e.isolated.len() {
                let s = SymbolIdx(si as u16);
                for slot in 0..e.isolated[si].len() {
                    if e.isolated[si].liquidatable[slot] {
                        e.emit_isolated_event(s, slot as u32, at, out);
                    }
                }
            }
        }
        // Cross items: each account refreshed (fresh triggers; an event per the rule).
        for i in 0..e.accounts.id.len() {
            e.refresh(AccountIdx(i as u32), rearm_all, at, out);
        }
        e.finish_message(at, out);
        Ok(e)
    }

    fn restore_account(&mut self, account: &AccountImage) -> Result<(), String> {
        if self.lookup(account.id).is_some() {
            return Err(format!("account {} appears twice", account.id));
        }
        let a = self.intern(account.id);
        self.accounts.wallet_e8[a.0 as usize] = account.wallet_e8;
        self.wallet_bound_e8 = self.wallet_bound_e8.max(account.wallet_e8.abs());
        for p in &account.pairs {
            let s = SymbolIdx(
                u16::try_from(p.symbol).map_err(|_| format!("symbol index {}", p.symbol))?,
            );
            let leverage = u32::try_from(p.leverage)
                .map_err(|_| format!("account {}: leverage {}", account.id, p.leverage))?;
            let mode = if p.isolated { Mode::Isolated } else { Mode::Cross };
            let pair = self.pair_mut(a, s);
            (pair.mode, pair.leverage) = (mode, leverage);
            let holds_isolated = p.isolated && p.size_e8 != 0;
            self.update_funds(a, s, |f| {
                f.open_orders = p.open_orders;
                f.order_margin_e8 = p.order_margin_e8;
                f.idle_isolated_e8 = if holds_isolated { 0 } else { p.isolated_margin_e8 };
            });
            if p.size_e8 != 0 {
                let sc = &self.scales[s.0 as usize];
                let bad = || format!("account {}: position out of range", account.id);
                let lots = i64::try_from(p.size_e8 / i128::from(sc.step_e8)).map_err(|_| bad())?;
                let entry = i64::try_from(p.entry_e8).map_err(|_| bad())?;
                let margin = if holds_isolated { p.isolated_margin_e8 } else { 0 };
                self.insert_position(a, s, lots, entry, margin);
                if holds_isolated {
                    let slot = self.pair(a, s).map_or(NO_SLOT, |q| q.slot) as usize;
                    self.isolated[s.0 as usize].liquidatable[slot] = p.liquidatable;
                }
            }
        }
        self.accounts.hot[a.0 as usize].liquidatable = account.cross_liquidatable;
        Ok(())
    }
}

impl StateCopy for FastCopy {
    fn n_accounts(&self) -> u64 {
        self.id.len() as u64
    }

    fn marks(&self) -> Vec<Option<D8>> {
        self.marks.clone()
    }

    fn each_account(&self, f: &mut dyn FnMut(&AccountImage) -> io::Result<()>) -> io::Result<()> {
        let mut image =
            AccountImage { id: 0, wallet_e8: 0, cross_liquidatable: false, pairs: Vec::new() };
        for i in 0..self.id.len() {
            let a = AccountIdx(i as u32);
            image.id = self.id[i];
            image.wallet_e8 = self.wallet_e8[i];
            image.cross_liquidatable = self.hot[i].liquidatable;
            image.pairs.clear();
            let lo = if i == 0 { 0 } else { self.pair_end[i - 1] as usize };
            for p in &self.pairs[lo..self.pair_end[i] as usize] {
                let funds = self.funds.get((a, p.symbol));
                let si = p.symbol.0 as usize;
                let sc = &self.scales[si];
                let mut pair = PairImage {
                    symbol: u32::from(p.symbol.0),
                    isolated: p.mode == Mode::Isolated,
                    leverage: u64::from(p.leverage),
                    open_orders: funds.open_orders,
                    order_margin_e8: funds.order_margin_e8,
                    size_e8: 0,
                    entry_e8: 0,
                    isolated_margin_e8: funds.idle_isolated_e8,
                    liquidatable: false,
                };
                if p.slot != NO_SLOT {
                    let k = p.slot as usize;
                    let book = match p.mode {
                        Mode::Cross => &self.cross[si],
                        Mode::Isolated => &self.isolated[si],
                    };
                    let lots = book.lots[k];
                    if p.mode == Mode::Cross {
                        // The true wallet: less what the position owes for lazy fundings.
                        let (first, log) = &self.funding[si];
                        let owed = &log[book.fund_from[k].wrapping_sub(*first) as usize..];
                        image.wallet_e8 -= super::owed_e8(lots, owed);
                    }
                    pair.size_e8 = i128::from(lots) * i128::from(sc.step_e8);
                    pair.entry_e8 = i128::from(sc.entry_e8(lots, book.cost_q16(k)));
                    if p.mode == Mode::Isolated {
                        pair.isolated_margin_e8 = book.margin_now_e8(k);
                        pair.liquidatable = book.liquidatable[k];
                    }
                }
                image.pairs.push(pair);
            }
            f(&image)?;
        }
        Ok(())
    }

    /// Each column gets room for an eighth more and its spare capacity is written once, so
    /// its pages are resident before the engine thread copies into it. Books get no room
    /// beyond that eighth: a config may hold 65,535 symbols, most of them with small books.
    fn warm(&mut self) {
        fn room<T: Clone>(v: &mut Column<T>, extra: usize, fill: T) {
            v.reserve(v.len() / 8 + extra);
            for slot in v.spare_capacity_mut() {
                slot.write(fill.clone());
            }
        }
        for book in self.cross.iter_mut().chain(&mut self.isolated) {
            room(&mut book.account, 0, AccountIdx(0));
            room(&mut book.lots, 0, 0);
            room(&mut book.base_q16, 0, 0);
            room(&mut book.isolated_e8, 0, 0);
            room(&mut book.liquidatable, 0, false);
            room(&mut book.fund_from, 0, 0);
        }
        room(&mut self.id, 1024, 0);
        room(&mut self.wallet_e8, 1024, 0);
        room(&mut self.hot, 1024, Hot::default());
        room(&mut self.pair_end, 1024, 0);
        let filler = Pair {
            symbol: SymbolIdx(0),
            mode: Mode::Cross,
            funded: false,
            leverage: 0,
            slot: NO_SLOT,
        };
        room(&mut self.pairs, 4096, filler);
    }

    fn into_any(self: Box<Self>) -> Box<dyn Any + Send> {
        self
    }
}

// q16 per e8: kept in scope for the cost identity `cost = margin * E8_TO_Q16 - base`.
const _: () = assert!(E8_TO_Q16 > 0);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        engine::{At, Engine},
        protocol::Command,
        synth,
    };

    /// A 2,000-account book whose marks then fall 4 %, so that some items are liquidatable,
    /// and some flat pairs holding orders and idle isolated margin.
    fn fallen_book() -> (FastEngine, At) {
        let at = At { line: 9, seq: 42 };
        let engine = FastEngine::new(Arc::new(synth::config(8)));
        let mut engine = super::super::tests::fall(engine, 2_000, 11, at);
        let orders = Command::Orders {
            account: 5,
            symbol: SymbolIdx(7),
            open_orders: 3,
            order_margin: D8(12_345_000_000),
        };
        engine.apply(&orders, at, &mut |_| {}).unwrap();
        (engine, at)
    }

    fn image_of(copy: &dyn StateCopy, at: At) -> Image {
        let mut accounts = Vec::new();
        copy.each_account(&mut |a| {
            accounts.push(a.clone());
            Ok(())
        })
        .unwrap();
        Image { marks: copy.marks(), accounts, at, counters: Default::default() }
    }

    /// A copy's image, rebuilt, gives back an engine that passes its audit, holds the same
    /// accounts and pairs, and reports every account as the original does; a second copy
    /// into the first one's buffers gives the same image.
    #[test]
    fn image_round_trip_keeps_every_report_and_passes_the_audit() {
        let (engine, at) = fallen_book();
        let liquidatable = engine.accounts.hot.iter().filter(|h| h.liquidatable).count();
        assert!(liquidatable > 0, "the fall liquidates some cross accounts");
        let mut copy = engine.copy_state(None);
        let image = image_of(&*copy, at);
        copy.warm();
        let again = engine.copy_state(Some(copy.into_any()));
        assert_eq!(image_of(&*again, at), image, "a reused copy equals a fresh one");
        let mut events = Vec::new();
        let restored =
            FastEngine::restore(engine.cfg.clone(), &image, false, &mut |e| events.push(e))
                .expect("restores");
        assert!(events.is_empty(), "same config: no flag disagrees: {events:?}");
        restored.audit().expect("the restored engine passes its audit");
        assert!(restored.pairs().eq(engine.pairs()));
        for id in engine.accounts() {
            assert_eq!(restored.account_report(id, at), engine.account_report(id, at), "{id}");
        }
        let hot =
            |e: &FastEngine| e.accounts.hot.iter().map(|h| h.liquidatable).collect::<Vec<_>>();
        assert_eq!(hot(&restored), hot(&engine));
        // Re-armed, every liquidatable item is reported once.
        let mut rearmed = 0;
        FastEngine::restore(engine.cfg.clone(), &image, true, &mut |_| rearmed += 1).unwrap();
        let isolated: usize =
            engine.isolated.iter().map(|b| b.liquidatable.iter().filter(|&&f| f).count()).sum();
        assert_eq!(rearmed, liquidatable + isolated);
    }
}
