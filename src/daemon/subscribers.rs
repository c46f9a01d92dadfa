//! `--events ADDR` (SPEC 9.2): TCP subscribers, each sent every event from the moment it
//! connects, as NDJSON.
//!
//! The engine thread hands each chunk of events to the [`Hub`] (a non-blocking pipeline sink):
//! under a short lock it queues the chunk for every subscriber whose buffer has room and cuts
//! (disconnects, logs, counts) every subscriber whose buffer would overflow. It never waits on
//! a subscriber, so a slow one slows neither ingest nor the others (nats-server's
//! slow-consumer rule). Each subscriber has one tokio task that writes its queue to its socket.
//!
//! The buffer bound is in bytes of events waiting for the subscriber's task
//! (`--subscriber-buffer`); a chunk larger than the whole bound still goes to a subscriber that
//! has nothing waiting, so a healthy subscriber is never cut by the size of one batch.

use std::{
    io,
    net::SocketAddr,
    sync::{
        Arc, Mutex, PoisonError, Weak,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use crossbeam::channel::{self as cb, RecvTimeoutError};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::{broadcast, mpsc, oneshot},
};
use tracing::{info, warn};

use super::metrics::{ListenerLabel, Metrics};
use crate::pipeline::{Chunk, Sink};

/// How long shutdown waits for subscribers to take the events queued for them.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

struct Subscriber {
    peer: SocketAddr,
    tx: mpsc::UnboundedSender<Chunk>,
    /// Bytes handed to the task and not yet written to the socket.
    queued: Arc<AtomicUsize>,
    /// Dropping it tells the task to close the connection at once.
    kill: oneshot::Sender<()>,
    /// Bytes handed to the task so far, and the task's count of bytes written to the socket
    /// (gone once the task ended): a snapshot's delivery probe compares the two.
    handed: u64,
    written: Weak<AtomicU64>,
}

struct HubState {
    subscribers: Vec<Subscriber>,
    /// Each task holds a clone; once the hub drops its own, the channel closes when the last
    /// task ends. `None` once the hub has finished: no new subscribers.
    done: Option<cb::Sender<()>>,
}

/// The subscribers of `--events`, shared by the accept task and the engine thread.
pub struct Hub {
    state: Mutex<HubState>,
    done_rx: cb::Receiver<()>,
    buffer_bytes: usize,
    metrics: Metrics,
}

impl Hub {
    pub fn new(buffer_bytes: usize, metrics: Metrics) -> Arc<Hub> {
        let (done, done_rx) = cb::bounded(0);
        Arc::new(Hub {
            state: Mutex::new(HubState { subscribers: Vec::new(), done: Some(done) }),
            done_rx,
            buffer_bytes,
            metrics,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HubState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Registers a new subscriber: it gets every chunk from now on. `None` when the hub has
    /// finished.
    fn join(&self, peer: SocketAddr) -> Option<SubscriberTask> {
        let mut state = self.lock();
        let done = state.done.clone()?;
        let (tx, rx) = mpsc::unbounded_channel();
        let (kill_tx, kill) = oneshot::channel();
        let queued = Arc::new(AtomicUsize::new(0));
        let written = Arc::new(AtomicU64::new(0));
        state.subscribers.push(Subscriber {
            peer,
            tx,
            queued: queued.clone(),
            kill: kill_tx,
            handed: 0,
            written: Arc::downgrade(&written),
        });
        Some(SubscriberTask { rx, queued, kill, written, _done: done })
    }
}

/// The pipeline's end of the hub.
pub struct HubSink(pub Arc<Hub>);

impl Sink for HubSink {
    fn name(&self) -> String {
        "event subscribers".into()
    }

    fn write(&mut self, chunk: &Chunk) -> io::Result<()> {
        let hub = &self.0;
        let len = chunk.len();
        let mut state = hub.lock();
        state.subscribers.retain_mut(|s| {
            let queued = s.queued.load(Ordering::Acquire);
            if queued > 0 && queued + len > hub.buffer_bytes {
                hub.metrics.subscribers_dropped.inc();
                warn!(
                    peer = %s.peer,
                    queued_bytes = queued,
                    buffer_bytes = hub.buffer_bytes,
                    "subscriber too slow: its buffer is full; disconnected"
                );
                return false; // dropping `kill` closes the connection
            }
            s.queued.fetch_add(len, Ordering::AcqRel);
            s.handed += len as u64;
            // A send fails only when the task has ended (the subscriber left).
            s.tx.send(chunk.clone()).is_ok()
        });
        Ok(())
    }

    /// Each task writes as soon as it has a chunk: nothing is buffered here.
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }

    /// Closes every queue (no new subscribers) and waits up to [`DRAIN_TIMEOUT`] for the
    /// tasks to write what was queued and close; those still writing then are cut.
    fn finish(&mut self) -> io::Result<()> {
        let hub = &self.0;
        let (kills, n) = {
            let mut state = hub.lock();
            state.done = None;
            let subs = std::mem::take(&mut state.subscribers);
            let n = subs.len();
            // Keep each kill switch until the wait is over; drop the queues now, so each task
            // ends once it has written what it holds.
            let kills: Vec<_> = subs.into_iter().map(|s| s.kill).collect();
            (kills, n)
        };
        let deadline = Instant::now() + DRAIN_TIMEOUT;
        let drained = loop {
            match hub.done_rx.recv_deadline(deadline) {
                Ok(()) => continue,
                Err(RecvTimeoutError::Disconnected) => break true,
                Err(RecvTimeoutError::Timeout) => break false,
            }
        };
        if drained {
            info!(subscribers = n, "every subscriber got every event");
        } else {
            // A task that ended dropped its kill switch's receiver; the rest are cut now.
            let cut = kills.iter().filter(|kill| !kill.is_closed()).count();
            warn!(subscribers = n, cut, "subscribers still writing at shutdown were cut");
        }
        drop(kills);
        Ok(())
    }

    fn blocking(&self) -> bool {
        false
    }

    /// True once every subscriber connected now has had every byte handed to it so far
    /// written to its socket (the kernel then delivers it even if the process dies), or has
    /// gone.
    fn delivery_probe(&self) -> Option<crate::pipeline::Probe> {
        let targets: Vec<(Weak<AtomicU64>, u64)> =
            self.0.lock().subscribers.iter().map(|s| (s.written.clone(), s.handed)).collect();
        Some(Box::new(move || {
            targets.iter().all(|(written, handed)| {
                written.upgrade().is_none_or(|w| w.load(Ordering::Acquire) >= *handed)
            })
        }))
    }
}

/// What a subscriber's task owns.
struct SubscriberTask {
    rx: mpsc::UnboundedReceiver<Chunk>,
    queued: Arc<AtomicUsize>,
    kill: oneshot::Receiver<()>,
    /// Bytes written to the socket so far.
    written: Arc<AtomicU64>,
    /// Dropped when the task ends: the hub's shutdown waits for all of them.
    _done: cb::Sender<()>,
}

/// Keeps the subscriber gauge while a task lives.
struct Live(Metrics);

impl Drop for Live {
    fn drop(&mut self) {
        self.0.subscribers.dec();
    }
}

/// Accepts subscribers until `shutdown` fires; over `max` live ones, a connection is refused
/// (closed at once), logged and counted.
pub async fn accept(
    listener: TcpListener,
    hub: Arc<Hub>,
    max: usize,
    mut shutdown: broadcast::Receiver<()>,
) {
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    warn!(error = %e, "subscriber accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.recv() => return,
        };
        let m = &hub.metrics;
        if m.subscribers.get() >= i64::try_from(max).unwrap_or(i64::MAX) {
            m.connections_refused.get_or_create(&ListenerLabel { listener: "events" }).inc();
            warn!(peer = %peer, max, "subscriber refused: --max-subscribers reached");
            continue; // dropping the stream closes it
        }
        let Some(task) = hub.join(peer) else { return };
        m.subscribers.inc();
        info!(peer = %peer, "subscriber connected");
        let live = Live(m.clone());
        tokio::spawn(async move {
            let _live = live;
            serve(stream, peer, task).await;
        });
    }
}

/// Writes the subscriber's queue to its socket until the queue closes (shutdown: after the
/// last event), the subscriber leaves, or the hub cuts it. What a subscriber sends is read
/// and ignored, so that its leaving is seen at once.
async fn serve(mut stream: TcpStream, peer: SocketAddr, mut task: SubscriberTask) {
    let _ = stream.set_nodelay(true);
    let (mut rd, mut wr) = stream.split();
    let mut scratch = [0u8; 512];
    let why = loop {
        tokio::select! {
            chunk = task.rx.recv() => {
                let Some(chunk) = chunk else { break "every event sent" };
                tokio::select! {
                    written = wr.write_all(chunk.as_bytes()) => {
                        if let Err(e) = written {
                            info!(peer = %peer, error = %e, "subscriber write failed");
                            break "write failed";
                        }
                        task.queued.fetch_sub(chunk.len(), Ordering::AcqRel);
                        task.written.fetch_add(chunk.len() as u64, Ordering::AcqRel);
                    }
                    _ = &mut task.kill => break "cut",
                }
            }
            read = rd.read(&mut scratch) => match read {
                Ok(0) | Err(_) => break "left",
                Ok(_) => {}
            },
            _ = &mut task.kill => break "cut",
        }
    };
    if why != "cut" {
        let _ = wr.shutdown().await;
    }
    info!(peer = %peer, why, "subscriber disconnected");
}
