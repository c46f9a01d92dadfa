//! `liqscan publish --nats URL --shards N [--rate R] INPUT` (SPEC section 10): routes an
//! engine stream into the N shards' JetStream streams.
//!
//! Each line is stored under its [`Key`] (`Nats-Msg-Id`). At start, and again after any
//! failure, the publisher reads the key of each stream's last message and sends each shard
//! only the lines after it: a publisher killed and run again on the same input, or one that
//! lost its server for a while, ends with each stream holding every line of its shard once
//! and in order, whatever the duplicate window. Acks are awaited in a window of
//! [`ACK_WINDOW`] messages, so that sending does not wait a round trip a line.

use std::{
    collections::VecDeque,
    fs::File,
    io::BufReader,
    path::Path,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use async_nats::{
    HeaderMap,
    header::NATS_MESSAGE_ID,
    jetstream::{self, context::PublishAckFuture},
};
use bytes::Bytes;

use super::{
    CUT_HEADER, ShardSpec, connect, input_stream_of, input_subject,
    route::{Decision, Key, Route, Router},
};
use crate::{
    ingest::{Line, LineReader},
    protocol::MAX_LINE_BYTES,
};

/// Messages sent and not yet acknowledged, at most.
pub const ACK_WINDOW: usize = 4096;

/// What `liqscan publish` does.
#[derive(Debug, Clone)]
pub struct PublishOptions {
    /// The NATS server.
    pub nats: String,
    /// Shards (N >= 1).
    pub shards: u32,
    /// Lines per second; `None`: as fast as the server acknowledges.
    pub rate: Option<f64>,
    /// Give up when no attempt got anywhere for this long.
    pub give_up_after: Duration,
}

/// What a publish did (its last attempt, and how many there were).
#[derive(Debug, Clone, Default)]
pub struct PublishSummary {
    /// Lines of the input read.
    pub lines: u64,
    /// Messages stored, per shard.
    pub stored: Vec<u64>,
    /// Messages skipped because their shard's stream held them already.
    pub already_stored: u64,
    /// Messages the server dropped as repeats of a `Nats-Msg-Id` it had (within its window).
    pub server_duplicates: u64,
    /// Duplicates of SPEC section 6 (a `seq` at or below the last): not sent.
    pub duplicates: u64,
    /// Blank lines: nothing to send.
    pub blank: u64,
    /// Attempts after the first (each after a failure).
    pub retries: u32,
    /// The last attempt's time.
    pub elapsed: Duration,
}

impl PublishSummary {
    /// The human summary on stderr.
    pub fn human(&self) -> String {
        let stored: u64 = self.stored.iter().sum();
        let secs = self.elapsed.as_secs_f64().max(1e-9);
        format!(
            "lines         {} in {:.3} s ({:.0} lines/s)\n\
             stored        {} (per shard {:?})\n\
             skipped       {} already stored, {} dropped by the server as repeats, {} duplicates (seq), {} blank\n\
             retries       {}\n",
            self.lines,
            secs,
            self.lines as f64 / secs,
            stored,
            self.stored,
            self.already_stored,
            self.server_duplicates,
            self.duplicates,
            self.blank,
            self.retries
        )
    }
}

/// Publishes `input` into the shards' streams; retries from the streams' last keys after a
/// failure, with back-off, until an attempt finishes or none got anywhere for
/// `give_up_after`. Errors: the input cannot be read, a stream belongs to another shard
/// count or holds a message that no publisher stored, or the server stayed away.
pub fn publish(input: &Path, opts: &PublishOptions) -> anyhow::Result<PublishSummary> {
    anyhow::ensure!(opts.shards >= 1, "--shards must be at least 1");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the tokio runtime")?;
    runtime.block_on(async {
        let mut retries = 0;
        let mut backoff = Duration::from_millis(100);
        let mut last_progress = Instant::now();
        loop {
            let mut summary = PublishSummary { retries, ..Default::default() };
            match attempt(input, opts, &mut summary).await {
                Ok(()) => return Ok(summary),
                Err(e) if e.is::<Fatal>() => return Err(e),
                Err(e) => {
                    if summary.stored.iter().sum::<u64>() > 0 {
                        last_progress = Instant::now();
                        backoff = Duration::from_millis(100);
                    }
                    if last_progress.elapsed() >= opts.give_up_after {
                        return Err(e.context(format!(
                            "giving up: nothing stored for {}",
                            humantime::format_duration(opts.give_up_after)
                        )));
                    }
                    eprintln!(
                        "liqscan publish: {e:#}; resuming from the streams' last messages in {backoff:?}"
                    );
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                    retries += 1;
                }
            }
        }
    })
}

/// An error that a retry cannot mend.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Fatal(String);

/// One pass over the input, sending each shard what its stream lacks.
async fn attempt(
    input: &Path,
    opts: &PublishOptions,
    summary: &mut PublishSummary,
) -> anyhow::Result<()> {
    let file = File::open(input)
        .map_err(|e| Fatal(format!("cannot open input {}: {e}", input.display())))?;
    let client = connect(&opts.nats).await?;
    let js = jetstream::new(client);
    let n = opts.shards;
    let mut last = Vec::with_capacity(n as usize);
    for index in 0..n {
        let mut stream = input_stream_of(&js, ShardSpec { index, count: n })
            .await
            .map_err(|e| Fatal(format!("{e:#}")))?;
        last.push(last_key(&mut stream).await?);
    }
    summary.stored = vec![0; n as usize];
    let started = Instant::now();
    let mut lines = LineReader::new(BufReader::with_capacity(1 << 16, file), MAX_LINE_BYTES);
    let mut router = Router::new(n);
    let mut acks: VecDeque<PublishAckFuture> = VecDeque::with_capacity(ACK_WINDOW);
    while let Some(line) =
        lines.next_line().map_err(|e| Fatal(format!("cannot read {}: {e}", input.display())))?
    {
        summary.lines += 1;
        if let Some(rate) = opts.rate {
            let due = started + Duration::from_secs_f64(summary.lines as f64 / rate);
            tokio::time::sleep_until(due.into()).await;
        }
        let (key, route) = match router.line(line) {
            Decision::Blank => {
                summary.blank += 1;
                continue;
            }
            Decision::Duplicate => {
                summary.duplicates += 1;
                continue;
            }
            Decision::Send { key, route } => (key, route),
        };
        let mut headers = HeaderMap::new();
        headers.insert(NATS_MESSAGE_ID, key.id().as_str());
        let payload = match line {
            Line::Bytes(b) => Bytes::copy_from_slice(b),
            Line::TooLong(len) => {
                headers.insert(CUT_HEADER, len.to_string().as_str());
                Bytes::new()
            }
        };
        let shards = match route {
            Route::One(i) => i..i + 1,
            Route::All => 0..n,
        };
        for shard in shards {
            let i = shard as usize;
            if last[i].is_some_and(|l| key <= l) {
                summary.already_stored += 1;
                continue;
            }
            let ack = js
                .publish_with_headers(input_subject(shard), headers.clone(), payload.clone())
                .await
                .with_context(|| format!("cannot publish to shard {shard}"))?;
            acks.push_back(ack);
            if acks.len() >= ACK_WINDOW {
                take_ack(&mut acks, summary).await?;
            }
            summary.stored[i] += 1;
            last[i] = Some(key);
        }
    }
    while !acks.is_empty() {
        take_ack(&mut acks, summary).await?;
    }
    summary.elapsed = started.elapsed();
    Ok(())
}

/// Waits for the oldest outstanding ack.
async fn take_ack(
    acks: &mut VecDeque<PublishAckFuture>,
    summary: &mut PublishSummary,
) -> anyhow::Result<()> {
    let ack = acks.pop_front().expect("called with an ack outstanding");
    let ack = ack.await.context("a message was not acknowledged")?;
    if ack.duplicate {
        summary.server_duplicates += 1;
    }
    Ok(())
}

/// The key of a stream's last message; `None` for an empty stream. Errors: it cannot be
/// read, or it carries no key (a message not stored by `liqscan publish`).
async fn last_key(stream: &mut jetstream::stream::Stream) -> anyhow::Result<Option<Key>> {
    let info = stream.info().await.context("cannot read a stream's state")?;
    let (name, state) = (info.config.name.clone(), info.state.clone());
    if state.messages == 0 {
        return Ok(None);
    }
    let message = stream
        .get_raw_message(state.last_sequence)
        .await
        .with_context(|| format!("cannot read the last message of {name}"))?;
    let id = message.headers.get(NATS_MESSAGE_ID).map(|v| v.as_str().to_owned());
    match id.as_deref().and_then(Key::parse) {
        Some(key) => Ok(Some(key)),
        None => Err(Fatal(format!(
            "the last message of {name} (stream seq {}) has no liqscan key ({NATS_MESSAGE_ID}: {id:?}): not stored by liqscan publish",
            state.last_sequence
        ))
        .into()),
    }
}
