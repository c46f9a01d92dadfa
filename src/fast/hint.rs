//! The prefetch hint across messages ([`Engine::prefetch`](crate::engine::Engine::prefetch)):
//! the pipeline knows the accounts of the next lines of its batch before the engine applies
//! them, so it names them a few messages ahead and the CPU fetches their memory while the
//! engine works on the message at hand. A hint reads and never writes: no state, no result
//! changes (`hint_tests` drives an engine with random hints and compares its events and
//! state with one without).

use std::sync::atomic::{AtomicU64, Ordering};

use super::{FastEngine, NO_SLOT, prefetch};
use crate::{config::Mode, engine::PrefetchStep, protocol::Command};

/// The account last named to each [`PrefetchStep`]: a hint for the same account as the one
/// before it is skipped (its memory was just asked for, and the message between applied
/// it). A snapshot names each account in a run of lines, so most of its hints are these.
/// Atomics (relaxed: plain loads and stores) only so that the engine stays `Sync`; a hint
/// skipped or not changes no result.
#[derive(Debug, Default)]
pub(super) struct Hinted([AtomicU64; 4]);

impl Hinted {
    /// Whether `id` is not the account last named to `step`; records it.
    fn is_new(&self, step: PrefetchStep, id: u64) -> bool {
        let last = &self.0[step as usize];
        let new = last.load(Ordering::Relaxed) != id;
        if new {
            last.store(id, Ordering::Relaxed);
        }
        new
    }
}

impl FastEngine {
    /// See [`PrefetchStep`]. Account messages, and a funding's symbol records
    /// ([`FastEngine::prefetch_funding`]; marks reach their holders through the books, in
    /// order); an id the engine does not hold yet is skipped, and so is
    /// the account named to the same step just before ([`Hinted`]). Each step reads only
    /// what the step before it fetched, so none waits for memory:
    ///
    /// - [`PrefetchStep::Slot`]: the id's hash, and the account index's slot line for it
    ///   ([`AccountIndex::prefetch_slot`](super::index::AccountIndex)).
    /// - [`PrefetchStep::Record`]: the slot's index (its id not compared:
    ///   [`AccountIndex::candidate`](super::index::AccountIndex)), and at once the account's
    ///   id (for the look-ups that follow), hot record, wallet and pair-list header.
    /// - [`PrefetchStep::Pairs`]: the look-up (warm by now), and the pair list.
    /// - [`PrefetchStep::Columns`]: the look-up and the pair list (warm), and each position
    ///   the message will read: every cross position (a settle reads `fund_from` and
    ///   `lots`, a refresh `lots`, `base` and triggers) and the named symbol's position in
    ///   either mode, via [`Book::prefetch_slot`](super::Book).
    pub(super) fn prefetch_command(&self, cmd: &Command, step: PrefetchStep) {
        if let Command::Funding { symbol, .. } = *cmd {
            return self.prefetch_funding(symbol.0 as usize, step);
        }
        let Some(id) = cmd.account() else { return };
        if !self.hinted.is_new(step, id) {
            return;
        }
        let acc = &self.accounts;
        match step {
            PrefetchStep::Slot => self.index.prefetch_slot(id),
            PrefetchStep::Record => {
                let Some(a) = self.index.candidate(id) else { return };
                let i = a.0 as usize;
                // A tag collision names another held account: harmless for a hint.
                if i < acc.id.len() {
                    prefetch(&acc.id[i]);
                    prefetch(&acc.hot[i]);
                    prefetch(&acc.wallet_e8[i]);
                    prefetch(&acc.pairs[i]);
                }
            }
            PrefetchStep::Pairs => {
                let Some(a) = self.lookup(id) else { return };
                let pairs = &acc.pairs[a.0 as usize];
                if let Some(p) = pairs.first() {
                    prefetch(p);
                    // A pair is 12 bytes: a list may span more lines.
                    prefetch(&pairs[pairs.len() / 2]);
                    prefetch(&pairs[pairs.len() - 1]);
                }
            }
            PrefetchStep::Columns => {
                let Some(a) = self.lookup(id) else { return };
                let named = match *cmd {
                    Command::Position { symbol, .. }
                    | Command::MarginMode { symbol, .. }
                    | Command::Leverage { symbol, .. }
                    | Command::Orders { symbol, .. }
                    | Command::IsolatedMargin { symbol, .. } => Some(symbol),
                    _ => None,
                };
                for p in &acc.pairs[a.0 as usize] {
                    if p.slot != NO_SLOT && (p.mode == Mode::Cross || Some(p.symbol) == named) {
                        self.book(p.mode, p.symbol).prefetch_slot(p.slot as usize);
                    }
                }
            }
        }
    }

    /// A funding of symbol `si` named ahead: its symbol's records are cold (a symbol is
    /// funded every few tens of thousands of messages), and each is found through the one
    /// before it (the books' headers, then their columns), so two steps fetch them in order:
    ///
    /// - [`PrefetchStep::Slot`]: both books' headers, the funding log's record, the scale and
    ///   the mark.
    /// - [`PrefetchStep::Record`]: the log's last entries (the funding appends after them),
    ///   and the first two lines of every column the funding reads (the isolated book's six,
    ///   the cross book's funding guards; [`Book::prefetch_funding_lines`](super::Book)).
    ///
    /// More lines of the columns at the later steps (up to 12 a column) made the messages
    /// before the funding slower than the funding got faster (`examples/apply_kinds` on the
    /// trade-heavy stream: lines over 5 µs up, not down).
    fn prefetch_funding(&self, si: usize, step: PrefetchStep) {
        let (Some(cross), Some(isolated)) = (self.cross.get(si), self.isolated.get(si)) else {
            return;
        };
        match step {
            PrefetchStep::Slot => {
                cross.prefetch_header();
                isolated.prefetch_header();
                prefetch(&self.funding[si]);
                prefetch(&self.scales[si]);
                prefetch(&self.mark_ticks[si]);
            }
            PrefetchStep::Record => {
                let log = &self.funding[si];
                log.c.last().map(prefetch);
                log.split.last().map(prefetch);
                cross.prefetch_funding_lines(0..2);
                isolated.prefetch_funding_lines(0..2);
            }
            PrefetchStep::Pairs | PrefetchStep::Columns => {}
        }
    }
}
