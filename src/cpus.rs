//! CPU affinity of the calling thread: how the fast engine's growth helpers can keep off the
//! engine thread's CPU (a measuring knob, off by default: `fast::ahead`).
//!
//! The engine thread decides liquidations. The growth helpers (`liqscan-map`,
//! `liqscan-fault`, `liqscan-grow`, `liqscan-free`: `fast::ahead`) do kernel work, a huge
//! page faulted in (2 MiB zeroed, memory compacted to find it) or a table unmapped, which a
//! kernel without preemption (`Dynamic Preempt: none` on the VMs here) does not interrupt: a
//! helper the scheduler put on the engine thread's CPU held it for a whole 4 ms tick while
//! the engine thread, runnable, waited (`perf sched timehist`). With
//! `LIQSCAN_HELPERS_OFF_ENGINE_CPU=1` a helper is started with the CPU its starter (the
//! engine thread) was on ([`current`]) and calls [`keep_off`] first: it then runs on every
//! CPU the process may use but that one, when at least one other is allowed. Off by
//! default: the daemon paced at 100k lines/s did worse with it, the engine thread's CPU
//! being the cheaper place for a helper's 4 ms while the engine waits for lines
//! (src/fast/README.md, "Session 22"). The pipeline's reader and writers moved off that CPU
//! as well ended the engine thread's other 4 ms waits in `replay`, but cost the unpaced
//! daemon a tenth of its throughput on two cores, so nothing else uses this. Nothing here
//! pins the engine thread.

/// The CPU the calling thread runs on now (it may move right after); `None` where the
/// system does not say.
pub fn current() -> Option<usize> {
    imp::current()
}

/// Makes the calling thread run on every CPU it may use but `cpu`, unless that would leave
/// none (or `cpu` is `None`, or the affinity cannot be read or set, or the system has no
/// affinity): whether it changed anything. Call it first thing in a thread whose starter
/// measured `cpu` with [`current`].
pub fn keep_off(cpu: Option<usize>) -> bool {
    cpu.is_some_and(imp::keep_off)
}

/// The CPUs the calling thread may run on, as a set; `None` when not readable.
#[cfg(target_os = "linux")]
pub fn allowed() -> Option<libc::cpu_set_t> {
    imp::allowed()
}

#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
mod imp {
    use std::mem::{size_of, zeroed};

    pub fn current() -> Option<usize> {
        // SAFETY: no arguments; returns a CPU number or -1.
        let cpu = unsafe { libc::sched_getcpu() };
        usize::try_from(cpu).ok()
    }

    pub fn allowed() -> Option<libc::cpu_set_t> {
        // SAFETY: an all-zero `cpu_set_t` is an empty set; the call writes at most its size.
        unsafe {
            let mut set: libc::cpu_set_t = zeroed();
            (libc::sched_getaffinity(0, size_of::<libc::cpu_set_t>(), &mut set) == 0).then_some(set)
        }
    }

    pub fn keep_off(cpu: usize) -> bool {
        let Some(mut set) = allowed() else { return false };
        if cpu >= libc::CPU_SETSIZE as usize {
            return false;
        }
        // SAFETY: `cpu` is below `CPU_SETSIZE`; `set` is a valid `cpu_set_t`.
        unsafe {
            if !libc::CPU_ISSET(cpu, &set) || libc::CPU_COUNT(&set) < 2 {
                return false;
            }
            libc::CPU_CLR(cpu, &mut set);
            libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set) == 0
        }
    }
}

#[cfg(not(target_os = "linux"))]
mod imp {
    pub fn current() -> Option<usize> {
        None
    }

    pub fn keep_off(_cpu: usize) -> bool {
        false
    }
}

#[cfg(all(test, target_os = "linux"))]
#[allow(unsafe_code)]
mod tests {
    use super::*;

    /// A thread started with its starter's CPU runs on every CPU its starter may use but
    /// that one, when there are two or more (with one, on that one).
    #[test]
    fn a_thread_keeps_off_its_starters_cpu() {
        let mine = allowed().expect("affinity readable");
        for _ in 0..20 {
            let before = current();
            let theirs = std::thread::spawn(move || {
                let changed = keep_off(before);
                (changed, allowed().expect("affinity readable"))
            })
            .join()
            .expect("no panic");
            let after = current();
            let (Some(cpu), true) = (before, before == after) else {
                continue; // moved while starting it: which CPU was avoided is not known
            };
            let (changed, theirs) = theirs;
            // SAFETY: valid sets; `cpu` is below `CPU_SETSIZE` (the kernel gave it).
            let (n_mine, n_theirs, has) = unsafe {
                (libc::CPU_COUNT(&mine), libc::CPU_COUNT(&theirs), libc::CPU_ISSET(cpu, &theirs))
            };
            if n_mine < 2 {
                assert_eq!((changed, n_theirs, has), (false, n_mine, true));
            } else {
                assert_eq!((changed, n_theirs, has), (true, n_mine - 1, false), "starter on {cpu}");
            }
            return;
        }
        panic!("the test thread moved between CPUs 20 times in a row");
    }

    /// No CPU, or a CPU the thread may not use anyway, changes nothing.
    #[test]
    fn nothing_to_keep_off_changes_nothing() {
        assert!(!keep_off(None));
        assert!(!keep_off(Some(libc::CPU_SETSIZE as usize + 7)));
    }
}
