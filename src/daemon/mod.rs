//! `liqscan run`: the sidecar daemon (SPEC section 9). The only module that uses tokio,
//! axum, prometheus-client and tracing-subscriber; the engines never see them.
//!
//! | part | owns | SPEC |
//! |---|---|---|
//! | [`input`] | the engine stream: stdin (through a pump thread), or `--listen` TCP with the `hello` and connection replacement | 9.1 |
//! | [`subscribers`] | `--events` TCP subscribers: per-subscriber byte budget, slow ones cut | 9.2 |
//! | [`http`] | `--http`: `/metrics`, `/health`, `/accounts/{id}`, `/at-risk`, the connection bound | 9.3 |
//! | [`metrics`] | the Prometheus exposition | 9.3 |
//! | [`state`] | `--state-dir`: restore at start, periodic and shutdown snapshots (format in [`crate::state`]) | 9.4 |
//!
//! Threads: the engine runs the [`crate::pipeline`] on an OS thread of its own (reader and
//! writer threads beside it); tokio (two workers) runs the subscriber and HTTP tasks, which
//! reach the engine only through the bounded control queue. Shutdown (SIGINT, SIGTERM, end
//! of stdin; SPEC 9.5): stop reading, apply what was read, deliver every event to every
//! healthy sink, exit 0.

pub mod http;
pub mod input;
pub mod metrics;
pub mod state;
pub mod subscribers;

use std::{
    net::{SocketAddr, TcpListener as StdTcpListener},
    path::PathBuf,
    process::ExitCode,
    sync::{
        Arc,
        atomic::{AtomicU8, Ordering},
    },
};

use anyhow::Context;
use crossbeam::channel::bounded;
use tokio::sync::broadcast;
use tracing::{error, info};

use crate::{
    config::Config,
    pipeline::{
        ControlQueue, Controls, EventsFile, Pipeline, Progress, Sink, Source, Stop, WriterSink,
        control_queue,
    },
    shard::consume::{EventsSink, ShardSource},
};

/// Control requests that may wait for the engine at once; more are answered 503.
pub const CONTROL_QUEUE: usize = 64;

/// `liqscan run`: the daemon's flags (SPEC 9). Addresses are `IP:PORT` (IPv6 as `[::1]:PORT`)
/// or a bare `PORT`, which binds 127.0.0.1; port 0 binds a free port (the log says which).
#[derive(clap::Args, Debug)]
pub struct RunArgs {
    /// Risk config (JSON, SPEC section 2).
    #[arg(long)]
    pub config: PathBuf,
    /// Which engine evaluates: the fast struct-of-arrays one, or the exact reference.
    #[arg(long, value_enum, default_value_t = EngineChoice::Fast)]
    pub engine: EngineChoice,
    /// Take the engine stream over TCP on this address (one connection at a time; a new one
    /// replaces the old) instead of stdin.
    #[arg(long, value_name = "ADDR", value_parser = parse_addr)]
    pub listen: Option<SocketAddr>,
    /// Read the input of shard --shard from this NATS server's JetStream (SPEC section 10:
    /// stream LIQSCAN_<I>, from the seq after the last one applied) instead of stdin, and
    /// publish the events to liqscan.events.<I> (stream LIQSCAN_EVENTS).
    #[arg(long, value_name = "URL", requires = "shard", conflicts_with = "listen")]
    pub nats: Option<String>,
    /// With --nats: this daemon is shard I of N (0 <= I < N), as `liqscan publish --shards N`
    /// routed them.
    #[arg(long, value_name = "I/N", requires = "nats")]
    pub shard: Option<crate::shard::ShardSpec>,
    /// Accept event subscribers on this address: each gets every event from the moment it
    /// connects, as NDJSON.
    #[arg(long, value_name = "ADDR", value_parser = parse_addr)]
    pub events: Option<SocketAddr>,
    /// Append events to this file (flushed at least every 100 ms, fdatasync at most once a
    /// second and at shutdown).
    #[arg(long, value_name = "FILE")]
    pub events_file: Option<PathBuf>,
    /// Also write events to stdout when --events, --events-file or --nats is given (without
    /// any of them, events go to stdout).
    #[arg(long)]
    pub stdout: bool,
    /// Serve HTTP on this address: /metrics, /health, /accounts/{id}, /at-risk.
    #[arg(long, value_name = "ADDR", value_parser = parse_addr)]
    pub http: Option<SocketAddr>,
    /// Bytes of events that may wait for one subscriber (K, M, G suffixes: powers of 1024;
    /// at least 256K); a subscriber whose backlog would exceed it is disconnected and counted.
    #[arg(long, value_name = "BYTES", default_value = "4M", value_parser = subscriber_buffer)]
    pub subscriber_buffer: usize,
    /// Subscribers connected at once; more are refused and counted.
    #[arg(long, value_name = "N", default_value_t = 64, value_parser = at_least_one)]
    pub max_subscribers: usize,
    /// HTTP connections open at once; more are refused and counted.
    #[arg(long, value_name = "N", default_value_t = 64, value_parser = at_least_one)]
    pub max_http_connections: usize,
    /// Close an HTTP connection that wrote nothing for this long, or whose request is not
    /// read and answered this long after its first byte (500ms, 10s, 1m), so idle, stuck or
    /// trickling clients cannot hold every --max-http-connections slot; a client reading an
    /// answer keeps it while it takes at least 64 KiB a period. At least 100ms; keep it
    /// above the 5 s a query may wait for the engine.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = http_idle_timeout)]
    pub http_idle_timeout: std::time::Duration,
    /// Keep the state here (SPEC 9.4): restore the newest valid snapshot at start, write one
    /// every --snapshot-interval and at shutdown; the newest 3 are kept.
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// Time between snapshots (250ms, 10s, 5m); with --state-dir.
    #[arg(
        long,
        value_name = "DURATION",
        default_value = "60s",
        value_parser = snapshot_interval,
        requires = "state_dir"
    )]
    pub snapshot_interval: std::time::Duration,
    /// Restore a snapshot made under another config, then evaluate every item under this
    /// one and report the liquidatable ones (without it such a snapshot is refused, exit 2).
    #[arg(long, requires = "state_dir")]
    pub accept_config_change: bool,
    /// Log format on stderr; the filter comes from RUST_LOG (default: info).
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

/// The log filter without `RUST_LOG`: info, but only warnings and errors from the NATS
/// client (its info lines repeat every few seconds while a server is away).
const DEFAULT_LOG_FILTER: &str = "info,async_nats=warn";

/// `--engine`.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum EngineChoice {
    Fast,
    Reference,
}

/// `--log-format`.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Two of `--listen`, `--events` and `--http` given addresses that cannot both be bound: the
/// same port on the same address, or on any address (`0.0.0.0`, `[::]`) and another (port 0
/// aside, which picks a free port for each). A usage error, said before anything is bound
/// (it was a bind failure, exit 1, "Address already in use").
fn shared_port(args: &RunArgs) -> Option<String> {
    let given = [("--listen", args.listen), ("--events", args.events), ("--http", args.http)];
    let given: Vec<(&str, SocketAddr)> =
        given.into_iter().filter_map(|(flag, a)| a.map(|a| (flag, a))).collect();
    let clash = |a: SocketAddr, b: SocketAddr| {
        a.port() == b.port()
            && a.port() != 0
            && (a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified())
    };
    given.iter().enumerate().find_map(|(i, &(flag, a))| {
        let &(other, b) = given[i + 1..].iter().find(|&&(_, b)| clash(a, b))?;
        Some(if a == b {
            format!("{flag} and {other} are both {a}: give each its own port")
        } else {
            format!("{flag} {a} and {other} {b} share port {}: give each its own", a.port())
        })
    })
}

/// An address to bind: `IP:PORT`, `[V6]:PORT`, or a bare `PORT` on 127.0.0.1. A host name
/// is refused (the daemon binds exactly the interface it is given, never what a name
/// resolves to at start), and the reason says so.
pub fn parse_addr(s: &str) -> Result<SocketAddr, String> {
    // Digits only: `u16`'s parse takes a leading `+`.
    let digits = !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if let Some(port) = s.parse::<u16>().ok().filter(|_| digits) {
        return Ok(SocketAddr::from(([127, 0, 0, 1], port)));
    }
    s.parse::<SocketAddr>().map_err(|_| {
        format!(
            "{s:?} is not an address to bind: give IP:PORT (e.g. 127.0.0.1:7070 or [::1]:7070; \
             no host names) or a port"
        )
    })
}

/// A byte count with an optional K, M or G suffix (powers of 1024), at least 1.
pub fn parse_bytes(s: &str) -> Result<usize, String> {
    let t = s.trim();
    let (digits, unit) = match t.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        Some((i, _)) => (&t[..i], t[i..].trim_end_matches(['B', 'b', 'i'])),
        None => (t, ""),
    };
    let shift = match unit {
        "" => 0,
        "K" | "k" => 10,
        "M" | "m" => 20,
        "G" | "g" => 30,
        _ => return Err(format!("{s:?}: the unit must be K, M or G")),
    };
    match digits.parse::<usize>().ok().and_then(|n| n.checked_mul(1 << shift)) {
        Some(n) if n > 0 => Ok(n),
        _ => Err(format!("{s:?} is not a positive number of bytes")),
    }
}

/// The least `--subscriber-buffer`. A chunk of events (up to 512, ~300 KB of liquidations)
/// goes whole to a subscriber that has nothing waiting, but one with anything waiting is cut
/// when the next chunk would take it over the budget: with 1K, healthy subscribers a few
/// events behind were cut. A subscriber may fall about `budget − one chunk` behind; the
/// default 4M allows a dozen chunks.
pub const SUBSCRIBER_BUFFER_MIN: usize = 256 << 10;

/// `--subscriber-buffer`: [`parse_bytes`], at least [`SUBSCRIBER_BUFFER_MIN`].
fn subscriber_buffer(s: &str) -> Result<usize, String> {
    match parse_bytes(s)? {
        n if n >= SUBSCRIBER_BUFFER_MIN => Ok(n),
        _ => Err(format!(
            "{s:?}: a subscriber buffer must be at least 256K (a smaller one cuts healthy \
             subscribers that are a few events behind)"
        )),
    }
}

/// A duration (humantime: 250ms, 10s, 5m) of at least `min`, which `what` names.
pub fn duration_at_least(
    s: &str,
    min: std::time::Duration,
    what: &str,
) -> Result<std::time::Duration, String> {
    match humantime::parse_duration(s) {
        Ok(d) if d >= min => Ok(d),
        Ok(_) => Err(format!("{s:?}: {what} must be at least {}", humantime::format_duration(min))),
        Err(e) => Err(format!("{s:?} is not a duration (250ms, 10s, 5m): {e}")),
    }
}

/// `--snapshot-interval`: at least 10 ms. Shorter would only copy the state back to back
/// (each snapshot skipped while the previous is written) and keep a thread spinning.
fn snapshot_interval(s: &str) -> Result<std::time::Duration, String> {
    duration_at_least(s, std::time::Duration::from_millis(10), "the snapshot interval")
}

/// `--http-idle-timeout`: at least 100 ms; shorter closes connections before a request
/// can arrive, and HTTP stops answering.
fn http_idle_timeout(s: &str) -> Result<std::time::Duration, String> {
    duration_at_least(s, std::time::Duration::from_millis(100), "the idle timeout")
}

/// A connection bound: 0 would refuse every connection, which is never what is meant.
fn at_least_one(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(n) if n >= 1 => Ok(n),
        _ => Err(format!("{s:?} is not a whole number of at least 1")),
    }
}

fn init_logging(format: LogFormat) {
    use std::io::IsTerminal as _;
    use tracing_subscriber::EnvFilter;
    // RUST_LOG unset means `info`; set but unreadable also means `info`, said in the log.
    let (filter, unreadable) = match std::env::var("RUST_LOG") {
        Ok(spec) => match EnvFilter::try_new(&spec) {
            Ok(filter) => (filter, None),
            Err(e) => (EnvFilter::new(DEFAULT_LOG_FILTER), Some((spec, e.to_string()))),
        },
        Err(_) => (EnvFilter::new(DEFAULT_LOG_FILTER), None),
    };
    // Colours only on a terminal: a log file or a pipe gets plain text that grep can read.
    // A log line that cannot be written is dropped: by default the layer reports its own
    // write errors with `eprintln!`, which panics when stderr is a broken pipe, and a log
    // call on the engine connection's acceptor thread then took the `--listen` port down
    // with it (stderr to a fifo whose reader went away).
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .log_internal_errors(false);
    // A second initialisation (only in tests) keeps the first subscriber.
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
    if let Some((spec, error)) = unreadable {
        tracing::warn!(rust_log = %spec, error = %error, "RUST_LOG cannot be read; logging at info");
    }
}

/// The daemon's phase, for `/health`.
#[derive(Debug, Default)]
pub struct Phase(AtomicU8);

impl Phase {
    pub const STARTING: u8 = 0;
    pub const SERVING: u8 = 1;
    pub const STOPPING: u8 = 2;
    pub const RESTORING: u8 = 3;

    pub fn set(&self, phase: u8) {
        self.0.store(phase, Ordering::Release);
    }

    pub fn get(&self) -> u8 {
        self.0.load(Ordering::Acquire)
    }
}

/// What the HTTP tasks share with the rest of the daemon.
pub struct Shared {
    pub cfg: Arc<Config>,
    pub controls: Controls,
    pub progress: Arc<Progress>,
    pub metrics: metrics::Metrics,
    pub phase: Phase,
}

/// What start-up wires together before the engine thread starts.
struct Wiring {
    runtime: tokio::runtime::Runtime,
    shared: Arc<Shared>,
    control_rx: ControlQueue,
    /// Closes when the daemon stops: sources waiting for input leave at once.
    stop_tx: crossbeam::channel::Sender<()>,
    stop_rx: input::StopRx,
    /// Tells the accept loops and the HTTP server to finish.
    shutdown_tx: broadcast::Sender<()>,
}

/// Runs the daemon until SIGINT, SIGTERM or the end of stdin. Exit 0 when every event
/// reached every healthy sink; 2 for a bad config; 1 when it cannot start (an address in
/// use) or a sink that must not lose events (stdout, the events file) failed.
pub fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    init_logging(args.log_format);
    if let Some(reason) = shared_port(&args) {
        error!(error = %reason, "bad command line");
        say(&format!("liqscan: {reason}"));
        return Ok(ExitCode::from(2));
    }
    let cfg = match Config::load(&args.config) {
        Ok(cfg) => Arc::new(cfg),
        Err(e) => {
            error!(config = %args.config.display(), error = %e, "bad config");
            say(&format!("liqscan: config {}: {e}", args.config.display()));
            return Ok(ExitCode::from(2));
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("liqscan-io")
        .enable_all()
        .build()
        .context("cannot start the tokio runtime")?;
    let (stop_tx, stop_rx) = bounded::<()>(0);
    let (control_tx, control_rx) = control_queue(CONTROL_QUEUE);
    let snapshot_stats = Arc::new(crate::state::store::Stats::default());
    let shared = Arc::new(Shared {
        cfg: cfg.clone(),
        controls: control_tx,
        progress: Arc::default(),
        metrics: metrics::Metrics {
            snapshots: args.state_dir.is_some().then(|| snapshot_stats.clone()),
            ..Default::default()
        },
        phase: Phase::default(),
    });
    let w = Wiring {
        runtime,
        shared,
        control_rx,
        stop_tx,
        stop_rx,
        shutdown_tx: broadcast::channel::<()>(1).0,
    };
    // Bind everything first, so that a bad address fails before anything runs.
    let (source, engine_closer) = open_source(&args, &w)?;
    let sinks = open_sinks(&args, &w)?;
    if let Some(addr) = args.http {
        let listener = w
            .runtime
            .block_on(tokio::net::TcpListener::bind(addr))
            .with_context(|| format!("cannot serve HTTP on {addr}"))?;
        info!(role = "http", addr = %listener.local_addr()?, "serving HTTP");
        let (shared, shutdown) = (w.shared.clone(), w.shutdown_tx.subscribe());
        let bounds = http::Bounds {
            max_connections: args.max_http_connections,
            idle_timeout: args.http_idle_timeout,
        };
        w.runtime.spawn(http::serve(listener, shared, bounds, shutdown));
    }
    let stop = Stop::default();
    spawn_signal_handler(&w, stop.clone(), engine_closer)?;
    let Wiring { runtime, shared, control_rx, shutdown_tx, stop_tx, stop_rx } = w;
    // Only the signal handler's clone may keep the stop channel open.
    drop(stop_tx);

    let engine_name = match args.engine {
        EngineChoice::Fast => "fast",
        EngineChoice::Reference => "reference",
    };
    let (mut engine, resume, mut writer) = match &args.state_dir {
        None => (state::empty(args.engine, &cfg), None, None),
        Some(dir) => {
            shared.phase.set(Phase::RESTORING);
            let dir = crate::state::store::StateDir::open(dir)
                .with_context(|| format!("cannot open the state directory {}", dir.display()))?;
            let start = match state::restore(
                &dir,
                &cfg,
                args.engine,
                args.accept_config_change,
                &snapshot_stats,
            ) {
                Ok(start) => start,
                Err(e @ state::RestoreError::Io(_)) => return Err(e.into()),
                Err(e) => {
                    error!(error = %e, "cannot restore");
                    say(&format!("liqscan: {e}"));
                    return Ok(ExitCode::from(2));
                }
            };
            let writer = crate::state::store::Writer::start(dir, snapshot_stats.clone())
                .context("cannot start the snapshot writer")?;
            writer.prepare(start.engine.as_ref());
            let handle = writer.handle(state::meta(&cfg, args.engine));
            state::spawn_ticker(
                args.snapshot_interval,
                handle,
                shared.controls.clone(),
                stop_rx,
                snapshot_stats.clone(),
            )
            .context("cannot start the snapshot ticker")?;
            let mut resume = start.resume.unwrap_or_default();
            resume.events = start.events;
            // Published before HTTP says "ok" (the pipeline publishes the same at its start,
            // which may come after the first /health).
            let relaxed = std::sync::atomic::Ordering::Relaxed;
            shared.progress.last_seq.store(resume.at.seq, relaxed);
            shared.progress.messages.store(resume.summary.messages, relaxed);
            (start.engine, Some(resume), Some(writer))
        }
    };
    let restored_seq = resume.as_ref().map_or(0, |r| r.at.seq);
    let meta = state::meta(&cfg, args.engine);
    let pipeline = Pipeline {
        cfg,
        source,
        sinks,
        controls: Some(control_rx),
        stop,
        progress: shared.progress.clone(),
        opts: Default::default(),
        resume,
    };
    info!(
        engine = engine_name,
        pid = std::process::id(),
        last_seq = restored_seq,
        "liqscan run started"
    );
    shared.phase.set(Phase::SERVING);
    let progress = shared.progress.clone();
    let result = std::thread::Builder::new()
        .name("engine".into())
        .spawn(move || {
            let result = pipeline.run(engine.as_mut());
            // At shutdown, once every event reached every healthy sink (SPEC 9.5).
            let mut snapshot = Ok(());
            if let (Ok(summary), Some(writer)) = (&result, writer.as_mut()) {
                use std::sync::atomic::Ordering::Relaxed;
                let at = crate::engine::At {
                    line: progress.last_line.load(Relaxed),
                    seq: progress.last_seq.load(Relaxed),
                };
                let counters = crate::state::Counters::of(summary);
                snapshot = state::final_snapshot(writer, engine.as_ref(), at, counters, meta);
            }
            // Every event was delivered, but a restart would resend from an older snapshot:
            // the exit status says so (1), so that a supervisor notices.
            result.and_then(|summary| snapshot.map(|()| summary))
        })
        .context("cannot start the engine thread")?
        .join();
    shared.phase.set(Phase::STOPPING);
    let _ = shutdown_tx.send(());
    runtime.shutdown_timeout(std::time::Duration::from_secs(2));
    Ok(finished(result))
}

/// The engine stream: `--nats`, `--listen` or stdin, and for `--listen` the handle that shuts the live
/// connection down at a stop.
fn open_source(
    args: &RunArgs,
    w: &Wiring,
) -> anyhow::Result<(Box<dyn Source<'static>>, Option<input::EngineCloser>)> {
    let metrics = w.shared.metrics.clone();
    if let (Some(url), Some(shard)) = (&args.nats, args.shard) {
        let connected: crate::shard::consume::OnConnected = Arc::new(move |up| {
            metrics.engine_connected.set(i64::from(up));
        });
        let source =
            ShardSource::open(w.runtime.handle(), url, shard, w.stop_rx.clone(), connected)?;
        info!(role = "engine", nats = %url, %shard, "reading the shard's stream from NATS JetStream");
        return Ok((Box::new(source), None));
    }
    let Some(addr) = args.listen else {
        info!(role = "engine", addr = "stdin", "reading the engine stream from stdin");
        let source = input::StdinSource::start(w.stop_rx.clone(), metrics)?;
        return Ok((Box::new(source), None));
    };
    let listener = StdTcpListener::bind(addr)
        .with_context(|| format!("cannot listen for the engine on {addr}"))?;
    info!(role = "engine", addr = %listener.local_addr()?, "listening for the engine stream");
    let (source, closer) = input::EngineListener::start(listener, w.stop_rx.clone(), metrics)?;
    Ok((Box::new(source), Some(closer)))
}

/// The sinks: `--events-file`, `--events` (its accept loop started), `--nats` (the shard's
/// events topic), and stdout unless
/// another sink is named (or with `--stdout`).
fn open_sinks(args: &RunArgs, w: &Wiring) -> anyhow::Result<Vec<Box<dyn Sink>>> {
    let mut sinks: Vec<Box<dyn Sink>> = Vec::new();
    if let Some(path) = &args.events_file {
        let file = EventsFile::open(path)
            .with_context(|| format!("cannot open the events file {}", path.display()))?;
        info!(role = "events-file", path = %path.display(), "appending events");
        sinks.push(Box::new(file));
    }
    if let Some(addr) = args.events {
        let listener = w
            .runtime
            .block_on(tokio::net::TcpListener::bind(addr))
            .with_context(|| format!("cannot listen for subscribers on {addr}"))?;
        let (bound, buffer_bytes) = (listener.local_addr()?, args.subscriber_buffer);
        info!(role = "events", addr = %bound, buffer_bytes, "listening for event subscribers");
        let hub = subscribers::Hub::new(buffer_bytes, w.shared.metrics.clone());
        let shutdown = w.shutdown_tx.subscribe();
        w.runtime.spawn(subscribers::accept(listener, hub.clone(), args.max_subscribers, shutdown));
        sinks.push(Box::new(subscribers::HubSink(hub)));
    }
    if let (Some(url), Some(shard)) = (&args.nats, args.shard) {
        let sink = EventsSink::open(w.runtime.handle(), url, shard, w.stop_rx.clone())?;
        info!(role = "nats-events", subject = %crate::shard::events_subject(shard.index), "publishing events to NATS JetStream");
        sinks.push(Box::new(sink));
    }
    if sinks.is_empty() || args.stdout {
        info!(role = "stdout", "writing events to stdout");
        let out = std::io::BufWriter::with_capacity(1 << 16, std::io::stdout());
        sinks.push(Box::new(WriterSink::new("stdout", out)));
    }
    Ok(sinks)
}

/// SIGINT / SIGTERM: stop reading (the pipeline then drains and finishes); a second one
/// while draining exits at once. The handlers are installed before this returns, so a signal
/// that comes right after start-up is not missed.
fn spawn_signal_handler(
    w: &Wiring,
    stop: Stop,
    engine_closer: Option<input::EngineCloser>,
) -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let _in_runtime = w.runtime.enter();
    let mut signals = Signals {
        term: signal(SignalKind::terminate()).context("cannot handle SIGTERM")?,
        int: signal(SignalKind::interrupt()).context("cannot handle SIGINT")?,
    };
    let shared = w.shared.clone();
    let stop_tx = w.stop_tx.clone();
    w.runtime.spawn(async move {
        let signal = signals.next().await;
        info!(signal, "stopping: applying what was read, delivering every event");
        shared.phase.set(Phase::STOPPING);
        stop.stop();
        drop(stop_tx);
        if let Some(closer) = engine_closer {
            closer.close();
        }
        // A sink that never drains (a full disk, a stdout nobody reads): give up at once.
        let again = signals.next().await;
        error!(signal = again, "second signal while stopping: exiting without draining");
        std::process::exit(1);
    });
    Ok(())
}

/// The two stop signals.
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl Signals {
    /// The next SIGTERM or SIGINT, by name.
    async fn next(&mut self) -> &'static str {
        tokio::select! {
            _ = self.term.recv() => "SIGTERM",
            _ = self.int.recv() => "SIGINT",
        }
    }
}

/// One line to stderr for a person, besides the log. A closed stderr is no reason to panic
/// (as `eprintln!` would): the exit status still tells.
fn say(line: &str) {
    use std::io::Write as _;
    let _ = writeln!(std::io::stderr(), "{line}");
}

/// The exit status and the last log line of a run.
fn finished(result: std::thread::Result<std::io::Result<crate::pipeline::Summary>>) -> ExitCode {
    match result {
        Ok(Ok(summary)) => {
            info!(
                messages = summary.messages,
                liquidations = summary.liquidations,
                rejects = summary.rejects,
                duplicates = summary.duplicates,
                "stopped: every event delivered to every healthy sink"
            );
            ExitCode::SUCCESS
        }
        Ok(Err(e)) => {
            error!(error = %e, "stopped with an error");
            say(&format!("liqscan: {e}"));
            ExitCode::FAILURE
        }
        Err(_) => {
            error!("the engine thread panicked");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::parse_addr;

    #[test]
    fn bind_addresses_are_ips_or_ports_and_a_host_name_is_refused_with_the_reason() {
        assert_eq!(parse_addr("7090").unwrap().to_string(), "127.0.0.1:7090");
        assert_eq!(parse_addr("[::1]:0").unwrap().to_string(), "[::1]:0");
        assert_eq!(parse_addr("0.0.0.0:7070").unwrap().to_string(), "0.0.0.0:7070");
        for bad in ["localhost:7090", "127.0.0.1", "127.0.0.1:99999", "+7090", ""] {
            let reason = parse_addr(bad).unwrap_err();
            assert!(
                reason.contains("IP:PORT") && reason.contains("no host names"),
                "{bad}: {reason}"
            );
        }
    }
}
