//! What a valid event is: the one gate every producer passes — the publish API, every source,
//! the Dapr route, and anything added later. A [`NewEvent`] can only be built by
//! [`NewEvent::new`], which checks the channel, the type (the stream's own control types
//! included), the target users and the encoded size, and stores the data as compact JSON; so
//! whatever reaches the log is safe to put on the wire. (Events read back from the log were
//! checked when they were appended.) An idempotency key is checked by [`check_key`], and the
//! type of an event that is sent but not stored (an admin broadcast) by [`check_type`].
//!
//! ```
//! use serde_json::value::RawValue;
//! use ssegate::event::{EventError, NewEvent};
//!
//! let data = RawValue::from_string(r#"{ "line": "step 1" }"#.into()).unwrap();
//! let e = NewEvent::new("logs:w1".into(), "log.created".into(), data, None, 0, 65_536).unwrap();
//! assert_eq!(e.data.get(), r#"{"line":"step 1"}"#);
//!
//! let data = RawValue::from_string("null".into()).unwrap();
//! let refused = NewEvent::new("logs:w1".into(), "closing".into(), data, None, 0, 65_536);
//! assert!(matches!(refused, Err(EventError::Type(_))));
//! ```

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::channel::{validate_channel, ChannelError};

/// The default of `limits.max_event_bytes`: the largest encoded event.
pub const DEFAULT_MAX_EVENT_BYTES: usize = 65_536;
/// Longest event type, in bytes.
pub const MAX_TYPE_BYTES: usize = 128;
/// Longest idempotency key, in bytes.
pub const MAX_KEY_BYTES: usize = 256;
/// Most target users of one event.
pub const MAX_USERS: usize = 1_000;
/// Longest user id, in bytes.
pub const MAX_USER_BYTES: usize = 256;

/// Event types the stream uses for its own control events; no event may carry one.
pub const RESERVED_TYPES: [&str; 5] = ["connected", "gap", "subscribed", "unsubscribed", "closing"];

/// Envelope bytes besides channel, type, users and data: `{"id":…,"time":…}` and the `id:` line.
const ENVELOPE_OVERHEAD: usize = 128;

/// Why an event was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EventError {
    #[error("invalid channel {channel:?}: {source}")]
    Channel {
        channel: String,
        source: ChannelError,
    },
    #[error("{0}")]
    Type(String),
    #[error("`users` must be at most {MAX_USERS} user ids of 1 to {MAX_USER_BYTES} printable characters")]
    Users,
    #[error("the idempotency `id` must be 1 to {MAX_KEY_BYTES} bytes without control characters (no CR or LF)")]
    Key,
    #[error("the event is {size} bytes encoded; the limit is {max} (limits.max_event_bytes)")]
    TooLarge { size: usize, max: usize },
}

impl EventError {
    /// The stable error code of the publish API.
    pub fn code(&self) -> &'static str {
        match self {
            EventError::Channel { .. } => "invalid_channel",
            EventError::Type(_) => "invalid_type",
            EventError::Users => "invalid_users",
            EventError::Key => "invalid_id",
            EventError::TooLarge { .. } => "event_too_large",
        }
    }
}

/// Proof that an event passed [`NewEvent::new`]: it cannot be made outside this module, so
/// neither can a `NewEvent`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Checked(());

/// Events read back from the log were checked when appended.
fn stored() -> Checked {
    Checked(())
}

/// An event to append. Its fields can be read anywhere; it can only be made by
/// [`NewEvent::new`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NewEvent {
    pub channel: String,
    #[serde(rename = "type")]
    pub kind: String,
    /// Compact JSON text (no raw newline).
    pub data: Box<RawValue>,
    /// When set, only these users' connections receive the event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub users: Option<Vec<String>>,
    /// Publish time, Unix milliseconds; retention by age uses it.
    pub time_ms: u64,
    #[serde(skip, default = "stored")]
    _checked: Checked,
}

impl NewEvent {
    /// The one way to make an event: checks the channel, the type, the users and the encoded
    /// size (at most `max_bytes`), and compacts the data.
    pub fn new(
        channel: String,
        kind: String,
        data: Box<RawValue>,
        users: Option<Vec<String>>,
        time_ms: u64,
        max_bytes: usize,
    ) -> Result<Self, EventError> {
        validate_channel(&channel).map_err(|source| EventError::Channel {
            channel: channel.chars().take(80).collect(),
            source,
        })?;
        check_type(&kind)?;
        if let Some(users) = &users {
            let bad = |u: &String| {
                u.is_empty() || u.len() > MAX_USER_BYTES || u.chars().any(char::is_control)
            };
            if users.len() > MAX_USERS || users.iter().any(bad) {
                return Err(EventError::Users);
            }
        }
        let data = if has_whitespace(data.get()) {
            RawValue::from_string(compact_json(data.get())).expect("compacted JSON stays valid")
        } else {
            data
        };
        let event = NewEvent {
            channel,
            kind,
            data,
            users,
            time_ms,
            _checked: Checked(()),
        };
        let size = event.encoded_size();
        if size > max_bytes {
            return Err(EventError::TooLarge {
                size,
                max: max_bytes,
            });
        }
        Ok(event)
    }

    /// An event read back from the log: it passed [`NewEvent::new`] when it was appended.
    pub(crate) fn stored(
        channel: String,
        kind: String,
        data: Box<RawValue>,
        users: Option<Vec<String>>,
        time_ms: u64,
    ) -> Self {
        NewEvent {
            channel,
            kind,
            data,
            users,
            time_ms,
            _checked: stored(),
        }
    }

    /// The event's size as a stream frame (an upper estimate): what `limits.max_event_bytes`
    /// bounds.
    pub fn encoded_size(&self) -> usize {
        let users: usize = self.users.iter().flatten().map(|u| u.len() + 3).sum();
        self.data.get().len() + self.channel.len() + self.kind.len() * 2 + users + ENVELOPE_OVERHEAD
    }

    /// Roughly the memory the event takes, for byte-bounded caches.
    pub fn approx_bytes(&self) -> usize {
        self.data.get().len()
            + self.channel.len()
            + self.kind.len()
            + self
                .users
                .as_ref()
                .map_or(0, |u| u.iter().map(|s| s.len() + 24).sum())
            + 96
    }
}

impl PartialEq for NewEvent {
    fn eq(&self, other: &Self) -> bool {
        self.channel == other.channel
            && self.kind == other.kind
            && self.data.get() == other.data.get()
            && self.users == other.users
            && self.time_ms == other.time_ms
    }
}

/// Checks an event type: 1 to 128 bytes, no control characters (CR or LF would inject SSE
/// fields), not one of the stream's control event types.
pub fn check_type(kind: &str) -> Result<(), EventError> {
    if kind.is_empty() || kind.len() > MAX_TYPE_BYTES || kind.chars().any(char::is_control) {
        return Err(EventError::Type(format!(
            "`type` must be 1 to {MAX_TYPE_BYTES} bytes without control characters (no CR or LF)"
        )));
    }
    if RESERVED_TYPES.contains(&kind) {
        return Err(EventError::Type(format!(
            "`type` {kind:?} is reserved for the stream's control events ({})",
            RESERVED_TYPES.join(", ")
        )));
    }
    Ok(())
}

/// Checks an idempotency key: 1 to 256 bytes, no control characters.
pub fn check_key(key: &str) -> Result<(), EventError> {
    if key.is_empty() || key.len() > MAX_KEY_BYTES || key.chars().any(char::is_control) {
        return Err(EventError::Key);
    }
    Ok(())
}

/// Whether valid JSON text has whitespace (in a string or between tokens): a byte of 0x20
/// or less, since JSON has no other such byte (raw control characters are not allowed in
/// strings). Eight bytes at a time.
fn has_whitespace(json: &str) -> bool {
    const ONES: u64 = u64::from_ne_bytes([0x01; 8]);
    const HIGHS: u64 = u64::from_ne_bytes([0x80; 8]);
    let bytes = json.as_bytes();
    let mut words = bytes.chunks_exact(8);
    // A byte below 0x21 (and not 0x80 or more) leaves its high bit set here.
    let low = |w: u64| w.wrapping_sub(ONES * 0x21) & !w & HIGHS != 0;
    if words
        .by_ref()
        .any(|w| low(u64::from_ne_bytes(w.try_into().expect("8 bytes"))))
    {
        return true;
    }
    words.remainder().iter().any(|b| *b <= b' ')
}

/// Removes insignificant whitespace from valid JSON text, keeping everything else byte for
/// byte (numbers keep their precision, keys their order).
pub fn compact_json(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let (mut in_string, mut escaped) = (false, false);
    for c in text.chars() {
        if in_string {
            out.push(c);
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_string = false;
            }
        } else if c == '"' {
            in_string = true;
            out.push(c);
        } else if !matches!(c, ' ' | '\n' | '\r' | '\t') {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json(text: &str) -> Box<RawValue> {
        RawValue::from_string(text.into()).unwrap()
    }

    fn make(channel: &str, kind: &str, users: Option<Vec<&str>>) -> Result<NewEvent, EventError> {
        let users = users.map(|u| u.into_iter().map(str::to_owned).collect());
        NewEvent::new(channel.into(), kind.into(), json("1"), users, 0, 1024)
    }

    #[test]
    fn the_gate_refuses_each_kind_of_invalid_event() {
        assert!(make("a:b", "t", None).is_ok());
        for reserved in RESERVED_TYPES {
            assert_eq!(
                make("a:b", reserved, None).unwrap_err().code(),
                "invalid_type"
            );
        }
        assert_eq!(
            make("a:b", "x\ny", None).unwrap_err().code(),
            "invalid_type"
        );
        assert_eq!(make("a:b", "", None).unwrap_err().code(), "invalid_type");
        assert_eq!(
            make("a b", "t", None).unwrap_err().code(),
            "invalid_channel"
        );
        assert_eq!(
            make("a:*", "t", None).unwrap_err().code(),
            "invalid_channel"
        );
        assert_eq!(
            make("a:b", "t", Some(vec![""])).unwrap_err().code(),
            "invalid_users"
        );
        assert_eq!(
            make("a:b", "t", Some(vec!["u\r"])).unwrap_err().code(),
            "invalid_users"
        );
        let big = json(&format!("\"{}\"", "x".repeat(2000)));
        let e = NewEvent::new("a:b".into(), "t".into(), big, None, 0, 1024).unwrap_err();
        assert_eq!(e.code(), "event_too_large");
        assert!(check_key("k").is_ok());
        assert!(check_key("").is_err() && check_key("a\nb").is_err());
    }

    #[test]
    fn data_is_stored_compact_and_stored_events_read_back_equal() {
        let e = NewEvent::new(
            "a:b".into(),
            "t".into(),
            json("{ \"s\": \"a b\",\n \"n\": 1.50 }"),
            Some(vec!["u1".into()]),
            7,
            1024,
        )
        .unwrap();
        assert_eq!(e.data.get(), r#"{"s":"a b","n":1.50}"#);
        let text = serde_json::to_string(&e).unwrap();
        assert!(!text.contains("checked"), "the proof is not stored: {text}");
        let back: NewEvent = serde_json::from_str(&text).unwrap();
        assert_eq!(back, e);
    }

    #[test]
    fn whitespace_is_found_wherever_it_is() {
        for text in [
            "1",
            "\"abcdefgh\"",
            "[1,2,3,4,5,6,7,8,9]",
            "{\"é\":\"ü€\"}",
            "\"\\u00ff\"",
        ] {
            assert!(!has_whitespace(text), "{text}");
        }
        let base = "[1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17]";
        for i in 1..base.len() {
            for ws in [" ", "\n", "\r", "\t"] {
                let text = format!("{}{ws}{}", &base[..i], &base[i..]);
                assert!(has_whitespace(&text), "{text:?}");
            }
        }
        assert!(has_whitespace("\"a b\""));
        assert!(!has_whitespace("\"\u{80}\u{a0}\u{2028}\""));
    }

    #[test]
    fn compacts_without_touching_strings() {
        assert_eq!(
            compact_json("{ \"a\" : [1, 2],\n\t\"b\": \"x y\\\" z\" }"),
            r#"{"a":[1,2],"b":"x y\" z"}"#
        );
    }
}
