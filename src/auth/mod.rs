//! Who a request is, and what it may do.
//!
//! Tokens are JWTs signed with the configured HS256/384/512 secret. `sub` is the user; grants
//! live in the `ssegate` claim:
//! `{"subscribe": ["logs:w1:*", "notifications:{sub}"], "publish": ["logs:**"], "admin": false}`.
//! Only HMAC algorithms are accepted (never `none`); `sub` and `exp` are required (a token
//! that never expires is refused); `exp` and `nbf` are checked with `auth.leeway_s`; `iss` and
//! `aud` when configured.

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::channel::{pattern_matches, validate_pattern};
use crate::config::AuthConfig;

/// Grants carried in the `ssegate` claim.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Grants {
    pub subscribe: Vec<String>,
    pub publish: Vec<String>,
    pub admin: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    pub sub: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exp: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iss: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aud: Option<String>,
    #[serde(default)]
    pub ssegate: Grants,
}

/// An authenticated caller.
#[derive(Debug, Clone)]
pub struct Principal {
    pub user: String,
    pub grants: Grants,
    /// Unix seconds after which the credentials are no longer valid.
    pub expires_at: Option<u64>,
}

impl Principal {
    pub fn may_subscribe(&self, channel: &str) -> bool {
        self.grants
            .subscribe
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
    #[error("the token is invalid: {0}")]
    Invalid(String),
}

impl AuthError {
    pub fn code(&self) -> &'static str {
        match self {
            AuthError::Missing => "missing_credentials",
            AuthError::Expired => "token_expired",
            AuthError::NotYetValid => "token_not_yet_valid",
            AuthError::Invalid(_) => "invalid_token",
        }
    }
}

/// Verifies and mints tokens with the configured secret.
pub struct Auth {
    decoding: DecodingKey,
    encoding: EncodingKey,
    validation: Validation,
    pub cookie_name: String,
    pub allow_query_token: bool,
}

const HMAC: [Algorithm; 3] = [Algorithm::HS256, Algorithm::HS384, Algorithm::HS512];

impl Auth {
    pub fn new(cfg: &AuthConfig, secret: &str) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.algorithms = HMAC.to_vec();
        validation.leeway = cfg.leeway_s;
        validation.validate_nbf = true;
        validation.required_spec_claims =
            ["sub".to_string(), "exp".to_string()].into_iter().collect();
        validation.validate_aud = cfg.audience.is_some();
        if let Some(aud) = &cfg.audience {
            validation.set_audience(&[aud]);
        }
        if let Some(iss) = &cfg.issuer {
            validation.set_issuer(&[iss]);
        }
        Self {
            decoding: DecodingKey::from_secret(secret.as_bytes()),
            encoding: EncodingKey::from_secret(secret.as_bytes()),
            validation,
            cookie_name: cfg.cookie_name.clone(),
            allow_query_token: cfg.allow_query_token,
        }
    }

    /// Verifies a token and returns who it is.
    pub fn verify(&self, token: &str) -> Result<Principal, AuthError> {
        use jsonwebtoken::errors::ErrorKind;
        let data = jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation)
            .map_err(|e| match e.kind() {
                ErrorKind::ExpiredSignature => AuthError::Expired,
                ErrorKind::ImmatureSignature => AuthError::NotYetValid,
                ErrorKind::InvalidSignature => AuthError::Invalid("bad signature".into()),
                ErrorKind::InvalidAlgorithm => AuthError::Invalid("algorithm not allowed".into()),
                ErrorKind::InvalidIssuer => AuthError::Invalid("wrong issuer".into()),
                ErrorKind::InvalidAudience => AuthError::Invalid("wrong audience".into()),
                ErrorKind::MissingRequiredClaim(c) => {
                    AuthError::Invalid(format!("missing claim `{c}`"))
                }
                _ => AuthError::Invalid("malformed token".into()),
            })?;
        let claims = data.claims;
        if claims.sub.is_empty()
            || claims.sub.len() > 256
            || claims.sub.chars().any(char::is_control)
        {
            return Err(AuthError::Invalid(
                "`sub` must be 1 to 256 printable characters".into(),
            ));
        }
        for p in claims
            .ssegate
            .subscribe
            .iter()
            .chain(&claims.ssegate.publish)
        {
            validate_pattern(p)
                .map_err(|e| AuthError::Invalid(format!("grant pattern {p:?}: {e}")))?;
        }
        Ok(Principal {
            user: claims.sub,
            grants: claims.ssegate,
            expires_at: claims.exp,
        })
    }

    /// Mints an HS256 token for `sub` with `grants`, valid for `ttl_s` seconds.
    pub fn mint(&self, sub: &str, grants: Grants, ttl_s: u64) -> Result<String, AuthError> {
        for p in grants.subscribe.iter().chain(&grants.publish) {
            validate_pattern(p)
                .map_err(|e| AuthError::Invalid(format!("grant pattern {p:?}: {e}")))?;
        }
        let now = crate::time::now_ms() / 1000;
        let claims = Claims {
            sub: sub.to_owned(),
            exp: Some(now + ttl_s),
            nbf: None,
            iat: Some(now),
            iss: self
                .validation
                .iss
                .as_ref()
                .and_then(|s| s.iter().next().cloned()),
            aud: self
                .validation
                .aud
                .as_ref()
                .and_then(|s| s.iter().next().cloned()),
            ssegate: grants,
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .map_err(|e| AuthError::Invalid(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth() -> Auth {
        Auth::new(&AuthConfig::default(), "test-secret-0123456789")
    }

    fn grants(sub: &[&str]) -> Grants {
        Grants {
            subscribe: sub.iter().map(|s| s.to_string()).collect(),
            ..Grants::default()
        }
    }

    #[test]
    fn minted_tokens_verify_with_their_grants() {
        let a = auth();
        let t = a.mint("u1", grants(&["notifications:{sub}"]), 60).unwrap();
        let p = a.verify(&t).unwrap();
        assert_eq!(p.user, "u1");
        assert!(p.may_subscribe("notifications:u1"));
        assert!(!p.may_subscribe("notifications:u2"));
        assert!(!p.may_publish("notifications:u1"));
    }

    #[test]
    fn wrong_secret_and_alg_none_are_refused() {
        let t = Auth::new(&AuthConfig::default(), "another-secret-0123456789")
            .mint("u1", grants(&["a"]), 60)
            .unwrap();
        assert!(matches!(auth().verify(&t), Err(AuthError::Invalid(_))));
        // {"alg":"none","typ":"JWT"} . {"sub":"u1","ssegate":{"subscribe":["**"]}} . (empty)
        let none = "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.eyJzdWIiOiJ1MSIsInNzZWdhdGUiOnsic3Vic2NyaWJlIjpbIioqIl19fQ.";
        assert!(auth().verify(none).is_err());
    }

    #[test]
    fn a_token_without_exp_is_refused() {
        let claims = serde_json::json!({"sub": "u1", "ssegate": {"subscribe": ["**"]}});
        let t = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(b"test-secret-0123456789"),
        )
        .unwrap();
        assert_eq!(
            auth().verify(&t).unwrap_err(),
            AuthError::Invalid("missing claim `exp`".into())
        );
    }
}
