//! The properties the fuzz targets check. Shared, through `#[path]`, by the targets in
//! `fuzz_targets/` and by `tests/fuzz_corpus.rs`, which replays the committed corpus and
//! every regression input under `cargo test` on the stable toolchain.
//!
//! - [`line_path`]: any bytes, cut into lines, go through the whole line path (envelope,
//!   sequencing, validation, apply and evaluate) on both engines, which must agree event for
//!   event and hold the same accounts and pairs; the fast engine's trigger index must then agree with
//!   its books, and a sweep must find nothing the messages missed. The reader's short JSON
//!   scanner must read every line it takes exactly as serde_json does. Nothing may panic.
//! - [`config`]: any bytes go to the config loader; a config it accepts must build both
//!   engines and run a stream touching every symbol's tick, step and brackets alike.
#![allow(dead_code)]

use std::{
    sync::{Arc, OnceLock},
    time::Instant,
};

use liqscan::{
    config::Config,
    engine::{At, Engine},
    fast::FastEngine,
    fixed::D8,
    ingest::{Ingest, Line, Outcome},
    protocol::Event,
    reference::ReferenceEngine,
};

/// Lines per input at most, so one execution stays fast.
const MAX_LINES: usize = 512;

/// The venue the line path runs on: the bundled multi-tier config.
fn venue() -> Arc<Config> {
    static CFG: OnceLock<Arc<Config>> = OnceLock::new();
    CFG.get_or_init(|| {
        Arc::new(
            Config::parse(include_str!("../fixtures/config/multi_tier.json"))
                .expect("the bundled config is valid"),
        )
    })
    .clone()
}

/// The line path on both engines; panics (the fuzzer's finding) when they disagree.
pub fn line_path(data: &[u8]) {
    run_both(venue(), data);
}

/// The config loader; an accepted config must run on both engines alike.
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let Ok(cfg) = Config::parse(text) else { return };
    let cfg = Arc::new(cfg);
    let stream = exercise(&cfg);
    run_both(cfg, stream.as_bytes());
}

/// A stream over the first few symbols of `cfg`: marks at small and large multiples of the
/// tick, positions of one step and of many, across the brackets, a funding, a query.
fn exercise(cfg: &Config) -> String {
    let mut s = String::new();
    for (i, sym) in cfg.symbols.iter().take(4).enumerate() {
        let name = &sym.name;
        let tick = |k: i128| D8(sym.tick_size.0.saturating_mul(k));
        let step = |k: i128| D8(sym.step_size.0.saturating_mul(k));
        let account = i + 1;
        s += &format!("{{\"type\":\"balance\",\"account\":{account},\"wallet\":\"100000\"}}\n");
        s += &format!("{{\"type\":\"mark\",\"symbol\":\"{name}\",\"price\":\"{}\"}}\n", tick(3));
        for (k, lots) in [(1, 1), (2, 1000), (1, -7)] {
            s += &format!(
                "{{\"type\":\"position\",\"account\":{account},\"symbol\":\"{name}\",\"size\":\"{}\",\"entry_price\":\"{}\"}}\n",
                step(lots),
                tick(k)
            );
        }
        for cap in sym.brackets.iter().map(|b| b.cap) {
            // A mark that puts the position's notional near each bracket's cap.
            let lots = step(1000).0.max(1);
            let price = D8((cap.0 * 100_000_000 / lots).max(1));
            let ticks = (price.0 / sym.tick_size.0.max(1)).max(1);
            s += &format!(
                "{{\"type\":\"mark\",\"symbol\":\"{name}\",\"price\":\"{}\"}}\n",
                tick(ticks)
            );
        }
        s += &format!("{{\"type\":\"funding\",\"symbol\":\"{name}\",\"rate\":\"0.0001\"}}\n");
        s += &format!(
            "{{\"type\":\"leverage\",\"account\":{account},\"symbol\":\"{name}\",\"leverage\":{}}}\n",
            cfg.default_leverage
        );
        s += &format!("{{\"type\":\"query\",\"account\":{account}}}\n");
    }
    s
}

/// Events of one engine for one line, in a canonical order (the SPEC leaves the order
/// within a message free), `latency_ns` zeroed.
fn apply_one(engine: &mut dyn Engine, outcome: &Outcome, line: u64) -> Vec<String> {
    let mut events = Vec::new();
    let mut push = |mut e: Event| {
        e.set_latency_ns(0);
        let mut text = String::new();
        e.write_json(&mut text);
        events.push(text);
    };
    match outcome {
        Outcome::Blank | Outcome::Duplicate | Outcome::Rejected { .. } => {}
        Outcome::Command { seq, cmd } => {
            let at = At { line, seq: *seq };
            if let Err(reject) = engine.apply(cmd, at, &mut push) {
                push(Event::Reject { line, seq: Some(*seq), origin_seq: None, reject });
            }
        }
    }
    events.sort();
    events
}

/// Runs `data`'s lines through both engines and asserts every property of [`line_path`].
fn run_both(cfg: Arc<Config>, data: &[u8]) {
    let mut ingest = Ingest::new(cfg.clone());
    let mut reference = ReferenceEngine::new(cfg.clone());
    let mut fast = FastEngine::new(cfg);
    let mut last = At { line: 0, seq: 0 };
    for line in data.split(|&b| b == b'\n').take(MAX_LINES) {
        // The reader's short scanner must read every line it takes as serde_json does.
        if let Err(e) = liqscan::protocol::scanner_disagrees_with_serde(line) {
            panic!("the envelope scanner disagrees with serde_json: {e}");
        }
        let ingested = ingest.line(Line::Bytes(line), Instant::now());
        let (r, f) = (
            apply_one(&mut reference, &ingested.outcome, ingested.line),
            apply_one(&mut fast, &ingested.outcome, ingested.line),
        );
        assert_eq!(
            r,
            f,
            "engines disagree on line {}: {:?}",
            ingested.line,
            String::from_utf8_lossy(line)
        );
        if let Outcome::Command { seq, .. } = ingested.outcome {
            last = At { line: ingested.line, seq };
        }
    }
    assert_eq!(fast.audit(), Ok(()), "the fast engine's index disagrees with its books");
    let mut held = (fast.pairs().collect::<Vec<_>>(), reference.pairs().collect::<Vec<_>>());
    held.0.sort();
    held.1.sort();
    assert!(held.0 == held.1, "the engines hold different (account, symbol) pairs");
    let mut accounts =
        (fast.accounts().collect::<Vec<_>>(), reference.accounts().collect::<Vec<_>>());
    accounts.0.sort();
    assert!(accounts.0 == accounts.1, "the engines hold different accounts");
    let mut swept = Vec::new();
    fast.sweep(last, &mut |e| swept.push(e));
    assert!(swept.is_empty(), "a sweep found items the messages missed: {swept:?}");
}
