//! `GET /v1/stream` and `POST /v1/connections/{id}/subscriptions`.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Path, RawQuery, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::Response;
use axum::Json;
use bytes::BytesMut;
use serde::Deserialize;
use serde_json::json;
use tokio::time::Instant;

use super::{
    authenticate, check_channels, parse_event_id, resume_position, ApiError, AppState, StreamQuery,
};
use crate::channel::validate_channel;
use crate::hub::{frame, ChannelChange, Cursor, CursorOptions, UpdateError};

pub(super) async fn stream(
    State(state): State<Arc<AppState>>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let query = StreamQuery::parse(raw.as_deref());
    let principal = authenticate(&state, &headers, query.access_token.as_deref())?;
    if query.channels.is_empty() {
        return Err(ApiError::bad_request(
            "missing_channel",
            "give at least one `channel` query parameter",
        ));
    }
    let channels = check_channels(&state, &principal, &query.channels)?;
    let resume = resume_position(&headers, &query)?;
    let limits = &state.cfg.limits;
    if state.hub.connection_count() >= limits.max_connections {
        return Err(ApiError::TooMany {
            code: "too_many_connections",
            message: "this server has reached its connection limit; retry later".into(),
            retry_after_s: 5,
        });
    }

    // Register before reading the head: every event after the head is then either queued
    // for us or (if it was appended before the head read) covered by the replay.
    let registration = state.hub.register(principal.user.clone(), &channels);
    let conn = registration.0.conn.clone();
    let bounds = state
        .hub
        .log()
        .bounds()
        .await
        .map_err(ApiError::LogUnavailable)?;
    let mut preamble = BytesMut::new();
    preamble.extend_from_slice(b": ok\n\n");
    preamble.extend_from_slice(format!("retry: {}\n\n", state.cfg.stream.retry_ms).as_bytes());
    preamble.extend_from_slice(&frame::control_frame(
        "connected",
        &json!({
            "connection_id": conn.id,
            "user": principal.user,
            "channels": channels,
            "heartbeat_ms": state.cfg.stream.heartbeat_ms,
        }),
    ));
    let (start, replay) = match resume {
        Some(pos) if pos > bounds.head => {
            // An id from the future: another log, or one that lost its data. Say so, and
            // start live.
            preamble.extend_from_slice(&frame::control_frame(
                "gap",
                &json!({ "last_event_id": pos.to_string(), "oldest_id": bounds.oldest.map(|p| p.to_string()) }),
            ));
            state
                .hub
                .stats
                .gaps
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            (bounds.head, false)
        }
        Some(pos) => (pos, true),
        None => (bounds.head, false),
    };
    let expires_at = principal.expires_at.map(|exp| {
        let now_s = crate::time::now_ms() / 1000;
        Instant::now() + Duration::from_secs(exp.saturating_sub(now_s))
    });
    tracing::debug!(conn = %conn.id, user = %principal.user, ?channels, resume = ?resume, "stream opened");
    let cursor = Cursor::new(
        state.hub.clone(),
        registration,
        start,
        replay,
        preamble.freeze(),
        CursorOptions {
            heartbeat: Duration::from_millis(state.cfg.stream.heartbeat_ms),
            catchup_batch: state.cfg.stream.catchup_batch,
            expires_at,
            shutdown: state.shutdown.clone(),
        },
    );
    let body = futures::stream::unfold(cursor, |mut cursor| async move {
        let chunk = cursor.next_chunk().await?;
        Some((Ok::<Bytes, Infallible>(chunk), cursor))
    });
    let mut response = Response::new(Body::from_stream(body));
    *response.status_mut() = StatusCode::OK;
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream; charset=utf-8"),
    );
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("no-cache, no-transform"),
    );
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    Ok(response)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct SubscriptionChange {
    #[serde(default)]
    add: Vec<String>,
    #[serde(default)]
    remove: Vec<String>,
    #[serde(default)]
    last_event_id: Option<String>,
}

pub(super) async fn subscriptions(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<serde_json::Value>, ApiError> {
    let query = StreamQuery::parse(raw.as_deref());
    let principal = authenticate(&state, &headers, query.access_token.as_deref())?;
    let change: SubscriptionChange = serde_json::from_slice(&body).map_err(|e| {
        ApiError::bad_request(
            "invalid_json",
            format!("the body must be {{\"add\": [...], \"remove\": [...]}}: {e}"),
        )
    })?;
    // Another user's connection is reported as missing: connection ids are not for probing.
    let conn = state
        .hub
        .connection(&id)
        .filter(|c| c.user == principal.user)
        .ok_or_else(|| ApiError::NotFound {
            code: "connection_not_found",
            message: format!("no open connection {id:?} of yours on this node"),
        })?;
    let add = check_channels(&state, &principal, &change.add)?;
    for c in &change.remove {
        validate_channel(c).map_err(|e| ApiError::invalid_channel(c, e))?;
    }
    let since = match change.last_event_id.as_deref().map(str::trim) {
        Some(id) if !id.is_empty() => parse_event_id(id)?,
        _ => {
            state
                .hub
                .log()
                .bounds()
                .await
                .map_err(ApiError::LogUnavailable)?
                .head
        }
    };
    let channels = state
        .hub
        .update(
            &conn,
            &ChannelChange {
                add: &add,
                remove: &change.remove,
                since,
            },
            state.cfg.limits.max_channels_per_connection,
        )
        .map_err(|e| match e {
            UpdateError::TooManyChannels(_) => {
                ApiError::bad_request("too_many_channels", e.to_string())
            }
        })?;
    Ok(Json(json!({ "channels": channels })))
}
