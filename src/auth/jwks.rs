//! The keys of an identity provider's JWKS document, fetched and kept fresh.
//!
//! Keys are cached for `auth.jwks_cache_s`. A token naming a `kid` the cache does not know
//! triggers a refetch (key rotation needs no restart), but at most once per
//! `auth.jwks_min_refresh_interval_ms` and one fetch at a time: a storm of tokens with
//! made-up `kid`s costs the identity provider one request per interval. A failed fetch keeps
//! the keys already known. Keys of unsupported types, encryption keys and symmetric (`oct`)
//! keys are skipped: a JWKS document never supplies an HMAC secret.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey};
use tokio::time::Instant;

use super::keys::{Key, KeyKind};

pub struct Jwks {
    url: String,
    http: reqwest::Client,
    cache_for: Duration,
    min_refresh: Duration,
    /// Algorithms any JWKS key may verify (empty: those of its type).
    allowed: Vec<Algorithm>,
    keys: RwLock<Arc<Vec<Arc<Key>>>>,
    /// Serializes fetches and remembers when the last one started.
    fetch: tokio::sync::Mutex<FetchState>,
    /// When keys were last fetched successfully; read without waiting for a fetch in
    /// progress, so verifying with a known, fresh key never waits on the identity provider.
    last_success: std::sync::Mutex<Option<Instant>>,
    /// Fetches attempted (the `ssegate_jwks_fetches` metric).
    fetches: prometheus_client::metrics::counter::Counter,
}

#[derive(Default)]
struct FetchState {
    last_attempt: Option<Instant>,
}

/// Why a JWKS document could not be used.
#[derive(Debug, thiserror::Error)]
pub enum JwksError {
    #[error("cannot fetch {url}: {message}")]
    Fetch { url: String, message: String },
    #[error("{url} is not a JWKS document: {message}")]
    Parse { url: String, message: String },
}

impl Jwks {
    pub fn new(
        url: String,
        http: reqwest::Client,
        cache_for: Duration,
        min_refresh: Duration,
        allowed: Vec<Algorithm>,
        fetches: prometheus_client::metrics::counter::Counter,
    ) -> Self {
        Self {
            url,
            http,
            cache_for,
            min_refresh,
            allowed,
            keys: RwLock::new(Arc::new(Vec::new())),
            fetch: tokio::sync::Mutex::new(FetchState::default()),
            last_success: std::sync::Mutex::new(None),
            fetches,
        }
    }

    fn snapshot(&self) -> Arc<Vec<Arc<Key>>> {
        self.keys.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn find(&self, kid: &str) -> Vec<Arc<Key>> {
        self.snapshot()
            .iter()
            .filter(|k| k.kid.as_deref() == Some(kid))
            .cloned()
            .collect()
    }

    /// The keys with this id, refetching the document when the id is unknown or the cache is
    /// old (within the refresh rate limit).
    pub async fn keys_for(&self, kid: &str) -> Vec<Arc<Key>> {
        let found = self.find(kid);
        let stale = self
            .last_success
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_none_or(|t| t.elapsed() >= self.cache_for);
        if !found.is_empty() && !stale {
            return found;
        }
        // A known key whose cache is old is still used while someone else fetches.
        if !found.is_empty() && self.fetch.try_lock().is_err() {
            return found;
        }
        if let Err(e) = self.refresh().await {
            tracing::warn!(error = %e, "JWKS refresh failed; keeping the keys already known");
        }
        let now = self.find(kid);
        if now.is_empty() {
            found
        } else {
            now
        }
    }

    /// Fetches the document unless a fetch started less than `min_refresh` ago.
    pub async fn refresh(&self) -> Result<(), JwksError> {
        let mut state = self.fetch.lock().await;
        if state
            .last_attempt
            .is_some_and(|t| t.elapsed() < self.min_refresh)
        {
            return Ok(());
        }
        state.last_attempt = Some(Instant::now());
        self.fetches.inc();
        let keys = self.fetch_keys().await?;
        tracing::info!(url = %self.url, keys = keys.len(), "JWKS keys loaded");
        *self.keys.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(keys);
        *self.last_success.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
        Ok(())
    }

    async fn fetch_keys(&self) -> Result<Vec<Arc<Key>>, JwksError> {
        let fetch_err = |e: reqwest::Error| JwksError::Fetch {
            url: self.url.clone(),
            message: e.to_string(),
        };
        let res = self
            .http
            .get(&self.url)
            .timeout(Duration::from_secs(5))
            .send()
            .await
            .map_err(fetch_err)?
            .error_for_status()
            .map_err(fetch_err)?;
        let doc: serde_json::Value = res.json().await.map_err(|e| JwksError::Parse {
            url: self.url.clone(),
            message: e.to_string(),
        })?;
        let Some(list) = doc.get("keys").and_then(|k| k.as_array()) else {
            return Err(JwksError::Parse {
                url: self.url.clone(),
                message: "no `keys` array".into(),
            });
        };
        // One odd key must not take the others down: each is read on its own.
        Ok(list
            .iter()
            .filter_map(|v| serde_json::from_value::<Jwk>(v.clone()).ok())
            .filter_map(|jwk| self.key(&jwk))
            .map(Arc::new)
            .collect())
    }

    fn key(&self, jwk: &Jwk) -> Option<Key> {
        if matches!(
            jwk.common.public_key_use,
            Some(PublicKeyUse::Encryption) | Some(PublicKeyUse::Other(_))
        ) {
            return None;
        }
        let kind = match &jwk.algorithm {
            AlgorithmParameters::RSA(_) => KeyKind::Rsa,
            AlgorithmParameters::EllipticCurve(p) => match p.curve {
                EllipticCurve::P256 => KeyKind::EcP256,
                EllipticCurve::P384 => KeyKind::EcP384,
                _ => return None,
            },
            AlgorithmParameters::OctetKeyPair(p) if p.curve == EllipticCurve::Ed25519 => {
                KeyKind::Ed25519
            }
            _ => return None,
        };
        let mut algorithms = kind.algorithms();
        if let Some(alg) = &jwk.common.key_algorithm {
            let alg: Algorithm = alg.to_string().parse().ok()?;
            algorithms.retain(|a| *a == alg);
        }
        if !self.allowed.is_empty() {
            algorithms.retain(|a| self.allowed.contains(a));
        }
        if algorithms.is_empty() {
            return None;
        }
        Some(Key {
            decoding: DecodingKey::from_jwk(jwk).ok()?,
            algorithms,
            kid: jwk.common.key_id.clone(),
        })
    }
}
