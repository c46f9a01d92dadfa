//! The allocator settings the `liqscan` binary (and the examples that measure what it costs)
//! runs with: [`keep_freed_memory`].
//!
//! The binary's global allocator is mimalloc (`src/main.rs`). By default mimalloc hands freed
//! memory back to the kernel a second after it was freed (a "purge": `madvise(MADV_DONTNEED)`
//! over the freed ranges of its arenas), and the purge runs on whichever thread next
//! allocates once the delay has passed. On the 1M-account book that was the engine thread
//! in single `position` and `balance` messages: 4–15 ms of engine CPU with no page fault
//! (`perf`: `_mi_arenas_collect` → `_mi_os_purge_ex` → `madvise`, zapping pages and flushing
//! the TLB of both cores), the largest stall of the book's build outside wicks and fundings
//! (src/fast/README.md, "Growth without a stop"). Purged memory that is allocated again is
//! also faulted in again, 4 KiB at a time.

/// `mi_option_purge_delay` in mimalloc's `mi_option_t` (`mimalloc.h` of the v3 sources that
/// `libmimalloc-sys` builds; `libmimalloc-sys` names the options around it but not this one).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Makes mimalloc keep the memory freed in this process for reuse instead of returning it to
/// the kernel (purge delay −1: no purge), so that no allocation on the engine thread ever
/// pays for unmapping what another allocation freed. Call it first thing in `main`.
///
/// What it costs: the resident size never falls below its peak. The engine's heap only
/// grows with the book (columns of 1 MiB and more are mappings of their own, which
/// [`crate::fast`] unmaps itself, and the hash tables' emptied old tables are freed on
/// another thread into the same arenas, where later allocations reuse them), so the peak is
/// what a daemon holds anyway.
#[allow(unsafe_code)]
pub fn keep_freed_memory() {
    // SAFETY: sets one option; mimalloc reads options at each use and allows setting them
    // at any time from any thread.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1) };
}

/// mimalloc's purge delay in ms (−1: never purges).
#[allow(unsafe_code)]
pub fn purge_delay_ms() -> std::ffi::c_long {
    // SAFETY: reads one option.
    unsafe { libmimalloc_sys::mi_option_get(MI_OPTION_PURGE_DELAY) }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The option number is the purge delay's: its documented default (1000 ms in mimalloc
    /// v3, unless the environment sets it) is what the number reads before the call, and −1
    /// after.
    #[test]
    fn the_purge_delay_is_switched_off() {
        if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
            assert_eq!(purge_delay_ms(), 1000, "option 15 is not mimalloc v3's purge delay");
        }
        keep_freed_memory();
        assert_eq!(purge_delay_ms(), -1);
    }
}
