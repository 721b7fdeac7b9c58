//! HS256 tokens for the soak's users, publishers and admin, minted with the node's secret.

use std::time::{SystemTime, UNIX_EPOCH};

use jsonwebtoken::{encode, EncodingKey, Header};
use serde_json::{json, Value};

pub struct Minter {
    key: EncodingKey,
}

impl Minter {
    pub fn new(secret: &str) -> Minter {
        Minter {
            key: EncodingKey::from_secret(secret.as_bytes()),
        }
    }

    /// A subscriber of every soak channel, valid for `ttl_s` seconds from now.
    pub fn subscriber(&self, user: &str, ttl_s: u64) -> String {
        self.mint(user, ttl_s, json!({ "subscribe": ["soak:*"] }))
    }

    /// A publisher of every soak channel.
    pub fn publisher(&self, user: &str, ttl_s: u64) -> String {
        self.mint(user, ttl_s, json!({ "publish": ["soak:**"] }))
    }

    /// An administrator (kicks, status, drain).
    pub fn admin(&self, ttl_s: u64) -> String {
        self.mint("soak-admin", ttl_s, json!({ "admin": true }))
    }

    fn mint(&self, sub: &str, ttl_s: u64, grants: Value) -> String {
        let claims = json!({ "sub": sub, "exp": unix_s() + ttl_s, "ssegate": grants });
        // Encoding a JSON object with an HMAC key cannot fail.
        encode(&Header::default(), &claims, &self.key).unwrap_or_default()
    }
}

pub fn unix_s() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
