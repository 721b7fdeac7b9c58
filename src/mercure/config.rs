//! The `[mercure]` section: the Mercure hub protocol at `/.well-known/mercure`.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MercureConfig {
    /// Serve the Mercure hub protocol at `/.well-known/mercure`.
    pub enabled: bool,
    /// HMAC key that signs both publishers' and subscribers' tokens (the Mercure hub's
    /// `MERCURE_PUBLISHER_JWT_KEY` = `MERCURE_SUBSCRIBER_JWT_KEY`).
    pub jwt_secret: Option<String>,
    /// Publishers' HMAC key (`MERCURE_PUBLISHER_JWT_KEY`); overrides `jwt_secret` for them.
    pub publisher_jwt_secret: Option<String>,
    /// Subscribers' HMAC key (`MERCURE_SUBSCRIBER_JWT_KEY`); overrides `jwt_secret` for them.
    pub subscriber_jwt_secret: Option<String>,
    /// Algorithms accepted with the HMAC keys (`MERCURE_*_JWT_ALG`).
    pub jwt_algorithms: Vec<String>,
    /// PEM public key verifying publishers' tokens (RSA, EC P-256/P-384, Ed25519).
    pub publisher_public_key_file: Option<PathBuf>,
    /// PEM public key verifying subscribers' tokens.
    pub subscriber_public_key_file: Option<PathBuf>,
    /// Algorithms accepted with the public keys; empty = those of the key's type.
    pub public_key_algorithms: Vec<String>,
    /// JWKS document whose keys (chosen by `kid`) verify both roles' tokens.
    pub jwks_url: Option<String>,
    /// Algorithms JWKS keys may verify; empty = those of each key's type.
    pub jwks_algorithms: Vec<String>,
    /// Subscribers without a token are accepted and receive public updates only.
    pub anonymous: bool,
    /// When set, tokens must carry this `iss`.
    pub issuer: Option<String>,
    /// When set, tokens must carry this `aud` (the hub's resource identifier).
    pub audience: Option<String>,
    /// Clock skew tolerated on `exp` and `nbf`, in seconds.
    pub leeway_s: u64,
    /// The subscriptions API and subscription events.
    pub subscriptions: bool,
    /// Cookie carrying the token (`mercureAccessToken`, the newer protocol's default name,
    /// is read too).
    pub cookie_name: String,
    /// Whether a token in the URL (`authorization=`, `access_token=`) is accepted.
    pub allow_query_token: bool,
    /// The hub's public URL, the base of relative topics and URL patterns; default
    /// `http://<Host>/.well-known/mercure` of each request.
    pub hub_url: Option<String>,
    /// Most topic matchers in one subscription request, and most topic matchers in one token.
    pub max_matchers: usize,
    /// Longest topic or topic matcher, in bytes.
    pub max_topic_bytes: usize,
}

impl Default for MercureConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            jwt_secret: None,
            publisher_jwt_secret: None,
            subscriber_jwt_secret: None,
            jwt_algorithms: vec!["HS256".into(), "HS384".into(), "HS512".into()],
            publisher_public_key_file: None,
            subscriber_public_key_file: None,
            public_key_algorithms: Vec::new(),
            jwks_url: None,
            jwks_algorithms: Vec::new(),
            anonymous: false,
            issuer: None,
            audience: None,
            leeway_s: 5,
            subscriptions: false,
            cookie_name: "mercureAuthorization".into(),
            allow_query_token: true,
            hub_url: None,
            max_matchers: 100,
            max_topic_bytes: 2048,
        }
    }
}
