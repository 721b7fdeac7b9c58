//! Test doubles written once: a real `ssegate` server process on a free port, a real SSE
//! client (WHATWG parser from eventsource-stream over reqwest) that sends any headers and
//! tells an event, the end of a stream and a timeout apart, a publisher, plain HTTP calls
//! that return status, headers and JSON, a check of the JSON error shape, and `/metrics`
//! helpers.
#![allow(dead_code)]

pub mod nginx;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use eventsource_stream::{Event, Eventsource};
use futures::{Stream, StreamExt};
use reqwest::header::HeaderMap;
use reqwest::Method;
use serde_json::{json, Value};
use ssegate::auth::{Grants, Minter};
use ssegate::config::AuthConfig;

pub const SECRET: &str = "integration-test-secret-0123456789";

/// A running `ssegate serve` process. Killed when dropped.
pub struct Server {
    pub child: Child,
    pub url: String,
    pub dir: PathBuf,
    /// Keeps the temp dir alive (None when the caller owns the dir).
    _tmp: Option<tempfile::TempDir>,
    env: Vec<(String, String)>,
    /// A config file given with `--config` (kept for restarts).
    config: Option<PathBuf>,
}

impl Server {
    /// A server on a fresh data dir with the file log; `env` pairs are config overrides
    /// without the `SSEGATE_` prefix, e.g. `("LOG__RETENTION_EVENTS", "100")`.
    pub fn start(env: &[(&str, &str)]) -> Server {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().to_owned();
        let mut s = Server::start_in(&dir, env);
        s._tmp = Some(tmp);
        s
    }

    /// A server whose data lives in `dir`.
    pub fn start_in(dir: &Path, env: &[(&str, &str)]) -> Server {
        Server::launch(dir, env, None)
    }

    /// A server started with `--config` on a file holding `toml` (for what environment
    /// variables cannot say, like `[[sources]]`), on a fresh data dir.
    pub fn start_with_config(toml: &str, env: &[(&str, &str)]) -> Server {
        let tmp = tempfile::tempdir().expect("tempdir");
        let path = tmp.path().join("ssegate.toml");
        std::fs::write(&path, toml).expect("config file");
        let mut s = Server::launch(tmp.path(), env, Some(path));
        s._tmp = Some(tmp);
        s
    }

    fn launch(dir: &Path, env: &[(&str, &str)], config: Option<PathBuf>) -> Server {
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (format!("SSEGATE_{k}"), v.to_string()))
            .collect();
        let (child, url) = spawn(dir, &env, config.as_deref());
        Server {
            child,
            url,
            dir: dir.to_owned(),
            _tmp: None,
            env,
            config,
        }
    }

    /// `kill -9`, then start again on the same data dir (new port).
    pub fn kill9_and_restart(&mut self) {
        self.kill9();
        let (child, url) = spawn(&self.dir, &self.env, self.config.as_deref());
        self.child = child;
        self.url = url;
    }

    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn sigterm(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("kill");
        assert!(status.success());
    }

    /// The exit status, once the process has exited by itself.
    pub fn try_exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Resident set size of the server process, in KiB.
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS")
    }

    /// The server's stderr so far (for failure messages).
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default()
    }

    pub fn stream_url(&self, channels: &[&str]) -> String {
        let q: Vec<String> = channels.iter().map(|c| format!("channel={c}")).collect();
        format!("{}/v1/stream?{}", self.url, q.join("&"))
    }

    /// POSTs a publish body; returns status and JSON body.
    pub async fn publish(&self, token: &str, body: &Value) -> (u16, Value) {
        self.publish_raw(token, serde_json::to_vec(body).unwrap())
            .await
    }

    pub async fn publish_raw(&self, token: &str, body: Vec<u8>) -> (u16, Value) {
        let res = http()
            .post(format!("{}/v1/publish", self.url))
            .bearer_auth(token)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .expect("publish request");
        let status = res.status().as_u16();
        let body = res.json::<Value>().await.unwrap_or(Value::Null);
        (status, body)
    }

    /// Publishes `n` events on `channel` in batches of `batch`; returns every id in order.
    pub async fn publish_many(
        &self,
        token: &str,
        channel: &str,
        n: usize,
        batch: usize,
    ) -> Vec<String> {
        let mut ids = Vec::with_capacity(n);
        let mut i = 0;
        while i < n {
            let k = batch.min(n - i);
            let events: Vec<Value> = (i..i + k)
                .map(|j| json!({"channel": channel, "type": "t", "data": {"n": j}}))
                .collect();
            let (status, body) = self.publish(token, &Value::Array(events)).await;
            assert_eq!(status, 200, "publish failed: {body}");
            ids.extend(published_ids(&body));
            i += k;
        }
        ids
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

const NOFILE_KEY: &str = "SSEGATE_TEST_NOFILE";

fn spawn(dir: &Path, env: &[(String, String)], config: Option<&Path>) -> (Child, String) {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("server.log"))
        .expect("server log");
    // `("TEST_NOFILE", "256")` runs the server under that open-file limit (soft and hard).
    let nofile = env.iter().find(|(k, _)| k == NOFILE_KEY).map(|(_, v)| v);
    let env: Vec<&(String, String)> = env.iter().filter(|(k, _)| k != NOFILE_KEY).collect();
    let mut command = match nofile {
        Some(n) => {
            let mut c = Command::new("prlimit");
            c.arg(format!("--nofile={n}:{n}"))
                .arg("--")
                .arg(env!("CARGO_BIN_EXE_ssegate"));
            c
        }
        None => Command::new(env!("CARGO_BIN_EXE_ssegate")),
    };
    command.args(["serve", "--listen", "127.0.0.1:0", "--data-dir"]);
    command.arg(dir.join("data"));
    if let Some(config) = config {
        command.arg("--config").arg(config);
    }
    let mut child = command
        .env("SSEGATE_AUTH__JWT_SECRET", SECRET)
        .env("SSEGATE_SERVER__SHUTDOWN_GRACE_MS", "5000")
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(log)
        .spawn()
        .expect("spawn ssegate");
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut lines = BufReader::new(stdout).lines();
        if let Some(Ok(line)) = lines.next() {
            let _ = tx.send(line);
        }
        // Keep draining so the server never blocks on a full pipe.
        for _ in lines {}
    });
    let line = rx
        .recv_timeout(Duration::from_secs(30))
        .unwrap_or_else(|_| {
            panic!(
                "server did not start; log:\n{}",
                std::fs::read_to_string(dir.join("server.log")).unwrap_or_default()
            )
        });
    let url = line
        .strip_prefix("ssegate listening on ")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .to_owned();
    (child, url)
}

pub fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap()
}

/// Mints a token with the test secret.
pub fn token(sub: &str, subscribe: &[&str], publish: &[&str]) -> String {
    token_with(sub, subscribe, publish, false, 3600)
}

pub fn token_with(
    sub: &str,
    subscribe: &[&str],
    publish: &[&str],
    admin: bool,
    ttl_s: u64,
) -> String {
    let auth = Minter::new(SECRET, &AuthConfig::default());
    let grants = Grants {
        subscribe: subscribe.iter().map(|s| s.to_string()).collect(),
        publish: publish.iter().map(|s| s.to_string()).collect(),
        admin,
        presence: Vec::new(),
    };
    auth.mint(sub, grants, ttl_s).unwrap()
}

/// A token that may also read the presence of channels matching `presence`.
pub fn token_with_presence(sub: &str, subscribe: &[&str], presence: &[&str]) -> String {
    let grants = Grants {
        subscribe: subscribe.iter().map(|s| s.to_string()).collect(),
        presence: presence.iter().map(|s| s.to_string()).collect(),
        ..Grants::default()
    };
    Minter::new(SECRET, &AuthConfig::default())
        .mint(sub, grants, 3600)
        .unwrap()
}

pub fn publisher() -> String {
    token("publisher", &[], &["**"])
}

/// `Authorization: Bearer <token>` as a header pair.
pub fn bearer(token: &str) -> (&'static str, String) {
    ("authorization", format!("Bearer {token}"))
}

/// `Last-Event-ID: <id>` as a header pair (the client's parser starts from this id).
pub fn last_event_id(id: &str) -> (&'static str, String) {
    ("last-event-id", id.to_owned())
}

/// A real SSE client: reqwest streaming body through a WHATWG-conformant parser, with any
/// request headers (bearer token, an app's cookie, `Origin`, `Last-Event-ID`, …).
pub struct Sse {
    pub status: u16,
    pub headers: HeaderMap,
    /// The JSON body when the stream was refused (status other than 200), else `Null`.
    pub error: Value,
    events: Pin<Box<dyn Stream<Item = Result<Event, String>> + Send>>,
    /// The parser's last event id so far (it persists across events, as in a browser).
    last_id: String,
}

/// One dispatched event. `id` is empty when the event carried no `id:` line (control events:
/// the parser's last event id did not change).
#[derive(Debug, Clone)]
pub struct Ev {
    pub id: String,
    pub event: String,
    pub data: String,
}

/// What a stream produced next.
#[derive(Debug)]
pub enum Next {
    Event(Ev),
    /// The server ended the response body.
    End,
    /// The connection broke (e.g. the server process died).
    Broken(String),
    Timeout,
}

impl Sse {
    /// Sends `GET url` with `headers`; a non-200 answer's JSON body lands in `error` (and the
    /// stream then has no events).
    pub async fn connect(url: &str, headers: &[(&str, String)]) -> Sse {
        let mut req = http().get(url);
        let mut last_id = String::new();
        for (k, v) in headers {
            if k.eq_ignore_ascii_case("last-event-id") {
                last_id = v.clone();
            }
            req = req.header(*k, v);
        }
        let res = req.send().await.expect("stream request");
        let status = res.status().as_u16();
        let headers = res.headers().clone();
        if status != 200 {
            let error = res.json::<Value>().await.unwrap_or(Value::Null);
            return Sse {
                status,
                headers,
                error,
                events: Box::pin(futures::stream::empty()),
                last_id,
            };
        }
        let events = res
            .bytes_stream()
            .eventsource()
            .map(|r| r.map_err(|e| e.to_string()));
        Sse {
            status,
            headers,
            error: Value::Null,
            events: Box::pin(events),
            last_id,
        }
    }

    /// Connects, checks `200` and the `connected` event; returns the stream and the
    /// connected event's data.
    pub async fn open(url: &str, headers: &[(&str, String)]) -> (Sse, Value) {
        let mut sse = Sse::connect(url, headers).await;
        assert_eq!(sse.status, 200, "stream refused: {}", sse.error);
        let first = sse.next_event(Duration::from_secs(10)).await;
        assert_eq!(first.event, "connected", "{first:?}");
        assert!(first.id.is_empty(), "control events carry no id");
        let data = serde_json::from_str(&first.data).expect("connected data is JSON");
        (sse, data)
    }

    /// The next event (any kind), the end of the stream, or a timeout.
    pub async fn next_or_end(&mut self, timeout: Duration) -> Next {
        match tokio::time::timeout(timeout, self.events.next()).await {
            Err(_) => Next::Timeout,
            Ok(None) => Next::End,
            Ok(Some(Err(e))) => Next::Broken(e),
            Ok(Some(Ok(e))) => {
                // The parser's last event id persists across events (as in a browser): an
                // event without an `id:` line repeats the previous one.
                let id = if e.id == self.last_id {
                    String::new()
                } else {
                    self.last_id = e.id.clone();
                    e.id
                };
                Next::Event(Ev {
                    id,
                    event: e.event,
                    data: e.data,
                })
            }
        }
    }

    /// The next event (any kind), or None at the timeout or the end of the stream.
    pub async fn next(&mut self, timeout: Duration) -> Option<Ev> {
        match self.next_or_end(timeout).await {
            Next::Event(e) => Some(e),
            Next::End | Next::Timeout => None,
            Next::Broken(e) => panic!("stream error: {e}"),
        }
    }

    /// The next event; panics at the end of the stream or the timeout.
    pub async fn next_event(&mut self, timeout: Duration) -> Ev {
        match self.next_or_end(timeout).await {
            Next::Event(e) => e,
            other => panic!("expected an event, got {other:?}"),
        }
    }

    /// Collects `n` delivered events (those with an id), skipping control events; panics
    /// with what it got if they do not arrive in time.
    pub async fn take(&mut self, n: usize, timeout: Duration) -> Vec<Ev> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next_or_end(left).await {
                Next::Event(e) if !e.id.is_empty() => out.push(e),
                Next::Event(_) => {}
                other => panic!("got {} of {n} events, then {other:?}", out.len()),
            }
        }
        out
    }

    /// Asserts nothing with an id arrives within `wait` (control events and the end of the
    /// stream are fine).
    pub async fn expect_quiet(&mut self, wait: Duration) {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                return;
            }
            match self.next(left).await {
                Some(e) if !e.id.is_empty() => panic!("unexpected event {e:?}"),
                Some(_) => {}
                None => return,
            }
        }
    }

    /// Checks nothing but heartbeats (no event at all, and no end) arrives within `wait`.
    pub async fn expect_silence(&mut self, wait: Duration) {
        match self.next_or_end(wait).await {
            Next::Timeout => {}
            other => panic!("expected nothing, got {other:?}"),
        }
    }

    /// Checks the server ends the stream (no more events) within `timeout`.
    pub async fn expect_end(&mut self, timeout: Duration) {
        match self.next_or_end(timeout).await {
            Next::End => {}
            other => panic!("expected the stream to end, got {other:?}"),
        }
    }

    /// Reads until `event: closing`, checks its reason, then checks the stream ends.
    /// Returns the delivered events (with an id) that came before the closing.
    pub async fn expect_closing(&mut self, reason: &str, timeout: Duration) -> Vec<Ev> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut delivered = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next_or_end(left).await {
                Next::Event(e) if e.event == "closing" => {
                    assert!(e.id.is_empty(), "closing carries no id: {e:?}");
                    let data: Value = serde_json::from_str(&e.data).expect("closing data");
                    assert_eq!(data["reason"], reason, "closing data: {data}");
                    break;
                }
                Next::Event(e) if !e.id.is_empty() => delivered.push(e),
                Next::Event(_) => {}
                other => panic!("expected `closing` ({reason}), got {other:?}"),
            }
        }
        self.expect_end(Duration::from_secs(5)).await;
        delivered
    }
}

/// The `ids` of a successful publish response, in order.
pub fn published_ids(body: &Value) -> Vec<String> {
    body["ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect()
}

pub fn envelope(e: &Ev) -> Value {
    serde_json::from_str(&e.data).expect("envelope is JSON")
}

pub fn ids(events: &[Ev]) -> Vec<String> {
    events.iter().map(|e| e.id.clone()).collect()
}

/// Sends a request; returns status, headers and the JSON body (`Null` when not JSON).
pub async fn call(
    method: Method,
    url: &str,
    headers: &[(&str, String)],
    body: Option<&Value>,
) -> (u16, HeaderMap, Value) {
    let mut req = http().request(method, url);
    for (k, v) in headers {
        req = req.header(*k, v);
    }
    if let Some(b) = body {
        req = req.json(b);
    }
    let res = req.send().await.expect("request");
    let status = res.status().as_u16();
    let headers = res.headers().clone();
    let body = res.json::<Value>().await.unwrap_or(Value::Null);
    (status, headers, body)
}

/// `GET url` with `headers`; returns status, headers and the JSON body.
pub async fn get(url: &str, headers: &[(&str, String)]) -> (u16, HeaderMap, Value) {
    call(Method::GET, url, headers, None).await
}

/// Checks a refusal: the status, and `{"error": {"code": code, "message": "…"}}`.
pub fn assert_error(status: u16, body: &Value, want_status: u16, want_code: &str) {
    assert_eq!(status, want_status, "unexpected status; body: {body}");
    assert_eq!(body["error"]["code"], want_code, "unexpected code: {body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "the error has a message: {body}"
    );
}

/// The `Retry-After` header in seconds; panics when it is missing or not a number.
pub fn retry_after(headers: &HeaderMap) -> u64 {
    headers
        .get("retry-after")
        .expect("a Retry-After header")
        .to_str()
        .unwrap()
        .parse()
        .expect("Retry-After is whole seconds")
}

/// The value of one sample (`name{labels} value`) in Prometheus text.
pub fn metric(text: &str, sample: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(sample)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

/// `GET /metrics` as text.
pub async fn metrics_text(server: &Server) -> String {
    http()
        .get(format!("{}/metrics", server.url))
        .send()
        .await
        .expect("metrics request")
        .text()
        .await
        .expect("metrics body")
}

/// A token with the admin grant.
pub fn admin_token() -> String {
    token_with("admin", &[], &[], true, 3600)
}

/// The `/v1/status` entry of source `name` (`null` when there is none).
pub async fn source_status(server: &Server, name: &str) -> Value {
    let (status, _, body) = get(
        &format!("{}/v1/status", server.url),
        &[bearer(&admin_token())],
    )
    .await;
    assert_eq!(status, 200, "{body}");
    body["sources"]
        .as_array()
        .and_then(|all| all.iter().find(|s| s["name"] == name))
        .cloned()
        .unwrap_or(Value::Null)
}
