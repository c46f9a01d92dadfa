//! `liqscan run` (SPEC section 9) as an operator runs it: the real binary on loopback,
//! ephemeral ports read from its log, every wait bounded, every child killed by a guard.

#[path = "../common/mod.rs"]
mod common;
mod harness;
mod shards;
mod state;

use std::sync::Arc;

use common::{assert_same_events, canonical, events};
use harness::*;
use liqscan::{
    config::Config, engine::Engine, fast::FastEngine, reference::ReferenceEngine, replay,
};
use serde_json::Value;

/// Every stream in fixtures/golden and fixtures/gen, with its config.
const STREAMS: &[(&str, &str)] = &[
    ("golden/cross_basics.ndjson", "config/multi_tier.json"),
    ("golden/isolated_single_tier.ndjson", "config/single_tier.json"),
    ("golden/bad_input.ndjson", "config/multi_tier.json"),
    ("golden/brackets.ndjson", "config/multi_tier.json"),
    ("golden/extremes.ndjson", "config/extremes.json"),
    ("gen/snapshot_mix.ndjson", "gen/snapshot_mix.config.json"),
    ("gen/faults.ndjson", "gen/faults.config.json"),
    ("gen/live_open.ndjson", "gen/live_open.config.json"),
];

const ENGINES: [&str; 2] = ["fast", "reference"];

fn load_config(path: &str) -> Arc<Config> {
    Arc::new(Config::load(std::path::Path::new(&fixture(path))).unwrap())
}

fn new_engine(name: &str, cfg: &Arc<Config>) -> Box<dyn Engine + Send> {
    match name {
        "fast" => Box::new(FastEngine::new(cfg.clone())),
        _ => Box::new(ReferenceEngine::new(cfg.clone())),
    }
}

/// `liqscan replay`'s events and summary for `input` on `engine`.
fn replay_of(engine: &str, cfg_path: &str, input: &[u8]) -> (Vec<Value>, replay::Summary) {
    let cfg = load_config(cfg_path);
    let mut e = new_engine(engine, &cfg);
    let mut out = Vec::new();
    let summary = replay::replay(cfg, e.as_mut(), input, &mut out).unwrap();
    (events(&String::from_utf8(out).unwrap()), summary)
}

fn without(mut evs: Vec<Value>, field: &str) -> Vec<Value> {
    for v in &mut evs {
        v.as_object_mut().unwrap().remove(field);
    }
    evs
}

fn lines_text(lines: &[String]) -> String {
    lines.iter().map(|l| format!("{l}\n")).collect()
}

/// The effective seq of each line of a stream, as SPEC section 6 counts it (`None` for lines
/// that consume none).
fn effective_seqs(cfg_path: &str, input: &[u8]) -> Vec<Option<u64>> {
    use liqscan::ingest::{Ingest, LineReader, Outcome};
    let mut ingest = Ingest::new(load_config(cfg_path));
    let mut lines = LineReader::new(input, 1 << 20);
    let mut seqs = Vec::new();
    while let Some(line) = lines.next_line().unwrap() {
        let seq = match ingest.line(line, std::time::Instant::now()).outcome {
            Outcome::Command { seq, .. } | Outcome::Rejected { seq: Some(seq), .. } => Some(seq),
            _ => None,
        };
        seqs.push(seq);
    }
    seqs
}

// ---------------------------------------------------------------------------------------
// The same events as replay, stdin and TCP, both engines, every fixture
// ---------------------------------------------------------------------------------------

/// `liqscan replay`'s events for a fixture stream on `engine`: replayed here on the fast
/// engine; on the reference engine (slow in a debug build) the stream's `.expected.ndjson`,
/// which `tests/golden.rs` holds the reference replay to, event for event.
fn replay_events(stream: &str, cfg: &str, engine: &str) -> Vec<String> {
    if engine == "reference" {
        let expected = fixture(&stream.replace(".ndjson", ".expected.ndjson"));
        return canonical(events(&std::fs::read_to_string(expected).unwrap()));
    }
    canonical(replay_of(engine, cfg, &std::fs::read(fixture(stream)).unwrap()).0)
}

/// One stream on one engine: stdin mode, then TCP mode, against replay's events.
fn same_events_as_replay(stream: &str, cfg: &str, engine: &str) {
    let input = std::fs::read(fixture(stream)).unwrap();
    let what = format!("{stream} on {engine}");
    let want = replay_events(stream, cfg, engine);

    // stdin: events on stdout, exit 0 at the end of input.
    let mut d = Daemon::start(
        &["--config", &fixture(cfg), "--engine", engine],
        Input::File(fixture(stream)),
    );
    assert!(d.wait_exit().success(), "{what}: stdin run failed: {:?}", d.log());
    let got = canonical(events(&lines_text(&d.stdout_all())));
    assert_same_events(&format!("{what} (stdin)"), &got, &want);

    // TCP: one engine connection, one subscriber; SIGTERM once every event is in.
    let mut d = Daemon::start(
        &[
            "--config",
            &fixture(cfg),
            "--engine",
            engine,
            "--listen",
            "127.0.0.1:0",
            "--events",
            "127.0.0.1:0",
        ],
        Input::Null,
    );
    let mut sub = Subscriber::connect(d.addr("events"));
    d.wait_log("subscriber connected", |v| v["message"] == "subscriber connected");
    let mut conn = EngineConn::connect(d.addr("engine"));
    assert_eq!(conn.last_seq(), 0, "{what}: an empty state says 0");
    conn.send(&input);
    let got = canonical(events(&lines_text(sub.until(want.len()))));
    assert_same_events(&format!("{what} (tcp)"), &got, &want);
    d.sigterm();
    assert!(d.wait_exit().success(), "{what}: tcp run failed: {:?}", d.log());
    assert_eq!(sub.until_closed().len(), want.len(), "{what}: no extra events");
}

#[test]
fn stdin_and_tcp_give_replays_events_on_every_fixture_and_engine() {
    // Two at a time: the machine has two cores, and the reference engine's runs are long.
    let jobs: Vec<(&str, &str, &str)> = STREAMS
        .iter()
        .flat_map(|&(stream, cfg)| ENGINES.map(|engine| (stream, cfg, engine)))
        .collect();
    let next = std::sync::atomic::AtomicUsize::new(0);
    std::thread::scope(|scope| {
        let workers: Vec<_> = (0..2)
            .map(|_| {
                scope.spawn(|| {
                    loop {
                        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let Some(&(stream, cfg, engine)) = jobs.get(i) else { break };
                        same_events_as_replay(stream, cfg, engine);
                    }
                })
            })
            .collect();
        for w in workers {
            if let Err(panic) = w.join() {
                std::panic::resume_unwind(panic);
            }
        }
    });
}

// ---------------------------------------------------------------------------------------
// Reconnects: mid-line drops, replacement, resend from an earlier seq
// ---------------------------------------------------------------------------------------

#[test]
fn reconnects_with_resends_equal_an_uninterrupted_replay() {
    let (stream, cfg) = ("gen/snapshot_mix.ndjson", "gen/snapshot_mix.config.json");
    let input = std::fs::read(fixture(stream)).unwrap();
    let lines: Vec<&[u8]> = input.split_inclusive(|&b| b == b'\n').collect();
    let seqs = effective_seqs(cfg, &input);
    assert!(seqs.iter().all(Option::is_some), "every line of this stream consumes a seq");
    let seq = |i: usize| seqs[i].unwrap();
    // Lines from the first whose seq is above `after`.
    let from_seq = |after: u64| seqs.iter().position(|s| s.unwrap() > after).unwrap();
    let (want, summary) = replay_of("fast", cfg, &input);
    // Line numbers restart per connection: compared without them.
    let want = canonical(without(want, "line").into_iter().map(with_line0).collect());

    let mut d = Daemon::start(
        &[
            "--config",
            &fixture(cfg),
            "--listen",
            "127.0.0.1:0",
            "--events",
            "127.0.0.1:0",
            "--http",
            "127.0.0.1:0",
        ],
        Input::Null,
    );
    let (engine_addr, http) = (d.addr("engine"), d.addr("http"));
    let mut sub = Subscriber::connect(d.addr("events"));
    wait_health(http, "a subscriber", |h| h["subscribers"] == 1);

    // Connection 1: 4,000 lines and half of the next, then the engine drops it.
    let mut c1 = EngineConn::connect(engine_addr);
    assert_eq!(c1.last_seq(), 0);
    let (k1, half) = (4000, lines[4000].len() / 2);
    c1.send(&lines[..k1].concat());
    c1.send(&lines[k1][..half]);
    wait_health(http, "connection 1 applied", |h| h["last_seq"] == seq(k1 - 1));
    drop(c1);

    // Connection 2: the hello says where to resume; resend from 150 seqs before it, up to
    // line 7,000 and half of the next, and keep the connection open.
    let mut c2 = EngineConn::connect(engine_addr);
    assert_eq!(c2.last_seq(), seq(k1 - 1), "hello: the last effective seq applied");
    let start2 = from_seq(c2.last_seq() - 150);
    let k2 = 7000;
    c2.send(&lines[start2..k2].concat());
    c2.send(&lines[k2][..10]);
    wait_health(http, "connection 2 applied", |h| h["last_seq"] == seq(k2 - 1));

    // Connection 3 replaces connection 2, which the daemon closes; resend from 40 back to
    // the end.
    let mut c3 = EngineConn::connect(engine_addr);
    assert!(c2.closed_by_daemon(), "a new engine connection replaces the old one");
    assert_eq!(c3.last_seq(), seq(k2 - 1));
    let start3 = from_seq(c3.last_seq() - 40);
    c3.send(&lines[start3..].concat());
    // The engine ends its stream; the daemon says it read all of it before it closes.
    let bye = c3.end_and_read_bye();
    assert_eq!(bye["last_seq"], seq(lines.len() - 1), "{bye}");
    assert_eq!(bye["reason"], "end of stream", "{bye}");

    let got = sub.until(want.len()).to_vec();
    let got =
        canonical(without(events(&lines_text(&got)), "line").into_iter().map(with_line0).collect());
    assert_same_events("three connections with resends vs one replay", &got, &want);

    let resent = (k1 - start2) as f64 + (k2 - start3) as f64;
    let m = scrape(http);
    assert_eq!(m.get("liqscan_duplicates_total", &[]), summary.duplicates as f64 + resent);
    assert_eq!(m.get("liqscan_engine_cut_off_lines_total", &[]), 2.0, "two lines cut mid-way");
    assert_eq!(m.get("liqscan_engine_connections_total", &[]), 3.0);
    assert_eq!(m.get("liqscan_last_seq", &[]), seq(lines.len() - 1) as f64);
    let replaced = d
        .log()
        .iter()
        .filter(|v| {
            v["message"].as_str().is_some_and(|m| m.starts_with("engine connection replaced"))
        })
        .count();
    // Connection 3's replacement of the open connection 2, and connection 2's of connection
    // 1 when the daemon had not yet seen connection 1 end.
    assert!((1..=2).contains(&replaced), "the replacement is logged");
    d.sigterm();
    assert!(d.wait_exit().success());
}

/// `canonical` sorts by `line`: with line numbers gone, every event sorts by its text.
fn with_line0(mut v: Value) -> Value {
    v["line"] = 0.into();
    v
}

// ---------------------------------------------------------------------------------------
// Subscribers: a stalled one is cut, a healthy one gets everything
// ---------------------------------------------------------------------------------------

/// A stream with many large events: 200 accounts with two cross positions each, then
/// `queries` account queries.
fn query_flood(queries: usize) -> String {
    let mut s = String::new();
    s.push_str(r#"{"type":"marks","prices":{"BTCUSDT":"50000","ETHUSDT":"3000"}}"#);
    s.push('\n');
    for a in 1..=200 {
        s.push_str(&format!(r#"{{"type":"balance","account":{a},"wallet":"100000"}}"#));
        s.push('\n');
        for (sym, entry) in [("BTCUSDT", "50000"), ("ETHUSDT", "3000")] {
            s.push_str(&format!(
                r#"{{"type":"position","account":{a},"symbol":"{sym}","size":"1","entry_price":"{entry}"}}"#
            ));
            s.push('\n');
        }
    }
    for i in 0..queries {
        s.push_str(&format!(r#"{{"type":"query","account":{}}}"#, 1 + i % 200));
        s.push('\n');
    }
    s
}

#[test]
fn a_stalled_subscriber_is_cut_and_the_healthy_one_gets_every_event() {
    let cfg = "config/multi_tier.json";
    // About 3.5 MB of account events.
    let input = query_flood(5_000);
    let (want, _) = replay_of("fast", cfg, input.as_bytes());
    let want = canonical(want);
    let mut d = Daemon::start(
        &[
            "--config",
            &fixture(cfg),
            "--events",
            "127.0.0.1:0",
            "--http",
            "127.0.0.1:0",
            "--subscriber-buffer",
            "256K",
        ],
        Input::Pipe,
    );
    let (events_addr, http) = (d.addr("events"), d.addr("http"));
    let mut healthy = Subscriber::connect(events_addr);
    // Connected and never read, with a small receive buffer: the socket buffers fill, then
    // its 256 KiB in the daemon.
    let stalled = {
        use socket2::{Domain, Socket, Type};
        let socket = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
        socket.set_recv_buffer_size(4096).unwrap();
        socket.connect(&events_addr.into()).unwrap();
        std::net::TcpStream::from(socket)
    };
    wait_health(http, "two subscribers", |h| h["subscribers"] == 2);
    d.write_stdin(input.as_bytes());
    let got = canonical(events(&lines_text(healthy.until(want.len()))));
    assert_same_events("the healthy subscriber", &got, &want);
    let m = scrape(http);
    assert_eq!(m.get("liqscan_subscribers_dropped_total", &[]), 1.0);
    assert_eq!(m.get("liqscan_subscribers", &[]), 1.0);
    // No connection was refused: both listeners' series are there, at 0.
    for listener in ["events", "http"] {
        let refused = m.get("liqscan_connections_refused_total", &[("listener", listener)]);
        assert_eq!(refused, 0.0, "{listener}");
    }
    let cut = d.wait_log("the cut", |v| {
        v["message"].as_str().is_some_and(|m| m.starts_with("subscriber too slow"))
    });
    assert_eq!(cut["peer"], stalled.local_addr().unwrap().to_string(), "{cut}");
    // The end of stdin finishes the daemon as SIGTERM does: the healthy one is closed
    // after the last event, with nothing more.
    d.close_stdin();
    assert!(d.wait_exit().success());
    assert_eq!(healthy.until_closed().len(), want.len());
    drop(stalled);
}

/// A subscriber that left while the stream was quiet (no chunk since, so the hub's list
/// still held it) is not counted at shutdown: the log says how many of those still connected
/// got every event.
#[test]
fn shutdown_counts_only_the_subscribers_still_connected() {
    let mut d = Daemon::start(
        &[
            "--config",
            &fixture("config/multi_tier.json"),
            "--events",
            "127.0.0.1:0",
            "--http",
            "127.0.0.1:0",
        ],
        Input::Pipe,
    );
    let (events_addr, http) = (d.addr("events"), d.addr("http"));
    let mut stays = Subscriber::connect(events_addr);
    // A bare socket, closed when dropped (a `Subscriber`'s reader thread owns its socket).
    let leaves = std::net::TcpStream::connect(events_addr).unwrap();
    wait_health(http, "two subscribers", |h| h["subscribers"] == 2);
    drop(leaves);
    wait_health(http, "one subscriber", |h| h["subscribers"] == 1);
    d.close_stdin();
    assert!(d.wait_exit().success());
    let done = d.wait_log("the subscribers' delivery at shutdown", |v| {
        v["message"].as_str().is_some_and(|m| m.starts_with("every subscriber"))
    });
    assert_eq!(done["subscribers"], 1, "{done}");
    assert!(stays.until_closed().is_empty(), "a quiet stream: no event");
}

// ---------------------------------------------------------------------------------------
// /metrics
// ---------------------------------------------------------------------------------------

#[test]
fn metrics_parse_and_their_counters_equal_the_replay_summary() {
    let (stream, cfg) = ("gen/faults.ndjson", "gen/faults.config.json");
    let input = std::fs::read(fixture(stream)).unwrap();
    let (want, summary) = replay_of("fast", cfg, &input);
    let mut d = Daemon::start(&["--config", &fixture(cfg), "--http", "127.0.0.1:0"], Input::Pipe);
    let http = d.addr("http");
    d.write_stdin(&input);
    // The stream stays open: the daemon is serving, every message applied.
    d.stdout_until(want.len());
    wait_health(http, "every message", |h| h["messages"] == summary.messages);
    let m = scrape(http);
    assert_eq!(m.get("liqscan_messages_total", &[]), summary.messages as f64);
    assert_eq!(m.get("liqscan_gaps_total", &[]), summary.gaps as f64);
    assert_eq!(m.get("liqscan_duplicates_total", &[]), summary.duplicates as f64);
    assert!(summary.rejects > 0 && summary.gaps > 0 && summary.duplicates > 0);
    let count = |pred: &dyn Fn(&Value) -> bool| want.iter().filter(|v| pred(v)).count() as f64;
    let mut rejects = 0.0;
    for code in [
        "malformed",
        "invalid",
        "unknown_symbol",
        "mode_locked",
        "leverage_exceeds_max",
        "wrong_mode",
        "insufficient_margin",
        "no_mark",
    ] {
        let n = m.get("liqscan_rejects_total", &[("code", code)]);
        assert_eq!(n, count(&|v| v["type"] == "reject" && v["code"] == code), "{code}");
        rejects += n;
    }
    assert_eq!(rejects, summary.rejects as f64);
    let mut liquidations = 0.0;
    for mode in ["cross", "isolated"] {
        let n = m.get("liqscan_liquidations_total", &[("mode", mode)]);
        assert_eq!(n, count(&|v| v["type"] == "liquidation" && v["mode"] == mode), "{mode}");
        liquidations += n;
    }
    assert_eq!(liquidations, summary.liquidations as f64);
    let last_seq = effective_seqs(cfg, &input).into_iter().flatten().max().unwrap();
    assert_eq!(m.get("liqscan_last_seq", &[]), last_seq as f64);
    let cfg_arc = load_config(cfg);
    let mut engine = new_engine("fast", &cfg_arc);
    replay::replay(cfg_arc, engine.as_mut(), &input[..], std::io::sink()).unwrap();
    assert_eq!(m.get("liqscan_accounts", &[]), engine.n_accounts() as f64);
    assert_eq!(m.get("liqscan_positions", &[]), engine.n_positions() as f64);
    assert_eq!(m.get("liqscan_engine_connected", &[]), 1.0, "stdin is open");
    assert_eq!(m.get("liqscan_subscribers", &[]), 0.0);
    for (name, n) in [
        ("liqscan_event_latency_seconds", summary.event_latency.summary().count),
        ("liqscan_apply_latency_seconds", summary.apply_latency.summary().count),
        ("liqscan_ts_to_event_latency_seconds", 0),
        ("liqscan_control_hold_seconds", 0), // this scrape is the first query
    ] {
        let (quantiles, sum, count) = m.summary(name);
        let mut keys: Vec<&str> = quantiles.keys().map(String::as_str).collect();
        keys.sort();
        assert_eq!(keys, ["0.5", "0.9", "0.99", "0.999", "1"], "{name}");
        assert_eq!(count, n, "{name}: one observation per event / command");
        assert_eq!(sum > 0.0, n > 0, "{name}");
        let (p50, max) = (quantiles["0.5"], quantiles["1"]);
        assert!(p50 <= max && (n == 0 || max > 0.0), "{name}: {quantiles:?}");
    }
    d.close_stdin();
    assert!(d.wait_exit().success());
}

// ---------------------------------------------------------------------------------------
// /accounts/{id} and /at-risk
// ---------------------------------------------------------------------------------------

use rust_decimal::Decimal;

fn dec(v: &Value) -> Decimal {
    v.as_str().unwrap_or_else(|| panic!("not a decimal: {v}")).parse().unwrap()
}

/// An at-risk item's figures, derived from a `query` event: (key, balance, maintenance,
/// ratio text).
type Derived = ((u64, String, Option<String>), Decimal, Decimal, Value);

/// The items of one account's `account` event: the cross account when it has a non-zero
/// cross position and every mark it needs, each isolated position with its mark.
fn items_of(event: &Value) -> Vec<Derived> {
    let account = event["account"].as_u64().unwrap();
    let positions = event["positions"].as_array().unwrap();
    let mut items = Vec::new();
    let cross = positions.iter().any(|p| p["mode"] == "cross");
    if cross && !event["margin_balance"].is_null() {
        items.push((
            (account, "cross".to_owned(), None),
            dec(&event["margin_balance"]),
            dec(&event["maintenance_margin"]),
            event["margin_ratio"].clone(),
        ));
    }
    for p in positions.iter().filter(|p| p["mode"] == "isolated" && !p["mark_price"].is_null()) {
        let balance = dec(&p["isolated_margin"]) + dec(&p["unrealized_pnl"]);
        items.push((
            (account, "isolated".to_owned(), Some(p["symbol"].as_str().unwrap().to_owned())),
            balance,
            dec(&p["maintenance_margin"]),
            p["margin_ratio"].clone(),
        ));
    }
    items
}

/// The at-risk order of SPEC 9.3 as figures from query events show it: liquidatable first,
/// then a null ratio (balance <= 0), then maintenance / balance descending. Ties (equal to
/// 28 digits) are left to the engine's exact tie rule, so they compare equal here.
fn risk_order(a: &Derived, b: &Derived) -> std::cmp::Ordering {
    let liq = |d: &Derived| d.1 < d.2;
    let ratio = |d: &Derived| (d.1 > Decimal::ZERO).then(|| d.2 / d.1);
    liq(b).cmp(&liq(a)).then_with(|| match (ratio(a), ratio(b)) {
        (None, None) => std::cmp::Ordering::Equal,
        (None, Some(_)) => std::cmp::Ordering::Less,
        (Some(_), None) => std::cmp::Ordering::Greater,
        (Some(x), Some(y)) => y.cmp(&x),
    })
}

fn item_key(item: &Value) -> (u64, String, Option<String>) {
    (
        item["account"].as_u64().unwrap(),
        item["mode"].as_str().unwrap().to_owned(),
        item["symbol"].as_str().map(str::to_owned),
    )
}

#[test]
fn accounts_equal_query_events_and_at_risk_follows_their_figures() {
    let (stream, cfg) = ("gen/snapshot_mix.ndjson", "gen/snapshot_mix.config.json");
    let full = std::fs::read(fixture(stream)).unwrap();
    // The stream up to its last liquidation, before the generator's engine closes the item:
    // liquidatable items are still there.
    let (full_events, _) = replay_of("fast", cfg, &full);
    let last = full_events.iter().rfind(|v| v["type"] == "liquidation").unwrap();
    let n_lines = last["line"].as_u64().unwrap() as usize;
    let input: Vec<u8> =
        full.split_inclusive(|&b| b == b'\n').take(n_lines).flatten().copied().collect();
    let (want, summary) = replay_of("fast", cfg, &input);
    let mut d = Daemon::start(&["--config", &fixture(cfg), "--http", "127.0.0.1:0"], Input::Pipe);
    let http = d.addr("http");
    d.write_stdin(&input);
    d.stdout_until(want.len());
    let health = wait_health(http, "every message", |h| h["messages"] == summary.messages);
    assert_eq!(health["status"], "ok");

    // Every account the stream names (and one it never names), over HTTP, then as queries.
    let mut ids: Vec<u64> = input
        .split(|&b| b == b'\n')
        .filter_map(|l| serde_json::from_slice::<Value>(l).ok())
        .filter_map(|v| v["account"].as_u64())
        .collect();
    ids.sort();
    ids.dedup();
    let never = ids.last().unwrap() + 1000;
    let (status, body) = http_json(http, &format!("/accounts/{never}"));
    assert_eq!(status, 404, "{body}");
    assert!(body["error"].as_str().unwrap().contains("never been mentioned"), "{body}");
    let mut bodies = Vec::new();
    for &id in &ids {
        let (status, body) = http_json(http, &format!("/accounts/{id}"));
        assert_eq!(status, 200, "{id}: {body}");
        assert_eq!(body["seq"], health["last_seq"], "the point: the last seq applied");
        bodies.push(body);
    }
    let queries: String =
        ids.iter().map(|id| format!("{{\"type\":\"query\",\"account\":{id}}}\n")).collect();
    d.write_stdin(queries.as_bytes());
    let out = d.stdout_until(want.len() + ids.len()).to_vec();
    let query_events = events(&lines_text(&out[want.len()..]));
    let strip = |v: &Value| without(without(vec![v.clone()], "line"), "seq").remove(0);
    for (body, event) in bodies.iter().zip(&query_events) {
        let mut body = body.clone();
        body.as_object_mut().unwrap().remove("latency_ns");
        assert_eq!(strip(&body), strip(event), "/accounts/{} vs its query event", event["account"]);
    }

    // /at-risk against the figures of the query events.
    let derived: Vec<Derived> = query_events.iter().flat_map(items_of).collect();
    let (status, all) = http_json(http, "/at-risk?limit=10000");
    assert_eq!(status, 200, "{all}");
    let items = all["items"].as_array().unwrap();
    assert_eq!(items.len(), derived.len(), "every item with its marks, none other");
    let by_key: std::collections::HashMap<_, _> =
        derived.iter().map(|d| (d.0.clone(), d)).collect();
    let mut modes = std::collections::HashSet::new();
    for pair in items.windows(2) {
        let (a, b) = (by_key[&item_key(&pair[0])], by_key[&item_key(&pair[1])]);
        assert_ne!(risk_order(a, b), std::cmp::Ordering::Greater, "{} before {}", pair[0], pair[1]);
    }
    for item in items {
        let d = by_key[&item_key(item)];
        assert_eq!(dec(&item["margin_balance"]), d.1, "{item}");
        assert_eq!(dec(&item["maintenance_margin"]), d.2, "{item}");
        assert_eq!(item["margin_ratio"], d.3, "{item}");
        assert_eq!(item["liquidatable"], d.1 < d.2, "{item}");
        modes.insert(item["mode"].as_str().unwrap().to_owned());
    }
    assert_eq!(modes.len(), 2, "both kinds of items are ranked");
    assert!(items[0]["liquidatable"] == true, "the stream stops at a liquidation");

    // Filters and the limit pick from the same order.
    let keys = |v: &Value| v["items"].as_array().unwrap().iter().map(item_key).collect::<Vec<_>>();
    let all_keys = keys(&all);
    let (_, top) = http_json(http, "/at-risk");
    assert_eq!(keys(&top), all_keys[..all_keys.len().min(100)], "limit defaults to 100");
    let (_, five) = http_json(http, "/at-risk?limit=5");
    assert_eq!(keys(&five), all_keys[..5]);
    let (_, isolated) = http_json(http, "/at-risk?mode=isolated&limit=10000");
    let want_isolated: Vec<_> = all_keys.iter().filter(|k| k.1 == "isolated").cloned().collect();
    assert_eq!(keys(&isolated), want_isolated);
    let symbol = want_isolated[0].2.clone().unwrap();
    let (_, by_symbol) = http_json(http, &format!("/at-risk?symbol={symbol}&limit=10000"));
    let touches = |k: &(u64, String, Option<String>)| {
        k.2.as_deref() == Some(symbol.as_str())
            || (k.2.is_none()
                && query_events.iter().any(|e| {
                    e["account"] == k.0
                        && e["positions"]
                            .as_array()
                            .unwrap()
                            .iter()
                            .any(|p| p["mode"] == "cross" && p["symbol"] == symbol.as_str())
                }))
    };
    let want_symbol: Vec<_> = all_keys.iter().filter(|k| touches(k)).cloned().collect();
    assert_eq!(keys(&by_symbol), want_symbol);
    let (status, capped) = http_json(http, "/at-risk?limit=1000000");
    assert_eq!((status, keys(&capped)), (200, all_keys.clone()), "a large limit is capped");
    let (status, capped) = http_json(http, "/at-risk?limit=99999999999999999999");
    assert_eq!((status, keys(&capped)), (200, all_keys.clone()), "a limit past u64 is capped");
    d.close_stdin();
    assert!(d.wait_exit().success());
}

// ---------------------------------------------------------------------------------------
// Bad requests, bad connections, bounds
// ---------------------------------------------------------------------------------------

#[test]
fn bad_requests_bad_connections_and_bounds_never_take_it_down() {
    let mut d = Daemon::start(
        &[
            "--config",
            &fixture("config/multi_tier.json"),
            "--listen",
            "127.0.0.1:0",
            "--events",
            "127.0.0.1:0",
            "--http",
            "127.0.0.1:0",
            "--max-subscribers",
            "1",
            "--max-http-connections",
            "2",
        ],
        Input::Null,
    );
    let (engine, events_addr, http) = (d.addr("engine"), d.addr("events"), d.addr("http"));
    let refused = [
        ("/accounts/abc", "not an integer"),
        ("/accounts/-1", "not an integer"),
        ("/at-risk?limit=x", "limit"),
        ("/at-risk?limit=-3", "limit"),
        ("/at-risk?mode=sideways", "mode"),
        ("/at-risk?symbol=NOPE", "not in the config"),
        ("/at-risk?colour=red", "unknown parameter"),
        ("/at-risk?limit=1&limit=2", "twice"),
        ("/accounts/1?verbose=1", "unknown parameter"),
        ("/accounts/+1", "not an integer"),
        ("/accounts/0018", "leading zero: write it as 18"),
        ("/accounts/00", "leading zero: write it as 0"),
        // Percent-escapes that are not UTF-8: the same JSON 400, not the framework's text.
        ("/accounts/%FF", "bad account id"),
    ];
    for (path, reason) in refused {
        let (status, body) = http_json(http, path);
        assert_eq!(status, 400, "{path}: {body}");
        assert!(body["error"].as_str().unwrap().contains(reason), "{path}: {body}");
    }
    // A 10 KB id is refused without being echoed back whole.
    let (status, body) = http_json(http, &format!("/accounts/{}", "7x".repeat(5_000)));
    assert_eq!(status, 400);
    let reason = body["error"].as_str().unwrap();
    assert!(reason.contains("not an integer") && reason.len() < 200, "{reason}");
    assert_eq!(http_get(http, "/nowhere").0, 404);
    // Another method than GET: 405 with a reason and the methods allowed.
    let mut post = std::net::TcpStream::connect(http).unwrap();
    post.set_read_timeout(Some(PATIENCE)).unwrap();
    std::io::Write::write_all(&mut post, b"POST /health HTTP/1.0\r\nContent-Length: 0\r\n\r\n")
        .unwrap();
    let mut answer = String::new();
    std::io::Read::read_to_string(&mut post, &mut answer).unwrap();
    let lower = answer.to_ascii_lowercase();
    assert!(answer.starts_with("HTTP/1.0 405"), "{answer}");
    assert!(lower.contains("allow: get") && answer.contains("only GET"), "{answer}");
    // Not HTTP at all: refused by the server, the daemon goes on.
    let mut junk = std::net::TcpStream::connect(http).unwrap();
    std::io::Write::write_all(&mut junk, b"\x00\xffNOT HTTP\r\n\r\n").unwrap();
    drop(junk);

    // A subscriber over --max-subscribers is closed at once.
    let _first = Subscriber::connect(events_addr);
    wait_health(http, "one subscriber", |h| h["subscribers"] == 1);
    let mut second = Subscriber::connect(events_addr);
    assert!(second.until_closed().is_empty(), "refused: closed with nothing sent");

    // An engine that sends junk gets rejects, not a crash; the daemon still serves.
    let mut conn = EngineConn::connect(engine);
    conn.send(b"\xff\xfe garbage\n{\"type\":\"mark\"}\n{\"type\":\"query\",\"account\":1}\n");
    wait_health(http, "three messages", |h| h["messages"] == 3);

    // Connections over --max-http-connections are closed unanswered.
    let idle: Vec<_> = (0..2).map(|_| std::net::TcpStream::connect(http).unwrap()).collect();
    std::thread::sleep(std::time::Duration::from_millis(100));
    let mut over = std::net::TcpStream::connect(http).unwrap();
    over.set_read_timeout(Some(PATIENCE)).unwrap();
    std::io::Write::write_all(&mut over, b"GET /health HTTP/1.0\r\n\r\n").unwrap();
    let mut answer = Vec::new();
    let _ = std::io::Read::read_to_end(&mut over, &mut answer);
    assert!(answer.is_empty(), "refused: {:?}", String::from_utf8_lossy(&answer));
    drop(idle);
    // The idle connections' permits come back once the server sees them closed.
    wait_http_ok(http, "/metrics", "HTTP to come back");
    let m = scrape(http);
    // Each refused path above, and the 10 KB id.
    assert_eq!(m.get("liqscan_http_bad_requests_total", &[]), (refused.len() + 1) as f64);
    assert_eq!(m.get("liqscan_connections_refused_total", &[("listener", "events")]), 1.0);
    assert!(m.get("liqscan_connections_refused_total", &[("listener", "http")]) >= 1.0);
    assert_eq!(m.get("liqscan_rejects_total", &[("code", "malformed")]), 1.0);
    assert_eq!(m.get("liqscan_rejects_total", &[("code", "invalid")]), 1.0);
    assert_eq!(http_json(http, "/health").0, 200);
    d.sigterm();
    assert!(d.wait_exit().success());
}

/// A consumer that restarts (closes its connection, after sending a line or not, and connects
/// again at once) is taken back at `--max-subscribers 1`: its old connection, closed but not
/// yet seen closed by its task, does not count. A second connection beside a live one is
/// still refused.
#[test]
fn a_subscriber_that_reconnects_at_the_cap_is_taken_back() {
    let mut d = loopback_daemon(&["--events", "127.0.0.1:0", "--max-subscribers", "1"]);
    let (engine, events_addr, http) = (d.addr("engine"), d.addr("events"), d.addr("http"));
    let first = std::net::TcpStream::connect(events_addr).unwrap();
    wait_health(http, "one subscriber", |h| h["subscribers"] == 1);
    drop(first);
    // Thirty restarts in a row, each connecting right after its close; every other one sent
    // a line first (read and ignored, perhaps not yet when it reconnects).
    for k in 0..30 {
        let mut again = std::net::TcpStream::connect(events_addr).unwrap();
        if k % 2 == 1 {
            std::io::Write::write_all(&mut again, b"hello\n").unwrap();
        }
        drop(again);
    }
    let mut last = Subscriber::connect(events_addr);
    // Taken: it gets the events of messages sent from the moment it joined (a query every
    // 50 ms until one arrives: it joins when the daemon accepts it, a moment after connect).
    let mut conn = EngineConn::connect(engine);
    let until = std::time::Instant::now() + PATIENCE;
    while !last.within(1, std::time::Duration::from_millis(50)) {
        assert!(!last.closed(), "the reconnected subscriber was refused");
        assert!(std::time::Instant::now() < until, "the reconnected subscriber got no event");
        conn.send(b"{\"type\":\"query\",\"account\":7}\n");
    }
    let got: Value = serde_json::from_str(&last.lines[0]).unwrap();
    assert_eq!((got["type"].as_str(), got["account"].as_u64()), (Some("account"), Some(7)));
    wait_health(http, "the old connections gone", |h| h["subscribers"] == 1);
    let m = scrape(http);
    assert_eq!(m.get("liqscan_connections_refused_total", &[("listener", "events")]), 0.0);
    // The cap still holds against a connection beside a live one.
    let mut beside = Subscriber::connect(events_addr);
    assert!(beside.until_closed().is_empty(), "refused: closed with nothing sent");
    let m = scrape(http);
    assert_eq!(m.get("liqscan_connections_refused_total", &[("listener", "events")]), 1.0);
    d.sigterm();
    assert!(d.wait_exit().success());
}

/// A daemon on the multi-tier config with an engine port and HTTP on loopback, and `extra`
/// flags; no input yet.
fn loopback_daemon(extra: &[&str]) -> Daemon {
    let config = fixture("config/multi_tier.json");
    let mut args = vec!["--config", &config, "--listen", "127.0.0.1:0", "--http", "127.0.0.1:0"];
    args.extend_from_slice(extra);
    Daemon::start(&args, Input::Null)
}

#[test]
fn idle_http_connections_are_closed_so_they_cannot_lock_out_health_checks() {
    let mut d = loopback_daemon(&["--max-http-connections", "2", "--http-idle-timeout", "300ms"]);
    let http = d.addr("http");
    // Two clients take every slot and send nothing (one half a request line).
    let mut idle: Vec<_> = (0..2).map(|_| std::net::TcpStream::connect(http).unwrap()).collect();
    std::io::Write::write_all(&mut idle[1], b"GET /hea").unwrap();
    // The daemon closes both once they have been idle for 300 ms ...
    for conn in &mut idle {
        conn.set_read_timeout(Some(PATIENCE)).unwrap();
        let mut rest = Vec::new();
        let closed = std::io::Read::read_to_end(conn, &mut rest);
        assert!(closed.is_ok(), "the daemon never closed an idle connection: {closed:?}");
        assert!(rest.is_empty(), "closed unanswered: {:?}", String::from_utf8_lossy(&rest));
    }
    // ... so a health check gets through while those clients still hold their sockets.
    wait_http_ok(http, "/health", "health checks to get through");
    drop(idle);
    d.sigterm();
    assert!(d.wait_exit().success());
}

/// A client that sends its request one header line at a time, each within the idle
/// timeout of the last (a "slowloris"), moves bytes for ever: it is closed once its request
/// has not been read and answered within the timeout of its first byte, so two of them
/// cannot hold both slots and lock health checks out.
#[test]
fn clients_trickling_their_requests_are_closed_so_they_cannot_lock_out_health_checks() {
    let mut d = loopback_daemon(&["--max-http-connections", "2", "--http-idle-timeout", "500ms"]);
    let http = d.addr("http");
    let mut slow: Vec<_> = (0..2).map(|_| std::net::TcpStream::connect(http).unwrap()).collect();
    for conn in &mut slow {
        std::io::Write::write_all(conn, b"GET /health HTTP/1.1\r\n").unwrap();
    }
    let mut closed = [false; 2];
    let started = std::time::Instant::now();
    // A header line every 100 ms (for at most 10 s), checking after each whether the daemon
    // closed the connection.
    for _ in 0..100 {
        for (conn, closed) in slow.iter_mut().zip(&mut closed) {
            if *closed {
                continue;
            }
            conn.set_read_timeout(Some(std::time::Duration::from_millis(5))).unwrap();
            let mut byte = [0u8; 1];
            *closed = std::io::Write::write_all(conn, b"X-Slow: 1\r\n").is_err()
                || match std::io::Read::read(conn, &mut byte) {
                    Ok(0) => true,
                    Ok(_) => panic!("an unfinished request was answered"),
                    Err(e) => !matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ),
                };
        }
        if closed.iter().all(|&c| c) {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let took = started.elapsed();
    assert_eq!(closed, [true, true], "the trickling clients still hold their slots after {took:?}");
    assert!(took < std::time::Duration::from_secs(5), "closed only after {took:?}");
    // The slots are free again for a health check.
    wait_http_ok(http, "/health", "health checks to get through");
    drop(slow);
    d.sigterm();
    assert!(d.wait_exit().success());
}

/// A client reading a big answer slowly (an 8 KB receive window, ~200 KB/s) keeps its
/// connection to the end, though the daemon's writes wait longer than the idle timeout for
/// the socket to drain: what the peer acknowledges counts as progress. Before, the answer
/// was cut ~100 KB before its end, without a word, once one write had waited the timeout.
#[test]
fn a_slow_reader_gets_a_big_answer_whole() {
    common::long_test(
        "a_slow_reader_gets_a_big_answer_whole (~20 s: a 3.4 MB answer read at 200 KB/s)",
    );
    let tmp = TempDir::new("slow-reader");
    let (stream, config) = (tmp.path("book.ndjson"), tmp.path("book.config.json"));
    let made = std::process::Command::new(env!("CARGO_BIN_EXE_liqscan"))
        .args(["gen", "--accounts", "12000", "--symbols", "10", "--messages", "0"])
        .args(["--seed", "5", "--out", &stream, "--config-out", &config])
        .output()
        .unwrap();
    assert!(made.status.success(), "{}", String::from_utf8_lossy(&made.stderr));
    let input = std::fs::read(&stream).unwrap();
    let lines = input.iter().filter(|&&b| b == b'\n').count() as u64;
    let args = ["--config", &config, "--listen", "127.0.0.1:0", "--http", "127.0.0.1:0"];
    let mut d = Daemon::start(&[&args[..], &["--http-idle-timeout", "1s"]].concat(), Input::Null);
    let http = d.addr("http");
    let mut engine = EngineConn::connect(d.addr("engine"));
    engine.send(&input);
    wait_health(http, "the book", |h| h["messages"] == lines);

    // The receive buffer is set before the connection is made, so that the window the
    // client announces from its first segment on is small.
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let mut client = rt.block_on(async {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(8 << 10).unwrap();
        socket.connect(http).await.unwrap().into_std().unwrap()
    });
    client.set_nonblocking(false).unwrap();
    client.set_read_timeout(Some(PATIENCE)).unwrap();
    // HTTP/1.1, kept alive: the server watches the connection for the next request while
    // it writes this answer.
    let request = b"GET /at-risk?limit=10000 HTTP/1.1\r\nHost: liqscan\r\n\r\n";
    std::io::Write::write_all(&mut client, request).unwrap();
    let (mut got, mut want) = (Vec::new(), None);
    let mut buf = [0u8; 8 << 10];
    let until = std::time::Instant::now() + PATIENCE;
    while want.is_none_or(|n| got.len() < n) && std::time::Instant::now() < until {
        let n = match std::io::Read::read(&mut client, &mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) => panic!("read failed after {} bytes: {e}", got.len()),
        };
        got.extend_from_slice(&buf[..n]);
        if want.is_none()
            && let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n")
        {
            let head = String::from_utf8_lossy(&got[..end]).to_ascii_lowercase();
            let length: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length: ")?.parse().ok())
                .expect("a content length");
            want = Some(end + 4 + length);
        }
        // ~200 KB/s: about 17 s for the ~3.4 MB answer.
        std::thread::sleep(std::time::Duration::from_micros(5 * n as u64));
    }
    let want = want.expect("an HTTP answer");
    assert!(want > 3 << 20, "the answer is big: {want} bytes");
    assert_eq!(got.len(), want, "the answer was cut short");
    let text = std::str::from_utf8(&got).unwrap();
    let answer: Value = serde_json::from_str(&text[text.find("\r\n\r\n").unwrap() + 4..]).unwrap();
    assert_eq!(answer["items"].as_array().unwrap().len(), 10_000);
    drop(engine);
    d.sigterm();
    assert!(d.wait_exit().success());
}

/// A subscriber that connects and leaves gives its socket back at once, not at the next
/// event: on a quiet stream, clients that connect and close over and over must not pile up
/// open file descriptors until the daemon cannot accept anything.
#[test]
fn subscribers_that_leave_on_a_quiet_stream_give_their_sockets_back() {
    let mut d = loopback_daemon(&["--events", "127.0.0.1:0"]);
    let (events, http) = (d.addr("events"), d.addr("http"));
    let fds = || std::fs::read_dir(format!("/proc/{}/fd", d.pid())).unwrap().count();
    let before = fds();
    for _ in 0..300 {
        let conn = std::net::TcpStream::connect(events).unwrap();
        drop(conn);
    }
    // Each subscriber's task sees its client leave; bounded wait for the last ones.
    let deadline = std::time::Instant::now() + PATIENCE;
    let mut now = fds();
    while now > before + 20 && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(50));
        now = fds();
    }
    assert!(
        now <= before + 20,
        "{before} open files before 300 subscribers came and left, {now} after"
    );
    wait_http_ok(http, "/health", "the daemon to answer");
    d.sigterm();
    assert!(d.wait_exit().success());
}

#[test]
fn help_documents_every_flag() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_liqscan"))
        .args(["run", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8(out.stdout).unwrap();
    for flag in [
        "--config",
        "--engine",
        "--listen",
        "--events ",
        "--events-file",
        "--stdout",
        "--http",
        "--subscriber-buffer",
        "--max-subscribers",
        "--max-http-connections",
        "--http-idle-timeout",
        "--state-dir",
        "--snapshot-interval",
        "--accept-config-change",
        "--log-format",
        "--nats",
        "--shard",
    ] {
        assert!(help.contains(flag), "--help lacks {flag}:\n{help}");
    }
    // A bound of 0 would refuse every connection: a command-line error, not a silent lockout.
    for flag in ["--max-subscribers", "--max-http-connections"] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_liqscan"))
            .args(["run", "--config", &fixture("config/multi_tier.json"), flag, "0"])
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{flag} 0");
        assert!(String::from_utf8_lossy(&out.stderr).contains("at least 1"), "{flag} 0");
    }
    // A subscriber budget of a chunk or less would cut healthy subscribers a chunk behind.
    for value in ["1K", "255K"] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_liqscan"))
            .args(["run", "--config", &fixture("config/multi_tier.json")])
            .args(["--subscriber-buffer", value])
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "--subscriber-buffer {value}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("at least 256K"), "--subscriber-buffer {value}: {stderr}");
    }
}

// ---------------------------------------------------------------------------------------
// SIGTERM mid-stream
// ---------------------------------------------------------------------------------------

/// The `messages` of the daemon's last log line ("stopped: every event delivered to every
/// healthy sink").
fn messages_applied(d: &Daemon) -> usize {
    let v = d.wait_log("the stop", |v| {
        v["message"] == "stopped: every event delivered to every healthy sink"
    });
    v["messages"].as_u64().unwrap() as usize
}

#[test]
fn sigterm_mid_stream_delivers_every_event_of_every_applied_message() {
    let (stream, cfg) = ("gen/snapshot_mix.ndjson", "gen/snapshot_mix.config.json");
    let input = std::fs::read(fixture(stream)).unwrap();
    let lines: Vec<Vec<u8>> = input.split_inclusive(|&b| b == b'\n').map(<[u8]>::to_vec).collect();
    let dir = std::env::temp_dir().join(format!("liqscan-daemon-term-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();

    for mode in ["tcp", "stdin"] {
        let file = dir.join(format!("{mode}.ndjson"));
        let file_arg = file.to_str().unwrap().to_owned();
        let mut args = vec!["--config", &fixture(cfg)[..], "--events-file", &file_arg, "--stdout"]
            .into_iter()
            .map(str::to_owned)
            .collect::<Vec<_>>();
        if mode == "tcp" {
            args.extend(["--listen", "127.0.0.1:0", "--events", "127.0.0.1:0"].map(String::from));
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut d = Daemon::start(&args, if mode == "tcp" { Input::Null } else { Input::Pipe });
        // The stream goes out in steps of 500 lines every 20 ms (about half a second in all);
        // SIGTERM comes after 150 ms, in the middle of it.
        let (mut sub, mut engine_side) = (None, None);
        let sender = if mode == "tcp" {
            sub = Some(Subscriber::connect(d.addr("events")));
            d.wait_log("subscriber", |v| v["message"] == "subscriber connected");
            let mut conn = EngineConn::connect(d.addr("engine"));
            engine_side = Some(conn.stream.try_clone().unwrap());
            let lines = lines.clone();
            std::thread::spawn(move || {
                for step in lines.chunks(500) {
                    if std::io::Write::write_all(&mut conn.stream, &step.concat()).is_err() {
                        break; // the daemon stopped reading
                    }
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
            })
        } else {
            let mut stdin = d.stdin.take().unwrap();
            let lines = lines.clone();
            std::thread::spawn(move || {
                for step in lines.chunks(500) {
                    if std::io::Write::write_all(&mut stdin, &step.concat()).is_err() {
                        break;
                    }
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                // Held open until the daemon is gone, as a live engine would.
                std::thread::sleep(std::time::Duration::from_secs(2));
            })
        };
        std::thread::sleep(std::time::Duration::from_millis(150));
        d.sigterm();
        assert!(d.wait_exit().success(), "{mode}: exit 0 on SIGTERM: {:#?}", d.log());
        let applied = messages_applied(&d);
        assert!(applied > 0 && applied < lines.len(), "{mode}: stopped mid-stream ({applied})");
        let (want, _) = replay_of("fast", cfg, &lines[..applied].concat());
        let want = canonical(want);
        let what = format!("{mode}, SIGTERM after {applied} messages");
        let stdout = canonical(events(&lines_text(&d.stdout_all())));
        assert_same_events(&format!("{what}: stdout"), &stdout, &want);
        let in_file = canonical(events(&std::fs::read_to_string(&file).unwrap()));
        assert_same_events(&format!("{what}: events file"), &in_file, &want);
        if let Some(mut sub) = sub {
            let got = canonical(events(&lines_text(sub.until_closed())));
            assert_same_events(&format!("{what}: subscriber"), &got, &want);
        }
        if let Some(mut engine_side) = engine_side {
            // The engine is told how far the daemon read: what it sent after that was not
            // applied, and goes again after the next hello.
            let bye = read_bye(&mut engine_side);
            let seqs = effective_seqs(cfg, &input);
            assert_eq!(bye["last_seq"], seqs[applied - 1].unwrap(), "{what}: {bye}");
            assert_eq!(bye["reason"], "stopping", "{what}: {bye}");
        }
        let _ = sender.join();
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A stop while no engine is connected, or while stdin is open and silent, does not wait
/// for input that may never come.
#[test]
fn sigterm_while_waiting_for_input_exits_at_once() {
    for (args, input) in [(vec!["--listen", "127.0.0.1:0"], Input::Null), (vec![], Input::Pipe)] {
        let mut all = vec!["--config".to_owned(), fixture("config/multi_tier.json")];
        all.extend(args.iter().map(|a| a.to_string()));
        let all: Vec<&str> = all.iter().map(String::as_str).collect();
        let mut d = Daemon::start(&all, input);
        d.wait_log("start", |v| v["message"] == "liqscan run started");
        d.sigterm();
        assert!(d.wait_exit().success(), "{args:?}: {:#?}", d.log());
        assert_eq!(messages_applied(&d), 0);
    }
}

/// Start-up refusals: a bad config exits 2, an address in use exits 1, each with a reason.
#[test]
fn start_up_refusals_exit_with_a_reason() {
    let bin = env!("CARGO_BIN_EXE_liqscan");
    let out = std::process::Command::new(bin)
        .args(["run", "--config", &fixture("golden/cross_basics.ndjson")])
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("liqscan: config"));
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let out = std::process::Command::new(bin)
        .args(["run", "--config", &fixture("config/multi_tier.json"), "--http", &addr])
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("cannot serve HTTP on {addr}")), "{err}");
    // Options that cannot work are refused (exit 2) with a reason: durations under their
    // bound, and the snapshot options without a state directory.
    let refused = |flags: &[&str]| {
        let out = std::process::Command::new(bin)
            .args(["run", "--config", &fixture("config/multi_tier.json")])
            .args(flags)
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{flags:?}");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    for flags in [["--http-idle-timeout", "0s"], ["--http-idle-timeout", "1ms"]] {
        assert!(refused(&flags).contains("at least 100ms"), "{flags:?}");
    }
    let dir = std::env::temp_dir().join(format!("liqscan-refusal-{}", std::process::id()));
    let dir = dir.to_string_lossy();
    let err = refused(&["--state-dir", &dir, "--snapshot-interval", "1ns"]);
    assert!(err.contains("at least 10ms"), "{err}");
    assert!(!std::path::Path::new(&*dir).exists(), "a refused start creates no state directory");
    for flags in [&["--snapshot-interval", "1s"][..], &["--accept-config-change"][..]] {
        let err = refused(flags);
        assert!(err.contains("--state-dir"), "{flags:?}: {err}");
    }
    // One address for two roles is a usage error, said before anything is bound (a bare port
    // and its 127.0.0.1 form are the same address). Port 0 for several roles picks a port for
    // each: every test here starts daemons that way.
    let err = refused(&["--listen", "7571", "--events", "127.0.0.1:7571"]);
    assert!(err.contains("--listen and --events are both 127.0.0.1:7571"), "{err}");
    let err = refused(&["--listen", "0.0.0.0:7574", "--http", "127.0.0.1:7574"]);
    assert!(
        err.contains("--listen 0.0.0.0:7574 and --http 127.0.0.1:7574 share port 7574"),
        "{err}"
    );
    let err = refused(&["--events", "7573", "--http", "7573"]);
    assert!(err.contains("--events and --http are both 127.0.0.1:7573"), "{err}");
}

/// A stderr whose reader goes away (a log pipe or fifo closed) costs the daemon its log
/// lines, nothing else: engines still connect (the acceptor thread logs each connection; its
/// log call used to panic and take the `--listen` port down), events still flow, and SIGTERM
/// exits 0.
#[test]
fn a_closed_stderr_loses_log_lines_only() {
    use std::io::BufRead as _;
    /// Kills the daemon however the test ends, so that a failed assertion leaves no process.
    struct Killed(std::process::Child);
    impl Drop for Killed {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut child = Killed(
        std::process::Command::new(env!("CARGO_BIN_EXE_liqscan"))
            .args(["run", "--log-format", "json", "--config", &fixture("config/multi_tier.json")])
            .args(["--listen", "127.0.0.1:0", "--events", "127.0.0.1:0", "--http", "127.0.0.1:0"])
            .env("RUST_LOG", "info")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap(),
    );
    // The log is read on a thread until "subscriber connected", then its reader is dropped
    // (the pipe closes); every wait for it here is bounded by PATIENCE.
    let stderr = child.0.stderr.take().unwrap();
    let (log_tx, log_rx) = std::sync::mpsc::channel::<Value>();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            let v: Value = serde_json::from_str(&line).unwrap_or_default();
            let last = v["message"] == "subscriber connected";
            if log_tx.send(v).is_err() || last {
                break;
            }
        }
        // The reader was dropped with the loop: the pipe is closed now.
        let _ = log_tx.send(serde_json::json!({ "message": "stderr closed" }));
    });
    let log_until = |what: &str, pred: &dyn Fn(&Value) -> bool| -> Vec<Value> {
        let (deadline, mut seen) = (std::time::Instant::now() + PATIENCE, Vec::new());
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match log_rx.recv_timeout(left) {
                Ok(v) if pred(&v) => {
                    seen.push(v);
                    return seen;
                }
                Ok(v) => seen.push(v),
                Err(_) => panic!("no log line {what} within {PATIENCE:?}: {seen:#?}"),
            }
        }
    };
    let start = log_until("start", &|v| v["message"] == "liqscan run started");
    let addr = |role: &str| -> std::net::SocketAddr {
        let v = start.iter().find(|v| v["role"] == role).expect(role);
        v["addr"].as_str().unwrap().parse().unwrap()
    };
    let (engine, http) = (addr("engine"), addr("http"));
    let mut subscriber = Subscriber::connect(addr("events"));
    // The reading thread stops after this line and closes the pipe.
    log_until("stderr closed", &|v| v["message"] == "stderr closed");
    // Two engine connections, each logged on the acceptor thread: the second is accepted
    // only if the first one's log call did not take the acceptor down.
    let stream = "golden/cross_basics.ndjson";
    let want = replay_events(stream, "config/multi_tier.json", "fast");
    drop(EngineConn::connect(engine));
    let mut conn = EngineConn::connect(engine);
    conn.send(&std::fs::read(fixture(stream)).unwrap());
    let got = canonical(events(&lines_text(subscriber.until(want.len()))));
    assert_same_events("events with stderr closed", &got, &want);
    wait_http_ok(http, "/health", "health with stderr closed");
    let ok = std::process::Command::new("kill").args(["-TERM", &child.0.id().to_string()]).status();
    assert!(ok.unwrap().success());
    let until = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.0.try_wait().unwrap() {
            break status;
        }
        assert!(std::time::Instant::now() < until, "no exit within 30 s of SIGTERM");
        std::thread::sleep(std::time::Duration::from_millis(5));
    };
    assert!(status.success(), "{status:?}");
}
