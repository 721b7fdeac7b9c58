//! The request head parser of the accept loop ([`super::serve`]): it recognises a stream
//! request (`GET /v1/stream…` or the Mercure hub's `GET /.well-known/mercure…`, no body,
//! nothing pipelined after it) in the first bytes of a
//! connection, so the stream can be served without hyper. Anything else — another request,
//! a malformed head, a body, more headers than parsed here — is [`Head::Other`] and goes to
//! hyper with the bytes already read, so hyper's parser decides every request this one does
//! not take. What this parser does take, hyper would take identically (same method, target
//! and headers): `tests/head_parser.rs` checks that on generated input, and the fuzz target
//! `head` checks that nothing panics.

use axum::body::Body;
use axum::http::{Request, Version};

/// The native stream's path.
const STREAM_PATH: &str = "/v1/stream";
/// The Mercure hub's subscription path (its subscriptions API is not a stream).
const MERCURE_PATH: &str = "/.well-known/mercure";

/// Largest request head read by the accept loop; larger heads go to hyper (which refuses
/// them properly).
pub const MAX_HEAD: usize = 16 * 1024;
/// Most headers parsed here (more: hyper handles the request).
pub const MAX_HEADERS: usize = 48;

/// What the first bytes of a connection hold.
#[derive(Debug)]
pub enum Head {
    /// A complete stream request and nothing after it.
    Stream(Box<Request<Body>>),
    /// Anything else: for hyper.
    Other,
    /// Not a complete head yet: read more (up to [`MAX_HEAD`]).
    Partial,
}

/// Parses the bytes read so far from a new connection.
pub fn parse(buf: &[u8]) -> Head {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let len = match req.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Head::Partial,
        // Malformed, or more headers than parsed here: hyper answers it.
        Err(_) => return Head::Other,
    };
    let (Some("GET"), Some(path), Some(minor)) = (req.method, req.path, req.version) else {
        return Head::Other;
    };
    let is_stream = [STREAM_PATH, MERCURE_PATH].iter().any(|p| {
        path.strip_prefix(p)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('?'))
    });
    // A body or an upgrade is not a stream request; anything pipelined after the head
    // (clients do not do that with streams) is left to hyper too, and so is a repeated
    // `Content-Length` (hyper keeps one of equal ones and refuses different ones).
    let has_body = req.headers.iter().any(|h| {
        h.name.eq_ignore_ascii_case("transfer-encoding")
            || (h.name.eq_ignore_ascii_case("content-length") && h.value != b"0")
            || h.name.eq_ignore_ascii_case("upgrade")
    });
    let lengths = req
        .headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("content-length"))
        .count();
    if !is_stream || has_body || lengths > 1 || len != buf.len() {
        return Head::Other;
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
        Ok(r) => Head::Stream(Box::new(r)),
        // A header name or value `http` refuses: hyper answers with the proper error.
        Err(_) => Head::Other,
    }
}
