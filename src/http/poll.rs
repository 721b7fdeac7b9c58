//! `GET /v1/poll`: the long-poll fallback for clients behind proxies that buffer streams.
//! Same channels, credentials and resume position as the stream; returns as soon as an event
//! is available after `last_event_id`, or an empty list at the timeout.

use std::sync::Arc;
use std::time::Duration;

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, RawQuery, State};
use axum::http::HeaderMap;
use axum::Json;
use serde::Serialize;
use serde_json::value::RawValue;
use tokio::time::Instant;

use super::{subscribe_request, ApiError, AppState, Subscribe};
use crate::channel::subscription_matches;
use crate::hub::frame::envelope;
use crate::log::{Event, Gap};

/// Events returned by one poll at most.
const MAX_EVENTS: usize = 1_000;

pub(super) async fn poll(
    State(state): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
) -> Result<Json<PollResponse>, ApiError> {
    let Subscribe {
        query,
        principal,
        channels,
        resume,
        ..
    } = subscribe_request(&state, peer, raw.as_deref(), &headers).await?;
    let timeout_ms = match query.timeout_ms.as_deref() {
        None => 25_000,
        Some(t) => t.parse::<u64>().map_err(|_| {
            ApiError::bad_request(
                "invalid_timeout",
                "`timeout_ms` must be a whole number of milliseconds",
            )
        })?,
    }
    .min(state.cfg.stream.max_poll_timeout_ms);
    let log = state.hub.log();
    let mut after = match resume {
        Some(pos) => pos,
        None => log.bounds().await.map_err(ApiError::from)?.head,
    };
    let user = principal.user.as_str();
    let filter = |e: &Event| {
        e.targets(user)
            && channels
                .iter()
                .any(|c| subscription_matches(c, &e.event.channel))
    };
    let deadline = Instant::now() + Duration::from_millis(timeout_ms);
    let mut gap: Option<Gap> = None;
    let mut events = Vec::new();
    loop {
        let wait = deadline.saturating_duration_since(Instant::now());
        let read = tokio::select! {
            _ = state.shutdown.cancelled() => break,
            r = log.read(after, MAX_EVENTS, &filter, (!wait.is_zero()).then_some(wait)) => {
                r.map_err(ApiError::from)?
            }
        };
        gap = gap.or(read.gap);
        after = after.max(read.next);
        events = read.events;
        // Nothing for us in what was scanned: scan on, or wait for more, until the deadline.
        if !events.is_empty() || gap.is_some() || Instant::now() >= deadline {
            break;
        }
    }
    Ok(Json(PollResponse {
        events: events.iter().map(|e| envelope(e)).collect(),
        last_event_id: after.to_string(),
        gap: gap.is_some(),
        oldest_id: gap.map(|g| g.oldest.map(|p| p.to_string())),
        gap_reason: gap.map(|g| g.reason()),
    }))
}

#[derive(Serialize)]
pub(super) struct PollResponse {
    /// Envelopes exactly as the stream's `data:` lines carry them.
    events: Vec<Box<RawValue>>,
    /// Where the next poll resumes (everything up to here was scanned).
    last_event_id: String,
    gap: bool,
    /// With `gap`: the oldest retained event (`null` if the log is empty).
    #[serde(skip_serializing_if = "Option::is_none")]
    oldest_id: Option<Option<String>>,
    /// With `gap`: `retention` or `damaged`.
    #[serde(skip_serializing_if = "Option::is_none")]
    gap_reason: Option<&'static str>,
}
