//! `POST /v1/publish`: one event or an array of events, appended atomically, acknowledged
//! once durable. Every event is validated before anything is appended, so a bad request
//! changes nothing.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue};
use axum::response::Response;
use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::Deserialize;
use serde_json::value::RawValue;

use super::{authenticate, ApiError, AppState};
use crate::config::LimitsConfig;
use crate::event::{check_key, EventError, NewEvent};
use crate::log::{AppendItem, Appended, Position};

/// One event of a publish body. Only a JSON object is one (serde's derived structs would
/// also take an array of the fields in order); every field is optional here, unknown fields
/// and fields named twice are refused.
#[derive(Debug)]
struct PublishEvent {
    channel: Option<String>,
    channels: Option<Vec<String>>,
    kind: Option<String>,
    data: Option<Box<RawValue>>,
    id: Option<String>,
    users: Option<Vec<String>>,
}

const FIELDS: &[&str] = &["channel", "channels", "type", "data", "id", "users"];

impl<'de> Deserialize<'de> for PublishEvent {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct EventVisitor;

        impl<'de> Visitor<'de> for EventVisitor {
            type Value = PublishEvent;

            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("struct PublishEvent")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<PublishEvent, A::Error> {
                let mut e = PublishEvent {
                    channel: None,
                    channels: None,
                    kind: None,
                    data: None,
                    id: None,
                    users: None,
                };
                // As serde's derive does: a field named twice is refused before its value
                // is read, and `null` is the same as no field.
                let mut seen = [false; FIELDS.len()];
                while let Some(key) = map.next_key::<Field>()? {
                    let n = key as usize;
                    if std::mem::replace(&mut seen[n], true) {
                        return Err(de::Error::duplicate_field(FIELDS[n]));
                    }
                    match key {
                        Field::Channel => e.channel = map.next_value()?,
                        Field::Channels => e.channels = map.next_value()?,
                        Field::Kind => e.kind = map.next_value()?,
                        Field::Data => e.data = map.next_value()?,
                        Field::Id => e.id = map.next_value()?,
                        Field::Users => e.users = map.next_value()?,
                    }
                }
                Ok(e)
            }
        }

        /// The fields, in the order of [`FIELDS`].
        #[derive(Clone, Copy)]
        enum Field {
            Channel,
            Channels,
            Kind,
            Data,
            Id,
            Users,
        }

        impl<'de> Deserialize<'de> for Field {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                struct FieldVisitor;
                impl Visitor<'_> for FieldVisitor {
                    type Value = Field;

                    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                        f.write_str("field identifier")
                    }

                    fn visit_str<E: de::Error>(self, v: &str) -> Result<Field, E> {
                        Ok(match v {
                            "channel" => Field::Channel,
                            "channels" => Field::Channels,
                            "type" => Field::Kind,
                            "data" => Field::Data,
                            "id" => Field::Id,
                            "users" => Field::Users,
                            other => return Err(de::Error::unknown_field(other, FIELDS)),
                        })
                    }
                }
                d.deserialize_identifier(FieldVisitor)
            }
        }

        d.deserialize_map(EventVisitor)
    }
}

pub(super) async fn publish(
    State(state): State<Arc<AppState>>,
    request: Request,
) -> Result<Response, ApiError> {
    let (parts, body) = request.into_parts();
    let principal = authenticate(&state, &parts.headers, None).await?;
    let limits = &state.cfg.limits;
    let body_limit = limits
        .max_event_bytes
        .saturating_mul(limits.max_batch_events)
        .clamp(limits.max_event_bytes + 4096, 32 << 20);
    let body = super::edge::read_body(&state, body, body_limit).await?;
    let now = crate::time::now_ms();
    let items = parse_body(&body, limits, now)?;
    drop(body);
    let cost: usize = items.iter().map(|i| i.events.len()).sum();
    // An event on the channel of the event before it needs no second look.
    let mut allowed: Option<&str> = None;
    let mut denied: Vec<String> = Vec::new();
    for ev in items.iter().flat_map(|i| &i.events) {
        let channel = ev.channel.as_str();
        if allowed == Some(channel) || denied.iter().any(|d| d == channel) {
            continue;
        }
        if principal.may_publish(channel) {
            allowed = Some(channel);
        } else {
            denied.push(channel.to_owned());
        }
    }
    if !denied.is_empty() {
        return Err(ApiError::forbidden_channels("publish to", denied));
    }
    // Mercure updates are the hub's (whether or not this node runs it): a native publish
    // could claim any topic, or forge the hub's own events.
    if let Some(ev) = items
        .iter()
        .flat_map(|i| &i.events)
        .find(|e| crate::mercure::update::is_mercure_channel(&e.channel))
    {
        return Err(ApiError::Forbidden {
            code: "reserved_channel",
            message: format!(
                "channel {:?} holds Mercure updates: publish them at /.well-known/mercure",
                ev.channel
            ),
        });
    }
    if items
        .iter()
        .any(|i| i.key.as_deref().is_some_and(|k| k.starts_with("mercure:")))
    {
        return Err(ApiError::bad_request(
            "invalid_id",
            "idempotency ids beginning with `mercure:` are the Mercure hub's",
        ));
    }
    state
        .publish_rate
        .check(&principal.user, u32::try_from(cost).unwrap_or(u32::MAX))
        .map_err(|r| state.limited(r))?;
    let appended = state
        .hub
        .log()
        .append(items, now)
        .await
        .map_err(ApiError::from)?;
    let fresh: usize = appended
        .iter()
        .filter(|a| !a.duplicate)
        .map(|a| a.positions.len())
        .sum();
    state.metrics.events_published.inc_by(fresh as u64);
    Ok(ids_response(&appended))
}

/// `{"ids":["1","2",…]}`, written as `Json(json!({"ids": ids}))` would write it (ids are
/// digits and `-`, nothing to escape), into a buffer of exactly its size.
fn ids_response(appended: &[Appended]) -> Response {
    let positions = || appended.iter().flat_map(|a| &a.positions);
    let digits = |n: u64| n.checked_ilog10().map_or(1, |l| l as usize + 1);
    let id_len = |p: &Position| match p.hi {
        0 => digits(p.lo),
        hi => digits(hi) + 1 + digits(p.lo),
    };
    // `{"ids":[` and `]}`, and each id with its quotes and a comma but the last.
    let len = 10
        + positions()
            .map(|p| id_len(p) + 3)
            .sum::<usize>()
            .saturating_sub(1);
    let mut text = Vec::with_capacity(len);
    text.extend_from_slice(b"{\"ids\":[");
    for (i, pos) in positions().enumerate() {
        if i > 0 {
            text.push(b',');
        }
        text.push(b'"');
        if pos.hi != 0 {
            put_u64(&mut text, pos.hi);
            text.push(b'-');
        }
        put_u64(&mut text, pos.lo);
        text.push(b'"');
    }
    text.extend_from_slice(b"]}");
    debug_assert_eq!(text.len(), len);
    let mut response = Response::new(Body::from(text));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// Appends the decimal digits of `n`.
fn put_u64(out: &mut Vec<u8>, mut n: u64) {
    let mut buf = [0u8; 20];
    let mut at = buf.len();
    loop {
        at -= 1;
        buf[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&buf[at..]);
}

/// Parses and validates a publish body (one event or an array of them) into what the log
/// appends; `now` is the publish time. Every event is checked before anything is returned,
/// so a bad body yields an error and nothing else.
pub fn parse_body(
    body: &[u8],
    limits: &LimitsConfig,
    now: u64,
) -> Result<Vec<AppendItem>, ApiError> {
    let text = std::str::from_utf8(body)
        .map_err(|_| ApiError::bad_request("invalid_json", "the body is not UTF-8 text"))?;
    // Read as text from here on: serde checks no string for UTF-8 again.
    let is_array = text.trim_start().starts_with('[');
    if !is_array {
        // One event: one pass, no list.
        if let Ok(event) = serde_json::from_str::<PublishEvent>(text) {
            let expanded = event.channels.as_ref().map_or(1, |c| c.len().max(1));
            check_batch(expanded, limits)?;
            return Ok(vec![to_item(event, 0, now, limits.max_event_bytes)?]);
        }
    }
    // An array: one pass over the body, each event validated as soon as it is read. The
    // answer is the one reading first and validating after gave: bad JSON anywhere wins over
    // too many events, which wins over the first invalid event.
    if is_array {
        let mut de = serde_json::Deserializer::from_str(text);
        let read = de
            .deserialize_seq(Batch { limits, now })
            .and_then(|batch| de.end().map(|()| batch));
        if let Ok(batch) = read {
            if batch.events == 0 {
                return Err(ApiError::bad_request(
                    "empty_batch",
                    "the array of events is empty",
                ));
            }
            check_batch(batch.expanded, limits)?;
            return match batch.refused {
                Some(refused) => Err(refused),
                None => Ok(batch.items),
            };
        }
    }
    // A body the one-pass reading refused is read again the way that names the fault (each
    // element on its own, so the message's line and column are the element's).
    let events = read_events(text, is_array).map_err(|e| {
        ApiError::bad_request(
            "invalid_json",
            format!("the body is not a valid event or array of events: {e}"),
        )
    })?;
    if events.is_empty() {
        return Err(ApiError::bad_request(
            "empty_batch",
            "the array of events is empty",
        ));
    }
    // What is appended counts: an event published to `channels` is one event per channel.
    let expanded: usize = events
        .iter()
        .map(|e| e.channels.as_ref().map_or(1, |c| c.len().max(1)))
        .sum();
    check_batch(expanded, limits)?;
    events
        .into_iter()
        .enumerate()
        .map(|(i, e)| to_item(e, i, now, limits.max_event_bytes))
        .collect()
}

/// Reads an array of events into what the log appends, validating each as it comes; the
/// first refusal is kept for after the whole array is read.
struct Batch<'a> {
    limits: &'a LimitsConfig,
    now: u64,
}

/// What [`Batch`] read.
struct BatchRead {
    items: Vec<AppendItem>,
    /// Events in the array.
    events: usize,
    /// Events to append (one per channel of `channels`).
    expanded: usize,
    /// The first invalid event's refusal.
    refused: Option<ApiError>,
}

impl<'de> Visitor<'de> for Batch<'_> {
    type Value = BatchRead;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("an array of events")
    }

    fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<BatchRead, A::Error> {
        let max = self.limits.max_batch_events;
        let mut read = BatchRead {
            items: Vec::with_capacity(seq.size_hint().unwrap_or(0).min(max)),
            events: 0,
            expanded: 0,
            refused: None,
        };
        while let Some(event) = seq.next_element::<PublishEvent>()? {
            read.expanded += event.channels.as_ref().map_or(1, |c| c.len().max(1));
            // Past a refusal, or past the limit (refused in any case), events are only read.
            if read.refused.is_none() && read.expanded <= max {
                match to_item(event, read.events, self.now, self.limits.max_event_bytes) {
                    Ok(item) => read.items.push(item),
                    Err(refused) => read.refused = Some(refused),
                }
            }
            read.events += 1;
        }
        Ok(read)
    }
}

/// Refuses a request of more than `limits.max_batch_events` events once expanded.
fn check_batch(expanded: usize, limits: &LimitsConfig) -> Result<(), ApiError> {
    if expanded > limits.max_batch_events {
        return Err(ApiError::bad_request(
            "batch_too_large",
            format!(
                "{expanded} events in one request (each channel of `channels` is one event); at most {} are allowed",
                limits.max_batch_events
            ),
        ));
    }
    Ok(())
}

/// The events of a body the one-pass reading refused, read an element at a time: the error
/// says what is wrong where (an element that is not an object is refused, as is any other
/// malformed or unknown content).
fn read_events(text: &str, is_array: bool) -> Result<Vec<PublishEvent>, String> {
    if is_array {
        serde_json::from_str::<Vec<&RawValue>>(text)
            .map_err(|e| e.to_string())
            .and_then(|raw| {
                raw.iter()
                    .map(|r| super::json_object(r.get().as_bytes()))
                    .collect()
            })
    } else {
        super::json_object(text.as_bytes()).map(|e| vec![e])
    }
}

pub use crate::event::RESERVED_TYPES;

/// The channels of one published event: `channel`, or the list `channels`.
enum Channels {
    One(Option<String>),
    Many(std::vec::IntoIter<String>),
}

impl Iterator for Channels {
    type Item = String;

    fn next(&mut self) -> Option<String> {
        match self {
            Channels::One(c) => c.take(),
            Channels::Many(cs) => cs.next(),
        }
    }
}

/// Validates one published event; `i` is its index in the request, for messages.
fn to_item(
    e: PublishEvent,
    i: usize,
    now: u64,
    max_event_bytes: usize,
) -> Result<AppendItem, ApiError> {
    let at = |msg: String| format!("event {i}: {msg}");
    let channels = match (e.channel, e.channels) {
        (Some(c), None) => Channels::One(Some(c)),
        (None, Some(cs)) if !cs.is_empty() => Channels::Many(cs.into_iter()),
        (Some(_), Some(_)) => {
            return Err(ApiError::bad_request(
                "invalid_event",
                at("give either `channel` or `channels`, not both".into()),
            ))
        }
        _ => {
            return Err(ApiError::bad_request(
                "missing_channel",
                at("`channel` (or a non-empty `channels`) is required".into()),
            ))
        }
    };
    let kind = e.kind.unwrap_or_else(|| "message".into());
    let refused = |err: EventError| match err {
        EventError::Channel { channel, source } => ApiError::invalid_channel(&channel, source),
        EventError::TooLarge { .. } => ApiError::TooLarge {
            code: err.code(),
            message: at(err.to_string()),
        },
        other => ApiError::bad_request(other.code(), at(other.to_string())),
    };
    if let Some(key) = &e.id {
        check_key(key).map_err(refused)?;
    }
    let mut data = e.data.unwrap_or_else(|| RawValue::NULL.to_owned());
    let users = e.users;
    let mut left = match &channels {
        Channels::One(_) => 1,
        Channels::Many(cs) => cs.len(),
    };
    let mut events = Vec::with_capacity(left);
    for channel in channels {
        left -= 1;
        if left == 0 {
            // The last channel takes the type, data and users themselves.
            events.push(
                NewEvent::new(channel, kind, data, users, now, max_event_bytes).map_err(refused)?,
            );
            break;
        }
        let event = NewEvent::new(
            channel,
            kind.clone(),
            data.clone(),
            users.clone(),
            now,
            max_event_bytes,
        )
        .map_err(refused)?;
        // Compacted once: the next channels take the compact data as it is.
        data = event.data.clone();
        events.push(event);
    }
    Ok(AppendItem { key: e.id, events })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    /// What `PublishEvent` was before it refused arrays itself: serde's derive.
    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Derived {
        channel: Option<String>,
        channels: Option<Vec<String>>,
        #[serde(rename = "type")]
        kind: Option<String>,
        data: Option<Box<RawValue>>,
        id: Option<String>,
        users: Option<Vec<String>>,
    }

    impl From<Derived> for PublishEvent {
        fn from(d: Derived) -> Self {
            PublishEvent {
                channel: d.channel,
                channels: d.channels,
                kind: d.kind,
                data: d.data,
                id: d.id,
                users: d.users,
            }
        }
    }

    /// The publish body as it was read before: the array first, then each element.
    fn reference(body: &[u8], limits: &LimitsConfig) -> Result<Vec<AppendItem>, ApiError> {
        let text = std::str::from_utf8(body)
            .map_err(|_| ApiError::bad_request("invalid_json", "the body is not UTF-8 text"))?;
        let events: Result<Vec<Derived>, String> = if text.trim_start().starts_with('[') {
            serde_json::from_str::<Vec<&RawValue>>(text)
                .map_err(|e| e.to_string())
                .and_then(|raw| {
                    raw.iter()
                        .map(|r| super::super::json_object(r.get().as_bytes()))
                        .collect()
                })
        } else {
            super::super::json_object(text.as_bytes()).map(|e| vec![e])
        };
        let events = events.map_err(|e| {
            ApiError::bad_request(
                "invalid_json",
                format!("the body is not a valid event or array of events: {e}"),
            )
        })?;
        if events.is_empty() {
            return Err(ApiError::bad_request(
                "empty_batch",
                "the array of events is empty",
            ));
        }
        let expanded: usize = events
            .iter()
            .map(|e| e.channels.as_ref().map_or(1, |c| c.len().max(1)))
            .sum();
        if expanded > limits.max_batch_events {
            return Err(ApiError::bad_request(
                "batch_too_large",
                format!(
                    "{expanded} events in one request (each channel of `channels` is one event); at most {} are allowed",
                    limits.max_batch_events
                ),
            ));
        }
        events
            .into_iter()
            .enumerate()
            .map(|(i, e)| to_item(e.into(), i, 7, limits.max_event_bytes))
            .collect()
    }

    fn shown(r: &Result<Vec<AppendItem>, ApiError>) -> String {
        match r {
            Ok(items) => items
                .iter()
                .map(|i| {
                    let events: Vec<String> = i
                        .events
                        .iter()
                        .map(|e| {
                            format!(
                                "{}|{}|{}|{:?}|{}",
                                e.channel,
                                e.kind,
                                e.data.get(),
                                e.users,
                                e.time_ms
                            )
                        })
                        .collect();
                    format!("{:?}:{}", i.key, events.join(";"))
                })
                .collect::<Vec<_>>()
                .join("\n"),
            Err(e) => format!("{e:?}"),
        }
    }

    fn check(body: &str, limits: &LimitsConfig) {
        let got = shown(&parse_body(body.as_bytes(), limits, 7));
        let want = shown(&reference(body.as_bytes(), limits));
        assert_eq!(got, want, "body: {body}");
    }

    const OBJECTS: &[&str] = &[
        r#"{"channel":"a","data":1}"#,
        r#"{"channel":"a:b","type":"t","data":{"x": [1, 2.50, "s p"]},"id":"k","users":["u"]}"#,
        r#"{"channels":["a","b","c"],"data":"x y"}"#,
        r#"{"channels":["a","a b"],"data":1}"#,
        r#"{"channels":[],"data":1}"#,
        r#"{"channel":"a","channels":["b"]}"#,
        r#"{"channel":null,"channels":["b"],"type":null,"data":null,"id":null,"users":null}"#,
        r#"{"channel":"a","channel":"b"}"#,
        r#"{"channel":"a","channel":5}"#,
        r#"{"channel":"a","type":"t","type":[1]}"#,
        r#"{"channel":"a","dta":1}"#,
        r#"{"channel":"a","data":1,"extra":{"deep":[1,2]}}"#,
        r#"{"channel":5}"#,
        r#"{"channel":"a","users":"u"}"#,
        r#"{"channel":"a","users":[1]}"#,
        r#"{"channel":"a","id":""}"#,
        r#"{"channel":"a","type":"closing"}"#,
        r#"{"channel":"a","type":"a\nb"}"#,
        r#"{"channel":"a\u0020b"}"#,
        r#"{"ch\u0061nnel":"a"}"#,
        r#"{}"#,
        r#"{"channel":"a","data":1"#,
        r#"{"channel":"a","data":}"#,
        r#"{"channel":"a"} x"#,
        "  {\"channel\" : \"a\" ,\n \"data\" : { \"k\" : \"v w\" } }  ",
        r#"["a", null]"#,
        r#"42"#,
        r#""s""#,
        r#"null"#,
        r#"[]"#,
        r#""#,
        r#"   "#,
        r#"[{"channel":"a"},]"#,
        r#"[{"channel":"a"} {"channel":"b"}]"#,
        r#"[{"channel":"a"},[{"channel":"b"}]]"#,
        r#"[{"channel":"a"},42]"#,
        r#"[[]]"#,
        r#"[{"channel":"a"}]]"#,
        "\u{a0}[{\"channel\":\"a\"}]",
    ];

    #[test]
    fn one_pass_reads_as_the_two_passes_did() {
        let limits = LimitsConfig {
            max_event_bytes: 300,
            max_batch_events: 6,
            ..LimitsConfig::default()
        };
        for body in OBJECTS {
            check(body, &limits);
            check(&format!("[{body}]"), &limits);
            check(&format!("[{body}, {body}]"), &limits);
            check(&format!("[{{\"channel\":\"ok\"}},\n{body}]"), &limits);
        }
        check(
            &format!("{{\"channel\":\"a\",\"data\":\"{}\"}}", "x".repeat(400)),
            &limits,
        );
        let deep = format!("{}1{}", "[".repeat(200), "]".repeat(200));
        check(&format!("{{\"channel\":\"a\",\"data\":{deep}}}"), &limits);
        check(&format!("[{{\"channel\":\"a\",\"data\":{deep}}}]"), &limits);
        let deep = format!("{}1{}", "[".repeat(125), "]".repeat(125));
        check(&format!("{{\"channel\":\"a\",\"data\":{deep}}}"), &limits);
        check(&format!("[{{\"channel\":\"a\",\"data\":{deep}}}]"), &limits);
        let deep = format!("{}1{}", "[".repeat(126), "]".repeat(126));
        check(&format!("[{{\"channel\":\"a\",\"data\":{deep}}}]"), &limits);
    }

    #[test]
    fn one_pass_reads_random_bodies_as_the_two_passes_did() {
        let limits = LimitsConfig {
            max_event_bytes: 300,
            max_batch_events: 6,
            ..LimitsConfig::default()
        };
        let pieces = [
            "{",
            "}",
            "[",
            "]",
            ",",
            ":",
            " ",
            "\"channel\"",
            "\"channels\"",
            "\"type\"",
            "\"data\"",
            "\"id\"",
            "\"users\"",
            "\"x\"",
            "\"a\"",
            "\"a:b\"",
            "\"a b\"",
            "1",
            "null",
            "true",
            "\"t\"",
            "[\"a\"]",
            "[]",
            "{}",
            "\"k\\n\"",
            "\"message\"",
        ];
        let mut rng = StdRng::seed_from_u64(13);
        for _ in 0..20_000 {
            let n = rng.gen_range(1..24);
            let body: String = (0..n)
                .map(|_| pieces[rng.gen_range(0..pieces.len())])
                .collect();
            check(&body, &limits);
        }
        // Mostly well-formed: objects of random fields, alone or in arrays.
        let fields = [
            "\"channel\":\"a\"",
            "\"channel\":\"b:c\"",
            "\"channel\":\"bad channel\"",
            "\"channels\":[\"a\",\"b\"]",
            "\"channels\":[]",
            "\"type\":\"t\"",
            "\"type\":\"gap\"",
            "\"data\":{\"v\": [1, 2]}",
            "\"data\":null",
            "\"id\":\"k1\"",
            "\"users\":[\"u1\",\"u2\"]",
            "\"users\":[\"\"]",
            "\"other\":1",
            "\"channel\":null",
        ];
        for _ in 0..20_000 {
            let object = |rng: &mut StdRng| {
                let n = rng.gen_range(0..5);
                let f: Vec<&str> = (0..n)
                    .map(|_| fields[rng.gen_range(0..fields.len())])
                    .collect();
                format!("{{{}}}", f.join(","))
            };
            let body = if rng.gen_bool(0.5) {
                object(&mut rng)
            } else {
                let n = rng.gen_range(0..5);
                let o: Vec<String> = (0..n).map(|_| object(&mut rng)).collect();
                format!("[{}]", o.join(","))
            };
            check(&body, &limits);
        }
    }

    #[test]
    fn the_answer_lists_the_ids_as_json_did() {
        let seq = |ns: &[u64]| ns.iter().map(|n| Position::seq(*n)).collect::<Vec<_>>();
        let cases = [
            vec![],
            vec![seq(&[0])],
            vec![seq(&[1, 9, 10, 99, 100, 12_345, u64::MAX])],
            vec![
                seq(&[1, 22]),
                vec![
                    Position { hi: 17, lo: 3 },
                    Position {
                        hi: u64::MAX,
                        lo: 0,
                    },
                ],
            ],
        ];
        for positions in cases {
            let appended: Vec<Appended> = positions
                .into_iter()
                .map(|positions| Appended {
                    positions,
                    duplicate: false,
                })
                .collect();
            let ids: Vec<String> = appended
                .iter()
                .flat_map(|a| a.positions.iter().map(|p| p.to_string()))
                .collect();
            let want = serde_json::to_string(&serde_json::json!({ "ids": ids })).unwrap();
            let response = ids_response(&appended);
            assert_eq!(response.headers()[header::CONTENT_TYPE], "application/json");
            let body =
                futures::executor::block_on(axum::body::to_bytes(response.into_body(), 1 << 20))
                    .unwrap();
            assert_eq!(std::str::from_utf8(&body).unwrap(), want);
        }
    }
}
