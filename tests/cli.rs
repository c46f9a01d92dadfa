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
    std::fs::remove_dir_all(&dir).unwrap();
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
    assert_eq!(r["engine"], "fast");
    std::fs::remove_file(&report).unwrap();
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
    assert!(
        String::from_utf8_lossy(&bad.stderr)
            .contains("is not part of an HdrHistogram interval log")
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

// ---- output that cannot be written -------------------------------------------------------

/// A stream whose reader is already gone: every write to it fails with a broken pipe, as a
/// pipe's does once its reader has exited (a socket pair, since `std::io::pipe` is newer
/// than the crate's minimum Rust).
fn broken_pipe() -> Stdio {
    let (ours, theirs) = std::os::unix::net::UnixStream::pair().unwrap();
    drop(ours);
    Stdio::from(std::os::fd::OwnedFd::from(theirs))
}

/// `/dev/full`: opens, and every write fails with "no space left on device".
fn full() -> Stdio {
    Stdio::from(std::fs::OpenOptions::new().write(true).open("/dev/full").unwrap())
}

/// Runs `args` with the given stdout and stderr (piped when `None`, so they can be read);
/// returns the exit code and what was read of stdout and stderr.
fn run_with(args: &[&str], stdout: Option<Stdio>, stderr: Option<Stdio>) -> (i32, String, String) {
    let out = liqscan()
        .args(args)
        .stdin(Stdio::null())
        .stdout(stdout.unwrap_or_else(Stdio::piped))
        .stderr(stderr.unwrap_or_else(Stdio::piped))
        .output()
        .unwrap();
    let code = out.status.code().expect("exited, not killed by a signal");
    assert_ne!(code, 101, "{args:?} panicked");
    let text = |b: Vec<u8>| String::from_utf8_lossy(&b).into_owned();
    let (stdout, stderr) = (text(out.stdout), text(out.stderr));
    assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
    (code, stdout, stderr)
}

fn replay_args<'a>(extra: &[&'a str]) -> Vec<&'a str> {
    let cfg: &'static str = Box::leak(fixture("config/multi_tier.json").into_boxed_str());
    let input: &'static str = Box::leak(fixture("golden/cross_basics.ndjson").into_boxed_str());
    let mut args = vec!["replay", "--config", cfg];
    args.extend_from_slice(extra);
    args.push(input);
    args
}

#[test]
fn a_broken_stderr_changes_no_exit_status_and_loses_no_event() {
    // The summary cannot be printed; the events all go out and the exit status is 0.
    let (code, stdout, _) = run_with(&replay_args(&[]), None, Some(broken_pipe()));
    assert_eq!(code, 0);
    assert_eq!(stdout.lines().filter(|l| l.contains("\"liquidation\"")).count(), 6);
    // A bad config is still exit 2, and a missing input still 1.
    let bad = fixture("golden/cross_basics.ndjson");
    let (code, _, _) = run_with(&["replay", "--config", &bad, "-"], None, Some(broken_pipe()));
    assert_eq!(code, 2);
    let cfg = fixture("config/multi_tier.json");
    let args = ["replay", "--config", &cfg, "/nonexistent/input"];
    assert_eq!(run_with(&args, None, Some(broken_pipe())).0, 1);
    // A usage error is 2, help is 0.
    assert_eq!(run_with(&["replay"], None, Some(broken_pipe())).0, 2);
    assert_eq!(run_with(&["--help"], None, Some(broken_pipe())).0, 0);
    // gen and plot alike.
    let dir = std::env::temp_dir().join(format!("liqscan-stderr-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (stream, again) = (dir.join("s.ndjson"), dir.join("again.ndjson"));
    let gen_args = ["gen", "--accounts", "20", "--symbols", "2", "--messages", "200", "--out"];
    let with_out = |path: &std::path::Path| {
        let mut args = gen_args.to_vec();
        args.push(path.to_str().unwrap());
        args.into_iter().map(str::to_owned).collect::<Vec<String>>()
    };
    let args = with_out(&stream);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    assert_eq!(run_with(&args, None, Some(broken_pipe())).0, 0);
    let args = with_out(&again);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (code, _, stderr) = run_with(&args, None, None);
    assert_eq!(code, 0, "{stderr}");
    let written = std::fs::read(&stream).unwrap();
    assert!(written.len() > 1000, "the whole stream is written");
    assert_eq!(written, std::fs::read(&again).unwrap());
    let plot = ["plot", &bad, "--out", "/dev/null"];
    assert_eq!(run_with(&plot, None, Some(broken_pipe())).0, 1);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn output_that_cannot_be_written_is_an_error_with_a_message() {
    let gen_args = ["gen", "--accounts", "20", "--symbols", "2", "--messages", "200"];
    // (label, args, stdout, what stderr must say)
    let cases: Vec<(&str, Vec<&str>, Stdio, &str)> = vec![
        ("replay, stdout broken", replay_args(&[]), broken_pipe(), "Broken pipe"),
        ("replay, stdout full", replay_args(&[]), full(), "No space left"),
        (
            "replay --report full",
            replay_args(&["--report", "/dev/full"]),
            Stdio::null(),
            "cannot write report /dev/full",
        ),
        (
            "replay --hdr-out full",
            replay_args(&["--hdr-out", "/dev/full"]),
            Stdio::null(),
            "cannot write /dev/full",
        ),
        (
            "replay --plot full",
            replay_args(&["--plot", "/dev/full"]),
            Stdio::null(),
            "cannot write chart /dev/full",
        ),
        ("gen, stdout broken", gen_args.to_vec(), broken_pipe(), "Broken pipe"),
        ("gen, stdout full", gen_args.to_vec(), full(), "No space left"),
        ("help, stdout full", vec!["--help"], full(), "cannot write to standard output"),
        (
            "version, stdout broken",
            vec!["--version"],
            broken_pipe(),
            "cannot write to standard output",
        ),
    ];
    for (label, args, stdout, want) in cases {
        let (code, _, stderr) = run_with(&args, Some(stdout), None);
        assert_eq!(code, 1, "{label}: {stderr}");
        assert!(stderr.contains(want), "{label}: {stderr}");
    }
    // gen's config and plot's chart alike.
    let mut args = gen_args.to_vec();
    args.extend(["--config-out", "/dev/full"]);
    let (code, _, stderr) = run_with(&args, Some(Stdio::null()), None);
    assert_eq!(code, 1);
    assert!(stderr.contains("cannot write config /dev/full"), "{stderr}");
    let dir = std::env::temp_dir().join(format!("liqscan-full-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let log = dir.join("lat.hlog");
    let (code, _, stderr) =
        run_with(&replay_args(&["--hdr-out", log.to_str().unwrap()]), Some(Stdio::null()), None);
    assert_eq!(code, 0, "{stderr}");
    let (code, _, stderr) =
        run_with(&["plot", log.to_str().unwrap(), "--out", "/dev/full"], None, None);
    assert_eq!(code, 1);
    assert!(stderr.contains("cannot write chart /dev/full"), "{stderr}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn plot_of_a_file_that_is_not_a_log_says_so_in_words() {
    let cfg = fixture("config/multi_tier.json");
    let (code, _, stderr) = run_with(&["plot", &cfg, "--out", "/dev/null"], None, None);
    assert_eq!(code, 1);
    assert!(
        stderr.contains("multi_tier.json: line 1 is not part of an HdrHistogram interval log"),
        "{stderr}"
    );
    assert!(!stderr.contains("ParseError"), "no Rust debug value: {stderr}");
}

#[test]
fn gen_writes_its_config_next_to_out_or_warns_that_it_did_not() {
    let dir = std::env::temp_dir().join(format!("liqscan-gencfg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let stream = dir.join("stream.ndjson");
    let gen_args = ["gen", "--accounts", "20", "--symbols", "3", "--messages", "100"];
    let mut args = gen_args.to_vec();
    args.extend(["--out", stream.to_str().unwrap()]);
    let (code, _, stderr) = run_with(&args, None, None);
    assert_eq!(code, 0, "{stderr}");
    let written = dir.join("stream.config.json");
    assert!(stderr.contains("config written to") && stderr.contains("stream.config.json"));
    let cfg = liqscan::config::Config::load(&written).unwrap();
    assert_eq!(cfg.symbols.len(), 3);
    // The config next to the stream replays it with no reject.
    let (code, _, stderr) = run_with(
        &["replay", "--config", written.to_str().unwrap(), stream.to_str().unwrap()],
        Some(Stdio::null()),
        None,
    );
    assert_eq!(code, 0, "{stderr}");
    assert!(stderr.contains("rejects       0"), "{stderr}");
    // On stdout with no --config-out: a warning, and no file.
    let (code, stdout, stderr) = run_with(&gen_args, None, None);
    assert_eq!(code, 0);
    assert!(stdout.lines().count() > 100);
    assert!(stderr.contains("warning: no config written"), "{stderr}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn the_summary_says_what_it_counts() {
    let (code, _, stderr) = run_with(&replay_args(&[]), Some(Stdio::null()), None);
    assert_eq!(code, 0);
    // cross_basics.ndjson holds two queries: each answer is one `account` event.
    assert!(stderr.contains("account events 2"), "{stderr}");
}

#[test]
fn endless_config_and_log_files_are_refused_not_read_into_memory() {
    // /dev/zero never ends: a size cap must stop the read (before, RSS grew past 5 GB).
    let out = liqscan()
        .args(["replay", "--config", "/dev/zero", &fixture("golden/cross_basics.ndjson")])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("over 256 MiB"));
    let svg = std::env::temp_dir().join(format!("liqscan-zero-{}.svg", std::process::id()));
    let out =
        liqscan().args(["plot", "/dev/zero", "--out", svg.to_str().unwrap()]).output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("over 256 MiB"));
    assert!(!svg.exists());
}

/// A pace slower than one line every 1,000 s is refused (exit 2, in words): `--rate 1e-300`
/// put the second line's due time past what a duration holds, and panicked.
#[test]
fn a_rate_too_slow_to_schedule_is_refused_not_a_panic() {
    let stream = fixture("golden/cross_basics.ndjson");
    let config = fixture("config/multi_tier.json");
    for rate in ["1e-300", "1e-19", "0.0009"] {
        let replay = liqscan()
            .args(["replay", "--rate", rate, "--config", &config, &stream])
            .output()
            .unwrap();
        let feed = liqscan()
            .args(["feed", "--to", "127.0.0.1:9", "--rate", rate, &stream])
            .output()
            .unwrap();
        for (what, out) in [("replay", replay), ("feed", feed)] {
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(2), "{what} --rate {rate}: {stderr}");
            assert!(stderr.contains("below 0.001 lines per second"), "{what} {rate}: {stderr}");
            assert!(!stderr.contains("panicked"), "{what} {rate}: {stderr}");
        }
    }
}

/// `feed --hdr-out` and `--plot` draw the latencies its subscriber measured: without
/// `--events` there are none, and the flag is refused (exit 2) instead of writing an empty
/// histogram without a word.
#[test]
fn feed_latency_outputs_need_events() {
    let stream = fixture("golden/cross_basics.ndjson");
    for flag in ["--hdr-out", "--plot"] {
        let out = liqscan()
            .args(["feed", "--to", "127.0.0.1:9", flag, "/tmp/never-written", &stream])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{flag}: {stderr}");
        assert!(stderr.contains("--events"), "{flag}: {stderr}");
    }
}

/// `feed` reads a file, which it can read again to resend after a reconnect: `-` (stdin) is a
/// usage error (exit 2) with the reason, before any connection is tried.
#[test]
fn feed_refuses_stdin() {
    let out = liqscan().args(["feed", "--to", "127.0.0.1:9", "-"]).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("feed reads a file, not stdin"), "{stderr}");
    // A close timeout of zero was no socket timeout at all: a wait without end.
    let stream = fixture("golden/cross_basics.ndjson");
    let args = ["feed", "--to", "127.0.0.1:9", "--close-timeout", "0s", &stream];
    let out = liqscan().args(args).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("above zero"), "{stderr}");
}

/// An output whose folder does not exist is refused at the start, before the input is read
/// (a long replay failed only at its end): here the input is a stdin that never ends.
#[test]
fn an_output_in_a_missing_folder_is_refused_before_the_input() {
    let config = fixture("config/multi_tier.json");
    for flag in ["--report", "--hdr-out", "--plot"] {
        let mut child = liqscan()
            .args(["replay", "--config", &config, flag, "/nonexistent-liqscan/x", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while child.try_wait().unwrap().is_none() && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let finished = child.try_wait().unwrap().is_some();
        let _ = child.kill();
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(finished, "{flag}: still reading its input after 10 s");
        assert_eq!(out.status.code(), Some(1), "{flag}: {stderr}");
        assert!(stderr.contains("/nonexistent-liqscan is not a folder"), "{flag}: {stderr}");
    }
}
