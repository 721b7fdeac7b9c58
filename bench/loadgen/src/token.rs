//! HS256 tokens in ssegate's claim format (`sub`, `iat`, `exp`, and the grants under
//! `ssegate`; see docs/auth.md), minted with the gateway's `auth.jwt_secret`, and in the
//! Mercure hub's draft-07 format (the same registered claims, the topic selectors under
//! `mercure`), minted with `mercure.jwt_secret`. No `iss`/`aud`: the benchmarks' gateways
//! configure neither.

use jsonwebtoken::{encode, EncodingKey, Header};

/// The channel patterns a token may subscribe and publish to, and whether it is an admin.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Grants {
    pub subscribe: Vec<String>,
    pub publish: Vec<String>,
    pub admin: bool,
}

/// Mints tokens with one HS256 secret.
pub struct Minter {
    key: EncodingKey,
}

impl Minter {
    pub fn new(secret: &str) -> Self {
        Self {
            key: EncodingKey::from_secret(secret.as_bytes()),
        }
    }

    /// A token for `sub` with `grants`, valid for `ttl_s` seconds from now.
    pub fn mint(&self, sub: &str, grants: Grants, ttl_s: u64) -> anyhow::Result<String> {
        let now = crate::now_ms() / 1000;
        let claims = serde_json::json!({
            "sub": sub,
            "iat": now,
            "exp": now + ttl_s,
            "ssegate": {
                "subscribe": grants.subscribe,
                "publish": grants.publish,
                "admin": grants.admin,
            },
        });
        self.sign(sub, &claims)
    }

    /// A draft-07 Mercure token for `sub` (`{"mercure":{"subscribe":[...],"publish":[...]}}`,
    /// the selectors as given, e.g. `*`), valid for `ttl_s` seconds from now.
    pub fn mint_mercure(
        &self,
        sub: &str,
        subscribe: &[&str],
        publish: &[&str],
        ttl_s: u64,
    ) -> anyhow::Result<String> {
        let now = crate::now_ms() / 1000;
        let claims = serde_json::json!({
            "sub": sub,
            "iat": now,
            "exp": now + ttl_s,
            "mercure": { "subscribe": subscribe, "publish": publish },
        });
        self.sign(sub, &claims)
    }

    fn sign(&self, sub: &str, claims: &serde_json::Value) -> anyhow::Result<String> {
        encode(&Header::default(), claims, &self.key)
            .map_err(|e| anyhow::anyhow!("cannot mint a token for {sub:?}: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{decode, Algorithm, DecodingKey, Validation};

    #[test]
    fn claims_are_in_ssegates_format() {
        let secret = "secret-0123456789";
        let t = Minter::new(secret)
            .mint(
                "u1",
                Grants {
                    subscribe: vec!["logs:*".into()],
                    ..Grants::default()
                },
                60,
            )
            .unwrap();
        let c = claims(&t, secret);
        assert_eq!(c["sub"], "u1");
        assert_eq!(c["exp"].as_u64().unwrap() - c["iat"].as_u64().unwrap(), 60);
        assert_eq!(
            c["ssegate"],
            serde_json::json!({"subscribe": ["logs:*"], "publish": [], "admin": false})
        );
    }

    /// The claims of `token`, verified with `secret`.
    fn claims(token: &str, secret: &str) -> serde_json::Value {
        decode::<serde_json::Value>(
            token,
            &DecodingKey::from_secret(secret.as_bytes()),
            &Validation::new(Algorithm::HS256),
        )
        .unwrap()
        .claims
    }

    #[test]
    fn mercure_claims_are_draft_07() {
        let secret = "secret-0123456789";
        let t = Minter::new(secret)
            .mint_mercure("p", &[], &["*"], 60)
            .unwrap();
        let c = claims(&t, secret);
        assert_eq!(c["sub"], "p");
        assert_eq!(c["exp"].as_u64().unwrap() - c["iat"].as_u64().unwrap(), 60);
        assert_eq!(
            c["mercure"],
            serde_json::json!({"subscribe": [], "publish": ["*"]})
        );
        assert!(c.get("ssegate").is_none());
    }
}
