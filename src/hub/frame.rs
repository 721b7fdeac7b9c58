//! SSE frames. An event is encoded once into a `Bytes` that every recipient shares.
//!
//! ```text
//! id: 1042
//! event: log.created
//! data: {"id":"1042","channel":"logs:w1:f1","type":"log.created","time":"…","data":{…}}
//! ```
//!
//! Safe by construction: channel names cannot contain CR/LF (see [`crate::channel`]), event
//! types are checked for CR/LF at publish, and `data` is compact JSON, which never holds a raw
//! line break, so each field stays on its one line.

use bytes::{BufMut, Bytes, BytesMut};
use serde::Serialize;

use crate::log::Event;

/// Encodes a delivered event: `id:`, `event:` and one `data:` line with the envelope.
pub fn event_frame(e: &Event) -> Bytes {
    encode(e, true)
}

/// Encodes an event delivered as history, older than the stream's position: no `id:` line,
/// so the client's resume position stays where it is (the envelope still has the id).
pub fn history_frame(e: &Event) -> Bytes {
    encode(e, false)
}

fn encode(e: &Event, with_id: bool) -> Bytes {
    let id = e.pos.to_string();
    let ev = &e.event;
    let mut buf = BytesMut::with_capacity(ev.data.get().len() + ev.channel.len() + 128);
    if with_id {
        buf.put_slice(b"id: ");
        buf.put_slice(id.as_bytes());
        buf.put_u8(b'\n');
    }
    buf.put_slice(b"event: ");
    buf.put_slice(ev.kind.as_bytes());
    buf.put_slice(b"\ndata: ");
    put_envelope(&mut buf, &id, e);
    buf.put_slice(b"\n\n");
    buf.freeze()
}

/// The JSON envelope `{id, channel, type, time, data}` as the long-poll returns it.
pub fn envelope(e: &Event) -> Box<serde_json::value::RawValue> {
    let mut buf = BytesMut::new();
    put_envelope(&mut buf, &e.pos.to_string(), e);
    let text = String::from_utf8(buf.to_vec()).expect("envelope is UTF-8");
    serde_json::value::RawValue::from_string(text).expect("envelope is JSON")
}

fn put_envelope(buf: &mut BytesMut, id: &str, e: &Event) {
    let ev = &e.event;
    buf.put_slice(b"{\"id\":\"");
    buf.put_slice(id.as_bytes());
    buf.put_slice(b"\",\"channel\":");
    put_json_str(buf, &ev.channel);
    buf.put_slice(b",\"type\":");
    put_json_str(buf, &ev.kind);
    buf.put_slice(b",\"time\":\"");
    buf.put_slice(crate::time::rfc3339_ms(ev.time_ms).as_bytes());
    buf.put_slice(b"\",\"data\":");
    buf.put_slice(ev.data.get().as_bytes());
    buf.put_u8(b'}');
}

fn put_json_str(buf: &mut BytesMut, s: &str) {
    let mut w = buf.writer();
    serde_json::to_writer(&mut w, s).expect("strings serialize");
}

/// A control event: `event:` and `data:` but no `id:`, so it never moves a client's resume
/// position.
pub fn control_frame(kind: &str, data: &impl Serialize) -> Bytes {
    let json = serde_json::to_string(data).expect("control data serializes");
    Bytes::from(format!("event: {kind}\ndata: {json}\n\n"))
}

/// The heartbeat comment.
pub const HEARTBEAT: &[u8] = b": hb\n\n";

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::{NewEvent, Position};
    use serde_json::value::RawValue;

    #[test]
    fn event_frame_is_one_data_line() {
        let e = Event {
            pos: Position::seq(7),
            event: NewEvent::new(
                "a:b".into(),
                "t.x".into(),
                RawValue::from_string("{\"k\":\"v\"}".into()).unwrap(),
                None,
                0,
                1024,
            )
            .unwrap(),
        };
        let text = String::from_utf8(event_frame(&e).to_vec()).unwrap();
        assert_eq!(
            text,
            "id: 7\nevent: t.x\ndata: {\"id\":\"7\",\"channel\":\"a:b\",\"type\":\"t.x\",\"time\":\"1970-01-01T00:00:00.000Z\",\"data\":{\"k\":\"v\"}}\n\n"
        );
        let env: serde_json::Value = serde_json::from_str(envelope(&e).get()).unwrap();
        assert_eq!(env["data"]["k"], "v");
    }
}
