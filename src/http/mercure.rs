//! The Mercure hub protocol over HTTP (see `crate::mercure` and docs/mercure.md):
//! `GET /.well-known/mercure` subscribes, `POST /.well-known/mercure` publishes,
//! `GET /.well-known/mercure/subscriptions[/…]` lists the active subscriptions.
//!
//! Errors are ssegate's (a status, a stable `code`, a sentence) plus, for credentials, the
//! RFC 6750 `WWW-Authenticate: Bearer` challenge the Mercure specification asks for.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, RawQuery, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::{json, value::RawValue, Value};
use tokio::time::Instant;

use super::{client_ip, ApiError, AppState};
use crate::auth::AuthError;
use crate::event::EventError;
use crate::hub::ConnInfo;
use crate::log::{AppendItem, NewEvent, Position};
use crate::mercure::matcher::{self, Matcher, MatcherError, MatcherType};
use crate::mercure::subscriber::Subscriber;
use crate::mercure::token::{self, Claims, Generation, Role, TokenError};
use crate::mercure::update::{self, Stored, SUBSCRIPTIONS_TOPIC};
use crate::mercure::Mercure;

/// Most topics of one update (a canonical one and alternates, draft-07).
const MAX_TOPICS_PER_UPDATE: usize = 16;

/// A refused Mercure request: ssegate's error, with the `WWW-Authenticate` challenge when
/// credentials are the reason.
pub(super) struct Refusal {
    error: ApiError,
    challenge: Option<String>,
}

impl From<ApiError> for Refusal {
    fn from(error: ApiError) -> Self {
        Self {
            error,
            challenge: None,
        }
    }
}

impl From<TokenError> for Refusal {
    fn from(e: TokenError) -> Self {
        let challenge = Some(e.www_authenticate());
        let error = match &e {
            TokenError::Missing => ApiError::Unauthorized(AuthError::Missing),
            TokenError::Invalid(detail) => {
                tracing::info!(reason = %detail, "mercure token refused");
                ApiError::Unauthorized(AuthError::Invalid(e.public_message().to_owned()))
            }
            TokenError::Malformed(message) => ApiError::bad_request("invalid_request", message),
        };
        Self { error, challenge }
    }
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        let mut response = self.error.into_response();
        if let Some(challenge) = self.challenge.and_then(|c| HeaderValue::from_str(&c).ok()) {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, challenge);
        }
        response
    }
}

/// `403` with `error="insufficient_scope"`.
fn insufficient_scope(message: String) -> Refusal {
    Refusal {
        error: ApiError::Forbidden {
            code: "insufficient_scope",
            message,
        },
        challenge: Some(token::insufficient_scope_challenge().to_owned()),
    }
}

fn bad_request(code: &'static str, message: impl Into<String>) -> Refusal {
    ApiError::bad_request(code, message).into()
}

/// The hub's Mercure side, or `404` when `[mercure]` is off.
fn hub(state: &AppState) -> Result<&Arc<Mercure>, Refusal> {
    state.mercure.as_ref().ok_or_else(|| {
        ApiError::NotFound {
            code: "not_found",
            message: "the Mercure hub is not enabled on this server (mercure.enabled)".into(),
        }
        .into()
    })
}

/// The hub's URL: `mercure.hub_url`, else the request's own origin and the well-known path.
fn hub_url(state: &AppState, mercure: &Mercure, headers: &HeaderMap, uri: &Uri) -> String {
    if let Some(url) = &mercure.cfg.hub_url {
        return url.clone();
    }
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| uri.authority().map(|a| a.as_str()))
        .unwrap_or("localhost");
    let scheme = if state.cfg.server.tls_cert_file.is_some() {
        "https"
    } else {
        "http"
    };
    format!("{scheme}://{host}/.well-known/mercure")
}

/// Decodes `application/x-www-form-urlencoded` pairs strictly: `+` is a space, `%XX` a byte,
/// and every name and value must be UTF-8 (a lossy decoding would change what was sent).
fn form_pairs(raw: &[u8]) -> Result<Vec<(String, String)>, String> {
    fn decode(part: &[u8]) -> Result<String, String> {
        let mut out = Vec::with_capacity(part.len());
        let mut i = 0;
        while i < part.len() {
            match part[i] {
                b'+' => out.push(b' '),
                b'%' => {
                    let hex = part
                        .get(i + 1..i + 3)
                        .and_then(|h| std::str::from_utf8(h).ok())
                        .and_then(|h| u8::from_str_radix(h, 16).ok())
                        .ok_or("a `%` is not followed by two hexadecimal digits")?;
                    out.push(hex);
                    i += 2;
                }
                b => out.push(b),
            }
            i += 1;
        }
        String::from_utf8(out).map_err(|_| "a name or value is not UTF-8".to_owned())
    }
    raw.split(|b| *b == b'&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (name, value) = match pair.iter().position(|b| *b == b'=') {
                Some(i) => (&pair[..i], &pair[i + 1..]),
                None => (pair, &[][..]),
            };
            Ok((decode(name)?, decode(value)?))
        })
        .collect()
}

/// A matcher refused in a request: `413` when too long for a topic, else `400`.
fn matcher_refusal(what: &str, e: MatcherError) -> Refusal {
    match e {
        MatcherError::TooLong { .. } => ApiError::TooLarge {
            code: "topic_too_long",
            message: format!("{what}: {e}"),
        }
        .into(),
        _ => bad_request("invalid_request", format!("{what}: {e}")),
    }
}

/// The topic matchers of a subscription request, by query parameter.
fn matchers_of(
    pairs: &[(String, String)],
    mercure: &Mercure,
    base: &str,
) -> Result<Vec<Matcher>, Refusal> {
    let mut out: Vec<Matcher> = Vec::new();
    for (name, value) in pairs {
        let kind = match name.as_str() {
            "topic" => MatcherType::Selector,
            "match" | "matchExact" => MatcherType::Exact,
            "matchURLPattern" | "match_urlpattern" => MatcherType::UrlPattern,
            other if other.to_ascii_lowercase().starts_with("match") => {
                return Err(bad_request(
                    "invalid_request",
                    format!("unknown topic matcher parameter {other:?}: use `match`, `matchExact`, `matchURLPattern` (or the older `topic`)"),
                ));
            }
            _ => continue,
        };
        if out.len() == mercure.cfg.max_matchers {
            return Err(bad_request(
                "too_many_matchers",
                format!(
                    "a subscription may have at most {} topic matchers (mercure.max_matchers)",
                    mercure.cfg.max_matchers
                ),
            ));
        }
        if value.len() > mercure.cfg.max_topic_bytes {
            return Err(bad_request(
                "invalid_request",
                format!(
                    "a topic matcher is {} bytes; the limit is {} (mercure.max_topic_bytes)",
                    value.len(),
                    mercure.cfg.max_topic_bytes
                ),
            ));
        }
        let m = Matcher::new(kind, value, base)
            .map_err(|e| bad_request("invalid_request", format!("`{name}` {value:?}: {e}")))?;
        if !out
            .iter()
            .any(|o| o.kind() == m.kind() && o.text() == m.text())
        {
            out.push(m);
        }
    }
    if out.is_empty() {
        return Err(bad_request(
            "missing_topic",
            "give at least one topic matcher: `match` (or the older `topic`) or `matchURLPattern`",
        ));
    }
    Ok(out)
}

/// Verifies the request's token for `role`; `None` when it presents none (and `required`
/// is false). A refusal is counted in `ssegate_auth_failures_total`.
async fn claims_of(
    state: &AppState,
    mercure: &Mercure,
    headers: &HeaderMap,
    pairs: &[(String, String)],
    role: Role,
    required: bool,
    base: &str,
) -> Result<Option<Arc<Claims>>, Refusal> {
    let verified = match token::presented(headers, pairs, &mercure.cfg) {
        Ok(None) if required => Err(TokenError::Missing),
        Ok(None) => Ok(None),
        Ok(Some((raw, _via))) => mercure
            .verifier
            .verify(&raw, role, base)
            .await
            .map(|c| Some(Arc::new(c))),
        Err(e) => Err(e),
    };
    verified.map_err(|e| {
        state.metrics.auth_failure(match e {
            TokenError::Missing => "missing_credentials",
            TokenError::Invalid(_) => "invalid_token",
            TokenError::Malformed(_) => "invalid_request",
        });
        let mut refusal = Refusal::from(e);
        // Where a client learns the hub's resource identifier and how to present a token.
        if let Some(challenge) = &mut refusal.challenge {
            challenge.push_str(&format!(
                ", resource_metadata=\"{}\"",
                metadata_url(base).replace(['"', '\\'], "")
            ));
        }
        refusal
    })
}

/// The hub's protected resource metadata path (RFC 9728: the well-known prefix and the hub's
/// own path).
const METADATA_PATH: &str = "/.well-known/oauth-protected-resource/.well-known/mercure";

/// The URL of the protected resource metadata of the hub at `base`.
fn metadata_url(base: &str) -> String {
    match url::Url::parse(base) {
        Ok(u) => format!("{}{METADATA_PATH}", u.origin().ascii_serialization()),
        Err(_) => METADATA_PATH.to_owned(),
    }
}

/// `GET /.well-known/oauth-protected-resource/.well-known/mercure`: the hub's OAuth 2.0
/// protected resource metadata (RFC 9728, draft-08 "Protected Resource Metadata").
pub(super) async fn resource_metadata(
    State(state): State<Arc<AppState>>,
    uri: Uri,
    headers: HeaderMap,
) -> Result<Response, Refusal> {
    let mercure = hub(&state)?;
    let cfg = &mercure.cfg;
    let base = hub_url(&state, mercure, &headers, &uri);
    let mut methods = vec!["header"];
    if cfg.allow_query_token {
        methods.push("query");
    }
    let mut doc = json!({
        "resource": cfg.audience.clone().unwrap_or(base),
        "bearer_methods_supported": methods,
        "mercure_cookie": true,
        "mercure_version": 8,
    });
    if let Some(issuer) = &cfg.issuer {
        doc["authorization_servers"] = json!([issuer]);
    }
    if let Some(jwks) = &cfg.jwks_url {
        doc["jwks_uri"] = json!(jwks);
    }
    let mut response = (StatusCode::OK, doc.to_string()).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    Ok(response)
}

/// The hub's URL and the verified token a request must present (in its header, query or
/// cookie) for `role`.
async fn required_claims(
    state: &AppState,
    mercure: &Mercure,
    headers: &HeaderMap,
    uri: &Uri,
    role: Role,
) -> Result<(String, Arc<Claims>), Refusal> {
    let base = hub_url(state, mercure, headers, uri);
    let query = form_pairs(uri.query().unwrap_or("").as_bytes())
        .map_err(|e| bad_request("invalid_request", format!("the query string: {e}")))?;
    let claims = claims_of(state, mercure, headers, &query, role, true, &base)
        .await?
        .ok_or(TokenError::Missing)?;
    Ok((base, claims))
}

/// A random `urn:uuid:` (version 4).
fn random_urn() -> String {
    use rand::Rng;
    let mut b: [u8; 16] = rand::thread_rng().gen();
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "urn:uuid:{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// `GET /.well-known/mercure`: a Mercure subscription.
pub(super) async fn subscribe(
    State(state): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    RawQuery(raw): RawQuery,
    uri: Uri,
    headers: HeaderMap,
) -> Result<Response, Refusal> {
    let mercure = hub(&state)?;
    let pairs = form_pairs(raw.as_deref().unwrap_or("").as_bytes())
        .map_err(|e| bad_request("invalid_request", format!("the query string: {e}")))?;
    let ip = client_ip(&state, peer, &headers);
    state
        .connect_rate
        .check(&ip, 1)
        .map_err(|r| state.limited(r))?;
    let base = hub_url(&state, mercure, &headers, &uri);
    // Credentials first: compiling matchers costs more than checking a signature.
    let claims = claims_of(
        &state,
        mercure,
        &headers,
        &pairs,
        Role::Subscriber,
        !mercure.cfg.anonymous,
        &base,
    )
    .await?;
    let matchers = matchers_of(&pairs, mercure, &base)?;
    // The id exactly as sent (an IRI may be UTF-8; an EventSource sends it back verbatim).
    let requested = headers
        .get("last-event-id")
        .and_then(|v| std::str::from_utf8(v.as_bytes()).ok())
        .filter(|v| !v.is_empty())
        .map(str::to_owned)
        .or_else(|| {
            pairs
                .iter()
                .find(|(k, v)| k == "lastEventID" && !v.is_empty())
                .map(|(_, v)| v.clone())
        });
    if state.draining.load(std::sync::atomic::Ordering::SeqCst) {
        return Ok(come_back_later(&state, requested.as_deref()));
    }
    let subscriber = Arc::new(Subscriber {
        matchers,
        claims: claims.clone(),
        id: random_urn(),
    });
    let user = claims
        .as_ref()
        .and_then(|c| c.sub.clone())
        .filter(|s| crate::auth::validate_user(s).is_ok())
        .unwrap_or_else(|| subscriber.id.clone());
    let permit = state
        .conn_limits
        .acquire(&user, ip)
        .map_err(|r| state.limited(r))?;
    let mut registration = state.hub.register_mercure(
        user.clone(),
        subscriber.clone(),
        ConnInfo {
            ip: Some(ip),
            opened_ms: crate::time::now_ms(),
            session_id: None,
            request_id: headers
                .get("x-request-id")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned),
        },
    );
    registration.hold(permit);
    let log = state.hub.log().clone();
    let bounds = log.bounds().await.map_err(ApiError::from)?;
    let (start, replay, answer) = match requested.as_deref() {
        None => (bounds.head, false, None),
        Some("earliest") => (Position::ZERO, true, Some("earliest".to_owned())),
        Some(id) => match mercure.find(&log, id).await {
            Some(pos) if pos > bounds.head => (bounds.head, false, Some("earliest".into())),
            Some(pos) => {
                let visible = visible_at(&state, &subscriber, pos).await;
                let answer = if visible {
                    id.to_owned()
                } else {
                    "earliest".into()
                };
                (pos, true, Some(answer))
            }
            None => (Position::ZERO, true, Some("earliest".into())),
        },
    };
    if requested.is_some() {
        state
            .hub
            .stats
            .resumes
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
    if mercure.cfg.subscriptions {
        // The start is announced by a task of its own, which the end waits for: a client
        // gone while the start is appended still gets its end announced, after it (and a
        // start that could not be announced gets no end).
        let order = Arc::new(tokio::sync::Mutex::new(false));
        let mut started = order.clone().try_lock_owned().expect("a new lock is free");
        let docs = subscription_docs(&state, &subscriber, true);
        let task = {
            let state = state.clone();
            state.tasks.clone().spawn(async move {
                let result = announce(&state, &docs).await;
                *started = result.is_ok();
                result
            })
        };
        registration.hold(Farewell {
            state: state.clone(),
            docs: subscription_docs(&state, &subscriber, false),
            order,
        });
        match task.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(e.into()),
            Err(_) => {
                return Err(ApiError::LogUnavailable(crate::log::LogError::Unavailable(
                    "the subscription could not be announced".into(),
                ))
                .into())
            }
        }
    }
    tracing::info!(conn = %registration.conn.id, user = %user, ip = %ip, matchers = subscriber.matchers.len(), resume = ?requested, "mercure subscription opened");
    let mut response = super::stream::cursor_stream(
        &state,
        registration,
        (start, replay),
        (Bytes::from_static(b":\n\n"), Vec::new()),
        claims.as_ref().and_then(|c| c.exp),
    );
    let h = response.headers_mut();
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("private, no-cache, no-transform"),
    );
    if let Some(v) = answer.and_then(|a| HeaderValue::from_bytes(a.as_bytes()).ok()) {
        h.insert("last-event-id", v);
    }
    Ok(response)
}

/// The answer of a draining node: a comment, `retry:` and the end (the client reconnects,
/// to another node behind a load balancer), with the `Last-Event-ID` answer when one was
/// asked for (nothing was sent: the client resumes from where it asked).
fn come_back_later(state: &AppState, requested: Option<&str>) -> Response {
    let body = format!(": draining\n\nretry: {}\n\n", state.cfg.stream.retry_ms);
    let mut response = super::stream::event_stream(Body::from(body));
    if let Some(v) = requested.and_then(|r| HeaderValue::from_bytes(r.as_bytes()).ok()) {
        response.headers_mut().insert("last-event-id", v);
    }
    response
}

/// Whether the event at `pos` exists and `subscriber` may receive it (only such an id may be
/// named back in the `Last-Event-ID` answer).
async fn visible_at(state: &AppState, subscriber: &Subscriber, pos: Position) -> bool {
    let before = match pos {
        Position { hi: 0, lo: 0 } => return false,
        Position { hi, lo: 0 } => Position {
            hi: hi - 1,
            lo: u64::MAX,
        },
        Position { hi, lo } => Position { hi, lo: lo - 1 },
    };
    match state
        .hub
        .log()
        .read(before, 1, &crate::log::all_events, None)
        .await
    {
        Ok(batch) => batch
            .events
            .first()
            .is_some_and(|e| e.pos == pos && batch.gap.is_none() && subscriber.wants(e)),
        Err(_) => false,
    }
}

/// The subscription events of a subscriber's matchers (`active` or not).
fn subscription_docs(state: &AppState, subscriber: &Subscriber, active: bool) -> Vec<Value> {
    subscriber
        .matchers
        .iter()
        .map(|m| {
            let enc = matcher::encode_component;
            let (id, mut doc) = match m.kind() {
                MatcherType::Selector => {
                    let id = format!(
                        "{SUBSCRIPTIONS_TOPIC}/{}/{}",
                        enc(m.text()),
                        enc(&subscriber.id)
                    );
                    (id.clone(), json!({ "topic": m.text() }))
                }
                kind => {
                    let id = format!(
                        "{SUBSCRIPTIONS_TOPIC}/{}/{}/{}",
                        kind.name(),
                        enc(m.text()),
                        enc(&subscriber.id)
                    );
                    (id, json!({ "matchType": kind.name(), "match": m.text() }))
                }
            };
            doc["@context"] = json!("https://mercure.rocks/");
            doc["id"] = json!(id);
            doc["type"] = json!("Subscription");
            doc["subscriber"] = json!(subscriber.id);
            doc["active"] = json!(active);
            doc["node"] = json!(state.node_id);
            if let Some(payload) = subscriber
                .claims
                .as_ref()
                .and_then(|c| c.payload_for(m.text()))
            {
                doc["payload"] = payload.clone();
            }
            doc
        })
        .collect()
}

/// Publishes subscription events (private updates on their own topics), in one append.
async fn announce(state: &AppState, docs: &[Value]) -> Result<(), ApiError> {
    let now = crate::time::now_ms();
    let mut events = Vec::with_capacity(docs.len());
    for doc in docs {
        let topic = doc["id"].as_str().unwrap_or_default().to_owned();
        let stored = Stored {
            topics: vec![topic.as_str().into()],
            private: true,
            id: None,
            retry: None,
            hub: true,
            data: doc.to_string().into(),
        };
        let data = RawValue::from_string(serde_json::to_string(&stored).expect("serializes"))
            .expect("JSON");
        let event = NewEvent::new(
            update::channel_for(&topic),
            update::DEFAULT_TYPE.into(),
            data,
            None,
            now,
            // The hub's own events are not bound by what publishers may send.
            usize::MAX,
        )
        .map_err(|e| ApiError::bad_request(e.code(), e.to_string()))?;
        events.push(event);
    }
    if events.is_empty() {
        return Ok(());
    }
    state
        .hub
        .log()
        .append(vec![AppendItem { key: None, events }], now)
        .await?;
    Ok(())
}

/// Ends the subscriptions the log says this node held but no longer holds: those of a
/// previous run of the same `node_id` that was killed before it could end them. Runs once,
/// when the registry has read the log up to its head.
pub async fn end_stale_subscriptions(state: Arc<AppState>) {
    let Some(mercure) = state.mercure.clone() else {
        return;
    };
    if !mercure.cfg.subscriptions {
        return;
    }
    while !mercure.registry.caught_up() {
        if crate::retry::sleep_or_cancel(Duration::from_millis(200), &state.shutdown).await {
            return;
        }
    }
    let live: std::collections::HashSet<String> = state
        .hub
        .connections(None)
        .iter()
        .filter_map(|c| c.mercure.as_ref().map(|m| m.id.clone()))
        .collect();
    let stale: Vec<Value> = mercure
        .registry
        .of_node(&state.node_id)
        .into_iter()
        .filter(|d| !d["subscriber"].as_str().is_some_and(|s| live.contains(s)))
        .map(|mut d| {
            d["active"] = json!(false);
            d
        })
        .collect();
    if stale.is_empty() {
        return;
    }
    match announce(&state, &stale).await {
        Ok(()) => tracing::info!(
            subscriptions = stale.len(),
            "mercure: ended the subscriptions a previous run of this node left active"
        ),
        Err(e) => {
            tracing::warn!(error = ?e.to_string_lossy(), "mercure: could not end the subscriptions a previous run left active")
        }
    }
}

/// Publishes the end of a connection's subscriptions when it closes (after their start), in
/// a task the server waits for when it shuts down.
struct Farewell {
    state: Arc<AppState>,
    docs: Vec<Value>,
    /// Held by the task announcing the start; `true` once it was announced.
    order: Arc<tokio::sync::Mutex<bool>>,
}

impl Drop for Farewell {
    fn drop(&mut self) {
        let (state, docs) = (self.state.clone(), std::mem::take(&mut self.docs));
        let order = self.order.clone();
        if tokio::runtime::Handle::try_current().is_ok() {
            state.tasks.clone().spawn(async move {
                let started = order.lock().await;
                if !*started {
                    return;
                }
                if let Err(e) = announce(&state, &docs).await {
                    tracing::warn!(error = ?e.to_string_lossy(), "mercure: the end of a subscription could not be published");
                }
            });
        }
    }
}

impl ApiError {
    fn to_string_lossy(&self) -> String {
        match self {
            ApiError::LogUnavailable(e) => e.to_string(),
            ApiError::LogFull(r) => r.clone(),
            _ => "error".into(),
        }
    }
}

/// `POST /.well-known/mercure`: one update, acknowledged once durable; the answer is its id.
pub(super) async fn publish(
    State(state): State<Arc<AppState>>,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, Refusal> {
    let mercure = hub(&state)?;
    let (base, claims) = required_claims(&state, mercure, &headers, &uri, Role::Publisher).await?;
    let form = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| {
            v.trim()
                .eq_ignore_ascii_case("application/x-www-form-urlencoded")
        });
    if !form {
        return Err(ApiError::UnsupportedMediaType {
            code: "unsupported_media_type",
            message: "a Mercure update is sent as application/x-www-form-urlencoded".into(),
        }
        .into());
    }
    let max = state.cfg.limits.max_event_bytes;
    let body = super::edge::read_body(&state, body, max.saturating_mul(3) + 16 * 1024).await?;
    let pairs = form_pairs(&body)
        .map_err(|e| bad_request("invalid_request", format!("the form body: {e}")))?;
    let field = |name: &str| {
        pairs
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    let topics: Vec<&str> = pairs
        .iter()
        .filter(|(k, _)| k == "topic")
        .map(|(_, v)| v.as_str())
        .collect();
    if topics.is_empty() {
        return Err(bad_request(
            "missing_topic",
            "an update needs a `topic` field",
        ));
    }
    if topics.len() > 1 && claims.generation == Generation::V8 {
        return Err(bad_request(
            "invalid_request",
            "an update has exactly one `topic` in this version of the protocol (an access token of type at+jwt)",
        ));
    }
    // Every alternate topic is matched against every pattern subscriber's matchers when the
    // update is dispatched: a few are what the older protocol's users need.
    let max_topics = MAX_TOPICS_PER_UPDATE.min(mercure.cfg.max_matchers);
    if topics.len() > max_topics {
        return Err(bad_request(
            "invalid_request",
            format!("an update may have at most {max_topics} topics"),
        ));
    }
    for topic in &topics {
        matcher::check_topic(topic, mercure.cfg.max_topic_bytes)
            .map_err(|e| matcher_refusal("`topic`", e))?;
        if matcher::is_reserved_topic(topic, &base) {
            return Err(ApiError::Forbidden {
                code: "reserved_topic",
                message: format!("topics under /.well-known/mercure are the hub's own; {topic:?} cannot be published to"),
            }
            .into());
        }
    }
    let id = field("id").filter(|i| !i.is_empty());
    if let Some(id) = id {
        if id.starts_with('#') || id.contains(['\n', '\r', '\0']) {
            return Err(bad_request(
                "invalid_id",
                "an update `id` must not start with `#` nor contain CR, LF or NUL",
            ));
        }
        if update::is_hub_id(id) {
            return Err(bad_request(
                "invalid_id",
                "this `id` has the form of the ids the hub makes itself (or is `earliest`); choose another",
            ));
        }
        if id.len() > crate::event::MAX_KEY_BYTES {
            return Err(ApiError::TooLarge {
                code: "id_too_long",
                message: format!(
                    "an update `id` may be at most {} bytes",
                    crate::event::MAX_KEY_BYTES
                ),
            }
            .into());
        }
    }
    let kind = match field("type").filter(|t| !t.is_empty()) {
        None => update::DEFAULT_TYPE,
        Some(t) if t.contains(['\n', '\r']) => {
            return Err(bad_request(
                "invalid_type",
                "an update `type` must not contain CR or LF",
            ))
        }
        Some(t) if t.len() > crate::event::MAX_TYPE_BYTES => {
            return Err(ApiError::TooLarge {
                code: "type_too_long",
                message: format!(
                    "an update `type` may be at most {} bytes",
                    crate::event::MAX_TYPE_BYTES
                ),
            }
            .into())
        }
        Some(t) => t,
    };
    let retry = match field("retry").filter(|r| !r.is_empty()) {
        None => None,
        Some(r) => Some(
            r.bytes()
                .all(|b| b.is_ascii_digit())
                .then(|| r.parse::<u64>().ok())
                .flatten()
                .ok_or_else(|| {
                    bad_request(
                        "invalid_retry",
                        "an update `retry` is a number of milliseconds, ASCII digits only",
                    )
                })?,
        ),
    };
    let denied: Vec<&str> = topics
        .iter()
        .copied()
        .filter(|t| !claims.may_publish(t))
        .collect();
    if !denied.is_empty() {
        return Err(insufficient_scope(format!(
            "your token does not allow publishing to {}",
            denied
                .iter()
                .map(|t| format!("{t:?}"))
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    let publisher = claims
        .sub
        .clone()
        .unwrap_or_else(|| "mercure-publisher".into());
    state
        .publish_rate
        .check(&publisher, 1)
        .map_err(|r| state.limited(r))?;
    let stored = Stored {
        topics: topics.iter().map(|t| (*t).into()).collect(),
        private: field("private").is_some(),
        id: id.map(Into::into),
        retry,
        hub: false,
        data: field("data").unwrap_or("").into(),
    };
    let data =
        RawValue::from_string(serde_json::to_string(&stored).expect("serializes")).expect("JSON");
    let now = crate::time::now_ms();
    let event = NewEvent::new(
        update::channel_for(topics[0]),
        kind.to_owned(),
        data,
        None,
        now,
        max,
    )
    .map_err(|e| match e {
        EventError::TooLarge { size, max } => Refusal::from(ApiError::TooLarge {
            code: "event_too_large",
            message: format!(
                "the update is {size} bytes stored; the limit is {max} (limits.max_event_bytes)"
            ),
        }),
        other => bad_request(other.code(), other.to_string()),
    })?;
    let appended = state
        .hub
        .log()
        .append(
            vec![AppendItem {
                key: id.map(|i| dedupe_key(&topics, i)),
                events: vec![event],
            }],
            now,
        )
        .await
        .map_err(ApiError::from)?;
    let Some(pos) = appended.first().and_then(|a| a.positions.first().copied()) else {
        return Err(ApiError::LogUnavailable(crate::log::LogError::Unavailable(
            "the log returned no position".into(),
        ))
        .into());
    };
    if !appended[0].duplicate {
        state.metrics.events_published.inc();
    }
    let answer = match id {
        Some(id) => {
            mercure.remember(id, pos);
            id.to_owned()
        }
        None => update::generated_id(pos),
    };
    let mut response = Response::new(Body::from(answer));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    Ok(response)
}

/// The log's idempotency key of an update with a publisher's `id`: the id *and* the topics, so
/// a publisher's retry is stored once while an update of other topics that happens to reuse the
/// id (another publisher's, who cannot publish to these topics) is not silently dropped as its
/// duplicate. Hashed, so the key stays short whatever the topics' length.
fn dedupe_key(topics: &[&str], id: &str) -> String {
    let canonical = serde_json::to_string(&(topics, id)).expect("strings serialize");
    format!("mercure:{}", crate::auth::hex_sha256(canonical.as_bytes()))
}

/// `GET /.well-known/mercure/subscriptions[/…]`: the active subscriptions of the cluster, as
/// JSON-LD.
pub(super) async fn subscriptions(
    State(state): State<Arc<AppState>>,
    uri: Uri,
    headers: HeaderMap,
) -> Result<Response, Refusal> {
    let mercure = hub(&state)?;
    if !mercure.cfg.subscriptions {
        return Err(ApiError::NotFound {
            code: "not_found",
            message: "the subscriptions API is off on this hub (mercure.subscriptions)".into(),
        }
        .into());
    }
    let (_, claims) = required_claims(&state, mercure, &headers, &uri, Role::Subscriber).await?;
    // The path in the canonical form of subscription ids: each segment decoded, then
    // encoded once, as the hub encodes them.
    let rest = uri
        .path()
        .strip_prefix(SUBSCRIPTIONS_TOPIC)
        .unwrap_or_default();
    let mut segments: Vec<String> = Vec::new();
    for s in rest.split('/').filter(|s| !s.is_empty()) {
        let decoded = matcher::decode_component(s).ok_or_else(|| {
            bad_request(
                "invalid_request",
                "a path segment is not valid percent-encoded UTF-8",
            )
        })?;
        segments.push(decoded);
    }
    let path = std::iter::once(SUBSCRIPTIONS_TOPIC.to_owned())
        .chain(segments.iter().map(|s| matcher::encode_component(s)))
        .collect::<Vec<_>>()
        .join("/");
    if !claims.may_subscribe(&path) {
        return Err(insufficient_scope(format!(
            "your token does not allow reading {path}"
        )));
    }
    // A node that just started reads the subscriptions from the log first: wait a moment
    // for it rather than answer an incomplete list.
    let wait_until = Instant::now() + Duration::from_secs(3);
    while !mercure.registry.caught_up() {
        if Instant::now() >= wait_until {
            return Err(ApiError::Unavailable {
                code: "subscriptions_loading",
                message: "this node is still reading the active subscriptions from the log; retry in a moment".into(),
            }
            .into());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let head = state.hub.log().bounds().await.map_err(ApiError::from)?.head;
    let last_event_id = if head == Position::ZERO {
        "earliest".to_owned()
    } else {
        update::generated_id(head)
    };
    let v8 = segments
        .first()
        .is_some_and(|s| s == MatcherType::Exact.name() || s == MatcherType::UrlPattern.name());
    let single = segments.len() == if v8 { 3 } else { 2 };
    let too_deep = segments.len() > if v8 { 3 } else { 2 };
    let body = if too_deep {
        return Err(not_found_subscription());
    } else if single {
        let mut doc = mercure
            .registry
            .get(&path)
            .ok_or_else(not_found_subscription)?;
        doc["lastEventID"] = json!(last_event_id);
        doc
    } else {
        let prefix = format!("{path}/");
        let subs: Vec<Value> = mercure
            .registry
            .list(&prefix)
            .into_iter()
            .map(|mut d| {
                if let Some(o) = d.as_object_mut() {
                    o.remove("@context");
                }
                d
            })
            .collect();
        json!({
            "@context": "https://mercure.rocks/",
            "id": path,
            "type": "Subscriptions",
            "lastEventID": last_event_id,
            "subscriptions": subs,
        })
    };
    let mut response = (StatusCode::OK, body.to_string()).into_response();
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/ld+json"),
    );
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("must-revalidate"),
    );
    Ok(response)
}

fn not_found_subscription() -> Refusal {
    ApiError::NotFound {
        code: "subscription_not_found",
        message: "no such active subscription".into(),
    }
    .into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn form_decoding_is_strict() {
        assert_eq!(
            form_pairs(b"topic=a%20b&data=x+y&private&topic=").unwrap(),
            vec![
                ("topic".into(), "a b".into()),
                ("data".into(), "x y".into()),
                ("private".into(), "".into()),
                ("topic".into(), "".into()),
            ]
        );
        assert!(form_pairs(b"data=%ZZ").is_err());
        assert!(form_pairs(b"data=%4").is_err());
        assert!(form_pairs(b"data=%FF").is_err(), "not UTF-8");
        assert_eq!(form_pairs(b"").unwrap(), vec![]);
    }

    #[test]
    fn random_urns_are_uuid_v4() {
        let a = random_urn();
        assert_eq!(a.len(), 45);
        assert_eq!(&a[23..24], "4");
        assert_ne!(a, random_urn());
    }
}
