//! The pipeline's delivery rule (issue 11, part 3): an event leaves as soon as it is made,
//! checked on the real binary with a pipe that stays open.

use std::{
    io::{BufRead, BufReader, Write},
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

/// Kills the child when the test ends, whatever happens.
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn fixture(p: &str) -> String {
    format!("{}/fixtures/{p}", env!("CARGO_MANIFEST_DIR"))
}

/// `{ cat input; sleep; } | liqscan replay -`: each line's event reaches stdout while the
/// sender still holds the pipe open, not when it closes it.
#[test]
fn replay_event_leaves_while_the_pipe_stays_open() {
    let child = Command::new(env!("CARGO_BIN_EXE_liqscan"))
        .args(["replay", "--config", &fixture("config/multi_tier.json"), "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut guard = Guard(child);
    let mut stdin = guard.0.stdin.take().unwrap();
    let stdout = guard.0.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send((Instant::now(), line)).is_err() {
                break;
            }
        }
    });
    // A liquidation on the second line: a long cross position, then a mark below its
    // liquidation price (1000 wallet, 1 BTC long at 50000: the liquidation price is above
    // 49000).
    let lines = [
        r#"{"type":"balance","account":7,"wallet":"1000"}"#,
        r#"{"type":"mark","symbol":"BTCUSDT","price":"50000"}"#,
        r#"{"type":"position","account":7,"symbol":"BTCUSDT","size":"1","entry_price":"50000"}"#,
        r#"{"type":"mark","symbol":"BTCUSDT","price":"49000"}"#,
        r#"{"type":"query","account":7}"#,
    ];
    let mut waits = Vec::new();
    for (i, want) in [(3, "liquidation"), (4, "account")] {
        let sent_from = if i == 3 { 0 } else { 4 };
        for line in &lines[sent_from..=i] {
            writeln!(stdin, "{line}").unwrap();
        }
        stdin.flush().unwrap();
        let sent = Instant::now();
        let (arrived, event) = rx
            .recv_timeout(Duration::from_secs(5))
            .unwrap_or_else(|_| panic!("no {want} event within 5 s while the pipe is open"));
        assert!(event.contains(&format!(r#""type":"{want}""#)), "{event}");
        assert!(event.contains(r#""account":7"#), "{event}");
        waits.push(arrived.saturating_duration_since(sent));
    }
    // Only now does the sender close the pipe: both events came before.
    drop(stdin);
    let status = guard.0.wait().unwrap();
    assert!(status.success());
    eprintln!("line written -> event read on the other pipe: {waits:?}");
}
