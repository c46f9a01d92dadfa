//! The `liqscan` command line (SPEC section 8).

use std::{
    fs::File,
    io::{self, BufRead, BufReader, BufWriter, IsTerminal, Write},
    path::{Path, PathBuf},
    process::ExitCode,
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use anyhow::{Context, bail};
use clap::{Parser, Subcommand, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use liqscan::{
    chart,
    config::Config,
    engine::Engine,
    fast::FastEngine,
    generator::{self, Fault, GenOptions},
    latency,
    reference::ReferenceEngine,
    replay,
};

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
        #[arg(long, value_name = "LINES_PER_S", value_parser = positive_rate)]
        rate: Option<f64>,
        /// Input stream: newline-delimited JSON messages, or - for stdin.
        input: String,
    },
    /// The sidecar daemon (SPEC section 9): the engine stream from stdin or TCP, events to
    /// stdout, a file and TCP subscribers, metrics and live queries over HTTP.
    Run(liqscan::daemon::RunArgs),
    /// Generate a config and a message stream for load tests: deterministic for a seed,
    /// written as it is made. The stream goes to stdout unless --out is given.
    Gen(GenArgs),
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
    /// Write the config (JSON) here.
    #[arg(long, value_name = "FILE")]
    config_out: Option<PathBuf>,
    /// Write the stream here instead of stdout.
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,
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

fn positive_rate(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(r) if r.is_finite() && r > 0.0 => Ok(r),
        _ => Err(format!("{s:?} is not a positive number of lines per second")),
    }
}

fn load_config(path: &std::path::Path) -> Result<Arc<Config>, ExitCode> {
    Config::load(path).map(Arc::new).map_err(|e| {
        eprintln!("liqscan: config {}: {e}", path.display());
        ExitCode::from(2)
    })
}

/// A progress bar on stderr when stderr is a terminal; a hidden one otherwise, so piped and
/// redirected runs never carry bar output.
fn progress_bar(len: Option<u64>, template: &str) -> ProgressBar {
    if !io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = match len {
        Some(n) => ProgressBar::new(n),
        None => ProgressBar::new_spinner(),
    };
    let style = ProgressStyle::with_template(template).expect("a valid template").with_key(
        "rate",
        |state: &indicatif::ProgressState, w: &mut dyn std::fmt::Write| {
            let _ = write!(w, "{:.0}/s", state.per_sec());
        },
    );
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
    let cfg = match load_config(&args.config) {
        Ok(c) => c,
        Err(code) => return Ok(code),
    };
    let out = BufWriter::with_capacity(1 << 16, io::stdout());
    let mut engine: Box<dyn Engine> = match args.engine {
        EngineKind::Fast => Box::new(FastEngine::new(cfg.clone())),
        EngineKind::Reference => Box::new(ReferenceEngine::new(cfg.clone())),
    };
    let started = SystemTime::now();
    let template = "{spinner} replay [{elapsed_precise}] {wide_bar} {decimal_bytes}/{decimal_total_bytes} {decimal_bytes_per_sec} eta {eta}";
    let (input, bar): (Box<dyn BufRead + Send>, ProgressBar) = if args.input == "-" {
        let bar = progress_bar(
            None,
            "{spinner} replay [{elapsed_precise}] {decimal_bytes} {decimal_bytes_per_sec}",
        );
        (Box::new(BufReader::with_capacity(1 << 16, bar.wrap_read(io::stdin()))), bar)
    } else {
        let file =
            File::open(&args.input).with_context(|| format!("cannot open input {}", args.input))?;
        let bar = progress_bar(file.metadata().ok().map(|m| m.len()), template);
        (Box::new(BufReader::with_capacity(1 << 16, bar.wrap_read(file))), bar)
    };
    let opts = replay::Options { rate: args.rate, ..replay::Options::default() };
    let summary =
        replay::replay_with(cfg, engine.as_mut(), input, out, opts).context("replay failed")?;
    bar.finish_and_clear();
    let name = args.engine.name();
    eprint!("{}", summary.human(name));
    if let Some(path) = &args.report {
        let json = serde_json::to_string_pretty(&summary.to_json(name))?;
        std::fs::write(path, json + "\n")
            .with_context(|| format!("cannot write report {}", path.display()))?;
    }
    let series = [
        ("event", &summary.event_latency),
        ("ts_to_event", &summary.ts_latency),
        ("apply", &summary.apply_latency),
    ];
    if let Some(path) = &args.hdr_out {
        let mut file = BufWriter::new(
            File::create(path).with_context(|| format!("cannot create {}", path.display()))?,
        );
        latency::write_log(&mut file, started, summary.elapsed, &series)
            .and_then(|()| file.flush())
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    if let Some(path) = &args.plot {
        let owned: Vec<(String, latency::Latency)> =
            series.iter().map(|(n, l)| ((*n).to_owned(), (*l).clone())).collect();
        let title = format!("liqscan replay ({name} engine): latency by percentile");
        if let Err(e) = chart::percentile_spectrum(path, &title, &owned) {
            eprintln!("liqscan: no chart: {e}");
        }
    }
    Ok(ExitCode::SUCCESS)
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
    if let Some(path) = &args.config_out {
        std::fs::write(path, generator::config_text(opts.symbols))
            .with_context(|| format!("cannot write config {}", path.display()))?;
    }
    let out: Box<dyn Write> = match &args.out {
        Some(path) => Box::new(
            File::create(path).with_context(|| format!("cannot create {}", path.display()))?,
        ),
        None => Box::new(io::stdout()),
    };
    let out = BufWriter::with_capacity(1 << 16, out);
    let started = Instant::now();
    let template = "{spinner} gen {msg} [{elapsed_precise}] {wide_bar} {human_pos}/{human_len} {rate} eta {eta}";
    let bar = progress_bar(Some(opts.accounts), template);
    let mut phase = "";
    let stats = generator::generate(&opts, out, &mut |name, done, total| {
        if name != phase {
            phase = name;
            bar.set_message(name);
            bar.set_length(total);
            bar.reset();
        }
        bar.set_position(done);
    })
    .context("gen failed")?;
    bar.finish_and_clear();
    let secs = started.elapsed().as_secs_f64();
    let faults: Vec<String> = Fault::ALL
        .iter()
        .zip(stats.faults)
        .filter(|(_, n)| *n > 0)
        .map(|(f, n)| format!("{} {n}", f.tag()))
        .collect();
    eprintln!(
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

fn run_plot(log: &Path, out: &Path, title: &str) -> anyhow::Result<ExitCode> {
    let text = std::fs::read(log).with_context(|| format!("cannot read {}", log.display()))?;
    let series = latency::read_log(&text).map_err(|e| anyhow::anyhow!("{}: {e}", log.display()))?;
    chart::percentile_spectrum(out, title, &series).map_err(|e| anyhow::anyhow!(e))?;
    Ok(ExitCode::SUCCESS)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Replay { config, report, engine, hdr_out, plot, rate, input } => {
            run_replay(ReplayArgs { config, report, engine, hdr_out, plot, rate, input })
        }
        Command::Run(args) => liqscan::daemon::run(args),
        Command::Gen(args) => run_gen(args),
        Command::Plot { log, out, title } => run_plot(&log, &out, &title),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("liqscan: {e:#}");
            ExitCode::FAILURE
        }
    }
}
