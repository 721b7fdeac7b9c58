//! Dapr pub/sub delivery (see [`crate::source::dapr`]): `GET /dapr/subscribe` tells the
//! sidecar the subscriptions of the dapr sources; `POST /dapr/events/{name}` takes one
//! CloudEvent and answers `SUCCESS`, `RETRY` or `DROP`. Authenticated by the sidecar's
//! `dapr-api-token`, not by the gateway's JWTs.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use super::{ApiError, AppState};
use crate::source::dapr;

/// `GET /dapr/subscribe`
pub(super) async fn subscribe(State(state): State<Arc<AppState>>) -> Json<serde_json::Value> {
    Json(dapr::subscriptions(&state.sources))
}

/// `POST /dapr/events/{name}`
pub(super) async fn deliver(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let max = state.cfg.limits.max_event_bytes;
    // A body that can never fit is answered DROP (any other error status would make the
    // sidecar redeliver it forever).
    let body = match super::edge::read_body(&state, body, max + 64 * 1024).await {
        Ok(body) => body,
        Err(ApiError::TooLarge { .. }) => {
            return Json(json!({
                "status": "DROP",
                "message": format!("the message is larger than limits.max_event_bytes ({max})"),
            }))
            .into_response()
        }
        Err(e) => return e.into_response(),
    };
    let reply = dapr::deliver(&state.sources, &name, &headers, &body).await;
    let status = StatusCode::from_u16(reply.http).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (status, Json(reply.body)).into_response()
}
