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

#[test]
fn hdr_log_and_charts_from_replay_and_plot() {
    let dir = std::env::temp_dir().join(format!("liqscan-hdr-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (log, svg, again) = (dir.join("lat.hlog"), dir.join("lat.svg"), dir.join("again.svg"));
    let report = dir.join("report.json");
    let out = liqscan()
        .args(["replay", "--config", &fixture("gen/snapshot_mix.config.json"), "--hdr-out"])
        .arg(&log)
        .arg("--plot")
        .arg(&svg)
        .arg("--report")
        .arg(&report)
        .arg(fixture("gen/snapshot_mix.ndjson"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // The log reads back with the counts of the report.
    let r: serde_json::Value = serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
    let text = std::fs::read(&log).unwrap();
    assert!(text.starts_with(b"#[liqscan"), "a commented HdrHistogram log header");
    let series = liqscan::latency::read_log(&text).unwrap();
    let names: Vec<&str> = series.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["event", "apply"], "ts_to_event is empty here: the stream has no ts");
    assert_eq!(series[0].1.summary().count, r["latency_ns"]["event"]["count"].as_u64().unwrap());
    assert_eq!(series[1].1.summary().count, r["messages"].as_u64().unwrap());
    assert_eq!(series[1].1.summary().p99, r["latency_ns"]["apply"]["p99"].as_u64().unwrap());
    let chart = std::fs::read_to_string(&svg).unwrap();
    assert!(chart.starts_with("<svg") && chart.contains("apply  n="), "{chart}");
    // `liqscan plot` draws the same log; a file that is not a log is refused with a reason.
    let plot = liqscan().arg("plot").arg(&log).arg("--out").arg(&again).output().unwrap();
    assert!(plot.status.success(), "{}", String::from_utf8_lossy(&plot.stderr));
    assert!(std::fs::read_to_string(&again).unwrap().contains("event  n="));
    let bad = liqscan()
        .args(["plot", &fixture("gen/snapshot_mix.config.json"), "--out"])
        .arg(&again)
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("not an HdrHistogram interval log"));
    std::fs::remove_dir_all(&dir).unwrap();
}
