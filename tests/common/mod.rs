//! Helpers shared by the integration tests: replay a stream, normalize events, and diff
//! event streams showing the first difference.
#![allow(dead_code)]

use std::{path::PathBuf, sync::Arc};

use liqscan::{config::Config, reference::ReferenceEngine, replay};
use serde_json::Value;

/// Says on the terminal that a long test is running, so a quiet `cargo test` does not look
/// stuck. It writes to the process's stderr directly: libtest captures only the `print!`
/// family of macros, so this line shows even when the test passes (and `cargo test -q`
/// stays one line per long test).
pub fn long_test(name: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "    (long test running: {name})");
}

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn config(name: &str) -> Arc<Config> {
    Arc::new(Config::load(&root().join("fixtures/config").join(format!("{name}.json"))).unwrap())
}

/// Replays `input` on the reference engine; returns the output text and the summary.
pub fn replay_reference(cfg: Arc<Config>, input: &[u8]) -> (String, replay::Summary) {
    let mut engine = ReferenceEngine::new(cfg.clone());
    let mut out = Vec::new();
    let summary = replay::replay(cfg, &mut engine, input, &mut out).unwrap();
    (String::from_utf8(out).unwrap(), summary)
}

/// Events of a replay as JSON values, `latency_ns` removed (it varies run to run).
pub fn events(text: &str) -> Vec<Value> {
    text.lines()
        .map(|l| {
            let mut v: Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"));
            v.as_object_mut().unwrap().remove("latency_ns");
            v
        })
        .collect()
}

/// Events in a canonical order: by line, then (within a line, where the SPEC allows any
/// order) by their text.
pub fn canonical(mut evs: Vec<Value>) -> Vec<String> {
    evs.sort_by_key(|v| (v["line"].as_u64().unwrap(), v.to_string()));
    evs.iter().map(Value::to_string).collect()
}

/// Asserts two event streams are equal, printing the first difference with context.
pub fn assert_same_events(what: &str, got: &[String], want: &[String]) {
    if got == want {
        return;
    }
    let i = got.iter().zip(want).position(|(a, b)| a != b).unwrap_or(got.len().min(want.len()));
    panic!(
        "{what}: event streams differ at event {i} (got {} events, want {})\n  got:  {}\n  want: {}\n  before: {}",
        got.len(),
        want.len(),
        got.get(i).map_or("<end>", String::as_str),
        want.get(i).map_or("<end>", String::as_str),
        i.checked_sub(1).and_then(|j| want.get(j)).map_or("<start>", String::as_str),
    );
}
