//! The edge held as an attacker would try it, over raw sockets against the real binary:
//! connections that never finish their head or sit idle cannot exhaust a node (run under a
//! 256-file limit), cookie-authenticated requests from other sites are refused, a publish is
//! limited by the events it expands to, and every refusal of malformed HTTP says what was
//! wrong (400 framing, 408 slow body, 413 size, 400 Host, 501 transfer coding), CORS headers
//! go only to listed origins, and `HEAD /v1/stream` opens nothing.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use reqwest::Method;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::time::{timeout, Instant};

fn addr(server: &Server) -> SocketAddr {
    server.url.strip_prefix("http://").unwrap().parse().unwrap()
}

/// A connection from `from` (any 127.0.0.0/8 address) to the server.
async fn connect_from(server: &Server, from: &str) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(format!("{from}:0").parse().unwrap())?;
    socket.connect(addr(server)).await
}

/// Writes `bytes` (then closes the writing side when `half_close`), and reads the answer until
/// the server closes or a whole response (by `content-length`) arrived. Returns the status and
/// the body as JSON (or `Null`).
async fn exchange(server: &Server, bytes: &[u8], half_close: bool) -> (u16, String, Value) {
    let mut tcp = connect_from(server, "127.0.0.1").await.unwrap();
    tcp.write_all(bytes).await.unwrap();
    if half_close {
        tcp.shutdown().await.unwrap();
    }
    read_response(&mut tcp, Duration::from_secs(15)).await
}

async fn read_response(tcp: &mut TcpStream, within: Duration) -> (u16, String, Value) {
    let mut buf = Vec::new();
    let deadline = Instant::now() + within;
    loop {
        let mut chunk = [0u8; 4096];
        let n = match tokio::time::timeout_at(deadline, tcp.read(&mut chunk)).await {
            Ok(Ok(n)) => n,
            Ok(Err(_)) => 0,
            Err(_) => panic!(
                "no complete response in time; got {:?}",
                String::from_utf8_lossy(&buf)
            ),
        };
        buf.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&buf).into_owned();
        if let Some(end) = text.find("\r\n\r\n") {
            let head = text[..end].to_ascii_lowercase();
            let length = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse::<usize>().ok());
            let body = &text[end + 4..];
            if n == 0 || length.is_some_and(|l| body.len() >= l) {
                let status = text[9..12].parse().unwrap();
                let json = serde_json::from_str(body).unwrap_or(Value::Null);
                return (status, head, json);
            }
        }
        if n == 0 {
            panic!(
                "connection closed without a response: {:?}",
                String::from_utf8_lossy(&buf)
            );
        }
    }
}

fn code(body: &Value) -> &str {
    body["error"]["code"].as_str().unwrap_or("")
}

/// Whether the server closes `tcp` within `within` (reading anything it sends first).
async fn closed_within(tcp: &mut TcpStream, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    let mut chunk = [0u8; 1024];
    loop {
        match tokio::time::timeout_at(deadline, tcp.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
            Err(_) => return false,
        }
    }
}

fn admin() -> String {
    token_with("root", &[], &[], true, 3600)
}

/// Events of channel `c` in the log, read by a long-poll that returns at once.
async fn logged(server: &Server, c: &str) -> usize {
    let sub = token("reader", &["**"], &[]);
    let (status, _, body) = get(
        &format!(
            "{}/v1/poll?channel={c}&last_event_id=0&timeout_ms=0",
            server.url
        ),
        &[bearer(&sub)],
    )
    .await;
    assert_eq!(status, 200, "{body}");
    body["events"].as_array().map_or(0, Vec::len)
}

/// Point 1: the three ways of holding a connection without finishing a request, 260 times
/// from one address, against a node that may open 256 files. Before: new streams closed
/// without a byte and `/healthz` timed out for over a minute. Now the address gets at most
/// half the node's connections, the rest are refused at once with a 503 that says why, the
/// node keeps answering everyone else, and the held connections are cut by the head and
/// idle deadlines.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_holding_connections_cannot_exhaust_a_node() {
    let server = Server::start(&[
        ("TEST_NOFILE", "256"),
        ("SERVER__HEAD_TIMEOUT_MS", "2000"),
        ("SERVER__IDLE_TIMEOUT_MS", "3000"),
    ]);
    let mut held = Vec::new();
    let mut refused = 0;
    for i in 0..260 {
        let mut tcp = connect_from(&server, "127.0.0.2").await.unwrap();
        let sent = match i % 3 {
            // A head that never ends: its first lines only.
            0 => {
                tcp.write_all(b"GET /v1/poll?channel=a HTTP/1.1\r\nHost: x\r\n")
                    .await
            }
            // The 26 bytes of a request line without a version, and nothing more.
            1 => tcp.write_all(b"GET /v1/stream?channel=a\r\n").await,
            // One request, then an idle keep-alive connection.
            _ => {
                tcp.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
                    .await
            }
        };
        if sent.is_err() {
            refused += 1;
            continue;
        }
        held.push((i % 3, tcp));
    }
    // Connections over the cap got a 503 and were closed; the others are held.
    let mut kept = Vec::new();
    for (kind, tcp) in held {
        let mut peek = [0u8; 512];
        match timeout(Duration::from_millis(300), tcp.peek(&mut peek)).await {
            Ok(Ok(n)) if n > 0 && peek[..n].starts_with(b"HTTP/1.1 503") => {
                let text = String::from_utf8_lossy(&peek[..n]).into_owned();
                assert!(
                    text.contains("too_many_open_connections_from_address"),
                    "{text}"
                );
                refused += 1;
            }
            _ => kept.push((kind, tcp)),
        }
    }
    assert!(refused > 0, "one address was allowed all 260 connections");
    assert!(!kept.is_empty());
    // A slow header line now and then keeps the first kind trickling.
    for (kind, tcp) in kept.iter_mut() {
        if *kind == 0 {
            let _ = tcp.write_all(b"X-Slow: 1\r\n").await;
        }
    }

    // Meanwhile everyone else is served: health checks and new streams.
    let (status, _, _) = timeout(
        Duration::from_secs(5),
        get(&format!("{}/healthz", server.url), &[]),
    )
    .await
    .expect("/healthz answers while an address holds connections");
    assert_eq!(status, 200);
    let sub = token("u1", &["edge:*"], &[]);
    let (mut sse, _) = Sse::open(&server.stream_url(&["edge:a"]), &[bearer(&sub)]).await;
    let (status, body) = server
        .publish(&publisher(), &json!({"channel": "edge:a", "data": 1}))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        sse.next_event(Duration::from_secs(10)).await.event,
        "message"
    );

    // The held connections are cut by the deadlines (head: 2 s, idle: 3 s).
    let started = Instant::now();
    for (kind, tcp) in kept.iter_mut() {
        let left = Duration::from_secs(12).saturating_sub(started.elapsed());
        assert!(
            closed_within(tcp, left).await,
            "a connection of kind {kind} was still open after 12 s"
        );
    }
    let metrics = metrics_text(&server).await;
    assert!(
        metric(
            &metrics,
            "ssegate_connections_refused_total{cap=\"per_ip\"}"
        )
        .unwrap()
            > 0.0
    );
    // Both kinds of unfinished head are cut by the head deadline — also the request line
    // without a version, which goes to hyper — and only the keep-alive ones by idleness.
    let unfinished = kept.iter().filter(|(kind, _)| *kind != 2).count() as f64;
    let head = metric(&metrics, "ssegate_timeouts_total{deadline=\"head\"}").unwrap();
    assert!(
        head >= unfinished,
        "{head} head timeouts for {unfinished} unfinished heads"
    );
    assert!(metric(&metrics, "ssegate_timeouts_total{deadline=\"idle\"}").unwrap() > 0.0);
    // Back to normal: the address may connect again.
    let mut again = connect_from(&server, "127.0.0.2").await.unwrap();
    again
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let (status, _, _) = read_response(&mut again, Duration::from_secs(10)).await;
    assert_eq!(status, 200);
}

/// Point 2: a POST authenticated by a cookie is accepted only from an allowed origin and with
/// a JSON body. Before: a cross-site form with an admin's cookie drained the node, and a
/// publisher's cookie published.
#[tokio::test]
async fn cookie_authenticated_posts_from_other_sites_are_refused() {
    let server = Server::start(&[("CORS__ALLOWED_ORIGINS", r#"["https://app.example"]"#)]);
    let own = server.url.clone();
    let pubk = token("p", &[], &["csrf:**"]);
    let cookie = |t: &str| ("cookie", format!("ssegate_token={t}"));
    let post = |path: &str, headers: Vec<(&'static str, String)>, body: &'static str| {
        let url = format!("{}{path}", server.url);
        async move {
            let mut req = http().post(url).body(body);
            for (k, v) in headers {
                req = req.header(k, v);
            }
            let res = req.send().await.unwrap();
            let status = res.status().as_u16();
            (status, res.json::<Value>().await.unwrap_or(Value::Null))
        }
    };
    let event = r#"{"channel":"csrf:a","data":1}"#;

    // The node is not drained by a cross-site form carrying an admin's cookie.
    let (status, body) = post(
        "/v1/admin/drain",
        vec![
            cookie(&admin()),
            ("origin", "https://evil.example".into()),
            ("content-type", "application/x-www-form-urlencoded".into()),
        ],
        "",
    )
    .await;
    assert_error(status, &body, 403, "cross_site_request");
    let (status, _, _) = get(&format!("{}/readyz", server.url), &[]).await;
    assert_eq!(status, 200, "the node was not drained");

    for (headers, want) in [
        // Another site, a form body.
        (
            vec![
                ("origin", "https://evil.example".to_string()),
                ("content-type", "text/plain".into()),
            ],
            (403, "cross_site_request"),
        ),
        // Another site, even with a JSON body.
        (
            vec![
                ("origin", "https://evil.example".to_string()),
                ("content-type", "application/json".into()),
            ],
            (403, "cross_site_request"),
        ),
        // No origin at all: nothing shows it came from an allowed page.
        (
            vec![("content-type", "application/json".to_string())],
            (403, "cross_site_request"),
        ),
        // A referer from another site.
        (
            vec![
                ("referer", "https://evil.example/page".to_string()),
                ("content-type", "application/json".into()),
            ],
            (403, "cross_site_request"),
        ),
        // The server's own origin, but a body a form can send.
        (
            vec![
                ("origin", own.clone()),
                ("content-type", "text/plain".into()),
            ],
            (415, "unsupported_media_type"),
        ),
        (
            vec![
                ("origin", "https://app.example".to_string()),
                ("content-type", "application/x-www-form-urlencoded".into()),
            ],
            (415, "unsupported_media_type"),
        ),
    ] {
        let mut h = headers.clone();
        h.push(cookie(&pubk));
        let (status, body) = post("/v1/publish", h, event).await;
        assert_error(status, &body, want.0, want.1);
    }
    assert_eq!(logged(&server, "csrf:a").await, 0, "nothing was appended");

    // Allowed: the own origin or a listed one, with JSON; and a bearer token from anywhere.
    for headers in [
        vec![
            cookie(&pubk),
            ("origin", own.clone()),
            ("content-type", "application/json".into()),
        ],
        vec![
            cookie(&pubk),
            ("referer", format!("{own}/app/page")),
            ("content-type", "application/json".into()),
        ],
        vec![
            cookie(&pubk),
            ("origin", "https://app.example".into()),
            ("content-type", "application/json; charset=utf-8".into()),
        ],
        vec![
            bearer(&pubk),
            cookie("whatever"),
            ("origin", "https://evil.example".into()),
            ("content-type", "text/plain".into()),
        ],
    ] {
        let (status, body) = post("/v1/publish", headers, event).await;
        assert_eq!(status, 200, "{body}");
    }
    assert_eq!(logged(&server, "csrf:a").await, 4);
}

/// Point 3: an event published to `channels` counts once per channel toward
/// `limits.max_batch_events`. Before: 100,000 channels in one publish appended 100,000 events.
#[tokio::test]
async fn a_publish_is_limited_by_the_events_it_expands_to() {
    let server = Server::start(&[]);
    let pubk = publisher();
    let channels: Vec<String> = (0..1001).map(|i| format!("fan:{i}")).collect();
    let (status, body) = server
        .publish(&pubk, &json!({"channels": channels, "data": 1}))
        .await;
    assert_error(status, &body, 400, "batch_too_large");
    assert!(
        body["error"]["message"].as_str().unwrap().contains("1001"),
        "{body}"
    );
    // Two events of 501 channels each: 1002 in all.
    let half: Vec<String> = (0..501).map(|i| format!("fan:{i}")).collect();
    let (status, body) = server
        .publish(
            &pubk,
            &json!([{"channels": half, "data": 1}, {"channels": half, "data": 2}]),
        )
        .await;
    assert_error(status, &body, 400, "batch_too_large");
    assert_eq!(logged(&server, "fan:0").await, 0, "nothing was appended");
    let (status, body) = server
        .publish(&pubk, &json!({"channels": channels[..1000], "data": 1}))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(published_ids(&body).len(), 1000);
}

fn publish_head(extra: &str) -> String {
    format!(
        "POST /v1/publish HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\n{extra}\r\n",
        publisher()
    )
}

/// Point 5: every body-read error said `413 body_too_large`. Now: malformed framing is 400,
/// a body too slow 408, and only size 413.
#[tokio::test]
async fn body_read_errors_say_what_was_wrong() {
    let server = Server::start(&[
        ("SERVER__BODY_TIMEOUT_MS", "1000"),
        ("LIMITS__MAX_EVENT_BYTES", "1024"),
        ("LIMITS__MAX_BATCH_EVENTS", "2"),
    ]);
    let event = r#"{"channel":"b:a","data":1}"#;
    let cases: Vec<(&str, String, bool, u16, &str)> = vec![
        (
            "malformed chunk size",
            format!(
                "{}zz\r\n{event}\r\n0\r\n\r\n",
                publish_head("Transfer-Encoding: chunked\r\n")
            ),
            false,
            400,
            "malformed_body",
        ),
        (
            "bare LF in a chunk line",
            format!(
                "{}{:x}\n{event}\n0\n\n",
                publish_head("Transfer-Encoding: chunked\r\n"),
                event.len()
            ),
            false,
            400,
            "malformed_body",
        ),
        (
            "body shorter than its Content-Length",
            format!("{}{event}", publish_head("Content-Length: 200\r\n")),
            true,
            400,
            "malformed_body",
        ),
        (
            "body too slow",
            format!("{}{event}", publish_head("Content-Length: 200\r\n")),
            false,
            408,
            "body_timeout",
        ),
        (
            "body too large",
            format!(
                "{}{}",
                publish_head(&format!("Content-Length: {}\r\n", 8000)),
                "x".repeat(8000)
            ),
            false,
            413,
            "body_too_large",
        ),
    ];
    for (what, bytes, half_close, status, want) in cases {
        let (got, _, body) = exchange(&server, bytes.as_bytes(), half_close).await;
        assert_eq!((got, code(&body)), (status, want), "{what}: {body}");
    }
    assert_eq!(logged(&server, "b:a").await, 0, "nothing was appended");
}

/// Point 6: requests this server should not guess about. HTTP/1.1 without or with two
/// `Host` headers (both on the stream path and on hyper's), a transfer coding it does not
/// decode.
#[tokio::test]
async fn ambiguous_requests_are_refused_with_a_reason() {
    let server = Server::start(&[]);
    let sub = token("u1", &["h:*"], &[]);
    for (what, bytes, status, want) in [
        (
            "stream without Host",
            format!("GET /v1/stream?channel=h:a HTTP/1.1\r\nAuthorization: Bearer {sub}\r\n\r\n"),
            400,
            "invalid_host",
        ),
        (
            "stream with two Host headers",
            format!("GET /v1/stream?channel=h:a HTTP/1.1\r\nHost: a\r\nHost: b\r\nAuthorization: Bearer {sub}\r\n\r\n"),
            400,
            "invalid_host",
        ),
        (
            "healthz without Host",
            "GET /healthz HTTP/1.1\r\n\r\n".to_string(),
            400,
            "invalid_host",
        ),
        (
            "publish with two Host headers",
            format!("{}{{}}", publish_head("Host: y\r\nContent-Length: 2\r\n")),
            400,
            "invalid_host",
        ),
        (
            "gzip, chunked",
            format!(
                "{}0\r\n\r\n",
                publish_head("Transfer-Encoding: gzip, chunked\r\n")
            ),
            501,
            "unsupported_transfer_encoding",
        ),
    ] {
        let (got, _, body) = exchange(&server, bytes.as_bytes(), false).await;
        assert_eq!((got, code(&body)), (status, want), "{what}: {body}");
    }
    // HTTP/1.0 needs no Host.
    let (status, _, _) = exchange(&server, b"GET /healthz HTTP/1.0\r\n\r\n", false).await;
    assert_eq!(status, 200);
}

/// Point 6: a preflight from an origin that `cors.allowed_origins` does not list gets no CORS
/// header at all (before: allow-methods, allow-headers and max-age).
#[tokio::test]
async fn cors_headers_go_only_to_listed_origins() {
    let server = Server::start(&[("CORS__ALLOWED_ORIGINS", r#"["https://app.example"]"#)]);
    let preflight = |origin: &'static str| {
        let url = format!("{}/v1/publish", server.url);
        async move {
            http()
                .request(Method::OPTIONS, url)
                .header("origin", origin)
                .header("access-control-request-method", "POST")
                .header("access-control-request-headers", "content-type")
                .send()
                .await
                .unwrap()
        }
    };
    let cors = |res: &reqwest::Response| -> Vec<String> {
        res.headers()
            .keys()
            .map(|k| k.as_str().to_owned())
            .filter(|k| k.starts_with("access-control-"))
            .collect()
    };
    let listed = preflight("https://app.example").await;
    assert!(
        cors(&listed).contains(&"access-control-allow-methods".to_string()),
        "{:?}",
        listed.headers()
    );
    let unlisted = preflight("https://evil.example").await;
    assert_eq!(
        cors(&unlisted),
        Vec::<String>::new(),
        "{:?}",
        unlisted.headers()
    );
    let (_, headers, _) = get(
        &format!("{}/healthz", server.url),
        &[("origin", "https://evil.example".into())],
    )
    .await;
    assert!(!headers
        .keys()
        .any(|k| k.as_str().starts_with("access-control-")));
}

/// Point 6: `HEAD /v1/stream` answers what a `GET` would (status, content type) without
/// opening a stream. Before: it ran the stream handler (a connection registered and counted).
#[tokio::test]
async fn head_on_the_stream_opens_nothing() {
    let server = Server::start(&[("LIMITS__MAX_CONNECTIONS_PER_USER", "1")]);
    let sub = token("u1", &["hd:*"], &[]);
    let url = server.stream_url(&["hd:a"]);
    for _ in 0..3 {
        let res = http()
            .head(&url)
            .header("authorization", format!("Bearer {sub}"))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
        assert!(res.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream"));
    }
    let res = http().head(&url).send().await.unwrap();
    assert_eq!(res.status(), 401, "credentials are checked as for GET");
    let res = http()
        .head(server.stream_url(&["other:a"]))
        .header("authorization", format!("Bearer {sub}"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 403, "grants are checked as for GET");
    let (status, _, body) = call(
        Method::GET,
        &format!("{}/v1/connections", server.url),
        &[bearer(&admin())],
        None,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(body["connections"], json!([]), "no stream is open");
    let metrics = metrics_text(&server).await;
    assert_eq!(
        metric(&metrics, "ssegate_connections_opened_total"),
        Some(0.0),
        "no stream was opened, not even for a moment"
    );
    // The user's one place is free: a real stream opens.
    let (_sse, connected) = Sse::open(&url, &[bearer(&sub)]).await;
    assert_eq!(connected["user"], "u1");
}
