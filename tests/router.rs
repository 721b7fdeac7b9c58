//! Every refusal of docs/api.md that the router can produce, called in-process: requests go
//! through [`Gateway::router`] with `tower::ServiceExt::oneshot` — no binary, no gateway
//! listener (only a tiny forward-auth app on 127.0.0.1:0 for forward-auth's rows), a memory
//! log — and each answer is checked for its status, its stable `code`, the shape
//! `{"error": {"code", "message"}}` with a message, `X-Request-Id`, and `Retry-After` exactly
//! where the contract gives one. A refused publish is checked to have appended nothing (the
//! log head in `/v1/status`, and a poll from the start).
//!
//! Each table is one case per line: a label, a request ([`get`], [`post`], … with
//! credentials and headers), and the status and code the contract gives it.
//!
//! Not here, because they are not the router's: the connection caps written at accept
//! (`server_full`, `too_many_open_connections_from_address`), the head and idle deadlines, and
//! the accept loop's own stream path (`tests/edge.rs`); the drain's `200` + `closing` (the
//! drain task does not run in-process); and what only a failing engine produces
//! (`503 log_unavailable`, `413 batch_too_large` from NATS `max_payload`), which needs a log
//! that can fail.
//!
//! Where the router differed from the contract, [`former_contract_deviations`] keeps the
//! cases that showed it.

use std::net::SocketAddr;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::body::{Body, Bytes};
use axum::extract::ConnectInfo;
use axum::http::{header, HeaderMap, Method, Request, StatusCode, Version};
use axum::response::{IntoResponse, Response};
use axum::routing::get as route_get;
use axum::{Json, Router};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use futures::StreamExt as _;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use ssegate::auth::{Grants, Minter};
use ssegate::config::{AuthConfig, Config};
use ssegate::server::Gateway;
use tower::ServiceExt;

const SECRET: &str = "router-test-secret-0123456789abcdef";
/// The `Host` every request carries (and so the server's own origin for cross-site checks).
const HOST: &str = "gw.test";
const SAME_ORIGIN: &str = "http://gw.test";
/// A publisher key (`auth.publisher_keys`) without the admin grant.
const PUBLISHER_KEY: &str = "relaykey0123456789";

// The gateway.

/// The configuration as a user writes it (TOML, as in README.md): a memory log, one HS256
/// secret, a publisher key, and limits small enough that every limit is one short request
/// away — events of 1 KiB, 4 per publish (a publish body of at most 5 KiB), 3 channels per
/// connection, bodies within 100 ms. `extra` (TOML) is merged over it.
fn config(extra: &str) -> Config {
    let key_sha256: String = Sha256::digest(PUBLISHER_KEY.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let base = format!(
        r#"
        [log]
        kind = "memory"

        [server]
        # Nothing may touch the disk: a write here would fail.
        data_dir = "/nonexistent/ssegate-router-tests"
        body_timeout_ms = 100

        [auth]
        jwt_secret = "{SECRET}"

        [[auth.publisher_keys]]
        name = "relay"
        sha256 = "{key_sha256}"
        publish = ["logs:**"]

        [limits]
        max_event_bytes = 1024
        max_batch_events = 4
        max_channels_per_connection = 3
        # The tables send many streams and polls from one address.
        connect_rate_per_ip = 1e6
        connect_burst_per_ip = 1000000
        "#
    );
    let mut table: toml::Table = base.parse().expect("base config");
    merge(&mut table, extra.parse().expect("extra config"));
    Config::from_toml_str(&table.to_string()).expect("a valid config")
}

fn merge(into: &mut toml::Table, from: toml::Table) {
    for (key, value) in from {
        match (into.get_mut(&key), value) {
            (Some(toml::Value::Table(a)), toml::Value::Table(b)) => merge(a, b),
            (_, value) => {
                into.insert(key, value);
            }
        }
    }
}

async fn app(cfg: Config) -> Router {
    Gateway::open(cfg).await.expect("gateway opens").router()
}

// Credentials.

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn mint(sub: &str, subscribe: &[&str], publish: &[&str], admin: bool) -> String {
    let grants = Grants {
        subscribe: subscribe.iter().map(|s| s.to_string()).collect(),
        publish: publish.iter().map(|s| s.to_string()).collect(),
        admin,
        ..Grants::default()
    };
    Minter::new(SECRET, &AuthConfig::default())
        .mint(sub, grants, 3600)
        .unwrap()
}

/// A subscriber: `logs:**` and its own `notes:{sub}`, no publish grant.
fn user() -> String {
    mint("u1", &["logs:**", "notes:{sub}"], &[], false)
}

fn other_user() -> String {
    mint("u2", &["logs:**"], &[], false)
}

fn publisher() -> String {
    mint("pub", &[], &["logs:**"], false)
}

fn admin() -> String {
    mint("ops", &["**"], &["**"], true)
}

/// A JWT with these claims, HS256 with `secret`.
fn signed(secret: &str, claims: Value) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

/// Claims that grant everything, so that only what a case changes can refuse it.
fn claims() -> Value {
    json!({"sub": "u1", "exp": now() + 3600,
           "ssegate": {"subscribe": ["**"], "publish": ["**"], "admin": true}})
}

fn claims_with(edit: impl FnOnce(&mut Value)) -> Value {
    let mut c = claims();
    edit(&mut c);
    c
}

/// `Authorization` values that are refused, and the code each gets (docs/api.md,
/// Credentials). Every authenticated endpoint is called with each.
fn bad_credentials() -> Vec<(&'static str, Option<String>, &'static str)> {
    let unsigned = format!(
        "{}.{}.",
        URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#),
        URL_SAFE_NO_PAD.encode(claims().to_string())
    );
    let bearer = |t: String| Some(format!("Bearer {t}"));
    vec![
        ("no credentials", None, "missing_credentials"),
        (
            "a Basic header",
            Some("Basic dTE6cHc=".into()),
            "missing_credentials",
        ),
        (
            "an empty bearer",
            Some("Bearer ".into()),
            "missing_credentials",
        ),
        (
            "expired",
            bearer(signed(
                SECRET,
                claims_with(|c| c["exp"] = json!(now() - 3600)),
            )),
            "token_expired",
        ),
        (
            "nbf in the future",
            bearer(signed(
                SECRET,
                claims_with(|c| c["nbf"] = json!(now() + 600)),
            )),
            "token_not_yet_valid",
        ),
        (
            "another key",
            bearer(signed("another-secret-0123456789abcdef", claims())),
            "invalid_token",
        ),
        ("alg none", bearer(unsigned), "invalid_token"),
        ("malformed", bearer("a.b.c".into()), "invalid_token"),
        ("one dot", bearer("a.b".into()), "invalid_token"),
        (
            "no sub",
            bearer(signed(
                SECRET,
                claims_with(|c| {
                    c.as_object_mut().unwrap().remove("sub");
                }),
            )),
            "invalid_token",
        ),
        (
            "empty sub",
            bearer(signed(SECRET, claims_with(|c| c["sub"] = json!("")))),
            "invalid_token",
        ),
        (
            "no exp",
            bearer(signed(
                SECRET,
                claims_with(|c| {
                    c.as_object_mut().unwrap().remove("exp");
                }),
            )),
            "invalid_token",
        ),
        (
            "invalid grant pattern",
            bearer(signed(
                SECRET,
                claims_with(|c| c["ssegate"]["subscribe"] = json!(["a b"])),
            )),
            "invalid_token",
        ),
        (
            "unknown publisher key",
            bearer("nosuchkey0123".into()),
            "invalid_token",
        ),
    ]
}

// Requests.

/// A request under construction: one `Host` (HTTP/1.1), a peer address, no credentials.
struct Req {
    method: Method,
    uri: String,
    version: Version,
    hosts: usize,
    headers: Vec<(&'static str, String)>,
    body: Body,
    peer: SocketAddr,
}

fn req(method: Method, uri: &str) -> Req {
    Req {
        method,
        uri: uri.into(),
        version: Version::HTTP_11,
        hosts: 1,
        headers: Vec::new(),
        body: Body::empty(),
        peer: SocketAddr::from(([127, 0, 0, 1], 40000)),
    }
}

fn get(uri: &str) -> Req {
    req(Method::GET, uri)
}

fn head(uri: &str) -> Req {
    req(Method::HEAD, uri)
}

fn delete(uri: &str) -> Req {
    req(Method::DELETE, uri)
}

/// A POST with a JSON body.
fn post(uri: &str, body: impl Into<Body>) -> Req {
    req(Method::POST, uri)
        .header("content-type", "application/json")
        .body(body)
}

impl Req {
    fn header(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.headers.push((name, value.into()));
        self
    }

    fn without(mut self, name: &str) -> Self {
        self.headers.retain(|(n, _)| *n != name);
        self
    }

    fn bearer(self, token: &str) -> Self {
        self.header("authorization", format!("Bearer {token}"))
    }

    fn authorization(self, value: Option<&str>) -> Self {
        match value {
            Some(v) => self.header("authorization", v),
            None => self,
        }
    }

    /// The auth cookie (ambient credentials: the cross-site checks apply).
    fn cookie(self, token: &str) -> Self {
        self.header("cookie", format!("ssegate_token={token}"))
    }

    fn hosts(mut self, n: usize) -> Self {
        self.hosts = n;
        self
    }

    fn version(mut self, v: Version) -> Self {
        self.version = v;
        self
    }

    fn body(mut self, body: impl Into<Body>) -> Self {
        self.body = body.into();
        self
    }

    fn peer(mut self, ip: [u8; 4]) -> Self {
        self.peer = SocketAddr::from((ip, 40000));
        self
    }

    fn build(self) -> Request<Body> {
        let mut b = Request::builder()
            .method(self.method)
            .uri(self.uri)
            .version(self.version);
        for _ in 0..self.hosts {
            b = b.header(header::HOST, HOST);
        }
        for (name, value) in self.headers {
            b = b.header(name, value);
        }
        let mut request = b.body(self.body).expect("a valid request");
        request.extensions_mut().insert(ConnectInfo(self.peer));
        request
    }
}

/// Extra request headers of a table row.
type Headers = Vec<(&'static str, &'static str)>;

/// A body that yields a few bytes and then fails, as a connection cut mid-body does.
fn broken_body() -> Body {
    Body::from_stream(futures::stream::iter([
        Ok(Bytes::from_static(b"{\"chan")),
        Err(std::io::Error::new(
            std::io::ErrorKind::ConnectionReset,
            "connection reset mid-body",
        )),
    ]))
}

/// A body that starts and never ends (slower than `server.body_timeout_ms`).
fn stalled_body() -> Body {
    Body::from_stream(
        futures::stream::iter([Ok::<_, std::io::Error>(Bytes::from_static(b"{\"chan"))])
            .chain(futures::stream::pending()),
    )
}

// Cases.

struct Case {
    name: String,
    req: Req,
    status: u16,
    /// The error code; `None` for a request that is not refused (a control).
    code: Option<&'static str>,
}

/// A refused request: `status` with the error `code`.
fn refused(label: &str, req: Req, status: u16, code: &'static str) -> Case {
    Case {
        name: format!("{} {} [{label}]", req.method, short(&req.uri)),
        req,
        status,
        code: Some(code),
    }
}

/// A request that is not refused (a control: the checks refuse for the reason they say).
fn passes(label: &str, req: Req, status: u16) -> Case {
    Case {
        name: format!("{} {} [{label}]", req.method, short(&req.uri)),
        req,
        status,
        code: None,
    }
}

fn short(uri: &str) -> String {
    if uri.len() <= 70 {
        uri.to_owned()
    } else {
        format!("{}…", &uri[..70])
    }
}

/// Where the contract gives a `Retry-After`: the 429s and the 503s.
fn has_retry_after(code: &str) -> bool {
    matches!(
        code,
        "too_many_connections"
            | "too_many_connections_for_user"
            | "too_many_connections_from_address"
            | "connection_rate_limited"
            | "publish_rate_limited"
            | "auth_unavailable"
            | "log_unavailable"
    )
}

async fn send(app: &Router, req: Req) -> Response {
    app.clone().oneshot(req.build()).await.expect("infallible")
}

async fn json_body(res: Response) -> Value {
    let bytes = axum::body::to_bytes(res.into_body(), 1 << 20)
        .await
        .expect("a body");
    serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()))
}

/// Sends the case's request and says what differs from the contract (`Err`), if anything.
async fn check(app: &Router, case: Case) -> Result<(), String> {
    let is_head = case.req.method == Method::HEAD;
    let res = send(app, case.req).await;
    let mut problems = Vec::new();
    if res.status().as_u16() != case.status {
        problems.push(format!("status {} (want {})", res.status(), case.status));
    }
    if !res.headers().contains_key("x-request-id") {
        problems.push("no X-Request-Id".into());
    }
    let Some(code) = case.code else {
        return verdict(&case.name, problems);
    };
    let seconds = |v: &header::HeaderValue| {
        v.to_str()
            .is_ok_and(|s| s.parse::<u64>().is_ok_and(|n| n >= 1))
    };
    match res.headers().get(header::RETRY_AFTER) {
        Some(v) if has_retry_after(code) && !seconds(v) => {
            problems.push(format!("Retry-After {v:?} is not a number of seconds"))
        }
        Some(_) if has_retry_after(code) => {}
        None if has_retry_after(code) => problems.push("no Retry-After".into()),
        Some(v) => problems.push(format!("unexpected Retry-After {v:?}")),
        None => {}
    }
    if is_head {
        // A HEAD answer has the GET's status and headers and no body.
        let body = axum::body::to_bytes(res.into_body(), 1 << 20)
            .await
            .unwrap();
        if !body.is_empty() {
            problems.push(format!("a HEAD answer with a body of {} bytes", body.len()));
        }
        return verdict(&case.name, problems);
    }
    let json_type = res
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !json_type {
        problems.push(format!(
            "Content-Type {:?}",
            res.headers().get(header::CONTENT_TYPE)
        ));
    }
    let body = json_body(res).await;
    problems.extend(error_shape(&body, code));
    verdict(&case.name, problems)
}

/// What is wrong with `body` as `{"error": {"code": code, "message": "…"}}` (plus
/// `"channels"` for `forbidden_channel`).
fn error_shape(body: &Value, code: &str) -> Vec<String> {
    let mut problems = Vec::new();
    let error = &body["error"];
    if body.as_object().map(|o| o.len()) != Some(1) || !error.is_object() {
        return vec![format!("body {body} is not {{\"error\": {{…}}}}")];
    }
    if error["code"].as_str() != Some(code) {
        problems.push(format!("code {} (want {code:?})", error["code"]));
    }
    if error["message"]
        .as_str()
        .is_none_or(|m| m.trim().is_empty())
    {
        problems.push(format!("no message in {body}"));
    }
    let allowed: &[&str] = if code == "forbidden_channel" {
        &["code", "message", "channels"]
    } else {
        &["code", "message"]
    };
    for key in error.as_object().unwrap().keys() {
        if !allowed.contains(&key.as_str()) {
            problems.push(format!("unexpected field {key:?} in {body}"));
        }
    }
    if code == "forbidden_channel"
        && !error["channels"]
            .as_array()
            .is_some_and(|c| !c.is_empty() && c.iter().all(Value::is_string))
    {
        problems.push(format!("forbidden_channel without `channels`: {body}"));
    }
    problems
}

fn verdict(name: &str, problems: Vec<String>) -> Result<(), String> {
    if problems.is_empty() {
        Ok(())
    } else {
        Err(format!("{name}: {}", problems.join("; ")))
    }
}

/// Runs every case (all of them, then reports every failure at once).
async fn run(app: &Router, cases: Vec<Case>) {
    let n = cases.len();
    let mut failures = Vec::new();
    for case in cases {
        if let Err(e) = check(app, case).await {
            failures.push(e);
        }
    }
    fail_on(n, failures);
}

fn fail_on(n: usize, failures: Vec<String>) {
    assert!(
        failures.is_empty(),
        "{} of {n} cases differ from docs/api.md:\n  {}",
        failures.len(),
        failures.join("\n  ")
    );
    eprintln!("{n} cases as docs/api.md says");
}

// Helpers that read state back.

/// The log head, from `/v1/status`.
async fn log_head(app: &Router) -> String {
    let res = send(app, get("/v1/status").bearer(&admin())).await;
    assert_eq!(res.status(), 200);
    json_body(res).await["log"]["head"]
        .as_str()
        .expect("log.head")
        .to_owned()
}

/// Opens a stream and keeps it: the answer must be 200 (its body is never read).
async fn open_stream(app: &Router, req: Req) -> Response {
    let res = send(app, req).await;
    assert_eq!(res.status(), 200, "{:?}", json_body(res).await);
    res
}

/// The open connections of `user`: `(connection_id, channels)`.
async fn connections(app: &Router, user: &str) -> Vec<(String, Value)> {
    let res = send(
        app,
        get(&format!("/v1/connections?user={user}")).bearer(&admin()),
    )
    .await;
    assert_eq!(res.status(), 200);
    json_body(res).await["connections"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["connection_id"].as_str().unwrap().to_owned(),
                c["channels"].clone(),
            )
        })
        .collect()
}

// The tables.

/// One well-formed request per authenticated endpoint, without credentials.
fn authenticated_endpoints() -> Vec<fn() -> Req> {
    vec![
        || get("/v1/stream?channel=logs:a"),
        || head("/v1/stream?channel=logs:a"),
        || {
            post(
                "/v1/connections/c_nope/subscriptions",
                r#"{"add":["logs:b"]}"#,
            )
        },
        || post("/v1/publish", r#"{"channel":"logs:a","data":1}"#),
        || get("/v1/poll?channel=logs:a&timeout_ms=0"),
        || get("/v1/connections"),
        || delete("/v1/users/u1/connections"),
        || get("/v1/channels"),
        || post("/v1/broadcast", r#"{"type":"maintenance"}"#),
        || post("/v1/admin/drain", ""),
        || post("/v1/sources/nope/start", ""),
        || get("/v1/status"),
    ]
}

/// The admin endpoints: `403 admin_required` for credentials without the grant.
fn admin_endpoints() -> Vec<fn() -> Req> {
    vec![
        || get("/v1/connections"),
        || get("/v1/connections?user=u1"),
        || delete("/v1/users/u1/connections"),
        || get("/v1/channels"),
        || post("/v1/broadcast", r#"{"type":"maintenance"}"#),
        || post("/v1/admin/drain", ""),
        || post("/v1/sources/nope/start", ""),
        || post("/v1/sources/nope/stop", ""),
        || get("/v1/status"),
    ]
}

/// docs/api.md, Credentials: every authenticated endpoint refuses every bad credential with
/// its code; the token is looked for in the header, the cookie and (stream, poll,
/// subscriptions) the query; admin endpoints refuse credentials without the admin grant.
#[tokio::test]
async fn credentials_are_refused_on_every_endpoint() {
    let app = app(config("")).await;
    let mut cases = Vec::new();
    for endpoint in authenticated_endpoints() {
        for (label, authorization, code) in bad_credentials() {
            cases.push(refused(
                label,
                endpoint().authorization(authorization.as_deref()),
                401,
                code,
            ));
        }
    }
    let expired = signed(SECRET, claims_with(|c| c["exp"] = json!(now() - 3600)));
    let early = signed(SECRET, claims_with(|c| c["nbf"] = json!(now() + 600)));
    let (stream, poll) = (
        "/v1/stream?channel=logs:a",
        "/v1/poll?channel=logs:a&timeout_ms=0",
    );
    let query = |path: &str, token: &str| format!("{path}&access_token={token}");
    #[rustfmt::skip]
    let more = vec![
        refused("expired, query", get(&query(stream, &expired)), 401, "token_expired"),
        refused("expired, query", head(&query(stream, &expired)), 401, "token_expired"),
        refused("expired, query", get(&query(poll, &expired)), 401, "token_expired"),
        refused("expired, query", post(&query("/v1/connections/c_nope/subscriptions?x=1", &expired), r#"{"add":["logs:b"]}"#), 401, "token_expired"),
        refused("malformed, query", get(&query(stream, "a.b.c")), 401, "invalid_token"),
        refused("malformed, query", get(&query(poll, "a.b.c")), 401, "invalid_token"),
        refused("expired, cookie", get(stream).cookie(&expired), 401, "token_expired"),
        refused("expired, cookie", get(poll).cookie(&expired), 401, "token_expired"),
        refused("nbf ahead, cookie", head(stream).cookie(&early), 401, "token_not_yet_valid"),
        refused("nbf ahead, cookie", get(poll).cookie(&early), 401, "token_not_yet_valid"),
        // A cookie-authenticated POST from this site: the token in the cookie is what fails.
        refused("expired, same-site cookie", post("/v1/publish", r#"{"channel":"logs:a"}"#).cookie(&expired).header("origin", SAME_ORIGIN), 401, "token_expired"),
        // First found wins: the header over a valid cookie, the cookie over a valid query token.
        refused("expired bearer, valid cookie", get(stream).bearer(&expired).cookie(&user()), 401, "token_expired"),
        refused("expired cookie, valid query", get(&query(stream, &user())).cookie(&expired), 401, "token_expired"),
    ];
    cases.extend(more);
    for endpoint in admin_endpoints() {
        cases.push(refused(
            "subscriber",
            endpoint().bearer(&user()),
            403,
            "admin_required",
        ));
        cases.push(refused(
            "publisher key",
            endpoint().bearer(PUBLISHER_KEY),
            403,
            "admin_required",
        ));
    }
    run(&app, cases).await;
}

/// `allow_query_token = false`: a token in the query alone is `400 query_token_disabled`.
#[tokio::test]
async fn query_tokens_are_refused_when_disabled() {
    let app = app(config("auth.allow_query_token = false")).await;
    let u = user();
    let with_token = |path: &str| format!("{path}&access_token={u}");
    #[rustfmt::skip]
    let cases = vec![
        refused("query token", get(&with_token("/v1/stream?channel=logs:a")), 400, "query_token_disabled"),
        refused("query token", head(&with_token("/v1/stream?channel=logs:a")), 400, "query_token_disabled"),
        refused("query token", get(&with_token("/v1/poll?channel=logs:a&timeout_ms=0")), 400, "query_token_disabled"),
        refused("query token", post(&with_token("/v1/connections/c_nope/subscriptions?x=1"), r#"{"add":[]}"#), 400, "query_token_disabled"),
        refused("bad query token", get("/v1/stream?channel=logs:a&access_token=a.b.c"), 400, "query_token_disabled"),
        // The header still works, and then the query is not looked at.
        passes("bearer and query token", head(&with_token("/v1/stream?channel=logs:a")).bearer(&u), 200),
    ];
    run(&app, cases).await;
}

/// `GET /v1/stream`, `HEAD /v1/stream` and `GET /v1/poll`: the table "Errors before the
/// stream starts" (HEAD answers what GET would), plus `invalid_timeout` for the poll.
#[tokio::test]
async fn stream_and_poll_refusals() {
    let app = app(config("")).await;
    let u = user();
    let long_channel = format!("logs:{}", "a".repeat(251));
    let too_long_channel = format!("logs:{}", "a".repeat(252));
    // (label, query after the endpoint's own parameters, headers, code); 400 unless the
    // code is `forbidden_channel`.
    #[rustfmt::skip]
    let refusals: Vec<(&str, String, Headers, &str)> = vec![
        ("no channel", "".into(), vec![], "missing_channel"),
        ("only other parameters", "&_=123&foo=bar".into(), vec![], "missing_channel"),
        ("empty channel", "&channel=".into(), vec![], "invalid_channel"),
        ("space", "&channel=logs:a%20b".into(), vec![], "invalid_channel"),
        ("empty segment", "&channel=logs::a".into(), vec![], "invalid_channel"),
        ("trailing colon", "&channel=logs:".into(), vec![], "invalid_channel"),
        ("braces", "&channel=logs:%7Bsub%7D".into(), vec![], "invalid_channel"),
        ("quote", "&channel=logs:%22a".into(), vec![], "invalid_channel"),
        ("CRLF", "&channel=logs:a%0D%0Ab".into(), vec![], "invalid_channel"),
        ("inner **", "&channel=logs:**:a".into(), vec![], "invalid_channel"),
        ("257 bytes", format!("&channel={too_long_channel}"), vec![], "invalid_channel"),
        ("one bad of two", "&channel=logs:a&channel=a%20b".into(), vec![], "invalid_channel"),
        ("4 channels, 3 allowed", "&channel=logs:1&channel=logs:2&channel=logs:3&channel=logs:4".into(), vec![], "too_many_channels"),
        ("not granted", "&channel=secret:x".into(), vec![], "forbidden_channel"),
        ("one not granted", "&channel=logs:a&channel=secret:x".into(), vec![], "forbidden_channel"),
        ("another user's {sub}", "&channel=notes:u2".into(), vec![], "forbidden_channel"),
        ("wider pattern than granted", "&channel=**".into(), vec![], "forbidden_channel"),
        ("pattern beyond the grant", "&channel=*:a".into(), vec![], "forbidden_channel"),
        ("letters", "&channel=logs:a&last_event_id=abc".into(), vec![], "invalid_last_event_id"),
        ("negative", "&channel=logs:a&last_event_id=-1".into(), vec![], "invalid_last_event_id"),
        ("three parts", "&channel=logs:a&last_event_id=1-2-3".into(), vec![], "invalid_last_event_id"),
        ("21 digits", "&channel=logs:a&last_event_id=123456789012345678901".into(), vec![], "invalid_last_event_id"),
        ("header", "&channel=logs:a".into(), vec![("last-event-id", "abc")], "invalid_last_event_id"),
        ("header wins over the query", "&channel=logs:a&last_event_id=5".into(), vec![("last-event-id", "x")], "invalid_last_event_id"),
    ];
    let session_refusals: Vec<(&str, String)> = vec![
        (
            "129 bytes",
            format!("&channel=logs:a&session_id={}", "s".repeat(129)),
        ),
        (
            "control character",
            "&channel=logs:a&session_id=tab%01".into(),
        ),
        ("newline", "&channel=logs:a&session_id=a%0Ab".into()),
    ];
    let mut cases = Vec::new();
    for (path, methods) in [
        ("/v1/stream?x=1", &[Method::GET, Method::HEAD][..]),
        ("/v1/poll?timeout_ms=0", &[Method::GET][..]),
    ] {
        for method in methods {
            for (label, query, headers, code) in &refusals {
                let mut r = req(method.clone(), &format!("{path}{query}")).bearer(&u);
                for (name, value) in headers {
                    r = r.header(name, *value);
                }
                cases.push(refused(label, r, 400, code).forbidden_if(code));
            }
            // Control: the longest channel, a valid id and a session id pass.
            let ok = format!(
                "{path}&channel={long_channel}&channel=notes:u1&last_event_id=0&session_id=tab-1"
            );
            cases.push(passes("valid", req(method.clone(), &ok).bearer(&u), 200));
        }
        for (label, query) in &session_refusals {
            if path.starts_with("/v1/stream") {
                cases.push(refused(
                    label,
                    get(&format!("{path}{query}")).bearer(&u),
                    400,
                    "invalid_session_id",
                ));
            }
        }
    }
    for t in ["abc", "-1", "1.5", "", "99999999999999999999999"] {
        cases.push(refused(
            "timeout",
            get(&format!("/v1/poll?channel=logs:a&timeout_ms={t}")).bearer(&u),
            400,
            "invalid_timeout",
        ));
    }
    run(&app, cases).await;
}

impl Case {
    /// `forbidden_channel` is a 403.
    fn forbidden_if(mut self, code: &str) -> Self {
        if code == "forbidden_channel" {
            self.status = 403;
        }
        self
    }
}

/// `POST /v1/connections/{id}/subscriptions` on a live stream: every refusal changes
/// nothing (the connection keeps its one channel).
#[tokio::test]
async fn subscription_change_refusals() {
    let app = app(config("")).await;
    let u = user();
    let _mine = open_stream(&app, get("/v1/stream?channel=logs:a").bearer(&u)).await;
    let _theirs = open_stream(&app, get("/v1/stream?channel=logs:a").bearer(&other_user())).await;
    let [(id, channels)] = &connections(&app, "u1").await[..] else {
        panic!("one connection of u1")
    };
    assert_eq!(channels, &json!(["logs:a"]));
    let [(their_id, _)] = &connections(&app, "u2").await[..] else {
        panic!("one connection of u2")
    };
    let path = format!("/v1/connections/{id}/subscriptions");
    let change = |body: &str| post(&path, body.to_owned()).bearer(&u);
    let huge = format!(r#"{{"add":["{}"]}}"#, "a".repeat(300 * 1024));
    #[rustfmt::skip]
    let cases = vec![
        refused("not JSON", change("{"), 400, "invalid_json"),
        refused("empty body", change(""), 400, "invalid_json"),
        refused("null", change("null"), 400, "invalid_json"),
        refused("a string", change(r#""logs:b""#), 400, "invalid_json"),
        refused("unknown field", change(r#"{"add":["logs:b"],"extra":1}"#), 400, "invalid_json"),
        refused("add not a list", change(r#"{"add":"logs:b"}"#), 400, "invalid_json"),
        refused("add a space", change(r#"{"add":["logs:a b"]}"#), 400, "invalid_channel"),
        refused("add braces", change(r#"{"add":["logs:{x}"]}"#), 400, "invalid_channel"),
        refused("remove empty segment", change(r#"{"remove":["logs::a"]}"#), 400, "invalid_channel"),
        refused("4 added, 3 allowed", change(r#"{"add":["logs:1","logs:2","logs:3","logs:4"]}"#), 400, "too_many_channels"),
        refused("1 + 3 added, 3 allowed", change(r#"{"add":["logs:1","logs:2","logs:3"]}"#), 400, "too_many_channels"),
        refused("bad id", change(r#"{"add":["logs:b"],"last_event_id":"abc"}"#), 400, "invalid_last_event_id"),
        refused("not granted", change(r#"{"add":["secret:x"]}"#), 403, "forbidden_channel"),
        refused("one not granted", change(r#"{"add":["logs:b","notes:u2"]}"#), 403, "forbidden_channel"),
        refused("no such connection", post("/v1/connections/c_nope/subscriptions", r#"{"add":["logs:b"]}"#).bearer(&u), 404, "connection_not_found"),
        refused("another user's connection", post(&format!("/v1/connections/{their_id}/subscriptions"), r#"{"add":["logs:b"]}"#).bearer(&u), 404, "connection_not_found"),
        refused("300 KiB", change(&huge), 413, "body_too_large"),
        refused("cut mid-body", change("").body(broken_body()), 400, "malformed_body"),
        refused("stalled body", change("").body(stalled_body()), 408, "body_timeout"),
        refused("cookie, no origin", post(&path, r#"{"add":["logs:b"]}"#).cookie(&u), 403, "cross_site_request"),
        refused("cookie, text/plain", post(&path, r#"{"add":["logs:b"]}"#).cookie(&u).header("origin", SAME_ORIGIN).without("content-type").header("content-type", "text/plain"), 415, "unsupported_media_type"),
    ];
    run(&app, cases).await;
    assert_eq!(
        connections(&app, "u1").await,
        vec![(id.clone(), json!(["logs:a"]))],
        "a refused change changed the connection"
    );
    // Control: the same connection takes a valid change.
    let res = send(&app, change(r#"{"add":["logs:b"]}"#)).await;
    assert_eq!(res.status(), 200);
    assert_eq!(
        json_body(res).await,
        json!({"channels": ["logs:a", "logs:b"]})
    );
}

/// `POST /v1/publish`: every row of its table that a memory log can produce; after each
/// refusal the log head has not moved, and a poll from the start sees only the controls.
#[tokio::test]
async fn publish_refusals_append_nothing() {
    let app = app(config("")).await;
    let p = publisher();
    let start = log_head(&app).await;
    let publish = |body: String| post("/v1/publish", body).bearer(&p);
    let one = |extra: &str| publish(format!(r#"{{"channel":"logs:a","data":1{extra}}}"#));
    let users = vec!["u"; 1001];
    #[rustfmt::skip]
    let mut cases = vec![
        refused("not JSON", publish("{".into()), 400, "invalid_json"),
        refused("empty body", publish("".into()), 400, "invalid_json"),
        refused("a string", publish(r#""x""#.into()), 400, "invalid_json"),
        refused("a number", publish("42".into()), 400, "invalid_json"),
        refused("not UTF-8", post("/v1/publish", vec![b'"', 0xff, 0xfe, b'"']).bearer(&p), 400, "invalid_json"),
        refused("unknown field", one(r#","bogus":1"#), 400, "invalid_json"),
        refused("a number in a batch", publish(r#"[{"channel":"logs:a"},3]"#.into()), 400, "invalid_json"),
        refused("type a number", one(r#","type":5"#), 400, "invalid_json"),
        refused("empty type", one(r#","type":"""#), 400, "invalid_type"),
        refused("CRLF in type", one(r#","type":"a\r\nb""#), 400, "invalid_type"),
        refused("129-byte type", one(&format!(r#","type":"{}""#, "t".repeat(129))), 400, "invalid_type"),
        refused("[]", publish("[]".into()), 400, "empty_batch"),
        refused("5 events, 4 allowed", publish(format!("[{}]", [r#"{"channel":"logs:a"}"#; 5].join(","))), 400, "batch_too_large"),
        refused("5 channels, 4 allowed", publish(r#"{"channels":["logs:1","logs:2","logs:3","logs:4","logs:5"]}"#.into()), 400, "batch_too_large"),
        refused("1 + 4 channels", publish(r#"[{"channel":"logs:0"},{"channels":["logs:1","logs:2","logs:3","logs:4"]}]"#.into()), 400, "batch_too_large"),
        refused("no channel", publish(r#"{"data":1}"#.into()), 400, "missing_channel"),
        refused("empty channels", publish(r#"{"channels":[]}"#.into()), 400, "missing_channel"),
        refused("second event has none", publish(r#"[{"channel":"logs:a"},{"type":"x"}]"#.into()), 400, "missing_channel"),
        refused("channel and channels", publish(r#"{"channel":"logs:a","channels":["logs:b"]}"#.into()), 400, "invalid_event"),
        refused("space", publish(r#"{"channel":"logs:a b"}"#.into()), 400, "invalid_channel"),
        refused("a pattern", publish(r#"{"channel":"logs:*"}"#.into()), 400, "invalid_channel"),
        refused("empty segment", publish(r#"{"channel":"logs::a"}"#.into()), 400, "invalid_channel"),
        refused("one bad of channels", publish(r#"{"channels":["logs:a","logs:b c"]}"#.into()), 400, "invalid_channel"),
        refused("empty id", one(r#","id":"""#), 400, "invalid_id"),
        refused("257-byte id", one(&format!(r#","id":"{}""#, "k".repeat(257))), 400, "invalid_id"),
        refused("LF in id", one(r#","id":"a\nb""#), 400, "invalid_id"),
        refused("empty user", one(r#","users":[""]"#), 400, "invalid_users"),
        refused("control in user", one(r#","users":["a\u0001"]"#), 400, "invalid_users"),
        refused("257-byte user", one(&format!(r#","users":["{}"]"#, "u".repeat(257))), 400, "invalid_users"),
        refused("1001 users", one(&format!(r#","users":{}"#, json!(users))), 400, "invalid_users"),
        refused("not granted", publish(r#"{"channel":"secret:x"}"#.into()), 403, "forbidden_channel"),
        refused("second not granted", publish(r#"[{"channel":"logs:a"},{"channel":"secret:x"}]"#.into()), 403, "forbidden_channel"),
        refused("subscriber only", one("").without("authorization").bearer(&user()), 403, "forbidden_channel"),
        refused("publisher key", publish(r#"{"channel":"secret:x"}"#.into()).without("authorization").bearer(PUBLISHER_KEY), 403, "forbidden_channel"),
        refused("1.1 KiB event", publish(format!(r#"{{"channel":"logs:a","data":"{}"}}"#, "d".repeat(1100))), 413, "event_too_large"),
        refused("second event too large", publish(format!(r#"[{{"channel":"logs:a"}},{{"channel":"logs:a","data":"{}"}}]"#, "d".repeat(1100))), 413, "event_too_large"),
        refused("6000-byte body", publish(format!(r#"{{"channel":"logs:a","data":"{}"}}"#, "d".repeat(6000))), 413, "body_too_large"),
        refused("cut mid-body", publish("".into()).body(broken_body()), 400, "malformed_body"),
        refused("stalled body", publish("".into()).body(stalled_body()), 408, "body_timeout"),
    ];
    for reserved in ["connected", "gap", "subscribed", "unsubscribed", "closing"] {
        cases.push(refused(
            reserved,
            one(&format!(r#","type":"{reserved}""#)),
            400,
            "invalid_type",
        ));
        cases.push(refused(
            reserved,
            publish(format!(
                r#"[{{"channel":"logs:a"}},{{"channels":["logs:b"],"type":"{reserved}"}}]"#
            )),
            400,
            "invalid_type",
        ));
    }
    cases.extend(edge_refusals(|| one("")));
    let cookie = || post("/v1/publish", r#"{"channel":"logs:a"}"#).cookie(&p);
    cases.extend([
        refused("cookie, no Origin", cookie(), 403, "cross_site_request"),
        refused(
            "cookie, other Origin",
            cookie().header("origin", "https://evil.example"),
            403,
            "cross_site_request",
        ),
        refused(
            "cookie, Origin null",
            cookie().header("origin", "null"),
            403,
            "cross_site_request",
        ),
        refused(
            "cookie, other Referer",
            cookie().header("referer", "https://evil.example/page"),
            403,
            "cross_site_request",
        ),
        refused(
            "cookie, same-origin text/plain",
            cookie()
                .header("origin", SAME_ORIGIN)
                .without("content-type")
                .header("content-type", "text/plain"),
            415,
            "unsupported_media_type",
        ),
        refused(
            "cookie, same-origin form",
            cookie()
                .header("origin", SAME_ORIGIN)
                .without("content-type")
                .header("content-type", "application/x-www-form-urlencoded"),
            415,
            "unsupported_media_type",
        ),
        refused(
            "cookie, same-origin no Content-Type",
            cookie()
                .header("referer", "http://gw.test/app")
                .without("content-type"),
            415,
            "unsupported_media_type",
        ),
    ]);
    let n = cases.len();
    let mut failures = Vec::new();
    for case in cases {
        let name = case.name.clone();
        if let Err(e) = check(&app, case).await {
            failures.push(e);
        }
        let head = log_head(&app).await;
        if head != start {
            failures.push(format!("{name}: the log head moved from {start} to {head}"));
        }
    }
    fail_on(n, failures);

    // Controls: a bearer publish and a same-origin cookie publish are taken, and a poll from
    // the start finds exactly those two events.
    for r in [
        one(""),
        post("/v1/publish", r#"{"channel":"logs:b","data":2}"#)
            .cookie(&p)
            .header("origin", SAME_ORIGIN),
    ] {
        let res = send(&app, r).await;
        assert_eq!(res.status(), 200, "{}", json_body(res).await);
    }
    let res = send(
        &app,
        get(&format!(
            "/v1/poll?channel=**&last_event_id={start}&timeout_ms=0"
        ))
        .bearer(&admin()),
    )
    .await;
    assert_eq!(res.status(), 200);
    let body = json_body(res).await;
    let data: Vec<&Value> = body["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| &e["data"])
        .collect();
    assert_eq!(data, [&json!(1), &json!(2)], "{body}");
}

/// The "Every request" framing rows for any request built by `make` (which must otherwise
/// pass these checks).
fn edge_refusals(make: impl Fn() -> Req) -> Vec<Case> {
    vec![
        refused("no Host", make().hosts(0), 400, "invalid_host"),
        refused("two Hosts", make().hosts(2), 400, "invalid_host"),
        refused(
            "gzip",
            make().header("transfer-encoding", "gzip"),
            501,
            "unsupported_transfer_encoding",
        ),
        refused(
            "gzip, chunked",
            make().header("transfer-encoding", "gzip, chunked"),
            501,
            "unsupported_transfer_encoding",
        ),
        refused(
            "chunked twice",
            make()
                .header("transfer-encoding", "chunked")
                .header("transfer-encoding", "chunked"),
            501,
            "unsupported_transfer_encoding",
        ),
        refused(
            "identity",
            make().header("transfer-encoding", "identity"),
            501,
            "unsupported_transfer_encoding",
        ),
    ]
}

/// The admin API: validation of a broadcast, unknown sources, and the "Every request" rows;
/// a refused kick closes nothing.
#[tokio::test]
async fn admin_refusals() {
    let app = app(config("")).await;
    let a = admin();
    let _stream = open_stream(&app, get("/v1/stream?channel=logs:a").bearer(&user())).await;
    let broadcast = |body: String| post("/v1/broadcast", body).bearer(&a);
    #[rustfmt::skip]
    let mut cases = vec![
        refused("not JSON", broadcast("{".into()), 400, "invalid_json"),
        refused("empty", broadcast("".into()), 400, "invalid_json"),
        refused("no type", broadcast("{}".into()), 400, "invalid_json"),
        refused("an array", broadcast(r#"[{"type":"m"}]"#.into()), 400, "invalid_json"),
        refused("unknown field", broadcast(r#"{"type":"m","channel":"logs:a"}"#.into()), 400, "invalid_json"),
        refused("empty type", broadcast(r#"{"type":""}"#.into()), 400, "invalid_type"),
        refused("LF in type", broadcast(r#"{"type":"a\nb"}"#.into()), 400, "invalid_type"),
        refused("129-byte type", broadcast(format!(r#"{{"type":"{}"}}"#, "t".repeat(129))), 400, "invalid_type"),
        refused("1.1 KiB", broadcast(format!(r#"{{"type":"m","data":"{}"}}"#, "d".repeat(1100))), 413, "event_too_large"),
        refused("6000-byte body", broadcast(format!(r#"{{"type":"m","data":"{}"}}"#, "d".repeat(6000))), 413, "body_too_large"),
        refused("cut mid-body", broadcast("".into()).body(broken_body()), 400, "malformed_body"),
        refused("stalled body", broadcast("".into()).body(stalled_body()), 408, "body_timeout"),
        refused("unknown source", post("/v1/sources/nope/start", "").bearer(&a), 404, "source_not_found"),
        refused("unknown source", post("/v1/sources/nope/stop", "").bearer(&a), 404, "source_not_found"),
        refused("unknown action", post("/v1/sources/nope/restart", "").bearer(&a), 404, "not_found"),
    ];
    for reserved in ["connected", "gap", "subscribed", "unsubscribed", "closing"] {
        cases.push(refused(
            reserved,
            broadcast(format!(r#"{{"type":"{reserved}"}}"#)),
            400,
            "invalid_type",
        ));
    }
    for make in [
        (|| post("/v1/broadcast", r#"{"type":"m"}"#).cookie(&admin())) as fn() -> Req,
        || delete("/v1/users/u1/connections").cookie(&admin()),
        || post("/v1/admin/drain", "").cookie(&admin()),
        || post("/v1/sources/nope/start", "").cookie(&admin()),
    ] {
        cases.push(refused(
            "cookie, no Origin",
            make(),
            403,
            "cross_site_request",
        ));
        cases.push(refused(
            "cookie, other Origin",
            make().header("origin", "https://evil.example"),
            403,
            "cross_site_request",
        ));
        cases.push(refused(
            "cookie, same origin, no JSON",
            make().header("origin", SAME_ORIGIN).without("content-type"),
            415,
            "unsupported_media_type",
        ));
    }
    for make in [
        (|| post("/v1/admin/drain", "").bearer(&admin())) as fn() -> Req,
        || delete("/v1/users/u1/connections").bearer(&admin()),
        || get("/v1/status").bearer(&admin()),
    ] {
        cases.extend(edge_refusals(make));
    }
    run(&app, cases).await;
    assert_eq!(
        connections(&app, "u1").await.len(),
        1,
        "a refused kick closed the stream"
    );
}

/// docs/api.md: `/healthz`, `/readyz`, `/metrics` answer; unknown paths are `404 not_found`;
/// without a dapr source `/dapr/subscribe` lists nothing and `/dapr/events/{name}` is `404`;
/// the framing rows hold on every route, unknown ones included.
#[tokio::test]
async fn operations_unknown_paths_and_dapr() {
    let app = app(config("")).await;
    #[rustfmt::skip]
    let mut cases = vec![
        passes("alive", get("/healthz"), 200),
        passes("ready", get("/readyz"), 200),
        passes("metrics", get("/metrics"), 200),
        passes("HTTP/1.0 without Host", get("/healthz").version(Version::HTTP_10).hosts(0), 200),
        passes("HTTP/2 without Host", get("/healthz").version(Version::HTTP_2).hosts(0), 200),
        passes("one chunked", get("/healthz").header("transfer-encoding", "chunked"), 200),
        passes("no dapr source", get("/dapr/subscribe"), 200),
        refused("unknown", get("/nope"), 404, "not_found"),
        refused("unknown", get("/"), 404, "not_found"),
        refused("unknown", get("/v1"), 404, "not_found"),
        refused("unknown", get("/v1/stream/x"), 404, "not_found"),
        refused("unknown", get("/v1/sources/nope"), 404, "not_found"),
        refused("unknown", post("/v1/nope", "{}").bearer(&admin()), 404, "not_found"),
        refused("unknown", delete("/v1/users/u1").bearer(&admin()), 404, "not_found"),
        refused("cookie POST to an unknown path", post("/nope", "{}").cookie(&admin()), 403, "cross_site_request"),
    ];
    for make in [
        (|| get("/healthz")) as fn() -> Req,
        || get("/readyz"),
        || get("/metrics"),
        || get("/nope"),
        || get("/dapr/subscribe"),
        || post("/dapr/events/nope", "{}"),
        || get("/v1/stream?channel=logs:a").bearer(&user()),
        || head("/v1/stream?channel=logs:a").bearer(&user()),
        || get("/v1/poll?channel=logs:a&timeout_ms=0").bearer(&user()),
    ] {
        cases.extend(edge_refusals(make));
    }
    run(&app, cases).await;

    let res = send(&app, get("/dapr/subscribe")).await;
    assert_eq!(json_body(res).await, json!([]));
    let res = send(&app, post("/dapr/events/nope", r#"{"specversion":"1.0"}"#)).await;
    assert_eq!(res.status(), 404);
    let body = json_body(res).await;
    assert_eq!(body["status"], "DROP", "{body}");
}

/// The 429 rows: streams open on the node, per user and per address (`Retry-After`), and a
/// `HEAD` that opens nothing; a closed stream gives its place back.
#[tokio::test]
async fn connection_limits() {
    let limits =
        "limits = {max_connections = 2, max_connections_per_user = 1, max_connections_per_ip = 1}";
    let app = app(config(limits)).await;
    let stream = |sub: &str, ip: [u8; 4]| {
        get("/v1/stream?channel=logs:a")
            .bearer(&mint(sub, &["logs:**"], &[], false))
            .peer(ip)
    };
    let first = open_stream(&app, stream("u1", [10, 0, 0, 1])).await;
    #[rustfmt::skip]
    let cases = vec![
        refused("same user", stream("u1", [10, 0, 0, 2]), 429, "too_many_connections_for_user"),
        refused("same address", stream("u2", [10, 0, 0, 1]), 429, "too_many_connections_from_address"),
    ];
    run(&app, cases).await;
    let _second = open_stream(&app, stream("u2", [10, 0, 0, 2])).await;
    #[rustfmt::skip]
    let cases = vec![
        refused("node full", stream("u3", [10, 0, 0, 3]), 429, "too_many_connections"),
        passes("HEAD counts nothing", head("/v1/stream?channel=logs:a").bearer(&user()).peer([10, 0, 0, 3]), 200),
        passes("a poll is not a stream", get("/v1/poll?channel=logs:a&timeout_ms=0").bearer(&user()).peer([10, 0, 0, 1]), 200),
    ];
    run(&app, cases).await;
    drop(first);
    let _third = open_stream(&app, stream("u3", [10, 0, 0, 3])).await;
}

/// `connection_rate_limited`: new streams and polls per address, counted before the
/// credentials are looked at (`Retry-After`); another address is not affected.
#[tokio::test]
async fn connect_rate_limit() {
    let app = app(config(
        "limits = {connect_rate_per_ip = 0.01, connect_burst_per_ip = 1}",
    ))
    .await;
    let a = [10, 0, 0, 1];
    #[rustfmt::skip]
    let cases = vec![
        refused("first, no credentials", get("/v1/stream?channel=logs:a").peer(a), 401, "missing_credentials"),
        refused("second stream", get("/v1/stream?channel=logs:a").bearer(&user()).peer(a), 429, "connection_rate_limited"),
        refused("then a poll", get("/v1/poll?channel=logs:a&timeout_ms=0").bearer(&user()).peer(a), 429, "connection_rate_limited"),
        passes("another address", get("/v1/poll?channel=logs:a&timeout_ms=0").bearer(&user()).peer([10, 0, 0, 2]), 200),
    ];
    run(&app, cases).await;
}

/// `publish_rate_limited` (`Retry-After`): the refused publish appends nothing; another
/// publisher is not affected.
#[tokio::test]
async fn publish_rate_limit() {
    let app = app(config("limits = {publish_rate = 0.01, publish_burst = 4}")).await;
    let p = publisher();
    let batch = |n: usize| {
        post(
            "/v1/publish",
            format!("[{}]", vec![r#"{"channel":"logs:a"}"#; n].join(",")),
        )
        .bearer(&p)
    };
    run(&app, vec![passes("within the burst", batch(3), 200)]).await;
    let head = log_head(&app).await;
    #[rustfmt::skip]
    let cases = vec![
        refused("2 more, 1 left", batch(2), 429, "publish_rate_limited"),
        passes("another publisher", post("/v1/publish", r#"{"channel":"logs:a"}"#).bearer(PUBLISHER_KEY), 200),
    ];
    run(&app, cases).await;
    let after = log_head(&app).await;
    assert_ne!(after, head, "the other publisher's event is in");
    let res = send(
        &app,
        get(&format!(
            "/v1/poll?channel=logs:a&last_event_id={head}&timeout_ms=0"
        ))
        .bearer(&admin()),
    )
    .await;
    let body = json_body(res).await;
    assert_eq!(
        body["events"].as_array().map(Vec::len),
        Some(1),
        "only the other publisher's event after the refusal: {body}"
    );
}

/// A forward-auth app on 127.0.0.1:0 in this process: the session cookie `sid` says what
/// it answers (`forbid` 403, `broken` 500, `garbage` 200 with no JSON, `u9` a session of
/// u9 granted `logs:**`, anything else 401).
async fn forward_auth_app() -> String {
    async fn answer(headers: HeaderMap) -> Response {
        let cookie = headers
            .get(header::COOKIE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if cookie.contains("sid=forbid") {
            StatusCode::FORBIDDEN.into_response()
        } else if cookie.contains("sid=broken") {
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        } else if cookie.contains("sid=garbage") {
            (StatusCode::OK, "not json").into_response()
        } else if cookie.contains("sid=u9") {
            Json(json!({"user": "u9", "subscribe": ["logs:**"], "publish": ["logs:**"]}))
                .into_response()
        } else {
            StatusCode::UNAUTHORIZED.into_response()
        }
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/session", listener.local_addr().unwrap());
    let app = Router::new().route("/session", route_get(answer));
    tokio::spawn(async move { axum::serve(listener, app).await });
    url
}

/// Forward-auth's rows: `401 invalid_token` when the app refuses the session, `403
/// forbidden` when it answers 403, `503 auth_unavailable` (`Retry-After`) when it fails,
/// answers nonsense or cannot be reached.
#[tokio::test]
async fn forward_auth_refusals() {
    let url = forward_auth_app().await;
    let app = app(config(&format!("auth.forward_url = {url:?}"))).await;
    let sid = |r: Req, s: &str| r.header("cookie", format!("sid={s}"));
    let stream = || get("/v1/stream?channel=logs:a");
    let publish = || post("/v1/publish", r#"{"channel":"logs:a"}"#).header("origin", SAME_ORIGIN);
    #[rustfmt::skip]
    let cases = vec![
        refused("session refused", sid(stream(), "nobody"), 401, "invalid_token"),
        refused("403 from the app", sid(stream(), "forbid"), 403, "forbidden"),
        refused("403 from the app", sid(head("/v1/stream?channel=logs:a"), "forbid"), 403, "forbidden"),
        refused("403 from the app", sid(get("/v1/poll?channel=logs:a&timeout_ms=0"), "forbid"), 403, "forbidden"),
        refused("403 from the app", sid(publish(), "forbid"), 403, "forbidden"),
        refused("500 from the app", sid(stream(), "broken"), 503, "auth_unavailable"),
        refused("500 from the app", sid(publish(), "broken"), 503, "auth_unavailable"),
        refused("500 from the app", sid(get("/v1/status"), "broken"), 503, "auth_unavailable"),
        refused("not JSON from the app", sid(stream(), "garbage"), 503, "auth_unavailable"),
        refused("session's grants", sid(get("/v1/stream?channel=secret:x"), "u9"), 403, "forbidden_channel"),
        refused("session's grants", sid(publish(), "u9").body(r#"{"channel":"secret:x"}"#), 403, "forbidden_channel"),
        refused("session without admin", sid(get("/v1/status"), "u9"), 403, "admin_required"),
        refused("nothing to forward", stream(), 401, "missing_credentials"),
        passes("a session of u9", sid(head("/v1/stream?channel=logs:a"), "u9"), 200),
    ];
    run(&app, cases).await;

    // Nothing listens on port 1: the connection is refused at once.
    let app = self::app(config(r#"auth.forward_url = "http://127.0.0.1:1/session""#)).await;
    #[rustfmt::skip]
    let cases = vec![
        refused("app unreachable", sid(stream(), "any"), 503, "auth_unavailable"),
        passes("not ready while unreachable", get("/readyz"), 503),
    ];
    run(&app, cases).await;
}

/// What the router once did differently from docs/api.md, found by these tests and fixed:
///
/// - the subscription change, the broadcast and each published event are JSON objects, but
///   serde's derived structs also took the positional array form (`[]` and `[["logs:b"]]`
///   changed a subscription, `["maintenance"]` was broadcast,
///   `[["logs:a",null,null,null,null,null]]` appended);
/// - `HEAD /v1/stream` answered `200` where `GET` answers `400 invalid_session_id`;
/// - a known path with another method was `405` with an empty body; now
///   `405 method_not_allowed` in the error shape.
#[tokio::test]
async fn former_contract_deviations() {
    let app = app(config("")).await;
    let u = user();
    let _mine = open_stream(&app, get("/v1/stream?channel=logs:a").bearer(&u)).await;
    let [(id, _)] = &connections(&app, "u1").await[..] else {
        panic!("one connection of u1")
    };
    let path = format!("/v1/connections/{id}/subscriptions");
    #[rustfmt::skip]
    let cases = vec![
        refused("an array is not the object", post(&path, "[]").bearer(&u), 400, "invalid_json"),
        refused("an array is not the object", post(&path, r#"[["logs:b"]]"#).bearer(&u), 400, "invalid_json"),
        refused("an array is not the object", post("/v1/broadcast", r#"["maintenance"]"#).bearer(&admin()), 400, "invalid_json"),
        refused("an array is not an event", post("/v1/publish", r#"[["logs:a",null,null,null,null,null]]"#).bearer(&publisher()), 400, "invalid_json"),
        refused("HEAD checks session_id as GET does", head(&format!("/v1/stream?channel=logs:a&session_id={}", "s".repeat(129))).bearer(&u), 400, "invalid_session_id"),
        refused("405 has the error shape", post("/healthz", "{}"), 405, "method_not_allowed"),
        refused("405 has the error shape", post("/v1/stream?channel=logs:a", "{}").bearer(&u), 405, "method_not_allowed"),
        refused("405 has the error shape", get("/v1/publish").bearer(&u), 405, "method_not_allowed"),
    ];
    run(&app, cases).await;
}
