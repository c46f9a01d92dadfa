//! Short waits without a wake-up: spinning instead of parking, for as long as it pays.
//!
//! A thread that parks is woken by a futex (or a timer) and, on a 2-core virtual machine,
//! runs again tens of µs later: more than the whole budget of a live line (issue 14 asks
//! 20 µs at p99 from line read to event). So the engine thread polls its queues for a short
//! while after a batch ([`super::Options::idle_spin`]), and a paced reader (`--rate`, `liqscan
//! feed --rate`) spins the last stretch before a line's due time instead of sleeping past it.
//!
//! Spinning only pays on a core that is otherwise idle. On a busy machine a spinner is a
//! CPU-bound thread that the scheduler time-slices (preempted for milliseconds), where a
//! thread that parks is let back in promptly when it is woken. So a [`Spinner`] watches its
//! own clock: a gap between two looks longer than [`PREEMPTED`] means it was descheduled, and
//! it then stops spinning for [`BACKOFF`] (parks, or sleeps the whole wait) before trying again.

use std::{
    sync::{
        OnceLock,
        atomic::{AtomicBool, Ordering, fence},
    },
    thread::Thread,
    time::{Duration, Instant},
};

/// The environment variable that sets how long liqscan's threads may spin instead of
/// sleeping, in µs (`0`: never spin: the engine parks at once, paced readers only sleep).
pub const SPIN_ENV: &str = "LIQSCAN_SPIN_US";

/// The spin when [`SPIN_ENV`] is unset: none. Measured on the shared 2-core development
/// machine (load 2), spinning made event latency worse (`replay --rate 200000` of a stream of
/// cheap messages: p90 85 µs with a 50 µs spin against 17 µs without; see
/// `src/pipeline/README.md`), since the spinners then compete with the writer and everything
/// else for the two cores. On a machine with a core to spare, `LIQSCAN_SPIN_US=50` is the
/// setting to try.
pub const SPIN_DEFAULT: Duration = Duration::ZERO;

/// The spin of this process: [`SPIN_ENV`] when it is set to a number of µs, else
/// [`SPIN_DEFAULT`]. An unreadable value is ignored (the default holds).
pub fn spin_from_env() -> Duration {
    std::env::var(SPIN_ENV)
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map_or(SPIN_DEFAULT, Duration::from_micros)
}

/// A gap between two looks at the clock during a spin that means the thread was preempted.
pub const PREEMPTED: Duration = Duration::from_micros(30);

/// How long a [`Spinner`] that was preempted does without spinning.
pub const BACKOFF: Duration = Duration::from_millis(20);

/// Spin-loop hints between two looks at the clock (a few µs at most).
const SPINS_PER_CHECK: u32 = 64;

/// How much earlier than its due time a pacing sleep ends: a sleep overshoots by the timer
/// slack (50 µs by default on Linux) plus the wake-up, so the last stretch is spun.
const SLEEP_MARGIN: Duration = Duration::from_micros(150);

/// Makes this thread's sleeps end on time: Linux lets a sleep overshoot by the thread's timer
/// slack (50 µs by default, so that wake-ups can be batched), which for a reader paced at
/// 100,000 lines/s (10 µs apart) is five lines' worth: lines went in bursts, each waiting
/// for the ones before it. With a slack of 1 ns a sleep ends within the wake-up's own cost.
/// Called by the paced readers (`replay --rate`, `feed --rate`) only. Elsewhere, or if
/// `prctl` fails, nothing changes (sleeps stay coarse).
#[allow(unsafe_code)]
pub fn fine_timer_slack() {
    #[cfg(target_os = "linux")]
    // SAFETY: PR_SET_TIMERSLACK takes one integer argument and changes only this thread's
    // timer slack; it touches no memory of ours.
    unsafe {
        libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong, 0, 0, 0);
    }
}

/// One thread's spinning policy: spin while it is not preempted.
#[derive(Debug)]
pub struct Spinner {
    /// Spinning is allowed at all (a zero [`SPIN_ENV`] forbids it).
    enabled: bool,
    /// No spinning before this: the thread was preempted while spinning.
    quiet_until: Option<Instant>,
}

impl Default for Spinner {
    /// A spinner that may spin.
    fn default() -> Self {
        Spinner::new(true)
    }
}

impl Spinner {
    /// A spinner; `enabled: false` never spins (it only sleeps or returns at once).
    pub fn new(enabled: bool) -> Spinner {
        Spinner { enabled, quiet_until: None }
    }

    /// True when spinning is allowed now (enabled, and not backing off after a preemption).
    pub fn may_spin(&self, now: Instant) -> bool {
        self.enabled && self.quiet_until.is_none_or(|t| now >= t)
    }

    /// Spins until `ready()` or until `spin` has passed; returns `ready()`'s last answer.
    /// Returns at once (false) while backing off, and stops early (false) when it finds it
    /// was preempted, starting a back-off.
    pub fn spin_until(&mut self, spin: Duration, ready: impl Fn() -> bool) -> bool {
        if spin.is_zero() {
            return ready();
        }
        let start = Instant::now();
        if !self.may_spin(start) {
            return ready();
        }
        let mut last = start;
        loop {
            for _ in 0..SPINS_PER_CHECK {
                std::hint::spin_loop();
            }
            if ready() {
                return true;
            }
            let now = Instant::now();
            if now - last > PREEMPTED {
                self.quiet_until = Some(now + BACKOFF);
                return false;
            }
            if now - start >= spin {
                return false;
            }
            last = now;
        }
    }

    /// Waits until `due`: sleeps while it is far, spins the last stretch (sleeps all of it
    /// while backing off). With the default timer slack a sleep of a few µs overshoots by
    /// ~60 µs, so a reader paced at 200,000 lines/s (5 µs apart) by sleeps alone takes lines
    /// in bursts of a dozen, each burst behind a wake-up: paced readers call
    /// [`fine_timer_slack`] first, and spinning lets each line in at its time, as a live line
    /// arrives.
    pub fn pace_until(&mut self, due: Instant) {
        loop {
            let now = Instant::now();
            if now >= due {
                return;
            }
            let left = due - now;
            if left > SLEEP_MARGIN && self.enabled {
                std::thread::sleep(left - SLEEP_MARGIN);
            } else if !self.may_spin(now) {
                std::thread::sleep(left);
            } else {
                self.spin_until(left, || false);
            }
        }
    }
}

/// Where the engine thread parks when both its queues are empty, and how the threads that
/// queue work for it (the reader, the askers of [`super::Controls`]) wake it: after queueing,
/// [`Doorbell::ring`] unparks the engine if it is parked or about to park, and costs a fence
/// and a load if it is not.
///
/// Why not a blocking `recv` or `select!` on the queues: crossbeam's blocking receive spins
/// and yields the CPU several times before it parks (its `Backoff`), which on a paced stream
/// (the engine idle between nearly every two batches) was CPU the reader and the sender on
/// the same two cores needed; and a `select!` woken by a sender unregisters from every queue
/// it waited on, taking the lock of the queue whose sender still holds it while it wakes the
/// engine: a second futex wait and wake a batch (`src/pipeline/README.md`, "Wake-ups").
///
/// No wake-up is lost: the engine marks itself asleep, then looks at its queues, then parks;
/// a waker queues, then looks at the mark (a sequentially consistent fence on each side, so
/// at least one of the two sees the other's write), and `Thread::unpark` before `park` makes
/// `park` return at once.
#[derive(Debug, Default)]
pub struct Doorbell {
    /// The engine has parked, or is about to.
    asleep: AtomicBool,
    /// The reader has ended: nothing more will come through the batch queue.
    closed: AtomicBool,
    /// The thread that parks (set by [`Doorbell::answer_here`]).
    engine: OnceLock<Thread>,
}

impl Doorbell {
    /// Makes the calling thread the one that parks and is woken (once per doorbell: the
    /// engine thread of one pipeline run).
    pub fn answer_here(&self) {
        let _ = self.engine.set(std::thread::current());
    }

    /// Work was queued: wakes the engine if it is parked or about to park.
    pub fn ring(&self) {
        fence(Ordering::SeqCst);
        if self.asleep.load(Ordering::Relaxed)
            && self.asleep.swap(false, Ordering::AcqRel)
            && let Some(engine) = self.engine.get()
        {
            engine.unpark();
        }
    }

    /// The reader has ended: wakes the engine for good (it parks no more).
    pub fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        self.ring();
    }

    /// Parks the calling thread unless `ready()` (work is queued) or the doorbell is closed.
    /// May return without either (a spurious wake-up, or a ring for work already taken): the
    /// caller looks at its queues again.
    pub fn park_unless(&self, ready: impl Fn() -> bool) {
        self.asleep.store(true, Ordering::SeqCst);
        fence(Ordering::SeqCst);
        if !ready() && !self.closed.load(Ordering::SeqCst) {
            std::thread::park();
        }
        self.asleep.store(false, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, atomic::AtomicU64};

    use super::*;

    /// A producer queues items one at a time, rings, and waits (bounded) until the consumer
    /// has taken the item, ringing no more; the consumer parks whenever it has taken
    /// everything. A lost wake-up leaves the consumer parked with the item queued: the
    /// producer's wait times out and the test fails (closing the doorbell then releases the
    /// consumer, and the wait for it is bounded too). A closed doorbell parks no more.
    #[test]
    fn a_doorbell_loses_no_wake_up() {
        const ITEMS: u64 = 5_000;
        let bell = Arc::new(Doorbell::default());
        let (queued, taken) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let (b, q, t) = (bell.clone(), queued.clone(), taken.clone());
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            b.answer_here();
            let mut parks = 0u64;
            while !b.closed.load(Ordering::SeqCst) {
                let n = t.load(Ordering::SeqCst);
                if q.load(Ordering::SeqCst) > n {
                    t.store(n + 1, Ordering::SeqCst);
                    continue;
                }
                parks += 1;
                b.park_unless(|| q.load(Ordering::SeqCst) > t.load(Ordering::SeqCst));
            }
            b.park_unless(|| false); // returns at once: closed
            let _ = done_tx.send(parks);
        });
        let mut lost = None;
        for n in 1..=ITEMS {
            queued.store(n, Ordering::SeqCst);
            bell.ring();
            let deadline = Instant::now() + Duration::from_secs(10);
            while taken.load(Ordering::SeqCst) < n && Instant::now() < deadline {
                std::thread::yield_now();
            }
            if taken.load(Ordering::SeqCst) < n {
                lost = Some(n);
                break;
            }
        }
        bell.close();
        // Bounded even if closing fails to wake the consumer (then it is left parked).
        let parks =
            done_rx.recv_timeout(Duration::from_secs(30)).expect("closed: the consumer ends");
        assert_eq!(lost, None, "the consumer slept through a ring");
        assert!(parks > 0, "the consumer parked");
    }

    #[test]
    fn spin_until_sees_ready_and_times_out() {
        let mut s = Spinner::default();
        // TC1: ready at once.
        assert!(s.spin_until(Duration::from_millis(100), || true));
        // TC2: never ready: returns within a bound (the spin, or sooner if preempted).
        let t = Instant::now();
        assert!(!s.spin_until(Duration::from_micros(200), || false));
        assert!(t.elapsed() < Duration::from_secs(1));
        // TC3: zero spin only asks once.
        assert!(!s.spin_until(Duration::ZERO, || false));
    }

    #[test]
    fn a_preempted_spinner_backs_off() {
        let mut s =
            Spinner { enabled: true, quiet_until: Some(Instant::now() + Duration::from_secs(60)) };
        assert!(!s.may_spin(Instant::now()));
        let t = Instant::now();
        assert!(!s.spin_until(Duration::from_secs(10), || false), "no spin while backing off");
        assert!(t.elapsed() < Duration::from_secs(1));
    }

    #[test]
    fn pace_until_waits_for_the_due_time() {
        for enabled in [true, false] {
            let mut s = Spinner::new(enabled);
            for wait_us in [0u64, 20, 400] {
                let due = Instant::now() + Duration::from_micros(wait_us);
                s.pace_until(due);
                assert!(Instant::now() >= due, "{wait_us} µs, spinning {enabled}");
            }
        }
    }

    #[test]
    fn a_disabled_spinner_never_spins() {
        let mut s = Spinner::new(false);
        assert!(!s.may_spin(Instant::now()));
        let t = Instant::now();
        assert!(!s.spin_until(Duration::from_secs(10), || false));
        assert!(t.elapsed() < Duration::from_secs(1));
    }
}
