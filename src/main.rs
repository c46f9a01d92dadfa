//! The `liqscan` command line (SPEC section 8).

use std::{
    fs::File,
    io::{self, BufReader, BufWriter},
    path::PathBuf,
    process::ExitCode,
    sync::Arc,
};

use anyhow::Context;
use clap::{Parser, Subcommand};
use liqscan::{config::Config, reference::ReferenceEngine, replay};

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
        /// Input stream: newline-delimited JSON messages, or - for stdin.
        input: String,
    },
}

fn load_config(path: &std::path::Path) -> Result<Arc<Config>, ExitCode> {
    Config::load(path).map(Arc::new).map_err(|e| {
        eprintln!("liqscan: config {}: {e}", path.display());
        ExitCode::from(2)
    })
}

fn run_replay(config: PathBuf, report: Option<PathBuf>, input: String) -> anyhow::Result<ExitCode> {
    let cfg = match load_config(&config) {
        Ok(c) => c,
        Err(code) => return Ok(code),
    };
    let stdout = io::stdout().lock();
    let out = BufWriter::with_capacity(1 << 16, stdout);
    let mut engine = ReferenceEngine::new(cfg.clone());
    let summary = if input == "-" {
        replay::replay(cfg, &mut engine, io::stdin().lock(), out)
    } else {
        let file = File::open(&input).with_context(|| format!("cannot open input {input}"))?;
        replay::replay(cfg, &mut engine, BufReader::with_capacity(1 << 16, file), out)
    }
    .context("replay failed")?;
    eprint!("{}", summary.human("reference"));
    if let Some(path) = report {
        let json = serde_json::to_string_pretty(&summary.to_json("reference"))?;
        std::fs::write(&path, json + "\n")
            .with_context(|| format!("cannot write report {}", path.display()))?;
    }
    Ok(ExitCode::SUCCESS)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Replay { config, report, input } => run_replay(config, report, input),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("liqscan: {e:#}");
            ExitCode::FAILURE
        }
    }
}
