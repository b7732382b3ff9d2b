//! One HTTP/1 server for every Pollux listener (aggregator, proxy, collector metrics), so that
//! each of them resists the same careless or hostile clients the same way.
//!
//! ```text
//!   accept ──▶ over max_connections? ──yes──▶ closed at once (counted, logged once a second)
//!     │ EMFILE/ENFILE: back off 10 ms .. 1 s, log once a second (never a busy loop)
//!     ▼
//!   connection task (tracked; freed when it ends)
//!     ├─ request head must arrive within idle_timeout (after connecting or the last answer)
//!     ├─ request body must arrive whole within body_timeout          ([`TimedBody`])
//!     ├─ a body its handler answered without reading is read to its end and dropped (within
//!     │  body_timeout, at most [`DRAIN_LIMIT`]): the answer is not lost to a reset
//!     ├─ no byte moved for idle_timeout while no handler runs: closed (a client that never
//!     │  reads its answer)
//!     └─ shutdown: graceful, then dropped after [`SHUTDOWN_GRACE`]
//! ```
//!
//! The connection cap stays below the process's open-file limit (raised to the hard limit at
//! start by [`raise_open_file_limit`]) with [`RESERVED_FILES`] kept for the lease, fence, DTO
//! and repository files: clients can never starve the election of file handles.
//!
//! This crate knows HTTP and sockets, nothing of DTOs or roles.
#![forbid(unsafe_code)]

pub mod auth;
mod body;
pub mod tls;
mod watch;

pub use body::{is_body_timeout, BodyTimeout, BoxError, TimedBody, DRAIN_LIMIT};
pub use tls::{ClientTls, ServerTls, TlsError};

use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::Service;
use hyper::{Request, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use watch::{Activity, Watched};

/// File handles kept out of the connection cap for the process's own files.
pub const RESERVED_FILES: u64 = 256;
/// What a plain-HTTP client may send to an HTTPS port before the connection closes on it.
const PLAIN_HTTP_DRAIN: usize = 1 << 20;
/// Read buffer under TLS on each connection: two full TLS records.
const TLS_READ_BUFFER: usize = 32 << 10;
/// How long open connections may finish their requests after shutdown begins.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
pub const DEFAULT_MAX_CONNECTIONS: usize = 1024;
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(30);
pub const DEFAULT_BODY_TIMEOUT: Duration = Duration::from_secs(60);

/// What one listener allows its clients.
#[derive(Debug, Clone, PartialEq)]
pub struct ServerLimits {
    /// Connections open at once; more are closed as soon as they are accepted.
    pub max_connections: usize,
    /// A request head must arrive within this, counted from the connection's start or its last
    /// answer; a connection that moves no byte for this long while no handler runs is closed.
    pub idle_timeout: Duration,
    /// A request body must arrive whole within this from the request's start.
    pub body_timeout: Duration,
}

impl Default for ServerLimits {
    fn default() -> Self {
        ServerLimits {
            max_connections: DEFAULT_MAX_CONNECTIONS,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            body_timeout: DEFAULT_BODY_TIMEOUT,
        }
    }
}

impl ServerLimits {
    /// These limits with the connection cap lowered, if need be, to fit `open_files` (the soft
    /// open-file limit) less [`RESERVED_FILES`].
    pub fn fitted(mut self, open_files: u64) -> ServerLimits {
        let room = open_files.saturating_sub(RESERVED_FILES).max(16);
        if self.max_connections as u64 > room {
            tracing::warn!(
                configured = self.max_connections,
                open_files,
                using = room,
                "max_connections lowered to fit the open-file limit"
            );
            self.max_connections = room as usize;
        }
        self
    }

    /// Checks the values a configuration file gave; the key names are the configuration's.
    pub fn validate(&self) -> Result<(), (String, String)> {
        let err = |key: &str, problem: &str| Err((key.to_owned(), problem.to_owned()));
        if self.max_connections == 0 {
            return err("max_connections", "must be at least 1");
        }
        if self.idle_timeout < Duration::from_millis(100) {
            return err("idle_timeout", "must be at least 100ms");
        }
        if self.body_timeout < Duration::from_millis(100) {
            return err("body_timeout", "must be at least 100ms");
        }
        Ok(())
    }
}

/// Raises this process's soft open-file limit to its hard limit and returns the soft limit now
/// in force (what the connection cap must fit). On failure the current limit is returned.
pub fn raise_open_file_limit() -> u64 {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else { return 1024 };
    if soft < hard && setrlimit(Resource::RLIMIT_NOFILE, hard, hard).is_ok() {
        tracing::info!(from = soft, to = hard, "open-file limit raised");
        return hard;
    }
    soft
}

/// What a listener has seen, for `/metrics`.
#[derive(Debug, Default)]
pub struct ServerStats {
    pub open: AtomicU64,
    pub accepted: AtomicU64,
    /// Closed at once because `max_connections` were open.
    pub refused: AtomicU64,
    /// Accept failures (out of file handles, mostly).
    pub accept_errors: AtomicU64,
    /// Closed for a stalled head, body or reader.
    pub timed_out: AtomicU64,
    /// TLS handshakes that failed (untrusted or expired certificate at the client, old
    /// protocol versions, plain HTTP sent to an HTTPS port).
    pub tls_failures: AtomicU64,
}

/// Serves `service` on `listener` until `shutdown` fires, then lets open connections finish
/// for up to [`SHUTDOWN_GRACE`]. Returns when every connection task has ended.
pub async fn serve<S, B>(
    listener: TcpListener,
    tls: Option<ServerTls>,
    service: S,
    limits: ServerLimits,
    stats: Arc<ServerStats>,
    shutdown: CancellationToken,
) where
    S: Service<Request<TimedBody>, Response = Response<B>> + Clone + Send + Sync + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    let connections = TaskTracker::new();
    // Fired after the shutdown grace: every connection still open is dropped.
    let force = CancellationToken::new();
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let mut backoff = AcceptBackoff::default();
    let mut refusals = RateLimitedLog::new("connection refused: max_connections are open");
    if let Some(tls) = &tls {
        tokio::spawn(tls.clone().watch(shutdown.clone()));
    }
    let handshake_failures = Arc::new(std::sync::Mutex::new(RateLimitedLog::new("TLS handshake failed")));
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let stream = match accepted {
            Ok((stream, _)) => {
                backoff.reset();
                stream
            }
            Err(e) => {
                stats.accept_errors.fetch_add(1, Ordering::Relaxed);
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = backoff.wait(&e) => continue,
                }
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            stats.refused.fetch_add(1, Ordering::Relaxed);
            refusals.note(limits.max_connections);
            drop(stream);
            continue;
        };
        stats.accepted.fetch_add(1, Ordering::Relaxed);
        let _ = stream.set_nodelay(true);
        let (service, limits, stats, shutdown) = (service.clone(), limits.clone(), stats.clone(), shutdown.clone());
        let (force, tls, handshake_failures) = (force.clone(), tls.clone(), handshake_failures.clone());
        connections.spawn(async move {
            stats.open.fetch_add(1, Ordering::Relaxed);
            let activity = Arc::new(Activity::new());
            let serving = async {
                match tls {
                    None => {
                        let stream = Watched::new(stream, activity.clone());
                        serve_connection(stream, activity, service, &limits, &stats, shutdown).await
                    }
                    Some(tls) => match handshake(stream, activity.clone(), &tls, limits.idle_timeout).await {
                        Ok(stream) => serve_connection(stream, activity, service, &limits, &stats, shutdown).await,
                        Err(e) => {
                            stats.tls_failures.fetch_add(1, Ordering::Relaxed);
                            handshake_failures.lock().expect("log").note_error(&e);
                        }
                    },
                }
            };
            tokio::select! {
                _ = serving => {}
                _ = force.cancelled() => {}
            }
            stats.open.fetch_sub(1, Ordering::Relaxed);
            drop(slot);
        });
    }
    drop(listener);
    connections.close();
    if tokio::time::timeout(SHUTDOWN_GRACE, connections.wait()).await.is_err() {
        tracing::warn!(open = connections.len(), "connections still open after the shutdown grace; dropped");
        force.cancel();
        connections.wait().await;
    }
}

/// What an axum extractor that buffers a body (`Bytes`, `String`, `Json`) takes at most, unless a
/// route sets its own `DefaultBodyLimit`. Set here explicitly (it is axum's default) so that the
/// 413 can name it.
pub const ROUTER_BODY_LIMIT: usize = 2 << 20;

/// Largest plain-text refusal of axum's that is rewritten as JSON; its own are one line.
const MAX_REJECTION_TEXT: u64 = 4 << 10;

/// [`serve`] for an axum router (the aggregator's API, the collector's metrics).
///
/// axum's own refusals (an extractor's rejection: a body over [`ROUTER_BODY_LIMIT`], a path or
/// query that does not parse) are plain text; they are answered as JSON `{"error": "..."}`
/// here, as every other refusal is, so that a client reading the error of one reads all of them.
pub async fn serve_router(
    listener: TcpListener,
    tls: Option<ServerTls>,
    router: axum::Router,
    limits: ServerLimits,
    stats: Arc<ServerStats>,
    shutdown: CancellationToken,
) {
    use tower_service::Service as _;
    let router = router
        .layer(axum::middleware::map_response(json_rejection))
        .layer(axum::extract::DefaultBodyLimit::max(ROUTER_BODY_LIMIT));
    let service = hyper::service::service_fn(move |req: Request<TimedBody>| {
        // A router is always ready; each request gets its own clone, as axum::serve does.
        router.clone().call(req.map(axum::body::Body::new))
    });
    serve(listener, tls, service, limits, stats, shutdown).await
}

/// A plain-text refusal with a status axum's extractors answer (400, 413, 415, 422) as JSON
/// `{"error": "<the text>"}`; a 413 names [`ROUTER_BODY_LIMIT`]. Anything else is left as it is
/// (a handler's own text answers, such as a collector's 401, are not axum's rejections).
async fn json_rejection(response: axum::response::Response) -> axum::response::Response {
    use axum::http::{header, HeaderValue, StatusCode};
    use hyper::body::Body as _;
    let status = response.status();
    let rejection = matches!(
        status,
        StatusCode::BAD_REQUEST
            | StatusCode::PAYLOAD_TOO_LARGE
            | StatusCode::UNSUPPORTED_MEDIA_TYPE
            | StatusCode::UNPROCESSABLE_ENTITY
    );
    let plain = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim_start().to_ascii_lowercase().starts_with("text/plain"));
    let small = response.body().size_hint().upper().is_some_and(|n| n <= MAX_REJECTION_TEXT);
    if !(rejection && plain && small) {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    let text = match axum::body::to_bytes(body, MAX_REJECTION_TEXT as usize).await {
        Ok(bytes) => String::from_utf8_lossy(&bytes).trim().to_owned(),
        Err(e) => e.to_string(),
    };
    let error = if status == StatusCode::PAYLOAD_TOO_LARGE {
        format!("body over the limit of {ROUTER_BODY_LIMIT} bytes of this endpoint ({text})")
    } else {
        text
    };
    let json = serde_json::json!({ "error": error }).to_string();
    parts.headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    parts.headers.remove(header::CONTENT_LENGTH);
    axum::response::Response::from_parts(parts, axum::body::Body::from(json))
}

/// The TLS handshake, the first byte included, within `limit` of the accept. A client that
/// sends plain HTTP gets a 421 that tells it to use https (not a 400, which a collector would
/// take as a verdict on its DTO), and a closed connection.
async fn handshake(
    mut stream: tokio::net::TcpStream,
    activity: Arc<Activity>,
    tls: &ServerTls,
    limit: Duration,
) -> std::io::Result<tokio_rustls::server::TlsStream<tokio::io::BufReader<Watched<tokio::net::TcpStream>>>> {
    use std::io::{Error, ErrorKind};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::time::timeout_at;
    let deadline = tokio::time::Instant::now() + limit;
    let timed_out = || Error::new(ErrorKind::TimedOut, "no TLS handshake within idle_timeout");
    let mut first = [0u8; 1];
    let peeked = timeout_at(deadline, stream.peek(&mut first)).await.map_err(|_| timed_out())??;
    // 0x16 starts a TLS handshake record; an HTTP method starts with a letter.
    if peeked == 1 && first[0].is_ascii_alphabetic() {
        const REFUSAL: &[u8] = b"HTTP/1.1 421 Misdirected Request\r\nContent-Type: application/json\r\n\
            Content-Length: 61\r\nConnection: close\r\n\r\n\
            {\"error\": \"this port speaks HTTPS only: use an https:// URL\"}";
        let _ = timeout_at(deadline, stream.write_all(REFUSAL)).await;
        let _ = stream.shutdown().await;
        // Closing with the request unread would reset the connection, and the client would see
        // the reset instead of the answer: read (a bounded amount, briefly) what it sends.
        let drain = async {
            let mut sink = [0u8; 16 << 10];
            let mut left = PLAIN_HTTP_DRAIN;
            while left > 0 {
                match stream.read(&mut sink).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => left = left.saturating_sub(n),
                }
            }
        };
        let _ = tokio::time::timeout(Duration::from_secs(2), drain).await;
        return Err(Error::new(ErrorKind::InvalidData, "plain HTTP sent to an HTTPS port"));
    }
    // rustls reads the socket 4 KiB at a time; a buffer of two full records under it makes a
    // megabyte body a few dozen reads instead of hundreds.
    let buffered = tokio::io::BufReader::with_capacity(TLS_READ_BUFFER, Watched::new(stream, activity));
    timeout_at(deadline, tls.acceptor().accept(buffered)).await.map_err(|_| timed_out())?
}

async fn serve_connection<IO, S, B>(
    io: IO,
    activity: Arc<Activity>,
    service: S,
    limits: &ServerLimits,
    stats: &ServerStats,
    shutdown: CancellationToken,
) where
    S: Service<Request<TimedBody>, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let io = TokioIo::new(io);
    let body_timeout = limits.body_timeout;
    let handler = {
        let activity = activity.clone();
        hyper::service::service_fn(move |req: Request<Incoming>| {
            let running = activity.handler_started();
            let expects_continue = expects_continue(&req);
            let call =
                service.call(req.map(|body| TimedBody::new(body, body_timeout).expecting_continue(expects_continue)));
            async move {
                let response = call.await;
                drop(running);
                response
            }
        })
    };
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.idle_timeout)
        .serve_connection(io, handler);
    let mut conn = std::pin::pin!(conn);
    let check = (limits.idle_timeout / 4).max(Duration::from_millis(25));
    let mut stopping = false;
    loop {
        tokio::select! {
            result = conn.as_mut() => {
                if let Err(e) = result {
                    if e.is_timeout() {
                        stats.timed_out.fetch_add(1, Ordering::Relaxed);
                    }
                    tracing::debug!(error = %e, "connection ended");
                }
                return;
            }
            _ = tokio::time::sleep(check) => {
                if activity.stalled(limits.idle_timeout) {
                    stats.timed_out.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!("connection closed: nothing moved for idle_timeout");
                    return;
                }
            }
            _ = shutdown.cancelled(), if !stopping => {
                stopping = true;
                conn.as_mut().graceful_shutdown();
            }
        }
    }
}

/// True when the client waits for `100 Continue` before it sends the body (as hyper reads it:
/// HTTP/1.1 and `Expect: 100-continue`).
fn expects_continue<B>(req: &Request<B>) -> bool {
    req.version() == hyper::Version::HTTP_11
        && req.headers().get(hyper::header::EXPECT).is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"))
}

/// Runs `reload` on the blocking pool at every SIGHUP until `stop` (the token files; the
/// listener's certificate watches SIGHUP on its own). Returns at once if SIGHUP cannot be
/// watched.
pub async fn on_hangup<F>(stop: CancellationToken, reload: F)
where
    F: Fn() + Clone + Send + 'static,
{
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut hangups) = signal(SignalKind::hangup()) else { return };
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = hangups.recv() => {}
        }
        let _ = tokio::task::spawn_blocking(reload.clone()).await;
    }
}

/// Waits between failed accepts: 10 ms doubling to 1 s while they keep failing for want of
/// resources, so a process out of file handles neither spins nor floods its log.
struct AcceptBackoff {
    delay: Duration,
    log: RateLimitedLog,
}

impl Default for AcceptBackoff {
    fn default() -> Self {
        AcceptBackoff { delay: Duration::ZERO, log: RateLimitedLog::new("accept failed") }
    }
}

impl AcceptBackoff {
    const FIRST: Duration = Duration::from_millis(10);
    const MAX: Duration = Duration::from_secs(1);

    fn reset(&mut self) {
        self.delay = Duration::ZERO;
    }

    async fn wait(&mut self, error: &std::io::Error) {
        self.log.note_error(error);
        // A connection reset before it was accepted says nothing about this process.
        if matches!(error.kind(), std::io::ErrorKind::ConnectionAborted | std::io::ErrorKind::ConnectionReset) {
            return;
        }
        self.delay = (self.delay * 2).clamp(Self::FIRST, Self::MAX);
        tokio::time::sleep(self.delay).await;
    }
}

/// A warning logged at most once a second, with the count of the ones it stood for.
struct RateLimitedLog {
    what: &'static str,
    last: Option<Instant>,
    suppressed: u64,
}

impl RateLimitedLog {
    const EVERY: Duration = Duration::from_secs(1);

    fn new(what: &'static str) -> RateLimitedLog {
        RateLimitedLog { what, last: None, suppressed: 0 }
    }

    fn due(&mut self) -> Option<u64> {
        if self.last.is_some_and(|t| t.elapsed() < Self::EVERY) {
            self.suppressed += 1;
            return None;
        }
        self.last = Some(Instant::now());
        Some(std::mem::take(&mut self.suppressed))
    }

    fn note(&mut self, max_connections: usize) {
        if let Some(also) = self.due() {
            tracing::warn!(max_connections, same_since_last = also, "{}", self.what);
        }
    }

    fn note_error(&mut self, error: &std::io::Error) {
        if let Some(also) = self.due() {
            tracing::warn!(error = %error, same_since_last = also, "{}", self.what);
        }
    }
}

#[cfg(test)]
mod tests;
