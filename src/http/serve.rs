//! Accepting connections. Streams are most of what this server holds, and they stay open for
//! hours, so they get a path of their own: the request head of every new connection is read
//! here, and a `GET /v1/stream` is answered through the same router as everything else, but
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
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{Request, Response, StatusCode, Version};
use axum::Router;
use bytes::{Bytes, BytesMut};
use http_body_util::BodyExt;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

use super::tls::Tls;

/// Largest request head read here; larger heads go to hyper (which refuses them properly).
const MAX_HEAD: usize = 16 * 1024;
/// How long a client may take to send its request head.
const HEAD_TIMEOUT: Duration = Duration::from_secs(30);
/// Most headers parsed here (more: hyper handles the request).
const MAX_HEADERS: usize = 48;

/// Serves `router` on `listener` until `shutdown`; then stops accepting, lets hyper finish its
/// connections gracefully and waits for the streams to end (they end by themselves on
/// shutdown, with `closing`), up to `grace`. With `tls`, every connection is TLS (HTTP/2 or
/// HTTP/1.1 by ALPN).
pub async fn serve(
    listener: TcpListener,
    router: Router,
    shutdown: CancellationToken,
    grace: Duration,
    tls: Option<Arc<Tls>>,
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
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY");
        }
        let (router, watcher) = (router.clone(), graceful.watcher());
        match &tls {
            None => {
                streams.spawn(connection(tcp, peer, router, watcher));
            }
            Some(tls) => {
                let acceptor = tls.acceptor();
                streams.spawn(async move {
                    let handshake = tokio::time::timeout(HEAD_TIMEOUT, acceptor.accept(tcp));
                    let tls = match handshake.await {
                        Ok(Ok(tls)) => tls,
                        Ok(Err(e)) => {
                            tracing::debug!(%peer, error = %e, "TLS handshake failed");
                            return;
                        }
                        Err(_) => return,
                    };
                    if tls.get_ref().1.alpn_protocol() == Some(b"h2") {
                        hyper_connection(tls, Bytes::new(), peer, router, watcher).await
                    } else {
                        connection(tls, peer, router, watcher).await
                    }
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
    if tokio::time::timeout(grace, drain).await.is_err() {
        tracing::warn!(
            ?grace,
            "shutdown grace period exceeded; cutting the remaining connections"
        );
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
async fn connection<I: Io>(mut io: I, peer: SocketAddr, router: Router, watcher: Watcher) {
    let first = Box::pin(first_request(&mut io, peer, router.clone())).await;
    let (head, body) = match first {
        First::Answer { head, body } => (head, body),
        First::Other(prefix) => {
            return Box::pin(hyper_connection(io, prefix, peer, router, watcher)).await
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

async fn first_request<I: Io>(io: &mut I, peer: SocketAddr, router: Router) -> First {
    let mut buf = BytesMut::with_capacity(2048);
    let head = tokio::time::timeout(HEAD_TIMEOUT, read_head(io, &mut buf)).await;
    let mut request = match head {
        Ok(Ok(Some(req))) => req,
        Ok(Ok(None)) => return First::Other(buf.freeze()),
        Ok(Err(_)) | Err(_) => return First::Done,
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
/// (`GET /v1/stream…` without a body), `None` for anything else (the bytes stay in `buf`).
async fn read_head<I: Io>(io: &mut I, buf: &mut BytesMut) -> io::Result<Option<Request<Body>>> {
    loop {
        match parse_stream_request(buf) {
            Parsed::Stream(req) => return Ok(Some(*req)),
            Parsed::Other => return Ok(None),
            Parsed::Partial if buf.len() >= MAX_HEAD => return Ok(None),
            Parsed::Partial => {}
        }
        buf.reserve(2048);
        if tokio::io::AsyncReadExt::read_buf(io, buf).await? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
    }
}

enum Parsed {
    Stream(Box<Request<Body>>),
    Other,
    Partial,
}

fn parse_stream_request(buf: &[u8]) -> Parsed {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let len = match req.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Parsed::Partial,
        // Malformed, or more headers than parsed here: hyper answers it.
        Err(_) => return Parsed::Other,
    };
    let (Some("GET"), Some(path), Some(minor)) = (req.method, req.path, req.version) else {
        return Parsed::Other;
    };
    let is_stream = path == "/v1/stream" || path.starts_with("/v1/stream?");
    // A body or an upgrade is not a stream request; anything pipelined after the head
    // (clients do not do that with streams) is left to hyper too.
    let has_body = req.headers.iter().any(|h| {
        h.name.eq_ignore_ascii_case("transfer-encoding")
            || (h.name.eq_ignore_ascii_case("content-length") && h.value != b"0")
            || h.name.eq_ignore_ascii_case("upgrade")
    });
    if !is_stream || has_body || len != buf.len() {
        return Parsed::Other;
    }
    let mut builder = Request::builder()
        .method("GET")
        .uri(path)
        .version(if minor == 0 {
            Version::HTTP_10
        } else {
            Version::HTTP_11
        });
    for h in req.headers.iter() {
        builder = builder.header(h.name, h.value);
    }
    match builder.body(Body::empty()) {
        Ok(r) => Parsed::Stream(Box::new(r)),
        // A header name or value `http` refuses: hyper answers with the proper error.
        Err(_) => Parsed::Other,
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
/// the bytes this module already read put back in front.
async fn hyper_connection<I: Io>(
    io: I,
    prefix: Bytes,
    peer: SocketAddr,
    router: Router,
    watcher: Watcher,
) {
    let service = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
        let mut req = req.map(Body::new);
        req.extensions_mut().insert(ConnectInfo(peer));
        let router = router.clone();
        async move { Ok::<_, Infallible>(router.oneshot(req).await.unwrap_or_else(|e| match e {})) }
    });
    let io = TokioIo::new(Prefixed { prefix, inner: io });
    let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    let conn = builder
        .serve_connection_with_upgrades(io, service)
        .into_owned();
    if let Err(e) = watcher.watch(conn).await {
        tracing::debug!(%peer, error = %e, "connection ended with an error");
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
