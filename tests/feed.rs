//! `liqscan feed` against a scripted daemon in the test (SPEC section 9.1): the real binary,
//! on loopback, every wait bounded.
//!
//! The scripted side plays the daemon's part exactly as far as the feed can see it: a hello
//! with `last_seq`, then reading lines, closing when told. What it expects to receive is
//! derived here from the fixture's own `seq` fields, not from liqscan's sequencer.

use std::{
    io::{BufRead, BufReader, Write},
    net::{TcpListener, TcpStream},
    path::PathBuf,
    process::{Child, Command, Output, Stdio},
    thread,
    time::{Duration, Instant},
};

use serde_json::Value;

/// A child process killed when dropped, so a failing test leaves nothing running.
struct Proc(Option<Child>);

impl Proc {
    /// Waits at most `limit` for the child to exit and returns its output.
    fn wait(mut self, limit: Duration) -> Output {
        let mut child = self.0.take().expect("waited once");
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if child.try_wait().expect("try_wait").is_some() {
                return child.wait_with_output().expect("output");
            }
            thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let out = child.wait_with_output().expect("output");
        panic!(
            "feed did not exit within {limit:?}; stderr:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn fixture(p: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures").join(p)
}

fn feed(args: &[&str]) -> Proc {
    let child = Command::new(env!("CARGO_BIN_EXE_liqscan"))
        .arg("feed")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn liqscan feed");
    Proc(Some(child))
}

/// A listener on a free loopback port, and its address: the scripted daemon's side.
fn listen() -> (TcpListener, String) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    (listener, addr)
}

/// `feed ARGS` on the fixture `name`.
fn feed_fixture(args: &[&str], name: &str) -> Proc {
    feed(&[args, &[fixture(name).to_str().unwrap()]].concat())
}

/// Accepts one connection within 10 s.
fn accept(listener: &TcpListener) -> TcpStream {
    listener.set_nonblocking(true).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match listener.accept() {
            Ok((s, _)) => {
                s.set_nonblocking(false).unwrap();
                s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                return s;
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                assert!(Instant::now() < deadline, "feed did not connect within 10 s");
                thread::sleep(Duration::from_millis(10));
            }
            Err(e) => panic!("accept: {e}"),
        }
    }
}

fn hello(stream: &mut TcpStream, last_seq: u64) {
    writeln!(stream, r#"{{"type":"hello","last_seq":{last_seq},"version":"test"}}"#).unwrap();
}

/// Reads up to `max` lines (all until EOF when `None`).
fn read_lines(reader: &mut BufReader<TcpStream>, max: Option<usize>) -> Vec<String> {
    let mut lines = Vec::new();
    while max.is_none_or(|m| lines.len() < m) {
        let mut line = String::new();
        match reader.read_line(&mut line) {
            Ok(0) => break,
            Ok(_) => lines.push(line.trim_end_matches('\n').to_owned()),
            Err(e) => panic!("reading from feed: {e} after {} lines", lines.len()),
        }
    }
    lines
}

fn seq_of(line: &str) -> Option<u64> {
    serde_json::from_str::<Value>(line).ok()?.get("seq")?.as_u64()
}

fn fixture_lines(name: &str) -> Vec<String> {
    std::fs::read_to_string(fixture(name)).unwrap().lines().map(str::to_owned).collect()
}

/// A feed's one connection to `listener`: a hello of 0, every line read, the close; the
/// feed must then exit 0. The lines it sent.
fn one_whole_connection(listener: &TcpListener, proc: Proc) -> Vec<String> {
    let mut conn = accept(listener);
    hello(&mut conn, 0);
    let got = read_lines(&mut BufReader::new(conn.try_clone().unwrap()), None);
    drop(conn);
    let out = proc.wait(Duration::from_secs(20));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    got
}

/// `lines` written as an input file in a temporary folder named after `tag`: (folder, file).
fn input_file(lines: &[String], tag: &str) -> (PathBuf, PathBuf) {
    let dir = std::env::temp_dir().join(format!("liqscan-feed-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let input = dir.join("input.ndjson");
    std::fs::write(&input, lines.join("\n") + "\n").unwrap();
    (dir, input)
}

#[test]
fn sends_from_the_line_after_the_hellos_last_seq() {
    let lines = fixture_lines("gen/live_open.ndjson");
    // (label, hello last_seq): every line of this stream carries its seq, 1, 2, 3, ...
    let table = [("TC1 empty daemon", 0u64), ("TC2 midway", 3217), ("TC3 all but one", 0)];
    for (label, mut last_seq) in table {
        if label.starts_with("TC3") {
            last_seq = seq_of(lines.last().unwrap()).unwrap() - 1;
        }
        let (listener, addr) = listen();
        let proc = feed(&["--to", &addr, fixture("gen/live_open.ndjson").to_str().unwrap()]);
        let mut conn = accept(&listener);
        hello(&mut conn, last_seq);
        let got = read_lines(&mut BufReader::new(conn.try_clone().unwrap()), None);
        drop(conn); // the daemon closes after the engine's end of stream
        let out = proc.wait(Duration::from_secs(20));
        assert!(out.status.success(), "{label}: {}", String::from_utf8_lossy(&out.stderr));
        let from = lines.iter().position(|l| seq_of(l) == Some(last_seq + 1)).unwrap();
        assert_eq!(got.len(), lines.len() - from, "{label}");
        assert!(got == lines[from..], "{label}: lines differ from the fixture's");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(&format!("sent          {} lines", got.len())), "{label}: {err}");
    }
}

/// The effective seq of every line, computed here from the text alone: the `seq` field, or
/// the previous effective seq + 1; lines that are not JSON objects and duplicates take none.
fn effective_seqs(lines: &[String]) -> Vec<Option<u64>> {
    let mut last = 0u64;
    lines
        .iter()
        .map(|l| {
            let v: Value = serde_json::from_str(l).ok().filter(Value::is_object)?;
            match v.get("seq") {
                Some(Value::Number(n)) => {
                    let s = n.as_u64().filter(|s| *s > 0)?;
                    (s > last).then(|| {
                        last = s;
                        s
                    })
                }
                Some(Value::Null) | None => {
                    last += 1;
                    Some(last)
                }
                Some(_) => None,
            }
        })
        .collect()
}

#[test]
fn reconnects_and_resends_from_the_new_hello() {
    // The faults stream has malformed lines, duplicates and gaps: resuming must count seqs
    // as the daemon does.
    let name = "gen/faults.ndjson";
    let lines = fixture_lines(name);
    let seqs = effective_seqs(&lines);
    let (listener, addr) = listen();
    let proc = feed(&["--to", &addr, fixture(name).to_str().unwrap()]);

    // Connection 1: the daemon reads 5,000 lines, then drops the connection.
    let mut conn = accept(&listener);
    hello(&mut conn, 0);
    let first = read_lines(&mut BufReader::new(conn.try_clone().unwrap()), Some(5000));
    assert_eq!(first.len(), 5000);
    assert!(first == lines[..5000]);
    drop(conn);

    // Connection 2: a daemon that lost some lines: its hello says an earlier seq.
    let resume_after = seqs[..2000].iter().flatten().max().copied().unwrap();
    let mut conn = accept(&listener);
    hello(&mut conn, resume_after);
    let second = read_lines(&mut BufReader::new(conn.try_clone().unwrap()), None);
    drop(conn);
    let out = proc.wait(Duration::from_secs(30));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let from = seqs.iter().position(|s| s.is_some_and(|s| s > resume_after)).unwrap();
    assert!(from > 1900 && from <= 2001, "resume point {from}");
    assert_eq!(second.len(), lines.len() - from);
    assert!(second == lines[from..], "connection 2 must carry the stream from line {from}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("connections   2 (hello last_seq: 0, {resume_after})")), "{err}");
    // Connection 1 carried at least the 5,000 lines read (the socket may have taken more):
    // every line it carried from the resume point on was sent twice.
    let sent = |what: &str| -> u64 {
        let l = err.lines().find(|l| l.starts_with(what)).unwrap_or_else(|| panic!("{err}"));
        l.split_whitespace().nth(1).unwrap().parse().unwrap()
    };
    let (total, resent) = (sent("sent"), sent("resent"));
    assert!(resent >= (5000 - from) as u64, "{err}");
    assert_eq!(total - resent, lines.len() as u64, "{err}");
}

#[test]
fn gives_up_when_no_daemon_listens_and_refuses_a_peer_without_hello() {
    // A port that was free a moment ago: nothing listens there.
    let addr = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().to_string();
    let input = fixture("gen/live_open.ndjson");
    let out = feed(&["--to", &addr, "--give-up-after", "1s", input.to_str().unwrap()])
        .wait(Duration::from_secs(20));
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no connection to") && !err.contains("panicked"), "{err}");
    // It gives up when the time is up, not after the back-off it was in: the waits go 50,
    // 100, 200, 400 ms, and the next one (800 ms) is cut to what is left of the second.
    let secs: f64 =
        err.split(" for ").nth(1).and_then(|t| t.split(' ').next()).unwrap().parse().unwrap();
    assert!((1.0..1.4).contains(&secs), "gave up after {secs} s: {err}");

    // A peer that takes the connection and says nothing (a stopping daemon, another port):
    // its hello is not waited for past the give-up time (it was 10 s an attempt).
    let silent = TcpListener::bind("127.0.0.1:0").unwrap(); // never accepted: no hello comes
    let addr = silent.local_addr().unwrap().to_string();
    let out = feed(&["--to", &addr, "--give-up-after", "1s", input.to_str().unwrap()])
        .wait(Duration::from_secs(20));
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    let secs: f64 =
        err.split(" for ").nth(1).and_then(|t| t.split(' ').next()).unwrap().parse().unwrap();
    assert!((1.0..1.4).contains(&secs), "gave up after {secs} s: {err}");
    assert!(err.contains("took the connection but sent no hello"), "{err}");
    // One cause, said once (it was repeated as the last error).
    assert!(!err.contains("last error"), "{err}");
    drop(silent);

    let (listener, addr) = listen();
    let proc = feed(&["--to", &addr, input.to_str().unwrap()]);
    let mut conn = accept(&listener);
    writeln!(conn, r#"{{"type":"liquidation","seq":1}}"#).unwrap();
    let out = proc.wait(Duration::from_secs(20));
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("did not answer with a hello"), "{err}");
}

/// A feed with `--events` against a scripted daemon, once every line arrived: the feed, its
/// subscription and engine connection (a hello of 0 was said), the lines it sent, and the
/// folder of its `--report`.
struct TimedFeed {
    proc: Proc,
    /// Kept listening: a feed whose subscription is closed connects again.
    events: TcpListener,
    subscriber: TcpStream,
    conn: TcpStream,
    got: Vec<String>,
    dir: PathBuf,
}

impl TimedFeed {
    /// Runs `feed --events ... --events-idle 300ms --report` on `input` up to its last line
    /// (`dir`: `None` for a temporary folder named after `tag`, or the input's folder).
    fn start(input: &std::path::Path, tag: &str, dir: Option<PathBuf>) -> TimedFeed {
        let engine = TcpListener::bind("127.0.0.1:0").unwrap();
        let events = TcpListener::bind("127.0.0.1:0").unwrap();
        let (engine_addr, events_addr) =
            (engine.local_addr().unwrap().to_string(), events.local_addr().unwrap().to_string());
        let dir = dir.unwrap_or_else(|| {
            std::env::temp_dir().join(format!("liqscan-feed-{tag}-{}", std::process::id()))
        });
        std::fs::create_dir_all(&dir).unwrap();
        let report = dir.join("report.json");
        let proc = feed(&[
            "--to",
            &engine_addr,
            "--events",
            &events_addr,
            "--events-idle",
            "300ms",
            "--report",
            report.to_str().unwrap(),
            input.to_str().unwrap(),
        ]);
        let subscriber = accept(&events);
        let mut conn = accept(&engine);
        hello(&mut conn, 0);
        let got = read_lines(&mut BufReader::new(conn.try_clone().unwrap()), None);
        TimedFeed { proc, events, subscriber, conn, got, dir }
    }
}

/// The `--report` a [`TimedFeed`] wrote in `dir`.
fn report_in(dir: &std::path::Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(dir.join("report.json")).unwrap()).unwrap()
}

#[test]
fn subscriber_times_events_from_the_stamped_ts() {
    let lines = fixture_lines("gen/live_open.ndjson");
    let TimedFeed { proc, mut subscriber, conn, got, dir, .. } =
        TimedFeed::start(&fixture("gen/live_open.ndjson"), "stamped", None);
    // One event per message with a seq, as a daemon would send them; every third is a
    // liquidation. The ts must have been stamped on every message.
    let mut liquidations = 0;
    for (i, line) in got.iter().enumerate() {
        let v: Value = serde_json::from_str(line).unwrap();
        let ts = v["ts"].as_u64().unwrap_or_else(|| panic!("no ts stamped: {line}"));
        assert!(ts > 1_600_000_000_000_000_000, "ts {ts} is not ns since the epoch");
        let kind = if i % 3 == 0 { "liquidation" } else { "account" };
        liquidations += usize::from(i % 3 == 0);
        writeln!(subscriber, r#"{{"type":"{kind}","seq":{}}}"#, v["seq"]).unwrap();
    }
    // Everything but the stamp is as in the fixture.
    let unstamped: Vec<String> = got
        .iter()
        .map(|l| {
            let i = l.find("\"ts\":").unwrap();
            let j = i + l[i..].find(',').unwrap() + 1;
            format!("{}{}", &l[..i], &l[j..])
        })
        .collect();
    assert!(unstamped == lines);
    drop(conn);
    let out = proc.wait(Duration::from_secs(30));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let r = report_in(&dir);
    assert_eq!(r["events"], lines.len());
    assert_eq!(r["liquidations"], liquidations);
    assert_eq!(r["latency_ns"]["ts_to_event"]["count"], lines.len());
    let _ = std::fs::remove_dir_all(&dir);
}

/// A line that begins with a far-off seq and is malformed after it counts for nothing at the
/// daemon, and the lines after it are timed as before (feed parses such a line in full
/// instead of taking its seq: taken, it made every later line look like a duplicate). A valid
/// line within a stamp of the 1 MiB limit is sent without one, so it stays valid.
#[test]
fn a_malformed_far_seq_and_a_line_near_the_limit_keep_the_stream_as_it_is() {
    let mut lines = fixture_lines("gen/live_open.ndjson");
    // A message whose ts is null has a ts key all the same: a stamp would be a second one.
    lines[100] = lines[100].replacen('{', r#"{"ts":null,"#, 1);
    lines.insert(2000, r#"{"seq":99999999,"type":"mark",BROKEN"#.to_owned());
    let pad = 1_048_576 - 20 - r#"{"seq":,"type":"query","account":1,"pad":""}"#.len();
    let big = |seq: u64| {
        format!(r#"{{"seq":{seq},"type":"query","account":1,"pad":"{}"}}"#, "x".repeat(pad))
    };
    let last = seq_of(lines.last().unwrap()).unwrap();
    lines.push(big(last + 1));
    assert!((1_048_576 - 26..=1_048_576).contains(&lines.last().unwrap().len()));
    let (dir, input) = input_file(&lines, "far");
    let TimedFeed { proc, mut subscriber, mut conn, got, dir, .. } =
        TimedFeed::start(&input, "far", Some(dir));
    assert_eq!(got.len(), lines.len());
    // One event per message, as a daemon would send them; the malformed line makes none.
    let mut timed = 0;
    for (line, sent) in lines.iter().zip(&got) {
        let Ok(v) = serde_json::from_str::<Value>(sent) else {
            assert_eq!(sent, line, "a malformed line goes as it is");
            continue;
        };
        if sent.len() > 1_048_576 - 26 || line.contains(r#""ts":null"#) {
            assert_eq!(sent, line, "no stamp past the limit, nor beside a null ts");
        } else {
            assert!(v["ts"].as_u64().is_some(), "no ts stamped: {sent}");
            timed += 1;
        }
        writeln!(subscriber, r#"{{"type":"account","seq":{}}}"#, v["seq"]).unwrap();
    }
    bye(&mut conn, last + 1, "end of stream");
    drop(conn);
    let out = proc.wait(Duration::from_secs(30));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    let r = report_in(&dir);
    assert_eq!(r["events"], lines.len() - 1);
    assert_eq!(r["latency_ns"]["ts_to_event"]["count"], timed, "every stamped message timed");
    assert_eq!(r["last_seq"], last + 1);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A daemon whose hello says 0 gets the whole input: malformed lines before the first
/// message included (they were skipped as if covered, so their rejects were missing).
#[test]
fn a_hello_of_zero_gets_every_line_malformed_heads_included() {
    let mut lines = fixture_lines("gen/live_open.ndjson");
    lines.insert(0, "not json".to_owned());
    lines.insert(1, r#"{"seq":"x","type":"mark"}"#.to_owned());
    let (dir, input) = input_file(&lines, "head");
    let (listener, addr) = listen();
    let proc = feed(&["--to", &addr, input.to_str().unwrap()]);
    let got = one_whole_connection(&listener, proc);
    assert!(got == lines, "every line, the malformed head first");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A subscription the daemon closes while lines are still being sent (a restarted daemon, a
/// subscriber cut for its buffer) is made again: the events of both count, and the summary
/// says there were two (it stopped counting at the close, without a word).
#[test]
fn the_subscriber_reconnects_when_the_daemon_closes_it_mid_feed() {
    let lines = fixture_lines("gen/live_open.ndjson");
    let TimedFeed { proc, events, subscriber: mut first, mut conn, got, dir } =
        TimedFeed::start(&fixture("gen/live_open.ndjson"), "resub", None);
    assert_eq!(got.len(), lines.len());
    let event = |line: &str| format!(r#"{{"type":"account","seq":{}}}"#, seq_of(line).unwrap());
    let half = lines.len() / 2;
    for line in &got[..half] {
        writeln!(first, "{}", event(line)).unwrap();
    }
    // The daemon closes the subscription before the engine connection ends; the feed's
    // subscriber connects again (within its 1 s back-off) and gets the rest.
    drop(first);
    let mut second = accept(&events);
    for line in &got[half..] {
        writeln!(second, "{}", event(line)).unwrap();
    }
    bye(&mut conn, seq_of(lines.last().unwrap()).unwrap(), "end of stream");
    drop(conn);
    let out = proc.wait(Duration::from_secs(30));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("subscriptions 2"), "{err}");
    let r = report_in(&dir);
    assert_eq!(r["events"], lines.len());
    assert_eq!(r["subscriptions"], 2);
    assert_eq!(r["latency_ns"]["ts_to_event"]["count"], lines.len());
    drop(second);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A subscription the daemon closes while lines are being sent and that cannot be made again
/// (the daemon restarted without --events) is reported, not passed over: the summary says the
/// last was closed for good. An `--events` address that greets with a hello (a daemon's engine
/// port) is refused at once (the two connections kept replacing each other there).
#[test]
fn a_lost_subscription_is_reported_and_an_engine_port_is_no_events_port() {
    let lines = fixture_lines("gen/live_open.ndjson");
    let engine = TcpListener::bind("127.0.0.1:0").unwrap();
    let events = TcpListener::bind("127.0.0.1:0").unwrap();
    let (engine_addr, events_addr) =
        (engine.local_addr().unwrap().to_string(), events.local_addr().unwrap().to_string());
    let args = ["--to", &engine_addr, "--events", &events_addr, "--events-idle", "300ms"];
    let proc = feed_fixture(&args, "gen/live_open.ndjson");
    let subscriber = accept(&events);
    drop((subscriber, events)); // closed, and nothing listens there any more
    let mut conn = accept(&engine);
    hello(&mut conn, 0);
    let got = read_lines(&mut BufReader::new(conn.try_clone().unwrap()), None);
    assert_eq!(got.len(), lines.len());
    bye(&mut conn, seq_of(lines.last().unwrap()).unwrap(), "end of stream");
    drop(conn);
    let out = proc.wait(Duration::from_secs(30));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("events        0 received"), "{err}");
    assert!(err.contains("subscriptions 1 (the daemon closed 1"), "{err}");
    assert!(err.contains("the last for good"), "{err}");

    // An engine port given as the events address: it greets at once, as a daemon does (on a
    // thread of its own that looks every millisecond, for at most 10 s).
    let (greeter, greeter_addr) = listen();
    greeter.set_nonblocking(true).unwrap();
    let greeting = thread::spawn(move || {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok((mut s, _)) = greeter.accept() {
                s.set_nonblocking(false).unwrap();
                hello(&mut s, 0);
                return Some(s);
            }
            thread::sleep(Duration::from_millis(1));
        }
        None
    });
    let args = ["--to", &engine_addr, "--events", &greeter_addr, "--give-up-after", "2s"];
    let proc = feed_fixture(&args, "gen/live_open.ndjson");
    let out = proc.wait(Duration::from_secs(20));
    drop(greeting.join());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("answered with a hello"), "{err}");
}

fn bye(stream: &mut TcpStream, last_seq: u64, reason: &str) {
    writeln!(stream, r#"{{"type":"bye","last_seq":{last_seq},"reason":"{reason}"}}"#).unwrap();
}

/// A daemon stopped mid-stream had the last lines in its socket, not applied: its `bye` says
/// how far it read. The feed counts that connection as lost and resends the rest after the
/// next hello; with no daemon to take them it gives up (exit 1) and says how far the daemon
/// read. A `bye` at the input's last seq ends the feed (exit 0).
#[test]
fn a_bye_short_of_the_input_resends_the_rest_or_fails() {
    let name = "gen/live_open.ndjson";
    let lines = fixture_lines(name);
    let last = seq_of(lines.last().unwrap()).unwrap();
    let stopped_at = seq_of(&lines[2000]).unwrap();
    for restarted in [true, false] {
        let (listener, addr) = listen();
        let give_up = ["--give-up-after", "2s"];
        let proc = feed_fixture(&[&["--to", &addr][..], &give_up].concat(), name);
        // Connection 1: every line arrives (the feed half-closes), but the daemon stops having
        // applied only up to line 2,000's seq.
        let mut conn = accept(&listener);
        hello(&mut conn, 0);
        let first = read_lines(&mut BufReader::new(conn.try_clone().unwrap()), None);
        assert_eq!(first.len(), lines.len(), "the whole input went into the socket");
        bye(&mut conn, stopped_at, "stopping");
        drop(conn);
        if !restarted {
            drop(listener);
            let out = proc.wait(Duration::from_secs(20));
            let err = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(1), "{err}");
            assert!(err.contains(&format!("having read up to seq {stopped_at}")), "{err}");
            assert!(err.contains(&format!("the input goes on to seq {last}")), "{err}");
            continue;
        }
        // Connection 2: the restarted daemon's hello; the rest comes again.
        let mut conn = accept(&listener);
        hello(&mut conn, stopped_at);
        let second = read_lines(&mut BufReader::new(conn.try_clone().unwrap()), None);
        bye(&mut conn, last, "end of stream");
        drop(conn);
        let out = proc.wait(Duration::from_secs(20));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{err}");
        assert!(second == lines[2001..], "connection 2 carries the lines after the bye's seq");
        assert!(
            err.contains(&format!("connections   2 (hello last_seq: 0, {stopped_at})")),
            "{err}"
        );
    }
}

/// A peer that takes the connection and then always ends it the same way, with the same
/// short `bye` after reading every line or with a reset right after its hello (a daemon stuck
/// at one seq), is not fed the same lines for ever: once no connection has got it past that
/// seq for `--give-up-after`, the feed exits 1 and says so, having resent the lines a few
/// times meanwhile, ever more slowly (every connection it made restarted the old give-up
/// clock and the back-off).
#[test]
fn a_peer_that_keeps_closing_at_one_seq_is_given_up_on() {
    let name = "gen/live_open.ndjson";
    let stuck_at = seq_of(&fixture_lines(name)[100]).unwrap();
    for reset in [false, true] {
        let (listener, addr) = listen();
        let mut proc = feed_fixture(&["--to", &addr, "--give-up-after", "1s"], name);
        listener.set_nonblocking(true).unwrap();
        let (deadline, mut connections) = (Instant::now() + Duration::from_secs(20), 0);
        while proc.0.as_mut().unwrap().try_wait().unwrap().is_none() {
            assert!(Instant::now() < deadline && connections < 200, "the feed kept going");
            let Ok((mut conn, _)) = listener.accept() else {
                thread::sleep(Duration::from_millis(5));
                continue;
            };
            conn.set_nonblocking(false).unwrap();
            conn.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            connections += 1;
            hello(&mut conn, stuck_at);
            if reset {
                // Closed with the lines unread: the kernel resets the connection.
                thread::sleep(Duration::from_millis(20));
                continue;
            }
            read_lines(&mut BufReader::new(conn.try_clone().unwrap()), None);
            // The feed may have given up at this hello and closed already.
            let said = format!(r#"{{"type":"bye","last_seq":{stuck_at},"reason":"stopping"}}"#);
            let _ = writeln!(conn, "{said}");
        }
        let out = proc.wait(Duration::from_secs(1));
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "reset {reset}: {err}");
        assert!(connections >= 3, "it resent while the peer took the lines: {connections}");
        // Every 50 ms that would be about 20; a back-off doubling from 50 ms makes it about 6.
        assert!(
            connections <= 12,
            "the back-off grows for a peer that got no further: {connections}"
        );
        let said = format!("kept closing the connection having read up to seq {stuck_at}");
        assert!(err.contains(&said), "reset {reset}: {err}");
    }
}

/// While sending, feed takes a line that begins with its seq at its word; a line malformed
/// after its seq counts for nothing at the daemon, so a `bye` below what feed counted is
/// checked against the input read in full: here the input ends in two such lines, the daemon
/// read everything and says so with the last well-formed seq, and the feed ends at once
/// (exit 0, one connection), reporting that seq as the input's last.
#[test]
fn a_short_bye_is_checked_against_the_input_read_in_full() {
    let name = "gen/live_open.ndjson";
    let mut lines = fixture_lines(name);
    let last = seq_of(lines.last().unwrap()).unwrap();
    lines.push(format!(r#"{{"seq":{},"type":"mark",}}"#, last + 1));
    lines.push(format!(r#"{{"seq":{},"type":"mark","symbol":"S0","price":"1"}} x"#, last + 2));
    let (dir, input) = input_file(&lines, "bye");
    let (listener, addr) = listen();
    let args = ["--to", &addr, "--give-up-after", "2s", input.to_str().unwrap()];
    let proc = feed(&args);
    let mut conn = accept(&listener);
    hello(&mut conn, 0);
    let got = read_lines(&mut BufReader::new(conn.try_clone().unwrap()), None);
    assert!(got == lines, "every line sent as it is");
    bye(&mut conn, last, "end of stream");
    drop(conn);
    let out = proc.wait(Duration::from_secs(20));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains(&format!("input         {} lines, last seq {last}\n", lines.len())),
        "{err}"
    );
    assert!(err.contains("connections   1 (hello last_seq: 0)"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A daemon far behind does not confirm the end of the input within `--close-timeout`: the
/// feed does not count that as done, it reconnects, and the new hello (covering the whole
/// input) ends it at once, with nothing to send and nothing to wait for.
#[test]
fn an_unconfirmed_end_is_asked_again_and_a_covering_hello_ends_the_feed() {
    let name = "gen/live_open.ndjson";
    let lines = fixture_lines(name);
    let last = seq_of(lines.last().unwrap()).unwrap();
    let (listener, addr) = listen();
    let args = ["--to", &addr, "--close-timeout", "300ms", "--give-up-after", "5s"];
    let proc = feed_fixture(&args, name);
    // Connection 1: every line arrives, but the daemon neither says bye nor closes.
    let (c1, first) = first_connection(&listener, None);
    assert_eq!(first.len(), lines.len());
    // Connection 2: its hello covers the input; the test never closes it.
    covered_by_a_second_hello(&listener, proc, last);
    drop(c1);
}

/// `--to` takes a bare port as `run --listen` does (127.0.0.1), and an address without a
/// valid port is a usage error (exit 2) at once, not a network fault retried until give-up.
#[test]
fn a_bare_port_is_loopback_and_a_malformed_address_is_a_usage_error() {
    let name = "gen/live_open.ndjson";
    let lines = fixture_lines(name);
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port().to_string();
    let proc = feed(&["--to", &port, fixture(name).to_str().unwrap()]);
    let got = one_whole_connection(&listener, proc);
    assert_eq!(got.len(), lines.len());
    let table = [
        ("localhost", "is not an address"),
        ("127.0.0.1:99999", "is not an address"),
        (":7071", "is not an address"),
        ("127.0.0.1:", "is not an address"),
        ("host:7070:1", "is not an address"),
        ("a b:7070", "is not an address"),
        ("localhost:0", "port 0 cannot be connected to"),
        ("localhost:+7070", "is not an address"),
        ("0", "port 0 cannot be connected to"),
        ("127.0.0.1:0", "port 0 cannot be connected to"),
    ];
    for (bad, says) in table {
        let out = feed(&["--to", bad, "--give-up-after", "30s", fixture(name).to_str().unwrap()])
            .wait(Duration::from_secs(10));
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{bad}: {err}");
        assert!(err.contains(says), "{bad}: {err}");
    }
}

/// A connection that lasted longer than `--give-up-after` and then dropped is a new failure,
/// not one that began when the connection was made: the feed reconnects and goes on (it gave
/// up at once, fresh-user finding).
#[test]
fn a_long_connection_that_drops_is_resumed_not_given_up() {
    let name = "gen/live_open.ndjson";
    let lines = fixture_lines(name);
    let last = seq_of(lines.last().unwrap()).unwrap();
    let (listener, addr) = listen();
    // 8,001 lines at 4,000 a second: the first connection lasts over a second.
    let args = ["--to", &addr, "--rate", "4000", "--give-up-after", "1s"];
    let proc = feed_fixture(&args, name);
    let (c1, first) = first_connection(&listener, Some(6000));
    assert_eq!(first.len(), 6000, "the first connection carried 1.5 s of lines");
    drop(c1);
    covered_by_a_second_hello(&listener, proc, last);
}

/// The feed's first connection to `listener`: a hello of 0, then up to `max` lines (all, to
/// the feed's half-close, when `None`). The connection stays open until the caller drops it.
fn first_connection(listener: &TcpListener, max: Option<usize>) -> (TcpStream, Vec<String>) {
    let mut conn = accept(listener);
    hello(&mut conn, 0);
    let lines = read_lines(&mut BufReader::new(conn.try_clone().unwrap()), max);
    (conn, lines)
}

/// The feed's second connection says in its hello that the daemon has the whole input, up to
/// `last`: the feed ends at once, exit 0, having made two connections.
fn covered_by_a_second_hello(listener: &TcpListener, proc: Proc, last: u64) {
    let mut conn = accept(listener);
    hello(&mut conn, last);
    let out = proc.wait(Duration::from_secs(20));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains(&format!("connections   2 (hello last_seq: 0, {last})")), "{err}");
    drop(conn);
}
