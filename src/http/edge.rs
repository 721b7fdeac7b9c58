//! Checks every request passes before a handler sees it, whichever path brought it (the
//! accept loop's own stream path or hyper): HTTP framing this server will not guess about,
//! and cross-site request forgery. Also the one way handlers read a request body (a size
//! limit, a deadline, and a refusal that says which of them failed).
//!
//! - An HTTP/1.1 request must carry exactly one `Host` (RFC 9112 §3.2): else
//!   `400 invalid_host`.
//! - `Transfer-Encoding` other than a single `chunked` (e.g. `gzip, chunked`, which would
//!   hand the handler undecoded bytes): `501 unsupported_transfer_encoding`.
//! - A state-changing request (any method but GET, HEAD, OPTIONS) that carries a `Cookie`
//!   and no `Authorization` is authenticated by something the browser sent on its own, so
//!   the browser must show it came from an allowed page: its `Origin` (or, without one, its
//!   `Referer`) must be this server's own origin or one of `cors.allowed_origins` (else
//!   `403 cross_site_request`), and its body must be declared JSON (else
//!   `415 unsupported_media_type`) — a type no cross-site form can send without a CORS
//!   preflight, which unlisted origins fail. Bearer tokens are unaffected.
//! - CORS headers go only to listed origins: tower-http's layer answers every preflight
//!   with the allowed methods and headers; they are removed for an unlisted `Origin`.

use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, HeaderMap, Method, Version};
use axum::middleware::Next;
use axum::response::Response;

use super::{ApiError, AppState};

/// The framing and cross-site checks (see the module docs); every request passes them
/// before the router, in the layer that gives it its id.
pub(super) fn check(state: &AppState, req: &Request) -> Result<(), ApiError> {
    let headers = req.headers();
    let hosts = headers.get_all(header::HOST).iter().count();
    let host_ok = match req.version() {
        Version::HTTP_11 => hosts == 1,
        Version::HTTP_10 | Version::HTTP_09 => hosts <= 1,
        // HTTP/2 and 3 carry the authority in a pseudo-header.
        _ => hosts <= 1,
    };
    if !host_ok {
        return Err(ApiError::bad_request(
            "invalid_host",
            "an HTTP/1.1 request must have exactly one Host header",
        ));
    }
    let codings: Vec<&[u8]> = headers
        .get_all(header::TRANSFER_ENCODING)
        .iter()
        .map(|v| v.as_bytes())
        .collect();
    let only_chunked = match codings.as_slice() {
        [] => true,
        [one] => one.eq_ignore_ascii_case(b"chunked"),
        _ => false,
    };
    if !only_chunked {
        return Err(ApiError::NotImplemented {
            code: "unsupported_transfer_encoding",
            message: "the only transfer coding this server accepts is a single `chunked`".into(),
        });
    }
    let safe = matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS);
    let ambient =
        headers.contains_key(header::COOKIE) && !headers.contains_key(header::AUTHORIZATION);
    if safe || !ambient {
        return Ok(());
    }
    let peer = req
        .extensions()
        .get::<ConnectInfo<std::net::SocketAddr>>()
        .map(|c| c.0);
    let origin = request_origin(headers);
    let allowed = origin
        .as_deref()
        .is_some_and(|o| same_origin(state, peer, headers, o) || listed(state, o));
    if !allowed {
        let shown: String = origin
            .as_deref()
            .unwrap_or("(none)")
            .chars()
            .take(100)
            .collect();
        return Err(ApiError::Forbidden {
            code: "cross_site_request",
            message: format!(
                "a request authenticated by cookie must come from this site or an origin in cors.allowed_origins; it came from {shown:?} (send the token in the Authorization header from other clients)"
            ),
        });
    }
    // The Mercure protocol publishes forms; the origin check above is what its
    // specification asks of cookie-authenticated publishes.
    if !is_json(headers) && req.uri().path() != "/.well-known/mercure" {
        return Err(ApiError::UnsupportedMediaType {
            code: "unsupported_media_type",
            message: "a request authenticated by cookie must send Content-Type: application/json"
                .into(),
        });
    }
    Ok(())
}

/// The `Origin` header, or the origin of the `Referer` (browsers that omit `Origin` send it).
fn request_origin(headers: &HeaderMap) -> Option<String> {
    if let Some(o) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) {
        return Some(o.to_owned());
    }
    let referer = headers.get(header::REFERER)?.to_str().ok()?;
    let (scheme, rest) = referer.split_once("://")?;
    let authority = rest.split(['/', '?', '#']).next()?;
    Some(format!("{scheme}://{authority}"))
}

/// Whether `origin` is the server's own: its authority is the request's `Host` (or, from a
/// trusted proxy, its `X-Forwarded-Host`).
fn same_origin(
    state: &AppState,
    peer: Option<std::net::SocketAddr>,
    headers: &HeaderMap,
    origin: &str,
) -> bool {
    let Some(authority) = origin
        .strip_prefix("https://")
        .or_else(|| origin.strip_prefix("http://"))
    else {
        return false;
    };
    let host = |name| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|h| h.trim().eq_ignore_ascii_case(authority))
    };
    let trusted = peer.is_some_and(|p| {
        state
            .cfg
            .server
            .trusted_proxies
            .iter()
            .any(|c| c.contains(p.ip()))
    });
    host(header::HOST) || (trusted && host(header::HeaderName::from_static("x-forwarded-host")))
}

fn listed(state: &AppState, origin: &str) -> bool {
    state.cfg.cors.allowed_origins.iter().any(|o| o == origin)
}

fn is_json(headers: &HeaderMap) -> bool {
    let Some(ct) = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let essence = ct
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"))
}

/// Removes the CORS headers of a response to an `Origin` that `cors.allowed_origins` does
/// not list (`*` lists every origin).
pub(super) async fn cors_only_listed(
    State(state): State<Arc<AppState>>,
    req: Request,
    next: Next,
) -> Response {
    let unlisted = req
        .headers()
        .get(header::ORIGIN)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|o| {
            !state.cfg.cors.allowed_origins.iter().any(|a| a == "*") && !listed(&state, o)
        });
    let mut response = next.run(req).await;
    if unlisted {
        let names: Vec<header::HeaderName> = response
            .headers()
            .keys()
            .filter(|k| k.as_str().starts_with("access-control-"))
            .cloned()
            .collect();
        for name in names {
            response.headers_mut().remove(name);
        }
    }
    response
}

/// Reads a whole request body: at most `limit` bytes, within `server.body_timeout_ms`. The
/// refusal says which: `413 body_too_large`, `408 body_timeout`, or `400 malformed_body`
/// (bad chunked framing, a body shorter than its `Content-Length`, a connection closed
/// mid-body).
pub(super) async fn read_body(
    state: &AppState,
    body: Body,
    limit: usize,
) -> Result<Bytes, ApiError> {
    let deadline = Duration::from_millis(state.cfg.server.body_timeout_ms);
    let mut read = std::pin::pin!(to_bytes(body, limit));
    // A body that has arrived whole (most do, with their head) needs no timer.
    let read = match futures::poll!(read.as_mut()) {
        std::task::Poll::Ready(done) => Ok(done),
        std::task::Poll::Pending => tokio::time::timeout(deadline, read).await,
    };
    match read {
        Ok(Ok(bytes)) => Ok(bytes),
        Err(_) => {
            state.metrics.timed_out("body");
            Err(ApiError::Timeout {
                code: "body_timeout",
                message: format!(
                    "the request body did not arrive within {} ms (server.body_timeout_ms)",
                    deadline.as_millis()
                ),
            })
        }
        Ok(Err(e)) => {
            let boxed = e.into_inner();
            let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(boxed.as_ref());
            while let Some(c) = cause {
                if c.is::<http_body_util::LengthLimitError>() {
                    return Err(ApiError::TooLarge {
                        code: "body_too_large",
                        message: format!("the request body is larger than {limit} bytes"),
                    });
                }
                cause = c.source();
            }
            Err(ApiError::bad_request(
                "malformed_body",
                format!("the request body could not be read: {boxed}"),
            ))
        }
    }
}

/// The body's data, at most `limit` bytes, as `axum::body::to_bytes` reads it (the same
/// errors), without its buffer list when the body comes in one piece.
async fn to_bytes(body: Body, limit: usize) -> Result<Bytes, axum::Error> {
    use http_body_util::BodyExt;
    let mut body = http_body_util::Limited::new(body, limit);
    let mut first: Option<Bytes> = None;
    let mut all: Option<bytes::BytesMut> = None;
    while let Some(frame) = body.frame().await {
        let Ok(data) = frame.map_err(axum::Error::new)?.into_data() else {
            continue; // trailers
        };
        if data.is_empty() {
            continue;
        }
        match (&mut all, first.take()) {
            (Some(all), _) => all.extend_from_slice(&data),
            (None, None) => first = Some(data),
            (None, Some(earlier)) => {
                let mut joined = bytes::BytesMut::with_capacity(earlier.len() + data.len());
                joined.extend_from_slice(&earlier);
                joined.extend_from_slice(&data);
                all = Some(joined);
            }
        }
    }
    Ok(match all {
        Some(all) => all.freeze(),
        None => first.unwrap_or_default(),
    })
}
