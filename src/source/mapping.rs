//! From a change to an event, by configured templates.
//!
//! ```toml
//! channel = "logs:{row.workspace_id}:{row.workflow_id}"   # {doc.…} for MongoDB: the same
//! event_type = "log.{op}"
//! users = "{row.owner_id}"          # optional; an array field gives several users
//! include = ["id", "line", "level"] # optional projection: only these fields leave the source
//! exclude = ["secret"]              # optional: never these
//! ```
//!
//! Placeholders: `{row.PATH}` / `{doc.PATH}` (a field of the changed record, dotted path for
//! nested fields), `{op}` (`insert`, `update`, `delete`, `replace`), `{source}` (the source's
//! name), `{table}` / `{collection}` (where the change happened), and for a message source
//! its metadata (`{kafka.key}`, `{kafka.headers.tenant}`: see the source). A field used in a channel
//! must be a plain segment value (a string or a number without `:`, `*`, spaces…): a change
//! whose channel cannot be built is skipped, counted and logged — it never lands on a wrong
//! or wider channel. The event's `data` is the record after projection, so secrets excluded
//! here never leave the database.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::channel::validate_channel;
use crate::log::NewEvent;

/// The templates of a source (the mapping part of its `[[sources]]` table).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Mapping {
    /// Channel template, e.g. `logs:{row.workspace_id}:{row.workflow_id}`.
    pub channel: String,
    /// Event type template; default `{op}`.
    #[serde(default = "default_event_type")]
    pub event_type: String,
    /// Target users template (a field holding one id or an array of ids).
    #[serde(default)]
    pub users: Option<String>,
    /// Only these fields of the record are published (all when empty).
    #[serde(default)]
    pub include: Vec<String>,
    /// These fields are never published.
    #[serde(default)]
    pub exclude: Vec<String>,
}

fn default_event_type() -> String {
    "{op}".into()
}

/// What happened to a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Op {
    Insert,
    Update,
    Delete,
    Replace,
}

impl Op {
    pub fn as_str(self) -> &'static str {
        match self {
            Op::Insert => "insert",
            Op::Update => "update",
            Op::Delete => "delete",
            Op::Replace => "replace",
        }
    }
}

/// One change a source saw.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    pub op: Op,
    /// The record: the row or document (after the change; before it for a delete).
    pub record: Value,
    /// Where it happened (`public.logs`, `app.posts`).
    pub place: String,
    /// Identifies the change itself (LSN and row, resume token, outbox id…): the
    /// idempotency key of the event, so a change seen twice after a restart is appended once.
    pub key: String,
}

/// Why a change could not become an event.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MappingError {
    #[error("template {template:?}: field {field:?} is missing or not a string or number")]
    MissingField { template: String, field: String },
    #[error("template {template:?} gives {value:?}, which is not a valid channel: {reason}")]
    BadChannel {
        template: String,
        value: String,
        reason: String,
    },
    /// The event the templates give does not pass the event gate (a reserved or invalid
    /// type, invalid users, too large).
    #[error("{0}")]
    Invalid(#[from] crate::event::EventError),
}

impl Mapping {
    /// Checks the templates at start: every placeholder is known and the channel template
    /// with sample values is a valid channel.
    pub fn validate(&self) -> Result<(), String> {
        for (what, t) in [
            ("channel", Some(&self.channel)),
            ("event_type", Some(&self.event_type)),
            ("users", self.users.as_ref()),
        ] {
            let Some(t) = t else { continue };
            let sample =
                render(t, &|_| Some("x".to_owned())).map_err(|e| format!("{what}: {e}"))?;
            if what == "channel" {
                validate_channel(&sample).map_err(|e| format!("channel template {t:?}: {e}"))?;
            }
        }
        if self.channel.is_empty() {
            return Err("channel: a template is required".into());
        }
        Ok(())
    }

    /// The event for `change` (published at `time_ms` by source `source`), through the
    /// event gate ([`NewEvent::new`]) with `max_bytes` as the size limit.
    pub fn event(
        &self,
        source: &str,
        change: &Change,
        time_ms: u64,
        max_bytes: usize,
    ) -> Result<NewEvent, MappingError> {
        self.event_with(source, change, None, time_ms, max_bytes)
    }

    /// [`Mapping::event`] for a change that carries its message's metadata: `meta` is a
    /// JSON object whose top-level keys are namespaces (`{"kafka": {"topic": …}}`), and
    /// `{kafka.topic}` names a field of it in every template.
    pub fn event_with(
        &self,
        source: &str,
        change: &Change,
        meta: Option<&Value>,
        time_ms: u64,
        max_bytes: usize,
    ) -> Result<NewEvent, MappingError> {
        let lookup = |name: &str| -> Option<String> {
            match name {
                "op" => Some(change.op.as_str().to_owned()),
                "source" => Some(source.to_owned()),
                "table" | "collection" => Some(change.place.clone()),
                _ => scalar(lookup_field(change, meta, name)?),
            }
        };
        let missing = |template: &str, field: String| MappingError::MissingField {
            template: template.to_owned(),
            field,
        };
        // In a channel every value must be one plain segment: a value with `:` would shift
        // the event onto another channel, `*` could never be subscribed to.
        let bad_value = std::cell::RefCell::new(None);
        let segment = |name: &str| {
            let v = lookup(name)?;
            if validate_channel(&v).is_err() || v.contains(':') {
                *bad_value.borrow_mut() = Some(v);
                return None;
            }
            Some(v)
        };
        let channel = render(&self.channel, &segment).map_err(|f| match bad_value.take() {
            Some(v) => MappingError::BadChannel {
                template: self.channel.clone(),
                value: v.chars().take(100).collect(),
                reason: format!("the value of {f} is not a plain channel segment"),
            },
            None => missing(&self.channel, f),
        })?;
        let kind = render(&self.event_type, &lookup).map_err(|f| missing(&self.event_type, f))?;
        let users = match &self.users {
            None => None,
            Some(t) => Some(self.users_of(t, change, meta).map_err(|f| missing(t, f))?),
        };
        let data = self.project(&change.record);
        let data = serde_json::value::to_raw_value(&data).expect("JSON values serialize");
        Ok(NewEvent::new(
            channel, kind, data, users, time_ms, max_bytes,
        )?)
    }

    /// `{row.owner}` alone may name an array field (several users); otherwise the template
    /// renders one user id.
    fn users_of(
        &self,
        template: &str,
        change: &Change,
        meta: Option<&Value>,
    ) -> Result<Vec<String>, String> {
        let whole = template
            .strip_prefix('{')
            .and_then(|t| t.strip_suffix('}'))
            .filter(|t| !t.contains(['{', '}']));
        if let Some(name) = whole {
            if let Some(Value::Array(items)) = lookup_field(change, meta, name) {
                return Ok(items.iter().filter_map(scalar).collect());
            }
        }
        let lookup = |name: &str| -> Option<String> { scalar(lookup_field(change, meta, name)?) };
        render(template, &lookup).map(|u| vec![u])
    }

    /// The record with `include` / `exclude` applied (top-level fields).
    pub fn project(&self, record: &Value) -> Value {
        let Value::Object(map) = record else {
            return record.clone();
        };
        let kept: Map<String, Value> = map
            .iter()
            .filter(|(k, _)| self.include.is_empty() || self.include.iter().any(|i| i == *k))
            .filter(|(k, _)| !self.exclude.iter().any(|e| e == *k))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        Value::Object(kept)
    }
}

/// Renders `{name}` placeholders with `lookup`; `Err(name)` for the first one it cannot fill.
fn render(template: &str, lookup: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
    let mut out = String::with_capacity(template.len() + 16);
    let mut rest = template;
    while let Some(start) = rest.find('{') {
        out.push_str(&rest[..start]);
        let Some(len) = rest[start..].find('}') else {
            return Err(format!("unclosed `{{` in {template:?}"));
        };
        let name = &rest[start + 1..start + len];
        out.push_str(&lookup(name).ok_or_else(|| name.to_owned())?);
        rest = &rest[start + len + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// `row.PATH` / `doc.PATH` in the record, else `NS.PATH` in the message's metadata.
fn lookup_field<'a>(change: &'a Change, meta: Option<&'a Value>, name: &str) -> Option<&'a Value> {
    match name
        .strip_prefix("row.")
        .or_else(|| name.strip_prefix("doc."))
    {
        Some(path) => field(&change.record, path),
        None => field(meta?, name),
    }
}

fn field<'a>(record: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.').try_fold(record, |v, part| v.get(part))
}

fn scalar(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn mapping() -> Mapping {
        Mapping {
            channel: "logs:{row.ws}:{row.wf}".into(),
            event_type: "log.{op}".into(),
            users: Some("{row.owner}".into()),
            include: vec![],
            exclude: vec!["secret".into()],
        }
    }

    fn change(record: Value) -> Change {
        Change {
            op: Op::Insert,
            record,
            place: "public.logs".into(),
            key: "k".into(),
        }
    }

    #[test]
    fn templates_fill_channel_type_users_and_projection() {
        let e = mapping()
            .event(
                "etl",
                &change(json!({"ws": "w1", "wf": 7, "owner": "u1", "line": "hi", "secret": "s"})),
                5,
                65_536,
            )
            .unwrap();
        assert_eq!(e.channel, "logs:w1:7");
        assert_eq!(e.kind, "log.insert");
        assert_eq!(e.users, Some(vec!["u1".to_owned()]));
        let data: Value = serde_json::from_str(e.data.get()).unwrap();
        assert_eq!(
            data,
            json!({"ws": "w1", "wf": 7, "owner": "u1", "line": "hi"})
        );
    }

    #[test]
    fn array_users_and_missing_or_unsafe_fields() {
        let m = mapping();
        let e = m
            .event(
                "s",
                &change(json!({"ws": "w", "wf": "f", "owner": ["a", "b"]})),
                0,
                65_536,
            )
            .unwrap();
        assert_eq!(e.users, Some(vec!["a".to_owned(), "b".to_owned()]));
        assert!(matches!(
            m.event("s", &change(json!({"ws": "w", "owner": "u"})), 0, 65_536),
            Err(MappingError::MissingField { .. })
        ));
        // A value with `:` or `*` never widens or shifts the channel.
        for bad in ["a:b", "*", "x y", ""] {
            assert!(
                matches!(
                    m.event(
                        "s",
                        &change(json!({"ws": bad, "wf": "f", "owner": "u"})),
                        0,
                        65_536
                    ),
                    Err(MappingError::BadChannel { .. })
                ),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn a_rendered_control_type_does_not_pass_the_gate() {
        let m = Mapping {
            event_type: "{row.kind}".into(),
            ..mapping()
        };
        for kind in crate::event::RESERVED_TYPES {
            let change = change(json!({"ws": "w", "wf": "f", "owner": "u", "kind": kind}));
            assert!(
                matches!(
                    m.event("s", &change, 0, 65_536),
                    Err(MappingError::Invalid(crate::event::EventError::Type(_)))
                ),
                "{kind}"
            );
        }
    }

    #[test]
    fn validation_at_start() {
        assert!(mapping().validate().is_ok());
        let bad = Mapping {
            channel: "logs::{row.x}".into(),
            ..mapping()
        };
        assert!(bad.validate().is_err());
        let unclosed = Mapping {
            channel: "logs:{row.x".into(),
            ..mapping()
        };
        assert!(unclosed.validate().is_err());
    }

    #[test]
    fn include_keeps_only_listed_fields() {
        let m = Mapping {
            include: vec!["line".into()],
            ..mapping()
        };
        assert_eq!(
            m.project(&json!({"line": 1, "other": 2})),
            json!({"line": 1})
        );
    }
}
