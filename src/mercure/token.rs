//! Mercure access tokens: where a request presents one, and what it grants.
//!
//! Two generations of the protocol are read:
//!
//! - draft-07 ([`Generation::V7`], what Symfony, API Platform and most clients send): a JWT
//!   (`typ` `JWT` or absent) whose `mercure` claim lists topic selectors under `publish` and
//!   `subscribe`, with a `payload` attached to every subscribe grant. `exp` and `sub` are
//!   optional; a token without a `mercure` claim is valid and grants nothing.
//! - draft-08 ([`Generation::V8`]): an RFC 9068 access token (`typ` `at+jwt`) whose
//!   `authorization_details` (RFC 9396) of type `mercure` grant actions on topic matchers;
//!   `exp` is required. One malformed `mercure` detail, or one over the limits, makes the
//!   whole token invalid: partial acceptance would silently change what the token grants.
//!
//! The generation is the header's `typ`: `at+jwt` is V8 and only `authorization_details` is
//! read; otherwise V7 and only `mercure` is read.
//!
//! Verification is [`crate::auth::jwt::JwtVerifier`]'s, one per role: strict reading
//! (a member named twice or any `crit` header refuse the token), per-key algorithm
//! allow-lists (so `none` and algorithm confusion never verify), `exp`/`nbf` with leeway and
//! `iss`/`aud` when configured. The role alone chooses the keys, never the token (a JWKS key
//! is chosen by `kid` among the keys trusted for both roles).
//!
//! Errors keep the precise reason for the logs; clients see [`TokenError::public_message`]
//! and the RFC 6750 challenge ([`TokenError::www_authenticate`]), which never say which check
//! failed.

use std::sync::Arc;
use std::time::Duration;

use axum::http::{header, HeaderMap, StatusCode};
use jsonwebtoken::{Algorithm, DecodingKey};
use serde_json::{Map, Value};

use super::config::MercureConfig;
use super::matcher::{Matcher, MatcherType};
use crate::auth::jwks::Jwks;
use crate::auth::jwt::{allow_list, pem_key, JwtVerifier};
use crate::auth::keys::{Key, KeyKind};
use crate::auth::AuthError;

/// Which key verifies the token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Publisher,
    Subscriber,
}

impl Role {
    fn possessive(self) -> &'static str {
        match self {
            Role::Publisher => "publishers'",
            Role::Subscriber => "subscribers'",
        }
    }
}

/// Which generation of the protocol the token is of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Generation {
    /// draft-dunglas-mercure-07 and the hubs up to 0.x: the `mercure` claim.
    V7,
    /// draft-dunglas-mercure-08: an RFC 9068 access token (`typ: at+jwt`) with
    /// `authorization_details`.
    V8,
}

/// What a token grants on the topics one matcher takes.
#[derive(Debug, Clone)]
pub struct Grant {
    pub matcher: Matcher,
    /// Data attached to subscriptions this grant covers (subscription API and events).
    pub payload: Option<Value>,
}

/// A verified token.
#[derive(Debug, Clone)]
pub struct Claims {
    pub generation: Generation,
    pub sub: Option<String>,
    /// Unix seconds.
    pub exp: Option<u64>,
    pub publish: Vec<Matcher>,
    /// In the token's order: [`Claims::payload_for`] takes the first match.
    pub subscribe: Vec<Grant>,
}

impl Claims {
    /// Whether the token grants publishing an update of `topic`.
    pub fn may_publish(&self, topic: &str) -> bool {
        self.publish.iter().any(|m| m.matches(topic))
    }

    /// Whether the token grants receiving private updates of `topic`.
    pub fn may_subscribe(&self, topic: &str) -> bool {
        self.subscribe.iter().any(|g| g.matcher.matches(topic))
    }

    /// The payload of the first subscribe grant matching the subscription's own matcher
    /// text (read as a topic).
    pub fn payload_for(&self, matcher_text: &str) -> Option<&Value> {
        self.subscribe
            .iter()
            .find(|g| g.matcher.matches(matcher_text))
            .and_then(|g| g.payload.as_ref())
    }
}

/// Where the token came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    Header,
    Query,
    Cookie,
}

/// Why a token was not accepted (RFC 6750 §3).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// No token, and the operation needs one: `401`, `WWW-Authenticate: Bearer`.
    #[error("this operation needs a Mercure token")]
    Missing,
    /// `401`, `error="invalid_token"`. The text says which check failed: for the logs only.
    #[error("invalid token: {0}")]
    Invalid(String),
    /// `400`, `error="invalid_request"`. The text is about the request and may be shown.
    #[error("{0}")]
    Malformed(String),
}

impl TokenError {
    /// What the client may be told: never which validation check failed (RFC 6750 and the
    /// Mercure specification: `invalid_token` for every failure discloses nothing).
    pub fn public_message(&self) -> &str {
        match self {
            TokenError::Missing => "this operation needs a Mercure access token",
            TokenError::Invalid(_) => "the access token is invalid or has expired",
            TokenError::Malformed(m) => m,
        }
    }

    /// The HTTP status: `401` for a missing or invalid token, `400` for a malformed request.
    pub fn status(&self) -> StatusCode {
        match self {
            TokenError::Missing | TokenError::Invalid(_) => StatusCode::UNAUTHORIZED,
            TokenError::Malformed(_) => StatusCode::BAD_REQUEST,
        }
    }

    /// The `WWW-Authenticate` challenge (RFC 6750 §3): no error code when no token was
    /// presented.
    pub fn www_authenticate(&self) -> String {
        match self {
            TokenError::Missing => r#"Bearer realm="mercure""#.to_owned(),
            TokenError::Invalid(_) => r#"Bearer realm="mercure", error="invalid_token""#.to_owned(),
            TokenError::Malformed(_) => {
                r#"Bearer realm="mercure", error="invalid_request""#.to_owned()
            }
        }
    }
}

/// The `WWW-Authenticate` challenge of a `403`: a valid token that does not grant the
/// operation.
pub fn insufficient_scope_challenge() -> &'static str {
    r#"Bearer realm="mercure", error="insufficient_scope""#
}

/// The cookie name the newer protocol recommends, read after the configured one.
const DEFAULT_COOKIE: &str = "mercureAccessToken";

/// The token a request presents, by precedence: the `Authorization` header, then the query
/// parameter (`authorization`, the older protocol's name, or `access_token`), then the
/// cookie (`cfg.cookie_name`, then `mercureAccessToken`). The source chosen is the only one
/// read: a token there is used and the others are ignored, even if malformed.
pub fn presented(
    headers: &HeaderMap,
    query: &[(String, String)],
    cfg: &MercureConfig,
) -> Result<Option<(String, Via)>, TokenError> {
    let mut auth = headers.get_all(header::AUTHORIZATION).iter();
    if let Some(value) = auth.next() {
        if auth.next().is_some() {
            return Err(TokenError::Malformed(
                "the request has more than one Authorization header".into(),
            ));
        }
        return bearer(value.as_bytes()).map(|t| Some((t, Via::Header)));
    }

    let mut in_url = query
        .iter()
        .filter(|(name, _)| name == "authorization" || name == "access_token");
    if let Some((name, value)) = in_url.next() {
        if !cfg.allow_query_token {
            return Err(TokenError::Malformed(format!(
                "tokens in URLs (`{name}=`) are disabled on this hub; send the token in the \
                 Authorization header or in a cookie"
            )));
        }
        if in_url.next().is_some() {
            return Err(TokenError::Malformed(
                "the URL carries more than one token (`authorization=`, `access_token=`)".into(),
            ));
        }
        if !is_token_text(value) {
            return Err(TokenError::Malformed(format!(
                "the `{name}` query parameter must be a token (empty, or with spaces)"
            )));
        }
        return Ok(Some((value.clone(), Via::Query)));
    }

    for name in [cfg.cookie_name.as_str(), DEFAULT_COOKIE] {
        if let Some(value) = cookie(headers, name) {
            return Ok(Some((value, Via::Cookie)));
        }
    }
    Ok(None)
}

/// The token of an `Authorization: Bearer <token>` header (the scheme is case-insensitive,
/// RFC 9110 §11.1).
fn bearer(value: &[u8]) -> Result<String, TokenError> {
    let bad = || {
        TokenError::Malformed(
            "the Authorization header must be `Bearer ` followed by the token".into(),
        )
    };
    let value = std::str::from_utf8(value).map_err(|_| bad())?;
    let (scheme, token) = value.trim().split_once(' ').ok_or_else(bad)?;
    let token = token.trim_start_matches(' ');
    if !scheme.eq_ignore_ascii_case("bearer") || !is_token_text(token) {
        return Err(bad());
    }
    Ok(token.to_owned())
}

/// Non-empty visible ASCII without spaces: what a compact JWS is made of (a looser check
/// than RFC 6750's `b64token`, the JWT reader does the rest).
fn is_token_text(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_graphic())
}

/// The first non-empty value of the cookie `name` in the request's `Cookie` headers (a
/// browser may send several; pairs are separated by `;`, values may be quoted, RFC 6265
/// §4.2.1). Headers that are not text are skipped; an empty value (a cookie cleared at
/// logout) counts as absent.
fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|h| h.to_str().ok())
        .flat_map(|h| h.split(';'))
        .filter_map(|pair| pair.split_once('='))
        .filter(|(n, _)| n.trim() == name)
        .map(|(_, v)| {
            let v = v.trim();
            v.strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .unwrap_or(v)
        })
        .find(|v| !v.is_empty())
        .map(str::to_owned)
}

/// Verifies tokens with the configured keys.
pub struct Verifier {
    /// Publishers' keys: their HMAC secret, PEM key and the JWKS.
    publisher: JwtVerifier,
    /// Subscribers' keys, kept apart so that one role's key never verifies the other's token.
    subscriber: JwtVerifier,
    /// Shared by both roles; kept to be refreshed at startup.
    jwks: Option<Arc<Jwks>>,
    max_matchers: usize,
    max_topic_bytes: usize,
}

/// How long JWKS keys are trusted before a refetch, and the least time between two fetches
/// (the `[auth]` defaults: `MercureConfig` has no setting of its own).
const JWKS_CACHE: Duration = Duration::from_secs(300);
const JWKS_MIN_REFRESH: Duration = Duration::from_secs(10);

impl Verifier {
    /// Builds the verifier; errors name the bad setting. A JWKS document, if configured, is
    /// fetched with a client of its own; see [`Self::with_http`] to share one.
    pub fn new(cfg: &MercureConfig) -> Result<Self, String> {
        let http = reqwest::Client::builder()
            .build()
            .map_err(|e| format!("mercure: cannot build the HTTP client of the JWKS: {e}"))?;
        Self::with_http(cfg, http, Default::default())
    }

    /// [`Self::new`] with the HTTP client fetching the JWKS document and the counter of its
    /// fetches.
    pub fn with_http(
        cfg: &MercureConfig,
        http: reqwest::Client,
        jwks_fetches: prometheus_client::metrics::counter::Counter,
    ) -> Result<Self, String> {
        let jwks = match &cfg.jwks_url {
            Some(url) => {
                let allowed = cfg
                    .jwks_algorithms
                    .iter()
                    .map(|n| asymmetric("mercure.jwks_algorithms", n))
                    .collect::<Result<Vec<_>, _>>()?;
                Some(Arc::new(Jwks::new(
                    url.clone(),
                    http,
                    JWKS_CACHE,
                    JWKS_MIN_REFRESH,
                    allowed,
                    jwks_fetches,
                )))
            }
            None => None,
        };
        let hmac = allow_list("mercure.jwt_algorithms", &cfg.jwt_algorithms, KeyKind::Hmac)?;
        let role = |secret_setting: &str,
                    secret: Option<&String>,
                    key_setting: &str,
                    key_file: Option<&std::path::PathBuf>|
         -> Result<JwtVerifier, String> {
            let mut keys = Vec::new();
            if let Some(secret) = secret {
                if secret.is_empty() {
                    return Err(format!("{secret_setting} is empty"));
                }
                keys.push(Key {
                    decoding: DecodingKey::from_secret(secret.as_bytes()),
                    algorithms: hmac.clone(),
                    kid: None,
                });
            }
            if let Some(path) = key_file {
                let pem = std::fs::read(path)
                    .map_err(|e| format!("{key_setting}: cannot read {}: {e}", path.display()))?;
                let (kind, decoding) = pem_key(&pem).map_err(|e| format!("{key_setting}: {e}"))?;
                keys.push(Key {
                    decoding,
                    algorithms: public_key_algorithms(&cfg.public_key_algorithms, kind)?,
                    kid: None,
                });
            }
            Ok(JwtVerifier::with_keys(
                keys,
                jwks.clone(),
                cfg.leeway_s,
                cfg.issuer.clone(),
                cfg.audience.clone(),
                // `exp` is required of V8 tokens only, checked below.
                &[],
            ))
        };
        let (publisher_secret_setting, publisher_secret) = match &cfg.publisher_jwt_secret {
            Some(s) => ("mercure.publisher_jwt_secret", Some(s)),
            None => ("mercure.jwt_secret", cfg.jwt_secret.as_ref()),
        };
        let (subscriber_secret_setting, subscriber_secret) = match &cfg.subscriber_jwt_secret {
            Some(s) => ("mercure.subscriber_jwt_secret", Some(s)),
            None => ("mercure.jwt_secret", cfg.jwt_secret.as_ref()),
        };
        Ok(Self {
            publisher: role(
                publisher_secret_setting,
                publisher_secret,
                "mercure.publisher_public_key_file",
                cfg.publisher_public_key_file.as_ref(),
            )?,
            subscriber: role(
                subscriber_secret_setting,
                subscriber_secret,
                "mercure.subscriber_public_key_file",
                cfg.subscriber_public_key_file.as_ref(),
            )?,
            jwks,
            max_matchers: cfg.max_matchers,
            max_topic_bytes: cfg.max_topic_bytes,
        })
    }

    /// The JWKS document both roles trust, if configured (to load it at startup).
    pub fn jwks(&self) -> Option<&Arc<Jwks>> {
        self.jwks.as_ref()
    }

    /// Whether `role` has any key; without one every token of that role is invalid.
    pub fn has_keys(&self, role: Role) -> bool {
        self.jwt(role).has_keys()
    }

    fn jwt(&self, role: Role) -> &JwtVerifier {
        match role {
            Role::Publisher => &self.publisher,
            Role::Subscriber => &self.subscriber,
        }
    }

    /// Verifies `token` with `role`'s keys; `base` is the hub's URL (for relative URL
    /// patterns in the grants).
    pub async fn verify(&self, token: &str, role: Role, base: &str) -> Result<Claims, TokenError> {
        let jwt = self.jwt(role);
        if !jwt.has_keys() {
            return Err(TokenError::Invalid(format!(
                "no key is configured for {} tokens",
                role.possessive()
            )));
        }
        let claims = jwt.verify(token).await.map_err(invalid)?;
        // Read strictly by `verify` already (no member named twice), so this is the header
        // that was checked.
        let header = jsonwebtoken::decode_header(token)
            .map_err(|_| TokenError::Invalid("malformed token".into()))?;
        let generation = generation(header.typ.as_deref())?;
        let limits = Limits {
            matchers: self.max_matchers,
            topic_bytes: self.max_topic_bytes,
            base,
        };
        let (publish, subscribe) = match generation {
            Generation::V7 => v7_grants(&claims, &limits)?,
            Generation::V8 => {
                if !claims.contains_key("exp") {
                    return Err(TokenError::Invalid(
                        "an access token (`typ: at+jwt`) must carry `exp`".into(),
                    ));
                }
                v8_grants(&claims, &limits)?
            }
        };
        Ok(Claims {
            generation,
            sub: claims.get("sub").and_then(Value::as_str).map(str::to_owned),
            // `read_token` checked it is a non-negative number; a fraction is dropped, so the
            // connection closes no later than the token expires.
            exp: claims
                .get("exp")
                .and_then(|v| v.as_u64().or_else(|| v.as_f64().map(|f| f as u64))),
            publish,
            subscribe,
        })
    }
}

fn invalid(e: AuthError) -> TokenError {
    TokenError::Invalid(match e {
        AuthError::Invalid(m) => m,
        e => e.to_string(),
    })
}

/// An asymmetric algorithm name from the configuration.
fn asymmetric(setting: &str, name: &str) -> Result<Algorithm, String> {
    name.parse::<Algorithm>()
        .ok()
        .filter(|a| !KeyKind::Hmac.algorithms().contains(a))
        .ok_or_else(|| format!("{setting}: {name:?} is not an asymmetric algorithm"))
}

/// The allow-list of a PEM key: `public_key_algorithms` serves both roles' keys, which may be
/// of different kinds, so each key takes the names of its own kind (empty: all of them).
fn public_key_algorithms(names: &[String], kind: KeyKind) -> Result<Vec<Algorithm>, String> {
    const SETTING: &str = "mercure.public_key_algorithms";
    let possible = kind.algorithms();
    if names.is_empty() {
        return Ok(possible);
    }
    let mut algorithms = Vec::new();
    for name in names {
        let alg = asymmetric(SETTING, name)?;
        if possible.contains(&alg) {
            algorithms.push(alg);
        }
    }
    if algorithms.is_empty() {
        return Err(format!(
            "{SETTING}: none of {names:?} can be used with a {kind:?} key (possible: {possible:?})"
        ));
    }
    Ok(algorithms)
}

/// The generation a header's `typ` names (RFC 7515 §4.1.9: a media type, case-insensitive,
/// `application/` optional). Other explicit types (an ID token's, a logout token's…) are
/// refused: a token issued for another purpose must not authorize anything here.
fn generation(typ: Option<&str>) -> Result<Generation, TokenError> {
    let Some(typ) = typ else {
        return Ok(Generation::V7);
    };
    let media = match typ.get(..12) {
        Some(p) if p.eq_ignore_ascii_case("application/") => &typ[12..],
        _ => typ,
    };
    if media.eq_ignore_ascii_case("at+jwt") {
        Ok(Generation::V8)
    } else if media.eq_ignore_ascii_case("jwt") {
        Ok(Generation::V7)
    } else {
        Err(TokenError::Invalid(format!(
            "the token's type (`typ`) is {typ:?}; a Mercure token is `at+jwt` or `JWT`"
        )))
    }
}

/// The bounds on what one token may list.
struct Limits<'a> {
    matchers: usize,
    topic_bytes: usize,
    base: &'a str,
}

impl Limits<'_> {
    fn matcher(&self, kind: MatcherType, text: &str, at: &str) -> Result<Matcher, TokenError> {
        if text.len() > self.topic_bytes {
            return Err(TokenError::Invalid(format!(
                "{at} is longer than {} bytes",
                self.topic_bytes
            )));
        }
        Matcher::new(kind, text, self.base)
            .map_err(|e| TokenError::Invalid(format!("{at} ({text:?}): {e}")))
    }
}

/// The `mercure` claim of a draft-07 token.
fn v7_grants(
    claims: &Map<String, Value>,
    limits: &Limits,
) -> Result<(Vec<Matcher>, Vec<Grant>), TokenError> {
    let mercure = match claims.get("mercure") {
        None | Some(Value::Null) => return Ok((Vec::new(), Vec::new())),
        Some(Value::Object(m)) => m,
        Some(_) => {
            return Err(TokenError::Invalid(
                "the `mercure` claim must be a JSON object".into(),
            ))
        }
    };
    let selectors = |name: &str| -> Result<Vec<Matcher>, TokenError> {
        let list = match mercure.get(name) {
            None | Some(Value::Null) => return Ok(Vec::new()),
            Some(Value::Array(list)) => list,
            Some(_) => {
                return Err(TokenError::Invalid(format!(
                    "`mercure.{name}` must be a list of topic selectors"
                )))
            }
        };
        if list.len() > limits.matchers {
            return Err(TokenError::Invalid(format!(
                "`mercure.{name}` lists more than {} topic selectors",
                limits.matchers
            )));
        }
        list.iter()
            .enumerate()
            .map(|(i, s)| {
                let at = format!("`mercure.{name}[{i}]`");
                let s = s.as_str().ok_or_else(|| {
                    TokenError::Invalid(format!("{at} must be a string (a topic selector)"))
                })?;
                limits.matcher(MatcherType::Selector, s, &at)
            })
            .collect()
    };
    let publish = selectors("publish")?;
    let payload = mercure.get("payload").filter(|p| !p.is_null());
    let subscribe = selectors("subscribe")?
        .into_iter()
        .map(|matcher| Grant {
            matcher,
            payload: payload.cloned(),
        })
        .collect();
    Ok((publish, subscribe))
}

/// The authorization detail type of the Mercure protocol, and its earlier spelling.
const DETAIL_TYPES: [&str; 2] = ["mercure", "https://mercure.rocks/authorization-detail"];

/// The `mercure` entries of a draft-08 token's `authorization_details`; any malformed one
/// refuses the token.
fn v8_grants(
    claims: &Map<String, Value>,
    limits: &Limits,
) -> Result<(Vec<Matcher>, Vec<Grant>), TokenError> {
    let bad = |m: String| Err(TokenError::Invalid(m));
    let details = match claims.get("authorization_details") {
        None => return Ok((Vec::new(), Vec::new())),
        Some(Value::Array(details)) => details,
        Some(_) => return bad("`authorization_details` must be a list".into()),
    };
    let (mut publish, mut subscribe) = (Vec::new(), Vec::new());
    let mut count = 0;
    for (i, detail) in details.iter().enumerate() {
        let at = format!("`authorization_details[{i}]`");
        let Value::Object(detail) = detail else {
            return bad(format!("{at} is not a JSON object"));
        };
        let Some(kind) = detail.get("type").and_then(Value::as_str) else {
            return bad(format!("{at} has no `type` string (RFC 9396)"));
        };
        if !DETAIL_TYPES.contains(&kind) {
            continue;
        }
        count += 1;
        if count > limits.matchers {
            return bad(format!(
                "the token carries more than {} mercure authorization details",
                limits.matchers
            ));
        }

        let (mut may_publish, mut may_subscribe) = (false, false);
        match detail.get("actions") {
            Some(Value::Array(actions)) if !actions.is_empty() => {
                for action in actions {
                    match action.as_str() {
                        Some("publish") => may_publish = true,
                        Some("subscribe") => may_subscribe = true,
                        _ => {
                            return bad(format!(
                                "{at}.actions has {action}; the actions are \"publish\" and \
                                 \"subscribe\""
                            ))
                        }
                    }
                }
            }
            _ => {
                return bad(format!(
                    "{at}.actions must be a non-empty list of \"publish\" and \"subscribe\""
                ))
            }
        }

        let topics = match detail.get("topics") {
            Some(Value::Array(topics)) if !topics.is_empty() => topics,
            _ => return bad(format!("{at}.topics must be a non-empty list")),
        };
        if topics.len() > limits.matchers {
            return bad(format!(
                "{at}.topics lists more than {} topic matchers",
                limits.matchers
            ));
        }
        let matchers = topics
            .iter()
            .enumerate()
            .map(|(j, topic)| topic_matcher(topic, &format!("{at}.topics[{j}]"), limits))
            .collect::<Result<Vec<_>, _>>()?;

        let payload = match detail.get("payload") {
            None => None,
            Some(p @ Value::Object(_)) => Some(p),
            Some(_) => return bad(format!("{at}.payload must be a JSON object")),
        };

        if may_publish {
            publish.extend(matchers.iter().cloned());
        }
        if may_subscribe {
            subscribe.extend(matchers.into_iter().map(|matcher| Grant {
                matcher,
                payload: payload.cloned(),
            }));
        }
    }
    Ok((publish, subscribe))
}

/// One `{match, matchType?}` object of a detail's `topics`.
fn topic_matcher(topic: &Value, at: &str, limits: &Limits) -> Result<Matcher, TokenError> {
    let bad = |m: String| TokenError::Invalid(m);
    let Value::Object(topic) = topic else {
        return Err(bad(format!(
            "{at} must be a JSON object with a `match` string"
        )));
    };
    let text = topic
        .get("match")
        .and_then(Value::as_str)
        .ok_or_else(|| bad(format!("{at} must have a `match` string")))?;
    let kind = match topic.get("matchType") {
        None => MatcherType::Exact,
        Some(Value::String(t)) if t == "Exact" => MatcherType::Exact,
        Some(Value::String(t)) if t == "URLPattern" => MatcherType::UrlPattern,
        Some(other) => {
            return Err(bad(format!(
                "{at}.matchType is {other}; the types are \"Exact\" and \"URLPattern\""
            )))
        }
    };
    limits.matcher(kind, text, &format!("{at}.match"))
}

#[cfg(test)]
mod tests {
    use super::*;

    use axum::http::HeaderValue;
    use jsonwebtoken::{encode, EncodingKey, Header};
    use serde_json::json;

    const SECRET: &str = "a-secret-of-both-roles";
    const BASE: &str = "https://hub.example.com/.well-known/mercure";

    /// An EC P-256 key pair made for these tests (`openssl genpkey -algorithm EC`).
    const EC_PRIVATE: &str = "-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgc15CpWq+RTT2hHh9
uBlgEaaDna9L5eQpgzfzIx/rMu2hRANCAATaI/ZyligR/Fp2eY8nZRmsNwooSVie
qE6CtSqSMOQOLao+nLdtrpR9Q5zryuSHObwiTfZvBdFUxTiJTrlZNag6
-----END PRIVATE KEY-----
";
    const EC_PUBLIC: &str = "-----BEGIN PUBLIC KEY-----
MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE2iP2cpYoEfxadnmPJ2UZrDcKKElY
nqhOgrUqkjDkDi2qPpy3ba6UfUOc68rkhzm8Ik32bwXRVMU4iU65WTWoOg==
-----END PUBLIC KEY-----
";
    /// The public key above as a JWK's coordinates.
    const EC_X: &str = "2iP2cpYoEfxadnmPJ2UZrDcKKElYnqhOgrUqkjDkDi0";
    const EC_Y: &str = "qj6ct22ulH1DnOvK5Ic5vCJN9m8F0VTFOIlOuVk1qDo";
    /// Another P-256 key, trusted by nobody.
    const EC_OTHER_PRIVATE: &str = "-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgVBYtyJulIamULw38
Xi3CVjRplLgQdKvrkxE4gNKDAmmhRANCAASUF5ZJMx2C2BY6pOm1pvEzexdgSLPD
KN28HCaIXFHYZw0j1Hf0Zboc9N1jz4PjHC5emXJWxmHVS+hJUc17PGSh
-----END PRIVATE KEY-----
";

    fn now() -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
    }

    fn cfg() -> MercureConfig {
        MercureConfig {
            jwt_secret: Some(SECRET.into()),
            ..MercureConfig::default()
        }
    }

    fn hs(typ: Option<&str>, claims: &Value, secret: &str) -> String {
        let mut header = Header::new(Algorithm::HS256);
        header.typ = typ.map(str::to_owned);
        encode(
            &header,
            claims,
            &EncodingKey::from_secret(secret.as_bytes()),
        )
        .unwrap()
    }

    /// A draft-07 token (`typ: JWT`) signed with [`SECRET`].
    fn v7(claims: Value) -> String {
        hs(Some("JWT"), &claims, SECRET)
    }

    /// A draft-08 token (`typ: at+jwt`) signed with [`SECRET`]; `exp` is added if missing.
    fn v8(mut claims: Value) -> String {
        if claims.get("exp").is_none() {
            claims["exp"] = json!(now() + 600);
        }
        hs(Some("at+jwt"), &claims, SECRET)
    }

    fn detail(actions: Value, topics: Value) -> Value {
        json!({"type": "mercure", "actions": actions, "topics": topics})
    }

    async fn verify_with(cfg: &MercureConfig, token: &str, role: Role) -> Result<Claims, String> {
        Verifier::new(cfg)
            .unwrap()
            .verify(token, role, BASE)
            .await
            .map_err(|e| match e {
                TokenError::Invalid(m) => m,
                e => panic!("not an invalid-token error: {e:?}"),
            })
    }

    async fn verify(token: &str) -> Result<Claims, String> {
        verify_with(&cfg(), token, Role::Subscriber).await
    }

    fn texts(matchers: &[Matcher]) -> Vec<&str> {
        matchers.iter().map(Matcher::text).collect()
    }

    fn grant_texts(grants: &[Grant]) -> Vec<&str> {
        grants.iter().map(|g| g.matcher.text()).collect()
    }

    #[tokio::test]
    async fn a_v7_token_needs_neither_exp_nor_sub() {
        let token = hs(
            None,
            &json!({"mercure": {"publish": ["*"], "subscribe": ["https://example.com/a"]}}),
            SECRET,
        );
        let c = verify(&token).await.unwrap();
        assert_eq!(c.generation, Generation::V7);
        assert_eq!((c.sub, c.exp), (None, None));
        assert_eq!(texts(&c.publish), ["*"]);
        assert_eq!(c.publish[0].kind(), MatcherType::Selector);
        assert_eq!(grant_texts(&c.subscribe), ["https://example.com/a"]);
        assert!(c.subscribe[0].payload.is_none());
    }

    #[tokio::test]
    async fn a_v7_token_with_exp_sub_and_payload() {
        let exp = now() + 60;
        let c = verify(&v7(json!({
            "sub": "user-1",
            "exp": exp,
            "mercure": {
                "subscribe": ["https://example.com/a", "https://example.com/b/{id}"],
                "payload": {"user": "https://example.com/users/1"},
            },
        })))
        .await
        .unwrap();
        assert_eq!(c.sub.as_deref(), Some("user-1"));
        assert_eq!(c.exp, Some(exp));
        assert!(c.publish.is_empty());
        assert_eq!(c.subscribe.len(), 2);
        for g in &c.subscribe {
            assert_eq!(g.matcher.kind(), MatcherType::Selector);
            assert_eq!(
                g.payload,
                Some(json!({"user": "https://example.com/users/1"}))
            );
        }
        assert_eq!(
            c.payload_for("https://example.com/a"),
            Some(&json!({"user": "https://example.com/users/1"}))
        );
        assert!(c.may_subscribe("https://example.com/a"));
        assert!(!c.may_publish("https://example.com/a"));
    }

    #[tokio::test]
    async fn a_v7_token_without_mercure_claim_grants_nothing() {
        for claims in [json!({"sub": "u"}), json!({"mercure": null})] {
            let c = verify(&v7(claims)).await.unwrap();
            assert!(c.publish.is_empty() && c.subscribe.is_empty());
        }
    }

    #[tokio::test]
    async fn a_malformed_mercure_claim_is_refused() {
        for (claims, fragment) in [
            (json!({"mercure": ["*"]}), "must be a JSON object"),
            (
                json!({"mercure": {"publish": "*"}}),
                "`mercure.publish` must be a list",
            ),
            (
                json!({"mercure": {"subscribe": ["a", 1]}}),
                "`mercure.subscribe[1]`",
            ),
        ] {
            let e = verify(&v7(claims.clone())).await.unwrap_err();
            assert!(e.contains(fragment), "{claims}: {e}");
        }
    }

    #[tokio::test]
    async fn times_are_enforced_with_leeway() {
        let past = now() - 3600;
        assert!(verify(&v7(json!({"exp": past})))
            .await
            .unwrap_err()
            .contains("expired"));
        assert!(verify(&v8(json!({"exp": past})))
            .await
            .unwrap_err()
            .contains("expired"));
        assert!(verify(&v7(json!({"nbf": now() + 3600})))
            .await
            .unwrap_err()
            .contains("not valid yet"));
        // Within the leeway (5 s by default).
        verify(&v7(json!({"exp": now() - 1}))).await.unwrap();
    }

    #[tokio::test]
    async fn a_token_of_another_key_is_refused() {
        let token = hs(
            Some("JWT"),
            &json!({"mercure": {"publish": ["*"]}}),
            "other",
        );
        let e = verify_with(&cfg(), &token, Role::Publisher)
            .await
            .unwrap_err();
        assert!(e.contains("signature"), "{e}");
    }

    #[tokio::test]
    async fn each_role_has_its_keys() {
        let cfg = MercureConfig {
            jwt_secret: Some(SECRET.into()),
            publisher_jwt_secret: Some("publishers".into()),
            ..MercureConfig::default()
        };
        let subscriber_token = v7(json!({"mercure": {"publish": ["*"]}}));
        verify_with(&cfg, &subscriber_token, Role::Subscriber)
            .await
            .unwrap();
        verify_with(&cfg, &subscriber_token, Role::Publisher)
            .await
            .unwrap_err();
        let publisher_token = hs(None, &json!({"mercure": {"publish": ["*"]}}), "publishers");
        verify_with(&cfg, &publisher_token, Role::Publisher)
            .await
            .unwrap();
        verify_with(&cfg, &publisher_token, Role::Subscriber)
            .await
            .unwrap_err();

        let cfg = MercureConfig {
            subscriber_jwt_secret: Some("subscribers".into()),
            ..MercureConfig::default()
        };
        let e = verify_with(&cfg, &publisher_token, Role::Publisher)
            .await
            .unwrap_err();
        assert_eq!(e, "no key is configured for publishers' tokens");
        assert!(!Verifier::new(&cfg).unwrap().has_keys(Role::Publisher));
    }

    #[tokio::test]
    async fn alg_none_and_algorithms_off_the_list_are_refused() {
        use base64::engine::general_purpose::URL_SAFE_NO_PAD;
        use base64::Engine;
        let none = format!(
            "{}.{}.",
            URL_SAFE_NO_PAD.encode(r#"{"alg":"none","typ":"JWT"}"#),
            URL_SAFE_NO_PAD.encode(r#"{"mercure":{"publish":["*"]}}"#)
        );
        verify(&none).await.unwrap_err();

        let cfg = MercureConfig {
            jwt_algorithms: vec!["HS512".into()],
            ..cfg()
        };
        let e = verify_with(&cfg, &v7(json!({})), Role::Publisher)
            .await
            .unwrap_err();
        assert!(e.contains("algorithm"), "{e}");
        assert!(Verifier::new(&MercureConfig {
            jwt_algorithms: vec!["RS256".into()],
            ..MercureConfig::default()
        })
        .is_err());
    }

    #[tokio::test]
    async fn tokens_are_read_strictly() {
        use base64::engine::general_purpose::URL_SAFE_NO_PAD;
        use base64::Engine;
        use hmac_sign::sign;
        // Signed properly, but the claims say two things.
        let header = URL_SAFE_NO_PAD.encode(r#"{"alg":"HS256","typ":"JWT"}"#);
        let claims = URL_SAFE_NO_PAD
            .encode(r#"{"mercure":{"subscribe":["a"]},"mercure":{"subscribe":["*"]}}"#);
        let token = sign(&header, &claims, SECRET);
        assert!(verify(&token).await.unwrap_err().contains("more than once"));
        let header = URL_SAFE_NO_PAD.encode(r#"{"alg":"HS256","crit":["exp"],"exp":1}"#);
        let token = sign(&header, &URL_SAFE_NO_PAD.encode("{}"), SECRET);
        assert!(verify(&token).await.unwrap_err().contains("`crit`"));
        // And the signing helper makes tokens that verify.
        let token = sign(&URL_SAFE_NO_PAD.encode(r#"{"alg":"HS256"}"#), "e30", SECRET);
        verify(&token).await.unwrap();
    }

    /// Signs arbitrary header and claims texts with HS256 (`jsonwebtoken::encode` cannot
    /// produce a repeated member).
    mod hmac_sign {
        use base64::engine::general_purpose::URL_SAFE_NO_PAD;
        use base64::Engine;

        pub fn sign(header: &str, claims: &str, secret: &str) -> String {
            let input = format!("{header}.{claims}");
            let key = jsonwebtoken::EncodingKey::from_secret(secret.as_bytes());
            let sig =
                jsonwebtoken::crypto::sign(input.as_bytes(), &key, jsonwebtoken::Algorithm::HS256)
                    .unwrap();
            // `crypto::sign` already returns base64url; decode-check it for sanity.
            assert!(URL_SAFE_NO_PAD.decode(&sig).is_ok());
            format!("{input}.{sig}")
        }
    }

    #[tokio::test]
    async fn the_generation_is_the_typ() {
        let both = json!({
            "mercure": {"publish": ["https://example.com/v7"]},
            "authorization_details": [detail(json!(["publish"]), json!([{"match": "https://example.com/v8"}]))],
            "exp": now() + 60,
        });
        for typ in [
            "at+jwt",
            "AT+JWT",
            "application/at+jwt",
            "Application/AT+JWT",
        ] {
            let c = verify(&hs(Some(typ), &both, SECRET)).await.unwrap();
            assert_eq!(c.generation, Generation::V8, "{typ}");
            assert_eq!(texts(&c.publish), ["https://example.com/v8"]);
            assert_eq!(c.publish[0].kind(), MatcherType::Exact);
        }
        for typ in [None, Some("JWT"), Some("jwt"), Some("application/jwt")] {
            let c = verify(&hs(typ, &both, SECRET)).await.unwrap();
            assert_eq!(c.generation, Generation::V7, "{typ:?}");
            assert_eq!(texts(&c.publish), ["https://example.com/v7"]);
        }
        // authorization_details in a plain JWT grant nothing.
        let only_details = json!({"authorization_details": both["authorization_details"]});
        let c = verify(&v7(only_details)).await.unwrap();
        assert!(c.publish.is_empty() && c.subscribe.is_empty());
        // A token typed for another purpose is refused.
        let e = verify(&hs(Some("logout+jwt"), &both, SECRET))
            .await
            .unwrap_err();
        assert!(e.contains("`typ`"), "{e}");
    }

    #[tokio::test]
    async fn a_v8_token_needs_exp() {
        let token = hs(Some("at+jwt"), &json!({"sub": "u"}), SECRET);
        assert!(verify(&token).await.unwrap_err().contains("`exp`"));
    }

    #[tokio::test]
    async fn v8_grants_follow_the_details_in_order() {
        let c = verify(&v8(json!({
            "sub": "s",
            "authorization_details": [
                {"type": "mercure", "actions": ["subscribe"],
                 "topics": [{"match": "https://example.com/foo"}],
                 "payload": {"custom1": 1}},
                {"type": "openid_credential", "whatever": true},
                {"type": "https://mercure.rocks/authorization-detail",
                 "actions": ["subscribe", "publish"],
                 "topics": [{"match": "https://example.com/bar/:id", "matchType": "URLPattern"}],
                 "payload": {"custom2": 2}},
                {"type": "mercure", "actions": ["subscribe"],
                 "topics": [{"match": "*", "matchType": "Exact"}],
                 "payload": {"custom3": 3}},
                {"type": "mercure", "actions": ["subscribe"],
                 "topics": [{"match": "https://example.com/no-payload"}]},
            ],
        })))
        .await
        .unwrap();
        assert_eq!(c.generation, Generation::V8);
        assert_eq!(c.sub.as_deref(), Some("s"));
        assert_eq!(texts(&c.publish), ["https://example.com/bar/:id"]);
        assert_eq!(c.publish[0].kind(), MatcherType::UrlPattern);
        assert_eq!(
            grant_texts(&c.subscribe),
            [
                "https://example.com/foo",
                "https://example.com/bar/:id",
                "*",
                "https://example.com/no-payload"
            ]
        );
        let payloads: Vec<_> = c.subscribe.iter().map(|g| g.payload.clone()).collect();
        assert_eq!(
            payloads,
            [
                Some(json!({"custom1": 1})),
                Some(json!({"custom2": 2})),
                Some(json!({"custom3": 3})),
                None
            ]
        );
        assert_eq!(
            c.payload_for("https://example.com/foo"),
            Some(&json!({"custom1": 1}))
        );
        assert_eq!(
            c.payload_for("https://example.com/elsewhere"),
            Some(&json!({"custom3": 3}))
        );
        // Only the unknown detail type was skipped; without any mercure detail, nothing.
        let c = verify(&v8(json!({"authorization_details": [{"type": "other"}]})))
            .await
            .unwrap();
        assert!(c.publish.is_empty() && c.subscribe.is_empty());
        let c = verify(&v8(json!({}))).await.unwrap();
        assert!(c.publish.is_empty() && c.subscribe.is_empty());
    }

    #[tokio::test]
    async fn one_malformed_detail_refuses_the_whole_token() {
        let good = detail(json!(["publish"]), json!([{"match": "*"}]));
        for (bad, fragment) in [
            (json!("mercure"), "is not a JSON object"),
            (json!({"actions": ["publish"]}), "no `type`"),
            (detail(json!([]), json!([{"match": "*"}])), "actions"),
            (detail(json!("publish"), json!([{"match": "*"}])), "actions"),
            (
                detail(json!(["publish", "delete"]), json!([{"match": "*"}])),
                "\"delete\"",
            ),
            (
                json!({"type": "mercure", "topics": [{"match": "*"}]}),
                "actions",
            ),
            (json!({"type": "mercure", "actions": ["publish"]}), "topics"),
            (detail(json!(["publish"]), json!([])), "topics"),
            (detail(json!(["publish"]), json!(["*"])), "topics[0]"),
            (
                detail(json!(["publish"]), json!([{"match": 1}])),
                "`match` string",
            ),
            (
                detail(json!(["publish"]), json!([{"match": "a"}, {}])),
                "topics[1]",
            ),
            (
                detail(
                    json!(["publish"]),
                    json!([{"match": "a", "matchType": "exact"}]),
                ),
                "matchType",
            ),
            (
                detail(
                    json!(["publish"]),
                    json!([{"match": "a", "matchType": "URITemplate"}]),
                ),
                "matchType",
            ),
            (
                json!({"type": "mercure", "actions": ["subscribe"],
                       "topics": [{"match": "a"}], "payload": "text"}),
                "payload",
            ),
        ] {
            let token = v8(json!({"authorization_details": [good.clone(), bad.clone()]}));
            let e = verify(&token).await.unwrap_err();
            assert!(e.contains(fragment), "{bad}: {e}");
            assert!(
                e.contains("authorization_details[1]") || e.contains("`type`"),
                "{e}"
            );
        }
        let e = verify(&v8(json!({"authorization_details": {"type": "mercure"}})))
            .await
            .unwrap_err();
        assert!(e.contains("must be a list"), "{e}");
    }

    #[tokio::test]
    async fn limits_refuse_the_token() {
        let cfg = MercureConfig {
            max_matchers: 2,
            max_topic_bytes: 10,
            ..cfg()
        };
        let topic = |m: &str| json!({"match": m});
        let ok = v8(json!({"authorization_details": [
            detail(json!(["publish"]), json!([topic("0123456789"), topic("b")])),
            detail(json!(["subscribe"]), json!([topic("c")])),
            {"type": "other"},
        ]}));
        verify_with(&cfg, &ok, Role::Publisher).await.unwrap();
        for (claims, fragment) in [
            (
                json!({"authorization_details": [
                    detail(json!(["publish"]), json!([topic("a")])),
                    detail(json!(["publish"]), json!([topic("a")])),
                    detail(json!(["publish"]), json!([topic("a")])),
                ]}),
                "more than 2 mercure authorization details",
            ),
            (
                json!({"authorization_details": [
                    detail(json!(["publish"]), json!([topic("a"), topic("b"), topic("c")])),
                ]}),
                "more than 2 topic matchers",
            ),
            (
                json!({"authorization_details": [
                    detail(json!(["publish"]), json!([topic("0123456789a")])),
                ]}),
                "longer than 10 bytes",
            ),
        ] {
            let e = verify_with(&cfg, &v8(claims), Role::Publisher)
                .await
                .unwrap_err();
            assert!(e.contains(fragment), "{e}");
        }
        for (claims, fragment) in [
            (
                json!({"mercure": {"subscribe": ["a", "b", "c"]}}),
                "more than 2 topic selectors",
            ),
            (
                json!({"mercure": {"publish": ["0123456789a"]}}),
                "longer than 10 bytes",
            ),
        ] {
            let e = verify_with(&cfg, &v7(claims), Role::Publisher)
                .await
                .unwrap_err();
            assert!(e.contains(fragment), "{e}");
        }
    }

    #[tokio::test]
    async fn issuer_and_audience_when_configured() {
        let cfg = MercureConfig {
            issuer: Some("https://issuer.example".into()),
            audience: Some("https://hub.example".into()),
            ..cfg()
        };
        let check = |claims: Value| {
            let cfg = cfg.clone();
            async move {
                let v7_result = verify_with(&cfg, &v7(claims.clone()), Role::Subscriber).await;
                let v8_result = verify_with(&cfg, &v8(claims), Role::Subscriber).await;
                assert_eq!(v7_result.is_ok(), v8_result.is_ok());
                v7_result.map(|_| ())
            }
        };
        let iss = "https://issuer.example";
        check(json!({"iss": iss, "aud": "https://hub.example"}))
            .await
            .unwrap();
        check(json!({"iss": iss, "aud": ["other", "https://hub.example"]}))
            .await
            .unwrap();
        for claims in [
            json!({"iss": iss}),
            json!({"iss": iss, "aud": "other"}),
            json!({"iss": iss, "aud": ["other"]}),
            json!({"aud": "https://hub.example"}),
            json!({"iss": "https://else.example", "aud": "https://hub.example"}),
        ] {
            check(claims.clone()).await.unwrap_err();
        }
        // Not configured: not required, not checked.
        verify(&v8(json!({"iss": "x", "aud": "y"}))).await.unwrap();
    }

    #[tokio::test]
    async fn a_pem_public_key_verifies_its_role_only() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("publisher.pem");
        std::fs::write(&path, EC_PUBLIC).unwrap();
        let cfg = MercureConfig {
            publisher_public_key_file: Some(path),
            subscriber_jwt_secret: Some(SECRET.into()),
            ..MercureConfig::default()
        };
        let es = |pem: &str, typ: &str| {
            let mut header = Header::new(Algorithm::ES256);
            header.typ = Some(typ.into());
            let claims = json!({"exp": now() + 60, "authorization_details": [
                detail(json!(["publish"]), json!([{"match": "*"}]))]});
            encode(
                &header,
                &claims,
                &EncodingKey::from_ec_pem(pem.as_bytes()).unwrap(),
            )
            .unwrap()
        };
        let token = es(EC_PRIVATE, "at+jwt");
        let c = verify_with(&cfg, &token, Role::Publisher).await.unwrap();
        assert!(c.may_publish("https://example.com/x"));
        verify_with(&cfg, &token, Role::Subscriber)
            .await
            .unwrap_err();
        verify_with(&cfg, &es(EC_OTHER_PRIVATE, "at+jwt"), Role::Publisher)
            .await
            .unwrap_err();
        // An HS256 token "signed" with the public key's text never verifies.
        let confused = hs(Some("at+jwt"), &json!({"exp": now() + 60}), EC_PUBLIC);
        verify_with(&cfg, &confused, Role::Publisher)
            .await
            .unwrap_err();
        // The allow-list is bounded by the key's kind.
        let only_rsa = MercureConfig {
            public_key_algorithms: vec!["RS256".into()],
            ..cfg.clone()
        };
        assert!(Verifier::new(&only_rsa).is_err());
        let mixed = MercureConfig {
            public_key_algorithms: vec!["RS256".into(), "ES256".into()],
            ..cfg
        };
        verify_with(&mixed, &token, Role::Publisher).await.unwrap();
    }

    #[tokio::test]
    async fn jwks_keys_verify_both_roles_by_kid() {
        let doc = json!({"keys": [{"kty": "EC", "crv": "P-256", "x": EC_X, "y": EC_Y,
                                   "kid": "k1", "use": "sig", "alg": "ES256"}]});
        let app = axum::Router::new().route(
            "/jwks",
            axum::routing::get(move || async move { axum::Json(doc) }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move { axum::serve(listener, app).await });
        let cfg = MercureConfig {
            jwks_url: Some(format!("http://{addr}/jwks")),
            ..MercureConfig::default()
        };
        let verifier = Verifier::new(&cfg).unwrap();
        let es = |pem: &str, kid: Option<&str>| {
            let mut header = Header::new(Algorithm::ES256);
            header.typ = Some("at+jwt".into());
            header.kid = kid.map(str::to_owned);
            let claims = json!({"exp": now() + 60, "authorization_details": [
                detail(json!(["subscribe"]), json!([{"match": "*"}]))]});
            encode(
                &header,
                &claims,
                &EncodingKey::from_ec_pem(pem.as_bytes()).unwrap(),
            )
            .unwrap()
        };
        let token = es(EC_PRIVATE, Some("k1"));
        for role in [Role::Publisher, Role::Subscriber] {
            let c = verifier.verify(&token, role, BASE).await.unwrap();
            assert!(c.may_subscribe("https://example.com/x"));
        }
        for token in [
            es(EC_PRIVATE, Some("k2")),
            es(EC_PRIVATE, None),
            es(EC_OTHER_PRIVATE, Some("k1")),
        ] {
            let e = verifier
                .verify(&token, Role::Subscriber, BASE)
                .await
                .unwrap_err();
            assert!(matches!(e, TokenError::Invalid(_)), "{e:?}");
        }
        server.abort();
        // Symmetric algorithms cannot be JWKS algorithms.
        assert!(Verifier::new(&MercureConfig {
            jwks_algorithms: vec!["HS256".into()],
            ..cfg
        })
        .is_err());
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(
                axum::http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        map
    }

    fn query(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect()
    }

    fn malformed(r: Result<Option<(String, Via)>, TokenError>) -> String {
        match r {
            Err(TokenError::Malformed(m)) => m,
            r => panic!("not malformed: {r:?}"),
        }
    }

    #[test]
    fn the_header_then_the_query_then_the_cookie() {
        let cfg = cfg();
        let got = |h: &[(&str, &str)], q: &[(&str, &str)]| {
            presented(&headers(h), &query(q), &cfg).unwrap()
        };
        let some = |t: &str, via| Some((t.to_owned(), via));
        let cookie = ("cookie", "mercureAuthorization=c");
        assert_eq!(
            got(
                &[("authorization", "Bearer h"), cookie],
                &[("access_token", "q")]
            ),
            some("h", Via::Header)
        );
        assert_eq!(
            got(&[cookie], &[("access_token", "q")]),
            some("q", Via::Query)
        );
        assert_eq!(
            got(&[cookie], &[("authorization", "q7")]),
            some("q7", Via::Query)
        );
        assert_eq!(got(&[cookie], &[("match", "x")]), some("c", Via::Cookie));
        assert_eq!(got(&[], &[]), None);
        assert_eq!(
            got(&[("authorization", "bearer   h.b.s")], &[]),
            some("h.b.s", Via::Header)
        );
        // The header chosen is used even if malformed: no falling back.
        for value in ["Basic dTpw", "Bearer", "Bearer ", "Bearer a b", "Token x"] {
            let e = malformed(presented(
                &headers(&[("authorization", value), cookie]),
                &query(&[("access_token", "q")]),
                &cfg,
            ));
            assert!(e.contains("Bearer"), "{value}: {e}");
        }
        malformed(presented(
            &headers(&[("authorization", "Bearer a"), ("authorization", "Bearer b")]),
            &[],
            &cfg,
        ));
        malformed(presented(
            &HeaderMap::new(),
            &query(&[("authorization", "a"), ("access_token", "b")]),
            &cfg,
        ));
        malformed(presented(
            &headers(&[cookie]),
            &query(&[("access_token", "")]),
            &cfg,
        ));
    }

    #[test]
    fn query_tokens_can_be_disabled() {
        let cfg = MercureConfig {
            allow_query_token: false,
            ..cfg()
        };
        for name in ["authorization", "access_token"] {
            let e = malformed(presented(
                &headers(&[("cookie", "mercureAuthorization=c")]),
                &query(&[(name, "q")]),
                &cfg,
            ));
            assert!(
                e.contains("tokens in URLs") && e.contains("disabled"),
                "{e}"
            );
        }
        // The header still wins (the query is not looked at), and cookies still work.
        assert_eq!(
            presented(
                &headers(&[("authorization", "Bearer h")]),
                &query(&[("access_token", "q")]),
                &cfg
            )
            .unwrap(),
            Some(("h".to_owned(), Via::Header))
        );
        assert_eq!(
            presented(&headers(&[("cookie", "mercureAccessToken=c")]), &[], &cfg).unwrap(),
            Some(("c".to_owned(), Via::Cookie))
        );
    }

    #[test]
    fn cookies_are_parsed() {
        let cfg = MercureConfig {
            cookie_name: "hub1".into(),
            ..cfg()
        };
        let got = |h: &[(&str, &str)]| {
            presented(&headers(h), &[], &cfg).unwrap().map(|(t, via)| {
                assert_eq!(via, Via::Cookie);
                t
            })
        };
        assert_eq!(
            got(&[("cookie", "a=1; hub1=tok; b=2")]).as_deref(),
            Some("tok")
        );
        assert_eq!(
            got(&[("cookie", "a=1"), ("cookie", "hub1=t2")]).as_deref(),
            Some("t2")
        );
        assert_eq!(
            got(&[("cookie", "hub1=\"quoted.t.s\"")]).as_deref(),
            Some("quoted.t.s")
        );
        // The configured name first, then the protocol's default name.
        assert_eq!(
            got(&[("cookie", "mercureAccessToken=d; hub1=mine")]).as_deref(),
            Some("mine")
        );
        assert_eq!(
            got(&[("cookie", "mercureAccessToken=d")]).as_deref(),
            Some("d")
        );
        // Names are exact; a cleared cookie counts as absent.
        assert_eq!(got(&[("cookie", "xhub1=1; hub=2; Hub1=3")]), None);
        assert_eq!(
            got(&[("cookie", "hub1=; mercureAccessToken=d")]).as_deref(),
            Some("d")
        );
        assert_eq!(got(&[("cookie", "hub1=a=b")]).as_deref(), Some("a=b"));
        assert_eq!(got(&[("cookie", ";;noequals;")]), None);
    }

    #[test]
    fn errors_tell_clients_nothing_of_the_check() {
        let invalid = TokenError::Invalid("bad signature".into());
        assert!(!invalid.public_message().contains("signature"));
        assert_eq!(invalid.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(
            invalid.www_authenticate(),
            r#"Bearer realm="mercure", error="invalid_token""#
        );
        assert_eq!(
            TokenError::Missing.www_authenticate(),
            r#"Bearer realm="mercure""#
        );
        let malformed = TokenError::Malformed("tokens in URLs are disabled".into());
        assert_eq!(malformed.status(), StatusCode::BAD_REQUEST);
        assert_eq!(malformed.public_message(), "tokens in URLs are disabled");
        assert_eq!(
            malformed.www_authenticate(),
            r#"Bearer realm="mercure", error="invalid_request""#
        );
        assert_eq!(
            insufficient_scope_challenge(),
            r#"Bearer realm="mercure", error="insufficient_scope""#
        );
    }
}
