//! The side table of what a pair holds besides its settings and position ([`PairFunds`]),
//! keyed by (account, symbol), which grows without a stop.
//!
//! A hash table that doubles rehashes every entry at once: on the trade-heavy 1M-account load
//! test this table held ~500k entries when an `orders` message made it double, and that one
//! message took 79 ms of CPU. [`FundsTable`] grows the way [`super::AccountIndex`] does:
//! when `table` is full it becomes `old`, a table of twice the live entries takes its place,
//! and every insert then moves the entries of a few of `old`'s buckets across, walking them
//! in bucket order. A lookup that misses `table` tries `old`. The step is sized at each growth
//! so that `old` is empty after `old.len() / 2` inserts, before the new table can fill.

use std::hash::BuildHasher;

use hashbrown::HashTable;

use super::{AccountIdx, KeyedState, PairFunds, ahead, ahead_min_bytes, faulted_table};
use crate::config::SymbolIdx;

type Key = (AccountIdx, SymbolIdx);

/// (account, symbol) → [`PairFunds`], holding only non-zero entries (see [`FundsTable::update`]).
/// Which pairs have an entry is the sender's choice, so keys are hashed with the keyed hash
/// of the account index ([`KeyedState`]).
#[derive(Debug, Default)]
pub(super) struct FundsTable {
    table: HashTable<(Key, PairFunds)>,
    /// The table before the last growth, while its entries move to `table`.
    old: HashTable<(Key, PairFunds)>,
    /// The next bucket of `old` to move.
    cursor: usize,
    /// Buckets of `old` moved per insert.
    step: usize,
    hasher: KeyedState,
    /// The next `table`, allocated ahead of need on another thread (as the account index's).
    next: Option<ahead::Ahead<HashTable<(Key, PairFunds)>>>,
}

impl Clone for FundsTable {
    fn clone(&self) -> FundsTable {
        let mut copy = FundsTable::default();
        copy.clone_from(self);
        copy
    }

    /// Reuses `self`'s tables (a snapshot copies into the buffers of the previous copy).
    fn clone_from(&mut self, from: &FundsTable) {
        self.table.clone_from(&from.table);
        self.old.clone_from(&from.old);
        (self.cursor, self.step, self.hasher) = (from.cursor, from.step, from.hasher.clone());
        // A table being allocated ahead holds nothing; the copy allocates its own if it grows.
        self.next = None;
    }
}

impl FundsTable {
    /// The funds of `key`; all zero when it has no entry.
    pub(super) fn get(&self, key: Key) -> PairFunds {
        let hash = self.hasher.hash_one(key);
        let found = self.table.find(hash, |e| e.0 == key);
        let found = found.or_else(|| self.old.find(hash, |e| e.0 == key));
        found.map_or_else(PairFunds::default, |e| e.1)
    }

    /// Changes the funds of `key` with `f`, keeping the table free of all-zero entries: one
    /// hash of the key whatever happens, and no entry made only to be removed. Returns
    /// whether `key` has an entry after (its funds are not all zero).
    pub(super) fn update(&mut self, key: Key, f: impl FnOnce(&mut PairFunds)) -> bool {
        let hash = self.hasher.hash_one(key);
        if let Ok(mut held) = self.table.find_entry(hash, |e| e.0 == key) {
            f(&mut held.get_mut().1);
            if held.get().1 == PairFunds::default() {
                held.remove();
                return false;
            }
            return true;
        }
        // Not moved yet: take it out of `old`, and put it back in `table` if it stays.
        let mut funds = match self.old.find_entry(hash, |e| e.0 == key) {
            Ok(held) => held.remove().0.1,
            Err(_) => PairFunds::default(),
        };
        f(&mut funds);
        let held = funds != PairFunds::default();
        if held {
            self.insert(hash, key, funds);
        }
        held
    }

    /// Adds `key`, which has no entry (the caller knows: `Pair::funded`), with `funds`, not
    /// all zero: [`FundsTable::update`] without its search.
    pub(super) fn insert_new(&mut self, key: Key, funds: PairFunds) {
        debug_assert!(funds != PairFunds::default(), "an entry is never all zero");
        debug_assert!(self.get(key) == PairFunds::default(), "{key:?} has an entry");
        let hash = self.hasher.hash_one(key);
        self.insert(hash, key, funds);
    }

    /// Adds `key`, which is in neither table, then moves `step` buckets of `old` across.
    fn insert(&mut self, hash: u64, key: Key, funds: PairFunds) {
        let hasher = &self.hasher;
        let rehash = |e: &(Key, PairFunds)| hasher.hash_one(e.0);
        if self.table.len() == self.table.capacity() {
            // The last growth is complete (see `step` below), so nothing is left in `old`.
            debug_assert!(self.old.is_empty());
            let capacity = (2 * self.table.len()).max(64);
            let next = match self.next.take() {
                Some(next) => next.take(),
                None => HashTable::with_capacity(capacity),
            };
            debug_assert!(next.is_empty() && next.capacity() >= capacity);
            self.old = std::mem::replace(&mut self.table, next);
            // Every bucket of `old` moved within `old.len() / 2` inserts: the new table then
            // holds at most `1.5 · old.len()` entries, below its capacity of `2 · old.len()`.
            self.step = self.old.num_buckets().div_ceil((self.old.len() / 2).max(1));
            self.cursor = 0;
        }
        self.table.insert_unique(hash, (key, funds), rehash);
        if self.next.is_none()
            && self.old.allocation_size() == 0
            && 2 * self.table.allocation_size() >= ahead_min_bytes()
            && self.table.len() >= self.table.capacity() / 4 * 3
        {
            // The next growth asks for twice the live entries when the table is full, that
            // is twice its capacity: allocate that ahead (see `super::ahead`).
            let capacity = 2 * self.table.capacity();
            let fill = ((AccountIdx(u32::MAX), SymbolIdx(u16::MAX)), PairFunds::default());
            self.next = ahead::Ahead::start(move || faulted_table(capacity, fill));
        }
        if !self.old.is_empty() {
            let end = (self.cursor + self.step).min(self.old.num_buckets());
            for b in self.cursor..end {
                if let Ok(held) = self.old.get_bucket_entry(b) {
                    let (entry, _) = held.remove();
                    // `table` never grows here: it has room for every old entry (above).
                    debug_assert!(self.table.len() < self.table.capacity());
                    self.table.insert_unique(rehash(&entry), entry, rehash);
                }
            }
            self.cursor = end;
            debug_assert!(end < self.old.num_buckets() || self.old.is_empty());
        }
        if self.old.is_empty() && self.old.allocation_size() > 0 {
            // Emptied by moves, or by `update`s that cleared its last entries.
            let old = std::mem::take(&mut self.old);
            if 2 * old.allocation_size() >= ahead_min_bytes() {
                ahead::drop_elsewhere(old);
            }
        }
    }

    /// Every entry, in no particular order.
    pub(super) fn iter(&self) -> impl Iterator<Item = (Key, PairFunds)> + '_ {
        self.table.iter().chain(self.old.iter()).copied()
    }

    /// Entries held.
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.table.len() + self.old.len()
    }

    /// Heap bytes of both tables.
    pub(super) fn allocation_size(&self) -> usize {
        self.table.allocation_size() + self.old.allocation_size()
    }
}

#[cfg(test)]
mod tests {
    use std::{collections::HashMap, sync::Arc};

    use super::*;
    use crate::{
        config::Mode,
        engine::{At, Engine},
        fixed::D8,
        protocol::{Command, Event},
        synth,
    };

    /// Every writer of a pair's funds keeps its `funded` bit equal to "the table has an entry"
    /// (orders set and cleared, an isolated position closed leaving its margin with the pair,
    /// reopened, closed with none, a snapshot restored), and a query reads the funds of a
    /// funded pair: its used margin and available balance count them.
    #[test]
    fn the_funded_bit_follows_the_table() {
        let cfg = Arc::new(synth::config(2));
        let mut e = crate::fast::FastEngine::new(cfg.clone());
        let at = At { line: 0, seq: 0 };
        let (s0, s1) = (SymbolIdx(0), SymbolIdx(1));
        let d8 = |units: i128| D8(units * 100_000_000);
        let position = |size: i128, margin: Option<i128>| Command::Position {
            account: 7,
            symbol: s1,
            size: d8(size),
            entry_price: Some(d8(100)),
            isolated_margin: margin.map(d8),
        };
        let orders = |n: u64, m: i128| Command::Orders {
            account: 7,
            symbol: s0,
            open_orders: n,
            order_margin: d8(m),
        };
        let steps = [
            (Command::Balance { account: 7, wallet: d8(10_000) }, [None, None]),
            (orders(2, 30), [Some(true), None]),
            (
                Command::MarginMode { account: 7, symbol: s1, mode: Mode::Isolated },
                [Some(true), Some(false)],
            ),
            (position(1, Some(50)), [Some(true), Some(false)]),
            // Closed: the margin stays with the pair (SPEC section 3).
            (position(0, Some(50)), [Some(true), Some(true)]),
            (orders(0, 0), [Some(false), Some(true)]),
            (position(2, Some(80)), [Some(false), Some(false)]),
            (position(0, Some(0)), [Some(false), Some(false)]),
            (orders(1, 5), [Some(true), Some(false)]),
            (position(0, Some(12)), [Some(true), Some(true)]),
        ];
        let mut events = Vec::new();
        for (k, (cmd, want)) in steps.iter().enumerate() {
            e.apply(cmd, at, &mut |ev| events.push(ev)).unwrap();
            let a = e.lookup(7).unwrap();
            for (s, want) in [s0, s1].into_iter().zip(want) {
                let p = e.pair(a, s);
                assert_eq!(p.map(|p| p.funded), *want, "step {k}, symbol {}", s.0);
                let held = e.accounts.funds.get((a, s)) != PairFunds::default();
                assert_eq!(p.is_some_and(|p| p.funded), held, "step {k}, symbol {}", s.0);
            }
            e.audit().unwrap_or_else(|err| panic!("step {k}: {err}"));
        }
        // The funds are read through the bit: order margin 5 and idle isolated margin 12.
        e.apply(&Command::Query { account: 7 }, at, &mut |ev| events.push(ev)).unwrap();
        let Some(Event::Account(report)) = events.pop() else { panic!("an account event") };
        assert_eq!(report.used_margin.as_ref().map(|a| a.text()).as_deref(), Some("12"));
        assert_eq!(report.available_balance.as_ref().map(|a| a.text()).as_deref(), Some("9995"));
        assert_eq!(e.account_report(7, at), Some(report), "a query reports what a read does");
        // A restored image sets the bits as the table's writers do.
        let copy = e.copy_state(None);
        let mut accounts = Vec::new();
        copy.each_account(&mut |a| {
            accounts.push(a.clone());
            Ok(())
        })
        .unwrap();
        let image = crate::state::image::Image {
            marks: copy.marks(),
            accounts,
            at,
            counters: Default::default(),
        };
        let restored = crate::fast::FastEngine::restore(cfg, &image, false, &mut |_| {}).unwrap();
        restored.audit().expect("the restored engine passes its audit");
        let bits = |e: &crate::fast::FastEngine| {
            e.accounts.pairs.iter().flatten().map(|p| (p.symbol, p.funded)).collect::<Vec<_>>()
        };
        assert_eq!(bits(&restored), bits(&e));
        assert_eq!(restored.account_report(7, at), e.account_report(7, at));
    }

    fn funds(n: u64) -> PairFunds {
        PairFunds { open_orders: n, order_margin_e8: i128::from(n) * 7, idle_isolated_e8: 0 }
    }

    /// Random inserts, changes and removals through several growths equal a plain map at every
    /// step, and no insert moves more than its step: the table never rehashes whole (its
    /// capacity only grows at the start of a growth, never while `old` is being emptied).
    #[test]
    fn equals_a_plain_map_through_growths_without_a_whole_rehash() {
        let mut rng = crate::synth::Rng::new(21);
        let mut table = FundsTable::default();
        let mut want: HashMap<Key, PairFunds> = HashMap::new();
        let (mut growths, mut moving_inserts) = (0, 0);
        for round in 0..200_000u64 {
            let key = (AccountIdx(rng.below(40_000) as u32), SymbolIdx(rng.below(4) as u16));
            let before = table.table.num_buckets();
            let was_moving = !table.old.is_empty();
            match rng.below(8) {
                // Mostly inserts and changes, some clears: the table keeps growing.
                0 => {
                    assert!(!table.update(key, |f| *f = PairFunds::default()), "cleared: no entry");
                    want.remove(&key);
                }
                _ => {
                    let n = 1 + rng.below(1000);
                    assert!(table.update(key, |f| *f = funds(n)), "non-zero: an entry");
                    want.insert(key, funds(n));
                }
            }
            if table.table.num_buckets() != before {
                // A new table starts a growth; it never happens while one is under way.
                assert!(!was_moving, "round {round}: the table grew while old was emptied");
                growths += 1;
            }
            moving_inserts += usize::from(was_moving);
            assert_eq!(table.len(), want.len(), "round {round}");
            if round % 997 == 0 {
                for (&k, &v) in &want {
                    assert_eq!(table.get(k), v);
                }
                let mut all: Vec<_> = table.iter().collect();
                all.sort_unstable_by_key(|e| e.0);
                let mut expected: Vec<_> = want.iter().map(|(&k, &v)| (k, v)).collect();
                expected.sort_unstable_by_key(|e| e.0);
                assert_eq!(all, expected);
            }
        }
        assert!(growths >= 8, "{growths} growths");
        assert!(moving_inserts > 10_000, "{moving_inserts} inserts during growths");
        assert_eq!(table.get((AccountIdx(99_999), SymbolIdx(0))), PairFunds::default());
    }

    /// The table equals a plain map whether its next table was allocated ahead and ready,
    /// still pending at the growth (a slow allocation planted here, which the growth waits
    /// for), or absent (allocated inline); a table dropped with a next table pending, and a
    /// copy of a table with one, are fine.
    #[test]
    fn equals_a_plain_map_whether_the_next_table_is_ready_pending_or_absent() {
        let mut rng = crate::synth::Rng::new(5);
        let mut table = FundsTable::default();
        let mut want: HashMap<Key, PairFunds> = HashMap::new();
        let (mut growths, mut planted, mut ahead_used) = (0, 0, 0);
        for round in 0..150_000u64 {
            let key = (AccountIdx(rng.below(1 << 20) as u32), SymbolIdx(rng.below(8) as u16));
            let capacity = table.table.capacity();
            // A full table grows at its next insert. `capacity()` also falls as removals leave
            // tombstones, so a growth is told by the capacity rising, and the way each growth
            // gets its next table is chosen by the count of growths so far (deterministic).
            if table.table.len() == capacity && capacity >= 512 {
                match growths % 3 {
                    0 => {
                        table.next = ahead::Ahead::start(move || {
                            std::thread::sleep(std::time::Duration::from_millis(5));
                            HashTable::with_capacity(2 * capacity)
                        });
                    }
                    1 => table.next = None,
                    _ => {
                        // The table's own table made ahead, or one started here when the
                        // table has none (whether it is ready in time is the scheduler's).
                        if table.next.is_none() {
                            table.next =
                                ahead::Ahead::start(move || HashTable::with_capacity(2 * capacity));
                        }
                    }
                }
            }
            let n = 1 + rng.below(1000);
            if rng.below(6) == 0 {
                table.update(key, |f| *f = PairFunds::default());
                want.remove(&key);
            } else {
                table.update(key, |f| *f = funds(n));
                want.insert(key, funds(n));
            }
            if table.table.capacity() > capacity {
                if capacity >= 512 {
                    match growths % 3 {
                        0 => planted += 1,
                        1 => {}
                        _ => ahead_used += 1,
                    }
                }
                growths += 1;
            }
            if round % 9_973 == 0 {
                assert_eq!(table.len(), want.len(), "round {round}");
                for (&k, &v) in &want {
                    assert_eq!(table.get(k), v, "round {round}");
                }
            }
        }
        for (&k, &v) in &want {
            assert_eq!(table.get(k), v);
        }
        assert!(
            growths >= 8 && planted >= 2 && ahead_used >= 2,
            "{growths} {planted} {ahead_used}"
        );
        let capacity = table.table.capacity();
        table.next = ahead::Ahead::start(move || HashTable::with_capacity(2 * capacity));
        let copy = table.clone();
        assert!(copy.next.is_none());
        assert_eq!(copy.len(), want.len());
        drop(table);
        for (&k, &v) in &want {
            assert_eq!(copy.get(k), v);
        }
    }
}
