//! The HTTP API (axum): `GET /v1/stream`, `POST /v1/publish`,
//! `POST /v1/connections/{id}/subscriptions`, `GET /v1/poll`, the admin API, `/healthz`,
//! `/readyz`, `/metrics`. The contract is docs/api.md.
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

mod admin;
mod console;
mod control;
mod dapr;
mod edge;
mod error;
pub mod head;
mod history;
pub mod mercure;
pub mod openapi;
mod ops;
mod poll;
pub mod publish;
pub mod serve;
mod stream;
pub mod tls;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, Method};
use axum::routing::{delete, get, post};
use axum::Router;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tower_http::cors::{AllowCredentials, AllowOrigin, CorsLayer};

pub use error::ApiError;

use crate::auth::forward::ForwardCreds;
use crate::auth::{Auth, Principal, RequestCreds};
use crate::channel::validate_subscription;
use crate::config::{Config, CorsConfig};
use crate::hub::Hub;
use crate::limits::{ConnLimits, RateLimiter, Refused};
use crate::log::Position;
use crate::metrics::Metrics;

/// What every handler shares.
pub struct AppState {
    pub cfg: Arc<Config>,
    pub auth: Arc<Auth>,
    pub hub: Arc<Hub>,
    pub metrics: Arc<Metrics>,
    /// The sources of this node (`/v1/sources/{name}/start|stop`, `/v1/status`).
    pub sources: Arc<crate::source::Sources>,
    /// Open streams: in all, per user, per client address.
    pub conn_limits: Arc<ConnLimits>,
    /// New streams and long-polls per client address.
    pub connect_rate: RateLimiter<IpAddr>,
    /// Events appended per publisher.
    pub publish_rate: RateLimiter<String>,
    /// Cancelled when the server shuts down: streams close, long-polls return.
    pub shutdown: CancellationToken,
    /// Set when a drain starts: `/readyz` answers not ready, new streams are told to come
    /// back (elsewhere) with `closing`.
    pub draining: std::sync::atomic::AtomicBool,
    /// `POST /v1/admin/drain` cancels it.
    pub drain_request: CancellationToken,
    pub started: Instant,
    pub node_id: String,
    /// The Mercure hub protocol, when `[mercure]` enables it.
    pub mercure: Option<Arc<crate::mercure::Mercure>>,
    /// Background work the server waits for (within its grace period) when it stops.
    pub tasks: tokio_util::task::TaskTracker,
    /// The cluster control path: the other nodes, cluster-wide actions, presence, incidents.
    pub cluster: Arc<crate::cluster::Cluster>,
}

impl AppState {
    /// Counts a refusal by a limit and turns it into the `429`.
    fn limited(&self, refused: Refused) -> ApiError {
        self.metrics.limited(refused.limit.code());
        ApiError::TooMany {
            code: refused.limit.code(),
            message: refused.limit.message().into(),
            retry_after_s: refused.retry_after_s,
        }
    }
}

/// Routes answered before the API's: `ssegate demo` puts its web app and `/demo/*` here,
/// once, before it starts; `ssegate serve` never does.
pub static DEMO_ROUTES: std::sync::OnceLock<Router> = std::sync::OnceLock::new();

pub fn router(state: Arc<AppState>) -> Router {
    let cors = cors_layer(&state.cfg.cors);
    let router = Router::new()
        .route("/v1/stream", get(stream::stream).head(stream::stream_head))
        .route("/v1/poll", get(poll::poll))
        .route("/v1/publish", post(publish::publish))
        .route(
            "/v1/connections/{id}/subscriptions",
            post(stream::subscriptions),
        )
        .route("/v1/connections", get(admin::connections))
        .route("/v1/users/{user}/connections", delete(admin::kick_user))
        .route("/v1/channels", get(admin::channels))
        .route("/v1/broadcast", post(admin::broadcast))
        .route("/v1/sources/{name}/{action}", post(admin::source_control))
        .route("/dapr/subscribe", get(dapr::subscribe))
        .route("/dapr/events/{name}", post(dapr::deliver))
        .route("/v1/admin/drain", post(admin::drain))
        .route("/v1/admin/incidents", get(admin::incidents))
        .route("/v1/admin/stream", get(admin::stream))
        .route("/v1/channels/{channel}/presence", get(admin::presence))
        .route("/v1/channels/{channel}/history", get(history::history))
        .route("/v1/status", get(ops::status))
        .route("/healthz", get(ops::healthz))
        .route("/readyz", get(ops::readyz))
        .route("/metrics", get(ops::metrics))
        .route("/v1/openapi.json", get(openapi::serve))
        .route("/admin", get(console::page))
        .route("/admin/", get(console::page))
        .route("/admin/{file}", get(console::asset))
        .route(
            "/.well-known/mercure",
            get(mercure::subscribe).post(mercure::publish),
        )
        .route(
            "/.well-known/mercure/subscriptions",
            get(mercure::subscriptions),
        )
        .route(
            "/.well-known/oauth-protected-resource/.well-known/mercure",
            get(mercure::resource_metadata),
        )
        .route(
            "/.well-known/mercure/subscriptions/{*rest}",
            get(mercure::subscriptions),
        )
        .fallback(ops::not_found)
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed });
    // One layer for both (each layer costs every request a boxed service and future).
    let router = router.layer(axum::middleware::from_fn_with_state(
        state.clone(),
        request_id_and_checks,
    ));
    let api = match cors {
        Some(cors) => router
            .layer(cors)
            .layer(axum::middleware::from_fn_with_state(
                state.clone(),
                edge::cors_only_listed,
            )),
        None => router,
    }
    .with_state(state);
    match DEMO_ROUTES.get() {
        Some(demo) => demo.clone().fallback_service(api),
        None => api,
    }
}

/// The header that carries a request's id.
const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Gives every request an id (the client's `X-Request-Id` when it sent a sane one, else a
/// new one), returns it in `X-Request-Id`, and runs the request in a span carrying it, so
/// every log line of the request (the stream's open and close lines too) names it. Inside
/// the span, the request passes [`edge::check`] first.
async fn request_id_and_checks(
    State(state): State<Arc<AppState>>,
    mut req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    use tracing::Instrument;
    let sane = |v: &HeaderValue| {
        let v = v.as_bytes();
        !v.is_empty()
            && v.len() <= 64
            && v.iter()
                .all(|b| b.is_ascii_alphanumeric() || *b == b'-' || *b == b'_')
    };
    let value = match req.headers().get(&X_REQUEST_ID).filter(|v| sane(v)) {
        Some(v) => v.clone(),
        None => {
            use rand::Rng;
            let n: u64 = rand::thread_rng().gen();
            let mut hex = [0u8; 16];
            for (i, digit) in hex.iter_mut().enumerate() {
                *digit = b"0123456789abcdef"[((n >> (60 - 4 * i)) & 0xf) as usize];
            }
            HeaderValue::from_bytes(&hex).expect("hex digits")
        }
    };
    req.headers_mut().insert(X_REQUEST_ID, value.clone());
    let id = value.to_str().expect("checked or generated ASCII");
    let span =
        tracing::info_span!("request", id = %id, method = %req.method(), path = %req.uri().path());
    // What an incident names, should the answer be one (see [`crate::cluster::incidents`]).
    let path = req.uri().path().to_owned();
    let peer = req
        .extensions()
        .get::<axum::extract::ConnectInfo<SocketAddr>>()
        .map(|c| client_ip(&state, c.0, req.headers()));
    let run = async {
        match edge::check(&state, &req) {
            Ok(()) => next.run(req).await,
            Err(e) => e.into_response(),
        }
    };
    // A span no subscriber wants (RUST_LOG above info) is not entered at every poll.
    let mut response = if span.is_disabled() {
        run.await
    } else {
        run.instrument(span).await
    };
    if let Some(error::ErrorCode(code)) = response.extensions().get::<error::ErrorCode>() {
        if let Some(kind) = crate::cluster::incidents::kind_of(response.status().as_u16(), code) {
            state
                .cluster
                .incidents
                .record(kind, code, peer.map(|ip| ip.to_string()), &path);
        }
    }
    response.headers_mut().insert(X_REQUEST_ID, value);
    response
}

/// The operations endpoints alone (`/metrics`, `/healthz`, `/readyz`), for
/// `server.metrics_listen`.
pub fn ops_router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/healthz", get(ops::healthz))
        .route("/readyz", get(ops::readyz))
        .route("/metrics", get(ops::metrics))
        .fallback(ops::not_found)
        .with_state(state)
}

/// CORS from `[cors]`: listed origins get credentials; `*` any origin without them; no
/// CORS headers at all when the list is empty. Preflights allow `Last-Event-ID`.
fn cors_layer(cfg: &CorsConfig) -> Option<CorsLayer> {
    if cfg.allowed_origins.is_empty() {
        return None;
    }
    let layer = CorsLayer::new()
        .allow_methods([Method::GET, Method::POST, Method::DELETE])
        .allow_headers([
            header::AUTHORIZATION,
            header::CONTENT_TYPE,
            HeaderName::from_static("last-event-id"),
            HeaderName::from_static("cache-control"),
        ])
        .max_age(Duration::from_secs(cfg.max_age_s))
        // The Mercure hub answers with the id it resumed from (loss detection).
        .expose_headers([HeaderName::from_static("last-event-id")]);
    if cfg.allowed_origins.iter().any(|o| o == "*") {
        return Some(layer.allow_origin(AllowOrigin::any()));
    }
    let origins: Vec<HeaderValue> = cfg
        .allowed_origins
        .iter()
        .filter_map(|o| HeaderValue::from_str(o).ok())
        .collect();
    let listed = origins.clone();
    Some(
        layer
            .allow_origin(AllowOrigin::list(origins))
            // Only a listed origin hears that credentials are allowed.
            .allow_credentials(AllowCredentials::predicate(move |origin, _| {
                listed.contains(origin)
            })),
    )
}

/// The client's address: the peer, or — when the peer is a trusted proxy — the last
/// address in `X-Forwarded-For` that is not a trusted proxy.
fn client_ip(state: &AppState, peer: SocketAddr, headers: &HeaderMap) -> IpAddr {
    let peer = peer.ip();
    let trusted = &state.cfg.server.trusted_proxies;
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|c| c.contains(*ip));
    if !is_trusted(&peer) {
        return peer;
    }
    headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|a| a.trim().parse::<IpAddr>().ok())
        .rev()
        .find(|a| !is_trusted(a))
        .unwrap_or(peer)
}

/// The query of `/v1/stream` and `/v1/poll`; `channel` repeats, unknown parameters (cache
/// busters) are ignored.
#[derive(Debug, Default)]
struct StreamQuery {
    channels: Vec<String>,
    last_event_id: Option<String>,
    access_token: Option<String>,
    timeout_ms: Option<String>,
    session_id: Option<String>,
    since: Option<String>,
    history: Option<String>,
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
                "session_id" => q.session_id = Some(v.into_owned()),
                "since" => q.since = Some(v.into_owned()),
                "history" => q.history = Some(v.into_owned()),
                _ => {}
            }
        }
        q
    }
}

/// Authenticates a request: `Authorization: Bearer`, then the auth cookie, then
/// `access_token` (when allowed), then forward-auth (see [`crate::auth`]).
async fn authenticate(
    state: &AppState,
    headers: &HeaderMap,
    query_token: Option<&str>,
) -> Result<Arc<Principal>, ApiError> {
    let auth = &state.auth;
    let token = bearer(headers)
        .or_else(|| cookie(headers, &auth.cookie_name))
        .or(if auth.allow_query_token {
            query_token
        } else {
            None
        });
    if token.is_none() && query_token.is_some() && auth.forward().is_none() {
        return Err(ApiError::bad_request(
            "query_token_disabled",
            "`access_token` in the query is disabled on this server; send the token in the Authorization header or the auth cookie",
        ));
    }
    let raw = |name| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    // Only forward-auth reads these (and keeps them, for a stream's re-checks).
    let forward = match auth.forward() {
        Some(_) => ForwardCreds {
            cookie: raw(header::COOKIE),
            authorization: raw(header::AUTHORIZATION),
        },
        None => ForwardCreds::default(),
    };
    let creds = RequestCreds { token, forward };
    auth.authenticate_shared(&creds)
        .await
        .map_err(ApiError::Unauthorized)
}

/// Parses one JSON object into `T`. serde's derived structs also take a JSON array of the
/// fields in order (`["logs:a", null]`), which no body of this API is: only an object is.
fn json_object<'a, T: serde::Deserialize<'a>>(text: &'a [u8]) -> Result<T, String> {
    let first = text.iter().find(|b| !b.is_ascii_whitespace());
    if first != Some(&b'{') {
        return Err("expected a JSON object".into());
    }
    serde_json::from_slice(text).map_err(|e| e.to_string())
}

/// Refuses principals without the admin grant.
fn require_admin(principal: &Arc<Principal>) -> Result<(), ApiError> {
    if principal.grants.admin {
        Ok(())
    } else {
        Err(ApiError::Forbidden {
            code: "admin_required",
            message: "this endpoint needs credentials with the admin grant".into(),
        })
    }
}

/// A stream or poll request, checked: the client's address (its connect rate counted), the
/// principal, the channels it may have and where it resumes.
struct Subscribe {
    query: StreamQuery,
    ip: IpAddr,
    principal: Arc<Principal>,
    channels: Vec<String>,
    resume: Option<Position>,
}

/// The opening every stream and poll request goes through (and `HEAD /v1/stream`).
async fn subscribe_request(
    state: &AppState,
    peer: SocketAddr,
    raw_query: Option<&str>,
    headers: &HeaderMap,
) -> Result<Subscribe, ApiError> {
    let query = StreamQuery::parse(raw_query);
    let ip = client_ip(state, peer, headers);
    state
        .connect_rate
        .check(&ip, 1)
        .map_err(|r| state.limited(r))?;
    let (principal, channels) = subscriber(state, &query, headers).await?;
    let resume = resume_position(headers, &query)?;
    Ok(Subscribe {
        query,
        ip,
        principal,
        channels,
        resume,
    })
}

/// The channels of a stream or poll request, checked (see [`check_channels`]).
async fn subscriber(
    state: &AppState,
    query: &StreamQuery,
    headers: &HeaderMap,
) -> Result<(Arc<Principal>, Vec<String>), ApiError> {
    let principal = authenticate(state, headers, query.access_token.as_deref()).await?;
    if query.channels.is_empty() {
        return Err(ApiError::bad_request(
            "missing_channel",
            "give at least one `channel` query parameter",
        ));
    }
    let channels = check_channels(state, &principal, &query.channels)?;
    Ok((principal, channels))
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
        validate_subscription(c).map_err(|e| ApiError::invalid_channel(c, e))?;
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
        .or_else(|| {
            [&query.last_event_id, &query.since]
                .into_iter()
                .filter_map(|v| v.as_deref().map(str::trim))
                .find(|v| !v.is_empty())
        });
    raw.map(parse_event_id).transpose()
}

/// A `history` count: an integer from 0 to [`MAX_HISTORY`](crate::log::MAX_HISTORY)
/// (`None` when absent or 0).
fn parse_history(raw: Option<&str>) -> Result<Option<usize>, ApiError> {
    let Some(raw) = raw.map(str::trim).filter(|v| !v.is_empty()) else {
        return Ok(None);
    };
    match raw.parse::<usize>() {
        Ok(n) if n <= crate::log::MAX_HISTORY => Ok((n > 0).then_some(n)),
        _ => Err(ApiError::bad_request(
            "invalid_history",
            format!(
                "`history` must be a whole number of events from 0 to {}",
                crate::log::MAX_HISTORY
            ),
        )),
    }
}

fn parse_event_id(raw: &str) -> Result<Position, ApiError> {
    raw.parse().map_err(|_| {
        ApiError::bad_request(
            "invalid_last_event_id",
            "the last event id is not an id this gateway issued",
        )
    })
}
