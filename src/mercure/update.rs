//! A Mercure update as the log holds it, its channel, its id and its frame.
//!
//! An update is one event on the channel `mercure:<topic>` (the canonical topic
//! percent-encoded into channel characters, see [`channel_for`]); its type is the update's
//! `type` (`message` when it has none) and its data the JSON object [`Stored`]:
//!
//! ```json
//! {"topics":["https://example.com/books/1"],"private":true,"id":"…","retry":5000,"data":"…"}
//! ```
//!
//! `id` is there only when the publisher chose it; otherwise the update's id is made from its
//! log position ([`generated_id`]), so a subscriber resuming with it needs no lookup.

use std::borrow::Cow;

use bytes::{BufMut, Bytes, BytesMut};
use serde::{Deserialize, Serialize};

use crate::log::{Event, Position};

/// The channel prefix of Mercure updates.
pub const CHANNEL_PREFIX: &str = "mercure:";

/// The topic prefix of subscription events, which the hub publishes itself.
pub const SUBSCRIPTIONS_TOPIC: &str = "/.well-known/mercure/subscriptions";

/// The channel prefix of subscription events.
pub const SUBSCRIPTIONS_CHANNEL: &str = "mercure:%subs.";

/// The SSE event type of an update without a `type`.
pub const DEFAULT_TYPE: &str = "message";

/// The data of an update's event.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Stored<'a> {
    /// The canonical topic first, then the alternate ones (the older protocol allows
    /// several).
    #[serde(borrow)]
    pub topics: Vec<Cow<'a, str>>,
    #[serde(default, skip_serializing_if = "is_false")]
    pub private: bool,
    /// The publisher's id, when it gave one.
    #[serde(default, borrow, skip_serializing_if = "Option::is_none")]
    pub id: Option<Cow<'a, str>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<u64>,
    /// Written by the hub itself (subscription events); no publisher can set it.
    #[serde(default, skip_serializing_if = "is_false")]
    pub hub: bool,
    #[serde(borrow)]
    pub data: Cow<'a, str>,
}

fn is_false(b: &bool) -> bool {
    !*b
}

impl<'a> Stored<'a> {
    /// The update an event holds, if it is one (an event on a `mercure:` channel whose data
    /// is an update).
    pub fn of(event: &'a Event) -> Option<Stored<'a>> {
        if !event.event.channel.starts_with(CHANNEL_PREFIX) {
            return None;
        }
        let stored: Stored<'a> = serde_json::from_str(event.event.data.get()).ok()?;
        (!stored.topics.is_empty()).then_some(stored)
    }

    /// The update's id: the publisher's, or the one made from the event's position.
    pub fn id_at(&self, pos: Position) -> Cow<'_, str> {
        match &self.id {
            // Ids the publish API took cannot hold these; an event written another way (a
            // database source) must not inject SSE fields either.
            Some(id) if !id.contains(['\r', '\n', '\0']) => Cow::Borrowed(id),
            _ => Cow::Owned(generated_id(pos)),
        }
    }
}

/// Bits of the `urn:uuid:` ids made from positions: a UUID of version 8 (RFC 9562, custom)
/// whose 12 bits after the version hold this mark, the 48 before it the position's high
/// part, and the 62 after the variant its low part.
const MARK: u64 = 0x55e;

/// The id of the update at `pos` when the publisher gave none: a `urn:uuid:` IRI that
/// [`position_of_id`] reads back. A position too large for it (never met in practice) gets
/// `urn:ssegate:<position>`.
pub fn generated_id(pos: Position) -> String {
    if pos.hi >= 1 << 48 || pos.lo >= 1 << 62 {
        return format!("urn:ssegate:{pos}");
    }
    let high: u64 = (pos.hi << 16) | (0x8 << 12) | MARK;
    let low: u64 = (0b10 << 62) | pos.lo;
    format!(
        "urn:uuid:{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
        high >> 32,
        (high >> 16) & 0xffff,
        high & 0xffff,
        low >> 48,
        low & 0xffff_ffff_ffff
    )
}

/// The position a hub-made id ([`generated_id`]) stands for; `None` for any other text.
pub fn position_of_id(id: &str) -> Option<Position> {
    if let Some(rest) = id.strip_prefix("urn:ssegate:") {
        return rest.parse().ok();
    }
    let uuid = id.strip_prefix("urn:uuid:")?;
    let groups: Vec<&str> = uuid.split('-').collect();
    let lens = [8, 4, 4, 4, 12];
    if groups.len() != 5
        || groups
            .iter()
            .zip(lens)
            .any(|(g, l)| g.len() != l || !g.bytes().all(|b| b.is_ascii_hexdigit()))
    {
        return None;
    }
    let hex = |s: &str| u64::from_str_radix(s, 16).ok();
    let high = (hex(groups[0])? << 32) | (hex(groups[1])? << 16) | hex(groups[2])?;
    let low = (hex(groups[3])? << 48) | hex(groups[4])?;
    if high & 0xffff != (0x8 << 12) | MARK || low >> 62 != 0b10 {
        return None;
    }
    Some(Position {
        hi: high >> 16,
        lo: low & ((1 << 62) - 1),
    })
}

/// Whether a publisher may choose `id`: not one the hub makes (nor `earliest`), so that
/// resuming with an id always means one thing.
pub fn is_hub_id(id: &str) -> bool {
    id == "earliest" || position_of_id(id).is_some()
}

/// The channel of updates whose canonical topic is `topic`: `mercure:` and the topic with
/// every byte that cannot be in a channel (and `%`) percent-encoded; a topic too long for a
/// channel name gets `mercure:%hash.<sha256 prefix>`, subscription events
/// `mercure:%subs.<sha256 prefix>`. (`%` followed by a letter never comes out of the
/// encoding, so neither form can be another topic's.)
pub fn channel_for(topic: &str) -> String {
    if topic.starts_with(SUBSCRIPTIONS_TOPIC) {
        return format!("{SUBSCRIPTIONS_CHANNEL}{}", short_hash(topic));
    }
    let mut out = String::with_capacity(CHANNEL_PREFIX.len() + topic.len());
    out.push_str(CHANNEL_PREFIX);
    for b in topic.bytes() {
        if b.is_ascii_alphanumeric() || b"_-.@=+/~!$&,".contains(&b) {
            out.push(b as char);
        } else {
            out.push('%');
            out.push(char::from(b"0123456789ABCDEF"[(b >> 4) as usize]));
            out.push(char::from(b"0123456789ABCDEF"[(b & 15) as usize]));
        }
    }
    if out.len() > crate::channel::MAX_CHANNEL_BYTES {
        return format!("{CHANNEL_PREFIX}%hash.{}", short_hash(topic));
    }
    out
}

fn short_hash(topic: &str) -> String {
    let mut hex = crate::auth::hex_sha256(topic.as_bytes());
    hex.truncate(40);
    hex
}

/// Whether `channel` holds Mercure updates.
pub fn is_mercure_channel(channel: &str) -> bool {
    channel.starts_with(CHANNEL_PREFIX)
}

/// The SSE frame of an update for Mercure subscribers: `id:`, `event:` (when typed),
/// `retry:` (when given) and the data, one `data:` line per line (CR, LF and CRLF all end a
/// line, as the SSE parser reads them). `None` when the event is not an update.
pub fn frame(event: &Event) -> Option<Bytes> {
    let stored = Stored::of(event)?;
    let id = stored.id_at(event.pos);
    let kind = event.event.kind.as_str();
    let mut buf = BytesMut::with_capacity(stored.data.len() + id.len() + kind.len() + 32);
    buf.put_slice(b"id: ");
    buf.put_slice(id.as_bytes());
    buf.put_u8(b'\n');
    if kind != DEFAULT_TYPE {
        buf.put_slice(b"event: ");
        buf.put_slice(kind.as_bytes());
        buf.put_u8(b'\n');
    }
    if let Some(retry) = stored.retry {
        buf.put_slice(format!("retry: {retry}\n").as_bytes());
    }
    for line in lines(&stored.data) {
        buf.put_slice(b"data: ");
        buf.put_slice(line.as_bytes());
        buf.put_u8(b'\n');
    }
    buf.put_u8(b'\n');
    Some(buf.freeze())
}

/// The lines of `text` as an SSE parser splits them (CRLF, LF or CR); an empty text is one
/// empty line.
fn lines(text: &str) -> impl Iterator<Item = &str> {
    let mut rest = Some(text);
    std::iter::from_fn(move || {
        let t = rest?;
        match t.find(['\r', '\n']) {
            None => {
                rest = None;
                Some(t)
            }
            Some(i) => {
                let skip = if t[i..].starts_with("\r\n") { 2 } else { 1 };
                rest = Some(&t[i + skip..]);
                Some(&t[..i])
            }
        }
    })
}

/// A comment line for Mercure subscribers (they have no control events).
pub fn comment(text: &str) -> Bytes {
    let clean: String = text
        .chars()
        .map(|c| if c == '\r' || c == '\n' { ' ' } else { c })
        .collect();
    Bytes::from(format!(": {clean}\n\n"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::NewEvent;
    use serde_json::value::RawValue;

    fn event(channel: &str, kind: &str, stored: &Stored<'_>, pos: Position) -> Event {
        let data = RawValue::from_string(serde_json::to_string(stored).unwrap()).unwrap();
        Event {
            pos,
            event: NewEvent::new(channel.into(), kind.into(), data, None, 0, 1 << 20).unwrap(),
        }
    }

    #[test]
    fn generated_ids_read_back_and_nothing_else_does() {
        for pos in [
            Position::seq(0),
            Position::seq(1),
            Position::seq(u64::MAX >> 3),
            Position {
                hi: 1_700_000_000_000,
                lo: 3,
            },
            Position {
                hi: (1 << 48) - 1,
                lo: (1 << 62) - 1,
            },
            Position { hi: 1 << 48, lo: 0 },
            Position::seq(u64::MAX),
        ] {
            let id = generated_id(pos);
            assert_eq!(position_of_id(&id), Some(pos), "{id}");
            assert!(is_hub_id(&id));
        }
        let id = generated_id(Position::seq(42));
        assert!(id.starts_with("urn:uuid:") && id.len() == 45, "{id}");
        for other in [
            "urn:uuid:e1ee88e2-532a-4d6f-ba70-f0f8bd584022",
            "urn:uuid:00000000-0000-855e-8000-00000000002",
            "42",
            "",
            "urn:uuid:",
            "urn:ssegate:x",
        ] {
            assert_eq!(position_of_id(other), None, "{other}");
        }
        assert!(is_hub_id("earliest"));
    }

    #[test]
    fn channels_are_valid_distinct_and_bounded() {
        let topics = [
            "https://example.com/books/1",
            "https://example.com/books/1?x=%20y#f",
            "bar",
            "é ü",
            "a:b",
            "a%3Ab",
            &"x".repeat(300),
            "/.well-known/mercure/subscriptions/Exact/a/b",
        ];
        let mut seen = std::collections::HashSet::new();
        for t in topics {
            let c = channel_for(t);
            crate::channel::validate_channel(&c).unwrap_or_else(|e| panic!("{t}: {c}: {e}"));
            assert!(seen.insert(c.clone()), "{t} → {c} twice");
            assert!(crate::channel::pattern_matches("mercure:*", &c, ""), "{c}");
        }
        assert_eq!(
            channel_for("https://example.com/books/1"),
            "mercure:https%3A//example.com/books/1"
        );
        assert!(
            channel_for("/.well-known/mercure/subscriptions/x").starts_with(SUBSCRIPTIONS_CHANNEL)
        );
    }

    #[test]
    fn frames_carry_id_type_retry_and_each_line() {
        let stored = Stored {
            topics: vec!["t".into()],
            private: false,
            id: None,
            retry: Some(5000),
            hub: false,
            data: "a\nb\r\nc\rd".into(),
        };
        let e = event("mercure:t", "book.updated", &stored, Position::seq(7));
        let text = String::from_utf8(frame(&e).unwrap().to_vec()).unwrap();
        assert_eq!(
            text,
            format!(
                "id: {}\nevent: book.updated\nretry: 5000\ndata: a\ndata: b\ndata: c\ndata: d\n\n",
                generated_id(Position::seq(7))
            )
        );
        let stored = Stored {
            topics: vec!["t".into()],
            private: true,
            id: Some("urn:x".into()),
            retry: None,
            hub: false,
            data: "".into(),
        };
        let e = event("mercure:t", DEFAULT_TYPE, &stored, Position::seq(8));
        assert_eq!(
            String::from_utf8(frame(&e).unwrap().to_vec()).unwrap(),
            "id: urn:x\ndata: \n\n"
        );
        let back = Stored::of(&e).unwrap();
        assert!(back.private);
        let native = event("logs:a", "x", &stored, Position::seq(9));
        assert!(frame(&native).is_none(), "not a mercure channel");
    }
}
