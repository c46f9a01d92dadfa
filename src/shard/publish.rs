//! `liqscan publish --nats URL --shards N [--rate R] INPUT` (SPEC section 10): routes an
//! engine stream into the N shards' JetStream streams.
//!
//! Each line is stored under its [`Key`] (`Nats-Msg-Id`), and only right after the one
//! before it in its shard (`Nats-Expected-Last-Sequence`: the stream seq of the message it
//! must follow; the server keeps that across restarts, where it forgets the ids of messages
//! older than its duplicate window, so a `Nats-Expected-Last-Msg-Id` could never be met
//! again after a restart that came later than that). At start, and again after any
//! failure, the publisher reads the key of each stream's last message and sends each shard
//! only the lines after it: a publisher killed and run again on the same input, or one that
//! lost its server for a while, ends with each stream holding every line of its shard once
//! and in order, whatever the duplicate window. Acks are awaited in a window of
//! [`ACK_WINDOW`] messages, so that sending does not wait a round trip a line.

use std::{
    collections::VecDeque,
    fs::File,
    io::{BufReader, Write as _},
    path::Path,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use async_nats::{
    HeaderMap,
    header::{NATS_EXPECTED_LAST_SEQUENCE, NATS_MESSAGE_ID},
    jetstream::{self, context::PublishAckFuture},
};
use bytes::Bytes;

use tokio::sync::watch;

use super::{
    LinkState, REFUSED_HEADER, ShardSpec, connect, input_stream_of, input_subject, returned_since,
    route::{Decision, Key, Route, Router, refused_header},
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
    /// Messages the server acknowledged as stored, per shard (the last attempt's; not those
    /// it dropped as repeats).
    pub stored: Vec<u64>,
    /// Messages the server acknowledged as stored (the last attempt's): progress.
    pub acknowledged: u64,
    /// Messages skipped because their shard's stream held them already.
    pub already_stored: u64,
    /// Messages the server dropped as repeats of a `Nats-Msg-Id` it had (within its window).
    pub server_duplicates: u64,
    /// Duplicates of SPEC section 6 (a `seq` at or below the last): not sent.
    pub duplicates: u64,
    /// Blank lines: nothing to send.
    pub blank: u64,
    /// Gaps of SPEC section 6 in the input (a `seq` above the last + 1): one daemon on the
    /// whole stream emits a `gap` event for each; the shards, whose seq is their stream's,
    /// emit none.
    pub gaps: u64,
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
             skipped       {} messages already stored, {} dropped by the server as repeats; {} duplicate lines (seq), {} blank\n\
             gaps          {} (seq above the last + 1: reported here, not by the shards)\n\
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
            self.gaps,
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
                    if summary.acknowledged > 0 {
                        last_progress = Instant::now();
                        backoff = Duration::from_millis(100);
                    }
                    if last_progress.elapsed() >= opts.give_up_after {
                        return Err(e.context(format!(
                            "giving up: nothing stored for {}",
                            humantime::format_duration(opts.give_up_after)
                        )));
                    }
                    let _ = writeln!(
                        std::io::stderr(),
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

/// One shard's stream as the publisher sees it: the key of its last message.
struct Shard {
    subject: String,
    /// The key of the stream's last message (as far as this publisher has sent).
    last: Option<Key>,
    /// Its stream seq: the one the next message must follow (0 for an empty stream).
    last_seq: u64,
}

/// One pass over the input, sending each shard what its stream lacks. Each message names
/// the stream seq of the one before it in its shard (`Nats-Expected-Last-Sequence`): the
/// server stores it only right after that one, so messages lost with a dead connection (while later ones
/// were still queued in the client) leave no hole: the ones after them are refused too, and
/// the next attempt resumes after the last one stored.
async fn attempt(
    input: &Path,
    opts: &PublishOptions,
    summary: &mut PublishSummary,
) -> anyhow::Result<()> {
    let file = File::open(input)
        .map_err(|e| Fatal(format!("cannot open input {}: {e}", input.display())))?;
    let link = connect(&opts.nats, "publish").await?;
    let max_payload = link.client.server_info().max_payload;
    let js = jetstream::new(link.client);
    let shards = open_shards(&js, opts.shards).await?;
    summary.stored = vec![0; shards.len()];
    let started = Instant::now();
    let mut lines = LineReader::new(BufReader::with_capacity(1 << 16, file), MAX_LINE_BYTES);
    let mut router = Router::new(opts.shards);
    let mut out = Out { js, shards, acks: VecDeque::with_capacity(ACK_WINDOW), link: link.state };
    let mut paced = 0u64;
    while let Some(line) =
        lines.next_line().map_err(|e| Fatal(format!("cannot read {}: {e}", input.display())))?
    {
        summary.lines += 1;
        let (key, route, refused) = match router.line(line) {
            Decision::Blank => {
                summary.blank += 1;
                continue;
            }
            Decision::Duplicate => {
                summary.duplicates += 1;
                continue;
            }
            Decision::Send { key, route, refused } => (key, route, refused),
        };
        let payload = match (line, refused) {
            (Line::Bytes(b), None) => Bytes::copy_from_slice(b),
            _ => Bytes::new(),
        };
        if payload.len() + super::HEADER_ROOM > max_payload {
            return Err(Fatal(format!(
                "line {} ({} bytes) does not fit in a NATS message: the server's max_payload is {max_payload} bytes; set max_payload: 2MB in its config (SPEC lines go up to 1 MiB)",
                summary.lines,
                payload.len()
            ))
            .into());
        }
        if let Some(rate) = opts.rate {
            // Paced as the lines are sent: those the streams hold already go by at once.
            if out.lacks(key, route) {
                paced += 1;
                let due = started + Duration::from_secs_f64(paced as f64 / rate);
                tokio::time::sleep_until(due.into()).await;
            }
        }
        out.send(summary, key, route, payload, refused).await?;
    }
    while !out.acks.is_empty() {
        out.take_ack(summary).await?;
    }
    summary.elapsed = started.elapsed();
    summary.gaps = router.gaps();
    Ok(())
}

/// Where the routed lines go: the shards' streams, and the acks not yet in.
struct Out {
    js: jetstream::Context,
    shards: Vec<Shard>,
    /// Each with the shard it was sent to.
    acks: VecDeque<(usize, PublishAckFuture)>,
    /// The connection's state: once it comes back after a loss, the acks of what was sent
    /// before will not come, and the attempt ends at once rather than after their timeout.
    link: watch::Receiver<LinkState>,
}

impl Out {
    /// The shards of `route`.
    fn targets(&self, route: Route) -> std::ops::Range<u32> {
        match route {
            Route::One(i) => i..i + 1,
            Route::All => 0..self.shards.len() as u32,
        }
    }

    /// Some shard of `route` lacks the line `key`.
    fn lacks(&self, key: Key, route: Route) -> bool {
        self.targets(route).any(|i| self.shards[i as usize].last.is_none_or(|l| key > l))
    }

    /// Sends one line to each shard of `route` whose stream lacks it.
    async fn send(
        &mut self,
        summary: &mut PublishSummary,
        key: Key,
        route: Route,
        payload: Bytes,
        refused: Option<crate::ingest::Refused>,
    ) -> anyhow::Result<()> {
        for i in self.targets(route) {
            let shard = &mut self.shards[i as usize];
            if shard.last.is_some_and(|l| key <= l) {
                summary.already_stored += 1;
                continue;
            }
            let headers = headers(key, shard.last_seq, refused);
            let ack = self
                .js
                .publish_with_headers(shard.subject.clone(), headers, payload.clone())
                .await
                .with_context(|| format!("cannot publish to shard {i}"))?;
            shard.last = Some(key);
            shard.last_seq += 1;
            self.acks.push_back((i as usize, ack));
            if self.acks.len() >= ACK_WINDOW {
                self.take_ack(summary).await?;
            }
        }
        Ok(())
    }

    /// Waits for the oldest outstanding ack (no longer once the connection came back after
    /// a loss: its ack will not come).
    async fn take_ack(&mut self, summary: &mut PublishSummary) -> anyhow::Result<()> {
        let (shard, ack) = self.acks.pop_front().expect("called with an ack outstanding");
        let ack = tokio::select! {
            ack = ack => ack.context("a message was not stored")?,
            () = returned_since(&mut self.link, 0) => {
                anyhow::bail!("the NATS connection was lost and is back: its acks will not come")
            }
        };
        summary.acknowledged += 1;
        if ack.duplicate {
            summary.server_duplicates += 1;
        } else {
            summary.stored[shard] += 1;
        }
        Ok(())
    }
}

/// Opens (or creates) every shard's stream and reads its last key. Errors: a stream of
/// another shard count, or one a publisher did not write (both fatal); the server failing.
async fn open_shards(js: &jetstream::Context, count: u32) -> anyhow::Result<Vec<Shard>> {
    let mut shards = Vec::with_capacity(count as usize);
    for index in 0..count {
        let mut stream = input_stream_of(js, ShardSpec { index, count }).await.map_err(|e| {
            if e.is::<super::NotThisShard>() { Fatal(format!("{e:#}")).into() } else { e }
        })?;
        let (last, last_seq) = last_key(&mut stream).await?;
        shards.push(Shard { subject: input_subject(index), last, last_seq });
    }
    Ok(shards)
}

/// A message's headers: its id, the stream seq it must follow in its shard (0: the stream
/// is empty), and what the shard is to refuse it for.
fn headers(key: Key, after_seq: u64, refused: Option<crate::ingest::Refused>) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(NATS_MESSAGE_ID, key.id().as_str());
    headers.insert(NATS_EXPECTED_LAST_SEQUENCE, after_seq.to_string().as_str());
    if let Some(refused) = refused {
        headers.insert(REFUSED_HEADER, refused_header(refused).as_str());
    }
    headers
}

/// The key of a stream's last message (`None` for a stream never written) and its stream
/// seq. Errors: it cannot
/// be read; it carries no key (a message not stored by `liqscan publish`); or the stream
/// was written and its messages are gone (its limits removed them), where sending the input
/// again would have the shard apply it twice (all fatal but the first).
async fn last_key(stream: &mut jetstream::stream::Stream) -> anyhow::Result<(Option<Key>, u64)> {
    let info = stream.info().await.context("cannot read a stream's state")?;
    let (name, state) = (info.config.name.clone(), info.state.clone());
    if state.last_sequence == 0 {
        return Ok((None, 0));
    }
    if state.messages == 0 {
        return Err(Fatal(format!(
            "{name} was written up to stream seq {} and holds no message now (its limits removed them): publishing the input again would have the shard apply it twice",
            state.last_sequence
        ))
        .into());
    }
    let message = stream
        .get_raw_message(state.last_sequence)
        .await
        .with_context(|| format!("cannot read the last message of {name}"))?;
    let id = message.headers.get(NATS_MESSAGE_ID).map(|v| v.as_str().to_owned());
    match id.as_deref().and_then(Key::parse) {
        Some(key) => Ok((Some(key), state.last_sequence)),
        None => Err(Fatal(format!(
            "the last message of {name} (stream seq {}) has no liqscan key ({NATS_MESSAGE_ID}: {id:?}): not stored by liqscan publish",
            state.last_sequence
        ))
        .into()),
    }
}
