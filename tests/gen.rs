//! `liqscan gen`: deterministic bytes, clean streams without faults, every injected fault
//! rejected with its code, and liquidations that keep flowing through a long replay.

mod common;

use std::{collections::BTreeMap, process::Command, sync::Arc};

use common::*;
use liqscan::{
    config::Config,
    fast::FastEngine,
    generator::{self, Fault, GenOptions},
    replay, synth,
};
use serde_json::Value;

/// Replays `text` on the fast engine: output, summary, and the engine (for its book).
fn replay_fast(cfg: Arc<Config>, text: &str) -> (String, replay::Summary, FastEngine) {
    let mut engine = FastEngine::new(cfg.clone());
    let mut out = Vec::new();
    let summary = replay::replay(cfg, &mut engine, text.as_bytes(), &mut out).unwrap();
    (String::from_utf8(out).unwrap(), summary, engine)
}

fn opts(accounts: u64, symbols: usize, messages: u64, seed: u64) -> GenOptions {
    GenOptions::new(accounts, symbols, messages, seed)
}

#[test]
fn gen_cli_is_deterministic_and_quiet_when_piped() {
    common::long_test("gen_cli_is_deterministic_and_quiet_when_piped");
    let dir = std::env::temp_dir().join(format!("liqscan-gen-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let run = |seed: &str, name: &str| {
        let (cfg, out) = (dir.join(format!("{name}.json")), dir.join(format!("{name}.ndjson")));
        let args = ["gen", "--accounts", "300", "--symbols", "12", "--messages", "20000"];
        let output = Command::new(env!("CARGO_BIN_EXE_liqscan"))
            .args(args)
            .args(["--seed", seed, "--fault-rate", "0.01", "--config-out"])
            .arg(&cfg)
            .arg("--out")
            .arg(&out)
            .output()
            .unwrap();
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        let stderr = String::from_utf8(output.stderr).unwrap();
        assert!(!stderr.contains('\r') && !stderr.contains('\x1b'), "a bar when piped: {stderr}");
        assert!(stderr.contains("liqscan gen:"), "{stderr}");
        (std::fs::read(cfg).unwrap(), std::fs::read(out).unwrap())
    };
    let (cfg_a, a) = run("5", "a");
    let (cfg_b, b) = run("5", "b");
    let (_, c) = run("6", "c");
    assert!(a == b && cfg_a == cfg_b, "same seed, same bytes");
    assert_ne!(a, c, "another seed, another stream");
    // The library writes what the command does.
    let mut o = opts(300, 12, 20_000, 5);
    o.fault_rate = 0.01;
    assert_eq!(generator::generate_string(&o).as_bytes(), &a[..]);
    // Stdout works as well as --out.
    let piped = Command::new(env!("CARGO_BIN_EXE_liqscan"))
        .args(["gen", "--accounts", "300", "--symbols", "12", "--messages", "20000"])
        .args(["--seed", "5", "--fault-rate", "0.01"])
        .output()
        .unwrap();
    assert_eq!(piped.stdout, a);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn without_faults_nothing_is_rejected_and_both_engines_agree() {
    common::long_test("without_faults_nothing_is_rejected_and_both_engines_agree");
    for snapshot in [true, false] {
        let mut o = opts(150, 8, 12_000, 21);
        o.snapshot = snapshot;
        o.mark_ratio = 0.6;
        let text = generator::generate_string(&o);
        // Every message type of SPEC section 5 is there.
        let mut types = BTreeMap::<String, u32>::new();
        for line in text.lines() {
            let v: Value = serde_json::from_str(line).unwrap();
            *types.entry(v["type"].as_str().unwrap().to_owned()).or_default() += 1;
        }
        for t in [
            "mark",
            "marks",
            "balance",
            "transfer",
            "position",
            "margin_mode",
            "leverage",
            "orders",
            "isolated_margin",
            "funding",
            "query",
        ] {
            assert!(types.contains_key(t), "snapshot={snapshot}: no {t} in {types:?}");
        }
        let cfg = Arc::new(synth::config(8));
        let (fast, summary, _) = replay_fast(cfg.clone(), &text);
        assert_eq!((summary.rejects, summary.gaps, summary.duplicates), (0, 0, 0));
        assert!(summary.liquidations > 0);
        let (reference, _) = replay_reference(cfg, text.as_bytes());
        assert_same_events(
            "fast vs reference",
            &canonical(events(&fast)),
            &canonical(events(&reference)),
        );
    }
}

#[test]
fn every_injected_fault_is_rejected_with_its_code() {
    common::long_test("every_injected_fault_is_rejected_with_its_code");
    let mut o = opts(200, 10, 30_000, 9);
    o.fault_rate = 0.05;
    let text = generator::generate_string(&o);
    let cfg = Arc::new(synth::config(10));
    let (fast, summary, _) = replay_fast(cfg.clone(), &text);
    let (reference, _) = replay_reference(cfg, text.as_bytes());
    assert_same_events(
        "fast vs reference",
        &canonical(events(&fast)),
        &canonical(events(&reference)),
    );

    let mut by_line = BTreeMap::<u64, Vec<Value>>::new();
    for e in events(&fast) {
        by_line.entry(e["line"].as_u64().unwrap()).or_default().push(e);
    }
    let mut seen = BTreeMap::<&str, u64>::new();
    for (i, line) in text.lines().enumerate() {
        let n = i as u64 + 1;
        let evs = by_line.remove(&n).unwrap_or_default();
        let kinds: Vec<&str> = evs.iter().map(|e| e["type"].as_str().unwrap()).collect();
        let rejects: Vec<&str> = evs
            .iter()
            .filter(|e| e["type"] == "reject")
            .map(|e| e["code"].as_str().unwrap())
            .collect();
        let tag = Fault::ALL
            .iter()
            .map(|f| f.tag())
            .find(|t| line.contains(&format!(r#""_fault":"{t}""#)));
        match tag {
            None => assert!(
                rejects.is_empty() && !kinds.contains(&"gap"),
                "line {n} has no fault but got {kinds:?}: {line}"
            ),
            Some("duplicate") => assert!(evs.is_empty(), "duplicate line {n} got {kinds:?}"),
            Some("gap") => {
                assert!(kinds.contains(&"gap") && rejects.is_empty(), "line {n}: {kinds:?}")
            }
            Some(code) => {
                assert_eq!(rejects, [code], "line {n}: {line}");
                if code == "malformed" {
                    let r = evs.iter().find(|e| e["type"] == "reject").unwrap();
                    assert!(r["seq"].is_null(), "malformed consumes no seq");
                }
            }
        }
        if let Some(t) = tag {
            *seen.entry(t).or_default() += 1;
        }
    }
    for f in Fault::ALL {
        assert!(seen.get(f.tag()).is_some_and(|&n| n > 0), "no {} fault in {seen:?}", f.tag());
    }
    assert_eq!(summary.duplicates, seen["duplicate"]);
    assert_eq!(summary.gaps, seen["gap"]);
    let injected: u64 = seen.values().sum();
    assert!(
        (injected as f64) > 0.03 * summary.lines as f64,
        "{injected} faults in {} lines",
        summary.lines
    );
}

#[test]
fn a_long_replay_keeps_liquidations_flowing_and_the_book_whole() {
    common::long_test("a_long_replay_keeps_liquidations_flowing_and_the_book_whole");
    let o = opts(1000, 10, 60_000, 11);
    let text = generator::generate_string(&o);
    let cfg = Arc::new(synth::config(10));
    let (out, summary, engine) = replay_fast(cfg, &text);
    assert_eq!(summary.rejects, 0);
    let positions = engine.n_positions() as u64;
    assert!(positions >= o.positions - 5, "the book emptied: {positions} of {}", o.positions);
    let lines: Vec<u64> = events(&out)
        .iter()
        .filter(|e| e["type"] == "liquidation")
        .map(|e| e["line"].as_u64().unwrap())
        .collect();
    let start = text.lines().take_while(|l| !l.contains(r#""type":"mark""#)).count() as u64;
    let span = summary.lines - start;
    for tenth in 0..10 {
        let (lo, hi) = (start + span * tenth / 10, start + span * (tenth + 1) / 10);
        let n = lines.iter().filter(|&&l| l > lo && l <= hi).count();
        assert!(n > 0, "no liquidation in tenth {tenth}");
    }
    assert!((lines.len() as u64) < summary.messages / 4, "{} liquidations", lines.len());
}

#[test]
fn bad_options_are_refused_with_a_reason() {
    let mut o = opts(10, 2, 100, 1);
    o.positions = 21;
    assert!(o.check().unwrap_err().contains("one per (account, symbol)"));
    let mut o = opts(10, 2, 100, 1);
    o.fault_rate = 1.5;
    assert!(o.check().unwrap_err().contains("--fault-rate"));
    let out = Command::new(env!("CARGO_BIN_EXE_liqscan"))
        .args(["gen", "--accounts", "0", "--messages", "10"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--accounts"));
}

#[test]
fn marks_reach_symbols_evenly_unless_they_follow_popularity() {
    let count = |follow: bool| {
        let mut o = opts(100, 20, 20_000, 4);
        o.mark_ratio = 1.0;
        o.marks_follow_popularity = follow;
        let text = generator::generate_string(&o);
        let marks = |s: &str| text.matches(&format!(r#""type":"mark","symbol":"{s}""#)).count();
        (marks("S000"), marks("S019"))
    };
    let (first, last) = count(false);
    assert!(first < 2 * last && last < 2 * first, "even cadence: {first} vs {last}");
    let (first, last) = count(true);
    assert!(first > 5 * last, "Zipf: {first} vs {last}");
}

#[test]
fn progress_names_each_phase_with_its_unit_and_never_goes_back() {
    // (label, snapshot, the phases reported in order)
    for (label, snapshot, want) in [
        ("TC1 snapshot", true, vec![("snapshot", "accounts", 10_000), ("stream", "lines", 40_000)]),
        ("TC2 no snapshot", false, vec![("stream", "lines", 40_000)]),
    ] {
        let mut o = opts(10_000, 4, 40_000, 5);
        o.snapshot = snapshot;
        let mut calls: Vec<(generator::Phase, u64)> = Vec::new();
        let stats =
            generator::generate(&o, std::io::sink(), &mut |p, done| calls.push((p, done))).unwrap();
        let mut phases: Vec<(&str, &str, u64)> =
            calls.iter().map(|(p, _)| (p.name, p.unit, p.total)).collect();
        phases.dedup();
        assert_eq!(phases, want, "{label}");
        for (name, _, total) in &want {
            let done: Vec<u64> =
                calls.iter().filter(|(p, _)| p.name == *name).map(|&(_, d)| d).collect();
            assert_eq!(done.first(), Some(&0), "{label}: {name} starts at 0, named");
            assert!(done.windows(2).all(|w| w[0] <= w[1]), "{label}: {name} went back");
            assert_eq!(done.last(), Some(total), "{label}: {name} ends full");
            assert!(done.len() > 2, "{label}: {name} reports on the way: {done:?}");
        }
        assert!(stats.lines >= 40_000);
    }
}

/// A writer that takes `room` bytes, then fails every write.
struct FailsAfter {
    room: usize,
    taken: Vec<u8>,
}

impl std::io::Write for FailsAfter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.taken.len() + buf.len() > self.room {
            return Err(std::io::Error::other("disk full (test)"));
        }
        self.taken.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn a_failing_output_ends_the_generation_with_its_error() {
    // Lines go to a writer thread in batches: its first failed write must stop the generator
    // (no hang with the generator blocked on a full queue) and be the error returned, and
    // what was written before it is the stream's start, whole lines.
    let o = opts(2_000, 8, 200_000, 3);
    let full = generator::generate_string(&o);
    for room in [0, 1_000, 300_000] {
        let mut out = FailsAfter { room, taken: Vec::new() };
        let err = generator::generate(&o, &mut out, &mut |_, _| {}).unwrap_err();
        assert_eq!(err.to_string(), "disk full (test)", "room {room}");
        assert!(out.taken.len() <= room, "room {room}");
        assert!(full.as_bytes().starts_with(&out.taken), "room {room}: not the stream's start");
        assert!(out.taken.is_empty() || out.taken.ends_with(b"\n"), "room {room}: a cut line");
    }
}
