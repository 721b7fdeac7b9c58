//! `type = "dapr"`: the gateway as a Dapr pub/sub subscriber. The Dapr sidecar asks
//! `GET /dapr/subscribe` which topics to deliver (one `{pubsubname, topic, route}` per dapr
//! source), then POSTs each message to the source's route, `/dapr/events/{source name}`, as a
//! CloudEvent 1.0 — structured (`Content-Type: application/cloudevents+json`, what the
//! sidecar sends) or binary (`ce-id`, `ce-source`, `ce-type`, `ce-specversion` headers, the
//! body is the data). The CloudEvent's `data` is the record the templates see
//! (`{row.FIELD}`); `{table}` / `{collection}` is the topic.
//!
//! ```toml
//! [[sources]]
//! name = "mastery"
//! type = "dapr"
//! pubsub = "pubsub"                  # the Dapr pub/sub component
//! topic = "mastery-updates"
//! app_api_token = "…"                # the sidecar's APP_API_TOKEN (header dapr-api-token)
//! dead_letter_topic = "mastery-dead" # optional: where Dapr puts DROPped messages
//! append_timeout_ms = 5000           # longest wait for the log before answering RETRY
//! channel = "students:{row.studentId}"
//! event_type = "mastery.updated"
//! ```
//!
//! Answers (what the sidecar acts on):
//! - `200 {"status":"SUCCESS"}` once the event is durably appended — or was already: the
//!   CloudEvent's `source` and `id` make the idempotency key, so a redelivered message
//!   (Dapr is at least once) is appended once within the dedupe window;
//! - `200 {"status":"RETRY"}` when the log does not take the event within
//!   `append_timeout_ms`, `503 {"status":"RETRY"}` while the source is stopped: Dapr
//!   redelivers per its resiliency policy;
//! - `200 {"status":"DROP"}` for a message that can never become an event (not a
//!   CloudEvent 1.0, no `id`, data that is not JSON or text, a channel the templates cannot
//!   build, larger than `limits.max_event_bytes`): counted in `skipped`, logged, and moved to
//!   the dead-letter topic when one is configured;
//! - `401` without the right `dapr-api-token` (Dapr retries; fix the token);
//! - `404` for a route no dapr source has.
//!
//! Every delivery must carry `dapr-api-token` equal to `app_api_token` — otherwise anyone who
//! can reach the gateway could publish — unless `allow_unauthenticated = true` (only when the
//! gateway's port is reachable by the sidecar alone). Raw-payload subscriptions
//! (`rawPayload`) are delivered with a random id per delivery: redeliveries cannot be
//! recognised, so use CloudEvents.

use std::sync::atomic::Ordering;
use std::time::Duration;

use async_trait::async_trait;
use axum::http::HeaderMap;
use base64::Engine;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use super::{BuildSource, Change, Op, Source, SourceContext, SourceError, SourceKind, Sources};
use crate::logfmt::error_chain as chain;
use crate::throttle::Throttle;

/// The settings of a `type = "dapr"` source.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DaprSourceConfig {
    /// The Dapr pub/sub component's name.
    pub pubsub: String,
    pub topic: String,
    /// The token the sidecar sends in `dapr-api-token` (its `APP_API_TOKEN`).
    #[serde(default)]
    pub app_api_token: Option<String>,
    /// Accept deliveries without a token.
    #[serde(default)]
    pub allow_unauthenticated: bool,
    /// Where Dapr moves messages answered with DROP.
    #[serde(default)]
    pub dead_letter_topic: Option<String>,
    /// Longest wait for the log before answering RETRY.
    #[serde(default = "default_append_timeout_ms")]
    pub append_timeout_ms: u64,
}

fn default_append_timeout_ms() -> u64 {
    5_000
}

impl BuildSource for DaprSourceConfig {
    fn validate(&self) -> Result<(), String> {
        if self.pubsub.is_empty() || self.topic.is_empty() {
            return Err("`pubsub` and `topic` must not be empty".into());
        }
        match &self.app_api_token {
            Some(t) if t.len() < 16 => {
                return Err("`app_api_token` must be at least 16 characters".into())
            }
            None if !self.allow_unauthenticated => {
                return Err(
                    "set `app_api_token` (the sidecar's APP_API_TOKEN), or `allow_unauthenticated = true` when only the sidecar can reach the gateway"
                        .into(),
                )
            }
            _ => {}
        }
        if self.append_timeout_ms == 0 || self.append_timeout_ms > 60_000 {
            return Err("`append_timeout_ms` must be 1 to 60000".into());
        }
        Ok(())
    }

    fn build(&self) -> Result<Box<dyn Source>, SourceError> {
        Ok(Box::new(DaprSource))
    }
}

/// Deliveries arrive as HTTP requests ([`deliver`]); the running source only marks the
/// subscription open (a stopped source answers RETRY).
struct DaprSource;

#[async_trait]
impl Source for DaprSource {
    async fn run(&mut self, cx: &SourceContext) -> Result<(), SourceError> {
        cx.cancelled().await;
        Ok(())
    }
}

/// The route Dapr delivers a source's messages to.
pub fn route(source: &str) -> String {
    format!("/dapr/events/{source}")
}

/// `GET /dapr/subscribe`: every dapr source, running or not (the sidecar asks once, at its
/// start).
pub fn subscriptions(sources: &Sources) -> Value {
    let list: Vec<Value> = sources
        .contexts()
        .filter_map(|(cfg, _)| match &cfg.kind {
            SourceKind::Dapr(d) => {
                let mut s = json!({
                    "pubsubname": d.pubsub,
                    "topic": d.topic,
                    "route": route(&cfg.name),
                });
                if let Some(dl) = &d.dead_letter_topic {
                    s["deadLetterTopic"] = json!(dl);
                }
                Some(s)
            }
            _ => None,
        })
        .collect();
    Value::Array(list)
}

/// The answer to one delivery: HTTP status and JSON body.
#[derive(Debug, Clone, PartialEq)]
pub struct Reply {
    pub http: u16,
    pub body: Value,
}

impl Reply {
    fn status(http: u16, status: &str) -> Self {
        Reply {
            http,
            body: json!({ "status": status }),
        }
    }
}

/// A CloudEvent, as far as the gateway needs it.
#[derive(Debug, Clone, PartialEq)]
pub struct CloudEvent {
    pub id: String,
    pub source: String,
    pub kind: String,
    pub data: Value,
}

static DROPS: Throttle = Throttle::new(Duration::from_secs(30));
static RETRIES: Throttle = Throttle::new(Duration::from_secs(30));

/// Handles one delivery to source `name`'s route.
pub async fn deliver(sources: &Sources, name: &str, headers: &HeaderMap, body: &[u8]) -> Reply {
    let Some((cfg, cx)) = sources.contexts().find_map(|(c, cx)| match &c.kind {
        SourceKind::Dapr(d) if c.name == name => Some((d.clone(), cx)),
        _ => None,
    }) else {
        return Reply {
            http: 404,
            body: json!({ "status": "DROP", "message": format!("no dapr source named {name:?}") }),
        };
    };
    if let Some(token) = &cfg.app_api_token {
        let given = headers
            .get("dapr-api-token")
            .map(|v| v.as_bytes())
            .unwrap_or_default();
        if !same(given, token.as_bytes()) {
            return Reply {
                http: 401,
                body: json!({ "error": {
                    "code": "invalid_dapr_token",
                    "message": "the dapr-api-token header does not match the source's app_api_token",
                } }),
            };
        }
    }
    let Some(cx) = cx else {
        return Reply::status(503, "RETRY");
    };
    let drop = |why: String| {
        cx.status.skipped.fetch_add(1, Ordering::Relaxed);
        if let Some(suppressed) = DROPS.allow() {
            tracing::warn!(source = %cx.name, reason = %why, suppressed, "dapr message dropped");
        }
        Reply {
            http: 200,
            body: json!({ "status": "DROP", "message": why }),
        }
    };
    let ce = match parse_cloud_event(headers, body) {
        Ok(ce) => ce,
        Err(why) => return drop(chain(&why)),
    };
    let change = Change {
        op: Op::Insert,
        record: ce.data,
        place: cfg.topic.clone(),
        key: String::new(),
    };
    let now = crate::time::now_ms();
    let event = match cx.event(&change, now) {
        Ok(e) => e,
        Err(e) => return drop(format!("cloudevent {:?}: {e}", ce.id)),
    };
    let key = format!("src:{}:{}", cx.name, event_key(&ce.source, &ce.id));
    let wait = Duration::from_millis(cfg.append_timeout_ms);
    match tokio::time::timeout(wait, cx.emit_events(vec![event], Some(key), None)).await {
        Ok(Ok(())) => Reply::status(200, "SUCCESS"),
        Ok(Err(SourceError::Fatal(e))) => drop(e.chain()),
        Ok(Err(SourceError::Recoverable(_))) => Reply::status(503, "RETRY"),
        Err(_) => {
            if let Some(suppressed) = RETRIES.allow() {
                tracing::warn!(source = %cx.name, suppressed, "the log did not take a dapr message in time; answered RETRY");
            }
            Reply::status(200, "RETRY")
        }
    }
}

/// The idempotency key of a CloudEvent: `id` is unique per `source`.
pub fn event_key(source: &str, id: &str) -> String {
    let mut h = Sha256::new();
    h.update(source.as_bytes());
    h.update([0]);
    h.update(id.as_bytes());
    h.finalize()[..16]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Compares without stopping at the first difference.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn media_type(v: Option<&str>) -> String {
    v.unwrap_or("")
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase()
}

fn is_json(media: &str) -> bool {
    media.is_empty() || media == "application/json" || media.ends_with("+json")
}

/// Why a delivery is not a usable CloudEvent (it is dropped, with this as the reason).
#[derive(Debug, thiserror::Error)]
pub enum CloudEventError {
    #[error("the data is not JSON")]
    DataNotJson(#[source] serde_json::Error),
    #[error("the text data is not UTF-8")]
    TextNotUtf8,
    #[error("data of type {0:?} is neither JSON nor text")]
    DataOfType(String),
    #[error("CloudEvents specversion {0} (1.0 expected)")]
    SpecVersion(String),
    #[error("binary-mode CloudEvent without the {0} header")]
    MissingHeader(String),
    #[error("batched CloudEvents are not supported")]
    Batch,
    #[error(
        "content type {0:?}: expected application/cloudevents+json or a binary-mode CloudEvent"
    )]
    ContentType(String),
    #[error("the body is not a JSON CloudEvent")]
    NotCloudEvent,
    #[error("the CloudEvent has no `{0}`")]
    MissingAttribute(String),
    #[error("the CloudEvent has both `data` and `data_base64`")]
    BothData,
    #[error("`data_base64` is not base64")]
    NotBase64,
    #[error("`data_base64` is not a string")]
    Base64NotString,
}

/// Data of `media` type as the record: JSON as it is, text as a JSON string.
fn data_of(media: &str, bytes: &[u8]) -> Result<Value, CloudEventError> {
    if bytes.is_empty() {
        return Ok(Value::Null);
    }
    if is_json(media) {
        return serde_json::from_slice(bytes).map_err(CloudEventError::DataNotJson);
    }
    if media.starts_with("text/") {
        return std::str::from_utf8(bytes)
            .map(|s| Value::String(s.to_owned()))
            .map_err(|_| CloudEventError::TextNotUtf8);
    }
    // Raw payloads arrive as application/octet-stream: JSON inside is still usable.
    serde_json::from_slice(bytes).map_err(|_| CloudEventError::DataOfType(media.to_owned()))
}

/// Reads a CloudEvent 1.0 in structured or binary HTTP mode.
pub fn parse_cloud_event(headers: &HeaderMap, body: &[u8]) -> Result<CloudEvent, CloudEventError> {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let content_type = media_type(header("content-type"));
    if let Some(version) = header("ce-specversion") {
        if version != "1.0" {
            return Err(CloudEventError::SpecVersion(format!("{version:?}")));
        }
        let attr = |name: &str| {
            header(name)
                .filter(|v| !v.is_empty())
                .map(str::to_owned)
                .ok_or_else(|| CloudEventError::MissingHeader(name.to_owned()))
        };
        return Ok(CloudEvent {
            id: attr("ce-id")?,
            source: attr("ce-source")?,
            kind: attr("ce-type")?,
            data: data_of(&content_type, body)?,
        });
    }
    if content_type == "application/cloudevents-batch+json" {
        return Err(CloudEventError::Batch);
    }
    if !(content_type == "application/cloudevents+json" || is_json(&content_type)) {
        return Err(CloudEventError::ContentType(content_type));
    }
    let Ok(Value::Object(mut ce)) = serde_json::from_slice::<Value>(body) else {
        return Err(CloudEventError::NotCloudEvent);
    };
    match ce.get("specversion").and_then(Value::as_str) {
        Some("1.0") => {}
        other => return Err(CloudEventError::SpecVersion(format!("{other:?}"))),
    }
    let mut attr = |name: &str| match ce.remove(name) {
        Some(Value::String(s)) if !s.is_empty() => Ok(s),
        _ => Err(CloudEventError::MissingAttribute(name.to_owned())),
    };
    let (id, source, kind) = (attr("id")?, attr("source")?, attr("type")?);
    let media = media_type(ce.get("datacontenttype").and_then(Value::as_str));
    let data = match (ce.remove("data"), ce.remove("data_base64")) {
        (Some(_), Some(_)) => return Err(CloudEventError::BothData),
        (Some(data), None) => data,
        (None, Some(Value::String(b64))) => {
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(b64.as_bytes())
                .map_err(|_| CloudEventError::NotBase64)?;
            data_of(&media, &bytes)?
        }
        (None, Some(_)) => return Err(CloudEventError::Base64NotString),
        (None, None) => Value::Null,
    };
    Ok(CloudEvent {
        id,
        source,
        kind,
        data,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    /// What the sidecar POSTs for `dapr publish --pubsub pubsub --topic orders --data '{"orderId": 1}'`.
    const SIDECAR: &str = r#"{"data":{"orderId":1},"datacontenttype":"application/json","id":"5929aaac-a5e2-4ca1-859c-edfe73f11565","pubsubname":"pubsub","source":"checkout","specversion":"1.0","time":"2024-05-21T10:15:08Z","topic":"orders","traceid":"00-113ad9c4e42b27583ae98ba698d54255-e3743e35ff56f219-01","traceparent":"00-113ad9c4e42b27583ae98ba698d54255-e3743e35ff56f219-01","tracestate":"","type":"com.dapr.event.sent"}"#;

    #[test]
    fn structured_mode_as_the_sidecar_sends_it() {
        let h = headers(&[("content-type", "application/cloudevents+json")]);
        let ce = parse_cloud_event(&h, SIDECAR.as_bytes()).unwrap();
        assert_eq!(ce.id, "5929aaac-a5e2-4ca1-859c-edfe73f11565");
        assert_eq!(ce.source, "checkout");
        assert_eq!(ce.kind, "com.dapr.event.sent");
        assert_eq!(ce.data, json!({"orderId": 1}));
    }

    #[test]
    fn binary_mode_and_base64_data() {
        let h = headers(&[
            ("content-type", "application/json; charset=utf-8"),
            ("ce-specversion", "1.0"),
            ("ce-id", "a-1"),
            ("ce-source", "grader"),
            ("ce-type", "grade.posted"),
        ]);
        let ce = parse_cloud_event(&h, br#"{"score": 9}"#).unwrap();
        assert_eq!((ce.id.as_str(), ce.data), ("a-1", json!({"score": 9})));
        // A raw payload as Dapr wraps it for the subscriber.
        let raw = json!({
            "id": "r-1", "specversion": "1.0", "source": "Dapr", "type": "com.dapr.event.sent",
            "datacontenttype": "application/octet-stream", "topic": "orders", "pubsubname": "pubsub",
            "data_base64": base64::engine::general_purpose::STANDARD.encode(br#"{"k":2}"#),
        });
        let h = headers(&[("content-type", "application/cloudevents+json")]);
        let ce = parse_cloud_event(&h, raw.to_string().as_bytes()).unwrap();
        assert_eq!(ce.data, json!({"k": 2}));
        let text = json!({"id": "t", "specversion": "1.0", "source": "s", "type": "t",
            "datacontenttype": "text/plain", "data": "hello"});
        assert_eq!(
            parse_cloud_event(&h, text.to_string().as_bytes())
                .unwrap()
                .data,
            json!("hello")
        );
    }

    #[test]
    fn malformed_events_are_refused_with_a_reason() {
        let h = headers(&[("content-type", "application/cloudevents+json")]);
        for (body, what) in [
            ("not json", "not a JSON CloudEvent"),
            (
                r#"{"specversion":"0.3","id":"1","source":"s","type":"t"}"#,
                "specversion",
            ),
            (r#"{"specversion":"1.0","source":"s","type":"t"}"#, "`id`"),
            (r#"{"specversion":"1.0","id":"1","type":"t"}"#, "`source`"),
            (
                r#"{"specversion":"1.0","id":"1","source":"s","type":"t","data_base64":"%%"}"#,
                "base64",
            ),
        ] {
            let err = chain(&parse_cloud_event(&h, body.as_bytes()).unwrap_err());
            assert!(err.contains(what), "{body}: {err}");
        }
        let binary = headers(&[("ce-specversion", "1.0"), ("ce-id", "1"), ("ce-type", "t")]);
        assert!(parse_cloud_event(&binary, b"{}")
            .unwrap_err()
            .to_string()
            .contains("ce-source"));
        let octets = headers(&[("content-type", "application/octet-stream")]);
        assert!(parse_cloud_event(&octets, b"\x00\x01").is_err());
    }

    #[test]
    fn settings_require_a_token_or_an_explicit_opt_out() {
        let c = |t: &str| toml::from_str::<DaprSourceConfig>(t).unwrap().validate();
        assert!(c("pubsub = \"p\"\ntopic = \"t\"")
            .unwrap_err()
            .contains("app_api_token"));
        assert!(c("pubsub = \"p\"\ntopic = \"t\"\napp_api_token = \"short\"").is_err());
        assert!(c("pubsub = \"p\"\ntopic = \"t\"\napp_api_token = \"0123456789abcdef\"").is_ok());
        assert!(c("pubsub = \"p\"\ntopic = \"t\"\nallow_unauthenticated = true").is_ok());
        assert_ne!(event_key("a", "b"), event_key("a", "c"));
        assert_ne!(event_key("ab", "c"), event_key("a", "bc"));
        assert!(same(b"abc", b"abc") && !same(b"abc", b"abd") && !same(b"ab", b"abc"));
    }
}
