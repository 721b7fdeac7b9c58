//! `POST /v1/publish`: one event or an array of events, appended atomically, acknowledged
//! once durable. Every event is validated before anything is appended, so a bad request
//! changes nothing.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::Json;
use serde::Deserialize;
use serde_json::json;
use serde_json::value::RawValue;

use super::{authenticate, ApiError, AppState};
use crate::config::LimitsConfig;
use crate::event::{check_key, EventError, NewEvent};
use crate::log::AppendItem;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PublishEvent {
    channel: Option<String>,
    channels: Option<Vec<String>>,
    #[serde(rename = "type")]
    kind: Option<String>,
    data: Option<Box<RawValue>>,
    id: Option<String>,
    users: Option<Vec<String>>,
}

pub(super) async fn publish(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<serde_json::Value>, ApiError> {
    let principal = authenticate(&state, &headers, None).await?;
    let limits = &state.cfg.limits;
    let body_limit = limits
        .max_event_bytes
        .saturating_mul(limits.max_batch_events)
        .clamp(limits.max_event_bytes + 4096, 32 << 20);
    let body = super::edge::read_body(&state, body, body_limit).await?;
    let now = crate::time::now_ms();
    let items = parse_body(&body, limits, now)?;
    let mut denied = Vec::new();
    for ev in items.iter().flat_map(|i| &i.events) {
        if !principal.may_publish(&ev.channel) && !denied.contains(&ev.channel) {
            denied.push(ev.channel.clone());
        }
    }
    if !denied.is_empty() {
        return Err(ApiError::forbidden_channels("publish to", denied));
    }
    let cost: usize = items.iter().map(|i| i.events.len()).sum();
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
    let ids: Vec<String> = appended
        .iter()
        .flat_map(|a| a.positions.iter().map(|p| p.to_string()))
        .collect();
    Ok(Json(json!({ "ids": ids })))
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
    let events: Result<Vec<PublishEvent>, String> = if text.trim_start().starts_with('[') {
        serde_json::from_str::<Vec<&RawValue>>(text)
            .map_err(|e| e.to_string())
            .and_then(|raw| {
                raw.iter()
                    .map(|r| super::json_object(r.get().as_bytes()))
                    .collect()
            })
    } else {
        super::json_object(text.as_bytes()).map(|e| vec![e])
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
    // What is appended counts: an event published to `channels` is one event per channel.
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
        .map(|(i, e)| to_item(e, i, now, limits.max_event_bytes))
        .collect()
}

pub use crate::event::RESERVED_TYPES;

/// Validates one published event; `i` is its index in the request, for messages.
fn to_item(
    e: PublishEvent,
    i: usize,
    now: u64,
    max_event_bytes: usize,
) -> Result<AppendItem, ApiError> {
    let at = |msg: String| format!("event {i}: {msg}");
    let channels = match (e.channel, e.channels) {
        (Some(c), None) => vec![c],
        (None, Some(cs)) if !cs.is_empty() => cs,
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
    let mut data = e
        .data
        .unwrap_or_else(|| RawValue::from_string("null".into()).expect("null is JSON"));
    let mut events = Vec::with_capacity(channels.len());
    for channel in channels {
        let event = NewEvent::new(
            channel,
            kind.clone(),
            data.clone(),
            e.users.clone(),
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
