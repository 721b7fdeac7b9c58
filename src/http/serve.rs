//! Accepting connections. Streams are most of what this server holds, and they stay open for
//! hours, so they get a path of their own: the request head of every new connection is read
//! here, and a `GET /v1/stream` (or a Mercure subscription, `GET /.well-known/mercure`) is
//! answered through the same router as everything else, but
//! its event stream is then written straight to the socket — no HTTP framework buffers kept
//! per connection (hyper keeps a read and a write buffer of 8 KiB or more for each), which is
//! most of the memory an idle stream would otherwise cost. Everything else (publishes, polls,
//! admin, HTTP/2) is handed to hyper with the bytes already read.
//!
//! A stream response is `HTTP/1.1 200` with the router's headers and `Connection: close`: the
//! body is delimited by the end of the connection (no chunked framing, no length), which every
//! SSE client supports. While it streams, the socket is watched for the client going away.

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{Request, Response, StatusCode};
use axum::Router;
use bytes::{Bytes, BytesMut};
use http_body_util::BodyExt;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpListener;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

use super::head::{self, Head, MAX_HEAD};
use super::tls::Tls;
use crate::limits::{SocketCap, SocketLimits, SocketPermit};
use crate::metrics::Metrics;
use crate::throttle::Throttle;

/// How this listener treats its connections.
#[derive(Clone)]
pub struct Options {
    /// The longest graceful shutdown.
    pub grace: Duration,
    /// TLS on every connection (HTTP/2 or HTTP/1.1 by ALPN), or plain TCP.
    pub tls: Option<Arc<Tls>>,
    /// A new connection's TLS handshake and first request head must be done within this.
    pub head_timeout: Duration,
    /// A connection that is not streaming is closed after this long without a request in
    /// progress (keep-alive idleness, and the time a later request's head takes).
    pub idle_timeout: Duration,
    /// Caps on open connections: in all and per address.
    pub sockets: Arc<SocketLimits>,
    pub metrics: Arc<Metrics>,
}

/// Serves `router` on `listener` until `shutdown`; then stops accepting, lets hyper finish its
/// connections gracefully and waits for the streams to end (they end by themselves on
/// shutdown, with `closing`), up to `opts.grace`.
///
/// Every connection counts toward `opts.sockets` from the moment it is accepted until it
/// closes; one over a cap is closed at once (a plain-HTTP listener first writes a `503`
/// saying which cap). Its first head must arrive within `opts.head_timeout`; after that, a
/// connection that is not a stream is closed once it has gone `opts.idle_timeout` without
/// a request in progress.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    shutdown: CancellationToken,
    opts: Options,
) {
    let graceful = GracefulShutdown::new();
    let streams = TaskTracker::new();
    loop {
        let (tcp, peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // Out of file descriptors, typically: wait a little instead of spinning.
                    static THROTTLE: Throttle = Throttle::new(Duration::from_secs(10));
                    if let Some(suppressed) = THROTTLE.allow() {
                        tracing::warn!(error = %e, suppressed, "accept failed");
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let permit = match opts.sockets.admit(peer.ip()) {
            Ok(permit) => Admitted::new(permit, &opts.metrics),
            Err(cap) => {
                refuse(tcp, cap, opts.tls.is_none(), &opts.metrics);
                continue;
            }
        };
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY");
        }
        let (router, watcher, opts) = (router.clone(), graceful.watcher(), opts.clone());
        match opts.tls.clone() {
            None => {
                streams.spawn(async move {
                    connection(tcp, peer, router, watcher, &opts, Instant::now()).await;
                    drop(permit);
                });
            }
            Some(tls) => {
                let acceptor = tls.acceptor();
                streams.spawn(async move {
                    let accepted = Instant::now();
                    let handshake = tokio::time::timeout(opts.head_timeout, acceptor.accept(tcp));
                    let tls = match handshake.await {
                        Ok(Ok(tls)) => tls,
                        Ok(Err(e)) => {
                            tracing::debug!(%peer, error = %e, "TLS handshake failed");
                            return;
                        }
                        Err(_) => {
                            opts.metrics.timed_out("head");
                            return;
                        }
                    };
                    if tls.get_ref().1.alpn_protocol() == Some(b"h2") {
                        hyper_connection(tls, Bytes::new(), peer, router, watcher, &opts, accepted)
                            .await
                    } else {
                        connection(tls, peer, router, watcher, &opts, accepted).await
                    }
                    drop(permit);
                });
            }
        }
    }
    drop(listener);
    streams.close();
    let drain = async {
        graceful.shutdown().await;
        streams.wait().await;
    };
    if tokio::time::timeout(opts.grace, drain).await.is_err() {
        tracing::warn!(
            grace = ?opts.grace,
            "shutdown grace period exceeded; cutting the remaining connections"
        );
    }
}

/// A connection's place under the caps, shown in `ssegate_open_connections`.
struct Admitted {
    _permit: SocketPermit,
    metrics: Arc<Metrics>,
}

impl Admitted {
    fn new(permit: SocketPermit, metrics: &Arc<Metrics>) -> Self {
        metrics.open_connections.inc();
        Self {
            _permit: permit,
            metrics: metrics.clone(),
        }
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        self.metrics.open_connections.dec();
    }
}

/// Closes a connection over a cap. On plain HTTP it is first told why, in a `503` written
/// without waiting (if the socket cannot take it at once, it is closed without a word).
fn refuse(tcp: tokio::net::TcpStream, cap: SocketCap, plain: bool, metrics: &Metrics) {
    metrics
        .connections_refused
        .get_or_create(&vec![("cap", cap.label())])
        .inc();
    static THROTTLE: Throttle = Throttle::new(Duration::from_secs(10));
    if let Some(suppressed) = THROTTLE.allow() {
        tracing::warn!(
            cap = cap.label(),
            suppressed,
            "connection over a cap closed at accept"
        );
    }
    if plain {
        let (code, message) = match cap {
            SocketCap::Total => (
                "server_full",
                "this server holds as many connections as it can; retry later",
            ),
            SocketCap::PerIp => (
                "too_many_open_connections_from_address",
                "your address holds too many open connections; close some and retry",
            ),
        };
        let body = format!(r#"{{"error":{{"code":"{code}","message":"{message}"}}}}"#);
        let answer = format!(
            "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 5\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        );
        let _ = tcp.try_write(answer.as_bytes());
    }
}

/// What a connection runs on: TCP, or TLS over TCP.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send + 'static {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> Io for T {}

/// One accepted connection: a stream is served here, anything else by hyper.
///
/// The future of a stream connection lives as long as the stream, so what only the first
/// steps need (the head buffer, the router call, hyper's connection) is boxed and freed once
/// done: what stays is the socket, the body and the pump.
async fn connection<I: Io>(
    mut io: I,
    peer: SocketAddr,
    router: Router,
    watcher: Watcher,
    opts: &Options,
    accepted: Instant,
) {
    let first = Box::pin(first_request(&mut io, peer, router.clone(), opts)).await;
    let (head, body) = match first {
        First::Answer { head, body } => (head, body),
        First::Other(prefix) => {
            return Box::pin(hyper_connection(
                io, prefix, peer, router, watcher, opts, accepted,
            ))
            .await
        }
        First::Done => return,
    };
    // A stream is not one of hyper's connections: it ends on shutdown by itself.
    drop(watcher);
    let result = async {
        io.write_all(&head).await?;
        drop(head);
        match body {
            Some(body) => pump(io, body).await,
            None => io.shutdown().await,
        }
    }
    .await;
    if let Err(e) = result {
        tracing::debug!(%peer, error = %e, "stream connection ended");
    }
}

enum First {
    /// A stream request was answered: the response head (with the whole body when it is
    /// not an event stream) and the event stream to pump.
    Answer { head: Bytes, body: Option<Body> },
    /// Not a stream request: these bytes were read and are for hyper.
    Other(Bytes),
    /// The client went away (or never sent a request in time).
    Done,
}

async fn first_request<I: Io>(
    io: &mut I,
    peer: SocketAddr,
    router: Router,
    opts: &Options,
) -> First {
    let mut buf = BytesMut::with_capacity(2048);
    let head = tokio::time::timeout(opts.head_timeout, read_head(io, &mut buf)).await;
    let mut request = match head {
        Ok(Ok(Some(req))) => req,
        Ok(Ok(None)) => return First::Other(buf.freeze()),
        Ok(Err(_)) => return First::Done,
        Err(_) => {
            opts.metrics.timed_out("head");
            tracing::debug!(%peer, "request head not received in time; connection closed");
            return First::Done;
        }
    };
    drop(buf);
    request.extensions_mut().insert(ConnectInfo(peer));
    let response = match router.oneshot(request).await {
        Ok(r) => r,
        Err(e) => match e {},
    };
    match response_head(response) {
        (head, Ok(body)) => First::Answer {
            head,
            body: Some(body),
        },
        (head, Err(body)) => {
            // Not a stream (a refusal): the whole answer at once, then the connection closes.
            let bytes = body
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            let mut all = BytesMut::from(&head[..head.len() - 2]);
            all.extend_from_slice(format!("content-length: {}\r\n\r\n", bytes.len()).as_bytes());
            all.extend_from_slice(&bytes);
            First::Answer {
                head: all.freeze(),
                body: None,
            }
        }
    }
}

/// Reads until a complete request head is buffered. `Some(request)` for a stream request
/// (`GET /v1/stream…` or `GET /.well-known/mercure…` without a body), `None` for anything else (the bytes stay in `buf`).
async fn read_head<I: Io>(io: &mut I, buf: &mut BytesMut) -> io::Result<Option<Request<Body>>> {
    loop {
        match head::parse(buf) {
            Head::Stream(req) => return Ok(Some(*req)),
            Head::Other => return Ok(None),
            Head::Partial if buf.len() >= MAX_HEAD => return Ok(None),
            Head::Partial => {}
        }
        buf.reserve(2048);
        if tokio::io::AsyncReadExt::read_buf(io, buf).await? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
    }
}

/// The response head as bytes (ending with the blank line), and the body: `Ok` when it is an
/// event stream to pump, `Err` when it is anything else (to be sent with its length).
fn response_head(response: Response<Body>) -> (Bytes, Result<Body, Body>) {
    let (parts, body) = response.into_parts();
    let streaming = parts.status == StatusCode::OK
        && parts
            .headers
            .get(axum::http::header::CONTENT_TYPE)
            .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"));
    let mut head = BytesMut::with_capacity(512);
    head.extend_from_slice(b"HTTP/1.1 ");
    head.extend_from_slice(parts.status.as_str().as_bytes());
    head.extend_from_slice(b" ");
    head.extend_from_slice(
        parts
            .status
            .canonical_reason()
            .unwrap_or("Status")
            .as_bytes(),
    );
    head.extend_from_slice(b"\r\n");
    for (name, value) in &parts.headers {
        if name == axum::http::header::CONNECTION || name == axum::http::header::CONTENT_LENGTH {
            continue;
        }
        head.extend_from_slice(name.as_str().as_bytes());
        head.extend_from_slice(b": ");
        head.extend_from_slice(value.as_bytes());
        head.extend_from_slice(b"\r\n");
    }
    head.extend_from_slice(b"connection: close\r\n\r\n");
    (head.freeze(), if streaming { Ok(body) } else { Err(body) })
}

/// Copies the body's chunks to the connection as they come, and ends when the body ends or the
/// client closes its side (or sends anything: a stream takes no request after it).
async fn pump<I: Io>(io: I, mut body: Body) -> io::Result<()> {
    let (mut rd, mut wr) = tokio::io::split(io);
    let mut probe = [0u8; 16];
    loop {
        tokio::select! {
            biased;
            _ = rd.read(&mut probe) => return Ok(()),
            frame = body.frame() => match frame {
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        wr.write_all(&data).await?;
                    }
                }
                Some(Err(e)) => return Err(io::Error::other(e)),
                None => return wr.shutdown().await,
            }
        }
    }
}

/// Hands a connection to hyper (HTTP/1.1 with keep-alive, or HTTP/2 prior knowledge), with
/// the bytes this module already read put back in front. Until its first request starts, the
/// connection has what is left of `opts.head_timeout` since it was `accepted` (a head this
/// module could not parse, such as a request line without a version, gets no more time in
/// hyper); after that it is closed once it has gone `opts.idle_timeout` without a request in
/// progress, counted from the end of each response, so a slow later head or an idle
/// keep-alive cannot hold it open.
async fn hyper_connection<I: Io>(
    io: I,
    prefix: Bytes,
    peer: SocketAddr,
    router: Router,
    watcher: Watcher,
    opts: &Options,
    accepted: Instant,
) {
    let activity = Arc::new(Activity::new());
    let service = {
        let activity = activity.clone();
        hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
            let mut req = req.map(Body::new);
            req.extensions_mut().insert(ConnectInfo(peer));
            let router = router.clone();
            let busy = Busy::new(&activity);
            async move {
                let response = router.oneshot(req).await.unwrap_or_else(|e| match e {});
                // In progress until hyper has taken the whole body.
                Ok::<_, Infallible>(response.map(|body| Body::new(Tracked { body, _busy: busy })))
            }
        })
    };
    let io = TokioIo::new(Prefixed { prefix, inner: io });
    let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    let conn = builder
        .serve_connection_with_upgrades(io, service)
        .into_owned();
    tokio::select! {
        result = watcher.watch(conn) => if let Err(e) = result {
            tracing::debug!(%peer, error = %e, "connection ended with an error");
        },
        deadline = activity.idle_for(opts.idle_timeout, accepted + opts.head_timeout) => {
            opts.metrics.timed_out(deadline);
            tracing::debug!(%peer, deadline, "connection without a request in time; closed");
        }
    }
}

/// Whether a hyper connection has a request in progress, and since when it has none.
struct Activity {
    started: Instant,
    in_progress: AtomicUsize,
    /// Whether any request has started (until then the head deadline applies).
    any_started: AtomicBool,
    /// Milliseconds after `started` when the last request ended (0: none has).
    idle_since_ms: AtomicU64,
}

impl Activity {
    fn new() -> Self {
        Self {
            started: Instant::now(),
            in_progress: AtomicUsize::new(0),
            any_started: AtomicBool::new(false),
            idle_since_ms: AtomicU64::new(0),
        }
    }

    /// Resolves once no request has been in progress for `limit`.
    /// Resolves once no request has started by `first_deadline` (with `"head"`), or once no
    /// request has been in progress for `limit` after one did (with `"idle"`).
    async fn idle_for(&self, limit: Duration, first_deadline: Instant) -> &'static str {
        loop {
            if self.in_progress.load(Ordering::Acquire) > 0 {
                tokio::time::sleep(limit).await;
                continue;
            }
            let (deadline, which) = if self.any_started.load(Ordering::Acquire) {
                let since = self.started
                    + Duration::from_millis(self.idle_since_ms.load(Ordering::Acquire));
                (since + limit, "idle")
            } else {
                (first_deadline, "head")
            };
            if Instant::now() >= deadline {
                return which;
            }
            tokio::time::sleep_until(deadline).await;
        }
    }
}

/// One request in progress on a hyper connection.
struct Busy(Arc<Activity>);

impl Busy {
    fn new(activity: &Arc<Activity>) -> Self {
        activity.in_progress.fetch_add(1, Ordering::AcqRel);
        activity.any_started.store(true, Ordering::Release);
        Busy(activity.clone())
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        let a = &self.0;
        let now = a.started.elapsed().as_millis() as u64;
        a.idle_since_ms.store(now, Ordering::Release);
        a.in_progress.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A response body that keeps its request in progress until it is dropped.
struct Tracked {
    body: Body,
    _busy: Busy,
}

impl hyper::body::Body for Tracked {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
    }
}

/// A connection whose first bytes were already read: they are read again first.
struct Prefixed<I> {
    prefix: Bytes,
    inner: I,
}

impl<I: Io> AsyncRead for Prefixed<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(out.remaining());
            out.put_slice(&self.prefix.split_to(n));
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, out)
    }
}

impl<I: Io> AsyncWrite for Prefixed<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
