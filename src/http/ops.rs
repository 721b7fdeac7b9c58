//! Operations endpoints: `/healthz` (alive), `/readyz` (log reachable, not shutting down),
//! `/v1/status` (admin).

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use super::{authenticate, require_admin, ApiError, AppState};

pub(super) async fn healthz() -> Json<serde_json::Value> {
    Json(json!({ "status": "ok" }))
}

pub(super) async fn readyz(
    State(state): State<Arc<AppState>>,
) -> (StatusCode, Json<serde_json::Value>) {
    if state.shutdown.is_cancelled() || state.draining.load(std::sync::atomic::Ordering::SeqCst) {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "status": "not_ready", "reason": "shutting down" })),
        );
    }
    if let Err(e) = state.hub.log().bounds().await {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "status": "not_ready", "reason": e.to_string() })),
        );
    }
    let log = state.hub.log().health();
    if let Some(reason) = log.cannot_append {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "status": "not_ready", "reason": reason })),
        );
    }
    if state.auth.forward().is_some_and(|f| !f.up()) {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({
                "status": "not_ready",
                "reason": "the forward-auth service cannot be reached",
            })),
        );
    }
    if let Some(reason) = log.damaged {
        // Still serving: one damaged old record must not take the node (perhaps the only
        // one) out of its load balancer; the metric and the log line alert.
        return (
            StatusCode::OK,
            Json(json!({ "status": "degraded", "reason": reason })),
        );
    }
    (StatusCode::OK, Json(json!({ "status": "ready" })))
}

pub(super) async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.render(),
    )
        .into_response()
}

pub(super) async fn status(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
) -> Result<Json<serde_json::Value>, ApiError> {
    require_admin(&authenticate(&state, &headers, None).await?)?;
    let log = state.hub.log();
    let bounds = log.bounds().await.map_err(ApiError::from)?;
    let hub: serde_json::Map<String, serde_json::Value> = state
        .hub
        .stats
        .counters()
        .into_iter()
        .map(|(name, _, value)| (name.to_owned(), value.into()))
        .collect();
    Ok(Json(json!({
        "node_id": state.node_id,
        "version": env!("CARGO_PKG_VERSION"),
        "uptime_s": state.started.elapsed().as_secs(),
        "connections": state.hub.connection_count(),
        "channels": state.hub.channel_count(),
        "log": {
            "kind": log.kind(),
            "head": bounds.head.to_string(),
            "oldest": bounds.oldest.map(|p| p.to_string()),
        },
        "hub": hub,
        "auth": {
            "forward_auth_up": state.auth.forward().map(|f| f.up()),
        },
        "sources": state.sources.status(),
        "mercure": state.mercure.as_ref().map(|m| json!({
            "subscribers": state.hub.connections(None).iter().filter(|c| c.mercure.is_some()).count(),
            "active_subscriptions": m.cfg.subscriptions.then(|| m.registry.len()),
            "subscriptions_caught_up": m.cfg.subscriptions.then(|| m.registry.caught_up()),
        })),
    })))
}

pub(super) async fn not_found() -> ApiError {
    ApiError::NotFound {
        code: "not_found",
        message: "no such endpoint; see docs/api.md".into(),
    }
}
