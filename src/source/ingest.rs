//! What the message sources (Redis, NATS) share: a message body becomes a record or is
//! skipped (counted, logged now and then), and a batch of messages is appended in order,
//! each keyed by its id when it has one.

use std::sync::atomic::Ordering;

use serde_json::Value;

use super::{Change, Op, SourceContext, SourceError};
use crate::throttle::Throttle;

/// A message taken from a broker: its JSON body, where it came from, its id if it has one.
pub(super) struct Ingested {
    pub record: Value,
    pub place: String,
    pub key: Option<String>,
}

/// The message with `body` from `place` as an [`Ingested`], keyed by what `key` finds in
/// its record; a body that is not JSON is skipped.
pub(super) fn ingest(
    cx: &SourceContext,
    throttle: &Throttle,
    body: &[u8],
    place: &str,
    key: impl FnOnce(&Value) -> Option<String>,
) -> Option<Ingested> {
    match parse_body(body) {
        Ok(record) => Some(Ingested {
            key: key(&record),
            record,
            place: place.to_owned(),
        }),
        Err(why) => {
            skip(cx, throttle, place, &why);
            None
        }
    }
}

/// Appends messages in order: runs of messages with an id go through
/// [`SourceContext::emit`] (each keyed by its id), runs without as one unkeyed append.
pub(super) async fn emit_ingested(
    cx: &SourceContext,
    batch: Vec<Ingested>,
) -> Result<(), SourceError> {
    let mut rest = &batch[..];
    while let Some(first) = rest.first() {
        let keyed = first.key.is_some();
        let n = rest
            .iter()
            .position(|m| m.key.is_some() != keyed)
            .unwrap_or(rest.len());
        let (run, tail) = rest.split_at(n);
        rest = tail;
        let changes: Vec<Change> = run
            .iter()
            .map(|m| Change {
                op: Op::Insert,
                record: m.record.clone(),
                place: m.place.clone(),
                key: m.key.clone().unwrap_or_default(),
            })
            .collect();
        if keyed {
            cx.emit(&changes, None).await?;
            continue;
        }
        let now = crate::time::now_ms();
        let mut events = Vec::with_capacity(changes.len());
        for change in &changes {
            match cx.event(change, now) {
                Ok(e) => events.push(e),
                Err(e) => {
                    cx.status.skipped.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(source = %cx.name, place = %change.place, error = %e, "message skipped");
                }
            }
        }
        if !events.is_empty() {
            cx.emit_events(events, None, None).await?;
        }
    }
    Ok(())
}

/// A message body as the record: JSON, or why not.
pub(super) fn parse_body(bytes: &[u8]) -> Result<Value, String> {
    serde_json::from_slice(bytes).map_err(|e| format!("the body is not JSON: {e}"))
}

/// Counts and (now and then) logs a message that cannot become an event.
pub(super) fn skip(cx: &SourceContext, throttle: &Throttle, place: &str, why: &str) {
    cx.status.skipped.fetch_add(1, Ordering::Relaxed);
    if let Some(suppressed) = throttle.allow() {
        tracing::warn!(source = %cx.name, %place, reason = why, suppressed, "message skipped");
    }
}

/// The scalar at a dotted path of a JSON body, as an id.
pub(super) fn id_at(record: &Value, path: &str) -> Option<String> {
    match path.split('.').try_fold(record, |v, part| v.get(part))? {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn ids_come_from_dotted_fields() {
        let r = json!({"meta": {"id": "m-1"}, "n": 7, "e": ""});
        assert_eq!(id_at(&r, "meta.id").as_deref(), Some("m-1"));
        assert_eq!(id_at(&r, "n").as_deref(), Some("7"));
        assert_eq!(id_at(&r, "e"), None);
        assert_eq!(id_at(&r, "missing"), None);
    }
}
