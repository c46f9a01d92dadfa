//! A big wick's refreshes split between the rayon workers (README, "Wicks", session 11).
//!
//! A mark that fires thousands of cross accounts refreshes each of them once at the end of
//! the message ([`FastEngine::finish_message`]). Each refresh reads only its own account (its
//! pairs, wallet, positions' columns and funding logs) and the marks, and writes only its own
//! account's records: its stored wallet and flag, and its slots' funding starts and triggers
//! (and the guards of their blocks, which neighbouring accounts share). So the reading half of
//! every refresh ([`FastEngine::refresh_plan`], which also builds the liquidation event of an
//! account that crosses) runs on the workers, read-only, a wave of accounts at a time; the
//! engine thread then stores each plan ([`FastEngine::commit_refresh`]) and hands out the
//! events, in the order of the touched list, exactly as the one-by-one path does. Events and
//! state are the same whichever path runs (`wick_tests.rs`).
//!
//! The waves grow (128 accounts, then twice what was done so far, up to [`WAVE_MAX`]), so that
//! a wick's first events leave after a small wave while the fork-joins stay few.

use rayon::prelude::*;

use super::{AccountIdx, FastEngine, REFRESH_AHEAD, RefreshPlan, prefetch};
use crate::{
    config::SymbolIdx,
    engine::{At, should_emit},
    protocol::{Event, Liquidation},
};

/// Accounts a rayon task plans at once: its own prefetch runs over them (a dozen misses an
/// account, `REFRESH_AHEAD` accounts ahead).
const TASK: usize = 64;

/// The first wave's accounts: a wick's first events wait for one fork-join of this many.
const WAVE_FIRST: usize = 128;

/// The largest wave: the engine thread stores a wave's plans and hands out its events while
/// the workers wait, so waves bound how long the events of the last accounts wait, too.
const WAVE_MAX: usize = 1024;

/// A task's plans: per account its plan, its triggers (`n` entries, in order), and the events
/// of those whose refresh emits, in order.
struct Planned {
    plans: Vec<(RefreshPlan, usize)>,
    triggers: Vec<(SymbolIdx, u32, i64, i128)>,
    events: Vec<Liquidation>,
}

impl FastEngine {
    /// Refreshes the cross accounts `touched` (distinct, none re-armed) with their reading
    /// halves on the rayon workers, wave by wave, and hands out each wave's events (of the
    /// accounts that crossed, in `touched` order) before the next wave: the events and the
    /// state of [`FastEngine::refresh`] called on each in turn. (A message's isolated events
    /// need no refresh: they were emitted during the tick, or [`FastEngine::finish_message`]
    /// hands them out before these.)
    pub(super) fn refresh_in_parallel(
        &mut self,
        touched: &[AccountIdx],
        at: At,
        out: &mut dyn FnMut(Event),
    ) {
        let mut lo = 0;
        while lo < touched.len() {
            let wave = lo.clamp(WAVE_FIRST, WAVE_MAX);
            let hi = (lo + wave).min(touched.len());
            let (list, this) = (&touched[lo..hi], &*self);
            let parts: Vec<Planned> = (0..list.len().div_ceil(TASK))
                .into_par_iter()
                .map(|k| this.plan_task(list, k * TASK..(k * TASK + TASK).min(list.len()), at))
                .collect();
            for p in parts {
                let mut from = 0;
                for (j, &(plan, n)) in p.plans.iter().enumerate() {
                    // The lines the commits a few accounts ahead write (they sit in the caches
                    // of the workers that planned them).
                    if let Some(&(ahead, _)) = p.plans.get(j + REFRESH_AHEAD) {
                        let i = ahead.a.0 as usize;
                        prefetch(&self.accounts.hot[i]);
                        prefetch(&self.accounts.wallet_e8[i]);
                        prefetch(&self.accounts.pairs[i]);
                    }
                    let upto = (from + n + 2 * REFRESH_AHEAD).min(p.triggers.len());
                    for &(s, slot, _, _) in &p.triggers[(from + 2 * REFRESH_AHEAD).min(upto)..upto]
                    {
                        self.cross[s.0 as usize].prefetch_slot(slot as usize);
                    }
                    self.commit_refresh(&plan, &p.triggers[from..from + n]);
                    from += n;
                }
                p.events.into_iter().for_each(|ev| out(Event::Liquidation(ev)));
            }
            lo = hi;
        }
    }

    /// Plans the refreshes of `list[task]` (read-only; the prefetch looks ahead into the rest
    /// of `list`) and builds the events of those that cross:
    /// an event reads the account's true wallet, pairs, positions and the marks, none of which
    /// its refresh or another account's changes, so it equals the one built after the commit.
    fn plan_task(&self, list: &[AccountIdx], task: std::ops::Range<usize>, at: At) -> Planned {
        let mut p = Planned {
            plans: Vec::with_capacity(task.len()),
            triggers: Vec::with_capacity(4 * task.len()),
            events: Vec::new(),
        };
        // The records of the task's first accounts, which no step ahead asked for.
        for &b in list[task.start..task.end].iter().take(3 * REFRESH_AHEAD) {
            let i = b.0 as usize;
            prefetch(&self.accounts.pairs[i]);
            prefetch(&self.accounts.wallet_e8[i]);
            prefetch(&self.accounts.id[i]);
        }
        for j in task {
            let a = list[j];
            self.prefetch_ahead(list, j, true);
            let before = p.triggers.len();
            let plan = self.refresh_plan(a, &mut p.triggers);
            p.plans.push((plan, p.triggers.len() - before));
            if should_emit(plan.was, plan.now, false) {
                p.events.push(self.cross_liquidation(a, at));
            }
        }
        p
    }
}
