//! `liqscan replay`: one stream through the [`crate::pipeline`] to one writer, and the
//! summary (counts, throughput, latency percentiles) for stderr and `--report`.

use std::{
    io::{self, BufRead, Write},
    sync::Arc,
};

pub use crate::pipeline::{Options, Summary, dispatch};
use crate::{
    config::Config,
    engine::Engine,
    pipeline::{Pipeline, ReadSource, WriterSink},
};

impl Summary {
    pub fn messages_per_s(&self) -> f64 {
        let s = self.elapsed.as_secs_f64();
        if s > 0.0 { self.messages as f64 / s } else { 0.0 }
    }

    /// The `--report` JSON.
    pub fn to_json(&self, engine: &str) -> serde_json::Value {
        serde_json::json!({
            "engine": engine,
            "lines": self.lines,
            "messages": self.messages,
            "elapsed_s": self.elapsed.as_secs_f64(),
            "messages_per_s": self.messages_per_s(),
            "liquidations": self.liquidations,
            "rejects": self.rejects,
            "gaps": self.gaps,
            "duplicates": self.duplicates,
            "account_events": self.accounts,
            "latency_ns": {
                "event": self.event_latency.summary().to_json(),
                "ts_to_event": self.ts_latency.summary().to_json(),
                "apply": self.apply_latency.summary().to_json(),
                "queue": self.queue_latency.summary().to_json(),
            },
        })
    }

    /// The human summary for stderr.
    pub fn human(&self, engine: &str) -> String {
        let e = self.event_latency.summary();
        let a = self.apply_latency.summary();
        let q = self.queue_latency.summary();
        format!(
            "liqscan replay ({engine} engine)\n\
             messages      {} in {:.3} s ({:.0} msg/s), {} lines\n\
             liquidations  {}\n\
             rejects       {}\n\
             gaps          {}\n\
             duplicates    {}\n\
             account events {}\n\
             event latency ns  p50 {} p90 {} p99 {} p99.9 {} max {} (n={})\n\
             apply latency ns  p50 {} p90 {} p99 {} p99.9 {} max {} (n={})\n\
             queue latency ns  p50 {} p90 {} p99 {} p99.9 {} max {} (n={})\n",
            self.messages,
            self.elapsed.as_secs_f64(),
            self.messages_per_s(),
            self.lines,
            self.liquidations,
            self.rejects,
            self.gaps,
            self.duplicates,
            self.accounts,
            e.p50,
            e.p90,
            e.p99,
            e.p999,
            e.max,
            e.count,
            a.p50,
            a.p90,
            a.p99,
            a.p999,
            a.max,
            a.count,
            q.p50,
            q.p90,
            q.p99,
            q.p999,
            q.max,
            q.count,
        )
    }
}

/// Replays `input` through `engine`, writing events to `out`, with default queue sizes.
pub fn replay<R: BufRead + Send, W: Write + Send>(
    cfg: Arc<Config>,
    engine: &mut dyn Engine,
    input: R,
    out: W,
) -> io::Result<Summary> {
    replay_with(cfg, engine, input, out, Options::default())
}

/// Replays `input` through `engine` on the [`crate::pipeline`]: one stream in, events to
/// `out` (flushed whenever the engine has nothing more queued, so a live stream's events
/// leave as soon as they are made).
pub fn replay_with<R: BufRead + Send, W: Write + Send>(
    cfg: Arc<Config>,
    engine: &mut dyn Engine,
    input: R,
    out: W,
    opts: Options,
) -> io::Result<Summary> {
    let mut pipeline = Pipeline::new(
        cfg,
        Box::new(ReadSource::new(input)),
        vec![Box::new(WriterSink::new("output", out))],
    );
    pipeline.opts = opts;
    pipeline.run(engine)
}
