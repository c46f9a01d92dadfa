//! liqscan: a liquidation scanner for perpetual-futures exchanges.
//!
//! `docs/` is the user reference. "SPEC section N" in the docs below names the section of
//! the project's specification that an item implements.
//!
//! # Layout
//!
//! Data flows one way, top to bottom:
//!
//! | module | owns | SPEC |
//! |---|---|---|
//! | [`fixed`] | exact parsing and formatting of wire decimals (`D8`, never `f64`) | 1 |
//! | [`config`] | the risk config: symbols, brackets, derived maintenance amounts | 2 |
//! | [`protocol`] | input envelopes, validation into `Command`s, reject codes, events, their exact `Amount`s and JSON | 5, 7 |
//! | [`ingest`] | bounded line reading, line numbers, seq / duplicate / gap rules | 6 |
//! | [`exact`] | the unbounded exact decimal of the reference engine, `ceil8`, `round8` | 1, 4 |
//! | [`margin`] | the margin arithmetic: notional, upnl, brackets, mm, im, ratio, liquidation price, funding | 4 |
//! | [`engine`] | the `Engine` trait (each command checked, then committed: a reject leaves no trace; account reports and at-risk lists, the read side the daemon's HTTP serves; `copy_state`, the owned copy a snapshot writes) and the emission rule | 5, 6, 9.3, 9.4 |
//! | [`report`] | exact figures of an account view: totals, available, event contents in O(positions); the at-risk order | 4, 7, 9.3 |
//! | [`reference`](mod@reference) | the reference engine: state of section 3, check + commit + evaluate, exact and plain; its snapshot copy and restore in `reference/snapshot.rs` | 3–6, 9.4 |
//! | [`fast`] | the fast engine: struct-of-arrays books, i128 fixed point, trigger index, parallel sweeps, keyed account index addressable from the hash in `fast/index.rs`, the prefetch hints across messages in `fast/hint.rs`, check + commit in `fast/commands.rs`, at-risk selection in `fast/risk.rs`, snapshot copy and restore in `fast/snapshot.rs`, columns that grow by `mremap` in `fast/column.rs`, the incrementally grown funds side table in `fast/funds.rs`, growth work handed to other threads (next tables allocated ahead, old ones freed) in `fast/ahead.rs`, a wick's refreshes planned on the workers (off by default) in `fast/wick.rs`, a fired cross position re-triggered alone while its account's reserve covers it (`FastEngine::retrigger_alone`, tests in `fast/retrigger_tests.rs`), a wick's isolated items emitted during its scan and its likeliest accounts refreshed first (`FastEngine::tick_isolated`, `FastEngine::rank`; tests in `fast/wick_tests.rs` and the `fast` unit tests), a funding's isolated pass left pending while no payment can flip a position (`book::PendingPass`), and the lazy funding's deferred work after later messages (`FastEngine::settle_deferred`) (see `src/fast/README.md`) | 3–6, 9.3, 9.4 |
//! | [`latency`] | HdrHistogram latency distributions | 7, 8 |
//! | [`pipeline`] | the one pipeline of every driver: `Source` → reader thread → engine thread (control requests between two batches; it parks on a doorbell that the reader and the askers ring, `pipeline/wait.rs`) → `Sink`s, chunks of events in pooled lists (see `src/pipeline/README.md`) | 6, 8, 9 |
//! | [`replay`] | `liqscan replay`: one stream through the pipeline to stdout, summary and report | 8 |
//! | [`state`] | snapshots: the engine-independent image, the file format (header, postcard body, xxh3 checksums), the state directory (atomic writes, the newest 3 kept, restore of the newest valid one) and the writer thread; `liqscan snapshot inspect` | 9.4 |
//! | [`daemon`] | `liqscan run`: stdin or `--listen` engine input, subscribers, events file, HTTP (`/metrics`, `/health`, `/accounts`, `/at-risk`), `--state-dir` restore and snapshots; the only user of tokio (with `shard`), axum, prometheus-client, tracing-subscriber (see `docs/operations.md`) | 9 |
//! | [`shard`] | shards on NATS JetStream: the routing of a stream into N shards (`shard/route.rs`, pure), `liqscan publish` (`shard/publish.rs`), a shard daemon's JetStream input as a pipeline `Source` of sequenced messages and its events as a `Sink` (`shard/consume.rs`); the only user of async-nats | 10 |
//! | [`feed`] | `liqscan feed`: the engine's side of a daemon connection (hello, resend, pacing, reconnect), and a timing subscriber | 9.1, 9.2 |
//! | [`cpus`] | CPU affinity: the fast engine's growth helpers kept off the engine thread's CPU (`LIQSCAN_HELPERS_OFF_ENGINE_CPU=1`, a measuring knob, off by default) | — |
//! | [`heap`] | the allocator settings of the binary: mimalloc keeps freed memory (no purge on the engine thread) | — |
//! | [`chart`] | the latency percentile-spectrum chart (SVG) | — |
//! | [`synth`] | deterministic synthetic configs, books, mark walks | — |
//! | [`generator`] | `liqscan gen`: streaming, engine-played message streams with injected faults | 8 |
//!
//! bytes → [`ingest::LineReader`] → [`protocol::parse_envelope`] → [`ingest::Sequencer`] →
//! [`protocol::validate`] → [`engine::Engine::apply`] → [`protocol::Event`] →
//! [`pipeline::Sink`]. Layers point down only: `daemon` and `replay` drive `pipeline`, which
//! drives an `engine`; the engines know nothing of threads, sockets or async.

pub mod chart;
pub mod config;
pub mod cpus;
pub mod daemon;
pub mod engine;
pub mod exact;
pub mod fast;
pub mod feed;
pub mod fixed;
pub mod generator;
pub mod heap;
pub mod ingest;
pub mod latency;
pub mod margin;
pub mod pipeline;
pub mod protocol;
pub mod reference;
pub mod replay;
pub mod report;
pub mod shard;
pub mod state;
pub mod synth;
