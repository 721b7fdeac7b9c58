//! The HTTP API (axum): `GET /v1/stream`, `POST /v1/publish`,
//! `POST /v1/connections/{id}/subscriptions`, `GET /v1/poll`, `/healthz`, `/readyz`,
//! `/v1/status`. The contract is docs/api.md.
//!
//! ```no_run
//! # async fn f(state: std::sync::Arc<ssegate::http::AppState>) {
//! let app = ssegate::http::router(state);
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
//! axum::serve(listener, app).await.unwrap();
//! # }
//! ```
//!
//! Every error is an [`ApiError`]: a status, a stable `code` and a sentence for the user;
//! internals never reach the client.

mod error;
mod ops;
mod poll;
mod publish;
mod stream;

use std::sync::Arc;

use axum::http::HeaderMap;
use axum::routing::{get, post};
use axum::Router;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

pub use error::ApiError;

use crate::auth::{Auth, AuthError, Principal};
use crate::channel::validate_channel;
use crate::config::Config;
use crate::hub::Hub;
use crate::log::Position;

/// What every handler shares.
pub struct AppState {
    pub cfg: Arc<Config>,
    pub auth: Arc<Auth>,
    pub hub: Arc<Hub>,
    /// Cancelled when the server shuts down: streams close, long-polls return.
    pub shutdown: CancellationToken,
    pub started: Instant,
    pub node_id: String,
}

pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/v1/stream", get(stream::stream))
        .route("/v1/poll", get(poll::poll))
        .route("/v1/publish", post(publish::publish))
        .route(
            "/v1/connections/{id}/subscriptions",
            post(stream::subscriptions),
        )
        .route("/v1/status", get(ops::status))
        .route("/healthz", get(ops::healthz))
        .route("/readyz", get(ops::readyz))
        .fallback(ops::not_found)
        .with_state(state)
}

/// The query of `/v1/stream` and `/v1/poll`; `channel` repeats, unknown parameters (cache
/// busters) are ignored.
#[derive(Debug, Default)]
struct StreamQuery {
    channels: Vec<String>,
    last_event_id: Option<String>,
    access_token: Option<String>,
    timeout_ms: Option<String>,
}

impl StreamQuery {
    fn parse(raw: Option<&str>) -> Self {
        let mut q = StreamQuery::default();
        for (k, v) in form_urlencoded::parse(raw.unwrap_or("").as_bytes()) {
            match k.as_ref() {
                "channel" => q.channels.push(v.into_owned()),
                "last_event_id" => q.last_event_id = Some(v.into_owned()),
                "access_token" => q.access_token = Some(v.into_owned()),
                "timeout_ms" => q.timeout_ms = Some(v.into_owned()),
                _ => {}
            }
        }
        q
    }
}

/// Authenticates a request: `Authorization: Bearer`, then the auth cookie, then
/// `access_token` (when allowed).
fn authenticate(
    state: &AppState,
    headers: &HeaderMap,
    query_token: Option<&str>,
) -> Result<Principal, ApiError> {
    let token = bearer(headers)
        .or_else(|| cookie(headers, &state.auth.cookie_name))
        .or(if state.auth.allow_query_token {
            query_token
        } else {
            None
        });
    let Some(token) = token else {
        if query_token.is_some() {
            return Err(ApiError::bad_request(
                "query_token_disabled",
                "`access_token` in the query is disabled on this server; send the token in the Authorization header or the auth cookie",
            ));
        }
        return Err(ApiError::Unauthorized(AuthError::Missing));
    };
    state.auth.verify(token).map_err(ApiError::Unauthorized)
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers
        .get(axum::http::header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(axum::http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, v)| *k == name && !v.is_empty())
        .map(|(_, v)| v)
}

/// Validates and de-duplicates the channels a client asks for, checks the count limit and
/// the principal's grants.
fn check_channels(
    state: &AppState,
    principal: &Principal,
    requested: &[String],
) -> Result<Vec<String>, ApiError> {
    let mut channels: Vec<String> = Vec::with_capacity(requested.len());
    for c in requested {
        validate_channel(c).map_err(|e| ApiError::invalid_channel(c, e))?;
        if !channels.contains(c) {
            channels.push(c.clone());
        }
    }
    let max = state.cfg.limits.max_channels_per_connection;
    if channels.len() > max {
        return Err(ApiError::bad_request(
            "too_many_channels",
            format!(
                "{} channels requested; a connection may subscribe to at most {max}",
                channels.len()
            ),
        ));
    }
    let denied: Vec<String> = channels
        .iter()
        .filter(|c| !principal.may_subscribe(c))
        .cloned()
        .collect();
    if !denied.is_empty() {
        return Err(ApiError::forbidden_channels("subscribe to", denied));
    }
    Ok(channels)
}

/// Where a client resumes: the `Last-Event-ID` header, which wins (a native EventSource sends
/// it on reconnect), else the `last_event_id` query parameter; empty means none.
fn resume_position(headers: &HeaderMap, query: &StreamQuery) -> Result<Option<Position>, ApiError> {
    let raw = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .or(query
            .last_event_id
            .as_deref()
            .map(str::trim)
            .filter(|v| !v.is_empty()));
    raw.map(parse_event_id).transpose()
}

fn parse_event_id(raw: &str) -> Result<Position, ApiError> {
    raw.parse().map_err(|_| {
        ApiError::bad_request(
            "invalid_last_event_id",
            "the last event id is not an id this gateway issued",
        )
    })
}
