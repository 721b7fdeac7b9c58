//! The publish body (`ssegate::http::publish::parse_body`) and the SSE frame of what it
//! accepts (`ssegate::hub::frame`).
//!
//! Nothing may panic. Whatever is accepted must be safe to put on the wire: a valid channel,
//! a type without CR/LF, compact JSON data that means what was sent, and a frame of exactly
//! the `id:`, `event:`, `data:` lines and a blank line — no field can be injected.
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::Value;
use ssegate::channel::validate_channel;
use ssegate::config::LimitsConfig;
use ssegate::http::publish::{parse_body, RESERVED_TYPES};
use ssegate::hub::frame::{envelope, event_frame, history_frame};
use ssegate::log::{Event, Position};

/// The SSE line terminators are CRLF, LF and CR: splits like an EventSource does.
fn sse_lines(frame: &str) -> Vec<&str> {
    frame.split(['\n', '\r']).collect()
}

/// The items of the body as plain JSON (an object or an array of objects); `None` when a
/// number is out of `f64` range (valid JSON that `Value` cannot hold, e.g. `1e400`).
fn body_items(body: &[u8]) -> Option<Vec<Value>> {
    match serde_json::from_slice::<Value>(body).ok()? {
        Value::Array(items) => Some(items),
        item => Some(vec![item]),
    }
}

/// The envelope on the `data:` line: exactly these fields.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Envelope<'a> {
    id: String,
    channel: String,
    #[serde(rename = "type")]
    kind: String,
    time: String,
    #[serde(borrow)]
    data: &'a RawValue,
}

fuzz_target!(|data: &[u8]| {
    let limits = LimitsConfig::default();
    let Ok(items) = parse_body(data, &limits, 0) else {
        return;
    };
    assert!(!items.is_empty());
    assert!(items.len() <= limits.max_batch_events);
    let sent = body_items(data);
    if let Some(sent) = &sent {
        assert_eq!(sent.len(), items.len());
    }
    for (i, item) in items.iter().enumerate() {
        assert!(!item.events.is_empty());
        if let Some(key) = &item.key {
            assert!(
                !key.is_empty() && !key.chars().any(char::is_control),
                "{key:?}"
            );
        }
        // Compacting the data never changes what it means.
        let sent_data = sent
            .as_ref()
            .map(|s| s[i].get("data").cloned().unwrap_or(Value::Null));
        for ev in &item.events {
            validate_channel(&ev.channel).expect("accepted channels are valid");
            assert!(!ev.kind.is_empty() && ev.kind.len() <= 128, "{:?}", ev.kind);
            assert!(!ev.kind.contains(['\r', '\n']), "type {:?}", ev.kind);
            assert!(!ev.kind.chars().any(char::is_control), "type {:?}", ev.kind);
            assert!(!RESERVED_TYPES.contains(&ev.kind.as_str()), "{:?}", ev.kind);
            let json = ev.data.get();
            assert!(!json.contains(['\r', '\n']), "data {json:?}");
            serde_json::from_str::<&RawValue>(json).expect("data stays JSON");
            if let Some(sent_data) = &sent_data {
                let parsed: Value = serde_json::from_str(json).expect("data stays JSON");
                assert_eq!(&parsed, sent_data, "compacting changed the data {json:?}");
            }
            if let Some(users) = &ev.users {
                assert!(users.iter().all(|u| !u.chars().any(char::is_control)));
            }
            assert!(
                json.len() + ev.channel.len() + ev.kind.len() <= limits.max_event_bytes,
                "an event over the size limit was accepted"
            );

            let e = Event {
                pos: Position::seq(1),
                event: ev.clone(),
            };
            let frame = event_frame(&e);
            let text = std::str::from_utf8(&frame).expect("frames are UTF-8");
            let lines = sse_lines(text);
            assert_eq!(lines.len(), 5, "injected line in {text:?}");
            assert_eq!(lines[0], "id: 1", "{text:?}");
            assert_eq!(lines[1], format!("event: {}", ev.kind), "{text:?}");
            assert!(lines[2].starts_with("data: {"), "{text:?}");
            assert_eq!(&lines[3..], ["", ""], "{text:?}");
            let line = &lines[2]["data: ".len()..];
            let env: Envelope =
                serde_json::from_str(line).expect("the data line is one JSON envelope");
            assert_eq!(env.id, "1");
            assert_eq!(env.channel, ev.channel);
            assert_eq!(env.kind, ev.kind);
            assert_eq!(env.time, "1970-01-01T00:00:00.000Z");
            assert_eq!(env.data.get(), json);
            assert_eq!(
                envelope(&e).get(),
                line,
                "long-poll and stream envelopes differ"
            );

            let history = history_frame(&e);
            let text = std::str::from_utf8(&history).expect("frames are UTF-8");
            let lines = sse_lines(text);
            assert_eq!(lines.len(), 4, "injected line in {text:?}");
            assert!(lines[0].starts_with("event: ") && lines[1].starts_with("data: {"));
            assert_eq!(&lines[2..], ["", ""], "{text:?}");
        }
    }
});
