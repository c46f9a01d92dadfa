//! The counts and latency distributions a pipeline keeps as it runs: what `replay` prints at
//! the end and what the daemon's `/metrics` reads between two messages.

use std::time::Duration;

use crate::{config::Mode, latency::Latency, protocol::RejectCode};

/// Every reject code of SPEC section 5, in the order of [`Summary::rejects_by_code`].
pub const REJECT_CODES: [RejectCode; 8] = [
    RejectCode::Malformed,
    RejectCode::Invalid,
    RejectCode::UnknownSymbol,
    RejectCode::ModeLocked,
    RejectCode::LeverageExceedsMax,
    RejectCode::WrongMode,
    RejectCode::InsufficientMargin,
    RejectCode::NoMark,
];

/// The index of `code` in [`REJECT_CODES`].
pub fn reject_index(code: RejectCode) -> usize {
    match code {
        RejectCode::Malformed => 0,
        RejectCode::Invalid => 1,
        RejectCode::UnknownSymbol => 2,
        RejectCode::ModeLocked => 3,
        RejectCode::LeverageExceedsMax => 4,
        RejectCode::WrongMode => 5,
        RejectCode::InsufficientMargin => 6,
        RejectCode::NoMark => 7,
    }
}

/// The index of `mode` in [`Summary::liquidations_by_mode`]: cross 0, isolated 1.
pub fn mode_index(mode: Mode) -> usize {
    match mode {
        Mode::Cross => 0,
        Mode::Isolated => 1,
    }
}

/// Counts and latencies of one pipeline run (SPEC section 8's summary, section 9.3's metrics).
#[derive(Clone, Default)]
pub struct Summary {
    /// Lines read, blank ones included, over every connection.
    pub lines: u64,
    /// Non-blank lines: every message, whatever became of it.
    pub messages: u64,
    pub liquidations: u64,
    /// Liquidation events by item mode: `[cross, isolated]` (see [`mode_index`]).
    pub liquidations_by_mode: [u64; 2],
    pub rejects: u64,
    /// Reject events by code, in the order of [`REJECT_CODES`].
    pub rejects_by_code: [u64; 8],
    pub gaps: u64,
    pub duplicates: u64,
    /// `account` events (answers to `query` messages).
    pub accounts: u64,
    /// Control requests that panicked (a bug; their askers got no answer).
    pub control_panics: u64,
    pub elapsed: Duration,
    /// Line read to event handed to the sinks, per event.
    pub event_latency: Latency,
    /// Sender `ts` to event hand-off, per event of a message that carried `ts`.
    pub ts_latency: Latency,
    /// Apply + evaluate time per command.
    pub apply_latency: Latency,
    /// Line read to the engine starting on it, per command: the pipeline's own share of event
    /// latency (batching, queues, wake-ups), apart from the engine's.
    pub queue_latency: Latency,
    /// Time each control request held the engine thread (ingest waited that long).
    pub control_latency: Latency,
}
