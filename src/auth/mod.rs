//! Who a request is, and what it may do.
//!
//! Credentials, first found wins (docs/api.md): `Authorization: Bearer`, the auth cookie
//! (`auth.cookie_name`), the `access_token` query parameter (unless disabled), then
//! forward-auth (the app's own session, see [`forward`]).
//!
//! - A token with two dots is a JWT ([`jwt`]): `sub` is the user; grants come from the
//!   `ssegate` claim `{"subscribe": [...], "publish": [...], "admin": bool}` plus the
//!   configured claim-derived rules ([`rules`]).
//! - A token without dots is a publisher key: its SHA-256 must be one of
//!   `auth.publisher_keys` (the config holds only digests, never the keys).
//! - Without a token, or with a token no key of ours is for, forward-auth decides when
//!   configured.
//!
//! Whatever the source, the result is a [`Principal`]: a user and grant patterns. Nothing is
//! ever granted by default.

mod cache;
pub mod forward;
pub mod jwks;
pub mod jwt;
pub mod keys;
pub mod rules;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use crate::channel::{covers, pattern_matches, validate_pattern};
use crate::config::{AuthConfig, GrantRules};
use crate::metrics::Metrics;
use forward::{Forward, ForwardCreds};
use jwks::Jwks;
use jwt::JwtVerifier;

/// Grants: patterns a principal may subscribe and publish to, and whether it is an admin.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Grants {
    pub subscribe: Vec<String>,
    pub publish: Vec<String>,
    pub admin: bool,
    /// Channels whose presence (`GET /v1/channels/{channel}/presence`) it may read.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub presence: Vec<String>,
}

impl Grants {
    /// Refuses a grant that is not a valid channel pattern.
    fn check_patterns(&self) -> Result<(), AuthError> {
        for p in self
            .subscribe
            .iter()
            .chain(&self.publish)
            .chain(&self.presence)
        {
            validate_pattern(p)
                .map_err(|e| AuthError::Invalid(format!("grant pattern {p:?}: {e}")))?;
        }
        Ok(())
    }
}

/// How a principal was authenticated.
#[derive(Debug, Clone)]
pub enum Via {
    Jwt,
    PublisherKey {
        name: String,
    },
    /// Forward-auth: live streams are re-checked with the same credentials every `ttl`.
    Forward {
        creds: ForwardCreds,
        ttl: Duration,
    },
}

/// An authenticated caller.
#[derive(Debug, Clone)]
pub struct Principal {
    pub user: String,
    pub grants: Grants,
    /// Unix seconds after which the credentials are no longer valid (a JWT's `exp`).
    pub expires_at: Option<u64>,
    pub via: Via,
}

impl Principal {
    /// Whether a grant covers the subscription (a channel, or a pattern covered whole by
    /// one grant).
    pub fn may_subscribe(&self, subscription: &str) -> bool {
        self.grants
            .subscribe
            .iter()
            .any(|p| covers(p, subscription, &self.user))
    }

    /// Whether it may read who is connected to `channel` (admins always may).
    pub fn may_see_presence(&self, channel: &str) -> bool {
        self.grants.admin
            || self
                .grants
                .presence
                .iter()
                .any(|p| pattern_matches(p, channel, &self.user))
    }

    pub fn may_publish(&self, channel: &str) -> bool {
        self.grants
            .publish
            .iter()
            .any(|p| pattern_matches(p, channel, &self.user))
    }
}

/// Why credentials were refused; shown to the client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("no credentials: send a token as `Authorization: Bearer`, the auth cookie or `access_token`")]
    Missing,
    #[error("the token has expired")]
    Expired,
    #[error("the token is not valid yet")]
    NotYetValid,
    #[error("the credentials are invalid: {0}")]
    Invalid(String),
    #[error("the authentication service refused this session")]
    Forbidden,
    #[error("{0}")]
    Unavailable(String),
}

impl AuthError {
    /// The stable error code.
    pub fn code(&self) -> &'static str {
        match self {
            AuthError::Missing => "missing_credentials",
            AuthError::Expired => "token_expired",
            AuthError::NotYetValid => "token_not_yet_valid",
            AuthError::Invalid(_) => "invalid_token",
            AuthError::Forbidden => "forbidden",
            AuthError::Unavailable(_) => "auth_unavailable",
        }
    }
}

/// Checks a user id: 1 to 256 characters, none of them a control character.
pub fn validate_user(user: &str) -> Result<(), AuthError> {
    if user.is_empty() || user.len() > 256 || user.chars().any(char::is_control) {
        return Err(AuthError::Invalid(
            "the user id (`sub`) must be 1 to 256 printable characters".into(),
        ));
    }
    Ok(())
}

/// What a request presents.
#[derive(Debug, Default)]
pub struct RequestCreds<'a> {
    /// A token from the `Authorization: Bearer` header, the auth cookie or the query.
    pub token: Option<&'a str>,
    /// For forward-auth: the raw `Cookie` and `Authorization` headers.
    pub forward: ForwardCreds,
}

/// A configured publisher key (by digest).
#[derive(Debug, Clone)]
struct PublisherKey {
    name: String,
    grants: Grants,
}

/// Decides who requests are.
pub struct Auth {
    jwt: JwtVerifier,
    /// Tokens the static keys verified (see [`cache`]).
    verified: cache::Verified,
    rules: GrantRules,
    publisher_keys: HashMap<String, PublisherKey>,
    forward: Option<Arc<Forward>>,
    jwks: Option<Arc<Jwks>>,
    pub cookie_name: String,
    pub allow_query_token: bool,
    metrics: Arc<Metrics>,
}

impl Auth {
    /// Builds the verifier from the configuration; errors name the bad setting.
    pub fn new(
        cfg: &AuthConfig,
        http: reqwest::Client,
        metrics: Arc<Metrics>,
    ) -> Result<Self, String> {
        let jwks = cfg
            .jwks_url
            .as_ref()
            .map(|url| -> Result<Arc<Jwks>, String> {
                let allowed = cfg
                    .jwks_algorithms
                    .iter()
                    .map(|n| {
                        n.parse::<Algorithm>()
                            .ok()
                            .filter(|a| !keys::KeyKind::Hmac.algorithms().contains(a))
                            .ok_or_else(|| {
                                format!(
                                    "auth.jwks_algorithms: {n:?} is not an asymmetric algorithm"
                                )
                            })
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                Ok(Arc::new(Jwks::new(
                    url.clone(),
                    http.clone(),
                    Duration::from_secs(cfg.jwks_cache_s),
                    Duration::from_millis(cfg.jwks_min_refresh_interval_ms),
                    allowed,
                    metrics.jwks_fetches.clone(),
                )))
            })
            .transpose()?;
        let jwt = JwtVerifier::new(cfg, jwks.clone())?;
        for t in cfg.grants.subscribe.iter().chain(&cfg.grants.publish) {
            rules::validate_template(t).map_err(|e| format!("auth.grants: {t:?}: {e}"))?;
        }
        let mut publisher_keys = HashMap::new();
        for k in &cfg.publisher_keys {
            let digest = k.sha256.to_ascii_lowercase();
            if digest.len() != 64 || !digest.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(format!(
                    "auth.publisher_keys {:?}: sha256 must be 64 hex digits",
                    k.name
                ));
            }
            for p in &k.publish {
                validate_pattern(p)
                    .map_err(|e| format!("auth.publisher_keys {:?}: {p:?}: {e}", k.name))?;
            }
            publisher_keys.insert(
                digest,
                PublisherKey {
                    name: k.name.clone(),
                    grants: Grants {
                        subscribe: Vec::new(),
                        publish: k.publish.clone(),
                        admin: k.admin,
                        presence: Vec::new(),
                    },
                },
            );
        }
        let forward = cfg.forward_url.as_ref().map(|url| {
            Arc::new(Forward::new(
                url.clone(),
                http.clone(),
                Duration::from_millis(cfg.forward_timeout_ms),
                Duration::from_secs(cfg.forward_max_ttl_s),
                cfg.forward_cache_entries,
                metrics.clone(),
            ))
        });
        Ok(Self {
            jwt,
            verified: cache::Verified::new(cfg.leeway_s),
            rules: cfg.grants.clone(),
            publisher_keys,
            forward,
            jwks,
            cookie_name: cfg.cookie_name.clone(),
            allow_query_token: cfg.allow_query_token,
            metrics,
        })
    }

    /// Whether any way of authenticating is configured.
    pub fn is_configured(&self) -> bool {
        self.jwt.has_keys() || !self.publisher_keys.is_empty() || self.forward.is_some()
    }

    pub fn forward(&self) -> Option<&Arc<Forward>> {
        self.forward.as_ref()
    }

    pub fn jwks(&self) -> Option<&Arc<Jwks>> {
        self.jwks.as_ref()
    }

    /// Authenticates a request (see the module docs for the order); counts refusals.
    pub async fn authenticate(&self, creds: &RequestCreds<'_>) -> Result<Principal, AuthError> {
        self.authenticate_shared(creds)
            .await
            .map(Arc::unwrap_or_clone)
    }

    /// [`Self::authenticate`], the principal shared: a token verified before gives the
    /// principal it gave then, without a copy.
    pub async fn authenticate_shared(
        &self,
        creds: &RequestCreds<'_>,
    ) -> Result<Arc<Principal>, AuthError> {
        let result = self.decide(creds).await;
        if let Err(e) = &result {
            self.metrics.auth_failure(e.code());
        }
        result
    }

    async fn decide(&self, creds: &RequestCreds<'_>) -> Result<Arc<Principal>, AuthError> {
        if let Some(token) = creds.token {
            // A token verified before is a JWT (two dots) verified by a key of ours.
            if let Some(known) = self.known_jwt(token) {
                return known;
            }
            let dots = token.bytes().filter(|b| *b == b'.').count();
            if dots == 2 && self.jwt.has_keys() {
                return self.verify_jwt_shared(token).await;
            }
            if dots == 0 {
                let digest = hex_sha256(token.as_bytes());
                if let Some(key) = self.publisher_keys.get(&digest) {
                    return Ok(Arc::new(Principal {
                        user: key.name.clone(),
                        grants: key.grants.clone(),
                        expires_at: None,
                        via: Via::PublisherKey {
                            name: key.name.clone(),
                        },
                    }));
                }
            }
            // Not a credential of ours: perhaps the app's own, for forward-auth.
            if self.forward.is_none() {
                return Err(AuthError::Invalid(if dots == 2 {
                    "no key on this server verifies tokens".into()
                } else {
                    "not a token or publisher key this server knows".into()
                }));
            }
        }
        match &self.forward {
            Some(fwd) if !creds.forward.is_empty() => {
                let session = fwd.check(&creds.forward).await?;
                Ok(Arc::new(self.forwarded(creds.forward.clone(), session)))
            }
            _ => Err(AuthError::Missing),
        }
    }

    fn forwarded(&self, creds: ForwardCreds, session: forward::Session) -> Principal {
        let mut grants = session.grants;
        let valid = |p: &String| {
            let ok = validate_pattern(p).is_ok();
            if !ok {
                tracing::warn!(pattern = %p, "forward-auth granted an invalid pattern; ignored");
            }
            ok
        };
        grants.subscribe.retain(valid);
        grants.publish.retain(valid);
        grants.presence.retain(valid);
        Principal {
            user: session.user,
            grants,
            expires_at: None,
            via: Via::Forward {
                creds,
                ttl: session.ttl,
            },
        }
    }

    /// Asks forward-auth again about a live stream's session (bypassing the cache).
    pub async fn recheck(&self, creds: &ForwardCreds) -> Result<Principal, AuthError> {
        let fwd = self
            .forward
            .as_ref()
            .ok_or_else(|| AuthError::Invalid("forward-auth is not configured".into()))?;
        let session = fwd.check_fresh(creds).await?;
        Ok(self.forwarded(creds.clone(), session))
    }

    /// Verifies a JWT and derives the principal. A token a static key verified before is
    /// not verified again: only its `exp` and `nbf` are checked (see [`cache`]).
    pub async fn verify_jwt(&self, token: &str) -> Result<Principal, AuthError> {
        self.verify_jwt_shared(token)
            .await
            .map(Arc::unwrap_or_clone)
    }

    async fn verify_jwt_shared(&self, token: &str) -> Result<Arc<Principal>, AuthError> {
        if let Some(known) = self.known_jwt(token) {
            return known;
        }
        let (claims, is_static) = self.jwt.verify_from(token).await?;
        let principal = Arc::new(self.principal_from_claims(&claims)?);
        if is_static {
            self.verified.insert(token, &claims, &principal);
        }
        Ok(principal)
    }

    /// The principal of a token a static key verified before, its times checked now.
    fn known_jwt(&self, token: &str) -> Option<Result<Arc<Principal>, AuthError>> {
        self.verified
            .get(token, jsonwebtoken::get_current_timestamp())
    }

    fn principal_from_claims(&self, claims: &Map<String, Value>) -> Result<Principal, AuthError> {
        let user = claims
            .get("sub")
            .and_then(Value::as_str)
            .ok_or_else(|| AuthError::Invalid("`sub` must be a string".into()))?;
        validate_user(user)?;
        let mut grants: Grants = match claims.get("ssegate") {
            None => Grants::default(),
            Some(v) => serde_json::from_value(v.clone()).map_err(|_| {
                AuthError::Invalid(
                    "the `ssegate` claim must be {\"subscribe\": [...], \"publish\": [...], \"admin\": bool}"
                        .into(),
                )
            })?,
        };
        grants.check_patterns()?;
        grants
            .subscribe
            .extend(rules::expand(&self.rules.subscribe, claims));
        grants
            .publish
            .extend(rules::expand(&self.rules.publish, claims));
        // `exp` was required and checked; a fractional one (allowed by RFC 7519) still ends
        // the stream, at its whole second.
        let expires_at = claims
            .get("exp")
            .and_then(|v| v.as_u64().or_else(|| v.as_f64().map(|f| f.max(0.0) as u64)))
            .ok_or_else(|| AuthError::Invalid("`exp` must be a number".into()))?;
        Ok(Principal {
            user: user.to_owned(),
            grants,
            expires_at: Some(expires_at),
            via: Via::Jwt,
        })
    }
}

/// Lower-case hex SHA-256, the form publisher keys are configured in.
pub fn hex_sha256(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Mints HS256 tokens with the shared secret (`ssegate token`, `serve --dev`, tests).
pub struct Minter {
    key: EncodingKey,
    issuer: Option<String>,
    audience: Option<String>,
}

impl Minter {
    pub fn new(secret: &str, cfg: &AuthConfig) -> Self {
        Self {
            key: EncodingKey::from_secret(secret.as_bytes()),
            issuer: cfg.issuer.clone(),
            audience: cfg.audience.clone(),
        }
    }

    /// A token for `sub` with `grants`, valid for `ttl_s` seconds.
    pub fn mint(&self, sub: &str, grants: Grants, ttl_s: u64) -> Result<String, AuthError> {
        validate_user(sub)?;
        grants.check_patterns()?;
        let now = crate::time::now_ms() / 1000;
        let mut claims = serde_json::json!({
            "sub": sub,
            "iat": now,
            "exp": now + ttl_s,
            "ssegate": grants,
        });
        if let Some(iss) = &self.issuer {
            claims["iss"] = iss.clone().into();
        }
        if let Some(aud) = &self.audience {
            claims["aud"] = aud.clone().into();
        }
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.key)
            .map_err(|e| AuthError::Invalid(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "test-secret-0123456789";

    fn auth_with(cfg: AuthConfig) -> Auth {
        Auth::new(&cfg, reqwest::Client::new(), Arc::new(Metrics::default())).unwrap()
    }

    fn auth() -> Auth {
        auth_with(AuthConfig {
            jwt_secret: Some(SECRET.into()),
            ..AuthConfig::default()
        })
    }

    fn grants(sub: &[&str]) -> Grants {
        Grants {
            subscribe: sub.iter().map(|s| s.to_string()).collect(),
            ..Grants::default()
        }
    }

    fn minter() -> Minter {
        Minter::new(SECRET, &AuthConfig::default())
    }

    #[tokio::test]
    async fn minted_tokens_verify_with_their_grants() {
        let t = minter()
            .mint("u1", grants(&["notifications:{sub}"]), 60)
            .unwrap();
        let p = auth().verify_jwt(&t).await.unwrap();
        assert_eq!(p.user, "u1");
        assert!(p.may_subscribe("notifications:u1"));
        assert!(!p.may_subscribe("notifications:u2"));
        assert!(!p.may_publish("notifications:u1"));
    }

    #[tokio::test]
    async fn wrong_secret_and_alg_none_are_refused() {
        let t = Minter::new("another-secret-0123456789", &AuthConfig::default())
            .mint("u1", grants(&["a"]), 60)
            .unwrap();
        assert!(matches!(
            auth().verify_jwt(&t).await,
            Err(AuthError::Invalid(_))
        ));
        // {"alg":"none","typ":"JWT"} . {"sub":"u1","ssegate":{"subscribe":["**"]}} . (empty)
        let none = "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.eyJzdWIiOiJ1MSIsInNzZWdhdGUiOnsic3Vic2NyaWJlIjpbIioqIl19fQ.";
        assert!(auth().verify_jwt(none).await.is_err());
    }

    #[tokio::test]
    async fn a_token_without_exp_is_refused() {
        let claims = serde_json::json!({"sub": "u1", "ssegate": {"subscribe": ["**"]}});
        let t = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .unwrap();
        assert_eq!(
            auth().verify_jwt(&t).await.unwrap_err(),
            AuthError::Invalid("missing claim `exp`".into())
        );
    }

    #[tokio::test]
    async fn claim_rules_add_grants() {
        let a = auth_with(AuthConfig {
            jwt_secret: Some(SECRET.into()),
            grants: GrantRules {
                subscribe: vec!["logs:{claims.ws}:*".into()],
                publish: vec![],
            },
            ..AuthConfig::default()
        });
        let claims =
            serde_json::json!({"sub": "u1", "exp": crate::time::now_ms() / 1000 + 60, "ws": "w7"});
        let t = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .unwrap();
        let p = a.verify_jwt(&t).await.unwrap();
        assert!(p.may_subscribe("logs:w7:f1"));
        assert!(p.may_subscribe("logs:w7:*"));
        assert!(!p.may_subscribe("logs:w8:f1"));
    }

    #[tokio::test]
    async fn publisher_keys_are_matched_by_digest() {
        let a = auth_with(AuthConfig {
            publisher_keys: vec![crate::config::PublisherKeyConfig {
                name: "etl".into(),
                sha256: hex_sha256(b"sk_secret_value"),
                publish: vec!["logs:**".into()],
                admin: false,
            }],
            ..AuthConfig::default()
        });
        let creds = |t| RequestCreds {
            token: Some(t),
            ..RequestCreds::default()
        };
        let p = a.authenticate(&creds("sk_secret_value")).await.unwrap();
        assert_eq!(p.user, "etl");
        assert!(p.may_publish("logs:w1:f1"));
        assert!(!p.may_subscribe("logs:w1:f1"));
        assert!(a.authenticate(&creds("sk_other")).await.is_err());
    }
}
