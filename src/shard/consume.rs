//! A shard daemon's two NATS ends (SPEC section 10): its input stream as a pipeline
//! [`Source`] ([`ShardSource`]), and its events topic as a blocking [`Sink`]
//! ([`EventsSink`]).

use std::{collections::VecDeque, io, time::Duration};

use async_nats::{
    HeaderMap,
    header::NATS_MESSAGE_ID,
    jetstream::{
        self,
        consumer::{DeliverPolicy, pull},
        context::PublishAckFuture,
        stream,
    },
};
use bytes::Bytes;
use crossbeam::{
    channel::{Receiver, Sender, TrySendError, bounded},
    select,
};
use futures_util::StreamExt as _;
use tokio::runtime::Handle;
use tracing::{info, warn};

use super::{CUT_HEADER, ShardSpec, connect, events_stream, events_subject, input_stream_of};
use crate::{
    daemon::{input::StopRx, metrics::Metrics},
    pipeline::{Chunk, Connection, ConnectionEnd, LogMessage, LogReader, Sink, Source},
};

/// Messages fetched from JetStream and not yet taken by the reader thread, at most: when
/// the engine falls behind, the consumer stops fetching (back-pressure, nothing dropped).
pub const MESSAGES_AHEAD: usize = 4096;

/// How long the fetching task naps when the reader's queue is full.
const FULL_NAP: Duration = Duration::from_micros(200);

/// Shard `I/N`'s input: JetStream stream `LIQSCAN_<I>`, read with an ordered consumer from
/// the seq after the last one applied (0 on an empty state, or the restored snapshot's).
/// A consumer that fails (the server went away for longer than the client's reconnects)
/// ends the connection; the next one starts after the last seq applied, after a back-off.
pub struct ShardSource {
    runtime: Handle,
    stream: stream::Stream,
    shard: ShardSpec,
    stop: StopRx,
    metrics: Metrics,
    backoff: Duration,
}

impl ShardSource {
    /// Connects to `url` and opens the shard's stream (created when missing, so a shard may
    /// start before its publisher). Errors: no server, no JetStream, a stream of another
    /// shard count.
    pub fn open(
        runtime: &Handle,
        url: &str,
        shard: ShardSpec,
        stop: StopRx,
        metrics: Metrics,
    ) -> anyhow::Result<ShardSource> {
        let stream = runtime.block_on(async {
            let js = jetstream::new(connect(url).await?);
            input_stream_of(&js, shard).await
        })?;
        Ok(ShardSource {
            runtime: runtime.clone(),
            stream,
            shard,
            stop,
            metrics,
            backoff: Duration::from_millis(100),
        })
    }

    /// A consumer from `start` on, its messages pumped into a bounded queue by a task.
    fn subscribe(&self, start: u64) -> anyhow::Result<Receiver<io::Result<LogMessage>>> {
        let config = pull::OrderedConfig {
            deliver_policy: DeliverPolicy::ByStartSequence { start_sequence: start },
            ..Default::default()
        };
        let stream = self.stream.clone();
        let messages = self.runtime.block_on(async move {
            let consumer = stream.create_consumer(config).await?;
            anyhow::Ok(consumer.messages().await?)
        })?;
        let (tx, rx) = bounded(MESSAGES_AHEAD);
        self.runtime.spawn(pump(messages, tx));
        Ok(rx)
    }

    /// Sleeps `backoff` unless the daemon stops first; false when it stopped.
    fn nap(&mut self) -> bool {
        let stopped = select! {
            recv(self.stop) -> _ => true,
            default(self.backoff) => false,
        };
        self.backoff = (self.backoff * 2).min(Duration::from_secs(5));
        !stopped
    }
}

/// Moves a consumer's messages into the reader's queue until either end is gone.
async fn pump(mut messages: pull::Ordered, tx: Sender<io::Result<LogMessage>>) {
    while let Some(next) = messages.next().await {
        let item = next.map_err(io::Error::other).and_then(|m| {
            let seq = m.info().map_err(|e| io::Error::other(e.to_string()))?.stream_sequence;
            let cut = m
                .headers
                .as_ref()
                .and_then(|h| h.get(CUT_HEADER))
                .and_then(|v| v.as_str().parse().ok());
            Ok(LogMessage { seq, payload: m.payload.to_vec(), cut })
        });
        let failed = item.is_err();
        let mut item = item;
        loop {
            match tx.try_send(item) {
                Ok(()) => break,
                Err(TrySendError::Full(back)) => {
                    item = back;
                    tokio::time::sleep(FULL_NAP).await;
                }
                Err(TrySendError::Disconnected(_)) => return,
            }
        }
        if failed {
            return;
        }
    }
    let _ = tx.send(Err(io::Error::other("the JetStream consumer ended")));
}

/// One consumer's messages, read on the pipeline's reader thread.
struct ShardLog {
    messages: Receiver<io::Result<LogMessage>>,
    stop: StopRx,
}

impl LogReader for ShardLog {
    fn next(&mut self) -> io::Result<Option<LogMessage>> {
        select! {
            recv(self.messages) -> m => match m {
                Ok(m) => m.map(Some),
                Err(_) => Err(io::Error::other("the JetStream consumer's task ended")),
            },
            recv(self.stop) -> _ => Ok(None),
        }
    }

    fn ready(&self) -> bool {
        !self.messages.is_empty()
    }
}

impl Source<'static> for ShardSource {
    fn next(&mut self, last_seq: u64) -> Option<Connection<'static>> {
        loop {
            if !matches!(self.stop.try_recv(), Err(crossbeam::channel::TryRecvError::Empty)) {
                return None;
            }
            match self.subscribe(last_seq + 1) {
                Ok(messages) => {
                    self.metrics.engine_connected.set(1);
                    info!(shard = %self.shard, from_seq = last_seq + 1, "reading the shard's JetStream stream");
                    return Some(Connection::log(ShardLog { messages, stop: self.stop.clone() }));
                }
                Err(e) => {
                    warn!(shard = %self.shard, error = format!("{e:#}"), retry_in = ?self.backoff, "cannot read the shard's JetStream stream");
                    if !self.nap() {
                        return None;
                    }
                }
            }
        }
    }

    fn ended(&mut self, end: ConnectionEnd) -> io::Result<()> {
        self.metrics.engine_connected.set(0);
        match &end.error {
            Some(e) if !end.stopped => {
                warn!(shard = %self.shard, last_seq = end.last_seq, error = %e, "the shard's JetStream consumer failed; starting another")
            }
            _ => {
                info!(shard = %self.shard, last_seq = end.last_seq, messages = end.lines, "stopped reading the shard's JetStream stream")
            }
        }
        if end.error.is_some() && !end.stopped {
            self.nap();
        } else {
            self.backoff = Duration::from_millis(100);
        }
        Ok(())
    }
}

/// Events published but not yet acknowledged by JetStream, at most.
pub const EVENTS_AHEAD: usize = 4096;

/// An event published, kept until JetStream acknowledges it (to resend it if it does not).
struct Unconfirmed {
    ack: PublishAckFuture,
    headers: HeaderMap,
    payload: Bytes,
}

/// Shard I's events, each published to `liqscan.events.<I>` (stream `LIQSCAN_EVENTS`) under
/// `Nats-Msg-Id` `<I>:<seq>:<n>` (the n-th event of the message at stream seq `seq`), so the
/// events that a restart sends again are dropped by JetStream within its duplicate window.
/// A blocking sink: when JetStream is slow or away, its queue fills and ingest waits; an
/// event whose ack fails is sent again until it is stored (nothing is dropped; it may then
/// come after later ones). Consumers of the events stream read at their own pace and never
/// slow the shard.
pub struct EventsSink {
    runtime: Handle,
    client: async_nats::Client,
    js: jetstream::Context,
    shard: u32,
    subject: String,
    unconfirmed: VecDeque<Unconfirmed>,
    /// The stream seq of the last event's message, and how many events it has made so far.
    last: (u64, u64),
}

impl EventsSink {
    /// Connects and opens the events stream (created when missing).
    pub fn open(runtime: &Handle, url: &str, shard: ShardSpec) -> anyhow::Result<EventsSink> {
        let (client, js) = runtime.block_on(async {
            let client = connect(url).await?;
            let js = jetstream::new(client.clone());
            events_stream(&js).await?;
            anyhow::Ok((client, js))
        })?;
        Ok(EventsSink {
            runtime: runtime.clone(),
            js,
            client,
            shard: shard.index,
            subject: events_subject(shard.index),
            unconfirmed: VecDeque::new(),
            last: (0, 0),
        })
    }

    /// Waits until at most `keep` events are unconfirmed, sending again any whose ack
    /// failed, until it is stored.
    async fn confirm(&mut self, keep: usize) {
        while self.unconfirmed.len() > keep {
            let Unconfirmed { ack, headers, payload } =
                self.unconfirmed.pop_front().expect("more than `keep` are unconfirmed");
            let mut ack = Some(ack);
            let mut backoff = Duration::from_millis(50);
            loop {
                let stored = match ack.take() {
                    Some(ack) => ack.await.map(drop).map_err(|e| e.to_string()),
                    None => {
                        let sent = self
                            .js
                            .publish_with_headers(
                                self.subject.clone(),
                                headers.clone(),
                                payload.clone(),
                            )
                            .await;
                        match sent {
                            Ok(ack) => ack.await.map(drop).map_err(|e| e.to_string()),
                            Err(e) => Err(e.to_string()),
                        }
                    }
                };
                match stored {
                    Ok(()) => break,
                    Err(error) => {
                        warn!(subject = %self.subject, %error, retry_in = ?backoff, "an event was not stored; sending it again");
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(Duration::from_secs(2));
                    }
                }
            }
        }
    }

    /// Publishes the chunk's events, one message each.
    async fn publish(&mut self, chunk: &Chunk) -> io::Result<()> {
        for (event, text) in chunk.events().iter().zip(chunk.text().lines()) {
            let seq = event.line();
            self.last = if self.last.0 == seq { (seq, self.last.1 + 1) } else { (seq, 1) };
            let mut headers = HeaderMap::new();
            let id = format!("{}:{}:{}", self.shard, seq, self.last.1);
            headers.insert(NATS_MESSAGE_ID, id.as_str());
            let payload = Bytes::copy_from_slice(text.as_bytes());
            let ack = self
                .js
                .publish_with_headers(self.subject.clone(), headers.clone(), payload.clone())
                .await
                .map_err(io::Error::other)?;
            self.unconfirmed.push_back(Unconfirmed { ack, headers, payload });
            if self.unconfirmed.len() > EVENTS_AHEAD {
                self.confirm(EVENTS_AHEAD).await;
            }
        }
        Ok(())
    }
}

impl Sink for EventsSink {
    fn name(&self) -> String {
        format!("NATS events {}", self.subject)
    }

    fn write(&mut self, chunk: &Chunk) -> io::Result<()> {
        let runtime = self.runtime.clone();
        runtime.block_on(self.publish(chunk))
    }

    fn flush(&mut self) -> io::Result<()> {
        let client = self.client.clone();
        self.runtime.block_on(client.flush()).map_err(io::Error::other)
    }

    fn finish(&mut self) -> io::Result<()> {
        self.make_durable()
    }

    /// Every event published so far is stored by JetStream.
    fn make_durable(&mut self) -> io::Result<()> {
        let runtime = self.runtime.clone();
        runtime.block_on(self.confirm(0));
        Ok(())
    }
}
