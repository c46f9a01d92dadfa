//! The account index: account id → [`AccountIdx`] (see [`AccountIndex`]), and the staged
//! look-up that lets the prefetch across messages (`hint.rs`) hide its cache misses.

use std::sync::atomic::{AtomicU64, Ordering};

use super::{ahead, ahead_min_bytes, book::AccountIdx, prefetch};

/// SipHash-1-3 of one `u64` under a key drawn at random per process: the function std's
/// `RandomState` computes for a `u64` (8 bytes, little-endian, then the length block),
/// written out for that one input size. std's hasher goes through its general byte-stream
/// code (a tail buffer and a length count per `write`); this is the four SipRounds alone,
/// so that the index can afford to hash an id once per prefetch stage and once per apply.
///
/// Ids are the sender's choice, so the hash must be keyed: an unkeyed hash (FxHash, which
/// this index used) is invertible, and ids crafted to share a bucket made every lookup
/// compare against all of them (see [`AccountIndex`]). The key is taken from std's
/// `RandomState` (OS randomness), as two of its outputs.
#[derive(Debug, Clone, Copy)]
pub(super) struct IdHasher {
    k0: u64,
    k1: u64,
}

impl Default for IdHasher {
    fn default() -> IdHasher {
        use std::hash::{BuildHasher, RandomState};
        let state = RandomState::new();
        IdHasher { k0: state.hash_one(0x6c69_7173_u64), k1: state.hash_one(0x6b65_7931_u64) }
    }
}

impl IdHasher {
    /// SipHash-1-3 of `id`'s 8 little-endian bytes under this key.
    #[inline]
    pub(super) fn hash(&self, id: u64) -> u64 {
        #[inline(always)]
        fn round(v: &mut [u64; 4]) {
            v[0] = v[0].wrapping_add(v[1]);
            v[1] = v[1].rotate_left(13) ^ v[0];
            v[0] = v[0].rotate_left(32);
            v[2] = v[2].wrapping_add(v[3]);
            v[3] = v[3].rotate_left(16) ^ v[2];
            v[0] = v[0].wrapping_add(v[3]);
            v[3] = v[3].rotate_left(21) ^ v[0];
            v[2] = v[2].wrapping_add(v[1]);
            v[1] = v[1].rotate_left(17) ^ v[2];
            v[2] = v[2].rotate_left(32);
        }
        let mut v = [
            self.k0 ^ 0x736f_6d65_7073_6575,
            self.k1 ^ 0x646f_7261_6e64_6f6d,
            self.k0 ^ 0x6c79_6765_6e65_7261,
            self.k1 ^ 0x7465_6462_7974_6573,
        ];
        // One compression round per 8-byte block: the id, then the length block (8 bytes,
        // no tail).
        for block in [id, 8 << 56] {
            v[3] ^= block;
            round(&mut v);
            v[0] ^= block;
        }
        v[2] ^= 0xff;
        for _ in 0..3 {
            round(&mut v);
        }
        v[0] ^ v[1] ^ v[2] ^ v[3]
    }
}

/// An open-addressing table of account indices with linear probing, addressable from the
/// hash alone: the home slot of hash `h` is `h mod slots`, so a look-up's first cache miss
/// can be asked for ([`Slots::prefetch`]) before the look-up itself. A slot is 8 bytes, the
/// hash's top 32 bits (a tag) and the index + 1 (0: empty); the id is compared in the id
/// column only when the tag matches (a false match has odds 2^-32 a probe). At most three
/// quarters of the slots are used, so a hit probes ~1.5 slots on average (a miss ~2.5 at the
/// fullest), eight to a cache line. Entries are never removed (accounts are never dropped).
#[derive(Debug, Default)]
struct Slots {
    slots: Vec<u64>,
    len: usize,
}

impl Slots {
    /// An empty table of `n` slots (a power of two).
    fn new(n: usize) -> Slots {
        debug_assert!(n.is_power_of_two());
        Slots { slots: vec![0; n], len: 0 }
    }

    /// [`Slots::new`] with every page written once, so that the inserts that follow find
    /// them present: built on another thread (see [`AccountIndex`]).
    fn faulted(n: usize) -> Slots {
        let mut table = Slots::new(n);
        // One write a 4 KiB page; `black_box` keeps the compiler from knowing it writes the
        // zero the allocation already holds.
        for k in (0..n).step_by(512) {
            table.slots[k] = std::hint::black_box(0);
        }
        table
    }

    /// Entries this table takes before it is full.
    fn room(&self) -> usize {
        self.slots.len() / 4 * 3
    }

    fn home(&self, hash: u64) -> usize {
        hash as usize & (self.slots.len() - 1)
    }

    fn entry(hash: u64, a: u32) -> u64 {
        (hash & 0xffff_ffff_0000_0000) | u64::from(a + 1)
    }

    /// The index whose tag is `hash`'s and for which `eq` holds.
    #[inline]
    fn find(&self, hash: u64, mut eq: impl FnMut(u32) -> bool) -> Option<u32> {
        if self.slots.is_empty() {
            return None;
        }
        let mask = self.slots.len() - 1;
        let mut i = self.home(hash);
        loop {
            let s = self.slots[i];
            if s == 0 {
                return None;
            }
            if (s ^ hash) >> 32 == 0 && eq(s as u32 - 1) {
                return Some(s as u32 - 1);
            }
            i = (i + 1) & mask;
        }
    }

    /// Adds `a` (not in the table) under `hash`; the table has room.
    fn insert_new(&mut self, hash: u64, a: u32) {
        debug_assert!(self.len < self.room());
        let mask = self.slots.len() - 1;
        let mut i = self.home(hash);
        while self.slots[i] != 0 {
            i = (i + 1) & mask;
        }
        self.slots[i] = Slots::entry(hash, a);
        self.len += 1;
    }

    /// Asks for the cache line of `hash`'s home slot.
    #[inline]
    fn prefetch(&self, hash: u64) {
        if !self.slots.is_empty() {
            prefetch(&self.slots[self.home(hash)]);
        }
    }

    fn heap_bytes(&self) -> usize {
        self.slots.capacity() * size_of::<u64>()
    }
}

/// Entries of [`Recent`]: a power of two.
const RECENT: usize = 64;

/// What the last few look-ups of the index found, so that the stages of one message's
/// look-up (its hints a few messages ahead, then its apply: five look-ups of one id) hash
/// the id once and probe the table once instead of five times.
///
/// Direct-mapped on the id's low bits, [`RECENT`] entries, each overwritten by the next id
/// that maps to it; nothing is ever invalidated, since an account's index never changes
/// (accounts are never removed). An entry is a hint, never a result: an account taken from
/// it is used only after its id is compared with the id column ([`AccountIndex::get`]), and
/// a remembered hash only steers a prefetch ([`AccountIndex::candidate`]). So ids chosen to
/// share an entry cost at most one id compare more a look-up (and only when they share the
/// entry's 32-bit tag too), never a wrong answer.
///
/// Atomics (relaxed: plain loads and stores) because the engine is `Sync` for its rayon
/// workers. `found` is one word (tag and index) and cannot be read torn; `hashed` is two,
/// and a torn pair gives a wrong hash, which only a prefetch uses.
#[derive(Debug)]
struct Recent {
    /// (id, its hash) as [`AccountIndex::prefetch_slot`] computed it.
    hashed: [(AtomicU64, AtomicU64); RECENT],
    /// `(tag << 32) | (index + 1)` of an account found for an id of this entry; 0: none.
    found: [AtomicU64; RECENT],
}

impl Default for Recent {
    fn default() -> Recent {
        Recent {
            hashed: [const { (AtomicU64::new(0), AtomicU64::new(0)) }; RECENT],
            found: [const { AtomicU64::new(0) }; RECENT],
        }
    }
}

impl Recent {
    /// The entry of `id` and the 32-bit tag that tells its ids apart (the bits above the
    /// entry's).
    #[inline]
    fn entry(id: u64) -> (usize, u64) {
        (id as usize & (RECENT - 1), (id >> RECENT.trailing_zeros()) & 0xffff_ffff)
    }

    /// The account last remembered for an id with `id`'s entry and tag: `id`'s account but
    /// for ids that share both (compare the id before use).
    #[inline]
    fn found(&self, id: u64) -> Option<u32> {
        let (e, tag) = Recent::entry(id);
        let v = self.found[e].load(Ordering::Relaxed);
        (v != 0 && v >> 32 == tag).then(|| v as u32 - 1)
    }

    #[inline]
    fn remember(&self, id: u64, a: u32) {
        let (e, tag) = Recent::entry(id);
        // Indices are below u32::MAX (`AccountIndex::insert`), so a + 1 fits.
        self.found[e].store(tag << 32 | u64::from(a + 1), Ordering::Relaxed);
    }

    /// `id`'s hash as last remembered, if its entry still holds it.
    #[inline]
    fn hash(&self, id: u64) -> Option<u64> {
        let (e, _) = Recent::entry(id);
        let (stored, hash) = &self.hashed[e];
        (stored.load(Ordering::Relaxed) == id).then(|| hash.load(Ordering::Relaxed))
    }

    #[inline]
    fn remember_hash(&self, id: u64, hash: u64) {
        let (e, _) = Recent::entry(id);
        self.hashed[e].0.store(id, Ordering::Relaxed);
        self.hashed[e].1.store(hash, Ordering::Relaxed);
    }
}

/// Account id → [`AccountIdx`]. Each slot holds the index and a 32-bit tag of the id's hash
/// (8 bytes); the id it stands for is read from the id column when the tag matches.
///
/// **A keyed hash.** Ids are the sender's choice, so they are hashed with SipHash-1-3 under
/// a random key per process ([`IdHasher`]). An unkeyed hash (FxHash, which this index used)
/// is invertible: ids crafted to share a bucket and a tag made each lookup compare against
/// all of them (200,000 `balance` messages took 43 s instead of 0.1 s). Under an unknown key
/// a sender cannot aim at a slot.
///
/// **Addressable from the hash.** A look-up in a 1M-entry index is a chain of cache misses:
/// the slot, then the id column. The home slot is `hash mod slots`, so the prefetch across
/// messages works in stages (`hint.rs`): hash a message's id and fetch its slot's line a few
/// messages ahead ([`AccountIndex::prefetch_slot`]), read the slot (now cached) and fetch
/// the id and the account's records nearer ([`AccountIndex::get`]), apply. A
/// `hashbrown` table could not do the first stage: its bucket is found through its control
/// bytes, themselves a miss.
///
/// **Growth without a stop.** A table that doubles rehashes every entry at once: at 917,504
/// accounts that took ~100 ms (a SipHash and a random write per account) in which no message
/// was applied. This index grows incrementally instead: when `table` is full it becomes `old`
/// and a table of twice the slots takes its place; every insert then moves two of `old`'s
/// entries across (they are the indices `0..old_len`, so the next to move is simply
/// `moved`), and a lookup that misses `table` tries `old`. `old` is empty long before the new
/// table fills (it holds `n` entries moved at two per insert; the new table has room for
/// `2n`), and is dropped when empty.
///
/// Allocating the new table (16 MB at 1M accounts) and freeing the old one cost milliseconds
/// of engine CPU in the kernel and the allocator, so neither happens on the engine thread
/// once the table is big ([`ahead_min_bytes`]): when `table` is three quarters full the
/// next one is allocated and faulted in on a thread of its own ([`ahead::Ahead`]), and an
/// emptied `old` is freed on another ([`ahead::drop_elsewhere`]).
///
/// **Memory**: 8 bytes a slot, 1⅓–2⅔ slots an account (16 MB at 1M accounts: 2^21 slots),
/// plus, from three quarters full, the next table (twice the slots) on its thread, and
/// while entries move, the old one (half the slots).
#[derive(Debug, Default)]
pub(super) struct AccountIndex {
    table: Slots,
    /// The table before the last growth while its entries move to `table`.
    old: Slots,
    /// The entries of `old` are the indices `0..old_len`; those below `moved` are in `table`.
    old_len: u32,
    moved: u32,
    hasher: IdHasher,
    /// The ids looked up last, with their hashes and accounts (see [`Recent`]).
    recent: Recent,
    /// The next `table`, allocated ahead of need (see above), and its slots.
    next: Option<(ahead::Ahead<Slots>, usize)>,
    /// Stored ids compared with a looked-up id so far: the work a crafted id would inflate
    /// (tests only; atomic so that the engine stays `Sync` for its rayon workers).
    #[cfg(test)]
    pub(super) compares: AtomicU64,
}

/// Entries of the old table moved per insert while the index grows (see [`AccountIndex`]).
const INDEX_MOVES_PER_INSERT: u32 = 2;

impl AccountIndex {
    /// The index of the account `id`, whose id is `ids[a]`; `None` if it has none.
    ///
    /// An account found for `id` a few messages ago (by the hints of `hint.rs`, or by an
    /// earlier look-up) is taken from [`Recent`] once its id is compared: no hash, no probe.
    #[inline]
    pub(super) fn get(&self, id: u64, ids: &[u64]) -> Option<AccountIdx> {
        let eq = |a: u32| {
            #[cfg(test)]
            self.compares.fetch_add(1, Ordering::Relaxed);
            // Every index in either table was pushed to `ids` before it was inserted; a
            // recent entry holds one of them (or 0, which `Recent::found` never returns).
            ids.get(a as usize) == Some(&id)
        };
        if let Some(a) = self.recent.found(id).filter(|&a| eq(a)) {
            return Some(AccountIdx(a));
        }
        let hash = self.hasher.hash(id);
        let found = match self.table.find(hash, eq) {
            Some(a) => Some(a),
            None if self.moved < self.old_len => self.old.find(hash, eq),
            None => None,
        };
        if let Some(a) = found {
            self.recent.remember(id, a);
        }
        found.map(AccountIdx)
    }

    /// The second stage of a staged look-up: the index under `id`'s tag, its id not
    /// compared (that would wait for the id column): the account of `id` but for a tag
    /// collision (odds 2^-32 a probe), for a hint to fetch its records. Not for results:
    /// [`AccountIndex::get`] compares the id before it uses what this remembers. The hash is
    /// the one [`AccountIndex::prefetch_slot`] computed, when [`Recent`] still holds it.
    #[inline]
    pub(super) fn candidate(&self, id: u64) -> Option<AccountIdx> {
        let hash = self.recent.hash(id).unwrap_or_else(|| self.hasher.hash(id));
        let found = match self.table.find(hash, |_| true) {
            Some(a) => Some(a),
            None if self.moved < self.old_len => self.old.find(hash, |_| true),
            None => None,
        };
        if let Some(a) = found {
            self.recent.remember(id, a);
        }
        found.map(AccountIdx)
    }

    /// The first stage of a staged look-up: asks for the cache line of `id`'s home slot (in
    /// both tables while entries move), and remembers the hash for the stages after it.
    /// Reads nothing but the tables' headers.
    #[inline]
    pub(super) fn prefetch_slot(&self, id: u64) {
        let hash = self.hasher.hash(id);
        self.recent.remember_hash(id, hash);
        self.table.prefetch(hash);
        if self.moved < self.old_len {
            self.old.prefetch(hash);
        }
    }

    /// Adds `a`, whose id is already `ids[a]` and not in the index yet.
    pub(super) fn insert(&mut self, a: AccountIdx, ids: &[u64]) {
        // Slots hold the index + 1, 0 meaning empty.
        assert!(a.0 < u32::MAX, "fewer than 2^32 - 1 accounts");
        if self.table.len == self.table.room() {
            // The last growth finished long ago: its old table was emptied after n / 2
            // inserts, and this table had room for n more.
            assert_eq!(self.moved, self.old_len, "the previous growth is complete");
            let slots = (2 * self.table.slots.len()).max(64);
            let next = match self.next.take() {
                Some((next, _)) => next.take(),
                None => Slots::new(slots),
            };
            debug_assert!(next.len == 0 && next.slots.len() == slots);
            self.old = std::mem::replace(&mut self.table, next);
            (self.old_len, self.moved) = (u32::try_from(self.old.len).expect("u32 indices"), 0);
        } else if self.next.is_none()
            && 2 * self.table.heap_bytes() >= ahead_min_bytes()
            && self.table.len >= self.table.room() / 4 * 3
        {
            let slots = 2 * self.table.slots.len();
            self.next = ahead::Ahead::start(move || Slots::faulted(slots)).map(|n| (n, slots));
        }
        let hasher = self.hasher;
        self.table.insert_new(hasher.hash(ids[a.0 as usize]), a.0);
        if self.moved < self.old_len {
            let end = (self.moved + INDEX_MOVES_PER_INSERT).min(self.old_len);
            for b in self.moved..end {
                // `table` has room for the old entries and the inserts while they move.
                self.table.insert_new(hasher.hash(ids[b as usize]), b);
            }
            self.moved = end;
            if self.moved == self.old_len {
                let old = std::mem::take(&mut self.old);
                if 2 * old.heap_bytes() >= ahead_min_bytes() {
                    ahead::drop_elsewhere(old);
                }
            }
        }
    }

    /// Heap bytes of the tables: the current one, the old one while entries move, and the
    /// next one once it is being allocated ahead.
    pub(super) fn allocation_size(&self) -> usize {
        let next = self.next.as_ref().map_or(0, |&(_, slots)| slots * size_of::<u64>());
        self.table.heap_bytes() + self.old.heap_bytes() + next
    }
}

#[cfg(test)]
mod tests {
    use std::{
        collections::HashMap,
        hash::{DefaultHasher, Hasher},
    };

    use proptest::prelude::*;

    use super::*;

    /// The hand-written SipHash-1-3 equals std's on the key std's `DefaultHasher::new`
    /// uses (0, 0), and a random key changes every hash.
    #[test]
    fn id_hash_is_std_siphash_1_3() {
        let zero = IdHasher { k0: 0, k1: 0 };
        let keyed = IdHasher::default();
        let mut rng = crate::synth::Rng::new(5);
        let mut ids = vec![0, 1, u64::MAX, 1 << 63];
        ids.extend((0..10_000).map(|_| rng.next_u64()));
        for id in ids {
            let mut std = DefaultHasher::new();
            std.write_u64(id);
            assert_eq!(zero.hash(id), std.finish(), "id {id}");
            assert_ne!(keyed.hash(id), zero.hash(id), "id {id}");
        }
    }

    /// The index equals a plain map through many growths, whether the next table was
    /// allocated ahead and ready, still pending when the growth came (a slow allocation
    /// planted here), or absent (a thread could not be started, modelled by clearing it); a
    /// lookup between growths finds every id held and no other; and an index dropped while
    /// its next table is pending frees everything.
    #[test]
    fn account_index_equals_a_map_whether_the_next_table_is_ready_pending_or_absent() {
        let mut rng = crate::synth::Rng::new(77);
        let mut index = AccountIndex::default();
        let mut ids: Vec<u64> = Vec::new();
        let mut want: HashMap<u64, u32> = HashMap::new();
        let (mut growths, mut ahead_used, mut planted, mut moving) = (0, 0, 0, 0);
        for k in 0..200_000u32 {
            let id = rng.next_u64();
            if want.contains_key(&id) {
                continue;
            }
            let a = ids.len() as u32;
            ids.push(id);
            want.insert(id, a);
            let slots = index.table.slots.len();
            let full = index.table.len == index.table.room();
            if full && slots >= 1024 {
                match growths % 3 {
                    // Pending: a next table that takes a while; the growth waits for it.
                    0 => {
                        index.next = ahead::Ahead::start(move || {
                            std::thread::sleep(std::time::Duration::from_millis(5));
                            Slots::faulted(2 * slots)
                        })
                        .map(|n| (n, 2 * slots));
                        planted += 1;
                    }
                    // Absent: allocated inline.
                    1 => index.next = None,
                    // Ready or nearly: as the index left it.
                    _ => ahead_used += usize::from(index.next.is_some()),
                }
            }
            index.insert(AccountIdx(a), &ids);
            if index.table.slots.len() != slots {
                growths += 1;
                assert!(full, "insert {k}: grew before the table was full");
            }
            moving += usize::from(index.moved < index.old_len);
            if k % 4_999 == 0 {
                for (&id, &a) in &want {
                    assert_eq!(index.get(id, &ids), Some(AccountIdx(a)), "insert {k}");
                }
                assert_eq!(index.get(rng.next_u64() | 1 << 63, &ids), None);
            }
        }
        for (&id, &a) in &want {
            assert_eq!(index.get(id, &ids), Some(AccountIdx(a)));
        }
        assert!(
            growths >= 10 && planted >= 2 && ahead_used >= 2 && moving > 10_000,
            "{growths} {planted} {ahead_used} {moving}"
        );
        // At most three quarters of the slots are used, and the old table is gone.
        assert!(index.table.len <= index.table.room());
        assert_eq!(index.table.len + index.old.len - index.moved as usize, want.len());
        // Dropped with a next table pending.
        let slots = index.table.slots.len();
        index.next = ahead::Ahead::start(move || Slots::faulted(2 * slots)).map(|n| (n, 0));
        drop(index);
    }

    /// A table faulted in ahead is empty and has the slots asked for.
    #[test]
    fn faulted_tables_are_empty_with_the_slots_asked_for() {
        for n in [64, 1024, 1 << 17] {
            let t = Slots::faulted(n);
            assert_eq!((t.len, t.slots.len()), (0, n));
            assert!(t.slots.iter().all(|&s| s == 0));
            assert_eq!(t.find(0, |_| true), None);
        }
    }

    /// Ids whose hashes share their home slot and tag (a full collision under this key,
    /// found by search in a small table) are told apart by the id compare, and the tables'
    /// linear probing wraps around the end.
    #[test]
    fn full_collisions_and_wrapping_probes_are_resolved_by_the_id() {
        let mut t = Slots::new(64);
        let ids: Vec<u64> = (0..40).map(|k| 1000 + k).collect();
        // Every entry under one hash whose home is the last slot: each probe wraps.
        let hash = 0xabcd_ef01_0000_003f;
        for (a, _) in ids.iter().enumerate() {
            t.insert_new(hash, a as u32);
        }
        for (a, &id) in ids.iter().enumerate() {
            let mut compares = 0;
            let found = t.find(hash, |b| {
                compares += 1;
                ids[b as usize] == id
            });
            assert_eq!(found, Some(a as u32));
            assert_eq!(compares, a + 1);
        }
        assert_eq!(t.find(hash, |b| ids[b as usize] == 7), None);
        // Same home, other tag: no id compared.
        assert_eq!(t.find(0x1234_5678_0000_003f, |_| panic!("tag differs")), None);
    }

    /// What [`Recent`] remembers is never taken on trust: ids that share its entry and tag
    /// are told apart by the id compare, and a wrong remembered hash (as a torn read would
    /// give) misleads only the hint stage, never a look-up.
    #[test]
    fn recent_look_ups_are_checked_against_the_id() {
        let mut index = AccountIndex::default();
        // Same entry (low 6 bits) and tag (the 32 bits above): they differ only in bit 63.
        let (a_id, b_id) = (0x0000_0012_3456_7801, 0x8000_0012_3456_7801);
        assert_eq!(Recent::entry(a_id), Recent::entry(b_id));
        let ids = vec![a_id, b_id];
        index.insert(AccountIdx(0), &ids);
        index.insert(AccountIdx(1), &ids);
        for _ in 0..3 {
            for (k, &id) in ids.iter().enumerate() {
                assert_eq!(index.get(id, &ids), Some(AccountIdx(k as u32)));
                // The other id is what its entry now remembers.
                assert_eq!(index.recent.found(ids[1 - k]), Some(k as u32));
            }
        }
        // A hash remembered wrongly for `a_id`: the candidate may be anything, the look-up
        // is still right, and a later hint stage remembers the true hash again.
        index.recent.remember_hash(a_id, index.hasher.hash(b_id));
        assert_eq!(index.recent.hash(a_id), Some(index.hasher.hash(b_id)));
        let _ = index.candidate(a_id);
        assert_eq!(index.get(a_id, &ids), Some(AccountIdx(0)));
        assert_eq!(index.get(b_id, &ids), Some(AccountIdx(1)));
        index.prefetch_slot(a_id);
        assert_eq!(index.recent.hash(a_id), Some(index.hasher.hash(a_id)));
        // An id the index does not hold is not found, whatever its entry remembers.
        assert_eq!(index.get(a_id ^ 1 << 62, &ids), None);
    }

    proptest! {
        /// Inserts and lookups of arbitrary ids (small ones that collide in the low bits,
        /// repeats, misses) through growths agree with a `HashMap`, and the staged prefetch
        /// in between changes nothing.
        #[test]
        fn index_agrees_with_a_map(ops in proptest::collection::vec((0u8..3, 0u64..5_000), 1..3_000)) {
            let mut index = AccountIndex::default();
            let mut ids = Vec::new();
            let mut want: HashMap<u64, u32> = HashMap::new();
            for (op, raw) in ops {
                let id = raw.wrapping_mul(0x1_0000_0001) ^ u64::from(op == 2) << 63;
                index.prefetch_slot(id);
                if let Some(a) = index.candidate(id) {
                    prop_assert!((a.0 as usize) < ids.len());
                }
                match op {
                    0 | 2 if !want.contains_key(&id) => {
                        let a = ids.len() as u32;
                        ids.push(id);
                        want.insert(id, a);
                        index.insert(AccountIdx(a), &ids);
                    }
                    _ => {}
                }
                prop_assert_eq!(index.get(id, &ids), want.get(&id).copied().map(AccountIdx));
                prop_assert_eq!(index.get(id ^ 0x5555, &ids), want.get(&(id ^ 0x5555)).copied().map(AccountIdx));
            }
        }
    }
}
