//! `--state-dir` for the daemon (SPEC section 9.4): restore at start, a snapshot every
//! `--snapshot-interval` and one at shutdown. The format and the directory are
//! [`crate::state`]'s; this file wires them to the pipeline.
//!
//! A periodic snapshot is a control request: the engine thread answers it between two
//! messages by copying its state ([`crate::engine::Engine::copy_state`]) and asking every
//! sink for delivery of what it was handed; the writer thread waits for that delivery, then
//! writes. So a snapshot at seq N is on disk only once every event of the messages up to N
//! has left the process: after a crash the engine resends from N + 1, and no event is lost
//! (at least once; the repeats carry their seq, SPEC 9.2).

use std::{
    sync::{Arc, atomic::Ordering::Relaxed},
    time::{Duration, Instant},
};

use crossbeam::{
    channel::{Receiver, TrySendError},
    select,
};
use tracing::{info, warn};

use super::EngineChoice;
use crate::{
    config::Config,
    engine::{At, Engine},
    fast::{FastEngine, WICK_SCRATCH},
    pipeline::{Control, Controls, Resume},
    protocol::Event,
    reference::ReferenceEngine,
    state::{
        Image,
        file::{EngineTag, Meta},
        image::{Counters, config_hash},
        store::{self, StateDir, Stats, Writer},
    },
};

/// Why the daemon cannot start from its state directory.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    #[error(
        "snapshot {path} was made under another config (hash {snapshot:016x}, this config {config:016x}); \
         start with --accept-config-change to restore it and evaluate every item under the new config, \
         or point --state-dir elsewhere"
    )]
    ConfigChanged { path: String, snapshot: u64, config: u64 },
    #[error("snapshot {path} cannot be restored under this config: {reason}")]
    Incompatible { path: String, reason: String },
    #[error("cannot use the state directory: {0}")]
    Io(#[from] std::io::Error),
}

/// A daemon's starting point: its engine, and where the pipeline resumes.
pub struct Start {
    pub engine: Box<dyn Engine + Send>,
    pub resume: Option<Resume>,
    /// Liquidation events of a restore under a changed config (sent before the stream).
    pub events: Vec<Event>,
}

/// A new engine of `choice`, as the daemon runs it (the fast engine with its wick lists made
/// ahead, `FastEngine::with_wick_scratch`).
pub(super) fn empty(choice: EngineChoice, cfg: &Arc<Config>) -> Box<dyn Engine + Send> {
    match choice {
        EngineChoice::Fast => {
            Box::new(FastEngine::new(cfg.clone()).with_wick_scratch(WICK_SCRATCH))
        }
        EngineChoice::Reference => Box::new(ReferenceEngine::new(cfg.clone())),
    }
}

/// Restores the newest valid snapshot of `dir`, or starts empty (logged either way).
pub fn restore(
    dir: &StateDir,
    cfg: &Arc<Config>,
    choice: EngineChoice,
    accept_config_change: bool,
    stats: &Stats,
) -> Result<Start, RestoreError> {
    let started = Instant::now();
    dir.remove_leftovers()?;
    let Some(found) = dir.newest_valid()? else {
        info!(dir = %dir.path().display(), "no valid snapshot in the state directory: starting empty");
        return Ok(Start { engine: empty(choice, cfg), resume: None, events: Vec::new() });
    };
    let path = found.path.display().to_string();
    let hash = config_hash(cfg);
    let changed = found.header.config_hash != hash;
    if changed && !accept_config_change {
        return Err(RestoreError::ConfigChanged {
            path,
            snapshot: found.header.config_hash,
            config: hash,
        });
    }
    let image = Image::for_config(found.prelude, found.accounts, found.header.last_seq, cfg)
        .map_err(|reason| RestoreError::Incompatible { path: path.clone(), reason })?;
    let mut events = Vec::new();
    let out = &mut |e: Event| events.push(e);
    let restored: Result<Box<dyn Engine + Send>, String> = match choice {
        EngineChoice::Fast => FastEngine::restore(cfg.clone(), &image, changed, out)
            .map(|e| Box::new(e.with_wick_scratch(WICK_SCRATCH)) as Box<dyn Engine + Send>),
        EngineChoice::Reference => ReferenceEngine::restore(cfg.clone(), &image, changed, out)
            .map(|e| Box::new(e) as Box<dyn Engine + Send>),
    };
    let engine =
        restored.map_err(|reason| RestoreError::Incompatible { path: path.clone(), reason })?;
    stats.newest_unix_ns.store(found.header.created_unix_ns, Relaxed);
    info!(
        file = %path,
        seq = image.at.seq,
        accounts = found.header.n_accounts,
        positions = found.header.n_positions,
        written_by = found.header.engine_name(),
        restore_ms = started.elapsed().as_secs_f64() * 1e3,
        "restored from snapshot"
    );
    if changed {
        warn!(
            file = %path,
            liquidatable = events.len(),
            "the config changed since this snapshot: every item evaluated under the new one, the liquidatable ones reported"
        );
    } else if !events.is_empty() {
        warn!(
            events = events.len(),
            "items whose restored flag disagreed with their state reported"
        );
    }
    let resume = Resume { at: image.at, summary: image.counters.to_summary(), events: Vec::new() };
    Ok(Start { engine, resume: Some(resume), events })
}

/// What a snapshot records about this daemon besides the state.
pub fn meta(cfg: &Config, choice: EngineChoice) -> Meta {
    Meta {
        engine: match choice {
            EngineChoice::Fast => EngineTag::Fast,
            EngineChoice::Reference => EngineTag::Reference,
        },
        config_hash: config_hash(cfg),
        symbols: cfg.symbols.iter().map(|s| s.name.clone()).collect(),
        prelude_line: 0,
        last_seq: 0,
        counters: Counters::default(),
        created_unix_ns: 0,
    }
}

/// Asks for a snapshot every `interval` until `stop` closes or the pipeline stops taking
/// control requests. A request that finds the control queue full is counted as skipped.
pub fn spawn_ticker(
    interval: Duration,
    handle: store::Handle,
    controls: Controls,
    stop: Receiver<()>,
    stats: Arc<Stats>,
) -> std::io::Result<()> {
    std::thread::Builder::new().name("snapshot-ticker".into()).spawn(move || {
        loop {
            select! {
                recv(stop) -> _ => return,
                default(interval) => {}
            }
            let h = handle.clone();
            let take: Control = Box::new(move |engine, point| h.take(engine, point));
            match controls.try_send(take) {
                Ok(()) => {}
                Err(TrySendError::Full(_)) => {
                    stats.skipped.fetch_add(1, Relaxed);
                }
                Err(TrySendError::Disconnected(_)) => return,
            }
        }
    })?;
    Ok(())
}

/// The snapshot at shutdown, after every event reached every healthy sink: waits for the
/// write in progress, then copies and writes on this thread.
///
/// # Errors
/// The write's I/O error (a full disk, a directory that cannot be written).
pub fn final_snapshot(
    writer: &mut Writer,
    engine: &dyn Engine,
    at: At,
    counters: Counters,
    mut meta: Meta,
) -> std::io::Result<()> {
    writer.stop();
    let started = Instant::now();
    let copy = engine.copy_state(writer.take_reuse());
    writer.stats.last_stall_ns.store(started.elapsed().as_nanos() as u64, Relaxed);
    meta.last_seq = at.seq;
    meta.prelude_line = at.line;
    meta.counters = counters;
    meta.created_unix_ns = store::now_unix_ns();
    match writer.dir.write(&*copy, &meta) {
        Ok(w) => {
            store::record(&writer.stats, &w);
            Ok(())
        }
        Err(e) => {
            writer.stats.failed.fetch_add(1, Relaxed);
            let dir = writer.dir.path().display();
            warn!(dir = %dir, error = %e, "the shutdown snapshot could not be written");
            Err(std::io::Error::new(
                e.kind(),
                format!("the shutdown snapshot could not be written in {dir}: {e}"),
            ))
        }
    }
}
