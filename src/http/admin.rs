//! The admin API (credentials with the admin grant): list connections and channels, close a
//! user's streams, broadcast to every stream. Everything here is about this node.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, RawQuery, State};
use axum::http::HeaderMap;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, value::RawValue, Value};

use super::{authenticate, require_admin, ApiError, AppState};
use crate::hub::frame;

async fn admin(state: &AppState, headers: &HeaderMap) -> Result<(), ApiError> {
    require_admin(&authenticate(state, headers, None).await?)
}

/// `GET /v1/connections?user=…`
pub(super) async fn connections(
    State(state): State<Arc<AppState>>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    admin(&state, &headers).await?;
    let user = form_urlencoded::parse(raw.as_deref().unwrap_or("").as_bytes())
        .find(|(k, _)| k == "user")
        .map(|(_, v)| v.into_owned());
    let list: Vec<Value> = state
        .hub
        .connections(user.as_deref())
        .iter()
        .map(|c| {
            json!({
                "connection_id": c.id,
                "user": c.user,
                "channels": c.channels(),
                "ip": c.info.ip.map(|ip| ip.to_string()),
                "opened": crate::time::rfc3339_ms(c.info.opened_ms),
                "session_id": c.info.session_id,
            })
        })
        .collect();
    Ok(Json(json!({ "connections": list })))
}

/// `DELETE /v1/users/{user}/connections`: every stream of the user gets `closing`
/// (`kicked`) and ends. (Its credentials stay valid: revoke them at their issuer.)
pub(super) async fn kick_user(
    State(state): State<Arc<AppState>>,
    Path(user): Path<String>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    admin(&state, &headers).await?;
    let closed = state.hub.close_user(&user, "kicked");
    tracing::info!(%user, closed, "admin closed a user's streams");
    Ok(Json(json!({ "closed": closed })))
}

/// `GET /v1/channels`
pub(super) async fn channels(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    admin(&state, &headers).await?;
    let list: Vec<Value> = state
        .hub
        .channels()
        .into_iter()
        .map(|(channel, subscribers)| json!({ "channel": channel, "subscribers": subscribers }))
        .collect();
    Ok(Json(json!({ "channels": list })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Broadcast {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    data: Option<Box<RawValue>>,
}

/// `POST /v1/broadcast` `{"type", "data"}`: an event to every open stream of this node, sent
/// at once and not stored (no `id:`; a client that is not connected does not get it).
pub(super) async fn broadcast(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<Value>, ApiError> {
    admin(&state, &headers).await?;
    // A little over the event limit, so an oversized broadcast is told so below.
    let body =
        super::edge::read_body(&state, body, state.cfg.limits.max_event_bytes + 4096).await?;
    let b: Broadcast = super::json_object(&body).map_err(|e| {
        ApiError::bad_request(
            "invalid_json",
            format!("the body must be {{\"type\": \"…\", \"data\": …}}: {e}"),
        )
    })?;
    crate::event::check_type(&b.kind)
        .map_err(|e| ApiError::bad_request(e.code(), e.to_string()))?;
    if body.len() > state.cfg.limits.max_event_bytes {
        return Err(ApiError::TooLarge {
            code: "event_too_large",
            message: format!(
                "the broadcast is larger than {} bytes (limits.max_event_bytes)",
                state.cfg.limits.max_event_bytes
            ),
        });
    }
    let data = b
        .data
        .map(|d| serde_json::from_str::<Value>(d.get()).unwrap_or(Value::Null))
        .unwrap_or(Value::Null);
    let envelope = json!({
        "type": b.kind,
        "time": crate::time::rfc3339_ms(crate::time::now_ms()),
        "data": data,
    });
    let connections = state
        .hub
        .broadcast(frame::control_frame(&b.kind, &envelope));
    Ok(Json(json!({ "connections": connections })))
}

/// `POST /v1/sources/{name}/start` and `…/stop`.
pub(super) async fn source_control(
    State(state): State<Arc<AppState>>,
    Path((name, action)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    admin(&state, &headers).await?;
    let unknown = |e: crate::source::ControlError| ApiError::NotFound {
        code: "source_not_found",
        message: e.to_string(),
    };
    match action.as_str() {
        "start" => state.sources.start(&name).map_err(unknown)?,
        "stop" => state.sources.stop(&name).await.map_err(unknown)?,
        _ => {
            return Err(ApiError::NotFound {
                code: "not_found",
                message: "use /v1/sources/{name}/start or /v1/sources/{name}/stop".into(),
            })
        }
    }
    tracing::info!(source = %name, %action, "admin source control");
    let status = state
        .sources
        .status()
        .into_iter()
        .find(|s| s["name"] == name.as_str())
        .unwrap_or(Value::Null);
    Ok(Json(status))
}

/// `POST /v1/admin/drain`: starts the drain this node does on SIGTERM (`/readyz` not ready,
/// streams closed over `server.drain_window_ms`, then the process exits).
pub(super) async fn drain(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
) -> Result<(axum::http::StatusCode, Json<Value>), ApiError> {
    admin(&state, &headers).await?;
    tracing::info!("admin requested a drain");
    state.drain_request.cancel();
    Ok((
        axum::http::StatusCode::ACCEPTED,
        Json(json!({
            "draining": true,
            "window_ms": state.cfg.server.drain_window_ms.min(state.cfg.server.shutdown_grace_ms / 2),
        })),
    ))
}
