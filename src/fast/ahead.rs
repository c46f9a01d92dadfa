//! Growth work handed to another thread, so that the engine thread never waits for the
//! kernel and the allocator: the next table of a growing hash table is allocated (and its
//! pages faulted in) ahead of need ([`Ahead`]), and an emptied old table is freed
//! ([`drop_elsewhere`]).
//!
//! On the 1M-account load test the growth steps of the account index and of the funds side
//! table cost 25–38 ms of engine-thread CPU in single messages (session 8, `apply_kinds`),
//! almost all of it allocating, zeroing or faulting in a table of up to 16 MB and freeing the
//! previous one; the incremental moves themselves are cheap. Both happen at moments known
//! well ahead (a table is three quarters full long before it is full; an old table is freed
//! when its last entry has moved), so both can run on a short-lived thread of their own.
//! What the engine thread keeps is a thread spawn (tens of µs) per growth and per free.
//!
//! Every such helper ([`spawn_helper`]: these, and the column mappings of `column.rs`) can
//! be kept off the CPU its starter (the engine thread) was on ([`crate::cpus`]; off by
//! default, see [`helpers_off_engine_cpu`]): its work is kernel work (a huge page faulted
//! in, a table unmapped), and a helper beside the engine thread held its CPU for a whole
//! 4 ms tick (`perf sched timehist`: `liqscan-map` and `liqscan-fault` running 3.98 ms while
//! the engine thread, runnable, waited).
//!
//! Nothing here changes what a table holds: a table built ahead is empty and has the
//! capacity the inline allocation would have had, and [`Ahead::take`] waits for it if it is
//! not ready, so lookups and the order of entries never depend on timing.

use std::thread::JoinHandle;

use crate::cpus;

/// A value being built on a thread of its own; dropping an `Ahead` leaves the thread to
/// finish and drop the value there.
#[derive(Debug)]
pub(super) struct Ahead<T> {
    handle: JoinHandle<T>,
}

impl<T: Send + 'static> Ahead<T> {
    /// Starts `make` on a new thread; `None` when no thread could be started (the caller then
    /// builds the value itself when it needs it).
    pub(super) fn start(make: impl FnOnce() -> T + Send + 'static) -> Option<Ahead<T>> {
        spawn_helper("liqscan-grow", make).ok().map(|handle| Ahead { handle })
    }

    /// Whether the value is built (a [`Ahead::take`] would not wait).
    #[cfg(test)]
    pub(super) fn is_ready(&self) -> bool {
        self.handle.is_finished()
    }

    /// The value, waiting for it if it is not built yet. A panic of `make` (an allocation
    /// failure) is raised here, as the inline allocation would have raised it.
    pub(super) fn take(self) -> T {
        match self.handle.join() {
            Ok(value) => value,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    }
}

/// Drops `value` on a thread of its own (freeing a big table returns its pages to the
/// kernel, which costs time proportional to its size); drops it here when no thread can be
/// started.
pub(super) fn drop_elsewhere<T: Send + 'static>(value: T) {
    // On failure `spawn` drops the closure, and with it `value`, here.
    let _ = spawn_helper("liqscan-free", move || drop(value));
}

/// Starts `work` on a thread named `name`; with [`helpers_off_engine_cpu`], one that keeps
/// off the CPU the calling thread is on now ([`cpus::keep_off`]; see the module doc).
/// Errors: the thread could not be started.
pub(super) fn spawn_helper<T: Send + 'static>(
    name: &str,
    work: impl FnOnce() -> T + Send + 'static,
) -> std::io::Result<JoinHandle<T>> {
    let starter = if helpers_off_engine_cpu() { cpus::current() } else { None };
    std::thread::Builder::new().name(name.into()).spawn(move || {
        cpus::keep_off(starter);
        work()
    })
}

/// Whether growth helpers keep off their starter's CPU: when the environment variable
/// `LIQSCAN_HELPERS_OFF_ENGINE_CPU` is `1` (read once). A measuring knob, off by default:
/// on session 22's VM it ended most of the engine thread's 4 ms run-queue waits in `replay`
/// of the 1M-account stream (batches with over 2 ms of wait 6–44 → 2–14 a run) but not the
/// apply maximum (the biggest wick), and the daemon paced at 100k lines/s on the 100k stream
/// did worse with it (`ts` → event p99 median of six alternating runs 3.8 ms against 2.1 ms;
/// p50 107 against 88 µs): with the engine thread idle between lines, its CPU was the
/// cheaper place for a helper's 4 ms than the reader's (src/fast/README.md, "Session 22").
pub(super) fn helpers_off_engine_cpu() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var("LIQSCAN_HELPERS_OFF_ENGINE_CPU").is_ok_and(|v| v == "1"))
}

#[cfg(test)]
mod tests {
    use std::sync::{
        Arc,
        atomic::{AtomicI64, Ordering},
    };

    use super::*;

    /// Counts its live copies across threads.
    #[derive(Debug)]
    struct Counted(Arc<AtomicI64>);

    impl Counted {
        fn new(live: &Arc<AtomicI64>) -> Counted {
            live.fetch_add(1, Ordering::SeqCst);
            Counted(live.clone())
        }
    }

    impl Drop for Counted {
        fn drop(&mut self) {
            self.0.fetch_sub(1, Ordering::SeqCst);
        }
    }

    /// Waits (bounded) until `live` reaches `want`.
    fn settles(live: &AtomicI64, want: i64) -> bool {
        for _ in 0..2_000 {
            if live.load(Ordering::SeqCst) == want {
                return true;
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        false
    }

    /// A taken value is the one built; a value built ahead and never taken, and a value
    /// dropped elsewhere, are each dropped exactly once.
    #[test]
    fn values_are_taken_or_dropped_exactly_once() {
        let live = Arc::new(AtomicI64::new(0));
        let built = Ahead::start({
            let live = live.clone();
            move || (0..100).map(|_| Counted::new(&live)).collect::<Vec<_>>()
        })
        .expect("a thread starts");
        let v = built.take();
        assert_eq!((v.len(), live.load(Ordering::SeqCst)), (100, 100));
        drop_elsewhere(v);
        assert!(settles(&live, 0), "dropped elsewhere: {}", live.load(Ordering::SeqCst));

        // Dropped while pending: the thread drops the value when it has built it.
        let made = Arc::new(AtomicI64::new(0));
        let pending = Ahead::start({
            let (live, made) = (live.clone(), made.clone());
            move || {
                std::thread::sleep(std::time::Duration::from_millis(20));
                let v = (0..50).map(|_| Counted::new(&live)).collect::<Vec<_>>();
                made.store(50, Ordering::SeqCst);
                v
            }
        })
        .expect("a thread starts");
        assert!(!pending.is_ready());
        drop(pending);
        assert!(settles(&made, 50), "never built");
        assert!(settles(&live, 0), "dropped pending: {}", live.load(Ordering::SeqCst));
    }
}
