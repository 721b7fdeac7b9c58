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
    let (status, body) = readiness(&state).await;
    (status, Json(body))
}

/// `/readyz`'s answer: 503 while shutting down or draining, while the log cannot be read or
/// appended to, or while forward-auth is down; 200 `degraded` with damaged records.
pub(super) async fn readiness(state: &AppState) -> (StatusCode, serde_json::Value) {
    let not_ready = |reason: String| {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            json!({ "status": "not_ready", "reason": reason }),
        )
    };
    if state.shutdown.is_cancelled() || state.draining.load(std::sync::atomic::Ordering::SeqCst) {
        return not_ready("shutting down".into());
    }
    if let Err(e) = state.hub.log().bounds().await {
        return not_ready(e.to_string());
    }
    let log = state.hub.log().health();
    if let Some(reason) = log.cannot_append {
        return not_ready(reason);
    }
    if state.auth.forward().is_some_and(|f| !f.up()) {
        return not_ready("the forward-auth service cannot be reached".into());
    }
    if let Some(reason) = log.damaged {
        // Still serving: one damaged old record must not take the node (perhaps the only
        // one) out of its load balancer; the metric and the log line alert.
        return (
            StatusCode::OK,
            json!({ "status": "degraded", "reason": reason }),
        );
    }
    (StatusCode::OK, json!({ "status": "ready" }))
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
    status_of(&state).await.map(Json)
}

/// `GET /v1/status`'s answer (also the admin stream's `status` event).
pub(super) async fn status_of(state: &AppState) -> Result<serde_json::Value, ApiError> {
    use crate::cluster::Node;
    let log = state.hub.log();
    let bounds = log.bounds().await.map_err(ApiError::from)?;
    let hub: serde_json::Map<String, serde_json::Value> = state
        .hub
        .stats
        .counters()
        .into_iter()
        .map(|(name, _, value)| (name.to_owned(), value.into()))
        .collect();
    let nodes = state.cluster.nodes(state.summary().await);
    Ok(json!({
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
        "cluster": {
            "bus": state.cluster.bus_kind(),
            "listening": state.cluster.listening(),
            "heartbeat_ms": state.cluster.cfg.heartbeat_ms,
            "node_timeout_ms": state.cluster.cfg.node_timeout_ms,
        },
        "nodes": nodes,
    }))
}

pub(super) async fn not_found() -> ApiError {
    ApiError::NotFound {
        code: "not_found",
        message: "no such endpoint; see docs/api.md".into(),
    }
}
