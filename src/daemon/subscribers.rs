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
//!
//! A subscriber that has nothing waiting (its task is idle) is written directly by the
//! engine thread, with one non-blocking `write(2)` on a clone of its socket: on a live stream
//! an event then reaches the socket without waking a tokio worker first (one thread hop, tens
//! of µs on a busy 2-core machine, less). Whatever that write does not take (a full socket
//! buffer) goes to the task as usual, so order is kept: the engine writes only while the task
//! has nothing in hand, and the task writes only what it was handed. The engine does this for
//! at most [`DIRECT_WRITE_MAX`] subscribers, so that many subscribers cannot make it pay a
//! system call each per chunk; beyond that every subscriber is served by its task.

use std::{
    io::{self, Write as _},
    net::{SocketAddr, TcpStream as StdTcpStream},
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

/// Up to this many subscribers, the engine thread writes a chunk straight to an idle
/// subscriber's socket (see the module docs); with more, every chunk goes through the tasks.
pub const DIRECT_WRITE_MAX: usize = 2;

struct Subscriber {
    /// Names it for [`Hub::leave`].
    id: u64,
    peer: SocketAddr,
    /// A clone of the subscriber's socket (non-blocking, as tokio set it), for the engine
    /// thread's direct writes while the task is idle, and for `accept` to ask, outside the
    /// hub's lock, whether its peer has closed ([`Hub::n_connected`]).
    direct: Arc<StdTcpStream>,
    /// A chunk and the byte offset from which the task writes it.
    tx: mpsc::UnboundedSender<(Chunk, usize)>,
    /// Bytes handed to the task and not yet written to the socket.
    queued: Arc<AtomicUsize>,
    /// Dropping it tells the task to close the connection at once.
    kill: oneshot::Sender<()>,
    /// Bytes handed to this subscriber so far, and the count of them written to its socket,
    /// directly by the engine thread or by the task (gone once the task ended): a snapshot's
    /// delivery probe compares the two.
    handed: u64,
    written: Weak<AtomicU64>,
}

struct HubState {
    subscribers: Vec<Subscriber>,
    /// Each task holds a clone; once the hub drops its own, the channel closes when the last
    /// task ends. `None` once the hub has finished: no new subscribers.
    done: Option<cb::Sender<()>>,
    /// The id of the next subscriber.
    next_id: u64,
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
            state: Mutex::new(HubState { subscribers: Vec::new(), done: Some(done), next_id: 0 }),
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
    fn join(&self, peer: SocketAddr, direct: StdTcpStream) -> Option<SubscriberTask> {
        let mut state = self.lock();
        let done = state.done.clone()?;
        let (tx, rx) = mpsc::unbounded_channel();
        let (kill_tx, kill) = oneshot::channel();
        let queued = Arc::new(AtomicUsize::new(0));
        let written = Arc::new(AtomicU64::new(0));
        let id = state.next_id;
        state.next_id += 1;
        state.subscribers.push(Subscriber {
            id,
            peer,
            direct: Arc::new(direct),
            tx,
            queued: queued.clone(),
            kill: kill_tx,
            handed: 0,
            written: Arc::downgrade(&written),
        });
        Some(SubscriberTask { id, rx, queued, kill, written, _done: done })
    }

    /// Forgets a subscriber whose task has ended (it left, its write failed): its entry,
    /// and with it the engine thread's clone of its socket, goes now, not at the next
    /// chunk, which on a quiet stream may be long after (a client that connects and closes
    /// over and over would otherwise pile up open sockets until the process runs out of
    /// file descriptors). Nothing to do for one the hub cut or a finished hub's.
    fn leave(&self, id: u64) {
        self.lock().subscribers.retain(|s| s.id != id);
    }

    /// Subscribers still connected, counted up to `max`: those whose task runs and whose
    /// peer has not closed the connection ([`peer_closed`]). One that closed counts in the
    /// gauge until its task sees the close and ends, a moment later; `accept` asks this before
    /// refusing a connection over the cap, so that a consumer that restarts and connects
    /// again at once is not refused for its own old connection (with `--max-subscribers 1`,
    /// a reconnect 2 ms after a close was refused about one time in five). The sockets are
    /// asked after the lock is let go (the engine thread takes it for every chunk), and no
    /// more of them once `max` are found connected.
    fn n_connected(&self, max: usize) -> usize {
        let sockets: Vec<Arc<StdTcpStream>> = {
            let state = self.lock();
            state
                .subscribers
                .iter()
                .filter(|s| !s.tx.is_closed())
                .map(|s| s.direct.clone())
                .collect()
        };
        sockets.iter().filter(|socket| !peer_closed(socket)).take(max).count()
    }
}

/// Whether the peer of `socket` has closed the connection or its sending side: `poll` with no
/// wait reports `POLLRDHUP` (or a hang-up or error) once its FIN or reset has arrived, whatever
/// bytes it sent before still wait unread (a peek would read those, not the end of file: a
/// subscriber that sent a line and closed was still counted). Where that cannot be asked
/// (not Linux, or `poll` fails), a non-blocking peek: end of file or a reset.
#[allow(unsafe_code)]
fn peer_closed(socket: &StdTcpStream) -> bool {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd as _;
        let mut fd = libc::pollfd { fd: socket.as_raw_fd(), events: libc::POLLRDHUP, revents: 0 };
        // SAFETY: one `pollfd`, which `fd` is, for the socket's own descriptor, open while it
        // is borrowed; a timeout of 0 never blocks.
        if unsafe { libc::poll(&mut fd, 1, 0) } >= 0 {
            return fd.revents & (libc::POLLRDHUP | libc::POLLHUP | libc::POLLERR) != 0;
        }
    }
    match socket.peek(&mut [0u8; 1]) {
        Ok(n) => n == 0,
        // Only errors that say the connection is gone: a passing one (no memory, no buffer
        // space) must not let the cap be passed.
        Err(e) => matches!(
            e.kind(),
            io::ErrorKind::ConnectionReset
                | io::ErrorKind::ConnectionAborted
                | io::ErrorKind::BrokenPipe
                | io::ErrorKind::NotConnected
                | io::ErrorKind::TimedOut
        ),
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
        let mut state = hub.lock();
        if state.subscribers.is_empty() {
            return Ok(()); // nobody to print for
        }
        // Printed here, on the engine thread: a subscriber's buffer is bounded in bytes, and
        // an idle one is written straight away (see the module docs).
        let text = chunk.text();
        let len = text.len();
        let direct = state.subscribers.len() <= DIRECT_WRITE_MAX;
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
            s.handed += len as u64;
            // Nothing queued: the task has written everything it was handed and waits, so
            // this thread may write without reordering anything.
            let written =
                if direct && queued == 0 { write_some(&s.direct, text.as_bytes()) } else { 0 };
            if written > 0
                && let Some(count) = s.written.upgrade()
            {
                count.fetch_add(written as u64, Ordering::AcqRel);
            }
            if written == len {
                return true;
            }
            s.queued.fetch_add(len - written, Ordering::AcqRel);
            // The task writes the chunk from byte `written` on (a byte offset: a partial write
            // may end inside a UTF-8 character). A send fails only when the task has ended
            // (the subscriber left).
            s.tx.send((chunk.clone(), written)).is_ok()
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
            // Those still connected: a subscriber whose task has just ended may not have left
            // the list yet ([`Hub::leave`] runs after it).
            let n = subs.iter().filter(|s| !s.tx.is_closed()).count();
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
            info!(subscribers = n, "every subscriber still connected got every event");
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

/// Writes what a non-blocking socket takes now (one `write(2)`, more only after a partial
/// one) and returns the bytes written: 0 when it takes nothing or fails (the task's own write
/// then meets the error and ends the subscriber).
fn write_some(mut socket: &StdTcpStream, bytes: &[u8]) -> usize {
    let mut written = 0;
    while written < bytes.len() {
        match socket.write(&bytes[written..]) {
            Ok(0) => break,
            Ok(n) => written += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => break, // WouldBlock: the buffer is full; anything else: the task sees it
        }
    }
    written
}

/// What a subscriber's task owns.
struct SubscriberTask {
    /// Its entry in the hub ([`Hub::leave`]).
    id: u64,
    rx: mpsc::UnboundedReceiver<(Chunk, usize)>,
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

/// Accepts subscribers until `shutdown` fires; over `max` connected ones, a connection is
/// refused (closed at once), logged and counted. A subscriber whose peer has closed does not
/// count, even before its task has seen the close ([`Hub::n_connected`]); the
/// `liqscan_subscribers` gauge still counts it until then, so it may pass `max` for a moment.
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
        // The gauge first (no lock); at the cap, whether those counted are still there.
        if m.subscribers.get() >= i64::try_from(max).unwrap_or(i64::MAX)
            && hub.n_connected(max) >= max
        {
            m.connections_refused.get_or_create(&ListenerLabel { listener: "events" }).inc();
            warn!(peer = %peer, max, "subscriber refused: --max-subscribers reached");
            continue; // dropping the stream closes it
        }
        // The engine thread's direct writes use a clone of the socket (see the module docs).
        let _ = stream.set_nodelay(true);
        let (stream, direct) = match split_direct(stream) {
            Ok(pair) => pair,
            Err(e) => {
                warn!(peer = %peer, error = %e, "subscriber refused: its socket cannot be cloned");
                continue;
            }
        };
        let Some(task) = hub.join(peer, direct) else { return };
        m.subscribers.inc();
        info!(peer = %peer, "subscriber connected");
        let live = Live(m.clone());
        let hub = hub.clone();
        tokio::spawn(async move {
            let _live = live;
            let id = task.id;
            serve(stream, peer, task).await;
            hub.leave(id);
        });
    }
}

/// The socket for the task and a clone of it for the engine thread. tokio keeps the socket
/// non-blocking, and the clone shares that mode (one open file), so a direct write never
/// blocks the engine.
fn split_direct(stream: TcpStream) -> io::Result<(TcpStream, StdTcpStream)> {
    let std = stream.into_std()?;
    let direct = std.try_clone()?;
    Ok((TcpStream::from_std(std)?, direct))
}

/// Writes the subscriber's queue to its socket until the queue closes (shutdown: after the
/// last event), the subscriber leaves, or the hub cuts it. What a subscriber sends is read
/// and ignored, so that its leaving is seen at once.
async fn serve(mut stream: TcpStream, peer: SocketAddr, mut task: SubscriberTask) {
    let (mut rd, mut wr) = stream.split();
    let mut scratch = [0u8; 512];
    let why = loop {
        tokio::select! {
            chunk = task.rx.recv() => {
                let Some((chunk, from)) = chunk else { break "every event sent" };
                let bytes = chunk.text().as_bytes().get(from..).unwrap_or_default();
                tokio::select! {
                    written = wr.write_all(bytes) => {
                        if let Err(e) = written {
                            info!(peer = %peer, error = %e, "subscriber write failed");
                            break "write failed";
                        }
                        task.queued.fetch_sub(bytes.len(), Ordering::AcqRel);
                        task.written.fetch_add(bytes.len() as u64, Ordering::AcqRel);
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

#[cfg(test)]
mod tests {
    use std::{
        io::{Read, Write},
        net::{TcpListener, TcpStream},
        time::{Duration, Instant},
    };

    use super::peer_closed;

    /// A connected pair on loopback: (the daemon's side, non-blocking as tokio leaves it; the
    /// subscriber's side).
    fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        server.set_nonblocking(true).unwrap();
        (server, client)
    }

    /// Whether `peer_closed` says so within two seconds (a close reaches the other end of a
    /// loopback connection at once; the bound keeps a slow machine from failing the test).
    fn closed_soon(server: &TcpStream) -> bool {
        let until = Instant::now() + Duration::from_secs(2);
        while Instant::now() < until {
            if peer_closed(server) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        false
    }

    #[test]
    fn a_peer_counts_as_closed_once_its_close_arrives_whatever_it_sent() {
        // TC1: open, nothing sent: connected.
        let (server, client) = pair();
        assert!(!peer_closed(&server));
        // TC2: bytes sent and not read: still connected, and the bytes are still there.
        let mut client = client;
        client.write_all(b"hello\n").unwrap();
        std::thread::sleep(Duration::from_millis(20));
        assert!(!peer_closed(&server));
        let mut got = [0u8; 6];
        (&server).read_exact(&mut got).unwrap();
        assert_eq!(&got, b"hello\n");
        // TC3: a clean close (FIN): closed.
        drop(client);
        assert!(closed_soon(&server));
        // TC4: bytes sent, then a close, nothing read yet (a peek would see the bytes first).
        let (server, mut client) = pair();
        client.write_all(b"subscribe\n").unwrap();
        drop(client);
        assert!(closed_soon(&server));
        // TC5: a reset (the peer closed with our bytes unread).
        let (server, client) = pair();
        (&server).write_all(&[b'x'; 4096]).unwrap();
        std::thread::sleep(Duration::from_millis(20));
        drop(client);
        assert!(closed_soon(&server));
        // TC6: the peer closed its sending side only: it has left (as `serve` sees it).
        let (server, client) = pair();
        client.shutdown(std::net::Shutdown::Write).unwrap();
        assert!(closed_soon(&server));
        drop(client);
    }
}
