//! What every engine provides: apply one validated [`Command`] and evaluate per SPEC
//! section 6, emitting [`Event`]s.
//!
//! The driver ([`crate::replay`]) owns parsing and sequencing; an engine sees only commands
//! that passed the config checks, together with the line and effective seq they came from.

use crate::protocol::{Command, Event, Reject};

/// Where a command came from: the line number and the message's effective seq.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct At {
    pub line: u64,
    pub seq: u64,
}

/// A margin engine.
pub trait Engine {
    /// Applies `cmd` or rejects it. On `Err` the state must be exactly as before. On `Ok`
    /// every item whose inputs changed (or that the command re-arms) has been evaluated, and
    /// its liquidation events, plus any `account` event, have been passed to `out`.
    fn apply(&mut self, cmd: &Command, at: At, out: &mut dyn FnMut(Event)) -> Result<(), Reject>;
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
