//! `--http ADDR` (SPEC 9.3): axum on tokio.
//!
//! | route | answer |
//! |---|---|
//! | `GET /metrics` | Prometheus text exposition ([`super::metrics`]) |
//! | `GET /health` | 200 `{"status":"ok","last_seq":N,"engine_connected":bool,...}` while serving, 503 while starting, restoring a snapshot or stopping |
//! | `GET /accounts/{id}` | the `account` event of a `query` of `id` at this point of the stream; 404 for an account never mentioned |
//! | `GET /at-risk?limit=N&symbol=S&mode=cross\|isolated` | the items closest to liquidation (`limit` default 100, capped at 10,000) |
//!
//! Every answer that needs the engine is a control request answered on the engine thread
//! between two messages: one consistent point of the stream, costing ingest only its own
//! work. The control queue is bounded: when it is full, or the engine has not answered
//! within [`ENGINE_TIMEOUT`], the answer is 503. A bad request is 400 with a reason, counted
//! in `liqscan_http_bad_requests_total`; an unknown path is 404, another method than GET
//! 405, both with a reason. A panic in a handler is caught (500), and connections over
//! `--max-http-connections` are closed at once and counted; a connection that writes
//! nothing for `--http-idle-timeout`, or whose request is not read and answered within it
//! of its first byte, is closed (see `Bounded`).

use std::{net::SocketAddr, sync::Arc, time::Duration};

use axum::{
    Router,
    extract::{
        Path, Query, State,
        rejection::{PathRejection, QueryRejection},
    },
    http::{StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};
use tokio::{
    net::{TcpListener, TcpStream},
    sync::{OwnedSemaphorePermit, Semaphore, broadcast, oneshot},
};
use tower_http::catch_panic::CatchPanicLayer;
use tracing::{debug, warn};

use super::{
    Phase, Shared,
    metrics::{self, EngineFigures, ListenerLabel},
};
use crate::{
    config::Mode,
    engine::{Engine, RiskQuery},
    pipeline::{Control, Point},
    protocol::Event,
};

/// `/at-risk`'s `limit` when none is given.
pub const AT_RISK_DEFAULT_LIMIT: usize = 100;

/// The largest `/at-risk` answer; a larger `limit` is capped to it.
pub const AT_RISK_MAX_LIMIT: usize = 10_000;

/// How long a handler waits for the engine thread's answer.
pub const ENGINE_TIMEOUT: Duration = Duration::from_secs(5);

/// An HTTP answer that is not a success.
struct Failure(StatusCode, String);

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        let body = serde_json::json!({ "error": self.1 }).to_string();
        (self.0, [(header::CONTENT_TYPE, "application/json")], body).into_response()
    }
}

fn bad_request(shared: &Shared, reason: impl Into<String>) -> Failure {
    shared.metrics.http_bad_requests.inc();
    Failure(StatusCode::BAD_REQUEST, reason.into())
}

/// Asks the engine thread: `f` runs there between two messages.
async fn ask<T: Send + 'static>(
    shared: &Shared,
    f: impl FnOnce(&dyn Engine, &Point<'_>) -> T + Send + 'static,
) -> Result<T, Failure> {
    let (tx, rx) = oneshot::channel();
    let control: Control = Box::new(move |engine, point| {
        let _ = tx.send(f(engine, point));
    });
    let busy = || Failure(StatusCode::SERVICE_UNAVAILABLE, "the engine is busy or stopping".into());
    shared.controls.try_send(control).map_err(|_| busy())?;
    match tokio::time::timeout(ENGINE_TIMEOUT, rx).await {
        Ok(Ok(answer)) => Ok(answer),
        _ => Err(busy()),
    }
}

async fn get_metrics(State(shared): State<Arc<Shared>>) -> Result<Response, Failure> {
    let figures = ask(&shared, EngineFigures::read).await?;
    let text = metrics::render(&shared.metrics, figures).map_err(|_| {
        Failure(StatusCode::INTERNAL_SERVER_ERROR, "cannot encode the metrics".into())
    })?;
    Ok(([(header::CONTENT_TYPE, metrics::CONTENT_TYPE)], text).into_response())
}

/// Never waits on the engine: the figures the engine thread publishes after each batch.
async fn get_health(State(shared): State<Arc<Shared>>) -> Response {
    use std::sync::atomic::Ordering::Relaxed;
    let phase = shared.phase.get();
    let (status, code) = match phase {
        Phase::SERVING => ("ok", StatusCode::OK),
        Phase::STARTING => ("starting", StatusCode::SERVICE_UNAVAILABLE),
        Phase::RESTORING => ("restoring", StatusCode::SERVICE_UNAVAILABLE),
        _ => ("stopping", StatusCode::SERVICE_UNAVAILABLE),
    };
    let body = serde_json::json!({
        "status": status,
        "last_seq": shared.progress.last_seq.load(Relaxed),
        "messages": shared.progress.messages.load(Relaxed),
        "engine_connected": shared.metrics.engine_connected.get() > 0,
        "subscribers": shared.metrics.subscribers.get(),
        "version": env!("CARGO_PKG_VERSION"),
    });
    (code, [(header::CONTENT_TYPE, "application/json")], body.to_string()).into_response()
}

fn json(body: String) -> Response {
    ([(header::CONTENT_TYPE, "application/json")], body).into_response()
}

/// `GET /accounts/{id}`: the `account` event a `query` would emit now.
async fn get_account(
    State(shared): State<Arc<Shared>>,
    id: Result<Path<String>, PathRejection>,
    query: axum::extract::RawQuery,
) -> Result<Response, Failure> {
    // A path that does not decode (percent-escapes that are not UTF-8) gets the same JSON
    // 400 as any other bad id.
    let Path(id) = id.map_err(|e| bad_request(&shared, format!("bad account id: {e}")))?;
    // As /at-risk refuses parameters it does not know, so does this endpoint (it takes none).
    if let Some(q) = query.0.filter(|q| !q.is_empty()) {
        return Err(bad_request(
            &shared,
            format!("unknown parameter in {:?}: /accounts/{{id}} takes none", shown(&q)),
        ));
    }
    // Plain digits, as the protocol writes ids (a `+` that `u64::from_str` would take is
    // refused), and no leading zero: the protocol refuses `"account":018`, so `/accounts/018`
    // is not quietly read as account 18.
    let digits = !id.is_empty() && id.bytes().all(|b| b.is_ascii_digit());
    let Some(account) = id.parse::<u64>().ok().filter(|_| digits) else {
        return Err(bad_request(
            &shared,
            format!("account id {:?} is not an integer in 0..=18446744073709551615", shown(&id)),
        ));
    };
    if id.len() > 1 && id.starts_with('0') {
        return Err(bad_request(
            &shared,
            format!("account id {:?} has a leading zero: write it as {account}", shown(&id)),
        ));
    }
    // Only the report is made on the engine thread; its JSON is written here.
    let report =
        ask(&shared, move |engine, point| engine.account_report(account, point.at)).await?;
    match report {
        Some(report) => {
            let mut body = String::with_capacity(1024);
            Event::Account(report).write_json(&mut body);
            body.truncate(body.trim_end().len());
            Ok(json(body))
        }
        None => Err(Failure(
            StatusCode::NOT_FOUND,
            format!("account {account} has never been mentioned"),
        )),
    }
}

/// The parameters of `/at-risk`, or the reason they are refused.
fn risk_query(shared: &Shared, params: &[(String, String)]) -> Result<RiskQuery, String> {
    let mut query = RiskQuery { limit: AT_RISK_DEFAULT_LIMIT, symbol: None, mode: None };
    let mut seen: Vec<&str> = Vec::new();
    for (key, value) in params {
        if seen.contains(&key.as_str()) {
            return Err(format!("parameter {:?} is given twice", shown(key)));
        }
        match key.as_str() {
            "limit" => {
                // Any count of digits is a limit: past u64 it is capped like any other.
                let digits = !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit());
                if !digits {
                    return Err(format!("limit {:?} is not a non-negative integer", shown(value)));
                }
                let n = value.parse::<u64>().unwrap_or(u64::MAX);
                query.limit = n.min(AT_RISK_MAX_LIMIT as u64) as usize;
            }
            "symbol" => {
                let s = shared
                    .cfg
                    .symbol_idx(value)
                    .ok_or_else(|| format!("symbol {:?} is not in the config", shown(value)))?;
                query.symbol = Some(s);
            }
            "mode" => {
                let m = Mode::parse(value)
                    .ok_or_else(|| format!("mode {:?} is not cross or isolated", shown(value)))?;
                query.mode = Some(m);
            }
            _ => {
                return Err(format!("unknown parameter {:?}: use limit, symbol, mode", shown(key)));
            }
        }
        seen.push(key);
    }
    Ok(query)
}

/// `GET /at-risk`: `{"line":L,"seq":S,"items":[...]}`, the point of the stream and the items
/// closest to liquidation in the order of [`Engine::at_risk`].
async fn get_at_risk(
    State(shared): State<Arc<Shared>>,
    params: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Result<Response, Failure> {
    let params = params.map_err(|e| bad_request(&shared, format!("bad query string: {e}")))?;
    let query = risk_query(&shared, &params.0).map_err(|reason| bad_request(&shared, reason))?;
    // Only the list is made on the engine thread; its JSON is written here.
    let (at, items) = ask(&shared, move |engine, point| (point.at, engine.at_risk(&query))).await?;
    let mut body = String::with_capacity(64 + items.len() * 400);
    body.push_str(&format!("{{\"line\":{},\"seq\":{},\"items\":[", at.line, at.seq));
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            body.push(',');
        }
        item.write_json(&mut body);
    }
    body.push_str("]}");
    Ok(json(body))
}

/// At most the first 64 characters of a value a client sent, for an error's reason (a
/// 10 KB id is not echoed back whole).
fn shown(value: &str) -> std::borrow::Cow<'_, str> {
    const SHOWN: usize = 64;
    match value.char_indices().nth(SHOWN) {
        Some((end, _)) => format!("{}...", &value[..end]).into(),
        None => value.into(),
    }
}

/// Answers 405 for a method other than GET on a routed path, with a reason.
async fn method_not_allowed() -> Response {
    let refused = Failure(StatusCode::METHOD_NOT_ALLOWED, "only GET and HEAD are served".into());
    ([(header::ALLOW, "GET,HEAD")], refused).into_response()
}

/// Answers 404 for every path not routed, with a reason.
async fn not_found() -> Failure {
    Failure(
        StatusCode::NOT_FOUND,
        "no such endpoint: GET /metrics, /health, /accounts/{id} or /at-risk".into(),
    )
}

fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/metrics", get(get_metrics))
        .route("/health", get(get_health))
        .route("/accounts/{id}", get(get_account))
        .route("/at-risk", get(get_at_risk))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(CatchPanicLayer::new())
        .with_state(shared)
}

/// A listener that holds one permit of a semaphore per open connection; a connection over
/// the bound is closed at once, logged and counted.
struct BoundedListener {
    inner: TcpListener,
    permits: Arc<Semaphore>,
    shared: Arc<Shared>,
    idle_timeout: Duration,
}

/// A connection with its permit, released when the connection closes.
struct Bounded {
    stream: TcpStream,
    _permit: OwnedSemaphorePermit,
    /// Fires `idle_timeout` after the last response byte written (or the connection's
    /// start), or after the first byte of a request that has not been answered since: a
    /// client that connects and sends nothing, half a request, or a request one header
    /// line at a time (a "slowloris") must not hold one of `--max-http-connections` for
    /// ever, locking out health checks and scrapes. So a request has `idle_timeout` from
    /// its first byte to be read whole and answered, and an answer keeps the connection
    /// while its writes go through or the peer takes [`READ_PROGRESS`] bytes a period of
    /// what the socket holds (for a multi-megabyte `/at-risk` read through a small receive
    /// window, one write can wait longer than a period for the socket to drain).
    idle: std::pin::Pin<Box<tokio::time::Sleep>>,
    idle_timeout: Duration,
    /// Bytes were read since the last response bytes were written: a request is under way,
    /// and further reads do not push the deadline back.
    in_request: bool,
    /// Bytes the socket held for the peer when the deadline was last set: when it fires, a
    /// queue shorter by [`READ_PROGRESS`] means the peer is reading an answer (slowly), and
    /// the connection gets another period.
    outq: Option<usize>,
}

impl Bounded {
    /// Pushes the deadline back to `idle_timeout` from now, and notes how many bytes the
    /// socket still holds for the peer.
    fn active(&mut self) {
        let deadline = tokio::time::Instant::now() + self.idle_timeout;
        self.idle.as_mut().reset(deadline);
        self.outq = unsent_bytes(&self.stream);
    }

    /// Whether the peer took [`READ_PROGRESS`] bytes (or all) of what the socket held for it
    /// when the deadline was last set: a client reading an answer, if slowly.
    fn peer_took_bytes(&self) -> bool {
        match (self.outq, unsent_bytes(&self.stream)) {
            (Some(then), Some(now)) => {
                then > 0 && then.saturating_sub(now) >= READ_PROGRESS.min(then)
            }
            _ => false,
        }
    }
}

/// What a client reading an answer must take per `--http-idle-timeout` to keep its
/// connection while the daemon's writes wait for the socket (6.4 KB/s at the default 10 s):
/// a slower reader, or one that reads a byte now and then to hold a slot, is cut.
const READ_PROGRESS: usize = 64 << 10;

/// Bytes written to `stream` that its peer has not acknowledged yet (`SIOCOUTQ`, Linux);
/// `None` where that cannot be read.
#[allow(unsafe_code)]
fn unsent_bytes(stream: &TcpStream) -> Option<usize> {
    use std::os::fd::AsRawFd as _;
    let mut n: libc::c_int = 0;
    // SAFETY: TIOCOUTQ (SIOCOUTQ on a TCP socket) writes one int through the pointer, which
    // points to `n`; the descriptor is the stream's own, open while it is borrowed.
    let r = unsafe { libc::ioctl(stream.as_raw_fd(), libc::TIOCOUTQ, &mut n) };
    (r == 0).then(|| usize::try_from(n).ok()).flatten()
}

/// The bounds on HTTP connections (`--max-http-connections`, `--http-idle-timeout`).
#[derive(Debug, Clone, Copy)]
pub struct Bounds {
    /// Connections open at once; more are refused and counted.
    pub max_connections: usize,
    /// A connection that wrote nothing for this long, or whose request has not been read
    /// and answered this long after its first byte, is closed.
    pub idle_timeout: Duration,
}

impl axum::serve::Listener for BoundedListener {
    type Io = Bounded;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let (stream, peer) = match self.inner.accept().await {
                Ok(accepted) => accepted,
                Err(e) => {
                    warn!(error = %e, "HTTP accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            match self.permits.clone().try_acquire_owned() {
                Ok(permit) => {
                    debug!(peer = %peer, "HTTP connection");
                    let idle_timeout = self.idle_timeout;
                    let idle = Box::pin(tokio::time::sleep(idle_timeout));
                    let bounded = Bounded {
                        stream,
                        _permit: permit,
                        idle,
                        idle_timeout,
                        in_request: false,
                        outq: None,
                    };
                    return (bounded, peer);
                }
                Err(_) => {
                    let label = ListenerLabel { listener: "http" };
                    self.shared.metrics.connections_refused.get_or_create(&label).inc();
                    warn!(peer = %peer, "HTTP connection refused: --max-http-connections reached");
                }
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}

impl tokio::io::AsyncRead for Bounded {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        use std::{future::Future as _, task::Poll};
        let before = buf.filled().len();
        match std::pin::Pin::new(&mut self.stream).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                // The first bytes of a request start its deadline; the rest of it does not
                // move it.
                if buf.filled().len() > before && !self.in_request {
                    self.in_request = true;
                    self.active();
                }
                Poll::Ready(Ok(()))
            }
            Poll::Pending => match self.idle.as_mut().poll(cx) {
                Poll::Ready(()) if self.peer_took_bytes() => {
                    // An answer still on its way to a slow reader: a write may wait longer
                    // than the timeout for the kernel's send buffer to drain, while the
                    // client reads all along. Another period; polled once to be woken.
                    self.active();
                    let _ = self.idle.as_mut().poll(cx);
                    Poll::Pending
                }
                Poll::Ready(()) => Poll::Ready(Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "HTTP connection idle too long",
                ))),
                Poll::Pending => Poll::Pending,
            },
            other => other,
        }
    }
}

impl tokio::io::AsyncWrite for Bounded {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let written = std::pin::Pin::new(&mut self.stream).poll_write(cx, buf);
        if matches!(written, std::task::Poll::Ready(Ok(n)) if n > 0) {
            self.in_request = false;
            self.active();
        }
        written
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// Serves HTTP on `listener` until `shutdown` fires.
pub async fn serve(
    listener: TcpListener,
    shared: Arc<Shared>,
    bounds: Bounds,
    mut shutdown: broadcast::Receiver<()>,
) {
    let listener = BoundedListener {
        inner: listener,
        permits: Arc::new(Semaphore::new(bounds.max_connections.max(1))),
        shared: shared.clone(),
        idle_timeout: bounds.idle_timeout,
    };
    let served = axum::serve(listener, router(shared))
        .with_graceful_shutdown(async move {
            let _ = shutdown.recv().await;
        })
        .await;
    if let Err(e) = served {
        warn!(error = %e, "HTTP server stopped");
    }
}
