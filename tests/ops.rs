//! Operating it: TLS with HTTP/2 by ALPN (and certificate reload), the drain (SIGTERM: not
//! ready first, `closing` spread over the window, exit 0, clients resume on another node with
//! no loss), request ids and JSON logs.

mod common;
mod engines;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

const T: Duration = Duration::from_secs(30);

/// A self-signed certificate for `localhost` / 127.0.0.1 (openssl), returns (cert, key).
fn self_signed(dir: &Path, name: &str) -> (String, String) {
    let (cert, key) = (
        dir.join(format!("{name}.crt")),
        dir.join(format!("{name}.key")),
    );
    let status = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
        ])
        .args(["-nodes", "-days", "2", "-subj", &format!("/CN={name}")])
        .args(["-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"])
        // A leaf, not a CA: the client trusts it directly.
        .args(["-addext", "basicConstraints=critical,CA:FALSE"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("openssl");
    assert!(
        status.status.success(),
        "{}",
        String::from_utf8_lossy(&status.stderr)
    );
    (
        cert.to_string_lossy().into_owned(),
        key.to_string_lossy().into_owned(),
    )
}

fn tls_client(cert_pem: &[u8]) -> reqwest::Client {
    reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(cert_pem).unwrap())
        .pool_max_idle_per_host(0)
        .build()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_http2_delivers_a_stream_and_reloads_the_certificate_on_sighup() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = self_signed(dir.path(), "first");
    let server = Server::start(&[
        ("SERVER__TLS_CERT_FILE", &cert),
        ("SERVER__TLS_KEY_FILE", &key),
    ]);
    let https = server
        .url
        .replace("http://", "https://")
        .replace("127.0.0.1", "localhost");
    let client = tls_client(&std::fs::read(&cert).unwrap());
    let sub = token("u", &["c"], &[]);

    // A stream over HTTP/2 (ALPN h2).
    let res = client
        .get(format!("{https}/v1/stream?channel=c"))
        .bearer_auth(&sub)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.version(), reqwest::Version::HTTP_2);
    use eventsource_stream::Eventsource;
    use futures::StreamExt;
    let mut events = res.bytes_stream().eventsource();
    let connected = events.next().await.unwrap().unwrap();
    assert_eq!(connected.event, "connected");
    let res = client
        .post(format!("{https}/v1/publish"))
        .bearer_auth(publisher())
        .json(&json!({"channel": "c", "type": "t", "data": {"n": 1}}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.version(), reqwest::Version::HTTP_2);
    let id = res.json::<Value>().await.unwrap()["ids"][0]
        .as_str()
        .unwrap()
        .to_owned();
    let event = tokio::time::timeout(T, events.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(
        (event.id.as_str(), event.event.as_str()),
        (id.as_str(), "t")
    );

    // HTTP/1.1 over TLS still works (the stream path of HTTP/1.1).
    let h1 = reqwest::Client::builder()
        .add_root_certificate(
            reqwest::Certificate::from_pem(&std::fs::read(&cert).unwrap()).unwrap(),
        )
        .http1_only()
        .build()
        .unwrap();
    let res = h1
        .get(format!("{https}/v1/stream?channel=c"))
        .bearer_auth(&sub)
        .send()
        .await
        .unwrap();
    assert_eq!(
        (res.status().as_u16(), res.version()),
        (200, reqwest::Version::HTTP_11)
    );

    // A renewed certificate: written over the files, SIGHUP → new connections get it.
    let (cert2, key2) = self_signed(dir.path(), "second");
    std::fs::copy(&cert2, &cert).unwrap();
    std::fs::copy(&key2, &key).unwrap();
    let status = Command::new("kill")
        .args(["-HUP", &server.pid().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let new_client = tls_client(&std::fs::read(&cert2).unwrap());
    let deadline = Instant::now() + T;
    loop {
        let ok = new_client
            .get(format!("{https}/healthz"))
            .send()
            .await
            .is_ok();
        if ok {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the new certificate was never served"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(server.log_text().contains("TLS certificate reloaded"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_ids_are_returned_and_logged_as_json() {
    let server = Server::start(&[("SERVER__LOG_FORMAT", "json")]);
    let res = http()
        .get(format!("{}/healthz", server.url))
        .header("x-request-id", "req-abc-123")
        .send()
        .await
        .unwrap();
    assert_eq!(res.headers()["x-request-id"], "req-abc-123");
    let res = http()
        .get(format!("{}/healthz", server.url))
        .send()
        .await
        .unwrap();
    assert_eq!(res.headers()["x-request-id"].len(), 16, "a generated id");
    // A stream's open and close lines are JSON objects naming the user and, on close, the
    // reason, duration and events sent.
    let sub = token("ann", &["c"], &[]);
    let (mut sse, _) = Sse::open(&server.stream_url(&["c"]), &[bearer(&sub)]).await;
    server.publish_many(&publisher(), "c", 2, 2).await;
    sse.take(2, T).await;
    drop(sse);
    let deadline = Instant::now() + T;
    let closed = loop {
        let log = server.log_text();
        let line = log
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .find(|v| v["message"] == "stream closed");
        if let Some(line) = line {
            break line;
        }
        assert!(Instant::now() < deadline, "no JSON close line in:\n{log}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(closed["user"], "ann");
    assert_eq!(closed["reason"], "client_gone");
    assert_eq!(closed["events"], 2);
    assert!(closed["duration_ms"].is_u64());
    let opened = server
        .log_text()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|v| v["message"] == "stream opened")
        .expect("open line");
    assert!(opened["span"]["id"].is_string(), "the request id: {opened}");
}

/// 1,000 streams on node A, a second node B on the same Redis log; SIGTERM to A: `/readyz`
/// fails before the first `closing`, every stream gets `closing` within the window, A exits 0,
/// and each client resumes on B with every event published meanwhile, none twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_closes_streams_over_the_window_after_readiness_drops_and_loses_nothing() {
    const STREAMS: usize = 1_000;
    let redis = engines::redis::start(engines::redis::Persistence::None);
    let url = engines::redis::url(&redis);
    let env = [
        ("LOG__KIND", "redis"),
        ("LOG__URL", url.as_str()),
        ("LOG__STREAM", "drain"),
        ("LIMITS__MAX_CONNECTIONS_PER_USER", "5000"),
        ("LIMITS__CONNECT_BURST_PER_IP", "5000"),
        ("SERVER__SHUTDOWN_GRACE_MS", "8000"),
        ("SERVER__DRAIN_WINDOW_MS", "2000"),
        ("LIMITS__PUBLISH_RATE", "0"),
    ];
    let mut a = Server::start(&env);
    let b = Server::start(&env);
    let sub = token("u", &["c"], &[]);
    let p = publisher();

    // Raw streams: many cheap SSE connections (a reqwest client each would be heavier).
    let mut streams = Vec::with_capacity(STREAMS);
    for _ in 0..STREAMS {
        streams.push(RawStream::open(&a.url, &sub).await);
    }
    let before = a.publish_many(&p, "c", 5, 5).await;
    for s in &mut streams {
        s.read_until(|text| text.contains(&format!("id: {}\n", before[4])))
            .await;
    }

    // Readiness is watched from now on; the first closing's arrival is compared with it.
    let ready_url = format!("{}/readyz", a.url);
    let watcher = tokio::spawn(async move {
        loop {
            match http().get(&ready_url).send().await {
                Ok(r) if r.status() == 200 => {}
                _ => return Instant::now(),
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    });
    let sigterm_at = Instant::now();
    a.sigterm();
    let not_ready_at = watcher.await.unwrap();
    // Publishing goes on through B while A drains.
    let during = b.publish_many(&p, "c", 20, 1).await;

    let mut first_closing = None;
    let mut last_closing = sigterm_at;
    for s in &mut streams {
        s.read_until(|text| text.contains("event: closing")).await;
        let at = s.closing_at.expect("closing time");
        assert!(s.text.contains("{\"reason\":\"shutdown\"}"));
        first_closing = Some(first_closing.map_or(at, |f: Instant| f.min(at)));
        last_closing = last_closing.max(at);
    }
    let first_closing = first_closing.unwrap();
    assert!(
        not_ready_at <= first_closing,
        "/readyz failed {:?} after the first closing",
        not_ready_at - first_closing
    );
    let spread = last_closing - first_closing;
    println!(
        "drain: not ready after {:?}, closings from {:?} to {:?} after SIGTERM (spread {spread:?})",
        not_ready_at - sigterm_at,
        first_closing - sigterm_at,
        last_closing - sigterm_at
    );
    assert!(
        spread >= Duration::from_millis(1000),
        "closings spread over the window"
    );
    assert!(last_closing - sigterm_at < Duration::from_millis(2000 + 1500));
    let status = loop {
        if let Some(s) = a.child.try_wait().unwrap() {
            break s;
        }
        assert!(
            sigterm_at.elapsed() < Duration::from_secs(9),
            "exit within the grace period"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(status.code(), Some(0), "{}", a.log_text());

    // Every client resumes on B from its last id: exactly the events it missed, in order.
    let last = b.publish_many(&p, "c", 1, 1).await;
    let mut expected: Vec<String> = during.clone();
    expected.extend(last);
    for s in streams.iter().step_by(50) {
        let last_id = s.last_id().expect("an id before closing");
        let seen_before: Vec<&String> = before
            .iter()
            .chain(&during)
            .filter(|id| s.text.contains(&format!("id: {id}\n")))
            .collect();
        let (mut resumed, _) = Sse::open(
            &b.stream_url(&["c"]),
            &[bearer(&sub), last_event_id(&last_id)],
        )
        .await;
        let missing: Vec<String> = before
            .iter()
            .chain(&expected)
            .filter(|id| !seen_before.contains(id))
            .cloned()
            .collect();
        assert_eq!(ids(&resumed.take(missing.len(), T).await), missing);
        resumed.expect_quiet(Duration::from_millis(200)).await;
    }
    a.kill9();
}

/// A bare SSE connection over a raw socket: cheap enough for a thousand in one test.
struct RawStream {
    tcp: tokio::net::TcpStream,
    text: String,
    closing_at: Option<Instant>,
}

impl RawStream {
    async fn open(base: &str, token: &str) -> RawStream {
        use tokio::io::AsyncWriteExt;
        let addr = base.trim_start_matches("http://");
        let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let req = format!(
            "GET /v1/stream?channel=c HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\nAccept: text/event-stream\r\n\r\n"
        );
        tcp.write_all(req.as_bytes()).await.unwrap();
        let mut s = RawStream {
            tcp,
            text: String::new(),
            closing_at: None,
        };
        s.read_until(|t| t.contains("event: connected")).await;
        s
    }

    async fn read_until(&mut self, done: impl Fn(&str) -> bool) {
        use tokio::io::AsyncReadExt;
        let deadline = tokio::time::Instant::now() + T;
        let mut buf = [0u8; 4096];
        while !done(&self.text) {
            let n = tokio::time::timeout_at(deadline, self.tcp.read(&mut buf))
                .await
                .expect("stream data in time")
                .unwrap();
            if n == 0 {
                break;
            }
            self.text.push_str(&String::from_utf8_lossy(&buf[..n]));
            if self.closing_at.is_none() && self.text.contains("event: closing") {
                self.closing_at = Some(Instant::now());
            }
        }
        assert!(done(&self.text), "stream ended early:\n{}", self.text);
    }

    fn last_id(&self) -> Option<String> {
        self.text
            .lines()
            .filter_map(|l| l.strip_prefix("id: "))
            .next_back()
            .map(str::to_owned)
    }
}
