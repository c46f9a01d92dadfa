//! Driving the real `liqscan run` on loopback: start it with ephemeral ports and read the
//! bound addresses from its JSON log, talk to it as an engine, a subscriber and an HTTP
//! client. Every wait is bounded in time; every child is killed by a guard.

use std::{
    collections::HashMap,
    io::{BufRead, BufReader, Read, Write},
    net::{SocketAddr, TcpStream},
    path::PathBuf,
    process::{Child, ChildStdin, Command, ExitStatus, Stdio},
    sync::{Arc, Mutex, mpsc},
    time::{Duration, Instant},
};

use serde_json::Value;

/// A directory of its own under the system's temp dir, removed when dropped.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(what: &str) -> TempDir {
        let nanos =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
        let p = std::env::temp_dir()
            .join(format!("liqscan-test-{what}-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }

    pub fn path(&self, name: &str) -> String {
        self.0.join(name).to_string_lossy().into_owned()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A child process killed (SIGKILL) and reaped when dropped.
pub struct Guard(pub Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The longest any single wait in these tests may take.
pub const PATIENCE: Duration = Duration::from_secs(120);

pub fn fixture(p: &str) -> String {
    format!("{}/fixtures/{p}", env!("CARGO_MANIFEST_DIR"))
}

/// A running daemon; killed when dropped.
pub struct Daemon {
    child: Child,
    pub stdin: Option<ChildStdin>,
    log: Arc<Mutex<Vec<Value>>>,
    stdout: Option<mpsc::Receiver<String>>,
    stdout_lines: Vec<String>,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// How the daemon's stdin is set up.
pub enum Input {
    /// A pipe the test writes to.
    Pipe,
    /// A file.
    File(String),
    /// Nothing (TCP mode).
    Null,
}

impl Daemon {
    /// Starts `liqscan run --log-format json ARGS`.
    pub fn start(args: &[&str], input: Input) -> Daemon {
        let stdin = match &input {
            Input::Pipe => Stdio::piped(),
            Input::File(path) => Stdio::from(std::fs::File::open(path).unwrap()),
            Input::Null => Stdio::null(),
        };
        let mut child = Command::new(env!("CARGO_BIN_EXE_liqscan"))
            .arg("run")
            .args(["--log-format", "json"])
            .args(args)
            .env("RUST_LOG", "info")
            .stdin(stdin)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let (stderr, log_in) = (child.stderr.take().unwrap(), log.clone());
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                let v = serde_json::from_str(&line)
                    .unwrap_or_else(|_| serde_json::json!({ "message": line }));
                log_in.lock().unwrap().push(v);
            }
        });
        let (tx, rx) = mpsc::channel();
        let stdout = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let stdin = child.stdin.take();
        Daemon { child, stdin, log, stdout: Some(rx), stdout_lines: Vec::new() }
    }

    /// The log lines so far.
    pub fn log(&self) -> Vec<Value> {
        self.log.lock().unwrap().clone()
    }

    /// Waits for a log line satisfying `pred`; panics after [`PATIENCE`].
    pub fn wait_log(&self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let until = Instant::now() + PATIENCE;
        loop {
            if let Some(v) = self.log().into_iter().find(&pred) {
                return v;
            }
            assert!(
                Instant::now() < until,
                "no log line {what} within {PATIENCE:?}: {:#?}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// The address the start-up log gives for `role` (engine, events, http).
    pub fn addr(&self, role: &str) -> SocketAddr {
        let v = self.wait_log(role, |v| v["role"] == role && v["addr"].is_string());
        v["addr"].as_str().unwrap().parse().unwrap_or_else(|e| panic!("{role}: {e}: {v}"))
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Kills the process with SIGKILL (kill -9: no handler runs, nothing is flushed) and
    /// reaps it.
    pub fn kill_9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends SIGTERM.
    pub fn sigterm(&self) {
        let ok = Command::new("kill").args(["-TERM", &self.pid().to_string()]).status().unwrap();
        assert!(ok.success());
    }

    /// Waits for the process to exit; panics after [`PATIENCE`].
    pub fn wait_exit(&mut self) -> ExitStatus {
        let until = Instant::now() + PATIENCE;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < until, "the daemon did not exit within {PATIENCE:?}");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Collects stdout lines until `n` are there; panics after [`PATIENCE`].
    pub fn stdout_until(&mut self, n: usize) -> &[String] {
        let until = Instant::now() + PATIENCE;
        let rx = self.stdout.as_ref().unwrap();
        while self.stdout_lines.len() < n {
            let left = until.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => self.stdout_lines.push(line),
                Err(_) => panic!(
                    "stdout: {} lines within {PATIENCE:?}, wanted {n}",
                    self.stdout_lines.len()
                ),
            }
        }
        &self.stdout_lines
    }

    /// Every stdout line, once the process has closed stdout (after it exits).
    pub fn stdout_all(&mut self) -> Vec<String> {
        let rx = self.stdout.take().unwrap();
        let until = Instant::now() + PATIENCE;
        loop {
            match rx.recv_timeout(until.saturating_duration_since(Instant::now())) {
                Ok(line) => self.stdout_lines.push(line),
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
                Err(mpsc::RecvTimeoutError::Timeout) => panic!("stdout not closed"),
            }
        }
        std::mem::take(&mut self.stdout_lines)
    }

    /// Writes to the daemon's stdin.
    pub fn write_stdin(&mut self, bytes: &[u8]) {
        let stdin = self.stdin.as_mut().unwrap();
        stdin.write_all(bytes).unwrap();
        stdin.flush().unwrap();
    }

    pub fn close_stdin(&mut self) {
        self.stdin = None;
    }
}

/// A minimal HTTP/1.0 GET: (status, body).
pub fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(PATIENCE)).unwrap();
    write!(s, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or_else(|| panic!("no HTTP: {text:?}"));
    let status = head.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap();
    (status, body.to_owned())
}

/// GET a JSON body.
/// Waits (at most [`PATIENCE`]) until `GET path` is answered 200, retrying while the server
/// refuses or drops connections (over a connection bound, say).
pub fn wait_http_ok(addr: SocketAddr, path: &str, what: &str) {
    let until = Instant::now() + PATIENCE;
    loop {
        if let Ok(mut s) = std::net::TcpStream::connect(addr) {
            let _ = s.set_read_timeout(Some(PATIENCE));
            let _ = std::io::Write::write_all(
                &mut s,
                format!("GET {path} HTTP/1.0\r\n\r\n").as_bytes(),
            );
            let mut text = String::new();
            let _ = std::io::Read::read_to_string(&mut s, &mut text);
            if text.starts_with("HTTP/1.0 200") {
                return;
            }
        }
        assert!(Instant::now() < until, "waited {PATIENCE:?} for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub fn http_json(addr: SocketAddr, path: &str) -> (u16, Value) {
    let (status, body) = http_get(addr, path);
    let v = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{path}: {e}: {body}"));
    (status, v)
}

/// Polls `/health` until `pred` holds; panics after [`PATIENCE`].
pub fn wait_health(http: SocketAddr, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
    let until = Instant::now() + PATIENCE;
    loop {
        let (_, v) = http_json(http, "/health");
        if pred(&v) {
            return v;
        }
        assert!(Instant::now() < until, "health never showed {what}: {v}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Scrapes `/metrics` with a Prometheus text parser: (metric name, labels) -> value.
pub fn scrape(http: SocketAddr) -> Metrics {
    let (status, body) = http_get(http, "/metrics");
    assert_eq!(status, 200, "{body}");
    let lines = body.lines().map(|l| Ok(l.to_owned()));
    let scrape = prometheus_parse::Scrape::parse(lines).expect("Prometheus text exposition");
    Metrics(scrape)
}

pub struct Metrics(pub prometheus_parse::Scrape);

impl Metrics {
    /// The value of the sample `name` whose labels include `labels`.
    pub fn get(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let sample = self
            .0
            .samples
            .iter()
            .find(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
            .unwrap_or_else(|| panic!("no sample {name} {labels:?}"));
        match &sample.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => *v,
            other => panic!("{name}: not a number: {other:?}"),
        }
    }

    /// The quantiles, sum and count of the summary `name`.
    pub fn summary(&self, name: &str) -> (HashMap<String, f64>, f64, u64) {
        let sample = self
            .0
            .samples
            .iter()
            .find(|s| s.metric == name)
            .unwrap_or_else(|| panic!("no summary {name}"));
        let prometheus_parse::Value::Summary(qs) = &sample.value else {
            panic!("{name} is not a summary: {:?}", sample.value)
        };
        let quantiles = qs.iter().map(|q| (q.quantile.to_string(), q.count)).collect();
        let sum = self.get(&format!("{name}_sum"), &[]);
        let count = self.get(&format!("{name}_count"), &[]) as u64;
        (quantiles, sum, count)
    }
}

/// An event subscriber: reads lines on a thread of its own.
pub struct Subscriber {
    rx: mpsc::Receiver<String>,
    pub lines: Vec<String>,
    closed: bool,
}

impl Subscriber {
    pub fn connect(addr: SocketAddr) -> Subscriber {
        let stream = TcpStream::connect(addr).unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stream).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Subscriber { rx, lines: Vec::new(), closed: false }
    }

    /// Collects lines until there are `n`; panics after [`PATIENCE`].
    pub fn until(&mut self, n: usize) -> &[String] {
        let until = Instant::now() + PATIENCE;
        while self.lines.len() < n {
            match self.rx.recv_timeout(until.saturating_duration_since(Instant::now())) {
                Ok(line) => self.lines.push(line),
                Err(e) => panic!("subscriber: {} lines, wanted {n}: {e:?}", self.lines.len()),
            }
        }
        &self.lines
    }

    /// Collects lines until there are `n` (true), `wait` has passed or the daemon has closed
    /// the connection (false; [`Subscriber::closed`] tells which).
    pub fn within(&mut self, n: usize, wait: Duration) -> bool {
        let until = Instant::now() + wait;
        while self.lines.len() < n {
            match self.rx.recv_timeout(until.saturating_duration_since(Instant::now())) {
                Ok(line) => self.lines.push(line),
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    self.closed = true;
                    return false;
                }
                Err(mpsc::RecvTimeoutError::Timeout) => return false,
            }
        }
        true
    }

    /// The daemon has closed the connection (seen by [`Subscriber::within`] or
    /// [`Subscriber::until_closed`]).
    pub fn closed(&self) -> bool {
        self.closed
    }

    /// Collects lines until the daemon closes the connection; panics after [`PATIENCE`].
    pub fn until_closed(&mut self) -> &[String] {
        let until = Instant::now() + PATIENCE;
        while !self.closed {
            match self.rx.recv_timeout(until.saturating_duration_since(Instant::now())) {
                Ok(line) => self.lines.push(line),
                Err(mpsc::RecvTimeoutError::Disconnected) => self.closed = true,
                Err(mpsc::RecvTimeoutError::Timeout) => panic!("subscriber never closed"),
            }
        }
        &self.lines
    }
}

/// The engine's side of `--listen`: connects and reads the hello.
pub struct EngineConn {
    pub stream: TcpStream,
    pub hello: Value,
}

impl EngineConn {
    pub fn connect(addr: SocketAddr) -> EngineConn {
        let stream = TcpStream::connect(addr).unwrap();
        stream.set_read_timeout(Some(PATIENCE)).unwrap();
        let mut line = String::new();
        BufReader::new(&stream).read_line(&mut line).unwrap();
        let hello: Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line:?}"));
        assert_eq!(hello["type"], "hello", "{hello}");
        assert!(hello["version"].is_string(), "{hello}");
        EngineConn { stream, hello }
    }

    pub fn last_seq(&self) -> u64 {
        self.hello["last_seq"].as_u64().unwrap()
    }

    pub fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).unwrap();
    }

    /// Half-closes (the engine's end of stream) and returns the daemon's `bye` line, which it
    /// writes before it closes (liqscan's addition to SPEC 9.1), after checking that nothing
    /// else came after the hello.
    pub fn end_and_read_bye(&mut self) -> Value {
        self.stream.shutdown(std::net::Shutdown::Write).unwrap();
        read_bye(&mut self.stream)
    }

    /// True when the daemon closed the connection (a read sees the end) within [`PATIENCE`].
    pub fn closed_by_daemon(&mut self) -> bool {
        let mut buf = [0u8; 64];
        matches!(self.stream.read(&mut buf), Ok(0) | Err(_))
    }
}

/// Reads an engine connection to its end (within [`PATIENCE`]: the socket's read timeout) and
/// returns its one line, the daemon's `bye`, parsed.
pub fn read_bye(stream: &mut TcpStream) -> Value {
    let mut said = String::new();
    stream.read_to_string(&mut said).unwrap_or_else(|e| panic!("{e} after {said:?}"));
    let lines: Vec<&str> = said.lines().collect();
    assert_eq!(lines.len(), 1, "one bye line and the end: {said:?}");
    let bye: Value = serde_json::from_str(lines[0]).unwrap_or_else(|e| panic!("{e}: {said:?}"));
    assert_eq!(bye["type"], "bye", "{bye}");
    bye
}
