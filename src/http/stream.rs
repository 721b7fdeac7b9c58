//! `GET /v1/stream` and `POST /v1/connections/{id}/subscriptions`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Weak};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, Path, RawQuery, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::Response;
use axum::Json;
use bytes::BytesMut;
use serde::Deserialize;
use serde_json::json;
use tokio::time::Instant;

use super::{
    authenticate, check_channels, parse_event_id, parse_history, subscribe_request, ApiError,
    AppState, StreamQuery, Subscribe,
};
use crate::auth::{AuthError, Via};
use crate::channel::validate_subscription;
use crate::hub::{frame, Conn, ConnInfo, Control, Cursor, CursorOptions};
use crate::retry::sleep_or_cancel;

/// Largest body of a subscription change (100 channels of 256 bytes each way fit).
const SUBSCRIPTION_BODY_BYTES: usize = 256 * 1024;

/// Longest `session_id`, in bytes.
const MAX_SESSION_ID_BYTES: usize = 128;

pub(super) async fn stream(
    State(state): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let Subscribe {
        query,
        ip,
        principal,
        channels,
        resume,
    } = subscribe_request(&state, peer, raw.as_deref(), &headers).await?;
    let session_id = session_id(&query)?;
    let history = parse_history(query.history.as_deref())?;
    if state.draining.load(std::sync::atomic::Ordering::SeqCst) {
        // A native EventSource gives up for good on a 5xx: tell it to come back (to another
        // node, now that this one is not ready).
        return Ok(come_back_later(&state));
    }
    let permit = state
        .conn_limits
        .acquire(&principal.user, ip)
        .map_err(|r| state.limited(r))?;

    // Register before reading the head: every event after the head is then either queued
    // for us or (if it was appended before the head read) covered by the replay.
    let mut registration = state.hub.register(
        principal.user.clone(),
        &channels,
        ConnInfo {
            ip: Some(ip),
            opened_ms: crate::time::now_ms(),
            session_id,
            request_id: headers
                .get("x-request-id")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned),
        },
    );
    registration.hold(permit);
    let conn = registration.conn.clone();
    if let Via::Forward { creds, ttl } = &principal.via {
        tokio::spawn(recheck_session(
            state.clone(),
            Arc::downgrade(&conn),
            creds.clone(),
            *ttl,
        ));
    }
    let bounds = state.hub.log().bounds().await.map_err(ApiError::from)?;
    // A resumed stream has its state: history is for a fresh one. History the log cannot
    // give now is told with a `gap` (reason `unavailable`) rather than refusing the stream.
    let (history, history_gap) = match (history, resume) {
        (Some(limit), None) => {
            let user = principal.user.clone();
            let targets = move |e: &crate::log::Event| e.targets(&user);
            match latest_events(&state, &channels, bounds.head, limit, &targets).await {
                Ok(events) => (events, false),
                Err(e) => {
                    tracing::warn!(conn = %conn.id, error = %e, "stream opened without its history: the log cannot give it now");
                    (Vec::new(), true)
                }
            }
        }
        _ => (Vec::new(), false),
    };
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
            "last_event_id": match resume {
                Some(pos) if pos <= bounds.head => pos,
                _ => bounds.head,
            }.to_string(),
        }),
    ));
    if history_gap {
        state
            .hub
            .stats
            .gaps
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        preamble.extend_from_slice(&frame::control_frame(
            "gap",
            &json!({ "last_event_id": "0", "oldest_id": null, "reason": "unavailable" }),
        ));
    }
    if resume.is_some() {
        state
            .hub
            .stats
            .resumes
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
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
    tracing::info!(conn = %conn.id, user = %principal.user, ip = %ip, channels = channels.len(), resume = ?resume.map(|p| p.to_string()), "stream opened");
    Ok(cursor_stream(
        &state,
        registration,
        (start, replay),
        (preamble.freeze(), history),
        principal.expires_at,
    ))
}

/// The newest `limit` events of each exact channel of `channels` (patterns have none) at or
/// before `through` that pass `filter`, merged in log order: the newest
/// [`MAX_HISTORY`](crate::log::MAX_HISTORY) of them at most, whatever the number of channels
/// (each channel is asked only for events newer than the ones kept so far can displace).
async fn latest_events(
    state: &AppState,
    channels: &[String],
    through: crate::log::Position,
    limit: usize,
    filter: crate::log::Filter<'_>,
) -> Result<Vec<Arc<crate::log::Event>>, crate::log::LogError> {
    let max = crate::log::MAX_HISTORY;
    let mut events: Vec<Arc<crate::log::Event>> = Vec::new();
    for channel in channels.iter().filter(|c| !crate::channel::is_pattern(c)) {
        let after = match events.len() >= max {
            true => events[events.len() - max].pos,
            false => crate::log::Position::ZERO,
        };
        let q = crate::log::HistoryQuery {
            channel,
            after,
            through,
            limit,
        };
        let ours = |e: &crate::log::Event| e.event.channel == **channel && filter(e);
        let history = state.hub.log().history(q, &ours).await?;
        events.extend(history.events);
        events.sort_by_key(|e| e.pos);
        let excess = events.len().saturating_sub(max);
        events.drain(..excess);
    }
    Ok(events)
}

/// The event-stream response of a registered connection: its cursor from `start` (replaying
/// the log after it when `replay`), after `preamble`, until the credentials expire
/// (`expires_at`, Unix seconds), the client leaves or the server stops.
pub(super) fn cursor_stream(
    state: &AppState,
    registration: crate::hub::Registration,
    (start, replay): (crate::log::Position, bool),
    (preamble, history): (Bytes, Vec<Arc<crate::log::Event>>),
    expires_at: Option<u64>,
) -> Response {
    let expires_at = expires_at.map(|exp| {
        let left_ms = exp
            .saturating_mul(1000)
            .saturating_sub(crate::time::now_ms());
        Instant::now() + Duration::from_millis(left_ms)
    });
    let cursor = Cursor::new(
        state.hub.clone(),
        registration,
        start,
        replay,
        preamble,
        CursorOptions {
            heartbeat: Duration::from_millis(state.cfg.stream.heartbeat_ms),
            catchup_batch: state.cfg.stream.catchup_batch,
            expires_at,
            shutdown: state.shutdown.clone(),
        },
    )
    .with_history(history);
    let body = futures::stream::unfold(cursor, |mut cursor| async move {
        let chunk = cursor.next_chunk().await?;
        Some((Ok::<Bytes, Infallible>(chunk), cursor))
    });
    event_stream(Body::from_stream(body))
}

/// A `200` event-stream response with `body`.
pub(super) fn event_stream(body: Body) -> Response {
    let mut response = Response::new(body);
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
    response
}

/// `HEAD /v1/stream`: the status and headers a `GET` would get (the same checks), without
/// opening a stream — nothing is registered, counted or read from the log.
pub(super) async fn stream_head(
    State(state): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let checked = subscribe_request(&state, peer, raw.as_deref(), &headers).await?;
    session_id(&checked.query)?;
    parse_history(checked.query.history.as_deref())?;
    Ok(event_stream(Body::empty()))
}

/// The stream's `session_id`, checked: 1 to 128 bytes without control characters.
fn session_id(query: &StreamQuery) -> Result<Option<String>, ApiError> {
    match query.session_id.as_deref() {
        None | Some("") => Ok(None),
        Some(s) if s.len() <= MAX_SESSION_ID_BYTES && !s.chars().any(|c| c.is_control()) => {
            Ok(Some(s.to_owned()))
        }
        Some(_) => Err(ApiError::bad_request(
            "invalid_session_id",
            format!(
                "`session_id` must be 1 to {MAX_SESSION_ID_BYTES} bytes without control characters"
            ),
        )),
    }
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
    /// Same as `last_event_id`.
    #[serde(default)]
    since: Option<String>,
    #[serde(default)]
    history: Option<serde_json::Value>,
}

/// `200` with `retry:` and `closing` (`shutdown`), then the end: the client reconnects after
/// `retry` (to another node, behind a load balancer) and resumes.
pub(super) fn come_back_later(state: &AppState) -> Response {
    let body = format!(
        ": draining\n\nretry: {}\n\n{}",
        state.cfg.stream.retry_ms,
        String::from_utf8_lossy(&frame::control_frame(
            "closing",
            &json!({ "reason": "shutdown" })
        ))
    );
    let mut response = Response::new(Body::from(body));
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream; charset=utf-8"),
    );
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("no-cache, no-transform"),
    );
    response
}

/// Re-asks forward-auth about a live stream's session every `ttl`: a refused session, another
/// user, or a channel no longer granted ends the stream (`closing`, `revoked`). While the
/// service cannot be reached the check is retried every few seconds; after two `ttl`s
/// without an answer the stream ends (`auth_unavailable`) — it fails closed, and the client
/// reconnects (and is asked again) later.
async fn recheck_session(
    state: Arc<AppState>,
    conn: Weak<Conn>,
    creds: crate::auth::forward::ForwardCreds,
    ttl: Duration,
) {
    let ttl = ttl.max(Duration::from_secs(1));
    let mut wait = ttl;
    let mut last_answer = Instant::now();
    loop {
        if sleep_or_cancel(wait, &state.shutdown).await {
            return;
        }
        let Some(live) = conn.upgrade() else { return };
        let verdict = match state.auth.recheck(&creds).await {
            Ok(p) if p.user == live.user && live.channels().iter().all(|c| p.may_subscribe(c)) => {
                None
            }
            Ok(_) | Err(AuthError::Invalid(_)) | Err(AuthError::Forbidden) => Some("revoked"),
            Err(_) if last_answer.elapsed() >= 2 * ttl => Some("auth_unavailable"),
            Err(_) => {
                wait = ttl.min(Duration::from_secs(2));
                continue;
            }
        };
        if let Some(reason) = verdict {
            tracing::info!(conn = %live.id, user = %live.user, reason, "session re-check ends the stream");
            live.push_control(Control::Close(reason));
            return;
        }
        last_answer = Instant::now();
        wait = ttl;
    }
}

pub(super) async fn subscriptions(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<serde_json::Value>, ApiError> {
    let query = StreamQuery::parse(raw.as_deref());
    let principal = authenticate(&state, &headers, query.access_token.as_deref()).await?;
    let body = super::edge::read_body(&state, body, SUBSCRIPTION_BODY_BYTES).await?;
    let change: SubscriptionChange = super::json_object(&body).map_err(|e| {
        ApiError::bad_request(
            "invalid_json",
            format!("the body must be {{\"add\": [...], \"remove\": [...]}}: {e}"),
        )
    })?;
    let not_found = || super::control::connection_not_found(&id);
    let tag = crate::cluster::tag_of_connection(&id).ok_or_else(not_found)?;
    let add = check_channels(&state, &principal, &change.add)?;
    for c in &change.remove {
        validate_subscription(c).map_err(|e| ApiError::invalid_channel(c, e))?;
    }
    if change.last_event_id.is_some() && change.since.is_some() {
        return Err(ApiError::bad_request(
            "invalid_json",
            "give `since` or `last_event_id` (the same thing), not both",
        ));
    }
    let history = match &change.history {
        None | Some(serde_json::Value::Null) => None,
        Some(serde_json::Value::Number(n)) => parse_history(Some(&n.to_string()))?,
        Some(_) => parse_history(Some("not a number"))?,
    };
    let given = change.last_event_id.as_deref().or(change.since.as_deref());
    let (since, explicit_since) = match given.map(str::trim) {
        Some(id) if !id.is_empty() => (parse_event_id(id)?, true),
        _ => (
            state.hub.log().bounds().await.map_err(ApiError::from)?.head,
            false,
        ),
    };
    // Carried out by the node holding the stream, whichever node this is.
    let action = crate::cluster::Action::Subscriptions {
        connection: id.clone(),
        user: principal.user.clone(),
        add,
        remove: change.remove,
        since: since.to_string(),
        history,
        explicit_since,
    };
    super::admin::asked(state.cluster.ask(&*state, tag, action).await, not_found).map(Json)
}
