//! JWT verification against the configured keys.
//!
//! Keys: the shared secret (`auth.jwt_secret`, HS256/384/512), a PEM public key file
//! (`auth.jwt_public_key_file`: RSA → RS*/PS*, EC P-256 → ES256, P-384 → ES384, Ed25519 →
//! EdDSA) and the keys of a JWKS document (`auth.jwks_url`, chosen by `kid`). Every key has
//! an explicit algorithm allow-list, always within its own family, so `none` and algorithm
//! confusion (an HS256 token "signed" with an RSA public key) can never verify. `exp` is
//! required, `exp`/`nbf` are checked with `auth.leeway_s`, `iss`/`aud` when configured.

use std::sync::Arc;

use base64::Engine;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{Map, Value};

use super::jwks::Jwks;
use super::AuthError;
use crate::config::AuthConfig;

/// A verification key and the algorithms it may verify.
pub struct Key {
    pub decoding: DecodingKey,
    pub algorithms: Vec<Algorithm>,
    /// The JWKS key id, if the key came from a JWKS document.
    pub kid: Option<String>,
}

const HMAC: [Algorithm; 3] = [Algorithm::HS256, Algorithm::HS384, Algorithm::HS512];
const RSA: [Algorithm; 6] = [
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
];

/// The algorithm family of a key, which bounds its allow-list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    Hmac,
    Rsa,
    EcP256,
    EcP384,
    Ed25519,
}

impl KeyKind {
    /// Every algorithm a key of this kind can verify.
    pub fn algorithms(self) -> Vec<Algorithm> {
        match self {
            KeyKind::Hmac => HMAC.to_vec(),
            KeyKind::Rsa => RSA.to_vec(),
            KeyKind::EcP256 => vec![Algorithm::ES256],
            KeyKind::EcP384 => vec![Algorithm::ES384],
            KeyKind::Ed25519 => vec![Algorithm::EdDSA],
        }
    }
}

/// Parses an allow-list from the configuration: names are checked, and each must be one the
/// key kind can verify. Empty means every algorithm of the kind.
pub fn allow_list(
    setting: &str,
    names: &[String],
    kind: KeyKind,
) -> Result<Vec<Algorithm>, String> {
    let possible = kind.algorithms();
    if names.is_empty() {
        return Ok(possible);
    }
    names
        .iter()
        .map(|n| {
            let alg: Algorithm = n
                .parse()
                .map_err(|_| format!("{setting}: unknown algorithm {n:?}"))?;
            if !possible.contains(&alg) {
                return Err(format!(
                    "{setting}: {n} cannot be used with a {kind:?} key (possible: {possible:?})"
                ));
            }
            Ok(alg)
        })
        .collect()
}

/// Reads a PEM public key: its kind (from the algorithm and curve identifiers inside) and
/// the decoding key.
pub fn pem_key(pem: &[u8]) -> Result<(KeyKind, DecodingKey), String> {
    let text = std::str::from_utf8(pem).map_err(|_| "the key file is not PEM text".to_owned())?;
    if text.contains("PRIVATE KEY") {
        return Err("the key file holds a private key; give the public key".into());
    }
    let body: String = text
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .map(str::trim)
        .collect();
    let der = base64::engine::general_purpose::STANDARD
        .decode(body)
        .map_err(|_| "the key file is not PEM".to_owned())?;
    let has = |oid: &[u8]| der.windows(oid.len()).any(|w| w == oid);
    // DER-encoded object identifiers.
    const RSA_ENCRYPTION: &[u8] = &[
        0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01,
    ];
    const EC_PUBLIC_KEY: &[u8] = &[0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];
    const P256: &[u8] = &[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
    const P384: &[u8] = &[0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x22];
    const ED25519: &[u8] = &[0x06, 0x03, 0x2b, 0x65, 0x70];
    let bad = |e: jsonwebtoken::errors::Error| format!("cannot read the public key: {e}");
    if text.contains("BEGIN RSA PUBLIC KEY") || has(RSA_ENCRYPTION) {
        return Ok((KeyKind::Rsa, DecodingKey::from_rsa_pem(pem).map_err(bad)?));
    }
    if has(EC_PUBLIC_KEY) {
        let kind = if has(P256) {
            KeyKind::EcP256
        } else if has(P384) {
            KeyKind::EcP384
        } else {
            return Err("unsupported elliptic curve; use P-256 or P-384".into());
        };
        return Ok((kind, DecodingKey::from_ec_pem(pem).map_err(bad)?));
    }
    if has(ED25519) {
        return Ok((
            KeyKind::Ed25519,
            DecodingKey::from_ed_pem(pem).map_err(bad)?,
        ));
    }
    Err("unsupported public key type; use RSA, EC P-256/P-384 or Ed25519".into())
}

/// Verifies tokens against the configured keys.
pub struct JwtVerifier {
    static_keys: Vec<Key>,
    jwks: Option<Arc<Jwks>>,
    leeway: u64,
    issuer: Option<String>,
    audience: Option<String>,
}

impl JwtVerifier {
    /// Builds the verifier; errors name the bad setting.
    pub fn new(cfg: &AuthConfig, jwks: Option<Arc<Jwks>>) -> Result<Self, String> {
        let mut static_keys = Vec::new();
        if let Some(secret) = &cfg.jwt_secret {
            static_keys.push(Key {
                decoding: DecodingKey::from_secret(secret.as_bytes()),
                algorithms: allow_list(
                    "auth.jwt_secret_algorithms",
                    &cfg.jwt_secret_algorithms,
                    KeyKind::Hmac,
                )?,
                kid: None,
            });
        }
        if let Some(path) = &cfg.jwt_public_key_file {
            let pem = std::fs::read(path).map_err(|e| {
                format!(
                    "auth.jwt_public_key_file: cannot read {}: {e}",
                    path.display()
                )
            })?;
            let (kind, decoding) =
                pem_key(&pem).map_err(|e| format!("auth.jwt_public_key_file: {e}"))?;
            static_keys.push(Key {
                decoding,
                algorithms: allow_list(
                    "auth.jwt_public_key_algorithms",
                    &cfg.jwt_public_key_algorithms,
                    kind,
                )?,
                kid: None,
            });
        }
        Ok(Self {
            static_keys,
            jwks,
            leeway: cfg.leeway_s,
            issuer: cfg.issuer.clone(),
            audience: cfg.audience.clone(),
        })
    }

    /// Whether any key is configured (otherwise tokens are not this verifier's business).
    pub fn has_keys(&self) -> bool {
        !self.static_keys.is_empty() || self.jwks.is_some()
    }

    fn validation(&self, alg: Algorithm) -> Validation {
        let mut v = Validation::new(alg);
        v.algorithms = vec![alg];
        v.leeway = self.leeway;
        v.validate_nbf = true;
        v.required_spec_claims = ["sub".to_string(), "exp".to_string()].into_iter().collect();
        v.validate_aud = self.audience.is_some();
        // A configured issuer or audience is required, not merely checked when present: a
        // token the same key signed for another purpose, without these claims, must not pass.
        if let Some(aud) = &self.audience {
            v.set_audience(&[aud]);
            v.required_spec_claims.insert("aud".to_string());
        }
        if let Some(iss) = &self.issuer {
            v.set_issuer(&[iss]);
            v.required_spec_claims.insert("iss".to_string());
        }
        v
    }

    /// Verifies signature, algorithm allow-list, `exp`/`nbf`, `iss`/`aud`, and that `sub`
    /// and `exp` are present; returns every claim.
    pub async fn verify(&self, token: &str) -> Result<Map<String, Value>, AuthError> {
        let header = jsonwebtoken::decode_header(token)
            .map_err(|_| AuthError::Invalid("malformed token".into()))?;
        let alg = header.alg;
        let mut tried = false;
        let mut last = AuthError::Invalid("algorithm not allowed".into());
        // A token naming a key id is checked against that JWKS key (fetched again, within
        // the refresh rate limit, if unknown); the static keys serve tokens without one and
        // tokens of issuers that put a `kid` on everything.
        let jwks_keys = match (&self.jwks, &header.kid) {
            (Some(jwks), Some(kid)) => jwks.keys_for(kid).await,
            _ => Vec::new(),
        };
        let keys = jwks_keys
            .iter()
            .map(|k| k.as_ref())
            .chain(self.static_keys.iter());
        for key in keys {
            if !key.algorithms.contains(&alg) {
                continue;
            }
            tried = true;
            match jsonwebtoken::decode::<Map<String, Value>>(
                token,
                &key.decoding,
                &self.validation(alg),
            ) {
                Ok(data) => return Ok(data.claims),
                // A bad signature may just be the wrong key of several: try the next one.
                Err(e) if matches!(e.kind(), ErrorKind::InvalidSignature) => {
                    last = AuthError::Invalid("bad signature".into());
                }
                Err(e) => return Err(classify(e.kind())),
            }
        }
        if !tried && jwks_keys.is_empty() && header.kid.is_some() && self.jwks.is_some() {
            return Err(AuthError::Invalid("unknown key id (`kid`)".into()));
        }
        Err(last)
    }
}

fn classify(kind: &ErrorKind) -> AuthError {
    match kind {
        ErrorKind::ExpiredSignature => AuthError::Expired,
        ErrorKind::ImmatureSignature => AuthError::NotYetValid,
        ErrorKind::InvalidSignature => AuthError::Invalid("bad signature".into()),
        ErrorKind::InvalidAlgorithm => AuthError::Invalid("algorithm not allowed".into()),
        ErrorKind::InvalidIssuer => AuthError::Invalid("wrong issuer".into()),
        ErrorKind::InvalidAudience => AuthError::Invalid("wrong audience".into()),
        ErrorKind::MissingRequiredClaim(c) => AuthError::Invalid(format!("missing claim `{c}`")),
        _ => AuthError::Invalid("malformed token".into()),
    }
}
