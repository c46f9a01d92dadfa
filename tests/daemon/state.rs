//! `--state-dir` (SPEC section 9.4) on the real binary: a restored daemon answers as the
//! live one did and resumes from the hello; corrupt snapshots are skipped for older ones; a
//! snapshot under another config is refused, or re-evaluated with `--accept-config-change`;
//! and kill -9 at random moments loses no liquidation event (the crash test; the full
//! 100-cycle run is `scripts/crashtest.sh`).

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use liqscan::{
    engine::{At, Engine},
    fast::FastEngine,
    protocol::Event,
    state::{Image, store},
};
use serde_json::Value;

use super::{common::long_test, effective_seqs, harness::*, load_config, new_engine};

const STREAM: &str = "gen/snapshot_mix.ndjson";
const CONFIG: &str = "gen/snapshot_mix.config.json";

/// A config by its path (not under fixtures/).
fn config_at(path: &str) -> std::sync::Arc<liqscan::config::Config> {
    std::sync::Arc::new(liqscan::config::Config::load(Path::new(path)).unwrap())
}

fn lines_of(input: &[u8]) -> Vec<&[u8]> {
    input.split_inclusive(|&b| b == b'\n').collect()
}

/// Every account id a stream names.
fn account_ids(input: &[u8]) -> BTreeSet<u64> {
    lines_of(input)
        .iter()
        .filter_map(|l| serde_json::from_slice::<Value>(l).ok())
        .filter_map(|v| v["account"].as_u64())
        .collect()
}

fn state_args<'a>(config: &'a str, dir: &'a str, engine: &'a str) -> Vec<&'a str> {
    vec![
        "--config",
        config,
        "--engine",
        engine,
        "--state-dir",
        dir,
        "--listen",
        "127.0.0.1:0",
        "--http",
        "127.0.0.1:0",
    ]
}

fn message(v: &Value) -> &str {
    v["message"].as_str().unwrap_or("")
}

/// The `/accounts/{id}` bodies of `ids` (status, body), `latency_ns` removed.
fn accounts_over_http(http: std::net::SocketAddr, ids: &BTreeSet<u64>) -> BTreeMap<u64, String> {
    ids.iter()
        .map(|&id| {
            let (status, body) = http_get(http, &format!("/accounts/{id}"));
            let mut v: Value = serde_json::from_str(&body).unwrap();
            v.as_object_mut().unwrap().remove("latency_ns");
            (id, format!("{status} {v}"))
        })
        .collect()
}

/// Runs a daemon on `dir`, sends `lines`, waits for them to be applied, stops it with
/// SIGTERM (which writes the shutdown snapshot); returns the seq it covers and the
/// `/accounts` answers of `ids` just before the stop.
fn run_and_stop(
    args: &[&str],
    lines: &[&[u8]],
    last_seq: u64,
    ids: &BTreeSet<u64>,
) -> BTreeMap<u64, String> {
    let mut d = Daemon::start(args, Input::Null);
    let http = d.addr("http");
    let mut conn = EngineConn::connect(d.addr("engine"));
    conn.send(&lines.concat());
    wait_health(http, "every line applied", |h| h["last_seq"] == last_seq);
    let live = accounts_over_http(http, ids);
    d.sigterm();
    assert!(d.wait_exit().success());
    let written = d.wait_log("the shutdown snapshot", |v| message(v) == "snapshot written");
    let _ = written;
    assert!(
        d.log().iter().any(|v| message(v) == "snapshot written" && v["seq"] == last_seq),
        "the shutdown snapshot covers seq {last_seq}: {:#?}",
        d.log()
    );
    live
}

/// The newest snapshot of `dir`, restored in this process on the fast engine.
fn restore_in_process(dir: &str, config: &str) -> (FastEngine, At) {
    let cfg = load_config(config);
    let newest = store::StateDir::open(Path::new(dir)).unwrap().snapshots().unwrap()[0].clone();
    let (header, prelude, accounts) = store::read(&newest).unwrap();
    let image = Image::for_config(prelude, accounts, header.last_seq, &cfg).unwrap();
    let mut events = Vec::new();
    let engine = FastEngine::restore(cfg, &image, false, &mut |e| events.push(e)).unwrap();
    assert!(events.is_empty(), "same config: nothing to report: {events:?}");
    (engine, image.at)
}

#[test]
fn a_restored_daemon_answers_as_the_live_one_did_and_resumes_after_the_hello() {
    long_test("a_restored_daemon_answers_as_the_live_one_did_and_resumes_after_the_hello");
    let input = std::fs::read(fixture(STREAM)).unwrap();
    let lines = lines_of(&input);
    let seqs = effective_seqs(CONFIG, &input);
    let ids = account_ids(&input);
    let k = 6000;
    let seq_k = seqs[k - 1].unwrap();
    for engine in ["fast", "reference"] {
        let tmp = TempDir::new(&format!("restore-{engine}"));
        let dir = tmp.path("state");
        let config = fixture(CONFIG);
        let args = state_args(&config, &dir, engine);
        let live = run_and_stop(&args, &lines[..k], seq_k, &ids);

        // The fast engine rebuilt from the snapshot passes its own audit and reports every
        // account as the live daemon did.
        let (restored, at) = restore_in_process(&dir, CONFIG);
        restored.audit().expect("a restored fast engine passes its audit");
        assert_eq!(at.seq, seq_k);
        for &id in &ids {
            let body = match restored.account_report(id, at) {
                Some(r) => {
                    let mut text = String::new();
                    Event::Account(r).write_json(&mut text);
                    let mut v: Value = serde_json::from_str(text.trim()).unwrap();
                    v.as_object_mut().unwrap().remove("latency_ns");
                    format!("200 {v}")
                }
                None => live[&id].clone(), // never mentioned: 404 on both sides
            };
            assert_eq!(body, live[&id], "{engine}: account {id} restored in process");
        }

        // The restarted daemon: the seq in the log, /health, the metrics and the hello;
        // every account answered as before the stop.
        let mut d = Daemon::start(&args, Input::Null);
        let http = d.addr("http");
        let restored_log = d.wait_log("restored", |v| message(v) == "restored from snapshot");
        assert_eq!(restored_log["seq"], seq_k, "{engine}");
        let h = wait_health(http, "serving", |h| h["status"] == "ok");
        assert_eq!(h["last_seq"], seq_k, "{engine}: /health");
        let m = scrape(http);
        assert_eq!(m.get("liqscan_last_seq", &[]), seq_k as f64, "{engine}");
        // /health counts messages as the metric does: from the restored count on.
        let restored_messages = m.get("liqscan_messages_total", &[]);
        assert!(restored_messages > 0.0, "{engine}: the restored count");
        assert_eq!(h["messages"].as_f64(), Some(restored_messages), "{engine}: /health messages");
        let age = m.get("liqscan_snapshot_age_seconds", &[]);
        assert!((0.0..120.0).contains(&age), "{engine}: snapshot age {age}");
        assert_eq!(accounts_over_http(http, &ids), live, "{engine}: /accounts after restore");
        let mut conn = EngineConn::connect(d.addr("engine"));
        assert_eq!(conn.last_seq(), seq_k, "{engine}: the hello resumes after the snapshot");
        // The rest of the stream, from the hello on, ends where an uninterrupted run does.
        let from = seqs.iter().position(|s| s.is_some_and(|s| s > seq_k)).unwrap();
        conn.send(&lines[from..].concat());
        let last = seqs.iter().rev().find_map(|s| *s).unwrap();
        wait_health(http, "the rest applied", |h| h["last_seq"] == last);
        d.sigterm();
        assert!(d.wait_exit().success());
    }
}

/// Writes snapshots at three seqs into `dir` (three runs, each stopped with SIGTERM).
fn three_snapshots(dir: &str) -> Vec<(PathBuf, u64)> {
    let input = std::fs::read(fixture(STREAM)).unwrap();
    let lines = lines_of(&input);
    let seqs = effective_seqs(CONFIG, &input);
    let config = fixture(CONFIG);
    let args = state_args(&config, dir, "fast");
    let none = BTreeSet::new();
    let mut sent = 0;
    for k in [1500, 3000, 4500] {
        run_and_stop(&args, &lines[sent..k], seqs[k - 1].unwrap(), &none);
        sent = k;
    }
    let snaps = store::StateDir::open(Path::new(dir)).unwrap().snapshots().unwrap();
    assert_eq!(snaps.len(), 3, "the newest three are kept");
    snaps.into_iter().map(|p| (p.clone(), store::read(&p).unwrap().0.last_seq)).collect()
}

fn inspect_ok(path: &Path) -> bool {
    let out = Command::new(env!("CARGO_BIN_EXE_liqscan"))
        .args(["snapshot", "inspect"])
        .arg(path)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("last_seq") || text.contains("error"), "{text}");
    out.status.success()
}

/// Starts a daemon on `dir`, returns the seq it resumed from and its log.
fn start_on(dir: &str) -> (u64, Vec<Value>) {
    let config = fixture(CONFIG);
    let d = Daemon::start(&state_args(&config, dir, "fast"), Input::Null);
    let conn = EngineConn::connect(d.addr("engine"));
    (conn.last_seq(), d.log())
}

#[test]
fn a_corrupt_newest_snapshot_is_skipped_for_the_older_one() {
    long_test("a_corrupt_newest_snapshot_is_skipped_for_the_older_one");
    let tmp = TempDir::new("corrupt");
    let dir = tmp.path("state");
    let snaps = three_snapshots(&dir);
    let ((newest, _), (_, older_seq)) = (snaps[0].clone(), snaps[1].clone());
    assert!(inspect_ok(&newest), "a whole snapshot inspects clean");
    let good = std::fs::read(&newest).unwrap();
    let flip = |mut b: Vec<u8>, at: usize| {
        b[at] ^= 0x40;
        b
    };
    let mut new_version = good.clone();
    new_version[8..12].copy_from_slice(&99u32.to_le_bytes());
    let sum = xxhash_rust::xxh3::xxh3_64(&new_version[..72]);
    new_version[72..80].copy_from_slice(&sum.to_le_bytes());
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("a byte flipped in the body", flip(good.clone(), good.len() / 2)),
        ("a byte flipped in the header", flip(good.clone(), 30)),
        ("truncated", good[..good.len() * 2 / 3].to_vec()),
        ("shorter than a header", good[..40].to_vec()),
        ("zeroed", vec![0; good.len()]),
        ("empty", Vec::new()),
        ("another format version", new_version),
    ];
    for (what, bytes) in cases {
        std::fs::write(&newest, &bytes).unwrap();
        assert!(!inspect_ok(&newest), "{what}: inspect exits non-zero");
        let (resumed, log) = start_on(&dir);
        assert_eq!(resumed, older_seq, "{what}: the older snapshot is restored");
        let name = newest.to_string_lossy();
        assert!(
            log.iter().any(|v| message(v).starts_with("snapshot skipped")
                && v["file"].as_str() == Some(&*name)),
            "{what}: the skip is logged: {log:#?}"
        );
    }
    // None valid: it starts empty and says so.
    for (path, _) in &snaps {
        std::fs::write(path, b"not a snapshot").unwrap();
    }
    let (resumed, log) = start_on(&dir);
    assert_eq!(resumed, 0, "no valid snapshot: an empty state");
    assert!(log.iter().any(|v| message(v).contains("starting empty")), "{log:#?}");
    assert_eq!(
        log.iter().filter(|v| message(v).starts_with("snapshot skipped")).count(),
        3,
        "each bad one logged"
    );
}

/// `CONFIG` with every mmr raised to just under `1 / max_leverage` (the most the config
/// rules allow, 0.0001 below): more items fall below maintenance, and no message of the
/// stream is decided differently (mmr decides no reject; leverage limits and initial margins
/// are unchanged).
fn stricter_config(to: &str) {
    let mut v: Value =
        serde_json::from_str(&std::fs::read_to_string(fixture(CONFIG)).unwrap()).unwrap();
    for s in v["symbols"].as_array_mut().unwrap() {
        for b in s["brackets"].as_array_mut().unwrap() {
            let max = rust_decimal::Decimal::from(b["max_leverage"].as_u64().unwrap());
            let stricter = rust_decimal::Decimal::ONE / max - rust_decimal::Decimal::new(1, 4);
            b["mmr"] = Value::String(stricter.round_dp(4).normalize().to_string());
            b.as_object_mut().unwrap().remove("maintenance_amount");
        }
    }
    std::fs::write(to, v.to_string()).unwrap();
}

/// The items liquidatable under `cfg` after `input`, replayed here on the fast engine:
/// (account, mode, symbol, margin balance, maintenance).
fn liquidatable_after(
    cfg: std::sync::Arc<liqscan::config::Config>,
    input: &[u8],
) -> BTreeSet<(u64, String, Option<String>, String, String)> {
    let mut engine = new_engine("fast", &cfg);
    liqscan::replay::replay(cfg, engine.as_mut(), input, Vec::new()).unwrap();
    let query = liqscan::engine::RiskQuery { limit: usize::MAX, symbol: None, mode: None };
    engine
        .at_risk(&query)
        .into_iter()
        .filter(|i| i.liquidatable)
        .map(|i| {
            (
                i.account,
                i.mode.as_str().to_owned(),
                i.symbol.as_deref().map(String::from),
                i.margin_balance.text(),
                i.maintenance_margin.text(),
            )
        })
        .collect()
}

#[test]
fn a_snapshot_under_another_config_is_refused_or_re_evaluated() {
    long_test("a_snapshot_under_another_config_is_refused_or_re_evaluated");
    let tmp = TempDir::new("config-change");
    let dir = tmp.path("state");
    let input = std::fs::read(fixture(STREAM)).unwrap();
    let lines = lines_of(&input);
    let seqs = effective_seqs(CONFIG, &input);
    let config = fixture(CONFIG);
    let stricter = tmp.path("stricter.json");
    stricter_config(&stricter);
    // The first prefix after which the stricter config finds liquidatable items, derived by
    // replaying it under that config here.
    let (k, want) = [3000, 5000, 7000, 9000, lines.len()]
        .into_iter()
        .map(|k| (k, liquidatable_after(config_at(&stricter), &lines[..k].concat())))
        .find(|(_, want)| !want.is_empty())
        .expect("the stricter config liquidates some items");
    run_and_stop(
        &state_args(&config, &dir, "fast"),
        &lines[..k],
        seqs[k - 1].unwrap(),
        &BTreeSet::new(),
    );

    // Without the flag: exit 2, with the reason.
    let out = Command::new(env!("CARGO_BIN_EXE_liqscan"))
        .args(["run", "--config", &stricter, "--state-dir", &dir])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("another config") && stderr.contains("--accept-config-change"),
        "{stderr}"
    );

    for engine in ["fast", "reference"] {
        let run_dir = tmp.path(&format!("state-{engine}"));
        std::fs::create_dir_all(&run_dir).unwrap();
        for p in store::StateDir::open(Path::new(&dir)).unwrap().snapshots().unwrap() {
            std::fs::copy(&p, Path::new(&run_dir).join(p.file_name().unwrap())).unwrap();
        }
        let events_file = tmp.path(&format!("events-{engine}.ndjson"));
        let mut args = state_args(&stricter, &run_dir, engine);
        args.extend(["--accept-config-change", "--events-file", &events_file]);
        let mut d = Daemon::start(&args, Input::Null);
        let conn = EngineConn::connect(d.addr("engine"));
        assert_eq!(conn.last_seq(), seqs[k - 1].unwrap());
        d.sigterm();
        assert!(d.wait_exit().success(), "{engine}");
        let got: BTreeSet<_> = std::fs::read_to_string(&events_file)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str::<Value>(l).unwrap())
            .filter(|v| v["type"] == "liquidation")
            .map(|v| {
                assert_eq!(v["seq"], seqs[k - 1].unwrap(), "reported at the restored seq");
                (
                    v["account"].as_u64().unwrap(),
                    v["mode"].as_str().unwrap().to_owned(),
                    v["symbol"].as_str().map(str::to_owned),
                    v["margin_balance"].as_str().unwrap().to_owned(),
                    v["maintenance_margin"].as_str().unwrap().to_owned(),
                )
            })
            .collect();
        assert_eq!(got, want, "{engine}: every item liquidatable under the new config, reported");
        assert!(d.log().iter().any(|v| message(v).starts_with("the config changed")));
    }
}

// ---------------------------------------------------------------------------------------
// The crash test: kill -9 at random moments
// ---------------------------------------------------------------------------------------

/// What a crash run counted.
#[derive(Debug, Default)]
pub struct CrashCounts {
    pub cycles: usize,
    pub kills: usize,
    /// Kills that left a snapshot half-written (its temporary file was found at restart).
    pub kills_during_snapshot_writes: usize,
    /// Kills while the stream was still being sent (the restarted daemon resumed below the
    /// stream's end).
    pub kills_mid_stream: usize,
    /// Messages the engine had to resend over all restarts: the seq the killed daemon had
    /// reached (as `/health` last showed it) minus the seq the next one restored.
    pub resent_messages: u64,
    pub replay_liquidations: usize,
    pub received_liquidations: usize,
    pub repeats: usize,
    pub accounts_compared: usize,
}

/// A small deterministic generator for the kill moments.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

fn liquidation_key(v: &Value) -> (u64, u64, String, String) {
    (
        v["seq"].as_u64().unwrap(),
        v["account"].as_u64().unwrap(),
        v["mode"].as_str().unwrap().to_owned(),
        v["symbol"].as_str().unwrap_or("").to_owned(),
    )
}

/// An event without the fields that differ between deliveries (`line` restarts per
/// connection; `latency_ns`).
fn stable(mut v: Value) -> Value {
    let o = v.as_object_mut().unwrap();
    o.remove("line");
    o.remove("latency_ns");
    v
}

/// `cycles` times: start the daemon on one state directory with a short snapshot interval
/// and a subscriber, feed the stream with `liqscan feed` (at `rate` lines a second, or as
/// fast as the daemon reads with 0), kill -9 it at a random moment (once it has applied a
/// random seq in the cycle's share of the stream, plus up to 20 ms, so that the kills are
/// spread over the whole stream); the last cycle lets the stream finish. Then checks every liquidation of an uninterrupted
/// replay was received (by seq and item, same content), none that the replay lacks, and
/// every account's final answer equals the replay's.
pub fn crash_cycles(
    cycles: usize,
    accounts: u64,
    messages: u64,
    rate: u64,
    seed: u64,
) -> CrashCounts {
    assert!(cycles >= 1);
    let tmp = TempDir::new("crash");
    let (stream, config, dir) =
        (tmp.path("stream.ndjson"), tmp.path("stream.config.json"), tmp.path("state"));
    let bin = env!("CARGO_BIN_EXE_liqscan");
    let made = Command::new(bin)
        .args([
            "gen",
            "--accounts",
            &accounts.to_string(),
            "--positions",
            &(accounts * 3).to_string(),
        ])
        .args(["--symbols", "20", "--messages", &messages.to_string(), "--seed", &seed.to_string()])
        .args(["--out", &stream, "--config-out", &config])
        .output()
        .unwrap();
    assert!(made.status.success(), "{}", String::from_utf8_lossy(&made.stderr));
    let input = std::fs::read(&stream).unwrap();
    let n_lines = lines_of(&input).len() as u64;

    // The uninterrupted replay: its liquidations, and each account's final report.
    let cfg = config_at(&config);
    let mut engine = FastEngine::new(cfg.clone());
    let mut out = Vec::new();
    liqscan::replay::replay(cfg, &mut engine, &input[..], &mut out).unwrap();
    let mut want = BTreeMap::new();
    for line in String::from_utf8(out).unwrap().lines() {
        let v: Value = serde_json::from_str(line).unwrap();
        if v["type"] == "liquidation" {
            assert!(
                want.insert(liquidation_key(&v), stable(v)).is_none(),
                "one event per item and seq"
            );
        }
    }
    let final_seq = n_lines; // every line of a generated stream without faults takes a seq

    let mut counts = CrashCounts { cycles, replay_liquidations: want.len(), ..Default::default() };
    let mut rng = Rng(seed | 1);
    let mut got: BTreeMap<_, Value> = BTreeMap::new();
    let mut received = 0;
    let mut reached = 0u64;
    for cycle in 0..cycles {
        let last = cycle + 1 == cycles;
        let mut args = state_args(&config, &dir, "fast");
        args.extend(["--snapshot-interval", "20ms", "--events", "127.0.0.1:0"]);
        let mut d = Daemon::start(&args, Input::Null);
        let (engine_addr, http) = (d.addr("engine"), d.addr("http"));
        let mut sub = Subscriber::connect(d.addr("events"));
        wait_health(http, "the subscriber", |h| h["subscribers"] == 1 && h["status"] == "ok");
        if d.log().iter().any(|v| message(v).starts_with("removing a snapshot left half-written")) {
            counts.kills_during_snapshot_writes += 1;
        }
        let restored = http_json(http, "/health").1["last_seq"].as_u64().unwrap();
        if cycle > 0 {
            counts.resent_messages += reached.saturating_sub(restored);
            if restored < final_seq {
                counts.kills_mid_stream += 1;
            }
        }
        let mut feed = Command::new(bin);
        feed.args(["feed", "--to", &engine_addr.to_string(), "--give-up-after", "2s", &stream]);
        if rate > 0 {
            feed.args(["--rate", &rate.to_string()]);
        }
        let feed = Guard(feed.stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap());
        if last {
            wait_health(http, "the whole stream", |h| h["last_seq"] == final_seq);
        } else {
            // A random moment in this cycle's share of the stream: once the daemon has
            // applied up to a random seq around the cycle's stride, plus up to 20 ms.
            let stride = (final_seq / cycles as u64).max(2);
            let target =
                (stride * (cycle as u64 + 1) + rng.below(stride)).saturating_sub(stride / 2);
            // Not `clamp`: when a snapshot already holds the whole stream (an unpaced feed
            // can get there before an earlier kill), `restored + 1` is past `final_seq`, and
            // the cycle just kills a daemon that has everything.
            let target = target.max(restored + 1).min(final_seq);
            wait_health(http, "the cycle's share of the stream", |h| {
                h["last_seq"].as_u64().is_some_and(|s| s >= target)
            });
            std::thread::sleep(Duration::from_millis(rng.below(20)));
            reached = http_json(http, "/health").1["last_seq"].as_u64().unwrap();
            d.kill_9();
            counts.kills += 1;
        }
        drop(feed);
        let lines = if last {
            // Every account's answer, then a clean stop.
            let ids = account_ids(&input);
            let at = At { line: 0, seq: final_seq };
            for &id in &ids {
                let (status, body) = http_get(http, &format!("/accounts/{id}"));
                assert_eq!(status, 200, "account {id}: {body}");
                let mut text = String::new();
                Event::Account(engine.account_report(id, at).unwrap()).write_json(&mut text);
                let want_v = stable(serde_json::from_str(text.trim()).unwrap());
                assert_eq!(stable(serde_json::from_str(&body).unwrap()), want_v, "account {id}");
            }
            counts.accounts_compared = ids.len();
            d.sigterm();
            assert!(d.wait_exit().success());
            sub.until_closed().to_vec()
        } else {
            sub.until_closed().to_vec()
        };
        if std::env::var_os("LIQSCAN_CRASH_DEBUG").is_some() {
            let seqs: Vec<u64> = lines
                .iter()
                .filter_map(|l| serde_json::from_str::<Value>(l).ok())
                .filter(|v| v["type"] == "liquidation")
                .filter_map(|v| v["seq"].as_u64())
                .collect();
            eprintln!(
                "cycle {cycle}: restored {restored}, reached {reached}, liquidations {} seq {:?}..{:?}",
                seqs.len(),
                seqs.first(),
                seqs.last()
            );
        }
        for line in lines {
            let v: Value = serde_json::from_str(&line).unwrap();
            if v["type"] != "liquidation" {
                continue;
            }
            received += 1;
            let key = liquidation_key(&v);
            let v = stable(v);
            if let Some(before) = got.insert(key.clone(), v.clone()) {
                assert_eq!(before, v, "a repeat equals the first delivery: {key:?}");
            }
        }
    }
    counts.received_liquidations = received;
    counts.repeats = received - got.len();
    let missing: Vec<_> = want.keys().filter(|k| !got.contains_key(*k)).take(5).collect();
    let extra: Vec<_> = got.keys().filter(|k| !want.contains_key(*k)).take(5).collect();
    assert!(missing.is_empty(), "liquidations lost: {missing:?} ({counts:?})");
    assert!(extra.is_empty(), "liquidations the replay lacks: {extra:?} ({counts:?})");
    for (k, v) in &want {
        assert_eq!(&got[k], v, "liquidation {k:?}");
    }
    counts
}

#[test]
fn kill_9_at_random_moments_loses_no_liquidation() {
    long_test("kill_9_at_random_moments_loses_no_liquidation");
    let started = Instant::now();
    let c = crash_cycles(4, 3_000, 20_000, 0, 7);
    assert_eq!(c.kills, 3);
    assert!(c.replay_liquidations > 0, "{c:?}");
    assert!(c.kills_mid_stream > 0, "some kill interrupts the stream: {c:?}");
    eprintln!("    crash test: {c:?} in {:.1} s", started.elapsed().as_secs_f64());
}

/// `scripts/crashtest.sh`: `LIQSCAN_CRASH_CYCLES` cycles (default 100) on a bigger book;
/// prints the counts as JSON.
#[test]
#[ignore = "long: run by scripts/crashtest.sh"]
fn crash_cycles_from_env() {
    let env = |k: &str, d: u64| std::env::var(k).ok().and_then(|v| v.parse().ok()).unwrap_or(d);
    let cycles = env("LIQSCAN_CRASH_CYCLES", 100) as usize;
    let (accounts, seed) = (env("LIQSCAN_CRASH_ACCOUNTS", 20_000), env("LIQSCAN_CRASH_SEED", 1));
    let messages = env("LIQSCAN_CRASH_MESSAGES", cycles as u64 * 2_500);
    let rate = env("LIQSCAN_CRASH_RATE", 0);
    let started = Instant::now();
    let c = crash_cycles(cycles, accounts, messages, rate, seed);
    println!(
        "{}",
        serde_json::json!({
            "cycles": c.cycles,
            "kills": c.kills,
            "kills_during_snapshot_writes": c.kills_during_snapshot_writes,
            "kills_mid_stream": c.kills_mid_stream,
            "resent_messages": c.resent_messages,
            "replay_liquidations": c.replay_liquidations,
            "received_liquidations": c.received_liquidations,
            "repeats": c.repeats,
            "lost": 0,
            "accounts_compared": c.accounts_compared,
            "seconds": started.elapsed().as_secs_f64(),
        })
    );
}

/// From a new user's trial: at the end of stdin a daemon with `--state-dir` (default 60 s
/// interval) stops at once with its shutdown snapshot, rather than at the next tick; a
/// second daemon on the same state directory is refused (exit 1) while the first runs; a
/// file given as the state directory is refused as not a directory.
#[test]
fn end_of_stdin_stops_at_once_and_a_state_directory_has_one_daemon() {
    let bin = env!("CARGO_BIN_EXE_liqscan");
    let tmp = TempDir::new("stdin-end");
    let state = tmp.path("state");
    let stream = std::fs::File::open(fixture(STREAM)).unwrap();
    let mut child = Guard(
        Command::new(bin)
            .args(["run", "--config", &fixture(CONFIG), "--state-dir", &state])
            .stdin(stream)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    // Bounded: 20 s, a third of the 60 s tick the daemon used to wait for.
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.0.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "the daemon did not stop at the end of stdin");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status:?}");
    let snapshots = std::fs::read_dir(&state)
        .unwrap()
        .filter(|e| e.as_ref().unwrap().file_name().to_string_lossy().ends_with(".liqsnap"))
        .count();
    assert_eq!(snapshots, 1, "the shutdown snapshot");

    // A daemon holding the directory (stdin left open), then a second one on it.
    let config = fixture(CONFIG);
    let first = Daemon::start(
        &["--config", &config, "--state-dir", &state, "--http", "127.0.0.1:0"],
        Input::Pipe,
    );
    wait_http_ok(first.addr("http"), "/health", "the first daemon");
    let out = Command::new(bin)
        .args(["run", "--config", &fixture(CONFIG), "--state-dir", &state])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("one daemon per state directory"), "{err}");

    let file = tmp.path("plain-file");
    std::fs::write(&file, b"x").unwrap();
    let out = Command::new(bin)
        .args(["run", "--config", &fixture(CONFIG), "--state-dir", &file])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a directory"));
}

/// From a new user's trial: an idle daemon does not rewrite the same state every interval
/// (which left three copies of one seq and nothing older to fall back on). Lines are written
/// on stdin, one snapshot covers them, and ten intervals later there is still only that one.
#[test]
fn an_idle_daemon_writes_no_snapshot_of_an_unchanged_state() {
    let tmp = TempDir::new("idle");
    let state = tmp.path("state");
    let config = fixture(CONFIG);
    let mut d = Daemon::start(
        &["--config", &config, "--state-dir", &state, "--snapshot-interval", "50ms"],
        Input::Pipe,
    );
    let stream = std::fs::read_to_string(fixture(STREAM)).unwrap();
    let head = format!("{}\n", stream.lines().take(200).collect::<Vec<_>>().join("\n"));
    let last_seq = effective_seqs(CONFIG, head.as_bytes()).into_iter().flatten().max().unwrap();
    d.write_stdin(head.as_bytes());
    let written_at = |v: &Value| message(v) == "snapshot written" && v["seq"] == last_seq;
    d.wait_log("a snapshot of every line", written_at);
    std::thread::sleep(Duration::from_millis(500));
    let copies = d.log().iter().filter(|v| written_at(v)).count();
    assert_eq!(copies, 1, "snapshots of the unchanged state at seq {last_seq}");
    d.close_stdin();
    assert!(d.wait_exit().success());
}
