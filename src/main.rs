//! The `liqscan` command line (SPEC section 8).

use std::{
    fs::File,
    io::{self, BufReader, BufWriter},
    path::PathBuf,
    process::ExitCode,
    sync::Arc,
};

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use liqscan::{
    config::Config, engine::Engine, fast::FastEngine, reference::ReferenceEngine, replay,
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
        /// Input stream: newline-delimited JSON messages, or - for stdin.
        input: String,
    },
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

fn load_config(path: &std::path::Path) -> Result<Arc<Config>, ExitCode> {
    Config::load(path).map(Arc::new).map_err(|e| {
        eprintln!("liqscan: config {}: {e}", path.display());
        ExitCode::from(2)
    })
}

fn run_replay(
    config: PathBuf,
    report: Option<PathBuf>,
    engine: EngineKind,
    input: String,
) -> anyhow::Result<ExitCode> {
    let engine_kind = engine;
    let cfg = match load_config(&config) {
        Ok(c) => c,
        Err(code) => return Ok(code),
    };
    let out = BufWriter::with_capacity(1 << 16, io::stdout());
    let mut engine: Box<dyn Engine> = match engine {
        EngineKind::Fast => Box::new(FastEngine::new(cfg.clone())),
        EngineKind::Reference => Box::new(ReferenceEngine::new(cfg.clone())),
    };
    let summary = if input == "-" {
        replay::replay(cfg, engine.as_mut(), BufReader::with_capacity(1 << 16, io::stdin()), out)
    } else {
        let file = File::open(&input).with_context(|| format!("cannot open input {input}"))?;
        replay::replay(cfg, engine.as_mut(), BufReader::with_capacity(1 << 16, file), out)
    }
    .context("replay failed")?;
    eprint!("{}", summary.human(engine_kind.name()));
    if let Some(path) = report {
        let json = serde_json::to_string_pretty(&summary.to_json(engine_kind.name()))?;
        std::fs::write(&path, json + "\n")
            .with_context(|| format!("cannot write report {}", path.display()))?;
    }
    Ok(ExitCode::SUCCESS)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Replay { config, report, engine, input } => {
            run_replay(config, report, engine, input)
        }
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("liqscan: {e:#}");
            ExitCode::FAILURE
        }
    }
}
