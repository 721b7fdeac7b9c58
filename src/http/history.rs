//! `GET /v1/channels/{channel}/history`: the newest events of one channel, oldest first, from
//! the log's per-channel index — what a page loads before it subscribes with `since`.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, Path, RawQuery, State};
use axum::http::HeaderMap;
use axum::Json;
use serde::Serialize;
use serde_json::value::RawValue;

use super::{authenticate, check_channels, client_ip, parse_event_id, ApiError, AppState};
use crate::channel::is_pattern;
use crate::hub::frame::envelope;
use crate::log::{Event, HistoryQuery, Position, MAX_HISTORY};

/// Events per answer when `limit` is not given.
const DEFAULT_LIMIT: usize = 100;

#[derive(Debug, Serialize)]
pub(super) struct HistoryResponse {
    channel: String,
    /// Envelopes `{id, channel, type, time, data}`, oldest first.
    events: Vec<Box<RawValue>>,
    /// Older events of the channel may have been left out: ask again with `before` =
    /// `next_before`.
    more: bool,
    /// With `more`: where to page back from (the oldest event looked at).
    #[serde(skip_serializing_if = "Option::is_none")]
    next_before: Option<Position>,
    /// The answer holds every event of the channel up to this position: subscribe with
    /// `since` = it for what comes next, with no gap and no duplicate.
    last_event_id: Position,
}

pub(super) async fn history(
    State(state): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(channel): Path<String>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
) -> Result<Json<HistoryResponse>, ApiError> {
    let mut limit = None;
    let mut before = None;
    let mut access_token = None;
    for (k, v) in form_urlencoded::parse(raw.as_deref().unwrap_or("").as_bytes()) {
        match k.as_ref() {
            "limit" => limit = Some(v.into_owned()),
            "before" => before = Some(v.into_owned()),
            "access_token" => access_token = Some(v.into_owned()),
            _ => {}
        }
    }
    let ip = client_ip(&state, peer, &headers);
    state
        .connect_rate
        .check(&ip, 1)
        .map_err(|r| state.limited(r))?;
    let principal = authenticate(&state, &headers, access_token.as_deref()).await?;
    let limit = match limit.as_deref().map(str::trim) {
        None | Some("") => DEFAULT_LIMIT,
        Some(raw) => raw
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=MAX_HISTORY).contains(n))
            .ok_or_else(|| {
                ApiError::bad_request(
                    "invalid_limit",
                    format!("`limit` must be a whole number from 1 to {MAX_HISTORY}"),
                )
            })?,
    };
    let before = before
        .as_deref()
        .map(str::trim)
        .filter(|b| !b.is_empty())
        .map(parse_event_id)
        .transpose()?;
    if is_pattern(&channel) {
        return Err(ApiError::bad_request(
            "invalid_channel",
            "history is kept per channel: name one channel, not a pattern",
        ));
    }
    check_channels(&state, &principal, std::slice::from_ref(&channel))?;
    let log = state.hub.log();
    let head = log.bounds().await?.head;
    let through = match before {
        Some(b) => log.position_before(b).min(head),
        None => head,
    };
    let user = principal.user.as_str();
    let targets = |e: &Event| e.event.channel == channel && e.targets(user);
    let q = HistoryQuery {
        channel: &channel,
        after: Position::ZERO,
        through,
        limit,
    };
    let found = log.history(q, &targets).await?;
    Ok(Json(HistoryResponse {
        events: found.events.iter().map(|e| envelope(e)).collect(),
        more: found.more,
        next_before: found.looked_back_to.filter(|_| found.more),
        last_event_id: through,
        channel,
    }))
}
