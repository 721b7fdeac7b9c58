//! The accept loop's request head parser (`ssegate::http::head::parse`).
//!
//! Nothing may panic. A request `parse` takes as a stream is served without hyper, so it must
//! be the request hyper's parser (httparse) sees in the same bytes: method `GET`, a
//! `/v1/stream` or `/.well-known/mercure` target (the Mercure hub's subscriptions take the
//! same path), the same version and headers (names equal ignoring case, values byte-equal,
//! same order and count), no body, and nothing after the head — so no shorter prefix of the
//! input is a stream, and no longer input that starts with it is one.
//! `tests/head_parser.rs` compares `parse` with a real hyper connection on generated input.
#![no_main]

use http::Version;
use libfuzzer_sys::fuzz_target;
use ssegate::http::head::{parse, Head};

/// The headers as hyper's `HeaderMap` orders them: grouped by name (ignoring case), the
/// groups in order of first appearance, each group in input order.
fn grouped<'a>(headers: &[httparse::Header<'a>]) -> Vec<(String, &'a [u8])> {
    let mut names: Vec<String> = Vec::new();
    for h in headers {
        let name = h.name.to_ascii_lowercase();
        if !names.contains(&name) {
            names.push(name);
        }
    }
    names
        .iter()
        .flat_map(|name| {
            headers
                .iter()
                .filter(move |h| h.name.eq_ignore_ascii_case(name))
                .map(move |h| (name.clone(), h.value))
        })
        .collect()
}

fn check_stream<B>(data: &[u8], req: &http::Request<B>) {
    assert_eq!(req.method(), "GET", "{data:?}");
    let target = req.uri().to_string();
    // The native stream and the Mercure hub's subscriptions take this path.
    assert!(
        ["/v1/stream", "/.well-known/mercure"].iter().any(|p| target
            .strip_prefix(p)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('?'))),
        "stream target {target:?}"
    );

    // httparse with room for more headers than `parse` takes (hyper allows 100).
    let mut headers = [httparse::EMPTY_HEADER; 128];
    let mut theirs = httparse::Request::new(&mut headers);
    let len = match theirs.parse(data) {
        Ok(httparse::Status::Complete(len)) => len,
        other => panic!("parse took a stream, httparse says {other:?}"),
    };
    assert_eq!(len, data.len(), "bytes after the head of a stream");
    assert_eq!(theirs.method, Some("GET"));
    // hyper makes the URI from httparse's target the same way (`http` drops a `#fragment`).
    let path = theirs.path.expect("a complete head has a target");
    let uri = http::Uri::try_from(path).expect("parse took a target hyper refuses");
    assert_eq!(&uri, req.uri(), "target {path:?}");
    assert_eq!(uri.to_string(), target, "target {path:?}");
    let version = match theirs.version {
        Some(1) => Version::HTTP_11,
        _ => Version::HTTP_10,
    };
    assert_eq!(req.version(), version);

    let ours: Vec<(String, &[u8])> = req
        .headers()
        .iter()
        .map(|(n, v)| (n.as_str().to_owned(), v.as_bytes()))
        .collect();
    assert_eq!(ours.len(), theirs.headers.len(), "header count");
    assert_eq!(ours, grouped(theirs.headers), "headers");

    // No body, no upgrade.
    for (name, value) in &ours {
        assert!(name != "transfer-encoding" && name != "upgrade", "{name}");
        if name == "content-length" {
            assert_eq!(*value, b"0", "content-length of a stream");
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Head::Stream(req) = parse(data) else {
        return;
    };
    check_stream(data, &req);
    // The accept loop reads a head in pieces: none of them is a stream but the whole.
    for end in 0..data.len() {
        assert!(
            !matches!(parse(&data[..end]), Head::Stream(_)),
            "the first {end} bytes of a stream are a stream too"
        );
    }
    // Anything after the head leaves the connection to hyper.
    for more in [&b"x"[..], b"\r\n", b"GET / HTTP/1.1\r\n\r\n"] {
        let longer = [data, more].concat();
        assert!(
            !matches!(parse(&longer), Head::Stream(_)),
            "a stream head followed by {more:?} is a stream"
        );
    }
});
