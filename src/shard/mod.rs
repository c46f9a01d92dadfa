//! Shards on NATS JetStream (SPEC section 10): `liqscan publish` routes one engine stream
//! into N JetStream streams, and `liqscan run --nats URL --shard I/N` reads stream I and
//! publishes its events back.
//!
//! | stream | subjects | written by | read by |
//! |---|---|---|---|
//! | `LIQSCAN_<i>` | `liqscan.in.<i>` | `liqscan publish` ([`publish`]), each line under its [`route::Key`] as `Nats-Msg-Id` | shard i's daemon ([`consume::ShardSource`]) |
//! | `LIQSCAN_EVENTS` | `liqscan.events.<i>` | shard i's daemon ([`consume::EventsSink`]), each event under `<i>:<seq>:<n>` | anyone, at their own pace |
//!
//! The engine and the pipeline know nothing of NATS: a shard's stream is a pipeline
//! [`crate::pipeline::Source`] whose connection is a log of sequenced messages
//! ([`crate::pipeline::LogReader`]; the stream sequence is the line number and the effective
//! seq, [`crate::ingest::Ingest::logged`]), and its events topic is one more blocking
//! [`crate::pipeline::Sink`]. `async-nats` runs on the daemon's tokio runtime (on its own for
//! `publish`); the engine thread never awaits.

pub mod consume;
pub mod publish;
pub mod route;

use std::{fmt, str::FromStr, time::Duration};

use anyhow::Context as _;
use async_nats::jetstream::{self, stream};

/// The JetStream stream of shard `i`'s input.
pub fn input_stream(i: u32) -> String {
    format!("LIQSCAN_{i}")
}

/// The subject of shard `i`'s input.
pub fn input_subject(i: u32) -> String {
    format!("liqscan.in.{i}")
}

/// The JetStream stream of every shard's events.
pub const EVENTS_STREAM: &str = "LIQSCAN_EVENTS";

/// The subject of shard `i`'s events.
pub fn events_subject(i: u32) -> String {
    format!("liqscan.events.{i}")
}

/// The header of a stand-in for a line the shard must reject unseen ([`route::Refused`]: a
/// line over 1 MiB, or one without `seq` when none is left); its payload is empty.
pub const REFUSED_HEADER: &str = "Liqscan-Refused";

/// A shard's stream exists for another shard count (its description says which).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct NotThisShard(String);

/// Bytes kept free beside a payload for its headers (ids, `Nats-Expected-Last-Sequence`,
/// [`REFUSED_HEADER`]) when it is checked against the server's `max_payload`, which counts
/// headers and payload together.
pub const HEADER_ROOM: usize = 256;

/// How long JetStream remembers a `Nats-Msg-Id` to drop a message sent again under it.
pub const DUPLICATE_WINDOW: Duration = Duration::from_secs(120);

/// `--shard I/N`: this daemon is shard `index` of `count`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShardSpec {
    /// I, from 0.
    pub index: u32,
    /// N, at least 1.
    pub count: u32,
}

impl FromStr for ShardSpec {
    type Err = String;

    fn from_str(s: &str) -> Result<ShardSpec, String> {
        let bad = || format!("{s:?} is not I/N with 0 <= I < N, e.g. 0/4");
        let (i, n) = s.split_once('/').ok_or_else(bad)?;
        let (index, count): (u32, u32) =
            (i.trim().parse().map_err(|_| bad())?, n.trim().parse().map_err(|_| bad())?);
        if index >= count {
            return Err(bad());
        }
        Ok(ShardSpec { index, count })
    }
}

impl fmt::Display for ShardSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

/// The description a shard's input stream carries, so that a publisher or daemon with
/// another shard count refuses it instead of mixing two routings.
fn input_description(shard: ShardSpec) -> String {
    format!("liqscan input of shard {shard}")
}

/// How long the NATS client waits before its `attempts`-th reconnect (counted from 1):
/// nothing, then 100 ms doubling up to [`RECONNECT_DELAY_MAX`]. async-nats's own default
/// doubles up to 4 s; a shard beside its server should be reading again within a second of
/// the server's return.
pub fn reconnect_delay(attempts: usize) -> Duration {
    let doublings = u32::try_from(attempts.saturating_sub(2)).unwrap_or(u32::MAX).min(16);
    match attempts {
        0 | 1 => Duration::ZERO,
        _ => (Duration::from_millis(100) * 2u32.pow(doublings)).min(RECONNECT_DELAY_MAX),
    }
}

/// How often the NATS client pings its server when nothing else proves it alive.
pub const PING_EVERY: Duration = Duration::from_secs(5);

/// The longest wait between two reconnects to a NATS server that went away.
pub const RECONNECT_DELAY_MAX: Duration = Duration::from_secs(1);

/// A NATS connection's state as its users see it: whether it is up now, and how many times
/// it came back after it was lost (each return is a new server connection: replies to what
/// was sent on the old one, such as JetStream acks, never come).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinkState {
    /// Connected now.
    pub up: bool,
    /// Returns after a loss since [`connect`].
    pub returns: u64,
}

/// A NATS client and the news of its connection's losses and returns (logged, at `warn`
/// when lost and `info` when back).
pub struct Link {
    /// The client (async-nats reconnects it by itself, every [`reconnect_delay`]).
    pub client: async_nats::Client,
    /// Changes on each loss and return.
    pub state: tokio::sync::watch::Receiver<LinkState>,
}

/// Connects to the NATS server at `url` (`nats://127.0.0.1:4222`, or `127.0.0.1:4222`) for
/// `purpose` (`input`, `events`, `publish`: named in the connection's log lines). Errors: no
/// connection within 5 s.
pub async fn connect(url: &str, purpose: &'static str) -> anyhow::Result<Link> {
    let nats = url.to_owned();
    let (tx, state) = tokio::sync::watch::channel(LinkState { up: true, returns: 0 });
    let client = async_nats::ConnectOptions::new()
        .name("liqscan")
        .connection_timeout(Duration::from_secs(5))
        .reconnect_delay_callback(reconnect_delay)
        // A server that stops answering (frozen, or a network black hole) counts as lost
        // after two unanswered pings: 10–15 s, where async-nats's default takes minutes.
        .ping_interval(PING_EVERY)
        .event_callback(move |event| {
            let (tx, nats) = (tx.clone(), nats.clone());
            async move {
                match event {
                    async_nats::Event::Disconnected => tx.send_modify(|s| {
                        if s.up {
                            tracing::warn!(%nats, purpose, "the NATS connection was lost; reconnecting");
                        }
                        s.up = false;
                    }),
                    async_nats::Event::Connected => tx.send_modify(|s| {
                        if !s.up {
                            s.returns += 1;
                            tracing::info!(%nats, purpose, "the NATS connection is back");
                        }
                        s.up = true;
                    }),
                    _ => {}
                }
            }
        })
        .connect(url)
        .await
        .with_context(|| format!("cannot connect to NATS at {url}"))?;
    Ok(Link { client, state })
}

/// Resolves once `link` has come back after a loss since it showed `returns` returns.
pub async fn returned_since(link: &mut tokio::sync::watch::Receiver<LinkState>, returns: u64) {
    if link.wait_for(|s| s.returns != returns).await.is_err() {
        // The client is gone (its sender dropped): nothing will return.
        std::future::pending::<()>().await;
    }
}

/// Shard `shard`'s input stream, created (file storage, limits retention,
/// [`DUPLICATE_WINDOW`]) when missing. Errors: the server has no JetStream, or the stream
/// exists for another shard count.
pub async fn input_stream_of(
    js: &jetstream::Context,
    shard: ShardSpec,
) -> anyhow::Result<stream::Stream> {
    if shard.index != 0 {
        // Shard 0's stream is always made: another shard count shows there first.
        if let Ok(mut zero) = js.get_stream(input_stream(0)).await {
            let said = zero.info().await?.config.description.clone().unwrap_or_default();
            let want = input_description(ShardSpec { index: 0, count: shard.count });
            if said != want {
                return Err(NotThisShard(format!(
                    "the streams are not those of {} shards: {} says {said:?}",
                    shard.count,
                    input_stream(0)
                ))
                .into());
            }
        }
    }
    let name = input_stream(shard.index);
    let description = input_description(shard);
    let mut stream = js
        .get_or_create_stream(stream::Config {
            name: name.clone(),
            subjects: vec![input_subject(shard.index)],
            description: Some(description.clone()),
            storage: stream::StorageType::File,
            duplicate_window: DUPLICATE_WINDOW,
            ..Default::default()
        })
        .await
        .with_context(|| {
            format!("cannot open the JetStream stream {name} (is JetStream on: nats-server -js?)")
        })?;
    let info = stream.info().await.with_context(|| format!("cannot read stream {name}"))?;
    if info.config.description.as_deref() != Some(description.as_str()) {
        return Err(NotThisShard(format!(
            "stream {name} is not the input of shard {shard}: it says {:?} (published for another shard count?)",
            info.config.description.as_deref().unwrap_or("")
        ))
        .into());
    }
    Ok(stream)
}

/// The events stream, created (file storage, limits retention) when missing.
pub async fn events_stream(js: &jetstream::Context) -> anyhow::Result<stream::Stream> {
    let config = stream::Config {
        name: EVENTS_STREAM.into(),
        subjects: vec!["liqscan.events.>".into()],
        description: Some("liqscan events of every shard".into()),
        storage: stream::StorageType::File,
        duplicate_window: DUPLICATE_WINDOW,
        ..Default::default()
    };
    get_or_create(js, config)
        .await
        .with_context(|| format!("cannot open the JetStream stream {EVENTS_STREAM}"))
}

/// The stream `config.name`, created when missing. Several shards start at once and each
/// creates the events stream: one that loses the race to create it (the server says the
/// subjects overlap) finds it made by the other, so it looks again, up to 5 times.
async fn get_or_create(
    js: &jetstream::Context,
    config: stream::Config,
) -> Result<stream::Stream, jetstream::context::CreateStreamError> {
    let mut tries = 0;
    loop {
        match js.get_or_create_stream(config.clone()).await {
            Err(_) if tries < 4 => {
                tries += 1;
                tokio::time::sleep(Duration::from_millis(20 << tries)).await;
            }
            done => return done,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reconnects_come_at_once_then_doubling_up_to_a_second() {
        let delays: Vec<Duration> = (0..10).map(reconnect_delay).collect();
        assert_eq!(delays[..3], [Duration::ZERO, Duration::ZERO, Duration::from_millis(100)]);
        assert!(delays.windows(2).all(|w| w[0] <= w[1]), "{delays:?}");
        assert_eq!(delays[3], Duration::from_millis(200));
        assert_eq!(delays[9], RECONNECT_DELAY_MAX);
        assert_eq!(reconnect_delay(usize::MAX), RECONNECT_DELAY_MAX);
    }

    #[test]
    fn shard_specs_parse_and_print() {
        assert_eq!("2/4".parse(), Ok(ShardSpec { index: 2, count: 4 }));
        assert_eq!("0/1".parse::<ShardSpec>().unwrap().to_string(), "0/1");
        for bad in ["4/4", "1", "a/2", "1/0", "-1/2", "1/2/3"] {
            assert!(bad.parse::<ShardSpec>().is_err(), "{bad}");
        }
    }
}
