//! Differential test of the accept loop's request head parser, `ssegate::http::head::parse`,
//! against hyper's HTTP/1 server (the parser that decides every request `parse` does not take).
//!
//! A request `parse` takes as a stream is served without hyper, so it must be exactly one
//! hyper would accept and see the same way — method, target, version, headers (names, values,
//! order, count), no body, nothing after it. Any difference is a request-smuggling or desync
//! risk. Each generated input (a request grammar with hostile mutations, see [`hostile`]) is
//! fed, byte for byte, to `parse` and to a real `hyper::server::conn::http1` connection over an
//! in-memory duplex pipe, and so is every prefix of it that `parse` takes as a stream. The
//! reverse direction is checked on well-formed stream requests ([`well_formed`]): `parse`
//! takes each of them, so the first property cannot hold by `parse` refusing everything.

use std::cell::RefCell;
use std::convert::Infallible;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper::body::{Body as HttpBody, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, Version};
use hyper_util::rt::TokioIo;
use proptest::prelude::*;
use proptest::sample::select;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use ssegate::http::head::{self, Head};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Generated inputs with hostile mutations.
const HOSTILE_CASES: u32 = 5_000;
/// Generated well-formed stream requests.
const WELL_FORMED_CASES: u32 = 500;

/// What a server made of a request.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Seen {
    method: String,
    target: String,
    version: Version,
    /// In `HeaderMap` order (what the router sees), lower-case names.
    headers: Vec<(String, Vec<u8>)>,
    /// The body is known to be empty.
    no_body: bool,
}

impl Seen {
    fn of<B: HttpBody>(req: &Request<B>) -> Seen {
        Seen {
            method: req.method().as_str().to_owned(),
            target: req.uri().to_string(),
            version: req.version(),
            headers: req
                .headers()
                .iter()
                .map(|(n, v)| (n.as_str().to_owned(), v.as_bytes().to_vec()))
                .collect(),
            no_body: req.body().is_end_stream(),
        }
    }
}

/// What hyper's HTTP/1 server did with a connection whose client wrote `bytes` and then shut
/// down its write side.
#[derive(Debug)]
struct HyperRun {
    /// Every request hyper handed to the service, in order.
    requests: Vec<Seen>,
    /// Everything hyper wrote back.
    response: Vec<u8>,
    /// The connection ended without an error (no malformed bytes after the requests).
    clean: bool,
}

impl HyperRun {
    /// hyper accepted exactly one request, answered it with the service's 200, and nothing
    /// else.
    fn accepted_one(&self) -> Option<&Seen> {
        let ok = self.response.starts_with(b"HTTP/1.1 200 ")
            || self.response.starts_with(b"HTTP/1.0 200 ");
        let answers = self
            .response
            .windows(9)
            .filter(|w| w == b"HTTP/1.1 " || w == b"HTTP/1.0 ");
        match &self.requests[..] {
            [one] if ok && self.clean && answers.count() == 1 => Some(one),
            _ => None,
        }
    }
}

async fn hyper_sees(bytes: &[u8]) -> HyperRun {
    let (mut client, server) = tokio::io::duplex(bytes.len() + 64 * 1024);
    let seen = Arc::new(Mutex::new(Vec::new()));
    let recorder = seen.clone();
    let service = service_fn(move |req: Request<Incoming>| {
        recorder.lock().unwrap().push(Seen::of(&req));
        async { Ok::<_, Infallible>(Response::new(String::from("ok"))) }
    });
    // Half-close: hyper answers a request even though the client has shut down its write
    // side (by default it closes the connection on that EOF, answer unwritten). Parsing is
    // the same either way.
    let conn = http1::Builder::new()
        .half_close(true)
        .serve_connection(TokioIo::new(server), service);
    let client_side = async {
        client.write_all(bytes).await.unwrap();
        client.shutdown().await.unwrap();
        let mut response = Vec::new();
        // hyper may reset a connection it refuses: what was read so far is the answer.
        let _ = client.read_to_end(&mut response).await;
        response
    };
    let both = async { tokio::join!(conn, client_side) };
    let (conn, response) = tokio::time::timeout(Duration::from_secs(10), both)
        .await
        .unwrap_or_else(|_| panic!("hyper hung on {}", show(bytes)));
    let requests = seen.lock().unwrap().clone();
    HyperRun {
        requests,
        response,
        clean: conn.is_ok(),
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn show(bytes: &[u8]) -> String {
    format!("b\"{}\"", bytes.escape_ascii())
}

/// Generated bytes, shown as a byte string (in proptest's "minimal failing input").
#[derive(Clone)]
struct Input(Vec<u8>);

impl fmt::Debug for Input {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&show(&self.0))
    }
}

/// `parse` took `bytes` as a stream request `taken`: hyper must accept exactly that request.
fn check_stream(rt: &tokio::runtime::Runtime, bytes: &[u8], taken: &Seen) -> Result<(), String> {
    let stream_target = ["/v1/stream", "/.well-known/mercure"].iter().any(|p| {
        taken
            .target
            .strip_prefix(p)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('?'))
    });
    if taken.method != "GET" || !stream_target {
        return Err(format!(
            "parse took {taken:?} as a stream request: {}",
            show(bytes)
        ));
    }
    let run = rt.block_on(hyper_sees(bytes));
    match run.accepted_one() {
        None => Err(format!(
            "parse took a stream request hyper does not accept as exactly one request\n  \
             input: {}\n  parse: {taken:?}\n  hyper: {:?}\n  hyper answered: {}",
            show(bytes),
            run.requests,
            show(&run.response)
        )),
        Some(seen) if seen == taken => Ok(()),
        Some(seen) => Err(format!(
            "parse and hyper see different requests\n  input: {}\n  parse: {taken:?}\n  \
             hyper: {seen:?}",
            show(bytes)
        )),
    }
}

/// The verdict of `parse` on `bytes`, with what it took when it is a stream.
fn verdict(bytes: &[u8]) -> Result<Seen, &'static str> {
    match head::parse(bytes) {
        Head::Stream(req) => Ok(Seen::of(&req)),
        Head::Other => Err("Other"),
        Head::Partial => Err("Partial"),
    }
}

// ---- The grammar. ----
//
// Every part of a request has ordinary forms and hostile ones; each part is hostile in about
// one case out of eight, so that a fair share of the inputs are still stream requests (the
// side where a mismatch matters) and most of the others differ from one in one or two places.

/// One of `items`, uniformly.
fn one_of(items: &[&'static [u8]]) -> impl Strategy<Value = Vec<u8>> + Clone {
    select(items.to_vec()).prop_map(<[u8]>::to_vec)
}

/// One of `ordinary` mostly, one of `hostile` with odds `1 : odds`.
fn mostly(
    odds: u32,
    ordinary: &[&'static [u8]],
    hostile: &[&'static [u8]],
) -> impl Strategy<Value = Vec<u8>> + Clone {
    prop_oneof![odds => one_of(ordinary), 1 => one_of(hostile)]
}

fn method() -> impl Strategy<Value = Vec<u8>> {
    mostly(
        7,
        &[b"GET"],
        &[
            b"get", b"Get", b"HEAD", b"POST", b"CONNECT", b"OPTIONS", b"PRI", b"GETX", b"GE",
            b"G\x00T", b"GET\x7f", b"\xc7ET", b"G(T", b"",
        ],
    )
}

fn target() -> impl Strategy<Value = Vec<u8>> {
    let base = mostly(
        5,
        &[
            b"/v1/stream?channel=a",
            b"/v1/stream?channel=logs:w1:f1&channel=notifications:a",
            b"/v1/stream",
            b"/v1/stream?",
            b"/.well-known/mercure?topic=https%3A%2F%2Fexample.com%2F%7Bid%7D",
        ],
        &[
            b"http://h/v1/stream?channel=a",
            b"http://h/v1/stream",
            b"HTTP://h/v1/stream",
            b"//h/v1/stream",
            b"*",
            b"/v1/streamx",
            b"/v1/stream/",
            b"/v1/stream/../admin",
            b"/V1/stream",
            b"/v1/%73tream",
            b"/v1/stream%3Fchannel=a",
            b"/v1//stream",
            b"/.well-known/mercure/subscriptions",
            b"/.well-known/mercurex",
            b"v1/stream",
            b"",
        ],
    );
    let suffix = mostly(
        4,
        &[
            b"",
            b"",
            b"",
            b"&channel=b",
            b"&x=%41%3a",
            b"&last_event_id=7",
        ],
        &[
            b"%",
            b"%zz",
            b"%0",
            b"?",
            b"#frag",
            b" ",
            b"  x",
            b"\t",
            b"\x00",
            b"\x01",
            b"\x7f",
            b"\x80",
            b"\xff",
            b"\xc3\xa9",
            b"\xe2\x82",
            b"\"",
            b"<>",
            b"{}",
            b"|",
            b"\\",
            b"^`",
        ],
    );
    (base, suffix).prop_map(|(mut b, s)| {
        b.extend_from_slice(&s);
        b
    })
}

fn version() -> impl Strategy<Value = Vec<u8>> {
    mostly(
        6,
        &[b"HTTP/1.1", b"HTTP/1.1", b"HTTP/1.0"],
        &[
            b"HTTP/2.0",
            b"HTTP/1.2",
            b"HTTP/0.9",
            b"HTTP/1.10",
            b"http/1.1",
            b"HTTP/1.1 ",
            b"HTTP/1",
            b"HTTP/11",
            b"HTTP /1.1",
            b"",
        ],
    )
}

fn separator() -> impl Strategy<Value = Vec<u8>> {
    mostly(12, &[b" "], &[b"  ", b"\t", b"", b"\x0b"])
}

fn line_end() -> impl Strategy<Value = Vec<u8>> {
    mostly(
        8,
        &[b"\r\n", b"\r\n", b"\r\n", b"\n"],
        &[b"\r", b"\n\r", b"\r\r\n", b" \r\n"],
    )
}

/// One header field: one line, or two for an obs-fold continuation.
fn header() -> impl Strategy<Value = Vec<Vec<u8>>> {
    let ordinary = one_of(&[
        b"Host: gw.example",
        b"Host: gw.example",
        b"Accept: text/event-stream",
        b"Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.e30.sig",
        b"Last-Event-ID: 42",
        b"User-Agent: curl/8.5.0 (x86_64-pc-linux-gnu)",
        b"Cache-Control: no-cache",
        b"Cookie: a=b; c=d",
        b"Origin: https://app.example",
        b"X-Forwarded-For: 10.0.0.1, 10.0.0.2",
        b"accept-encoding: gzip, br",
        b"Connection: keep-alive",
        b"Connection: close",
    ]);
    let framing = mostly(
        2,
        &[
            b"Content-Length: 0",
            b"content-length: 0",
            b"CONTENT-LENGTH:0",
        ],
        &[
            b"Content-Length: 00",
            b"Content-Length: +0",
            b"Content-Length: -0",
            b"Content-Length: 1",
            b"Content-Length: 0, 0",
            b"Content-Length: 0,0",
            b"Content-Length: 0 ",
            b"Content-Length: \t0",
            b"Content-Length: 0x0",
            b"Content-Length: 18446744073709551616",
            b"Content-Length:",
            b"Transfer-Encoding: chunked",
            b"Transfer-Encoding: gzip, chunked",
            b"Transfer-Encoding: chunked ",
            b"Transfer-Encoding: gzip",
            b"transfer-encoding: Chunked",
            b"Transfer-Encoding:",
            b"Transfer-Encoding : chunked",
            b"Upgrade: websocket",
            b"Upgrade: h2c",
            b"Connection: Upgrade",
            b"Connection: close, keep-alive",
            b"Expect: 100-continue",
            b"HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA",
        ],
    );
    let name = one_of(&[
        b"X-Custom",
        b"Host",
        b"Content-Length",
        b"Transfer-Encoding",
        b"",
        b"X Y",
        b"Host ",
        b"Host\t",
        b" Host",
        b"X\x00",
        b"X\x7f",
        b"\x80",
        b"X-\xff",
        b"X\"",
        b"X/Y",
        b"X@",
        b"X{}",
        b"x_y.z!#$%&'*+-^`|~",
    ]);
    let colon = mostly(3, &[b": ", b":"], &[b":\t", b" : ", b"::", b": \t "]);
    let value = prop_oneof![
        4 => one_of(&[
            b"v", b"", b"  v  ", b"a\x00b", b"a\x7fb", b"\x80\xff", b"caf\xc3\xa9", b"\tv\t",
            b"a\rb", b"a\x0bb", b"a\x0cb", b"v\r", b"0", b"chunked", b"websocket",
            b"a\"b\"", b"a,b", b"\xc3",
        ]),
        1 => proptest::collection::vec(any::<u8>(), 0..6),
    ];
    let odd = (name, colon, value).prop_map(|(mut n, c, v)| {
        n.extend_from_slice(&c);
        n.extend_from_slice(&v);
        vec![n]
    });
    let folded = (
        ordinary.clone(),
        one_of(&[b" folded", b"\tfolded", b"  ", b" Content-Length: 1"]),
    )
        .prop_map(|(first, cont)| vec![first, cont]);
    prop_oneof![
        20 => ordinary.prop_map(|l| vec![l]),
        3 => framing.prop_map(|l| vec![l]),
        2 => odd,
        1 => folded,
    ]
}

/// Bytes a client might send after the head (usually none).
fn after() -> impl Strategy<Value = Vec<u8>> {
    mostly(
        7,
        &[b""],
        &[
            b"\r\n",
            b"\n",
            b"x",
            b"0\r\n\r\n",
            b"GET /v1/stream?channel=b HTTP/1.1\r\nHost: h\r\n\r\n",
            b"POST /v1/publish HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\n\r\n{}",
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
        ],
    )
}

/// A request head with hostile mutations, whole or cut.
fn hostile() -> impl Strategy<Value = Input> {
    let request_line = (method(), separator(), target(), separator(), version());
    let headers = prop_oneof![
        12 => proptest::collection::vec(header(), 0..8),
        // More than `parse` takes, and around that limit.
        1 => proptest::collection::vec(header(), 44..60),
    ];
    // One line ending for all lines, or (one case in ten) one per line.
    let endings = (
        line_end(),
        proptest::bool::weighted(0.1),
        proptest::collection::vec(line_end(), 64),
    );
    let leading = mostly(12, &[b""], &[b"\r\n", b"\n", b" ", b"\r\n\r\n"]);
    // One byte replaced by a few bytes, and a cut anywhere.
    let mutation = proptest::option::weighted(
        0.1,
        (
            any::<prop::sample::Index>(),
            prop_oneof![
                one_of(&[b"\x00", b"\r", b"\n", b" ", b"\t", b":", b"\x7f", b"\x80", b"\xff"]),
                any::<u8>().prop_map(|b| vec![b]),
                Just(Vec::new()),
            ],
        ),
    );
    let cut = proptest::option::weighted(0.1, any::<prop::sample::Index>());
    (
        leading,
        request_line,
        headers,
        endings,
        after(),
        mutation,
        cut,
    )
        .prop_map(
            |(leading, (m, s1, t, s2, v), headers, (eol, mixed, eols), after, mutation, cut)| {
                let mut eols = eols.into_iter().cycle();
                let mut next_eol = || {
                    if mixed {
                        eols.next().unwrap()
                    } else {
                        eol.clone()
                    }
                };
                let mut out = leading;
                for part in [m, s1, t, s2, v] {
                    out.extend_from_slice(&part);
                }
                out.extend_from_slice(&next_eol());
                for line in headers.into_iter().flatten() {
                    out.extend_from_slice(&line);
                    out.extend_from_slice(&next_eol());
                }
                out.extend_from_slice(&next_eol());
                out.extend_from_slice(&after);
                if let Some((at, bytes)) = mutation {
                    let at = at.index(out.len());
                    out.splice(at..=at, bytes);
                }
                if let Some(cut) = cut {
                    out.truncate(cut.index(out.len() + 1));
                }
                Input(out)
            },
        )
}

/// A well-formed stream request with only ordinary headers, no body and nothing after it.
fn well_formed() -> impl Strategy<Value = Input> {
    let channel = "[a-z0-9_-]{1,8}(:[a-z0-9_.@-]{1,8}){0,3}";
    let query = proptest::collection::vec(
        (
            prop_oneof![Just("channel"), Just("last_event_id"), Just("x")],
            channel,
            any::<bool>(),
        ),
        0..4,
    )
    .prop_map(|params| {
        if params.is_empty() {
            return String::new();
        }
        let pairs: Vec<String> = params
            .into_iter()
            .map(|(k, v, escape)| {
                let v = if escape { v.replace(':', "%3A") } else { v };
                format!("{k}={v}")
            })
            .collect();
        format!("?{}", pairs.join("&"))
    });
    let header = prop_oneof![
        Just("Host: gw.example:8080".to_owned()),
        Just("Accept: text/event-stream".to_owned()),
        Just("Cache-Control: no-cache".to_owned()),
        Just("Content-Length: 0".to_owned()),
        "[0-9]{1,12}".prop_map(|id| format!("Last-Event-ID: {id}")),
        "[A-Za-z0-9._-]{10,60}".prop_map(|t| format!("Authorization: Bearer {t}")),
        ("[A-Za-z][A-Za-z0-9-]{0,15}", "[ -~]{0,40}").prop_map(|(n, v)| format!("X-{n}: {v}")),
    ];
    (
        query,
        prop_oneof![Just("HTTP/1.1"), Just("HTTP/1.0")],
        prop_oneof![3 => Just("\r\n"), 1 => Just("\n")],
        proptest::collection::vec(header, 0..12),
    )
        .prop_map(|(query, version, eol, headers)| {
            let mut s = format!("GET /v1/stream{query} {version}{eol}");
            let mut length_seen = false;
            for h in headers {
                // One `Content-Length: 0` at most: a repeated one is not ordinary.
                if h.starts_with("Content-Length") && std::mem::replace(&mut length_seen, true) {
                    continue;
                }
                s.push_str(&h);
                s.push_str(eol);
            }
            s.push_str(eol);
            Input(s.into_bytes())
        })
}

/// `cases` cases, or `PROPTEST_CASES` (for a longer hunt).
fn runner(cases: u32) -> TestRunner {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(cases);
    TestRunner::new(Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    })
}

#[derive(Debug, Default)]
struct Tally {
    inputs: usize,
    /// Inputs or prefixes `parse` took as a stream (each checked against hyper).
    streams: usize,
    /// Whole inputs hyper accepted as one request that `parse` left to hyper (not an error:
    /// `parse` may leave anything to hyper).
    left_to_hyper: usize,
}

#[test]
fn parse_takes_a_stream_only_when_hyper_sees_the_same_request() {
    let rt = runtime();
    let tally = RefCell::new(Tally::default());
    let result = runner(HOSTILE_CASES).run(&hostile(), |Input(bytes)| {
        tally.borrow_mut().inputs += 1;
        // Every prefix, as the accept loop may have read any of them; at most one is a
        // stream (a stream head has nothing after it, so no shorter prefix is one).
        let mut stream_at = None;
        for end in 0..=bytes.len() {
            let prefix = &bytes[..end];
            if let Ok(taken) = verdict(prefix) {
                if let Some(earlier) = stream_at.replace(end) {
                    return Err(TestCaseError::fail(format!(
                        "two prefixes are streams ({earlier} and {end} bytes): {}",
                        show(&bytes)
                    )));
                }
                tally.borrow_mut().streams += 1;
                check_stream(&rt, prefix, &taken).map_err(TestCaseError::fail)?;
            }
        }
        if stream_at != Some(bytes.len())
            && rt.block_on(hyper_sees(&bytes)).accepted_one().is_some()
        {
            tally.borrow_mut().left_to_hyper += 1;
        }
        Ok(())
    });
    let tally = tally.into_inner();
    eprintln!("{tally:?}");
    if let Err(e) = result {
        panic!("{e}");
    }
    // The grammar must reach the interesting side: a fair share of inputs are streams.
    assert!(
        tally.streams * 20 >= tally.inputs,
        "too few stream requests generated: {tally:?}"
    );
}

#[test]
fn parse_takes_every_well_formed_stream_request_as_hyper_sees_it() {
    let rt = runtime();
    let result = runner(WELL_FORMED_CASES).run(&well_formed(), |Input(bytes)| {
        let taken = verdict(&bytes).map_err(|v| {
            TestCaseError::fail(format!(
                "{v} for a well-formed stream request: {}",
                show(&bytes)
            ))
        })?;
        check_stream(&rt, &bytes, &taken).map_err(TestCaseError::fail)?;
        // The accept loop keeps reading on every prefix.
        for end in 0..bytes.len() {
            let v = verdict(&bytes[..end]).map(|_| "Stream");
            if v != Err("Partial") {
                return Err(TestCaseError::fail(format!(
                    "{v:?} for the first {end} bytes of {}",
                    show(&bytes)
                )));
            }
        }
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}");
    }
}

/// A few hand-written inputs, so a failure of the generated ones has an obvious neighbour.
#[test]
fn examples() {
    let rt = runtime();
    let stream: &[&[u8]] = &[
        b"GET /v1/stream?channel=a HTTP/1.1\r\nHost: h\r\n\r\n",
        b"GET /v1/stream HTTP/1.0\r\n\r\n",
        b"GET /v1/stream?channel=a HTTP/1.1\nHost: h\nContent-Length: 0\n\n",
    ];
    for bytes in stream {
        let taken = verdict(bytes).unwrap_or_else(|v| panic!("{v} for {}", show(bytes)));
        assert_eq!(check_stream(&rt, bytes, &taken), Ok(()));
    }
    let other: &[&[u8]] = &[
        b"POST /v1/stream HTTP/1.1\r\n\r\n",
        b"GET /v1/streamx HTTP/1.1\r\n\r\n",
        b"GET http://h/v1/stream HTTP/1.1\r\n\r\n",
        b"GET /v1/stream HTTP/1.1\r\nContent-Length: 1\r\n\r\nx",
        b"GET /v1/stream HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        b"GET /v1/stream HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
        b"GET /v1/stream HTTP/1.1\r\nX: a\r\n b\r\n\r\n",
        b"GET /v1/stream HTTP/1.1\r\n\r\nGET / HTTP/1.1\r\n\r\n",
    ];
    for bytes in other {
        assert!(
            matches!(head::parse(bytes), Head::Other),
            "not Other: {}",
            show(bytes)
        );
    }
}

/// Found by the differential test: a repeated `Content-Length: 0` is shown to the router once
/// by hyper (it keeps one of equal ones) but was passed on twice by `parse`; now `parse`
/// leaves it to hyper.
#[test]
fn repeated_content_length_is_left_to_hyper() {
    let bytes = b"GET /v1/stream HTTP/1.1\r\nContent-Length: 0\r\nContent-Length: 0\r\n\r\n";
    assert!(matches!(head::parse(bytes), Head::Other), "{}", show(bytes));
}
