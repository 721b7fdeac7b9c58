//! JWT verification with real keys, and JWKS rotation against a real local JWKS server.
//!
//! Acceptance point: every algorithm — HS256/384/512, RS256/384/512, PS256 (and PS384/512),
//! ES256/384, EdDSA — verifies a valid token and rejects: wrong key, tampered payload,
//! `alg: none`, an algorithm not allowed for that key, expired, not yet valid, wrong `iss`,
//! wrong `aud`. JWKS rotation: a new `kid` published by a local JWKS server is picked up
//! without restart; an unknown-`kid` storm does not flood the JWKS server.
//!
//! Keys are made at test time by the `openssl` CLI (RSA 2048, EC P-256/P-384, Ed25519) and
//! tokens are signed with `jsonwebtoken`. Library-level tests drive `ssegate::auth::Auth`;
//! the `e2e_*` tests start the real `ssegate` binary (tests/common) and open real SSE streams.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use ssegate::auth::{Auth, AuthError};
use ssegate::config::AuthConfig;
use ssegate::metrics::Metrics;

use common::{bearer, Server, Sse};

const ISS: &str = "https://idp.example.test/";
const AUD: &str = "ssegate-tests";
const HMAC_SECRET: &str = "hmac-secret-for-the-jwt-tests-0123456789";
const OTHER_HMAC_SECRET: &str = "a-different-hmac-secret-0123456789abcdef";

const HMAC_ALGS: [Algorithm; 3] = [Algorithm::HS256, Algorithm::HS384, Algorithm::HS512];
const RSA_ALGS: [Algorithm; 6] = [
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
];

// ---------------------------------------------------------------------------------------
// Keys (openssl CLI) and tokens (jsonwebtoken)
// ---------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Rsa,
    P256,
    P384,
    Ed25519,
}

fn kind_of(alg: Algorithm) -> Option<Kind> {
    match alg {
        Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512 => None,
        Algorithm::ES256 => Some(Kind::P256),
        Algorithm::ES384 => Some(Kind::P384),
        Algorithm::EdDSA => Some(Kind::Ed25519),
        _ => Some(Kind::Rsa),
    }
}

fn alg_name(alg: Algorithm) -> String {
    format!("{alg:?}")
}

fn openssl(args: &[&str]) -> Vec<u8> {
    let out = Command::new("openssl")
        .args(args)
        .output()
        .expect("run the openssl CLI");
    assert!(
        out.status.success(),
        "openssl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// A key pair made by openssl: the private key (PKCS#8 PEM, as `genpkey` writes it) signs,
/// the public key (SPKI PEM) is what ssegate is configured with.
struct KeyPair {
    kind: Kind,
    private_pem: Vec<u8>,
    public_pem: Vec<u8>,
    public_path: PathBuf,
}

impl KeyPair {
    fn generate(dir: &Path, name: &str, kind: Kind) -> KeyPair {
        let private_path = dir.join(format!("{name}.key.pem"));
        let public_path = dir.join(format!("{name}.pub.pem"));
        let private = private_path.to_str().unwrap();
        let public = public_path.to_str().unwrap();
        let gen: &[&str] = match kind {
            Kind::Rsa => &["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"],
            Kind::P256 => &["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"],
            Kind::P384 => &["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-384"],
            Kind::Ed25519 => &["-algorithm", "ed25519"],
        };
        let mut args = vec!["genpkey"];
        args.extend_from_slice(gen);
        args.extend_from_slice(&["-out", private]);
        openssl(&args);
        openssl(&["pkey", "-in", private, "-pubout", "-out", public]);
        KeyPair {
            kind,
            private_pem: std::fs::read(&private_path).unwrap(),
            public_pem: std::fs::read(&public_path).unwrap(),
            public_path,
        }
    }

    fn encoding_key(&self) -> EncodingKey {
        let key = match self.kind {
            Kind::Rsa => EncodingKey::from_rsa_pem(&self.private_pem),
            Kind::P256 | Kind::P384 => EncodingKey::from_ec_pem(&self.private_pem),
            Kind::Ed25519 => EncodingKey::from_ed_pem(&self.private_pem),
        };
        key.unwrap_or_else(|e| panic!("{:?} private key not accepted: {e}", self.kind))
    }

    /// The DER of the public key (SubjectPublicKeyInfo).
    fn public_der(&self) -> Vec<u8> {
        let text = std::str::from_utf8(&self.public_pem).unwrap();
        let body: String = text
            .lines()
            .filter(|l| !l.starts_with("-----"))
            .map(str::trim)
            .collect();
        STANDARD.decode(body).unwrap()
    }

    /// The public key as a JWK (`alg` only when given).
    fn jwk(&self, kid: &str, alg: Option<&str>) -> Value {
        let der = self.public_der();
        let b64 = |b: &[u8]| URL_SAFE_NO_PAD.encode(b);
        let mut jwk = match self.kind {
            Kind::Rsa => {
                let path = self.public_path.to_str().unwrap();
                let text =
                    String::from_utf8(openssl(&["pkey", "-pubin", "-in", path, "-text", "-noout"]))
                        .unwrap();
                assert!(text.contains("Exponent: 65537 (0x10001)"), "{text}");
                let modulus = String::from_utf8(openssl(&[
                    "rsa", "-pubin", "-in", path, "-noout", "-modulus",
                ]))
                .unwrap();
                let hex = modulus.trim().strip_prefix("Modulus=").expect("modulus");
                let n: Vec<u8> = (0..hex.len())
                    .step_by(2)
                    .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
                    .collect();
                assert_eq!(n.len(), 256, "a 2048-bit modulus");
                json!({"kty": "RSA", "n": b64(&n), "e": "AQAB"})
            }
            Kind::P256 | Kind::P384 => {
                let (size, crv) = if self.kind == Kind::P256 {
                    (32, "P-256")
                } else {
                    (48, "P-384")
                };
                // The SPKI ends with the uncompressed point 04 || x || y.
                let point = &der[der.len() - (1 + 2 * size)..];
                assert_eq!(point[0], 0x04, "uncompressed EC point");
                json!({
                    "kty": "EC",
                    "crv": crv,
                    "x": b64(&point[1..1 + size]),
                    "y": b64(&point[1 + size..]),
                })
            }
            // The SPKI ends with the 32 raw bytes of the key.
            Kind::Ed25519 => {
                json!({"kty": "OKP", "crv": "Ed25519", "x": b64(&der[der.len() - 32..])})
            }
        };
        jwk["kid"] = kid.into();
        jwk["use"] = "sig".into();
        if let Some(alg) = alg {
            jwk["alg"] = alg.into();
        }
        jwk
    }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Valid claims for user `u1`: right `iss` and `aud`, an hour to live.
fn claims() -> Value {
    json!({
        "sub": "u1",
        "iss": ISS,
        "aud": AUD,
        "iat": now(),
        "exp": now() + 3600,
        "ssegate": {"subscribe": ["logs:**"], "publish": ["logs:**"]},
    })
}

fn sign(alg: Algorithm, key: &EncodingKey, kid: Option<&str>, claims: &Value) -> String {
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_owned);
    jsonwebtoken::encode(&header, claims, key)
        .unwrap_or_else(|e| panic!("cannot sign a {alg:?} token: {e}"))
}

fn b64_json(v: &Value) -> String {
    URL_SAFE_NO_PAD.encode(serde_json::to_vec(v).unwrap())
}

/// The token with one claim of its payload changed; header and signature kept.
fn tampered(token: &str, claim: &str, value: Value) -> String {
    let parts: Vec<&str> = token.split('.').collect();
    assert_eq!(parts.len(), 3);
    let mut payload: Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
    payload[claim] = value;
    format!("{}.{}.{}", parts[0], b64_json(&payload), parts[2])
}

/// `alg: none` forgeries of the token: the unsigned form and variants that keep the
/// signature or play with the case of `none`.
fn alg_none_forgeries(token: &str) -> Vec<(String, String)> {
    let parts: Vec<&str> = token.split('.').collect();
    let mut payload: Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
    payload["sub"] = "admin".into();
    payload["ssegate"] = json!({"subscribe": ["**"], "publish": ["**"], "admin": true});
    let forged = b64_json(&payload);
    let mut out = Vec::new();
    for alg in ["none", "None", "NONE", "nOnE"] {
        let header = b64_json(&json!({"alg": alg, "typ": "JWT"}));
        out.push((
            format!("alg {alg}, empty signature"),
            format!("{header}.{forged}."),
        ));
        out.push((
            format!("alg {alg}, original payload, empty signature"),
            format!("{header}.{}.", parts[1]),
        ));
        out.push((
            format!("alg {alg}, original payload and signature"),
            format!("{header}.{}.{}", parts[1], parts[2]),
        ));
    }
    out
}

// ---------------------------------------------------------------------------------------
// Auth under test
// ---------------------------------------------------------------------------------------

/// `iss` and `aud` required, no leeway: every time check is exact.
fn base_cfg() -> AuthConfig {
    AuthConfig {
        issuer: Some(ISS.into()),
        audience: Some(AUD.into()),
        leeway_s: 0,
        ..AuthConfig::default()
    }
}

fn auth_with(cfg: &AuthConfig) -> (Auth, Arc<Metrics>) {
    let metrics = Arc::new(Metrics::default());
    let auth = Auth::new(cfg, reqwest::Client::new(), metrics.clone())
        .unwrap_or_else(|e| panic!("auth configuration refused: {e}"));
    (auth, metrics)
}

fn auth_err(cfg: &AuthConfig) -> String {
    match Auth::new(cfg, reqwest::Client::new(), Arc::new(Metrics::default())) {
        Ok(_) => panic!("the configuration was accepted"),
        Err(e) => e,
    }
}

async fn expect_ok(auth: &Auth, token: &str, what: &str) {
    match auth.verify_jwt(token).await {
        Ok(p) => {
            assert_eq!(p.user, "u1", "{what}");
            assert!(
                p.may_subscribe("logs:w1:f1"),
                "{what}: grants from the token"
            );
            assert!(
                !p.may_subscribe("notifications:u1"),
                "{what}: only those grants"
            );
            assert!(p.expires_at.is_some(), "{what}: exp is kept");
        }
        Err(e) => panic!("{what}: refused: {e:?}"),
    }
}

async fn expect_refused(auth: &Auth, token: &str, want: &AuthError, code: &str, what: &str) {
    match auth.verify_jwt(token).await {
        Ok(p) => panic!("{what}: ACCEPTED (user {:?}), expected {want:?}", p.user),
        Err(e) => {
            assert_eq!(&e, want, "{what}");
            assert_eq!(e.code(), code, "{what}");
        }
    }
}

fn invalid(msg: &str) -> AuthError {
    AuthError::Invalid(msg.into())
}

/// The configured verifier for `alg`, the right and a wrong signing key, and tokens with an
/// algorithm the configured key may not verify.
struct Setup {
    auth: Auth,
    good: EncodingKey,
    wrong: EncodingKey,
    not_allowed: Vec<(String, String)>,
}

fn setup(dir: &Path, alg: Algorithm) -> Setup {
    let c = claims();
    let mut not_allowed = Vec::new();
    match kind_of(alg) {
        None => {
            // The secret, allowed for this one HMAC algorithm only.
            let (auth, _) = auth_with(&AuthConfig {
                jwt_secret: Some(HMAC_SECRET.into()),
                jwt_secret_algorithms: vec![alg_name(alg)],
                ..base_cfg()
            });
            let good = EncodingKey::from_secret(HMAC_SECRET.as_bytes());
            for other in HMAC_ALGS.into_iter().filter(|a| *a != alg) {
                not_allowed.push((
                    format!("{other:?} token signed with the same secret"),
                    sign(other, &good, None, &c),
                ));
            }
            let ed = KeyPair::generate(dir, "foreign-ed", Kind::Ed25519);
            not_allowed.push((
                "EdDSA token (no such key configured)".into(),
                sign(Algorithm::EdDSA, &ed.encoding_key(), None, &c),
            ));
            Setup {
                auth,
                good,
                wrong: EncodingKey::from_secret(OTHER_HMAC_SECRET.as_bytes()),
                not_allowed,
            }
        }
        Some(kind) => {
            let key = KeyPair::generate(dir, "good", kind);
            let other = KeyPair::generate(dir, "other", kind);
            // Only the public key, allowed for this one algorithm.
            let (auth, _) = auth_with(&AuthConfig {
                jwt_public_key_file: Some(key.public_path.clone()),
                jwt_public_key_algorithms: vec![alg_name(alg)],
                ..base_cfg()
            });
            let good = key.encoding_key();
            if kind == Kind::Rsa {
                // Validly signed by the configured RSA key, with another RSA algorithm.
                for other_alg in RSA_ALGS.into_iter().filter(|a| *a != alg) {
                    not_allowed.push((
                        format!("{other_alg:?} token signed with the configured key"),
                        sign(other_alg, &good, None, &c),
                    ));
                }
            }
            // Algorithm confusion: HMAC "signed" with the public key as the secret.
            let der = key.public_der();
            for h in HMAC_ALGS {
                not_allowed.push((
                    format!("{h:?} token with the public key PEM as HMAC secret"),
                    sign(h, &EncodingKey::from_secret(&key.public_pem), None, &c),
                ));
                not_allowed.push((
                    format!("{h:?} token with the public key DER as HMAC secret"),
                    sign(h, &EncodingKey::from_secret(&der), None, &c),
                ));
            }
            Setup {
                auth,
                good,
                wrong: other.encoding_key(),
                not_allowed,
            }
        }
    }
}

/// Every check of the acceptance point for one algorithm.
async fn check_algorithm(alg: Algorithm) {
    let dir = tempfile::tempdir().unwrap();
    let s = setup(dir.path(), alg);
    let auth = &s.auth;
    let valid = sign(alg, &s.good, None, &claims());

    // A valid token verifies.
    expect_ok(auth, &valid, &format!("valid {alg:?} token")).await;

    // Wrong key.
    let wrong_key = sign(alg, &s.wrong, None, &claims());
    expect_refused(
        auth,
        &wrong_key,
        &invalid("bad signature"),
        "invalid_token",
        "wrong key",
    )
    .await;

    // Tampered payload, signature kept.
    for (claim, value) in [
        ("sub", json!("u2")),
        ("exp", json!(now() + 7200)),
        (
            "ssegate",
            json!({"subscribe": ["**"], "publish": ["**"], "admin": true}),
        ),
    ] {
        expect_refused(
            auth,
            &tampered(&valid, claim, value),
            &invalid("bad signature"),
            "invalid_token",
            &format!("payload with `{claim}` changed"),
        )
        .await;
    }

    // alg: none.
    for (what, token) in alg_none_forgeries(&valid) {
        expect_refused(
            auth,
            &token,
            &invalid("malformed token"),
            "invalid_token",
            &what,
        )
        .await;
    }

    // An algorithm not allowed for the configured key.
    assert!(!s.not_allowed.is_empty());
    for (what, token) in &s.not_allowed {
        expect_refused(
            auth,
            token,
            &invalid("algorithm not allowed"),
            "invalid_token",
            what,
        )
        .await;
    }

    // Expired (leeway 0).
    let mut c = claims();
    c["exp"] = (now() - 60).into();
    let expired = sign(alg, &s.good, None, &c);
    expect_refused(
        auth,
        &expired,
        &AuthError::Expired,
        "token_expired",
        "expired",
    )
    .await;

    // Not yet valid.
    let mut c = claims();
    c["nbf"] = (now() + 600).into();
    let early = sign(alg, &s.good, None, &c);
    expect_refused(
        auth,
        &early,
        &AuthError::NotYetValid,
        "token_not_yet_valid",
        "nbf in the future",
    )
    .await;
    // …while an `nbf` in the past is fine.
    let mut c = claims();
    c["nbf"] = (now() - 60).into();
    expect_ok(auth, &sign(alg, &s.good, None, &c), "nbf in the past").await;

    // Wrong `iss`.
    let mut c = claims();
    c["iss"] = "https://evil.example.test/".into();
    let wrong_iss = sign(alg, &s.good, None, &c);
    expect_refused(
        auth,
        &wrong_iss,
        &invalid("wrong issuer"),
        "invalid_token",
        "wrong iss",
    )
    .await;

    // Wrong `aud`.
    let mut c = claims();
    c["aud"] = "another-service".into();
    let wrong_aud = sign(alg, &s.good, None, &c);
    expect_refused(
        auth,
        &wrong_aud,
        &invalid("wrong audience"),
        "invalid_token",
        "wrong aud",
    )
    .await;

    // `exp` is required.
    let mut c = claims();
    c.as_object_mut().unwrap().remove("exp");
    let no_exp = sign(alg, &s.good, None, &c);
    expect_refused(
        auth,
        &no_exp,
        &invalid("missing claim `exp`"),
        "invalid_token",
        "no exp",
    )
    .await;
}

#[tokio::test]
async fn hs256_verifies_and_rejects_every_bad_token() {
    check_algorithm(Algorithm::HS256).await;
}

#[tokio::test]
async fn hs384_verifies_and_rejects_every_bad_token() {
    check_algorithm(Algorithm::HS384).await;
}

#[tokio::test]
async fn hs512_verifies_and_rejects_every_bad_token() {
    check_algorithm(Algorithm::HS512).await;
}

#[tokio::test]
async fn rs256_verifies_and_rejects_every_bad_token() {
    check_algorithm(Algorithm::RS256).await;
}

#[tokio::test]
async fn rs384_verifies_and_rejects_every_bad_token() {
    check_algorithm(Algorithm::RS384).await;
}

#[tokio::test]
async fn rs512_verifies_and_rejects_every_bad_token() {
    check_algorithm(Algorithm::RS512).await;
}

#[tokio::test]
async fn ps256_verifies_and_rejects_every_bad_token() {
    check_algorithm(Algorithm::PS256).await;
}

#[tokio::test]
async fn ps384_verifies_and_rejects_every_bad_token() {
    check_algorithm(Algorithm::PS384).await;
}

#[tokio::test]
async fn ps512_verifies_and_rejects_every_bad_token() {
    check_algorithm(Algorithm::PS512).await;
}

#[tokio::test]
async fn es256_verifies_and_rejects_every_bad_token() {
    check_algorithm(Algorithm::ES256).await;
}

#[tokio::test]
async fn es384_verifies_and_rejects_every_bad_token() {
    check_algorithm(Algorithm::ES384).await;
}

#[tokio::test]
async fn eddsa_verifies_and_rejects_every_bad_token() {
    check_algorithm(Algorithm::EdDSA).await;
}

/// With an empty allow-list an RSA key verifies all six RSA algorithms — and still nothing
/// of another family, nor the HMAC confusion.
#[tokio::test]
async fn rsa_key_default_allow_list_is_the_rsa_family_only() {
    let dir = tempfile::tempdir().unwrap();
    let rsa = KeyPair::generate(dir.path(), "rsa", Kind::Rsa);
    let ec = KeyPair::generate(dir.path(), "ec", Kind::P256);
    let (auth, _) = auth_with(&AuthConfig {
        jwt_public_key_file: Some(rsa.public_path.clone()),
        ..base_cfg()
    });
    for alg in RSA_ALGS {
        expect_ok(
            &auth,
            &sign(alg, &rsa.encoding_key(), None, &claims()),
            &format!("{alg:?}"),
        )
        .await;
    }
    let es = sign(Algorithm::ES256, &ec.encoding_key(), None, &claims());
    expect_refused(
        &auth,
        &es,
        &invalid("algorithm not allowed"),
        "invalid_token",
        "ES256 token",
    )
    .await;
    let confused = sign(
        Algorithm::HS256,
        &EncodingKey::from_secret(&rsa.public_pem),
        None,
        &claims(),
    );
    expect_refused(
        &auth,
        &confused,
        &invalid("algorithm not allowed"),
        "invalid_token",
        "HS256 confusion",
    )
    .await;
}

/// Algorithm confusion while a shared secret is configured too (as on a real server): the
/// HS256 token "signed" with the public key is checked against the secret only, and fails.
#[tokio::test]
async fn algorithm_confusion_is_refused_with_a_secret_configured_too() {
    let dir = tempfile::tempdir().unwrap();
    for kind in [Kind::Rsa, Kind::P256, Kind::P384, Kind::Ed25519] {
        let key = KeyPair::generate(dir.path(), &format!("{kind:?}"), kind);
        let (auth, _) = auth_with(&AuthConfig {
            jwt_secret: Some(HMAC_SECRET.into()),
            jwt_public_key_file: Some(key.public_path.clone()),
            ..base_cfg()
        });
        for h in HMAC_ALGS {
            let t = sign(
                h,
                &EncodingKey::from_secret(&key.public_pem),
                None,
                &claims(),
            );
            expect_refused(
                &auth,
                &t,
                &invalid("bad signature"),
                "invalid_token",
                &format!("{kind:?}/{h:?}"),
            )
            .await;
        }
        // Both keys still verify their own tokens.
        let hs = sign(
            Algorithm::HS256,
            &EncodingKey::from_secret(HMAC_SECRET.as_bytes()),
            None,
            &claims(),
        );
        expect_ok(&auth, &hs, "HS256 with the secret").await;
        let own = match kind {
            Kind::Rsa => Algorithm::RS256,
            Kind::P256 => Algorithm::ES256,
            Kind::P384 => Algorithm::ES384,
            Kind::Ed25519 => Algorithm::EdDSA,
        };
        expect_ok(
            &auth,
            &sign(own, &key.encoding_key(), None, &claims()),
            &format!("{own:?}"),
        )
        .await;
    }
}

/// Clock skew: `auth.leeway_s` tolerates a just-expired token and a just-early `nbf`, not more.
#[tokio::test]
async fn leeway_applies_to_exp_and_nbf() {
    let dir = tempfile::tempdir().unwrap();
    let key = KeyPair::generate(dir.path(), "ed", Kind::Ed25519);
    let (auth, _) = auth_with(&AuthConfig {
        jwt_public_key_file: Some(key.public_path.clone()),
        leeway_s: 120,
        ..base_cfg()
    });
    let k = key.encoding_key();
    let with = |field: &str, v: u64| {
        let mut c = claims();
        c[field] = v.into();
        sign(Algorithm::EdDSA, &k, None, &c)
    };
    expect_ok(
        &auth,
        &with("exp", now() - 30),
        "expired 30 s ago, leeway 120 s",
    )
    .await;
    expect_refused(
        &auth,
        &with("exp", now() - 600),
        &AuthError::Expired,
        "token_expired",
        "expired 600 s ago",
    )
    .await;
    expect_ok(&auth, &with("nbf", now() + 30), "nbf in 30 s, leeway 120 s").await;
    expect_refused(
        &auth,
        &with("nbf", now() + 600),
        &AuthError::NotYetValid,
        "token_not_yet_valid",
        "nbf in 600 s",
    )
    .await;
}

/// Allow-lists outside the key's family, a private key given as the public key, and HMAC
/// for JWKS are configuration errors that name the setting.
#[tokio::test]
async fn key_configuration_errors_name_the_setting() {
    let dir = tempfile::tempdir().unwrap();
    let rsa = KeyPair::generate(dir.path(), "rsa", Kind::Rsa);
    let ec = KeyPair::generate(dir.path(), "ec", Kind::P256);
    let e = auth_err(&AuthConfig {
        jwt_public_key_file: Some(rsa.public_path.clone()),
        jwt_public_key_algorithms: vec!["ES256".into()],
        ..base_cfg()
    });
    assert!(e.contains("auth.jwt_public_key_algorithms"), "{e}");
    let e = auth_err(&AuthConfig {
        jwt_public_key_file: Some(ec.public_path.clone()),
        jwt_public_key_algorithms: vec!["HS256".into()],
        ..base_cfg()
    });
    assert!(e.contains("auth.jwt_public_key_algorithms"), "{e}");
    let e = auth_err(&AuthConfig {
        jwt_secret: Some(HMAC_SECRET.into()),
        jwt_secret_algorithms: vec!["RS256".into()],
        ..base_cfg()
    });
    assert!(e.contains("auth.jwt_secret_algorithms"), "{e}");
    let private = dir.path().join("rsa.key.pem");
    let e = auth_err(&AuthConfig {
        jwt_public_key_file: Some(private),
        ..base_cfg()
    });
    assert!(e.contains("private key"), "{e}");
    let e = auth_err(&AuthConfig {
        jwks_url: Some("http://127.0.0.1:9/jwks.json".into()),
        jwks_algorithms: vec!["HS256".into()],
        ..base_cfg()
    });
    assert!(e.contains("auth.jwks_algorithms"), "{e}");
}

/// With `auth.issuer` set, a token without an `iss` claim is refused (the issuer is
/// required, not only checked when present).
#[tokio::test]
async fn a_token_without_iss_is_refused_when_an_issuer_is_configured() {
    let dir = tempfile::tempdir().unwrap();
    let key = KeyPair::generate(dir.path(), "ec", Kind::P256);
    let (auth, _) = auth_with(&AuthConfig {
        jwt_public_key_file: Some(key.public_path.clone()),
        ..base_cfg()
    });
    let mut c = claims();
    c.as_object_mut().unwrap().remove("iss");
    let t = sign(Algorithm::ES256, &key.encoding_key(), None, &c);
    expect_refused(
        &auth,
        &t,
        &invalid("missing claim `iss`"),
        "invalid_token",
        "token without iss",
    )
    .await;
}

/// With `auth.audience` set, a token without an `aud` claim is refused.
#[tokio::test]
async fn a_token_without_aud_is_refused_when_an_audience_is_configured() {
    let dir = tempfile::tempdir().unwrap();
    let key = KeyPair::generate(dir.path(), "ec", Kind::P256);
    let (auth, _) = auth_with(&AuthConfig {
        jwt_public_key_file: Some(key.public_path.clone()),
        ..base_cfg()
    });
    let mut c = claims();
    c.as_object_mut().unwrap().remove("aud");
    let t = sign(Algorithm::ES256, &key.encoding_key(), None, &c);
    expect_refused(
        &auth,
        &t,
        &invalid("missing claim `aud`"),
        "invalid_token",
        "token without aud",
    )
    .await;
}

/// A token whose `exp` is a JSON float (`1795619226.0`, as some issuers write NumericDate)
/// still carries its expiry into the principal, so the stream ends at `exp`.
#[tokio::test]
async fn a_float_exp_keeps_its_expiry() {
    let dir = tempfile::tempdir().unwrap();
    let key = KeyPair::generate(dir.path(), "ed", Kind::Ed25519);
    let (auth, _) = auth_with(&AuthConfig {
        jwt_public_key_file: Some(key.public_path.clone()),
        ..base_cfg()
    });
    let exp = now() + 3600;
    let mut c = claims();
    c["exp"] = json!(exp as f64);
    let t = sign(Algorithm::EdDSA, &key.encoding_key(), None, &c);
    match auth.verify_jwt(&t).await {
        // Refusing a non-integer `exp` would be a fix too.
        Err(e) => assert_eq!(e.code(), "invalid_token", "{e:?}"),
        Ok(p) => assert_eq!(
            p.expires_at,
            Some(exp),
            "a float `exp` was accepted but the principal has no expiry"
        ),
    }
}

// ---------------------------------------------------------------------------------------
// A local JWKS server whose document can change at runtime and that counts requests
// ---------------------------------------------------------------------------------------

#[derive(Clone)]
struct JwksState {
    doc: Arc<Mutex<Value>>,
    hits: Arc<AtomicUsize>,
    failing: Arc<AtomicBool>,
    delay: Duration,
}

struct JwksServer {
    url: String,
    state: JwksState,
}

async fn serve_jwks(State(s): State<JwksState>) -> Response {
    s.hits.fetch_add(1, Ordering::SeqCst);
    if !s.delay.is_zero() {
        tokio::time::sleep(s.delay).await;
    }
    if s.failing.load(Ordering::SeqCst) {
        return (StatusCode::SERVICE_UNAVAILABLE, "down").into_response();
    }
    let doc = s.doc.lock().unwrap().clone();
    axum::Json(doc).into_response()
}

impl JwksServer {
    /// Serves `doc` at `/jwks.json` on 127.0.0.1, answering after `delay`.
    async fn start(doc: Value, delay: Duration) -> JwksServer {
        let state = JwksState {
            doc: Arc::new(Mutex::new(doc)),
            hits: Arc::new(AtomicUsize::new(0)),
            failing: Arc::new(AtomicBool::new(false)),
            delay,
        };
        let app = axum::Router::new()
            .route("/jwks.json", axum::routing::get(serve_jwks))
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/jwks.json", listener.local_addr().unwrap());
        tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        JwksServer { url, state }
    }

    fn publish(&self, doc: Value) {
        *self.state.doc.lock().unwrap() = doc;
    }

    fn set_failing(&self, failing: bool) {
        self.state.failing.store(failing, Ordering::SeqCst);
    }

    fn hits(&self) -> usize {
        self.state.hits.load(Ordering::SeqCst)
    }
}

fn jwks_cfg(url: &str, min_refresh_ms: u64) -> AuthConfig {
    AuthConfig {
        jwks_url: Some(url.into()),
        jwks_min_refresh_interval_ms: min_refresh_ms,
        jwks_cache_s: 300,
        ..base_cfg()
    }
}

/// Keys of every type in one JWKS document verify their tokens, chosen by `kid`; a key's
/// `alg` restricts it; a token whose `kid` names another key fails.
#[tokio::test]
async fn jwks_keys_of_every_type_verify_by_kid() {
    let dir = tempfile::tempdir().unwrap();
    let rsa = KeyPair::generate(dir.path(), "rsa", Kind::Rsa);
    let rsa_any = KeyPair::generate(dir.path(), "rsa-any", Kind::Rsa);
    let p256 = KeyPair::generate(dir.path(), "p256", Kind::P256);
    let p384 = KeyPair::generate(dir.path(), "p384", Kind::P384);
    let ed = KeyPair::generate(dir.path(), "ed", Kind::Ed25519);
    let jwks = JwksServer::start(
        json!({"keys": [
            rsa.jwk("rsa", Some("RS256")),
            rsa_any.jwk("rsa-any", None),
            p256.jwk("p256", Some("ES256")),
            p384.jwk("p384", Some("ES384")),
            ed.jwk("ed", Some("EdDSA")),
            // Skipped: an HMAC secret (never from a JWKS) and an encryption key.
            {"kty": "oct", "kid": "oct", "k": URL_SAFE_NO_PAD.encode(HMAC_SECRET)},
            {"kid": "enc", "use": "enc", "kty": "OKP", "crv": "Ed25519", "x": ed.jwk("x", None)["x"].clone()},
        ]}),
        Duration::ZERO,
    )
    .await;
    let (auth, metrics) = auth_with(&jwks_cfg(&jwks.url, 10_000));
    let cases = [
        (Algorithm::RS256, &rsa, "rsa"),
        (Algorithm::RS512, &rsa_any, "rsa-any"),
        (Algorithm::PS256, &rsa_any, "rsa-any"),
        (Algorithm::ES256, &p256, "p256"),
        (Algorithm::ES384, &p384, "p384"),
        (Algorithm::EdDSA, &ed, "ed"),
    ];
    for (alg, key, kid) in cases {
        expect_ok(
            &auth,
            &sign(alg, &key.encoding_key(), Some(kid), &claims()),
            &format!("{kid} {alg:?}"),
        )
        .await;
    }
    assert_eq!(jwks.hits(), 1, "one fetch serves every key");
    assert_eq!(metrics.jwks_fetches.get(), 1);

    // The `rsa` JWK says RS256: an RS384/PS256 token signed by that very key is refused.
    for alg in [Algorithm::RS384, Algorithm::PS256] {
        let t = sign(alg, &rsa.encoding_key(), Some("rsa"), &claims());
        match auth.verify_jwt(&t).await {
            Ok(_) => panic!("{alg:?} accepted by an RS256-only JWK"),
            Err(e) => assert_eq!(e.code(), "invalid_token", "{e:?}"),
        }
    }
    // The `kid` names a key that did not sign the token.
    let t = sign(
        Algorithm::ES256,
        &p256.encoding_key(),
        Some("rsa"),
        &claims(),
    );
    // (Refused as an "unknown key id": no key with that kid may verify ES256.)
    let e = auth.verify_jwt(&t).await.unwrap_err();
    assert_eq!(e.code(), "invalid_token", "ES256 with an RSA kid: {e:?}");
    let other = KeyPair::generate(dir.path(), "other", Kind::P256);
    let t = sign(
        Algorithm::ES256,
        &other.encoding_key(),
        Some("p256"),
        &claims(),
    );
    expect_refused(
        &auth,
        &t,
        &invalid("bad signature"),
        "invalid_token",
        "right kid, wrong key",
    )
    .await;
    // The `oct` key is never an HMAC secret; HS256 is refused whatever the kid.
    let t = sign(
        Algorithm::HS256,
        &EncodingKey::from_secret(HMAC_SECRET.as_bytes()),
        Some("oct"),
        &claims(),
    );
    let e = auth.verify_jwt(&t).await.unwrap_err();
    assert_eq!(e.code(), "invalid_token", "{e:?}");
    // The encryption key is not a signing key.
    let t = sign(Algorithm::EdDSA, &ed.encoding_key(), Some("enc"), &claims());
    let e = auth.verify_jwt(&t).await.unwrap_err();
    assert_eq!(e.code(), "invalid_token", "{e:?}");
    // Expiry, iss and aud apply to JWKS keys too.
    let mut c = claims();
    c["exp"] = (now() - 60).into();
    let t = sign(Algorithm::EdDSA, &ed.encoding_key(), Some("ed"), &c);
    expect_refused(
        &auth,
        &t,
        &AuthError::Expired,
        "token_expired",
        "expired, JWKS key",
    )
    .await;
    let mut c = claims();
    c["aud"] = "another-service".into();
    let t = sign(Algorithm::EdDSA, &ed.encoding_key(), Some("ed"), &c);
    expect_refused(
        &auth,
        &t,
        &invalid("wrong audience"),
        "invalid_token",
        "wrong aud, JWKS key",
    )
    .await;
}

/// Rotation: k1 verifies; the JWKS server then publishes k2 and withdraws k1; a k2 token
/// verifies with the same `Auth` (no restart), k1 is refused from then on.
#[tokio::test]
async fn jwks_rotation_picks_up_a_new_kid_without_restart() {
    let dir = tempfile::tempdir().unwrap();
    let k1 = KeyPair::generate(dir.path(), "k1", Kind::Rsa);
    let k2 = KeyPair::generate(dir.path(), "k2", Kind::P256);
    let jwks = JwksServer::start(
        json!({"keys": [k1.jwk("k1", Some("RS256"))]}),
        Duration::ZERO,
    )
    .await;
    let (auth, metrics) = auth_with(&jwks_cfg(&jwks.url, 200));

    let t1 = sign(Algorithm::RS256, &k1.encoding_key(), Some("k1"), &claims());
    expect_ok(&auth, &t1, "k1 token").await;
    expect_ok(&auth, &t1, "k1 token again").await;
    assert_eq!(jwks.hits(), 1, "known keys are served from the cache");

    // Not published yet: unknown kid.
    let t2 = sign(Algorithm::ES256, &k2.encoding_key(), Some("k2"), &claims());
    expect_refused(
        &auth,
        &t2,
        &invalid("unknown key id (`kid`)"),
        "invalid_token",
        "k2 before rotation",
    )
    .await;

    jwks.publish(json!({"keys": [k2.jwk("k2", Some("ES256"))]}));
    tokio::time::sleep(Duration::from_millis(300)).await; // past the min refresh interval
    expect_ok(&auth, &t2, "k2 token after rotation").await;
    let after_rotation = jwks.hits();
    assert!(
        (2..=3).contains(&after_rotation),
        "fetches: {after_rotation}"
    );

    // k1 was withdrawn.
    expect_refused(
        &auth,
        &t1,
        &invalid("unknown key id (`kid`)"),
        "invalid_token",
        "k1 after rotation",
    )
    .await;
    // A k2 kid on a token another key signed does not pass.
    let forged = sign(
        Algorithm::ES256,
        &KeyPair::generate(dir.path(), "x", Kind::P256).encoding_key(),
        Some("k2"),
        &claims(),
    );
    expect_refused(
        &auth,
        &forged,
        &invalid("bad signature"),
        "invalid_token",
        "kid k2, other key",
    )
    .await;
    assert_eq!(metrics.jwks_fetches.get() as usize, jwks.hits());
}

/// 200 concurrent tokens with made-up `kid`s (validly signed by a real key) cost the JWKS
/// server at most a couple of requests, all are refused, and a real `kid` keeps working.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_kid_storm_does_not_flood_the_jwks_server() {
    let dir = tempfile::tempdir().unwrap();
    let k1 = KeyPair::generate(dir.path(), "k1", Kind::Ed25519);
    // A slow JWKS server, so the storm arrives while a fetch is in flight.
    let jwks = JwksServer::start(
        json!({"keys": [k1.jwk("k1", Some("EdDSA"))]}),
        Duration::from_millis(100),
    )
    .await;
    let (auth, metrics) = auth_with(&jwks_cfg(&jwks.url, 10_000));
    let auth = Arc::new(auth);
    let key = Arc::new(k1.encoding_key());

    for wave in 0..2 {
        let tasks: Vec<_> = (0..200)
            .map(|i| {
                let (auth, key) = (auth.clone(), key.clone());
                let kid = format!("made-up-{wave}-{i}-{:016x}", rand::random::<u64>());
                tokio::spawn(async move {
                    let t = sign(Algorithm::EdDSA, &key, Some(&kid), &claims());
                    auth.verify_jwt(&t).await
                })
            })
            .collect();
        for r in futures::future::join_all(tasks).await {
            let e = r.unwrap().unwrap_err();
            assert_eq!(e, invalid("unknown key id (`kid`)"));
            assert_eq!(e.code(), "invalid_token");
        }
        let hits = jwks.hits();
        assert!(
            (1..=2).contains(&hits),
            "wave {wave}: {hits} JWKS fetches for 200 unknown kids"
        );
    }
    let hits = jwks.hits();
    // The real kid still verifies, from the cache.
    let t = sign(Algorithm::EdDSA, &key, Some("k1"), &claims());
    expect_ok(&auth, &t, "k1 after the storm").await;
    assert_eq!(jwks.hits(), hits, "no fetch for a cached kid");
    assert_eq!(metrics.jwks_fetches.get() as usize, hits);
}

/// The same storm while the JWKS server fails: failed fetches are rate-limited too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_kid_storm_against_a_failing_jwks_server_is_rate_limited() {
    let dir = tempfile::tempdir().unwrap();
    let k1 = KeyPair::generate(dir.path(), "k1", Kind::P256);
    let jwks = JwksServer::start(json!({"keys": []}), Duration::from_millis(50)).await;
    jwks.set_failing(true);
    let (auth, _) = auth_with(&jwks_cfg(&jwks.url, 10_000));
    let auth = Arc::new(auth);
    let key = Arc::new(k1.encoding_key());
    let tasks: Vec<_> = (0..200)
        .map(|i| {
            let (auth, key) = (auth.clone(), key.clone());
            tokio::spawn(async move {
                let t = sign(Algorithm::ES256, &key, Some(&format!("kid-{i}")), &claims());
                auth.verify_jwt(&t).await
            })
        })
        .collect();
    for r in futures::future::join_all(tasks).await {
        assert_eq!(r.unwrap().unwrap_err().code(), "invalid_token");
    }
    let hits = jwks.hits();
    assert!(
        (1..=2).contains(&hits),
        "{hits} JWKS requests while it was failing"
    );
}

// ---------------------------------------------------------------------------------------
// End to end: the real server binary
// ---------------------------------------------------------------------------------------

fn start_server(env: &[(&str, &str)]) -> Server {
    // Server::start blocks on the child's first line; let the runtime's other worker serve
    // the local JWKS server meanwhile.
    tokio::task::block_in_place(|| Server::start(env))
}

async fn get_status_and_error(url: &str, token: &str) -> (u16, Value) {
    let res = common::http()
        .get(url)
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    let status = res.status().as_u16();
    (status, res.json::<Value>().await.unwrap_or(Value::Null))
}

/// The server with an EC P-256 public key file: an ES256 token opens a real SSE stream that
/// receives a published event; bad signature, `alg: none`, expired and HS256-with-the-public-
/// key tokens get 401 with the stable codes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e2e_es256_public_key_file_opens_a_stream_and_bad_tokens_get_401() {
    let dir = tempfile::tempdir().unwrap();
    let key = KeyPair::generate(dir.path(), "p256", Kind::P256);
    let other = KeyPair::generate(dir.path(), "other", Kind::P256);
    let server = start_server(&[(
        "AUTH__JWT_PUBLIC_KEY_FILE",
        key.public_path.to_str().unwrap(),
    )]);
    let url = server.stream_url(&["logs:w1:f1"]);

    let good = sign(Algorithm::ES256, &key.encoding_key(), None, &claims());
    let (mut sse, connected) = Sse::open(&url, &[bearer(&good)]).await;
    assert_eq!(connected["user"], "u1");
    let (status, body) = server
        .publish(
            &common::publisher(),
            &json!({"channel": "logs:w1:f1", "type": "t", "data": {"n": 1}}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let got = sse.take(1, Duration::from_secs(10)).await;
    assert_eq!(common::envelope(&got[0])["data"], json!({"n": 1}));

    let bad_sig = sign(Algorithm::ES256, &other.encoding_key(), None, &claims());
    let tampered = tampered(&good, "sub", json!("u2"));
    let none = alg_none_forgeries(&good).remove(0).1;
    let confused = sign(
        Algorithm::HS256,
        &EncodingKey::from_secret(&key.public_pem),
        None,
        &claims(),
    );
    for (what, token) in [
        ("bad signature", bad_sig),
        ("tampered payload", tampered),
        ("alg none", none),
        ("HS256 with the public key", confused),
    ] {
        let (status, body) = get_status_and_error(&url, &token).await;
        assert_eq!(status, 401, "{what}: {body}");
        assert_eq!(body["error"]["code"], "invalid_token", "{what}: {body}");
        assert!(body["error"]["message"].is_string(), "{what}: {body}");
    }
    let mut c = claims();
    c["exp"] = (now() - 600).into();
    let (status, body) =
        get_status_and_error(&url, &sign(Algorithm::ES256, &key.encoding_key(), None, &c)).await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(body["error"]["code"], "token_expired", "{body}");
    let mut c = claims();
    c["nbf"] = (now() + 600).into();
    let (status, body) =
        get_status_and_error(&url, &sign(Algorithm::ES256, &key.encoding_key(), None, &c)).await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(body["error"]["code"], "token_not_yet_valid", "{body}");
}

/// The server fetches JWKS from the local server: a k1 (EdDSA) token opens a stream; the
/// JWKS server rotates to k2 (RSA); a k2 token opens a stream on the same process, k1 is
/// refused with 401 invalid_token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e2e_jwks_rotation_opens_a_stream_with_the_new_kid_without_restart() {
    let dir = tempfile::tempdir().unwrap();
    let k1 = KeyPair::generate(dir.path(), "k1", Kind::Ed25519);
    let k2 = KeyPair::generate(dir.path(), "k2", Kind::Rsa);
    let jwks = JwksServer::start(
        json!({"keys": [k1.jwk("k1", Some("EdDSA"))]}),
        Duration::ZERO,
    )
    .await;
    let server = start_server(&[
        ("AUTH__JWKS_URL", jwks.url.as_str()),
        ("AUTH__JWKS_MIN_REFRESH_INTERVAL_MS", "200"),
    ]);
    let pid = server.pid();
    let url = server.stream_url(&["logs:w1:f1"]);

    let t1 = sign(Algorithm::EdDSA, &k1.encoding_key(), Some("k1"), &claims());
    let (mut s1, connected) = Sse::open(&url, &[bearer(&t1)]).await;
    assert_eq!(connected["user"], "u1");

    jwks.publish(json!({"keys": [k2.jwk("k2", Some("RS256"))]}));
    tokio::time::sleep(Duration::from_millis(400)).await; // past the min refresh interval
    let t2 = sign(Algorithm::RS256, &k2.encoding_key(), Some("k2"), &claims());
    let (mut s2, connected) = Sse::open(&url, &[bearer(&t2)]).await;
    assert_eq!(connected["user"], "u1");
    assert_eq!(server.pid(), pid, "same server process");

    let (status, body) = server
        .publish(
            &common::publisher(),
            &json!({"channel": "logs:w1:f1", "type": "t", "data": {"after": "rotation"}}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    for sse in [&mut s1, &mut s2] {
        let got = sse.take(1, Duration::from_secs(10)).await;
        assert_eq!(common::envelope(&got[0])["data"]["after"], "rotation");
    }

    let (status, body) = get_status_and_error(&url, &t1).await;
    assert_eq!(status, 401, "withdrawn k1: {body}");
    assert_eq!(body["error"]["code"], "invalid_token", "{body}");
    let hits = jwks.hits();
    assert!(
        (2..=4).contains(&hits),
        "JWKS fetches: {hits}\n{}",
        server.log_text()
    );
}

/// 100 concurrent publishes with made-up `kid`s against the real server: all 401
/// invalid_token, and the JWKS server sees at most 2 requests (start-up fetch included).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e2e_unknown_kid_storm_does_not_flood_the_jwks_server() {
    let dir = tempfile::tempdir().unwrap();
    let k1 = KeyPair::generate(dir.path(), "k1", Kind::P256);
    let jwks = JwksServer::start(
        json!({"keys": [k1.jwk("k1", Some("ES256"))]}),
        Duration::from_millis(50),
    )
    .await;
    let server = start_server(&[("AUTH__JWKS_URL", jwks.url.as_str())]);
    let publish_url = format!("{}/v1/publish", server.url);
    let key = Arc::new(k1.encoding_key());
    let body = json!({"channel": "logs:w1:f1", "type": "t", "data": {}});
    let tasks: Vec<_> = (0..100)
        .map(|i| {
            let (key, url, body) = (key.clone(), publish_url.clone(), body.clone());
            tokio::spawn(async move {
                let t = sign(
                    Algorithm::ES256,
                    &key,
                    Some(&format!("storm-{i}")),
                    &claims(),
                );
                let res = common::http()
                    .post(url)
                    .bearer_auth(t)
                    .json(&body)
                    .send()
                    .await
                    .unwrap();
                (
                    res.status().as_u16(),
                    res.json::<Value>().await.unwrap_or(Value::Null),
                )
            })
        })
        .collect();
    for r in futures::future::join_all(tasks).await {
        let (status, body) = r.unwrap();
        assert_eq!(status, 401, "{body}");
        assert_eq!(body["error"]["code"], "invalid_token", "{body}");
    }
    let hits = jwks.hits();
    assert!(
        (1..=2).contains(&hits),
        "{hits} JWKS fetches for 100 unknown kids"
    );
    // The real kid publishes.
    let t = sign(Algorithm::ES256, &key, Some("k1"), &claims());
    let (status, res) = server.publish(&t, &body).await;
    assert_eq!(status, 200, "{res}");
    assert_eq!(jwks.hits(), hits);
}

// ---------------------------------------------------------------------------------------
// Strict tokens: claim types, `crit`, duplicate member names (end to end, hand-made tokens)
// ---------------------------------------------------------------------------------------

/// An HS256 token made by hand from the exact header and payload text (so it can hold what
/// `jsonwebtoken::encode` would never write: duplicate names, a `crit`), signed with the
/// secret the test server is started with.
fn raw_hs256(header: &str, payload: &str) -> String {
    let message = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header),
        URL_SAFE_NO_PAD.encode(payload)
    );
    let signature = jsonwebtoken::crypto::sign(
        message.as_bytes(),
        &EncodingKey::from_secret(common::SECRET.as_bytes()),
        Algorithm::HS256,
    )
    .unwrap();
    format!("{message}.{signature}")
}

const RAW_HEADER: &str = r#"{"alg":"HS256","typ":"JWT"}"#;

/// A valid payload for `u1` (publish and subscribe `logs:**`, an hour to live) in which the
/// claim `name` has the JSON text `value` instead (or in addition); `""` changes nothing.
fn raw_payload(name: &str, value: &str) -> String {
    let mut members = vec![
        ("sub", r#""u1""#.to_owned()),
        ("exp", (now() + 3600).to_string()),
        (
            "ssegate",
            r#"{"subscribe":["logs:**"],"publish":["logs:**"]}"#.to_owned(),
        ),
    ];
    if !name.is_empty() {
        members.retain(|(n, _)| *n != name);
        members.push((name, value.to_owned()));
    }
    let members: Vec<String> = members
        .iter()
        .map(|(n, v)| format!("\"{n}\":{v}"))
        .collect();
    format!("{{{}}}", members.join(","))
}

/// The token is refused with 401 `invalid_token` (and a message containing `message`) by the
/// stream and by the publish endpoint.
async fn expect_e2e_invalid(server: &Server, token: &str, message: &str, what: &str) {
    let url = server.stream_url(&["logs:w1:f1"]);
    // `connect`, not a plain GET: an accepted token opens an endless stream.
    let sse = Sse::connect(&url, &[bearer(token)]).await;
    let (status, body) = (sse.status, sse.error);
    assert_eq!(status, 401, "{what}: stream: {body}");
    assert_eq!(body["error"]["code"], "invalid_token", "{what}: {body}");
    let text = body["error"]["message"].as_str().unwrap_or_default();
    assert!(text.contains(message), "{what}: stream: {body}");
    let (status, body) = server
        .publish(
            token,
            &json!({"channel": "logs:w1:f1", "type": "t", "data": {}}),
        )
        .await;
    assert_eq!(status, 401, "{what}: publish: {body}");
    assert_eq!(body["error"]["code"], "invalid_token", "{what}: {body}");
    let text = body["error"]["message"].as_str().unwrap_or_default();
    assert!(text.contains(message), "{what}: publish: {body}");
}

/// The token opens a stream and publishes: the defect-free twin of a refused token.
async fn expect_e2e_accepted(server: &Server, token: &str, what: &str) {
    let (_sse, connected) = Sse::open(&server.stream_url(&["logs:w1:f1"]), &[bearer(token)]).await;
    assert_eq!(connected["user"], "u1", "{what}");
    let (status, body) = server
        .publish(
            token,
            &json!({"channel": "logs:w1:f1", "type": "t", "data": {}}),
        )
        .await;
    assert_eq!(status, 200, "{what}: publish: {body}");
}

/// `exp`, `nbf`, `iat` must be numbers the verifier can compare (never silently skipped),
/// `sub` and `iss` strings, `aud` a string or a list of strings.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e2e_claims_of_the_wrong_type_are_refused() {
    let server = start_server(&[]);
    let t = now();
    let cases: Vec<(&str, &str, String, String, &str)> = vec![
        // (what, claim, defective value, a value without the defect, message fragment)
        (
            "nbf a string",
            "nbf",
            r#""x""#.into(),
            (t - 60).to_string(),
            "`nbf` must be",
        ),
        (
            "nbf an object",
            "nbf",
            r#"{"t":1}"#.into(),
            (t - 60).to_string(),
            "`nbf` must be",
        ),
        (
            "nbf too large to compare",
            "nbf",
            "1e30".into(),
            format!("{}.5", t - 60),
            "`nbf` must be",
        ),
        (
            "nbf negative",
            "nbf",
            "-1".into(),
            "0".into(),
            "`nbf` must be",
        ),
        (
            "exp a string",
            "exp",
            format!(r#""{}""#, t + 3600),
            (t + 3600).to_string(),
            "`exp` must be",
        ),
        (
            "exp null",
            "exp",
            "null".into(),
            (t + 3600).to_string(),
            "`exp` must be",
        ),
        (
            "iat a string",
            "iat",
            r#""x""#.into(),
            t.to_string(),
            "`iat` must be",
        ),
        (
            "iat a bool",
            "iat",
            "true".into(),
            t.to_string(),
            "`iat` must be",
        ),
        (
            "sub a number",
            "sub",
            "5".into(),
            r#""u1""#.into(),
            "`sub` must be a string",
        ),
        (
            "sub a list",
            "sub",
            r#"["u1"]"#.into(),
            r#""u1""#.into(),
            "`sub` must be a string",
        ),
        (
            "iss a number",
            "iss",
            "5".into(),
            format!("{ISS:?}"),
            "`iss` must be a string",
        ),
        (
            "iss a list",
            "iss",
            r#"["a","b"]"#.into(),
            r#""a""#.into(),
            "`iss` must be a string",
        ),
        (
            "aud a number",
            "aud",
            "5".into(),
            r#""app""#.into(),
            "`aud` must be",
        ),
        (
            "aud a list with a number",
            "aud",
            r#"["app",5]"#.into(),
            r#"["app","other"]"#.into(),
            "`aud` must be",
        ),
        (
            "aud an object",
            "aud",
            r#"{"app":true}"#.into(),
            "[]".into(),
            "`aud` must be",
        ),
    ];
    for (what, claim, bad, good, message) in &cases {
        let bad = raw_hs256(RAW_HEADER, &raw_payload(claim, bad));
        expect_e2e_invalid(&server, &bad, message, what).await;
        let good = raw_hs256(RAW_HEADER, &raw_payload(claim, good));
        expect_e2e_accepted(&server, &good, &format!("{what}, fixed")).await;
    }
}

/// RFC 7515 §4.1.11: a recipient must refuse a token whose `crit` names an extension it does
/// not understand; ssegate understands none, so every `crit` is refused, well-formed or not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e2e_a_crit_header_is_refused() {
    let server = start_server(&[]);
    let payload = raw_payload("", "");
    for (what, header, message) in [
        (
            "crit naming an extension",
            r#"{"alg":"HS256","typ":"JWT","crit":["x-policy"],"x-policy":"strict"}"#,
            "`crit`",
        ),
        (
            "crit naming a registered parameter",
            r#"{"alg":"HS256","typ":"JWT","crit":["exp"],"exp":1}"#,
            "`crit`",
        ),
        ("empty crit", r#"{"alg":"HS256","crit":[]}"#, "`crit`"),
        ("crit a string", r#"{"alg":"HS256","crit":"x"}"#, "`crit`"),
        (
            "crit with a number",
            r#"{"alg":"HS256","crit":[5]}"#,
            "`crit`",
        ),
        ("crit null", r#"{"alg":"HS256","crit":null}"#, "`crit`"),
    ] {
        expect_e2e_invalid(&server, &raw_hs256(header, &payload), message, what).await;
    }
    // The same header without `crit` (an unknown, non-critical parameter is ignored).
    let good = raw_hs256(
        r#"{"alg":"HS256","typ":"JWT","x-policy":"strict"}"#,
        &payload,
    );
    expect_e2e_accepted(&server, &good, "no crit").await;
}

/// A header or payload naming a member twice is refused (serde_json would keep the last one,
/// another parser the first): at the top level, nested, and spelled with a JSON escape.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e2e_duplicate_member_names_are_refused() {
    let server = start_server(&[]);
    let exp = now() + 3600;
    let grants = r#"{"subscribe":["logs:**"],"publish":["logs:**"]}"#;
    let cases: Vec<(&str, String, String, String)> = vec![
        // (what, header, payload, the same without the duplicate)
        (
            "sub twice",
            RAW_HEADER.into(),
            format!(r#"{{"sub":"admin","sub":"u1","exp":{exp},"ssegate":{grants}}}"#),
            format!(r#"{{"sub":"u1","exp":{exp},"ssegate":{grants}}}"#),
        ),
        (
            "exp twice",
            RAW_HEADER.into(),
            format!(r#"{{"sub":"u1","exp":1,"exp":{exp},"ssegate":{grants}}}"#),
            format!(r#"{{"sub":"u1","exp":{exp},"ssegate":{grants}}}"#),
        ),
        (
            "ssegate twice",
            RAW_HEADER.into(),
            format!(
                r#"{{"sub":"u1","exp":{exp},"ssegate":{{"subscribe":[]}},"ssegate":{grants}}}"#
            ),
            format!(r#"{{"sub":"u1","exp":{exp},"ssegate":{grants}}}"#),
        ),
        (
            "sub twice, once escaped",
            RAW_HEADER.into(),
            format!(r#"{{"sub":"admin","s\u0075b":"u1","exp":{exp},"ssegate":{grants}}}"#),
            format!(r#"{{"s\u0075b":"u1","exp":{exp},"ssegate":{grants}}}"#),
        ),
        (
            "nested: subscribe twice in the ssegate claim",
            RAW_HEADER.into(),
            format!(
                r#"{{"sub":"u1","exp":{exp},"ssegate":{{"subscribe":[],"subscribe":["logs:**"],"publish":["logs:**"]}}}}"#
            ),
            format!(r#"{{"sub":"u1","exp":{exp},"ssegate":{grants}}}"#),
        ),
        (
            "nested deeper: in an object inside a list of a custom claim",
            RAW_HEADER.into(),
            format!(
                r#"{{"sub":"u1","exp":{exp},"ssegate":{grants},"org":[{{"id":"a","id":"b"}}]}}"#
            ),
            format!(r#"{{"sub":"u1","exp":{exp},"ssegate":{grants},"org":[{{"id":"a"}}]}}"#),
        ),
        (
            "an unknown header parameter twice",
            r#"{"alg":"HS256","typ":"JWT","x5u":"a","x-note":"a","x-note":"b"}"#.into(),
            format!(r#"{{"sub":"u1","exp":{exp},"ssegate":{grants}}}"#),
            format!(r#"{{"sub":"u1","exp":{exp},"ssegate":{grants}}}"#),
        ),
    ];
    for (what, header, bad, good) in &cases {
        expect_e2e_invalid(&server, &raw_hs256(header, bad), "more than once", what).await;
        let header_fixed = header.replace(r#","x-note":"b""#, "");
        expect_e2e_accepted(
            &server,
            &raw_hs256(&header_fixed, good),
            &format!("{what}, fixed"),
        )
        .await;
    }
}
