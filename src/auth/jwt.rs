//! JWT verification against the configured keys.
//!
//! Keys: the shared secret (`auth.jwt_secret`, HS256/384/512), a PEM public key file
//! (`auth.jwt_public_key_file`: RSA → RS*/PS*, EC P-256 → ES256, P-384 → ES384, Ed25519 →
//! EdDSA) and the keys of a JWKS document (`auth.jwks_url`, chosen by `kid`). Every key has
//! an explicit algorithm allow-list, always within its own family, so `none` and algorithm
//! confusion (an HS256 token "signed" with an RSA public key) can never verify. `exp` is
//! required, `exp`/`nbf` are checked with `auth.leeway_s`, `iss`/`aud` when configured.
//!
//! Header and claims are read strictly, before any key is looked at ([`read_token`]): a JSON
//! object naming a member twice, at any depth, is refused (serde_json would keep the last
//! one, another parser the first, so the token would say two things); so is any `crit`
//! header (RFC 7515 §4.1.11: ssegate understands no extension), and a registered claim of
//! the wrong type (`exp`/`nbf`/`iat` not a number `jsonwebtoken` can compare — it would
//! silently skip an `nbf` it cannot read —, `sub`/`iss` not a string, `aud` not a string or
//! a list of strings).

use std::cell::Cell;
use std::fmt;
use std::sync::Arc;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value};

use super::jwks::Jwks;
use super::keys::{Key, KeyKind};
use super::AuthError;
use crate::config::AuthConfig;

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
    /// Registered claims a token must carry (`sub` and `exp` for [`Self::new`]).
    required: Vec<String>,
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
        Ok(Self::with_keys(
            static_keys,
            jwks,
            cfg.leeway_s,
            cfg.issuer.clone(),
            cfg.audience.clone(),
            &["sub", "exp"],
        ))
    }

    /// A verifier of explicit keys, for a protocol with its own configuration (Mercure):
    /// `required` names the registered claims (`sub`, `exp`, `nbf`; `iss` and `aud` are
    /// required anyway when `issuer` / `audience` are set) a token must carry. Present
    /// `exp`/`nbf` are checked with `leeway` seconds whether required or not.
    pub fn with_keys(
        static_keys: Vec<Key>,
        jwks: Option<Arc<Jwks>>,
        leeway: u64,
        issuer: Option<String>,
        audience: Option<String>,
        required: &[&str],
    ) -> Self {
        Self {
            static_keys,
            jwks,
            leeway,
            issuer,
            audience,
            required: required.iter().map(|c| (*c).to_owned()).collect(),
        }
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
        v.required_spec_claims = self.required.iter().cloned().collect();
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

    /// Verifies signature, algorithm allow-list, `exp`/`nbf`, `iss`/`aud`, and that the
    /// required claims (`sub` and `exp` unless built [`Self::with_keys`]) are present; returns
    /// every claim.
    pub async fn verify(&self, token: &str) -> Result<Map<String, Value>, AuthError> {
        self.verify_from(token).await.map(|(claims, _)| claims)
    }

    /// [`Self::verify`], also saying which key verified the token: a static key (`true`),
    /// which cannot change while the server runs, or a JWKS key (`false`).
    pub async fn verify_from(&self, token: &str) -> Result<(Map<String, Value>, bool), AuthError> {
        // Strict reading first: a token that says two things, or asks for an extension we do
        // not have, is refused before it can cost a JWKS fetch.
        let claims = read_token(token)?;
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
            .map(|k| (k.as_ref(), false))
            .chain(self.static_keys.iter().map(|k| (k, true)));
        for (key, is_static) in keys {
            if !key.algorithms.contains(&alg) {
                continue;
            }
            tried = true;
            // The signature and the times are checked here; the claims returned are the ones
            // read strictly above (the same, since they name no member twice).
            match jsonwebtoken::decode::<IgnoredAny>(token, &key.decoding, &self.validation(alg)) {
                Ok(_) => return Ok((claims, is_static)),
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

/// Reads the header and the claims of a compact JWS strictly (see the module docs) and returns
/// the claims. Nothing here is trusted yet: the signature is checked afterwards.
pub fn read_token(token: &str) -> Result<Map<String, Value>, AuthError> {
    let mut parts = token.split('.');
    let (Some(header), Some(payload), Some(_), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(malformed());
    };
    let header = read_part(header, "header")?;
    if let Some(crit) = header.get("crit") {
        let names = crit
            .as_array()
            .filter(|names| !names.is_empty() && names.iter().all(Value::is_string));
        return Err(AuthError::Invalid(match names {
            Some(_) => "the token's header makes extensions critical (`crit`); this server supports none"
                .into(),
            None => "the token's header has a malformed `crit` (and this server supports no critical extension)"
                .into(),
        }));
    }
    let claims = read_part(payload, "payload")?;
    check_claim_types(&claims)?;
    Ok(claims)
}

fn malformed() -> AuthError {
    AuthError::Invalid("malformed token".into())
}

/// One base64url part of the token: a JSON object with no member named twice at any depth.
fn read_part(part: &str, what: &str) -> Result<Map<String, Value>, AuthError> {
    let json = URL_SAFE_NO_PAD.decode(part).map_err(|_| malformed())?;
    let duplicate = Cell::new(None);
    let mut de = serde_json::Deserializer::from_slice(&json);
    let value = UniqueNames {
        duplicate: &duplicate,
    }
    .deserialize(&mut de)
    .and_then(|v| de.end().map(|()| v));
    match (value, duplicate.take()) {
        (_, Some(name)) => Err(AuthError::Invalid(format!(
            "the token's {what} names the member {name:?} more than once"
        ))),
        (Ok(Value::Object(map)), None) => Ok(map),
        (Ok(_), None) => Err(AuthError::Invalid(format!(
            "the token's {what} is not a JSON object"
        ))),
        (Err(_), None) => Err(malformed()),
    }
}

/// Registered claims, when present, have their RFC 7519 types, in the form the verifier
/// reads them: a claim of another type must not be skipped as if it were absent.
fn check_claim_types(claims: &Map<String, Value>) -> Result<(), AuthError> {
    for name in ["exp", "nbf", "iat"] {
        // `jsonwebtoken` reads a NumericDate into a u64 (a fraction is rounded) and skips a
        // value it cannot read: so must it be readable.
        let readable = |v: &Value| {
            v.as_u64().is_some()
                || v.as_f64()
                    .is_some_and(|f| f.is_finite() && f >= 0.0 && f < u64::MAX as f64)
        };
        if claims.get(name).is_some_and(|v| !readable(v)) {
            return Err(AuthError::Invalid(format!(
                "`{name}` must be a number of seconds since 1970 (0 or more)"
            )));
        }
    }
    for name in ["sub", "iss"] {
        if claims.get(name).is_some_and(|v| !v.is_string()) {
            return Err(AuthError::Invalid(format!("`{name}` must be a string")));
        }
    }
    let aud_ok = |v: &Value| match v {
        Value::String(_) => true,
        Value::Array(items) => items.iter().all(Value::is_string),
        _ => false,
    };
    if claims.get("aud").is_some_and(|v| !aud_ok(v)) {
        return Err(AuthError::Invalid(
            "`aud` must be a string or a list of strings".into(),
        ));
    }
    Ok(())
}

/// Deserializes any JSON value like `serde_json::Value`, but fails on an object member name
/// seen twice in the same object (compared after unescaping, so `"s\u0075b"` is `"sub"`),
/// and notes that name for the error message.
#[derive(Clone, Copy)]
struct UniqueNames<'a> {
    duplicate: &'a Cell<Option<String>>,
}

impl<'de> DeserializeSeed<'de> for UniqueNames<'_> {
    type Value = Value;

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for UniqueNames<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Value, E> {
        Number::from_f64(v)
            .map(Value::Number)
            .ok_or_else(|| E::custom("not a finite number"))
    }

    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }

    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element_seed(self)? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut members = Map::new();
        while let Some(name) = map.next_key::<String>()? {
            if members.contains_key(&name) {
                self.duplicate.set(Some(name));
                return Err(de::Error::custom("a member name is repeated"));
            }
            let value = map.next_value_seed(self)?;
            members.insert(name, value);
        }
        Ok(Value::Object(members))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An unsigned token with these header and payload texts (`read_token` reads, never
    /// verifies).
    fn token(header: &str, payload: &str) -> String {
        format!(
            "{}.{}.sig",
            URL_SAFE_NO_PAD.encode(header),
            URL_SAFE_NO_PAD.encode(payload)
        )
    }

    fn read(header: &str, payload: &str) -> Result<Map<String, Value>, String> {
        read_token(&token(header, payload)).map_err(|e| match e {
            AuthError::Invalid(m) => m,
            e => panic!("not an invalid-token error: {e:?}"),
        })
    }

    const H: &str = r#"{"alg":"HS256"}"#;

    #[test]
    fn a_plain_token_is_read_whole() {
        let c = read(
            H,
            r#"{"sub":"u1","exp":1.5,"aud":["a"],"x":{"y":[1,{"z":null}]}}"#,
        )
        .unwrap();
        assert_eq!(
            Value::Object(c),
            serde_json::json!({"sub":"u1","exp":1.5,"aud":["a"],"x":{"y":[1,{"z":null}]}})
        );
    }

    #[test]
    fn a_member_named_twice_is_refused_at_any_depth() {
        for (header, payload, name) in [
            (H, r#"{"sub":"a","sub":"b"}"#, "sub"),
            (H, r#"{"sub":"a","s\u0075b":"b"}"#, "sub"),
            (H, r#"{"x":{"y":1,"y":1}}"#, "y"),
            (H, r#"{"x":[[{"y":1,"y":2}]]}"#, "y"),
            (r#"{"alg":"HS256","kid":"a","kid":"b"}"#, "{}", "kid"),
        ] {
            let e = read(header, payload).unwrap_err();
            assert!(
                e.contains(&format!("{name:?} more than once")),
                "{payload}: {e}"
            );
        }
        // Equal names in different objects are fine.
        read(H, r#"{"a":{"id":1},"b":{"id":1},"id":[{"id":1},{"id":2}]}"#).unwrap();
    }

    #[test]
    fn any_crit_is_refused() {
        for crit in [
            r#"["b64"]"#,
            r#"["x","y"]"#,
            "[]",
            r#""x""#,
            "[1]",
            "null",
            "{}",
        ] {
            let e = read(&format!(r#"{{"alg":"HS256","crit":{crit}}}"#), "{}").unwrap_err();
            assert!(e.contains("`crit`"), "{crit}: {e}");
        }
    }

    #[test]
    fn registered_claims_must_have_their_types() {
        for (claims, fragment) in [
            (r#"{"nbf":"1"}"#, "`nbf` must be a number"),
            (r#"{"nbf":-1}"#, "`nbf` must be a number"),
            (r#"{"nbf":1e30}"#, "`nbf` must be a number"),
            (r#"{"exp":[1]}"#, "`exp` must be a number"),
            (r#"{"iat":null}"#, "`iat` must be a number"),
            (r#"{"sub":1}"#, "`sub` must be a string"),
            (r#"{"iss":["a"]}"#, "`iss` must be a string"),
            (
                r#"{"aud":1}"#,
                "`aud` must be a string or a list of strings",
            ),
            (
                r#"{"aud":["a",null]}"#,
                "`aud` must be a string or a list of strings",
            ),
        ] {
            let e = read(H, claims).unwrap_err();
            assert!(e.contains(fragment), "{claims}: {e}");
        }
        read(
            H,
            r#"{"nbf":0,"exp":1e10,"iat":1.5,"sub":"","iss":"i","aud":[]}"#,
        )
        .unwrap();
    }

    #[test]
    fn what_is_not_two_json_objects_is_malformed() {
        for t in [
            "a.b".to_owned(),
            "a.b.c.d".to_owned(),
            token(H, "{} x"),
            token(H, r#"{"a":1"#),
            token("{", "{}"),
            format!("{}.e30=.s", URL_SAFE_NO_PAD.encode(H)),
        ] {
            assert_eq!(read_token(&t).unwrap_err(), malformed(), "{t}");
        }
        let e = read(H, "[1]").unwrap_err();
        assert_eq!(e, "the token's payload is not a JSON object");
    }
}
