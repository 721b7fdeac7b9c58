//! Tokens already verified, by their exact text, so that a publisher sending the same token
//! with every request pays for one signature check, not one per request.
//!
//! Only what cannot change while the server runs is remembered: a token verified with a
//! static key (`auth.jwt_secret`, `auth.jwt_public_key_file`), never one a JWKS key verified
//! (the document is refetched and keys rotate), and never a refusal. The signature, the
//! algorithm, `iss`, `aud`, the strict reading and the grants depend only on the token's
//! text and the configuration, so they hold for every later request with the same text;
//! the times do not, so every hit checks `exp` and `nbf` again, exactly as `jsonwebtoken`
//! does (same clock, same leeway, same order: expiry first), and a token that has expired
//! is refused with the same error as before and forgotten.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::{Arc, RwLock};

use serde_json::{Map, Value};

use super::{AuthError, Principal};

/// The most tokens remembered; beyond it, expired ones are dropped, then all.
const MAX_ENTRIES: usize = 4096;
/// Longer tokens are verified every time (bounds the memory the cache holds).
const MAX_TOKEN_BYTES: usize = 4096;

/// Bytes of the token's end its key is made of: within the signature, which tells tokens
/// apart (the whole token is compared on a hit).
const KEY_BYTES: usize = 32;

struct Entry {
    token: Box<str>,
    principal: Arc<Principal>,
    /// `exp` and `nbf` in whole seconds, read as `jsonwebtoken` reads them.
    exp: u64,
    nbf: Option<u64>,
}

/// Verified tokens (see the module docs).
pub(super) struct Verified {
    leeway: u64,
    /// By [`Verified::key`]; two tokens with the same key (never in practice) take turns.
    entries: RwLock<HashMap<u64, Entry>>,
    hasher: RandomState,
}

/// A NumericDate as `jsonwebtoken` reads it: a u64, or a float rounded.
fn numeric_date(v: &Value) -> Option<u64> {
    v.as_u64().or_else(|| {
        v.as_f64()
            .filter(|f| f.is_finite() && *f >= 0.0 && *f < u64::MAX as f64)
            .map(|f| f.round() as u64)
    })
}

impl Verified {
    pub(super) fn new(leeway: u64) -> Self {
        Self {
            leeway,
            entries: RwLock::default(),
            hasher: RandomState::new(),
        }
    }

    /// A keyed hash of the token's length and last bytes: hashing the whole token would cost
    /// more than the rest of a hit.
    fn key(&self, token: &str) -> u64 {
        let tail = &token.as_bytes()[token.len().saturating_sub(KEY_BYTES)..];
        self.hasher.hash_one((token.len(), tail))
    }

    /// The principal of a token verified before, with `exp` and `nbf` checked as of `now`
    /// (Unix seconds); `None` when the token is not remembered.
    pub(super) fn get(&self, token: &str, now: u64) -> Option<Result<Arc<Principal>, AuthError>> {
        let key = self.key(token);
        let entries = self.entries.read().unwrap_or_else(|p| p.into_inner());
        let entry = entries.get(&key).filter(|e| *e.token == *token)?;
        // jsonwebtoken::validation::validate, with reject_tokens_expiring_in_less_than = 0.
        if entry.exp < now.wrapping_sub(self.leeway) {
            drop(entries);
            let mut entries = self.entries.write().unwrap_or_else(|p| p.into_inner());
            if entries.get(&key).is_some_and(|e| *e.token == *token) {
                entries.remove(&key);
            }
            return Some(Err(AuthError::Expired));
        }
        if entry
            .nbf
            .is_some_and(|nbf| nbf > now.wrapping_add(self.leeway))
        {
            return Some(Err(AuthError::NotYetValid));
        }
        Some(Ok(entry.principal.clone()))
    }

    /// Remembers a token a static key verified, with the claims it was verified with.
    pub(super) fn insert(
        &self,
        token: &str,
        claims: &Map<String, Value>,
        principal: &Arc<Principal>,
    ) {
        if token.len() > MAX_TOKEN_BYTES {
            return;
        }
        // `exp` is required and was read; a token without one never got here.
        let Some(exp) = claims.get("exp").and_then(numeric_date) else {
            return;
        };
        let nbf = match claims.get("nbf") {
            None => None,
            Some(v) => match numeric_date(v) {
                Some(n) => Some(n),
                // Unreadable (refused by the strict reading anyway): not remembered.
                None => return,
            },
        };
        let mut entries = self.entries.write().unwrap_or_else(|p| p.into_inner());
        if entries.len() >= MAX_ENTRIES {
            let now = jsonwebtoken::get_current_timestamp();
            entries.retain(|_, e| e.exp >= now.wrapping_sub(self.leeway));
            if entries.len() >= MAX_ENTRIES {
                entries.clear();
            }
        }
        entries.insert(
            self.key(token),
            Entry {
                token: token.into(),
                principal: principal.clone(),
                exp,
                nbf,
            },
        );
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.entries.read().unwrap().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::{Grants, Via};

    fn principal() -> Arc<Principal> {
        Arc::new(Principal {
            user: "u".into(),
            grants: Grants::default(),
            expires_at: Some(100),
            via: Via::Jwt,
        })
    }

    fn claims(v: serde_json::Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn hits_check_exp_and_nbf_with_the_leeway() {
        let c = Verified::new(5);
        c.insert(
            "t",
            &claims(serde_json::json!({"exp": 100, "nbf": 50})),
            &principal(),
        );
        assert!(c.get("other", 60).is_none());
        assert_eq!(c.get("t", 60).unwrap().unwrap().user, "u");
        assert_eq!(
            c.get("t", 105).unwrap().unwrap().user,
            "u",
            "within the leeway"
        );
        assert_eq!(c.get("t", 44).unwrap().unwrap_err(), AuthError::NotYetValid);
        assert_eq!(
            c.get("t", 45).unwrap().unwrap().user,
            "u",
            "nbf within the leeway"
        );
        assert_eq!(c.get("t", 106).unwrap().unwrap_err(), AuthError::Expired);
        assert!(c.get("t", 60).is_none(), "an expired token is forgotten");
    }

    #[test]
    fn a_float_exp_is_rounded_as_jsonwebtoken_does() {
        let c = Verified::new(0);
        c.insert("t", &claims(serde_json::json!({"exp": 99.5})), &principal());
        assert!(c.get("t", 100).unwrap().is_ok());
        assert_eq!(c.get("t", 101).unwrap().unwrap_err(), AuthError::Expired);
    }

    #[test]
    fn tokens_with_the_same_end_are_told_apart() {
        let c = Verified::new(0);
        let end = "s".repeat(KEY_BYTES);
        let far = claims(serde_json::json!({"exp": u64::MAX / 2}));
        c.insert(&format!("a.{end}"), &far, &principal());
        assert!(c.get(&format!("b.{end}"), 0).is_none());
        assert!(c.get(&format!("a.{end}"), 0).is_some());
        assert!(c.get(&end, 0).is_none());
    }

    #[test]
    fn the_cache_is_bounded() {
        let c = Verified::new(0);
        let far = serde_json::json!({"exp": u64::MAX / 2});
        for i in 0..MAX_ENTRIES + 10 {
            c.insert(&format!("t{i}"), &claims(far.clone()), &principal());
        }
        assert!(c.len() <= MAX_ENTRIES);
        c.insert(&"x".repeat(MAX_TOKEN_BYTES + 1), &claims(far), &principal());
        assert!(c.get(&"x".repeat(MAX_TOKEN_BYTES + 1), 0).is_none());
    }
}
