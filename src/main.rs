//! The `liqscan` command line (SPEC section 8).

use std::{
    collections::VecDeque,
    fmt,
    fs::File,
    io::{self, BufRead, BufReader, BufWriter, IsTerminal, Read, Write},
    path::{Path, PathBuf},
    process::ExitCode,
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use anyhow::{Context, bail};
use clap::{Parser, Subcommand, ValueEnum};
use indicatif::{
    MultiProgress, ProgressBar, ProgressDrawTarget, ProgressState, ProgressStyle,
    style::ProgressTracker,
};
use liqscan::{
    chart::{self, ChartError},
    config::Config,
    engine::Engine,
    fast::{FastEngine, WICK_SCRATCH},
    feed,
    generator::{self, Fault, GenOptions, Phase},
    latency,
    reference::ReferenceEngine,
    replay,
};

/// Writes a line to stderr and ignores a failure: stderr carries diagnostics (the summary,
/// warnings, errors), and a closed or broken stderr must neither panic (as `eprintln!` does)
/// nor change the exit status the run earned. Events and streams go to stdout, whose write
/// errors are errors.
macro_rules! say {
    ($($arg:tt)*) => {{
        let _ = writeln!(io::stderr(), $($arg)*);
    }};
}

// mimalloc: the engine allocates event strings and per-message scratch from several threads
// (ingest, engine, writer, rayon workers); mimalloc's thread-local free lists keep those
// small allocations off a shared lock, where glibc's malloc contends across arenas.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "liqscan", version, about = "Liquidation scanner for perpetual-futures exchanges")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Process a fixture file (or - for stdin) as fast as possible: events to stdout, a
    /// summary to stderr.
    Replay {
        /// Risk config (JSON, SPEC section 2).
        #[arg(long)]
        config: PathBuf,
        /// Write the summary as JSON to this file.
        #[arg(long)]
        report: Option<PathBuf>,
        /// Which engine evaluates: the fast struct-of-arrays one, or the exact reference.
        #[arg(long, value_enum, default_value_t = EngineKind::Fast)]
        engine: EngineKind,
        /// Write the latency histograms (event, ts_to_event, apply; in ns) to this file in
        /// the HdrHistogram interval log format.
        #[arg(long, value_name = "FILE")]
        hdr_out: Option<PathBuf>,
        /// Draw the latency percentile spectrum (one line per histogram) to this SVG file.
        #[arg(long, value_name = "FILE.svg")]
        plot: Option<PathBuf>,
        /// Offer the input at this many lines per second, as a live sender would, instead of
        /// as fast as possible (where event latency measures the queue, not the engine).
        /// Any number from 0.001 up, fractions allowed.
        #[arg(long, value_name = "LINES_PER_S", value_parser = positive_rate)]
        rate: Option<f64>,
        /// Input stream: newline-delimited JSON messages, or - for stdin.
        input: String,
    },
    /// The sidecar daemon (SPEC section 9): the engine stream from stdin or TCP, events to
    /// TCP subscribers and a file (stdout when neither is named, or with --stdout), metrics
    /// and live queries over HTTP.
    Run(liqscan::daemon::RunArgs),
    /// Generate a config and a message stream for load tests: deterministic for a seed,
    /// written as it is made. The stream goes to stdout unless --out is given.
    Gen(GenArgs),
    /// Play a stream into a daemon's --listen address as a matching engine would: read the
    /// hello, send from the first message after its last_seq, reconnect with back-off when
    /// the connection drops (SPEC section 9.1).
    Feed(FeedArgs),
    /// Route a stream into N shards' NATS JetStream streams (SPEC section 10): a message
    /// naming an account to shard account mod N, mark, marks and funding to every shard,
    /// lines naming no account to shard 0. Run again on the same input, it sends each shard
    /// only what its stream lacks.
    Publish(PublishArgs),
    /// Draw the percentile spectrum of an HdrHistogram interval log (as written by
    /// `replay --hdr-out`) to an SVG file: one line per tag.
    Plot {
        /// The HdrHistogram interval log.
        log: PathBuf,
        /// The SVG file to write.
        #[arg(long, value_name = "FILE.svg")]
        out: PathBuf,
        /// The chart's title.
        #[arg(long, default_value = "liqscan latency by percentile")]
        title: String,
    },
    /// Snapshots of `liqscan run --state-dir` (SPEC section 9.4).
    #[command(subcommand)]
    Snapshot(SnapshotCommand),
}

#[derive(Subcommand)]
enum SnapshotCommand {
    /// Print a snapshot's header and counts and check it whole (checksums, body decodes);
    /// exit 1 when it cannot be used.
    Inspect {
        /// A snapshot file (snapshot-SEQ-TIME.liqsnap in a state directory).
        file: PathBuf,
    },
}

#[derive(clap::Args)]
struct GenArgs {
    /// Accounts in the book.
    #[arg(long, default_value_t = 10_000)]
    accounts: u64,
    /// Symbols in the config (S000, S001, ...), popularity skewed Zipf-like.
    #[arg(long, default_value_t = 50)]
    symbols: usize,
    /// Lines after the start-up snapshot (with --no-snapshot: after the first marks).
    #[arg(long, default_value_t = 1_000_000)]
    messages: u64,
    /// Seed: the same options and seed give the same bytes on every machine.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Open positions in the book [default: 3 per account, fewer with under 3 symbols].
    #[arg(long)]
    positions: Option<u64>,
    /// Fraction of generated traffic that is mark prices; the rest is funding, transfers,
    /// margin moves, leverage, mode and order changes, and queries.
    #[arg(long, default_value_t = 0.9)]
    mark_ratio: f64,
    /// Fraction of lines that are injected faults: malformed lines, invalid fields, unknown
    /// symbols, state rule breaks, duplicates and gaps, each tagged "_fault":"<code>".
    #[arg(long, default_value_t = 0.0)]
    fault_rate: f64,
    /// Open accounts one by one over the first half of the stream instead of in a start-up
    /// snapshot of all balances and positions.
    #[arg(long)]
    no_snapshot: bool,
    /// Pick each mark's symbol by popularity (Zipf) instead of at an even cadence.
    #[arg(long)]
    marks_follow_popularity: bool,
    /// Write the config (JSON) here. Without it, the config goes next to --out as
    /// NAME.config.json (stream.ndjson -> stream.config.json); with the stream on stdout (or
    /// --out not a file) and no --config-out, no config is written and a warning says so.
    #[arg(long, value_name = "FILE")]
    config_out: Option<PathBuf>,
    /// Write the stream here instead of stdout.
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,
}

/// An address to connect to: `HOST:PORT` (a host name is resolved at each connect, so a
/// daemon that moves is found again) or a bare `PORT` on 127.0.0.1, as `run --listen` takes.
/// Anything else (port 0, which nothing listens on, and a host that is no host name:
/// `host:7070:1`, `a b:7070`) is a usage error (exit 2), not a network fault to retry.
fn peer_addr(s: &str) -> Result<String, String> {
    let port_zero = || format!("{s:?}: port 0 cannot be connected to; give the daemon's port");
    // A socket address or a bare port: `run --listen`'s own rule, so the two read alike.
    if let Ok(addr) = liqscan::daemon::parse_addr(s) {
        return if addr.port() == 0 { Err(port_zero()) } else { Ok(addr.to_string()) };
    }
    let host_name = |h: &str| {
        !h.is_empty()
            && h.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
    };
    // Digits only: `u16`'s parse takes a leading `+`.
    let port = |p: &str| p.bytes().all(|b| b.is_ascii_digit()).then(|| p.parse::<u16>().ok())?;
    match s.rsplit_once(':') {
        Some((host, p)) if host_name(host) && port(p) == Some(0) => Err(port_zero()),
        Some((host, p)) if host_name(host) && port(p).is_some() => Ok(s.to_owned()),
        _ => {
            Err(format!("{s:?} is not an address: give HOST:PORT (e.g. 127.0.0.1:7071) or a port"))
        }
    }
}

#[derive(clap::Args)]
struct PublishArgs {
    /// The NATS server (with JetStream: nats-server -js), e.g. nats://127.0.0.1:4222.
    #[arg(long, value_name = "URL")]
    nats: String,
    /// Shards N: streams LIQSCAN_0 .. LIQSCAN_<N-1>, read by `liqscan run --nats URL --shard I/N`.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=1024))]
    shards: u32,
    /// Send this many lines per second instead of as fast as the server stores them.
    #[arg(long, value_name = "LINES_PER_S", value_parser = positive_rate)]
    rate: Option<f64>,
    /// Give up when the server stays away (nothing stored) this long (500ms, 30s, 5m).
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = humantime::parse_duration)]
    give_up_after: std::time::Duration,
    /// Input stream: newline-delimited JSON messages (SPEC section 5).
    input: PathBuf,
}

fn run_publish(args: PublishArgs) -> anyhow::Result<ExitCode> {
    let opts = liqscan::shard::publish::PublishOptions {
        nats: args.nats,
        shards: args.shards,
        rate: args.rate,
        give_up_after: args.give_up_after,
    };
    let summary = liqscan::shard::publish::publish(&args.input, &opts)?;
    say!("{}", summary.human().trim_end());
    Ok(ExitCode::SUCCESS)
}

#[derive(clap::Args)]
struct FeedArgs {
    /// The daemon's engine address (its --listen): HOST:PORT, or a bare PORT on 127.0.0.1.
    #[arg(long, value_name = "ADDR", value_parser = peer_addr)]
    to: String,
    /// Send this many lines per second instead of as fast as the daemon reads them (from
    /// 0.001 up).
    #[arg(long, value_name = "LINES_PER_S", value_parser = positive_rate)]
    rate: Option<f64>,
    /// Also subscribe to the daemon's events (its --events address) and time each event
    /// from the message's ts to its arrival; implies --stamp-ts.
    #[arg(long, value_name = "ADDR", value_parser = peer_addr)]
    events: Option<String>,
    /// Set "ts" (ns since the epoch, at send time) on every message that has none.
    #[arg(long)]
    stamp_ts: bool,
    /// Give up when no connection can be made for this long (e.g. 500ms, 30s, 5m).
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = humantime::parse_duration)]
    give_up_after: std::time::Duration,
    /// With --events: after the last line, stop once no event came for this long.
    #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = humantime::parse_duration)]
    events_idle: std::time::Duration,
    /// After the last line, wait this long for the daemon to confirm it read everything (its
    /// bye line and close); then reconnect and resume from its hello.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = close_timeout)]
    close_timeout: std::time::Duration,
    /// Write the summary as JSON to this file.
    #[arg(long, value_name = "FILE")]
    report: Option<PathBuf>,
    /// With --events: write the ts-to-event histogram (ns) as an HdrHistogram interval log.
    #[arg(long, value_name = "FILE", requires = "events")]
    hdr_out: Option<PathBuf>,
    /// With --events: draw its percentile spectrum to this SVG file.
    #[arg(long, value_name = "FILE.svg", requires = "events")]
    plot: Option<PathBuf>,
    /// The stream to send (a file: a reconnect resends from the daemon's last seq).
    #[arg(value_parser = feed_input)]
    input: PathBuf,
}

#[derive(Clone, Copy, ValueEnum)]
enum EngineKind {
    Fast,
    Reference,
}

impl EngineKind {
    fn name(self) -> &'static str {
        match self {
            EngineKind::Fast => "fast",
            EngineKind::Reference => "reference",
        }
    }
}

/// The slowest `--rate`: one line every 1,000 s. Slower paces put a line's due time past
/// what a `Duration` holds (`--rate 1e-300` panicked).
const RATE_MIN: f64 = 0.001;

fn positive_rate(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(r) if r.is_finite() && r >= RATE_MIN => Ok(r),
        Ok(r) if r.is_finite() && r > 0.0 => {
            Err(format!("{s:?} is below 0.001 lines per second (one line every 1,000 s)"))
        }
        _ => Err(format!("{s:?} is not a finite positive number of lines per second")),
    }
}

fn load_config(path: &std::path::Path) -> Result<Arc<Config>, ExitCode> {
    Config::load(path).map(Arc::new).map_err(|e| {
        say!("liqscan: config {}: {e}", path.display());
        ExitCode::from(2)
    })
}

/// Standard output as a file of its own, for events and streams: writes go through our
/// buffer only, and every error is reported (Rust's `io::stdout()` would swallow `EBADF`,
/// turning a closed descriptor into a silent success).
///
/// A descriptor 1 closed before start cannot be seen here: Rust's runtime opens `/dev/null`
/// in its place before `main`, which looks exactly like `> /dev/null` (or Python's
/// `stdout=DEVNULL`), a deliberate discard. What can fail (a pipe whose reader left, a full
/// disk) fails on write, and that is an error with exit status 1.
fn stdout_file() -> anyhow::Result<File> {
    #[cfg(unix)]
    {
        use std::os::fd::AsFd;
        let fd = io::stdout()
            .as_fd()
            .try_clone_to_owned()
            .context("standard output is closed: there is nowhere to write")?;
        Ok(File::from(fd))
    }
    #[cfg(not(unix))]
    {
        bail!("liqscan writes its output to a unix standard output")
    }
}

/// Whether to draw a progress bar on stderr: only when stderr is a terminal, and never when
/// stdout, carrying the run's output, is a terminal too (a bar redrawn between events would
/// be mixed into them, since both reach the same screen). So a bar shows exactly when the
/// output goes to a file or a pipe and stderr is watched.
fn bar_wanted(stdout_carries_output: bool) -> bool {
    io::stderr().is_terminal() && !(stdout_carries_output && io::stdout().is_terminal())
}

/// How far back the progress bars' rate and ETA look.
const RATE_WINDOW: Duration = Duration::from_secs(5);

/// Position samples over the last [`RATE_WINDOW`]: the rate the bars show is the progress
/// over that window, and the ETA the rest at that rate. indicatif's own estimator weighs
/// the last 15 s (and, doubly smoothed, much of what came before), so a replay whose start
/// (a snapshot, or the first fill of the pipeline's queues) runs many times faster than its
/// body showed a rate decaying over the whole run and an ETA a fraction of the truth.
#[derive(Debug, Clone, Default)]
struct Recent {
    samples: VecDeque<(Instant, u64)>,
}

impl Recent {
    fn record(&mut self, now: Instant, pos: u64) {
        // Keep one sample older than the window, so the span covers all of it.
        while self.samples.len() >= 2 && now.duration_since(self.samples[1].0) > RATE_WINDOW {
            self.samples.pop_front();
        }
        match self.samples.back() {
            Some(&(t, _)) if now.duration_since(t) < Duration::from_millis(100) => {}
            _ => self.samples.push_back((now, pos)),
        }
    }

    /// Units per second over the window, given the position and time now; `None` until
    /// there is a span to measure.
    fn per_sec(&self, now: Instant, pos: u64) -> Option<f64> {
        let &(t0, p0) = self.samples.front()?;
        let secs = now.duration_since(t0).as_secs_f64();
        (secs >= 0.2).then(|| pos.saturating_sub(p0) as f64 / secs)
    }
}

/// One of the bar's custom keys, computed from [`Recent`].
#[derive(Debug, Clone)]
enum Shown {
    /// `{rate}`: the rate with its unit ("MB/s" for bytes, else "lines/s", "accounts/s").
    Rate { unit: &'static str },
    /// `{eta}`: the rest at the rate of the window.
    Eta,
}

#[derive(Debug, Clone)]
struct WindowTracker {
    recent: Recent,
    shown: Shown,
}

impl ProgressTracker for WindowTracker {
    fn clone_box(&self) -> Box<dyn ProgressTracker> {
        Box::new(self.clone())
    }

    fn tick(&mut self, state: &ProgressState, now: Instant) {
        self.recent.record(now, state.pos());
    }

    fn reset(&mut self, _: &ProgressState, _: Instant) {
        self.recent = Recent::default();
    }

    fn write(&self, state: &ProgressState, w: &mut dyn fmt::Write) {
        let rate = self.recent.per_sec(Instant::now(), state.pos());
        let _ = match (&self.shown, rate) {
            (Shown::Rate { unit: "bytes" }, Some(r)) => {
                write!(w, "{}/s", indicatif::DecimalBytes(r as u64))
            }
            (Shown::Rate { unit }, Some(r)) => {
                write!(w, "{} {unit}/s", indicatif::HumanCount(r as u64))
            }
            (Shown::Rate { .. }, None) => w.write_str("-"),
            (Shown::Eta, Some(r)) if r > 0.0 => match state.len() {
                Some(len) => w.write_str(&eta_text(len.saturating_sub(state.pos()) as f64 / r)),
                None => w.write_str("-"),
            },
            (Shown::Eta, _) => w.write_str("-"),
        };
    }
}

/// "42s", "3m07s", "2h05m".
fn eta_text(secs: f64) -> String {
    let s = secs.ceil().min(1e9) as u64;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
    }
}

/// A progress bar on stderr when `shown` (see [`bar_wanted`]); a hidden one otherwise, so
/// piped and redirected runs never carry bar output. `unit` names what the position counts
/// ("bytes" is shown in MB). The template may use `{rate}` and `{eta}`: both look at the
/// last [`RATE_WINDOW`] of progress.
fn progress_bar(shown: bool, len: Option<u64>, unit: &'static str, template: &str) -> ProgressBar {
    if !shown {
        return ProgressBar::hidden();
    }
    let bar = match len {
        Some(n) => ProgressBar::new(n),
        None => ProgressBar::new_spinner(),
    };
    let tracker = |shown| WindowTracker { recent: Recent::default(), shown };
    // The templates are constants of this file; a typo shows as a plain bar, not a panic.
    let style = ProgressStyle::with_template(template)
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .with_key("rate", tracker(Shown::Rate { unit }))
        .with_key("eta", tracker(Shown::Eta));
    bar.set_style(style);
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}

struct ReplayArgs {
    config: PathBuf,
    report: Option<PathBuf>,
    engine: EngineKind,
    hdr_out: Option<PathBuf>,
    plot: Option<PathBuf>,
    rate: Option<f64>,
    input: String,
}

fn run_replay(args: ReplayArgs) -> anyhow::Result<ExitCode> {
    let stdout = stdout_file()?;
    let cfg = match load_config(&args.config) {
        Ok(c) => c,
        Err(code) => return Ok(code),
    };
    // After the config (a bad one is exit 2 whatever else is wrong), before the input.
    let outputs = Outputs { report: args.report, hdr_out: args.hdr_out, plot: args.plot };
    outputs.check()?;
    let out = BufWriter::with_capacity(1 << 16, stdout);
    let mut engine: Box<dyn Engine> = match args.engine {
        EngineKind::Fast => Box::new(FastEngine::new(cfg.clone()).with_wick_scratch(WICK_SCRATCH)),
        EngineKind::Reference => Box::new(ReferenceEngine::new(cfg.clone())),
    };
    let started = SystemTime::now();
    // The bar counts bytes as the reader takes them, at most the pipeline's queues (16
    // batches of 1,024 lines) ahead of the engine.
    let template = "{spinner} replay [{elapsed_precise}] {wide_bar} {decimal_bytes}/{decimal_total_bytes} {rate} eta {eta}";
    let shown = bar_wanted(true);
    let (input, bar): (Box<dyn BufRead + Send>, ProgressBar) = if args.input == "-" {
        let bar = progress_bar(
            shown,
            None,
            "bytes",
            "{spinner} replay [{elapsed_precise}] {decimal_bytes} {rate}",
        );
        (Box::new(BufReader::with_capacity(1 << 16, bar.wrap_read(io::stdin()))), bar)
    } else {
        let file =
            File::open(&args.input).with_context(|| format!("cannot open input {}", args.input))?;
        let bar = progress_bar(shown, file.metadata().ok().map(|m| m.len()), "bytes", template);
        (Box::new(BufReader::with_capacity(1 << 16, bar.wrap_read(file))), bar)
    };
    let opts = replay::Options { rate: args.rate, ..replay::Options::default() };
    let summary = replay::replay_with(cfg, engine.as_mut(), input, out, opts);
    bar.finish_and_clear();
    let summary = summary.context("replay failed")?;
    let name = args.engine.name();
    let _ = io::stderr().write_all(summary.human(name).as_bytes());
    outputs.write(
        &summary.to_json(name),
        started,
        summary.elapsed,
        &[
            ("event", &summary.event_latency),
            ("ts_to_event", &summary.ts_latency),
            ("apply", &summary.apply_latency),
        ],
        &format!("liqscan replay ({name} engine): latency by percentile"),
    )?;
    Ok(ExitCode::SUCCESS)
}

/// The files a run may leave besides its stream: `--report`, `--hdr-out`, `--plot`.
struct Outputs {
    report: Option<PathBuf>,
    hdr_out: Option<PathBuf>,
    plot: Option<PathBuf>,
}

impl Outputs {
    /// Refuses at the start an output that cannot be made at the end: its folder does not
    /// exist, or it names a folder (a long replay failed only after reading its whole input).
    fn check(&self) -> anyhow::Result<()> {
        for path in [&self.report, &self.hdr_out, &self.plot].into_iter().flatten() {
            let folder = path.parent().filter(|p| !p.as_os_str().is_empty());
            if folder.is_some_and(|f| !f.is_dir()) {
                bail!(
                    "cannot write {}: {} is not a folder",
                    path.display(),
                    folder.unwrap().display()
                );
            }
            if path.is_dir() {
                bail!("cannot write {}: it is a folder", path.display());
            }
        }
        Ok(())
    }

    /// Writes the report JSON, the HdrHistogram log of `series` and its chart, as asked.
    fn write(
        &self,
        report: &serde_json::Value,
        started: SystemTime,
        elapsed: Duration,
        series: &[(&str, &latency::Latency)],
        title: &str,
    ) -> anyhow::Result<()> {
        if let Some(path) = &self.report {
            let json = serde_json::to_string_pretty(report)?;
            std::fs::write(path, json + "\n")
                .with_context(|| format!("cannot write report {}", path.display()))?;
        }
        if let Some(path) = &self.hdr_out {
            let mut file = BufWriter::new(
                File::create(path).with_context(|| format!("cannot create {}", path.display()))?,
            );
            latency::write_log(&mut file, started, elapsed, series)
                .and_then(|()| file.flush())
                .with_context(|| format!("cannot write {}", path.display()))?;
        }
        if let Some(path) = &self.plot {
            let owned: Vec<(String, latency::Latency)> =
                series.iter().map(|(n, l)| ((*n).to_owned(), (*l).clone())).collect();
            match chart::percentile_spectrum(path, title, &owned) {
                Ok(()) => {}
                // An input with no messages has no latencies: nothing to draw is not a failure.
                Err(ChartError::Empty) => say!("liqscan: no chart: no latency values to plot"),
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }
}

fn run_gen(args: GenArgs) -> anyhow::Result<ExitCode> {
    let mut opts = GenOptions::new(args.accounts, args.symbols, args.messages, args.seed);
    opts.positions = args.positions.unwrap_or(opts.positions);
    opts.mark_ratio = args.mark_ratio;
    opts.fault_rate = args.fault_rate;
    opts.snapshot = !args.no_snapshot;
    opts.marks_follow_popularity = args.marks_follow_popularity;
    if let Err(e) = opts.check() {
        bail!("gen: {e}");
    }
    let stdout = if args.out.is_none() { Some(stdout_file()?) } else { None };
    let config_out = match (&args.config_out, &args.out) {
        (Some(path), _) => Some(path.clone()),
        // Next to a stream file; not next to a device or a pipe (`--out /dev/stdout`).
        (None, Some(out)) if std::fs::metadata(out).map_or(true, |m| m.is_file()) => {
            Some(out.with_extension("config.json"))
        }
        (None, _) => None,
    };
    if let Some(path) = &config_out {
        std::fs::write(path, generator::config_text(opts.symbols))
            .with_context(|| format!("cannot write config {}", path.display()))?;
        if args.config_out.is_none() {
            say!("liqscan gen: config written to {} (--config-out sets where)", path.display());
        }
    } else {
        say!(
            "liqscan gen: warning: no config written (the stream is not a file; give \
             --config-out FILE to write the config a replay of this stream needs)"
        );
    }
    // Sent to the generator's writer thread.
    let out: Box<dyn Write + Send> = match (&args.out, stdout) {
        (Some(path), _) => Box::new(
            File::create(path).with_context(|| format!("cannot create {}", path.display()))?,
        ),
        (None, Some(stdout)) => Box::new(stdout),
        (None, None) => unreachable!("stdout is taken when there is no --out"),
    };
    let out = BufWriter::with_capacity(1 << 16, out);
    let started = Instant::now();
    let shown = bar_wanted(args.out.is_none());
    // One bar per phase, each with its name and unit, stacked: a finished phase's bar stays
    // above the next one's until the end, when all are cleared for the summary line.
    let bars = if shown {
        MultiProgress::new()
    } else {
        MultiProgress::with_draw_target(ProgressDrawTarget::hidden())
    };
    let mut bar: Option<(Phase, ProgressBar)> = None;
    let result = generator::generate(&opts, out, &mut |phase, done| {
        if bar.as_ref().is_none_or(|(p, _)| *p != phase) {
            if let Some((_, old)) = bar.take() {
                old.finish();
            }
            let template = format!(
                "{{spinner}} gen {name:<8} [{{elapsed_precise}}] {{wide_bar}} {{human_pos}}/{{human_len}} {unit} {{rate}} eta {{eta}}",
                name = phase.name,
                unit = phase.unit,
            );
            let new = bars.add(progress_bar(shown, Some(phase.total), phase.unit, &template));
            bar = Some((phase, new));
        }
        if let Some((_, b)) = &bar {
            b.set_position(done);
        }
    });
    if let Some((_, b)) = bar {
        b.finish();
    }
    let _ = bars.clear();
    let stats = result.context("gen failed")?;
    let secs = started.elapsed().as_secs_f64();
    let faults: Vec<String> = Fault::ALL
        .iter()
        .zip(stats.faults)
        .filter(|(_, n)| *n > 0)
        .map(|(f, n)| format!("{} {n}", f.tag()))
        .collect();
    say!(
        "liqscan gen: {} lines ({} snapshot) in {secs:.1} s ({:.0} lines/s); its engine saw {} liquidations and acted {} times; faults: {}; {} generated messages left out (refused by the engine)",
        stats.lines,
        stats.snapshot_lines,
        stats.lines as f64 / secs.max(1e-9),
        stats.liquidations,
        stats.engine_actions,
        if faults.is_empty() { "none".to_owned() } else { faults.join(", ") },
        stats.left_out,
    );
    Ok(ExitCode::SUCCESS)
}

/// `--close-timeout`: at least 1 ms (`0s` was a socket timeout of none: a wait forever).
fn close_timeout(s: &str) -> Result<std::time::Duration, String> {
    let min = std::time::Duration::from_millis(1);
    liqscan::daemon::duration_at_least(s, min, "the close timeout (a wait above zero)")
}

/// `feed`'s input: a file, not `-` (a usage error, exit 2): a reconnect resends from the
/// daemon's last seq, which needs an input it can read again.
fn feed_input(s: &str) -> Result<PathBuf, String> {
    if s == "-" {
        return Err(
            "feed reads a file, not stdin: after a reconnect it resends from the daemon's last seq"
                .to_owned(),
        );
    }
    Ok(PathBuf::from(s))
}

fn run_feed(args: FeedArgs) -> anyhow::Result<ExitCode> {
    let outputs = Outputs { report: args.report, hdr_out: args.hdr_out, plot: args.plot };
    outputs.check()?;
    let mut opts = feed::FeedOptions::new(args.to);
    opts.rate = args.rate;
    opts.stamp_ts = args.stamp_ts || args.events.is_some();
    opts.events = args.events;
    opts.give_up_after = args.give_up_after;
    opts.events_idle = args.events_idle;
    opts.close_timeout = args.close_timeout;
    let started = SystemTime::now();
    let summary = feed::feed(&args.input, &opts)?;
    let _ = io::stderr().write_all(summary.human().as_bytes());
    outputs.write(
        &summary.to_json(),
        started,
        summary.elapsed,
        &[("ts_to_event", &summary.ts_to_event)],
        "liqscan feed: message ts to event at the subscriber",
    )?;
    Ok(ExitCode::SUCCESS)
}

fn run_plot(log: &Path, out: &Path, title: &str) -> anyhow::Result<ExitCode> {
    // An interval log is small; a cap keeps a wrong file (or /dev/zero) from eating memory.
    const MAX_LOG_BYTES: u64 = 256 << 20;
    let mut text = Vec::new();
    File::open(log)
        .and_then(|f| f.take(MAX_LOG_BYTES + 1).read_to_end(&mut text))
        .with_context(|| format!("cannot read {}", log.display()))?;
    if text.len() as u64 > MAX_LOG_BYTES {
        bail!(
            "{} is over {} MiB: not an HdrHistogram interval log",
            log.display(),
            MAX_LOG_BYTES >> 20
        );
    }
    let series = latency::read_log(&text).map_err(|e| anyhow::anyhow!("{}: {e}", log.display()))?;
    chart::percentile_spectrum(out, title, &series).map_err(|e| match e {
        ChartError::Empty => anyhow::anyhow!("{}: holds no latency values to plot", log.display()),
        e => e.into(),
    })?;
    Ok(ExitCode::SUCCESS)
}

/// Parses the command line. Help and version go to stdout: when they cannot be written that
/// is exit 1 (with a word on stderr), not the silent success clap's `exit` gives; usage
/// errors are exit 2, as clap gives them.
fn parse_cli() -> Result<Cli, ExitCode> {
    Cli::try_parse().map_err(|e| {
        let printed = e.print();
        let code = e.exit_code();
        match printed {
            Err(io) if code == 0 => {
                say!("liqscan: cannot write to standard output: {io}");
                ExitCode::FAILURE
            }
            // A failure to print a usage error to stderr changes nothing: exit 2 already says
            // the command line was wrong.
            _ => ExitCode::from(u8::try_from(code).unwrap_or(2)),
        }
    })
}

fn main() -> ExitCode {
    // Before anything is freed: no purge of freed memory on the engine thread (`liqscan::heap`).
    liqscan::heap::keep_freed_memory();
    // The engines' rayon workers (sweeps, fundings, `/at-risk`), named for `top -H` and
    // `perf sched`; built once, so this cannot fail but for a pool built before (none is).
    let _ = rayon::ThreadPoolBuilder::new()
        .thread_name(|i| format!("liqscan-rayon-{i}"))
        .build_global();
    let cli = match parse_cli() {
        Ok(cli) => cli,
        Err(code) => return code,
    };
    let result = match cli.command {
        Command::Replay { config, report, engine, hdr_out, plot, rate, input } => {
            run_replay(ReplayArgs { config, report, engine, hdr_out, plot, rate, input })
        }
        Command::Run(args) => liqscan::daemon::run(args),
        Command::Gen(args) => run_gen(args),
        Command::Feed(args) => run_feed(args),
        Command::Publish(args) => run_publish(args),
        Command::Plot { log, out, title } => run_plot(&log, &out, &title),
        Command::Snapshot(SnapshotCommand::Inspect { file }) => {
            Ok(liqscan::state::inspect(&file, &mut std::io::stdout().lock()))
        }
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            say!("liqscan: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rate_follows_the_last_window_not_the_start() {
        // TC1: 10 s at 100 MB/s (a fast start), then 20 s at 2 MB/s, sampled every 200 ms.
        let t0 = Instant::now();
        let mut recent = Recent::default();
        let mut pos = 0u64;
        for tick in 0..=150u64 {
            let now = t0 + Duration::from_millis(tick * 200);
            pos += if tick <= 50 { 20_000_000 } else { 400_000 };
            recent.record(now, pos);
        }
        let now = t0 + Duration::from_millis(150 * 200);
        let rate = recent.per_sec(now, pos).unwrap();
        assert!((1.9e6..=2.1e6).contains(&rate), "{rate}");
        // TC2: the window holds about 5 s of samples, not the whole run.
        assert!(recent.samples.len() <= 27, "{}", recent.samples.len());
        // TC3: no span yet, no rate.
        let mut fresh = Recent::default();
        fresh.record(t0, 5);
        assert_eq!(fresh.per_sec(t0 + Duration::from_millis(50), 10), None);
    }

    #[test]
    fn eta_reads_as_minutes_and_hours() {
        // (seconds, text)
        for (secs, want) in
            [(0.2, "1s"), (42.0, "42s"), (187.0, "3m07s"), (7500.0, "2h05m"), (1e30, "277777h46m")]
        {
            assert_eq!(eta_text(secs), want, "{secs}");
        }
    }
}
