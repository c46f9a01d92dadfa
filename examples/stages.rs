//! The reader side's stages alone, on one thread, on a stream file: line splitting, then
//! lines + ingest (JSON parse, sequencing, validation: all the pipeline's reader thread
//! does). Two rounds each (the first warms the page cache). The reader must run well above
//! the engine's rate (issue 14: 1,000,000 msg/s end to end), so that the engine is the limit.
//!
//! `cargo run --release --example stages -- CONFIG STREAM`
//! (a stream and config from `liqscan gen`, e.g. `KEEP_STREAM=1 scripts/loadtest.sh DIR`).

use std::{fs::File, io::BufReader, path::Path, sync::Arc, time::Instant};

use liqscan::{
    config::Config,
    ingest::{Ingest, LineReader, Outcome},
    protocol::MAX_LINE_BYTES,
};

fn lines(path: &Path) -> LineReader<BufReader<File>> {
    let file = File::open(path).unwrap_or_else(|e| panic!("cannot open {}: {e}", path.display()));
    LineReader::new(BufReader::with_capacity(1 << 16, file), MAX_LINE_BYTES)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, config, stream] = &args[..] else {
        eprintln!("usage: stages CONFIG STREAM");
        std::process::exit(2);
    };
    let cfg = Arc::new(Config::load(Path::new(config)).expect("a valid config"));
    let path = Path::new(stream);
    for round in 1..=2 {
        let t = Instant::now();
        let mut r = lines(path);
        let mut n = 0u64;
        while r.next_line().expect("readable").is_some() {
            n += 1;
        }
        let s = t.elapsed().as_secs_f64();
        println!(
            "round {round}: lines only      {n} lines in {s:.3} s: {:.0} lines/s",
            n as f64 / s
        );

        let t = Instant::now();
        let mut r = lines(path);
        let mut ingest = Ingest::new(cfg.clone());
        let (mut n, mut commands) = (0u64, 0u64);
        while let Some(line) = r.next_line().expect("readable") {
            let ingested = ingest.line(line, Instant::now());
            commands += u64::from(matches!(ingested.outcome, Outcome::Command { .. }));
            n += 1;
        }
        let s = t.elapsed().as_secs_f64();
        println!(
            "round {round}: lines + ingest  {n} lines ({commands} commands) in {s:.3} s: {:.0} lines/s",
            n as f64 / s
        );
    }
}
