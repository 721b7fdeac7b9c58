//! Helpers for forward_auth.rs, expiry.rs, limits.rs, admin.rs and cors.rs, on top of
//! `common`: an SSE client that sends any headers (an app's session cookie for forward-auth,
//! `Origin`, …) and tells the end of a stream apart from a timeout, plain HTTP calls that
//! return status, headers and JSON, and a check of the JSON error shape.
#![allow(dead_code)]

use std::pin::Pin;
use std::time::Duration;

use eventsource_stream::{Event, Eventsource};
use futures::{Stream, StreamExt};
use reqwest::header::HeaderMap;
use reqwest::Method;
use serde_json::Value;

use crate::common::{http, Ev};

/// What a stream produced next.
#[derive(Debug)]
pub enum Next {
    Event(Ev),
    /// The server ended the response body.
    End,
    Timeout,
}

/// A real SSE client (reqwest streaming body through the WHATWG parser) with free headers.
pub struct Client {
    pub status: u16,
    pub headers: HeaderMap,
    /// The JSON body when the stream was refused (status other than 200), else `Null`.
    pub error: Value,
    events: Pin<Box<dyn Stream<Item = Result<Event, String>> + Send>>,
    last_id: String,
}

/// `Authorization: Bearer <token>` as a header pair.
pub fn bearer(token: &str) -> (&'static str, String) {
    ("authorization", format!("Bearer {token}"))
}

impl Client {
    /// Sends `GET url` with `headers`; a non-200 answer's JSON body lands in `error`.
    pub async fn connect(url: &str, headers: &[(&str, String)]) -> Client {
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
        let resp_headers = res.headers().clone();
        if status != 200 {
            let error = res.json::<Value>().await.unwrap_or(Value::Null);
            return Client {
                status,
                headers: resp_headers,
                error,
                events: Box::pin(futures::stream::empty()),
                last_id,
            };
        }
        let events = res
            .bytes_stream()
            .eventsource()
            .map(|r| r.map_err(|e| e.to_string()));
        Client {
            status,
            headers: resp_headers,
            error: Value::Null,
            events: Box::pin(events),
            last_id,
        }
    }

    /// Connects, checks `200` and the `connected` event; returns the client and the
    /// connected event's data.
    pub async fn open(url: &str, headers: &[(&str, String)]) -> (Client, Value) {
        let mut c = Client::connect(url, headers).await;
        assert_eq!(c.status, 200, "stream refused: {}", c.error);
        let first = c.next_event(Duration::from_secs(10)).await;
        assert_eq!(first.event, "connected", "{first:?}");
        assert!(first.id.is_empty(), "control events carry no id");
        let data = serde_json::from_str(&first.data).expect("connected data is JSON");
        (c, data)
    }

    /// The next event (any kind), the end of the stream, or a timeout.
    pub async fn next(&mut self, timeout: Duration) -> Next {
        match tokio::time::timeout(timeout, self.events.next()).await {
            Err(_) => Next::Timeout,
            Ok(None) => Next::End,
            Ok(Some(Err(e))) => panic!("stream error: {e}"),
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

    /// The next event; panics at the end of the stream or the timeout.
    pub async fn next_event(&mut self, timeout: Duration) -> Ev {
        match self.next(timeout).await {
            Next::Event(e) => e,
            other => panic!("expected an event, got {other:?}"),
        }
    }

    /// Collects `n` delivered events (with an id), skipping control events.
    pub async fn take(&mut self, n: usize, timeout: Duration) -> Vec<Ev> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next(left).await {
                Next::Event(e) if !e.id.is_empty() => out.push(e),
                Next::Event(_) => {}
                other => panic!("got {} of {n} events, then {other:?}", out.len()),
            }
        }
        out
    }

    /// Reads until `event: closing`, checks its reason, then checks the stream ends.
    /// Returns the delivered events (with an id) that came before the closing.
    pub async fn expect_closing(&mut self, reason: &str, timeout: Duration) -> Vec<Ev> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut delivered = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next(left).await {
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

    /// Checks the server ends the stream (no more events) within `timeout`.
    pub async fn expect_end(&mut self, timeout: Duration) {
        match self.next(timeout).await {
            Next::End => {}
            other => panic!("expected the stream to end, got {other:?}"),
        }
    }

    /// Checks nothing but heartbeats (no event at all, and no end) arrives within `wait`.
    pub async fn expect_silence(&mut self, wait: Duration) {
        match self.next(wait).await {
            Next::Timeout => {}
            other => panic!("expected nothing, got {other:?}"),
        }
    }
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
pub async fn metrics_text(server: &crate::common::Server) -> String {
    http()
        .get(format!("{}/metrics", server.url))
        .send()
        .await
        .expect("metrics request")
        .text()
        .await
        .expect("metrics body")
}
