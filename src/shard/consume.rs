//! A shard daemon's two NATS ends (SPEC section 10): its input stream as a pipeline
//! [`Source`] ([`ShardSource`]), and its events topic as a blocking [`Sink`]
//! ([`EventsSink`]).

use std::{
    collections::VecDeque,
    future::{Future, IntoFuture},
    io,
    pin::Pin,
    sync::Arc,
    time::{Duration, Instant},
};

use async_nats::{
    HeaderMap,
    header::NATS_MESSAGE_ID,
    jetstream::{
        self,
        consumer::{DeliverPolicy, pull},
        context::PublishError,
        publish::PublishAck,
        stream,
    },
};
use bytes::Bytes;
use crossbeam::{
    channel::{Receiver, Sender, TrySendError, bounded},
    select,
};
use futures_util::{FutureExt as _, StreamExt as _};
use tokio::{runtime::Handle, sync::watch};
use tracing::{error, info, warn};

use super::{
    LinkState, REFUSED_HEADER, ShardSpec, connect, events_stream, events_subject, input_stream_of,
    returned_since, route::parse_refused_header,
};
use crate::{
    pipeline::{Chunk, Connection, ConnectionEnd, LogMessage, LogReader, Sink, Source},
    protocol::Event,
};

/// Messages fetched from JetStream and not yet taken by the reader thread, at most (each up
/// to 1 MiB): when the engine falls behind, the consumer stops fetching (back-pressure,
/// nothing dropped).
pub const MESSAGES_AHEAD: usize = 1024;

/// How long the fetching task naps when the reader's queue is full.
const FULL_NAP: Duration = Duration::from_micros(200);

/// Called with `true` when the source starts reading its stream, `false` when it stops or
/// its NATS connection is lost (the daemon's `liqscan_engine_connected`).
pub type OnConnected = Arc<dyn Fn(bool) + Send + Sync>;

/// Shard `I/N`'s input: JetStream stream `LIQSCAN_<I>`, read with an ordered consumer from
/// the seq after the last one applied (0 on an empty state, or the restored snapshot's).
/// A consumer that fails ends the connection; the next one starts after the last seq
/// applied, after a back-off. So does a NATS connection that comes back after a loss (a
/// server restart loses the consumer; async-nats's ordered consumer would notice only by
/// missed heartbeats, 15–30 s later): reading resumes within [`super::RECONNECT_DELAY_MAX`]
/// and a back-off of the server's return.
/// It reads only the stream it opened: one deleted and made again (another `created`
/// time), or one that ends before the last seq applied (a state restored against a newer
/// store), is refused, logged at error level every back-off, and not read.
pub struct ShardSource {
    runtime: Handle,
    stream: stream::Stream,
    created: async_nats::datetime::DateTime,
    shard: ShardSpec,
    stop: Receiver<()>,
    on_connected: OnConnected,
    link: watch::Receiver<LinkState>,
    backoff: Duration,
    /// When the current consumer was made.
    reading_since: Instant,
}

impl ShardSource {
    /// Connects to `url` and opens the shard's stream (created when missing, so a shard may
    /// start before its publisher); `stop` closes when the daemon stops. Errors: no server
    /// within 5 s, no JetStream, a stream of another shard count.
    pub fn open(
        runtime: &Handle,
        url: &str,
        shard: ShardSpec,
        stop: Receiver<()>,
        on_connected: OnConnected,
    ) -> anyhow::Result<ShardSource> {
        let (stream, created, link) = runtime.block_on(async {
            let link = connect(url, "input").await?;
            let js = jetstream::new(link.client);
            let mut stream = input_stream_of(&js, shard).await?;
            let created = stream.info().await?.created;
            anyhow::Ok((stream, created, link.state))
        })?;
        // A lost connection shows at once in `liqscan_engine_connected` and `/health`.
        let (mut watch, lost) = (link.clone(), on_connected.clone());
        runtime.spawn(async move {
            while watch.changed().await.is_ok() {
                if !watch.borrow_and_update().up {
                    lost(false);
                }
            }
        });
        Ok(ShardSource {
            runtime: runtime.clone(),
            stream,
            created,
            shard,
            stop,
            on_connected,
            link,
            backoff: Duration::from_millis(100),
            reading_since: Instant::now(),
        })
    }

    /// A consumer from `last_seq + 1` on, its messages pumped into a bounded queue by a
    /// task. Errors: the server, or a stream that is not the one this shard has read.
    fn subscribe(&self, last_seq: u64) -> anyhow::Result<Receiver<io::Result<LogMessage>>> {
        let config = pull::OrderedConfig {
            deliver_policy: DeliverPolicy::ByStartSequence {
                start_sequence: last_seq.saturating_add(1),
            },
            ..Default::default()
        };
        let (mut stream, created) = (self.stream.clone(), self.created);
        let link = self.link.clone();
        // Returns counted before the consumer is made: one after it ends its reading.
        let returns = link.borrow().returns;
        let messages = self.runtime.block_on(async move {
            let info = stream.info().await?;
            let (name, last) = (info.config.name.clone(), info.state.last_sequence);
            anyhow::ensure!(
                info.created == created,
                "stream {name} was deleted and made again since this shard opened it: not read (restart the shard, with a state directory made from the new stream or none)"
            );
            anyhow::ensure!(
                last >= last_seq,
                "stream {name} ends at seq {last}, before the last seq applied ({last_seq}): not the stream this state was made from; not read"
            );
            let consumer = stream.create_consumer(config).await?;
            anyhow::Ok(consumer.messages().await?)
        })?;
        let (tx, rx) = bounded(MESSAGES_AHEAD);
        self.runtime.spawn(pump(messages, tx, link, returns));
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

/// Moves a consumer's messages into the reader's queue until either end is gone, or until
/// the NATS connection comes back after a loss (`link` shows more than `returns` returns):
/// then the reader gets an error after the messages already queued, and the source starts
/// a consumer after the last seq applied.
async fn pump(
    mut messages: pull::Ordered,
    tx: Sender<io::Result<LogMessage>>,
    mut link: watch::Receiver<LinkState>,
    returns: u64,
) {
    let back = returned_since(&mut link, returns);
    tokio::pin!(back);
    loop {
        let next = tokio::select! {
            next = messages.next() => next,
            () = &mut back => {
                let back = "the NATS connection was lost and is back: reading again after the last seq applied";
                hand(&tx, Err(io::Error::other(back))).await;
                return;
            }
        };
        let Some(next) = next else { break };
        let item = next.map_err(io::Error::other).and_then(|m| {
            let seq = m.info().map_err(|e| io::Error::other(e.to_string()))?.stream_sequence;
            let refused = m
                .headers
                .as_ref()
                .and_then(|h| h.get(REFUSED_HEADER))
                .and_then(|v| parse_refused_header(v.as_str()));
            // The payload is handed on as received: no copy per message.
            Ok(LogMessage { seq, payload: m.message.payload, refused })
        });
        let failed = item.is_err();
        if !hand(&tx, item).await || failed {
            return;
        }
    }
    hand(&tx, Err(io::Error::other("the JetStream consumer ended"))).await;
}

/// Queues `item` for the reader, napping while its queue is full (a tokio worker never
/// blocks on it); false when the reader is gone.
async fn hand(tx: &Sender<io::Result<LogMessage>>, mut item: io::Result<LogMessage>) -> bool {
    loop {
        match tx.try_send(item) {
            Ok(()) => return true,
            Err(TrySendError::Full(back)) => {
                item = back;
                tokio::time::sleep(FULL_NAP).await;
            }
            Err(TrySendError::Disconnected(_)) => return false,
        }
    }
}

/// One consumer's messages, read on the pipeline's reader thread.
struct ShardLog {
    messages: Receiver<io::Result<LogMessage>>,
    stop: Receiver<()>,
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
            match self.subscribe(last_seq) {
                Ok(messages) => {
                    self.reading_since = Instant::now();
                    (self.on_connected)(true);
                    info!(shard = %self.shard, from_seq = last_seq.saturating_add(1), "reading the shard's JetStream stream");
                    return Some(Connection::log(ShardLog { messages, stop: self.stop.clone() }));
                }
                Err(e) => {
                    error!(shard = %self.shard, error = format!("{e:#}"), retry_in = ?self.backoff, "cannot read the shard's JetStream stream");
                    if !self.nap() {
                        return None;
                    }
                }
            }
        }
    }

    fn ended(&mut self, end: ConnectionEnd) -> io::Result<()> {
        (self.on_connected)(false);
        match &end.error {
            Some(e) if !end.stopped => {
                warn!(shard = %self.shard, last_seq = end.last_seq, error = %e, "the shard's JetStream consumer failed; starting another")
            }
            _ => {
                info!(shard = %self.shard, last_seq = end.last_seq, messages = end.lines, "stopped reading the shard's JetStream stream")
            }
        }
        if end.error.is_some() && !end.stopped {
            if end.lines > 0 || self.reading_since.elapsed() >= Duration::from_secs(5) {
                // It was reading: this failure starts a new round of back-off.
                self.backoff = Duration::from_millis(100);
            }
            self.nap();
        } else {
            self.backoff = Duration::from_millis(100);
        }
        Ok(())
    }
}

/// Events published but not yet acknowledged by JetStream, at most.
pub const EVENTS_AHEAD: usize = 4096;

/// How long a stop waits for JetStream to store the events published before it; what is
/// still unconfirmed then is logged (the next start sends it again: SPEC 9.4).
pub const FINISH_WITHIN: Duration = Duration::from_secs(10);

/// How often the events sink looks, between chunks, at the acks that came in and at its
/// connection (a return after a loss sends every unconfirmed event again at once, rather
/// than when the next chunk or the stop waits for them).
pub const ACK_CHECK_EVERY: Duration = Duration::from_millis(100);

/// The shortest time between two rounds of sending every unconfirmed event again from
/// [`Sink::tick`].
const RESEND_EVERY: Duration = Duration::from_secs(1);

/// A JetStream ack on its way: `Unpin`, so it can be looked at without waiting
/// (`now_or_never`) and awaited later.
type Ack = Pin<Box<dyn Future<Output = Result<PublishAck, PublishError>> + Send>>;

/// Resolves [`FINISH_WITHIN`] after the daemon began to stop; never while it runs.
async fn stop_deadline(stopping: &mut watch::Receiver<Option<Instant>>) {
    let at = match stopping.wait_for(Option::is_some).await {
        Ok(at) => *at,
        Err(_) => None,
    };
    match at {
        Some(at) => tokio::time::sleep_until((at + FINISH_WITHIN).into()).await,
        None => std::future::pending().await,
    }
}

/// An event published, kept until JetStream acknowledges it (to send it again if not).
struct Unconfirmed {
    ack: Option<Ack>,
    headers: HeaderMap,
    payload: Bytes,
}

/// Shard I's events, each published to `liqscan.events.<I>` (stream `LIQSCAN_EVENTS`) under
/// the `Nats-Msg-Id` of its identity (SPEC 9.2: its stream seq and its item or type, see
/// [`event_id`]), so the events that a restart sends again are dropped by JetStream within
/// its duplicate window. A blocking sink: while JetStream is slow or away its queue fills
/// and ingest waits; events whose acks fail are all sent again (the stream made again if it
/// was deleted) until they are stored, so one may come after later ones. An event over the
/// server's `max_payload` cannot be published: it is logged at error level and skipped
/// (the other sinks have it). Consumers of the events stream read at their own pace and
/// never slow the shard.
pub struct EventsSink {
    runtime: Handle,
    client: async_nats::Client,
    js: jetstream::Context,
    /// `<shard>.<input stream's creation time, ns>`: the start of every event's id.
    origin: String,
    subject: String,
    unconfirmed: VecDeque<Unconfirmed>,
    link: watch::Receiver<LinkState>,
    /// The link's returns when every unconfirmed event was last sent: after a later one,
    /// their acks will not come.
    returns: u64,
    /// When [`Sink::tick`] last looked at the acks.
    checked: Instant,
    /// When the daemon began to stop (`None` while it runs).
    stopping: watch::Receiver<Option<Instant>>,
    /// When every unconfirmed event was last sent again.
    resent_at: Instant,
    /// Events a stop left unsent (a write given up): no shutdown snapshot may cover them.
    unsent: usize,
    /// Events of the chunk being published not yet sent (what a write given up leaves).
    chunk_left: usize,
}

/// An event's `Nats-Msg-Id`: `<origin>:<seq>:<what>`, where `origin` names the shard and its
/// input stream (`<shard>.<stream creation time in ns>`, so that events of a stream made
/// again are not taken for repeats of the old one's), and `what` is
/// `liquidation:<account>:<mode>:<symbol>` (`-` for a cross item), `account:<account>`,
/// `reject` or `gap`: what identifies it within its message (SPEC 9.2), whatever the order
/// of a message's events.
pub fn event_id(origin: &str, event: &Event) -> String {
    let seq = event.line();
    match event {
        Event::Liquidation(l) => {
            let mode = l.mode.as_str();
            let symbol = l.symbol.as_deref().unwrap_or("-");
            format!("{origin}:{seq}:liquidation:{}:{mode}:{symbol}", l.account)
        }
        Event::Account(a) => format!("{origin}:{seq}:account:{}", a.account),
        Event::Reject { .. } => format!("{origin}:{seq}:reject"),
        Event::Gap { .. } => format!("{origin}:{seq}:gap"),
    }
}

impl EventsSink {
    /// Connects and opens the events stream (created when missing) and reads when the
    /// shard's input stream was made. Errors: no server within 5 s, no JetStream, a stream
    /// of another shard count.
    /// `stop` closes when the daemon stops: from then on no wait on JetStream lasts past
    /// [`FINISH_WITHIN`] (a server away must not hold the stop).
    pub fn open(
        runtime: &Handle,
        url: &str,
        shard: ShardSpec,
        stop: Receiver<()>,
    ) -> anyhow::Result<EventsSink> {
        let (link, js, created) = runtime.block_on(async {
            let link = connect(url, "events").await?;
            let js = jetstream::new(link.client.clone());
            events_stream(&js).await?;
            let created = input_stream_of(&js, shard).await?.info().await?.created;
            anyhow::Ok((link, js, created))
        })?;
        let returns = link.state.borrow().returns;
        let (stopped, stopping) = watch::channel(None);
        std::thread::Builder::new().name("nats-events-stop".into()).spawn(move || {
            let _ = stop.recv();
            let _ = stopped.send(Some(Instant::now()));
        })?;
        Ok(EventsSink {
            runtime: runtime.clone(),
            js,
            client: link.client,
            origin: format!("{}.{}", shard.index, created.unix_timestamp_nanos()),
            subject: events_subject(shard.index),
            unconfirmed: VecDeque::new(),
            returns,
            link: link.state,
            checked: Instant::now(),
            stopping,
            resent_at: Instant::now(),
            unsent: 0,
            chunk_left: 0,
        })
    }

    /// Waits until at most `keep` events are unconfirmed. When an ack fails, or the NATS
    /// connection comes back after a loss (the acks of what was sent before will not come),
    /// every unconfirmed event is sent again, once the events stream is there (made again if
    /// it was deleted), and the waiting goes on, with back-off between rounds.
    async fn confirm(&mut self, keep: usize) {
        let mut backoff = Duration::from_millis(50);
        while self.unconfirmed.len() > keep {
            let front = self.unconfirmed.front_mut().expect("more than `keep` are unconfirmed");
            let ack = front.ack.take();
            let stored = match ack {
                Some(ack) => tokio::select! {
                    acked = ack => acked.map(drop).map_err(|e| e.to_string()),
                    () = returned_since(&mut self.link, self.returns) => {
                        Err("the NATS connection was lost and is back".into())
                    }
                },
                None => Err("not sent".into()),
            };
            match stored {
                Ok(()) => {
                    self.unconfirmed.pop_front();
                }
                Err(error) => {
                    warn!(subject = %self.subject, %error, unconfirmed = self.unconfirmed.len(), retry_in = ?backoff, "events were not stored; sending every unconfirmed one again");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                    self.send_again().await;
                }
            }
        }
    }

    /// Drops the events whose acks came in (oldest first, without waiting); sends every
    /// unconfirmed event again when the connection came back since they were sent, or when
    /// an ack failed (or is not there: a send that failed).
    async fn check(&mut self) {
        let returned = self.link.borrow().returns != self.returns;
        let mut resend = returned;
        while !resend && let Some(front) = self.unconfirmed.front_mut() {
            let Some(ack) = front.ack.as_mut() else {
                // Not sent (the server was away).
                resend = true;
                break;
            };
            match ack.now_or_never() {
                None => break,
                Some(Ok(_)) => {
                    self.unconfirmed.pop_front();
                }
                Some(Err(error)) => {
                    // Done: never polled again.
                    front.ack = None;
                    warn!(subject = %self.subject, %error, unconfirmed = self.unconfirmed.len(), "events were not stored; sending every unconfirmed one again");
                    resend = true;
                }
            }
        }
        // At most one round a second (a server away fails them fast).
        if resend && self.resent_at.elapsed() >= RESEND_EVERY {
            if returned && !self.unconfirmed.is_empty() {
                info!(subject = %self.subject, unconfirmed = self.unconfirmed.len(), "the NATS connection came back: sending every unconfirmed event again");
            }
            self.send_again().await;
        }
    }

    /// Sends every unconfirmed event again (the events stream first made again if it is
    /// gone); an event that cannot be sent now keeps no ack, so the next round sends it.
    async fn send_again(&mut self) {
        self.resent_at = Instant::now();
        if let Err(e) = events_stream(&self.js).await {
            warn!(error = format!("{e:#}"), "the events stream is not there");
            return;
        }
        self.returns = self.link.borrow().returns;
        for entry in &mut self.unconfirmed {
            let sent = self
                .js
                .publish_with_headers(
                    self.subject.clone(),
                    entry.headers.clone(),
                    entry.payload.clone(),
                )
                .await;
            entry.ack = sent.ok().map(IntoFuture::into_future);
        }
    }

    /// Publishes the chunk's events, one message each.
    async fn publish(&mut self, chunk: &Chunk) -> io::Result<()> {
        if self.unconfirmed.is_empty() {
            // Nothing outstanding: a return before now leaves nothing to send again.
            self.returns = self.link.borrow().returns;
        }
        let max_payload = self.client.server_info().max_payload;
        self.chunk_left = chunk.events().len();
        for (event, text) in chunk.events().iter().zip(chunk.text().lines()) {
            let id = event_id(&self.origin, event);
            if text.len() + id.len() + super::HEADER_ROOM > max_payload {
                error!(subject = %self.subject, id, bytes = text.len(), max_payload, "an event over the server's max_payload is not published (the other sinks have it; raise max_payload)");
                self.chunk_left -= 1;
                continue;
            }
            let mut headers = HeaderMap::new();
            headers.insert(NATS_MESSAGE_ID, id.as_str());
            let payload = Bytes::copy_from_slice(text.as_bytes());
            let sent = self
                .js
                .publish_with_headers(self.subject.clone(), headers.clone(), payload.clone())
                .await;
            let ack = sent.ok().map(IntoFuture::into_future);
            self.unconfirmed.push_back(Unconfirmed { ack, headers, payload });
            self.chunk_left -= 1;
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
        let (runtime, mut stopping) = (self.runtime.clone(), self.stopping.clone());
        let written = runtime.block_on(async {
            tokio::select! {
                done = self.publish(chunk).map(Some) => done,
                () = stop_deadline(&mut stopping) => None,
            }
        });
        // Given up 10 s into a stop: the rest of the chunk is not sent (those sent are among
        // the unconfirmed), and `finish` fails so that no shutdown snapshot covers it (a
        // restart makes these events again).
        written.unwrap_or_else(|| {
            self.unsent += std::mem::take(&mut self.chunk_left);
            Ok(())
        })
    }

    fn flush(&mut self) -> io::Result<()> {
        let client = self.client.clone();
        // A server away does not hold the writer: its acks are waited for, not the flush.
        let flushed = async { tokio::time::timeout(Duration::from_secs(1), client.flush()).await };
        let _ = self.runtime.block_on(flushed);
        Ok(())
    }

    /// Waits up to [`FINISH_WITHIN`] for every event to be stored. Errors (logged too): some
    /// are not, or a stop left some unsent; then no shutdown snapshot is written.
    fn finish(&mut self) -> io::Result<()> {
        let runtime = self.runtime.clone();
        let mut stopping = self.stopping.clone();
        let stored = runtime.block_on(async {
            tokio::select! {
                stored = tokio::time::timeout(FINISH_WITHIN, self.confirm(0)) => stored.is_ok(),
                () = stop_deadline(&mut stopping) => false,
            }
        });
        if stored && self.unsent == 0 {
            return Ok(());
        }
        let unconfirmed = self.unconfirmed.len() + self.unsent;
        error!(subject = %self.subject, unconfirmed, "stopping with events JetStream has not stored (a restart sends them again from the last snapshot)");
        // An error, so that no shutdown snapshot covers these events (SPEC 9.4: a restart
        // resends from the last snapshot, whose events were all stored) and the exit status
        // (1) tells a supervisor.
        Err(io::Error::other(format!(
            "{unconfirmed} events not stored by JetStream within {FINISH_WITHIN:?} of the stop: no shutdown snapshot; a restart sends them again"
        )))
    }

    /// While events are unconfirmed: every [`ACK_CHECK_EVERY`].
    fn deadline(&self) -> Option<Instant> {
        (!self.unconfirmed.is_empty()).then_some(self.checked + ACK_CHECK_EVERY)
    }

    /// Takes the acks that came in, without waiting; sends every unconfirmed event again
    /// when the connection came back after a loss or an ack failed.
    fn tick(&mut self) -> io::Result<()> {
        let runtime = self.runtime.clone();
        runtime.block_on(self.check());
        self.checked = Instant::now();
        Ok(())
    }

    /// Every event published so far is stored by JetStream, by the snapshot's `deadline`
    /// (false otherwise: a snapshot must not count events that may be lost).
    fn make_durable(&mut self, deadline: Instant) -> io::Result<bool> {
        let (runtime, mut stopping) = (self.runtime.clone(), self.stopping.clone());
        Ok(runtime.block_on(async {
            tokio::select! {
                stored = tokio::time::timeout_at(deadline.into(), self.confirm(0)) => stored.is_ok(),
                () = stop_deadline(&mut stopping) => false,
            }
        }))
    }
}
