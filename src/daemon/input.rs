//! The engine stream's two sources (SPEC 9.1): stdin, and `--listen ADDR`, where the engine
//! connects over TCP.
//!
//! Both are plain blocking reads on the pipeline's reader thread (`std::net`, no async): when
//! the engine thread falls behind, the reader stops reading and TCP (or the pipe) holds the
//! sender back.

use std::{
    io::{self, BufRead, BufReader, Read, Write},
    net::{Shutdown, SocketAddr, TcpListener, TcpStream},
    sync::{Arc, Mutex, PoisonError},
};

use crossbeam::{
    channel::{Receiver, Sender, bounded},
    select,
};
use tracing::{info, warn};

use super::metrics::Metrics;
use crate::pipeline::{Connection, ConnectionEnd, Source};

/// Bytes per read, for both sources.
const READ_BYTES: usize = 1 << 16;

/// Closes when the daemon stops; sources select on it to leave a blocking wait.
pub type StopRx = Receiver<()>;

// ---------------------------------------------------------------------------------------
// stdin
// ---------------------------------------------------------------------------------------

/// stdin through a pump thread: a read on stdin cannot be interrupted, so a detached thread
/// does the reading and hands chunks over a small bounded queue (back-pressure: when it is
/// full, the pump stops reading and the writing process blocks). On stop, the reader leaves
/// at once; whatever the pump still holds was never read by the pipeline.
pub struct StdinSource {
    chunks: Option<Receiver<Vec<u8>>>,
    stop: StopRx,
    metrics: Metrics,
}

impl StdinSource {
    pub fn start(stop: StopRx, metrics: Metrics) -> io::Result<StdinSource> {
        let (tx, rx) = bounded::<Vec<u8>>(4);
        std::thread::Builder::new().name("stdin-pump".into()).spawn(move || pump(tx))?;
        Ok(StdinSource { chunks: Some(rx), stop, metrics })
    }
}

fn pump(tx: Sender<Vec<u8>>) {
    let mut stdin = io::stdin().lock();
    loop {
        let mut buf = vec![0; READ_BYTES];
        let n = match stdin.read(&mut buf) {
            Ok(0) => return, // end of input: the closed queue says so
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                warn!(error = %e, "stdin read failed; treating it as the end of input");
                return;
            }
        };
        buf.truncate(n);
        if tx.send(buf).is_err() {
            return; // the daemon is stopping
        }
    }
}

/// The reading end of the pump, as a `BufRead`.
struct PumpReader {
    chunks: Receiver<Vec<u8>>,
    stop: StopRx,
    chunk: Vec<u8>,
    pos: usize,
}

/// The error a pump read returns when the daemon stops in the middle of a line.
fn stopped() -> io::Error {
    io::Error::other("stopping")
}

impl Read for PumpReader {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        let available = self.fill_buf()?;
        let n = available.len().min(out.len());
        out[..n].copy_from_slice(&available[..n]);
        self.consume(n);
        Ok(n)
    }
}

impl BufRead for PumpReader {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        if self.pos == self.chunk.len() {
            select! {
                recv(self.chunks) -> chunk => match chunk {
                    Ok(chunk) => (self.chunk, self.pos) = (chunk, 0),
                    Err(_) => return Ok(&[]), // end of stdin
                },
                // A line cut by the stop is not a line that was read: an error, not an end,
                // so the reader does not take the cut-off bytes for a last line.
                recv(self.stop) -> _ => return Err(stopped()),
            }
        }
        Ok(&self.chunk[self.pos..])
    }

    fn consume(&mut self, n: usize) {
        self.pos = (self.pos + n).min(self.chunk.len());
    }
}

impl Source<'static> for StdinSource {
    fn next(&mut self, _last_seq: u64) -> Option<Connection<'static>> {
        let chunks = self.chunks.take()?;
        self.metrics.engine_connected.set(1);
        let input = PumpReader { chunks, stop: self.stop.clone(), chunk: Vec::new(), pos: 0 };
        // A last line without a newline counts, as in a file: stdin's end is the stream's.
        Some(Connection::lines(input, false))
    }

    fn ended(&mut self, end: ConnectionEnd) -> io::Result<()> {
        self.metrics.engine_connected.set(0);
        if end.stopped || end.error.is_some() {
            info!(lines = end.lines, "stopped reading stdin");
        } else {
            info!(lines = end.lines, "end of stdin");
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------
// --listen: the engine over TCP
// ---------------------------------------------------------------------------------------

/// The connections of the engine listener, shared by the acceptor thread and the source.
#[derive(Default)]
struct Slots {
    /// The connection being read (a clone of its socket, to shut it down from outside).
    live: Option<(TcpStream, SocketAddr)>,
    /// The newest accepted connection, not yet handed to the reader.
    pending: Option<(TcpStream, SocketAddr)>,
}

/// `--listen ADDR`: one engine connection at a time; a new one replaces the live one (which
/// is shut down and logged), since a reconnecting engine's old socket may still look open.
pub struct EngineListener {
    slots: Arc<Mutex<Slots>>,
    wake: Receiver<()>,
    stop: StopRx,
    metrics: Metrics,
    /// The peer of the connection being read.
    peer: Option<SocketAddr>,
}

/// Lets the daemon shut the live engine connection down when it stops.
#[derive(Clone)]
pub struct EngineCloser(Arc<Mutex<Slots>>);

impl EngineCloser {
    /// Stops the reading of the live connection (a blocked read returns at once); its write
    /// side stays open for the `bye` line ([`bye`]).
    pub fn close(&self) {
        let slots = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((live, _)) = &slots.live {
            let _ = live.shutdown(Shutdown::Read);
        }
    }
}

impl EngineListener {
    /// Starts accepting on `listener` (already bound) on a thread of its own.
    pub fn start(
        listener: TcpListener,
        stop: StopRx,
        metrics: Metrics,
    ) -> io::Result<(EngineListener, EngineCloser)> {
        let slots = Arc::new(Mutex::new(Slots::default()));
        let (wake_tx, wake) = bounded::<()>(1);
        let acceptor_slots = slots.clone();
        let acceptor_metrics = metrics.clone();
        std::thread::Builder::new().name("engine-accept".into()).spawn(move || {
            accept_engines(listener, &acceptor_slots, &wake_tx, &acceptor_metrics)
        })?;
        let closer = EngineCloser(slots.clone());
        Ok((EngineListener { slots, wake, stop, metrics, peer: None }, closer))
    }
}

fn accept_engines(listener: TcpListener, slots: &Mutex<Slots>, wake: &Sender<()>, m: &Metrics) {
    for conn in listener.incoming() {
        let stream = match conn {
            Ok(s) => s,
            Err(e) => {
                // Out of descriptors, a connection reset before accept: refuse it, go on.
                warn!(error = %e, "engine accept failed");
                std::thread::sleep(std::time::Duration::from_millis(50));
                continue;
            }
        };
        let Ok(peer) = stream.peer_addr() else { continue };
        m.engine_connections.inc();
        info!(peer = %peer, "engine connected");
        let mut s = slots.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((old, old_peer)) = s.live.take() {
            info!(old = %old_peer, new = %peer, "engine connection replaced by a newer one");
            let _ = old.shutdown(Shutdown::Both);
        }
        if let Some((old, old_peer)) = s.pending.replace((stream, peer)) {
            info!(old = %old_peer, new = %peer, "engine connection replaced before it was read");
            let _ = old.shutdown(Shutdown::Both);
        }
        drop(s);
        let _ = wake.try_send(());
    }
}

/// The hello line of SPEC 9.1.
pub fn hello(last_seq: u64) -> String {
    format!(
        "{{\"type\":\"hello\",\"last_seq\":{last_seq},\"version\":\"{}\"}}\n",
        env!("CARGO_PKG_VERSION")
    )
}

/// The line the daemon writes to an engine connection it is done reading, before it closes
/// it (liqscan's addition to SPEC 9.1, where the SPEC is silent on closing): `last_seq` is
/// the last effective seq it has applied or will apply before it exits; `reason` is
/// `"end of stream"` (the engine closed its side) or `"stopping"` (SIGINT/SIGTERM). An engine
/// that sent lines past `last_seq` knows they were not read and resends them after the
/// next hello. Not written to a connection a newer one replaced, nor after a read error.
pub fn bye(last_seq: u64, stopping: bool) -> String {
    let reason = if stopping { "stopping" } else { "end of stream" };
    format!("{{\"type\":\"bye\",\"last_seq\":{last_seq},\"reason\":\"{reason}\"}}\n")
}

impl Source<'static> for EngineListener {
    fn next(&mut self, last_seq: u64) -> Option<Connection<'static>> {
        loop {
            let taken = {
                let mut s = self.slots.lock().unwrap_or_else(PoisonError::into_inner);
                let taken = s.pending.take();
                if let Some((stream, peer)) = &taken {
                    s.live = stream.try_clone().ok().map(|clone| (clone, *peer));
                }
                taken
            };
            let Some((mut stream, peer)) = taken else {
                select! {
                    recv(self.wake) -> woken => match woken {
                        Ok(()) => continue,
                        Err(_) => {
                            // The acceptor thread is gone (it never returns; only a panic
                            // ends it): no engine can connect again. End the input, as a
                            // stop does, rather than poll a closed channel forever.
                            warn!("the engine listener stopped accepting; ending the input");
                            return None;
                        }
                    },
                    recv(self.stop) -> _ => return None,
                }
            };
            let _ = stream.set_nodelay(true);
            if let Err(e) = stream.write_all(hello(last_seq).as_bytes()) {
                warn!(peer = %peer, error = %e, "engine connection lost before the hello");
                continue;
            }
            info!(peer = %peer, last_seq, "hello sent; reading the engine stream");
            self.metrics.engine_connected.set(1);
            self.peer = Some(peer);
            let input = BufReader::with_capacity(READ_BYTES, stream);
            return Some(Connection::lines(input, true));
        }
    }

    fn ended(&mut self, end: ConnectionEnd) -> io::Result<()> {
        // Forget the live socket, unless the acceptor already shut it down for a newer one;
        // tell the engine how far this connection was read (the reader still holds the
        // socket open).
        let live = self.slots.lock().unwrap_or_else(PoisonError::into_inner).live.take();
        if let Some((mut stream, _)) = live.filter(|_| end.error.is_none()) {
            // Best effort, and never blocking for long: the engine may be gone.
            let _ = stream.set_write_timeout(Some(std::time::Duration::from_secs(1)));
            let _ = stream.write_all(bye(end.last_seq, end.stopped).as_bytes());
        }
        self.metrics.engine_connected.set(0);
        let peer = self.peer.take().map(|p| p.to_string()).unwrap_or_default();
        if end.cut_off_bytes > 0 {
            self.metrics.engine_cut_off_lines.inc();
            warn!(
                peer = %peer,
                bytes = end.cut_off_bytes,
                "engine connection ended mid-line; the cut-off line is dropped (the engine resends it after the hello)"
            );
        }
        match &end.error {
            Some(e) => {
                warn!(peer = %peer, lines = end.lines, error = %e, "engine connection failed")
            }
            None if end.stopped => {
                info!(peer = %peer, lines = end.lines, "engine connection closed: stopping")
            }
            None => info!(peer = %peer, lines = end.lines, "engine disconnected"),
        }
        Ok(())
    }
}
