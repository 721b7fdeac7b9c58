//! Mercure access tokens: where a request presents one, and what it grants.
//! (Interface stub; the implementation is being written.)

use axum::http::HeaderMap;
use serde_json::Value;

use super::config::MercureConfig;
use super::matcher::Matcher;

/// Which key verifies the token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Publisher,
    Subscriber,
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
    pub subscribe: Vec<Grant>,
}

impl Claims {
    pub fn may_publish(&self, topic: &str) -> bool {
        self.publish.iter().any(|m| m.matches(topic))
    }

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
    /// `401`, `error="invalid_token"`.
    #[error("invalid token: {0}")]
    Invalid(String),
    /// `400`, `error="invalid_request"`.
    #[error("{0}")]
    Malformed(String),
}

/// The token a request presents, by precedence: the `Authorization` header, then the query
/// parameter (`authorization`, `access_token`), then the cookie.
pub fn presented(
    headers: &HeaderMap,
    query: &[(String, String)],
    cfg: &MercureConfig,
) -> Result<Option<(String, Via)>, TokenError> {
    let _ = (headers, query, cfg);
    Ok(None)
}

/// Verifies tokens with the configured keys.
pub struct Verifier {}

impl Verifier {
    pub fn new(cfg: &MercureConfig) -> Result<Self, String> {
        let _ = cfg;
        Ok(Self {})
    }

    /// Verifies `token` with `role`'s keys; `base` is the hub's URL (for relative URL
    /// patterns in the grants).
    pub async fn verify(&self, token: &str, role: Role, base: &str) -> Result<Claims, TokenError> {
        let _ = (token, role, base);
        Err(TokenError::Invalid("not implemented".into()))
    }
}
