//! The `liqscan` binary as a user drives it (SPEC section 8).

use std::{
    io::Write,
    process::{Command, Stdio},
};

fn liqscan() -> Command {
    Command::new(env!("CARGO_BIN_EXE_liqscan"))
}

fn fixture(p: &str) -> String {
    format!("{}/fixtures/{p}", env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn broken_config_exits_2_naming_symbol_bracket_and_rule() {
    let dir = std::env::temp_dir().join(format!("liqscan-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = dir.join("bad.json");
    std::fs::write(
        &cfg,
        r#"{"default_margin_mode":"cross","default_leverage":20,"symbols":[
        {"symbol":"BTCUSDT","tick_size":"0.1","step_size":"0.001","brackets":[
        {"notional_cap":"50000","max_leverage":125,"mmr":"0.004"},
        {"notional_cap":"40000","max_leverage":100,"mmr":"0.005"}]}]}"#,
    )
    .unwrap();
    let out = liqscan()
        .args(["replay", "--config", cfg.to_str().unwrap(), "-"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("BTCUSDT") && err.contains("bracket 1") && err.contains("strictly increasing"),
        "{err}"
    );
    assert!(out.stdout.is_empty());
}

#[test]
fn replay_from_stdin_with_report() {
    let report = std::env::temp_dir().join(format!("liqscan-report-{}.json", std::process::id()));
    let mut child = liqscan()
        .args(["replay", "--config", &fixture("config/multi_tier.json"), "--report"])
        .arg(&report)
        .arg("-")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let input = std::fs::read(fixture("golden/cross_basics.ndjson")).unwrap();
    child.stdin.take().unwrap().write_all(&input).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert_eq!(stdout.lines().filter(|l| l.contains("\"liquidation\"")).count(), 6);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("liquidations  6"), "{stderr}");
    let r: serde_json::Value = serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
    for key in
        ["messages", "elapsed_s", "messages_per_s", "liquidations", "rejects", "gaps", "duplicates"]
    {
        assert!(r.get(key).is_some(), "report lacks {key}: {r}");
    }
    assert_eq!(r["messages"], 21);
    assert_eq!(r["liquidations"], 6);
    assert!(r["latency_ns"]["event"]["p99"].as_u64().unwrap() > 0);
}

#[test]
fn missing_input_is_an_error_not_a_crash() {
    let out = liqscan()
        .args(["replay", "--config", &fixture("config/multi_tier.json"), "/nonexistent/input"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot open input"));
}

#[test]
fn bundled_configs_load() {
    for name in ["multi_tier", "single_tier", "extremes"] {
        let out = liqscan()
            .args(["replay", "--config", &fixture(&format!("config/{name}.json")), "-"])
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(out.status.success(), "{name}: {}", String::from_utf8_lossy(&out.stderr));
    }
}
