//! [`Column`]: a growable column, like `Vec`, whose growth never copies what it holds once it
//! is big.
//!
//! A `Vec` that doubles allocates the new buffer, copies every element across and frees the
//! old one. On the 1M-account book a doubling of the per-account columns copied ~40 MB and
//! faulted in ~80 MB of new memory in one message (11–56 ms stalls in `replay`, whose
//! allocator, mimalloc, never remaps), and a doubling of the most-held symbol's book columns
//! at 262,144 slots took 4.4 ms. A column of at least [`MAP_MIN_BYTES`] lives instead in its
//! own anonymous mapping, and doubles with `mremap(MREMAP_MAYMOVE)`: the kernel moves the
//! page-table entries of the pages already written (no data is copied), and the new half is
//! faulted in page by page as later pushes reach it. Smaller columns (most books of most
//! symbols) stay on the heap, so a config of 65,535 symbols does not make 65,535 mappings.
//! Off Linux a column is a `Vec` whatever its size.
//!
//! A column dereferences to a slice, so the sweep and every other pass read it exactly as
//! they read a `Vec`: one contiguous run of memory.

use std::{
    fmt,
    ops::{Deref, DerefMut},
};

/// The size from which a column lives in its own mapping (see the module doc). The last
/// heap growth copies less than this (~0.1 ms).
pub const MAP_MIN_BYTES: usize = 1 << 20;

/// A growable column of `T` (see the module doc). Elements are dropped with the column.
pub struct Column<T> {
    store: Store<T>,
    /// The mapping a heap column moves into, made and its first huge page faulted in on a
    /// thread of its own once the `Vec` is half way to the move ([`map::Premapped`]).
    #[cfg(target_os = "linux")]
    premapped: Option<map::Premapped>,
}

enum Store<T> {
    Heap(Vec<T>),
    /// `len` initialized elements at the start of a mapping of `cap` elements.
    #[cfg(target_os = "linux")]
    Mapped(map::Mapping<T>),
}

impl<T> Column<T> {
    pub const fn new() -> Column<T> {
        Column {
            store: Store::Heap(Vec::new()),
            #[cfg(target_os = "linux")]
            premapped: None,
        }
    }

    /// Elements the column holds room for without growing.
    pub fn capacity(&self) -> usize {
        match &self.store {
            Store::Heap(v) => v.capacity(),
            #[cfg(target_os = "linux")]
            Store::Mapped(m) => m.capacity(),
        }
    }

    /// For tests: the bytes from the start of a mapped column known faulted in (`None` on
    /// the heap).
    #[cfg(all(test, target_os = "linux"))]
    fn faulted(&self) -> Option<usize> {
        match &self.store {
            Store::Heap(_) => None,
            Store::Mapped(m) => Some(m.faulted()),
        }
    }

    /// Bytes the column holds room for (what [`Column::capacity`] costs in memory).
    pub fn heap_bytes(&self) -> usize {
        self.capacity() * size_of::<T>()
    }

    pub fn push(&mut self, value: T) {
        match &mut self.store {
            Store::Heap(v) => {
                #[cfg(target_os = "linux")]
                {
                    let cap = 2 * v.capacity().max(4);
                    if v.len() == v.capacity()
                        && size_of::<T>() > 0
                        && cap * size_of::<T>() >= MAP_MIN_BYTES
                    {
                        let premapped = self.premapped.take();
                        let mapped = map::Mapping::from_vec(std::mem::take(v), cap, premapped);
                        self.store = Store::Mapped(mapped);
                        return self.push(value);
                    }
                    if self.premapped.is_none()
                        && size_of::<T>() > 0
                        && cap * size_of::<T>() >= MAP_MIN_BYTES
                        && v.len() >= v.capacity() / 2
                    {
                        self.premapped = map::Premapped::start(map::mapped_bytes::<T>(cap));
                    }
                }
                v.push(value);
            }
            #[cfg(target_os = "linux")]
            Store::Mapped(m) => m.push(value),
        }
    }

    /// Removes the element at `i` by moving the last one into its place, as
    /// `Vec::swap_remove`. Panics if `i` is out of range.
    pub fn swap_remove(&mut self, i: usize) -> T {
        let len = self.len();
        assert!(i < len, "swap_remove index {i} out of range for length {len}");
        self.swap(i, len - 1);
        self.pop().expect("not empty")
    }

    pub fn pop(&mut self) -> Option<T> {
        match &mut self.store {
            Store::Heap(v) => v.pop(),
            #[cfg(target_os = "linux")]
            Store::Mapped(m) => m.pop(),
        }
    }

    /// Makes room for at least `additional` more elements (at least doubling when it grows,
    /// as a push would).
    pub fn reserve(&mut self, additional: usize) {
        let need = self.len().checked_add(additional).expect("a column's length fits usize");
        if need <= self.capacity() {
            return;
        }
        match &mut self.store {
            Store::Heap(v) => {
                let cap = need.max(2 * v.capacity());
                #[cfg(target_os = "linux")]
                if size_of::<T>() > 0 && cap * size_of::<T>() >= MAP_MIN_BYTES {
                    let premapped = self.premapped.take();
                    let mapped = map::Mapping::from_vec(std::mem::take(v), cap, premapped);
                    self.store = Store::Mapped(mapped);
                    return;
                }
                v.reserve_exact(cap - v.len());
            }
            #[cfg(target_os = "linux")]
            Store::Mapped(m) => m.grow(need.max(2 * m.capacity())),
        }
    }

    /// The room beyond the elements, as `Vec::spare_capacity_mut`: what is written there is
    /// not an element (a snapshot copy writes it to fault its pages in ahead).
    pub fn spare_capacity_mut(&mut self) -> &mut [std::mem::MaybeUninit<T>] {
        match &mut self.store {
            Store::Heap(v) => v.spare_capacity_mut(),
            #[cfg(target_os = "linux")]
            Store::Mapped(m) => m.spare_capacity_mut(),
        }
    }

    /// Drops the elements from `len` on (keeps the room).
    pub fn truncate(&mut self, len: usize) {
        while self.len() > len {
            self.pop();
        }
    }

    pub fn clear(&mut self) {
        self.truncate(0);
    }
}

impl<T: Clone> Column<T> {
    pub fn extend_from_slice(&mut self, from: &[T]) {
        self.reserve(from.len());
        from.iter().for_each(|x| self.push(x.clone()));
    }

    /// Truncates or pads with `fill` to `len` elements.
    pub fn resize(&mut self, len: usize, fill: T) {
        self.truncate(len);
        self.reserve(len - self.len());
        while self.len() < len {
            self.push(fill.clone());
        }
    }
}

impl<T> Default for Column<T> {
    fn default() -> Column<T> {
        Column::new()
    }
}

impl<T> Deref for Column<T> {
    type Target = [T];

    #[inline(always)]
    fn deref(&self) -> &[T] {
        match &self.store {
            Store::Heap(v) => v,
            #[cfg(target_os = "linux")]
            Store::Mapped(m) => m.as_slice(),
        }
    }
}

impl<T> DerefMut for Column<T> {
    #[inline(always)]
    fn deref_mut(&mut self) -> &mut [T] {
        match &mut self.store {
            Store::Heap(v) => v,
            #[cfg(target_os = "linux")]
            Store::Mapped(m) => m.as_mut_slice(),
        }
    }
}

impl<'a, T> IntoIterator for &'a Column<T> {
    type Item = &'a T;
    type IntoIter = std::slice::Iter<'a, T>;

    fn into_iter(self) -> Self::IntoIter {
        self.iter()
    }
}

impl<'a, T> IntoIterator for &'a mut Column<T> {
    type Item = &'a mut T;
    type IntoIter = std::slice::IterMut<'a, T>;

    fn into_iter(self) -> Self::IntoIter {
        self.iter_mut()
    }
}

impl<T> Extend<T> for Column<T> {
    fn extend<I: IntoIterator<Item = T>>(&mut self, items: I) {
        items.into_iter().for_each(|x| self.push(x));
    }
}

impl<T> FromIterator<T> for Column<T> {
    fn from_iter<I: IntoIterator<Item = T>>(items: I) -> Column<T> {
        let mut c = Column::new();
        c.extend(items);
        c
    }
}

impl<T: Clone> Clone for Column<T> {
    fn clone(&self) -> Column<T> {
        self.iter().cloned().collect()
    }
}

impl<T: fmt::Debug> fmt::Debug for Column<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

impl<T: PartialEq> PartialEq for Column<T> {
    fn eq(&self, other: &Column<T>) -> bool {
        **self == **other
    }
}

#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
mod map {
    use crate::fast::ahead::spawn_helper;
    use std::{marker::PhantomData, ptr::NonNull};

    /// `len` initialized `T`s at the start of an anonymous private mapping with room for `cap`.
    /// Owns its elements (dropped with it) and its mapping (unmapped with it).
    pub struct Mapping<T> {
        ptr: NonNull<T>,
        len: usize,
        cap: usize,
        /// Bytes from the start known faulted in (by the copy that made the mapping, by
        /// pushes, or by a finished [`Lead`]).
        faulted: usize,
        /// The huge page being faulted in ahead of the pushes, if any.
        lead: Option<Lead>,
        _owns: PhantomData<T>,
    }

    /// Bytes of the mapping that holds `cap` elements.
    pub fn mapped_bytes<T>(cap: usize) -> usize {
        bytes::<T>(cap).next_multiple_of(HUGE)
    }

    /// A mapping made, and its first huge page faulted in, on a thread of its own, for a
    /// heap column to move into ([`Mapping::from_vec`]): the copy of the column's first MiB
    /// would otherwise be the first touch of a huge page, 7–17 ms on the engine thread here.
    /// Unmapped on drop if never taken.
    pub struct Premapped {
        thread: Option<std::thread::JoinHandle<usize>>,
        bytes: usize,
    }

    impl Premapped {
        /// Starts making a mapping of `bytes` (a multiple of [`HUGE`]); `None` when no
        /// thread can be started.
        pub fn start(bytes: usize) -> Option<Premapped> {
            let thread = spawn_helper("liqscan-map", move || {
                let at = map_aligned(bytes) as usize;
                for page in (at..at + HUGE.min(bytes)).step_by(PAGE) {
                    // SAFETY: a page of the mapping just made, which nothing else knows
                    // of until this thread is joined; it holds zeros and gets a zero.
                    unsafe { std::ptr::write_volatile(page as *mut u8, 0) };
                }
                at
            })
            .ok()?;
            Some(Premapped { thread: Some(thread), bytes })
        }

        /// The mapping's address if it has `bytes` bytes (waiting for it); `None` (and the
        /// mapping unmapped) otherwise.
        fn take(mut self, bytes: usize) -> Option<*mut libc::c_void> {
            if self.bytes != bytes {
                return None;
            }
            let thread = self.thread.take()?;
            // `map_aligned` panics only when the system refuses memory, as a `Vec` aborts.
            thread.join().ok().map(|at| at as *mut libc::c_void)
        }
    }

    impl Drop for Premapped {
        fn drop(&mut self) {
            if let Some(Ok(at)) = self.thread.take().map(|t| t.join()) {
                // SAFETY: a mapping of `bytes` made for this `Premapped` and never handed out.
                unsafe { libc::munmap(at as *mut libc::c_void, self.bytes) };
            }
        }
    }

    /// A thread faulting in the bytes `from..to` of a mapping (one huge page past the one the
    /// pushes fill), so that the push that reaches them finds them present. On this VM a
    /// first touch of a 2 MiB huge page (the kernel zeroing it, the host backing it) cost
    /// 7 ms of the engine thread's CPU; a column of 1M `i128`s crosses 8 of them. While a
    /// lead runs the mapping neither reads nor writes `from..to`, nor moves or unmaps it:
    /// every such access joins the lead first ([`Mapping::join_lead`]).
    struct Lead {
        from: usize,
        thread: std::thread::JoinHandle<()>,
    }

    // SAFETY: a `Mapping<T>` owns its `T`s as a `Vec<T>` does, and shares nothing else.
    unsafe impl<T: Send> Send for Mapping<T> {}
    // SAFETY: `&Mapping<T>` gives out only `&T`s, as `&Vec<T>` does.
    unsafe impl<T: Sync> Sync for Mapping<T> {}

    fn bytes<T>(cap: usize) -> usize {
        cap.checked_mul(size_of::<T>()).expect("a column's size fits usize")
    }

    /// Mappings are sized and aligned in 2 MiB steps and advised as huge-page memory: a
    /// column is read at random (an account's record, a position's slot), and with 4 KiB
    /// pages every such read of a 32 MB column would also miss the TLB (a run of the
    /// 1M-account load test was several times slower so). Aligned, `mremap` moves whole
    /// huge-page entries.
    const HUGE: usize = 2 << 20;

    /// The smallest page: a lead writes one byte in each.
    const PAGE: usize = 4096;

    /// How near the end of the faulted bytes the pushes come before a lead faults the next
    /// huge page in: a quarter of one, 512 KiB, still 32,768 pushes of a 16-byte column
    /// (~100 ms of the fastest book build seen) against the 7 ms a lead takes. A lead
    /// started as soon as the pushes entered a page kept a whole huge page resident ahead
    /// of every mapped column: 150 MB on the bench book, 50 of its 255 bytes a position
    /// (`LIQSCAN_BENCH_ONLY=book cargo bench --bench figures`, session 20).
    const LEAD_WITHIN: usize = HUGE / 4;

    /// An anonymous private read-write mapping of `len` bytes (a multiple of [`HUGE`]) at
    /// an address aligned to [`HUGE`], advised as huge-page memory.
    fn map_aligned(len: usize) -> *mut libc::c_void {
        let over = len.checked_add(HUGE).expect("a column's size fits usize");
        // SAFETY: a fresh anonymous private mapping: no file, no fixed address.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                over,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert!(p != libc::MAP_FAILED, "mmap of {over} bytes: {}", last_error());
        let head = (p as usize).next_multiple_of(HUGE) - p as usize;
        // SAFETY: the head and the tail are parts of the mapping just made, outside the
        // aligned `len` bytes kept, and nothing refers to them.
        unsafe {
            let aligned = p.cast::<u8>().add(head);
            if head > 0 {
                libc::munmap(p, head);
            }
            if HUGE - head > 0 {
                libc::munmap(aligned.add(len).cast(), HUGE - head);
            }
            // Advice only: without it (or without THP) the column still works.
            libc::madvise(aligned.cast(), len, libc::MADV_HUGEPAGE);
            aligned.cast()
        }
    }

    impl<T> Mapping<T> {
        /// Moves the elements of `v` into a new mapping with room for at least `cap >= v.len()`.
        ///
        /// # Panics
        /// When the system refuses the mapping (out of address space or memory), as an
        /// allocation failure aborts a `Vec`.
        pub fn from_vec(mut v: Vec<T>, cap: usize, premapped: Option<Premapped>) -> Mapping<T> {
            assert!(size_of::<T>() > 0 && cap >= v.len());
            // Mappings are aligned to 2 MiB, more than any column type needs.
            assert!(align_of::<T>() <= HUGE);
            let bytes = mapped_bytes::<T>(cap);
            let at = match premapped.and_then(|p| p.take(bytes)) {
                Some(at) => at,
                None => map_aligned(bytes),
            };
            let ptr = NonNull::new(at.cast::<T>()).expect("a mapping is not null");
            let len = v.len();
            // SAFETY: the mapping has room for `cap >= len` elements and does not overlap
            // `v`'s buffer; after the copy the elements are owned by the mapping, so `v` is
            // emptied without dropping them.
            unsafe {
                std::ptr::copy_nonoverlapping(v.as_ptr(), ptr.as_ptr(), len);
                v.set_len(0);
            }
            // The copy faulted in the huge pages it wrote (whole ones under THP; a premapped
            // first page was faulted whole on its thread): a lead is for the next page.
            let faulted = (len * size_of::<T>()).next_multiple_of(HUGE).min(bytes);
            let cap = bytes / size_of::<T>();
            let mut m = Mapping { ptr, len, cap, faulted, lead: None, _owns: PhantomData };
            m.lead_when_near(len * size_of::<T>());
            m
        }

        /// Waits for the lead, if any; its bytes are then faulted in.
        fn join_lead(&mut self) {
            if let Some(lead) = self.lead.take() {
                // The thread only writes bytes; it cannot panic.
                let _ = lead.thread.join();
            }
        }

        /// Faults in the huge page after the one the next push writes, on a thread of its
        /// own (called once the pushes come within [`LEAD_WITHIN`] of the faulted end):
        /// grows the mapping when no whole page is left past it (a growth one page early,
        /// so that the new half's first page is faulted ahead as well), then starts a lead
        /// for the next page not yet faulted. Does nothing while a lead runs.
        fn lead_ahead(&mut self) {
            if self.lead.is_some() {
                return;
            }
            let next = ((self.len + 1) * size_of::<T>()).next_multiple_of(HUGE);
            if next + HUGE > self.mapped() {
                self.grow(2 * self.cap);
            }
            let from = self.faulted.max(next);
            let to = (next + HUGE).min(self.mapped());
            if from >= to {
                return;
            }
            let base = self.ptr.as_ptr() as usize;
            // A refused thread leaves the faults to the pushes, as without a lead.
            if let Ok(thread) = spawn_helper("liqscan-fault", move || {
                for at in (base + from..base + to).step_by(PAGE) {
                    // SAFETY: `at` is inside the mapping, past every element, and neither the
                    // mapping's owner nor anyone else reads or writes `from..to`, moves or
                    // unmaps it until this thread is joined (see `Lead`); writing a zero byte
                    // to fresh anonymous memory (which reads as zero) changes nothing but
                    // makes the kernel fault the page in here.
                    unsafe { std::ptr::write_volatile(at as *mut u8, 0) };
                }
            }) {
                self.lead = Some(Lead { from, thread });
                self.faulted = to;
            }
        }

        #[cfg(test)]
        pub fn faulted(&self) -> usize {
            self.faulted
        }

        /// Bytes mapped: a multiple of [`HUGE`].
        fn mapped(&self) -> usize {
            bytes::<T>(self.cap).next_multiple_of(HUGE)
        }

        pub fn capacity(&self) -> usize {
            self.cap
        }

        pub fn as_slice(&self) -> &[T] {
            // SAFETY: the first `len` elements are initialized and owned by `self`.
            unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
        }

        pub fn as_mut_slice(&mut self) -> &mut [T] {
            // SAFETY: as in `as_slice`, and `&mut self` makes the borrow unique.
            unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
        }

        pub fn push(&mut self, value: T) {
            let end = (self.len + 1) * size_of::<T>();
            if self.lead.as_ref().is_some_and(|lead| end > lead.from) {
                self.join_lead();
            }
            if self.len == self.cap {
                self.grow(2 * self.cap);
            }
            // SAFETY: `len < cap`: the slot is inside the mapping and holds no element, and
            // no lead runs over it (joined above when it reaches the lead's bytes).
            unsafe { self.ptr.as_ptr().add(self.len).write(value) };
            self.len += 1;
            self.faulted = self.faulted.max(end);
            self.lead_when_near(end);
        }

        /// Starts a lead ([`Mapping::lead_ahead`]) once the elements end (`end` bytes)
        /// within [`LEAD_WITHIN`] of the faulted bytes' end.
        fn lead_when_near(&mut self, end: usize) {
            if end > self.faulted.saturating_sub(LEAD_WITHIN) {
                self.lead_ahead();
            }
        }

        pub fn pop(&mut self) -> Option<T> {
            if self.len == 0 {
                return None;
            }
            self.len -= 1;
            // SAFETY: the slot at the old `len - 1` held an element, which is moved out and
            // no longer counted.
            Some(unsafe { self.ptr.as_ptr().add(self.len).read() })
        }

        pub fn spare_capacity_mut(&mut self) -> &mut [std::mem::MaybeUninit<T>] {
            self.join_lead();
            // SAFETY: the slots `len..cap` are inside the mapping and hold no element; as
            // `MaybeUninit` they may hold anything, and `&mut self` makes the borrow unique.
            unsafe {
                std::slice::from_raw_parts_mut(
                    self.ptr.as_ptr().add(self.len).cast(),
                    self.cap - self.len,
                )
            }
        }

        /// Grows the mapping to room for at least `cap` elements with `mremap` onto a new
        /// aligned place: the pages already written move with their page-table entries,
        /// nothing is copied.
        pub fn grow(&mut self, cap: usize) {
            let (old, new) = (self.mapped(), bytes::<T>(cap).next_multiple_of(HUGE));
            if new <= old {
                return;
            }
            self.join_lead();
            let to = map_aligned(new);
            // SAFETY: `ptr` and `old` describe exactly the mapping this owns, and `to` a
            // mapping of `new` bytes just made, which MREMAP_FIXED replaces; the elements
            // move with their pages (a `T` may be moved bitwise). No reference into the
            // mapping is alive: this takes `&mut self`.
            let p = unsafe {
                libc::mremap(
                    self.ptr.as_ptr().cast(),
                    old,
                    new,
                    libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED,
                    to,
                )
            };
            assert!(p != libc::MAP_FAILED, "mremap to {new} bytes: {}", last_error());
            self.ptr = NonNull::new(p.cast::<T>()).expect("mremap gives a non-null address");
            self.cap = new / size_of::<T>();
        }
    }

    impl<T> Drop for Mapping<T> {
        fn drop(&mut self) {
            self.join_lead();
            // SAFETY: the first `len` elements are initialized and owned; then the mapping
            // (exactly `ptr` and `cap` elements) is unmapped, and nothing refers to it.
            unsafe {
                std::ptr::drop_in_place(self.as_mut_slice());
                libc::munmap(self.ptr.as_ptr().cast(), self.mapped());
            }
        }
    }

    fn last_error() -> std::io::Error {
        std::io::Error::last_os_error()
    }
}

#[cfg(test)]
mod tests {
    use std::{cell::Cell, rc::Rc};

    use super::*;

    /// Counts its live copies, to check that the column drops each element exactly once.
    #[derive(Debug)]
    struct Counted(Rc<Cell<i64>>, u64);

    impl Clone for Counted {
        fn clone(&self) -> Counted {
            Counted::new(&self.0, self.1)
        }
    }

    impl Counted {
        fn new(live: &Rc<Cell<i64>>, v: u64) -> Counted {
            live.set(live.get() + 1);
            Counted(live.clone(), v)
        }
    }

    impl Drop for Counted {
        fn drop(&mut self) {
            self.0.set(self.0.get() - 1);
        }
    }

    impl PartialEq for Counted {
        fn eq(&self, other: &Counted) -> bool {
            self.1 == other.1
        }
    }

    /// Pushes, swap-removes, writes and truncations across the move from the heap to a
    /// mapping and through several mapped growths equal the same operations on a `Vec`, and
    /// every element is dropped exactly once.
    #[test]
    fn equals_a_vec_across_the_move_to_a_mapping_and_its_growths() {
        let live = Rc::new(Cell::new(0));
        {
            let mut rng = crate::synth::Rng::new(3);
            let mut col: Column<Counted> = Column::new();
            let mut want: Vec<Counted> = Vec::new();
            let per_element = size_of::<Counted>();
            let mut mapped_caps = Vec::new();
            for round in 0..400_000u64 {
                match rng.below(10) {
                    0 if !want.is_empty() => {
                        let i = rng.below(want.len() as u64) as usize;
                        assert_eq!(col.swap_remove(i), want.swap_remove(i), "round {round}");
                    }
                    1 if !want.is_empty() => {
                        let i = rng.below(want.len() as u64) as usize;
                        col[i] = Counted::new(&live, round);
                        want[i] = Counted::new(&live, round);
                    }
                    _ => {
                        col.push(Counted::new(&live, round));
                        want.push(Counted::new(&live, round));
                    }
                }
                if col.capacity() * per_element >= MAP_MIN_BYTES
                    && mapped_caps.last() != Some(&col.capacity())
                {
                    mapped_caps.push(col.capacity());
                }
                if round % 50_021 == 0 {
                    assert!(col[..] == want[..], "round {round}");
                }
            }
            assert!(col[..] == want[..]);
            assert!(mapped_caps.len() >= 2, "grew {mapped_caps:?} while mapped");
            let copy = col.clone();
            assert!(copy == col);
            col.truncate(10);
            want.truncate(10);
            assert!(col[..] == want[..]);
            assert_eq!(live.get(), (10 + copy.len() + 10) as i64);
        }
        assert_eq!(live.get(), 0, "every element dropped once");
    }

    /// The mapping made ahead for the move from the heap is used by a push or a `reserve`,
    /// and unmapped when the column is dropped first; the room a lead is faulting in can be
    /// handed out (`spare_capacity_mut` waits for the lead) and the elements stay intact.
    #[cfg(target_os = "linux")]
    #[test]
    fn premapped_and_led_room_is_used_or_freed() {
        let half = MAP_MIN_BYTES / size_of::<u64>() / 2;
        // Dropped with a mapping made ahead and never taken.
        let mut col: Column<u64> = Column::new();
        let three_quarters = (half / 4 * 3) as u64;
        col.extend(0..three_quarters);
        assert!(col.premapped.is_some(), "a mapping is made ahead at half way");
        drop(col);
        // Taken by a push, then by a reserve.
        for by_reserve in [false, true] {
            let mut col: Column<u64> = Column::new();
            col.extend(0..three_quarters);
            assert!(col.premapped.is_some());
            if by_reserve {
                col.reserve(half);
            }
            col.extend(three_quarters..6 * half as u64);
            assert!(col.premapped.is_none() && matches!(col.store, Store::Mapped(_)));
            let spare = col.spare_capacity_mut().len();
            assert!(spare > 0);
            col.spare_capacity_mut()[spare - 1].write(7);
            assert!(col.iter().copied().eq(0..6 * half as u64));
            col.truncate(3);
            assert_eq!(col[..], [0, 1, 2]);
        }
    }

    /// A column of plain numbers past the mapping size reads back what was written, and a
    /// pop of an empty column is `None`.
    #[test]
    fn numbers_survive_growths_and_pops() {
        let mut col: Column<i128> = Column::new();
        assert_eq!(col.pop(), None);
        let n = 4 * MAP_MIN_BYTES / size_of::<i128>() + 3;
        col.extend((0..n).map(|k| k as i128 * 7));
        assert!(col.iter().enumerate().all(|(k, &v)| v == k as i128 * 7));
        assert_eq!(col.pop(), Some((n as i128 - 1) * 7));
        col.clear();
        assert!(col.is_empty() && col.capacity() >= n);
    }

    /// A mapped column faults the next huge page in only once its pushes come within a
    /// quarter page of the faulted end (a page faulted ahead of every column was 50 bytes
    /// a position of the bench book), and then before the pushes reach it.
    #[cfg(target_os = "linux")]
    #[test]
    fn a_mapped_column_faults_its_next_page_in_only_near_the_end_of_the_last() {
        const HUGE: usize = 2 << 20;
        let mut col: Column<u128> = Column::new();
        let (mut early, mut near) = (0, 0);
        for k in 0..(5 * HUGE / size_of::<u128>()) {
            col.push(k as u128);
            let Some(faulted) = col.faulted() else { continue };
            let end = col.len() * size_of::<u128>();
            let page_end = end.next_multiple_of(HUGE);
            if end <= page_end - HUGE / 4 {
                // Early in a page: nothing faulted past it.
                assert!(faulted <= page_end, "at {end}: faulted {faulted}");
                early += 1;
            } else {
                // Near its end: the next page is faulted (or being faulted) ahead.
                assert!(faulted >= page_end + HUGE, "at {end}: faulted {faulted}");
                near += 1;
            }
        }
        assert!(early > 0 && near > 0, "{early} pushes early in a page, {near} near its end");
        assert!(col.iter().enumerate().all(|(k, &v)| v == k as u128));
    }
}
