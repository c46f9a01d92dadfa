//! What every engine provides: apply one validated [`Command`] and evaluate per SPEC
//! section 6, emitting [`Event`]s.
//!
//! The driver ([`crate::pipeline`]) owns parsing and sequencing; an engine sees only commands
//! that passed the config checks, together with the line and effective seq they came from.

use std::{any::Any, io};

use crate::{
    config::{Mode, SymbolIdx},
    fixed::D8,
    protocol::{AccountReport, Command, Event, Reject, RiskItem},
    state::AccountImage,
};

/// Where a command came from: the line number and the message's effective seq.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct At {
    pub line: u64,
    pub seq: u64,
}

/// What an at-risk answer asks for (SPEC section 9.3, `GET /at-risk`): at most `limit`
/// items, optionally only those touching `symbol` (isolated items of that symbol, and cross
/// accounts holding a non-zero cross position in it) and only those of `mode`. The engine
/// takes any `limit`; the cap of 10,000 is the HTTP layer's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RiskQuery {
    pub limit: usize,
    pub symbol: Option<SymbolIdx>,
    pub mode: Option<Mode>,
}

/// A margin engine.
pub trait Engine {
    /// Applies `cmd` or rejects it. On `Err` the state must be exactly as before: no account
    /// or pair created, nothing changed (SPEC section 5). Both engines get there by checking
    /// `cmd` against `&self` into a plan first, then committing the plan infallibly. On `Ok`
    /// every item whose inputs changed (or that the command re-arms) has been evaluated, and
    /// its liquidation events, plus any `account` event, have been passed to `out`.
    fn apply(&mut self, cmd: &Command, at: At, out: &mut dyn FnMut(Event)) -> Result<(), Reject>;

    /// The body of the SPEC section 7 `account` event that a `query` of `account` would emit
    /// now, with `line` and `seq` from `at` (SPEC section 9.3, `GET /accounts/{id}`): equal
    /// to what `apply(&Command::Query { account }, at, ..)` emits. `None` for an account the
    /// engine does not hold (never mentioned by an applied message). Costs O(the account's
    /// pairs).
    fn account_report(&self, account: u64, at: At) -> Option<AccountReport>;

    /// The items closest to liquidation (SPEC section 9.3, `GET /at-risk`), at most
    /// `query.limit`, filtered by `query.symbol` and `query.mode` (see [`RiskQuery`]).
    ///
    /// An item is a cross account with at least one non-zero cross position, or a non-zero
    /// isolated position. Items whose figures need a missing mark (a cross account with any
    /// unmarked cross symbol, an isolated position whose symbol has no mark) are left out.
    ///
    /// Order, most at risk first:
    /// 1. liquidatable items (margin balance < maintenance) before the others;
    /// 2. a null margin ratio (margin balance <= 0) before any number;
    /// 3. margin ratio (maintenance / margin balance) descending, compared exactly, not
    ///    after `round8` (so two items showing the same rounded ratio keep their exact order);
    /// 4. ties (equal exact ratios, or both null): account id ascending, then the cross item
    ///    before the account's isolated ones, these by the symbol's place in the config.
    ///
    /// (A null ratio means a balance <= 0 below a positive maintenance, so every null item is
    /// liquidatable, and a number above 1 means liquidatable: rules 1 to 3 agree; rule 1 is
    /// kept for clarity.) Both engines give identical answers (`tests/differential.rs`).
    fn at_risk(&self, query: &RiskQuery) -> Vec<RiskItem>;

    /// Accounts held (SPEC section 3): every account a message has named and created.
    fn n_accounts(&self) -> u64;

    /// Non-zero positions held, cross and isolated.
    fn n_positions(&self) -> u64;

    /// An owned copy of the whole state (SPEC section 9.4), taken between two messages on the
    /// engine thread, so that another thread can write it out while ingest goes on. This is
    /// the only part of a snapshot that stops ingest, so it copies columns and does nothing
    /// else. `reuse` is an earlier copy of this engine ([`StateCopy::into_any`]): its buffers
    /// are written over instead of allocating (and faulting in) new ones.
    fn copy_state(&self, reuse: Option<Box<dyn Any + Send>>) -> Box<dyn StateCopy>;

    /// A hint that `cmd` will be applied soon (a few messages from now): the engine may ask
    /// the CPU for the memory `cmd` will touch, `step` saying how far ahead it is. It must not
    /// change any state or any result, and it may be called for a command that is never
    /// applied. The pipeline calls it for the messages ahead in its batch ([`prefetch_steps`]);
    /// issue 14, "random access into per-account records". Default: nothing (the reference
    /// engine).
    fn prefetch(&self, cmd: &Command, step: PrefetchStep) {
        let _ = (cmd, step);
    }
}

/// How far ahead of its apply a command is named to [`Engine::prefetch`]: each step fetches
/// what the step before it brought into the cache, so that no step waits for memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PrefetchStep {
    /// `4 × ahead` messages ahead: what the command alone locates (the account index's slot
    /// for its id, from the id's hash).
    Slot,
    /// `3 × ahead`: what that slot points to (the account's records).
    Record,
    /// `2 × ahead`: what the records point to (the account's pair list).
    Pairs,
    /// `ahead`: what the pair list points to (the account's positions).
    Columns,
}

/// The pipeline's default distance ([`prefetch_ahead`]): measured in `src/fast/README.md`,
/// "Prefetching across messages".
pub const PREFETCH_AHEAD: usize = 1;

/// The distance the pipeline uses: `LIQSCAN_PREFETCH_AHEAD` (0: no hints, for an A/B in one
/// binary), read once per process; unset or not a number: [`PREFETCH_AHEAD`].
pub fn prefetch_ahead() -> usize {
    static AHEAD: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *AHEAD.get_or_init(|| {
        std::env::var("LIQSCAN_PREFETCH_AHEAD")
            .ok()
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(PREFETCH_AHEAD)
    })
}

/// The hints given before each apply at distance `ahead`: (messages ahead, step), the
/// farthest first. Empty when `ahead` is 0.
pub fn prefetch_steps(ahead: usize) -> impl Iterator<Item = (usize, PrefetchStep)> {
    [
        (4, PrefetchStep::Slot),
        (3, PrefetchStep::Record),
        (2, PrefetchStep::Pairs),
        (1, PrefetchStep::Columns),
    ]
    .into_iter()
    .filter(move |_| ahead > 0)
    .map(move |(k, step)| (k * ahead, step))
}

/// An engine's state copied by [`Engine::copy_state`], read on the snapshot writer thread.
pub trait StateCopy: Send {
    /// Accounts held.
    fn n_accounts(&self) -> u64;

    /// The mark of each config symbol, in config order.
    fn marks(&self) -> Vec<Option<D8>>;

    /// Hands `f` each account's image (SPEC section 9.4: wallet, pairs, positions, order
    /// figures, flags), in a deterministic order; stops at `f`'s first error.
    fn each_account(&self, f: &mut dyn FnMut(&AccountImage) -> io::Result<()>) -> io::Result<()>;

    /// Readies the copy's buffers for reuse, off the engine thread (the snapshot writer calls
    /// it once the copy is written): room for the state to grow, with the memory touched, so
    /// that the next [`Engine::copy_state`] into them neither reallocates nor page-faults.
    fn warm(&mut self) {}

    /// The copy as a reusable buffer for the next [`Engine::copy_state`].
    fn into_any(self: Box<Self>) -> Box<dyn Any + Send>;
}

/// The emission rule of SPEC section 6 for one evaluated item.
pub fn should_emit(was_liquidatable: bool, now_liquidatable: bool, rearmed: bool) -> bool {
    now_liquidatable && (!was_liquidatable || rearmed)
}

#[cfg(test)]
mod tests {
    use super::should_emit;

    #[test]
    fn emission_rule() {
        // (was, now, rearmed, emit)
        let table = [
            (false, false, false, false),
            (false, true, false, true), // crossing below
            (true, true, false, false), // still below: not again on every tick
            (true, true, true, true),   // re-armed by the engine acting on the item
            (true, false, true, false), // recovered
            (false, false, true, false),
        ];
        for (was, now, rearmed, emit) in table {
            assert_eq!(should_emit(was, now, rearmed), emit, "{was} {now} {rearmed}");
        }
    }
}

/// The state-rule rejects both engines raise, so that their reasons read the same.
pub mod rejects {
    use std::fmt::Display;

    use crate::protocol::{Reject, RejectCode};

    pub fn isolated_margin_on_cross() -> Reject {
        Reject::new(RejectCode::WrongMode, "isolated_margin given for a cross pair")
    }

    pub fn isolated_margin_missing() -> Reject {
        Reject::new(
            RejectCode::WrongMode,
            "isolated_margin is required for a position on an isolated pair",
        )
    }

    pub fn margin_move_on_cross() -> Reject {
        Reject::new(RejectCode::WrongMode, "isolated_margin message on a cross pair")
    }

    pub fn margin_move_without_position() -> Reject {
        Reject::new(RejectCode::WrongMode, "isolated_margin message without a position")
    }

    pub fn mode_locked(size: impl Display, open_orders: u64) -> Reject {
        Reject::new(
            RejectCode::ModeLocked,
            format!("margin mode is locked: position {size} and {open_orders} open orders"),
        )
    }

    pub fn leverage_exceeds_max(
        leverage: u64,
        max: u32,
        symbol: &str,
        notional: impl Display,
    ) -> Reject {
        // Validation saturates integers past u64 (`protocol`): name what was sent as that.
        let or_more = if leverage == u64::MAX { " or more" } else { "" };
        Reject::new(
            RejectCode::LeverageExceedsMax,
            format!(
                "leverage {leverage}{or_more} exceeds max leverage {max} of {symbol} at notional \
                 {notional}"
            ),
        )
    }

    pub fn no_cross_mark() -> Reject {
        Reject::new(RejectCode::NoMark, "a cross position's symbol has no mark price yet")
    }

    pub fn no_mark(symbol: &str) -> Reject {
        Reject::new(RejectCode::NoMark, format!("{symbol} has no mark price yet"))
    }

    pub fn funding_without_mark(symbol: &str) -> Reject {
        Reject::new(RejectCode::NoMark, format!("funding for {symbol} before its first mark"))
    }

    pub fn withdrawal_exceeds(amount: impl Display, available: impl Display) -> Reject {
        Reject::new(
            RejectCode::InsufficientMargin,
            format!("withdrawal of {amount} exceeds available balance {available}"),
        )
    }

    pub fn addition_exceeds(amount: impl Display, available: impl Display) -> Reject {
        Reject::new(
            RejectCode::InsufficientMargin,
            format!("adding {amount} exceeds available balance {available}"),
        )
    }

    pub fn removal_exceeds_margin(amount: impl Display, margin: impl Display) -> Reject {
        Reject::new(
            RejectCode::InsufficientMargin,
            format!("removing {amount} exceeds isolated margin {margin}"),
        )
    }

    pub fn removal_below_initial(
        amount: impl Display,
        left: impl Display,
        upnl: impl Display,
        im: impl Display,
    ) -> Reject {
        Reject::new(
            RejectCode::InsufficientMargin,
            format!(
                "removing {amount} leaves margin {left} + upnl {upnl} below initial margin {im}"
            ),
        )
    }

    pub fn out_of_range(what: &str, value: impl Display) -> Reject {
        Reject::invalid(format!("{what} would become {value}, outside |x| < 10^15"))
    }
}
