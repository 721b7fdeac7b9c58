//! Token verification (`ssegate::auth`): `Auth::verify_jwt` and `Auth::authenticate`.
//!
//! The input is UTF-8 text:
//! - anything not starting with `{` is a token as a client would send it;
//! - `{…}` is a claims payload, and `{header}\n{payload}` a header and a payload, that the
//!   harness signs with the server's secret (HS256, or HS384/HS512 when the header names
//!   them) so the fuzzer reaches the claim handling behind the signature check, including
//!   headers that name another algorithm (`none`, `RS256`, …) over an HMAC signature.
//!
//! Nothing may panic, and an accepted token must honour the security properties: an
//! algorithm of the key's allow-list only (never `none`), `sub` and `exp` present, grants
//! that are valid patterns, and claim-derived grants that are their template with each
//! `{claims.…}` replaced by one literal segment (a claim never widens a grant).
#![no_main]

use std::sync::{Arc, OnceLock};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::{Algorithm, EncodingKey};
use libfuzzer_sys::fuzz_target;
use serde_json::{json, Value};
use ssegate::auth::{hex_sha256, validate_user, Auth, AuthError, Grants, Minter, RequestCreds};
use ssegate::channel::validate_pattern;
use ssegate::config::{AuthConfig, GrantRules, PublisherKeyConfig};
use ssegate::metrics::Metrics;

const SECRET: &str = "fuzz-secret-0123456789abcdef";
const PUBLISHER_KEY: &str = "sk_fuzz_publisher_key";
const ISSUER: &str = "https://issuer.example";
const AUDIENCE: &str = "ssegate-fuzz";
const SUBSCRIBE_RULES: [&str; 4] = [
    "logs:{claims.ws}:*",
    "teams:{claims.groups}:**",
    "notifications:{sub}",
    "org-{claims.org.id}:{claims.ws}",
];
const PUBLISH_RULES: [&str; 1] = ["out:{claims.ws}:{sub}"];

struct Harness {
    /// The shared secret, HS256/384/512, claim rules and a publisher key.
    plain: Auth,
    /// HS256 only, with a required issuer and audience.
    strict: Auth,
}

fn config() -> AuthConfig {
    AuthConfig {
        jwt_secret: Some(SECRET.into()),
        grants: GrantRules {
            subscribe: SUBSCRIBE_RULES.iter().map(|s| s.to_string()).collect(),
            publish: PUBLISH_RULES.iter().map(|s| s.to_string()).collect(),
        },
        publisher_keys: vec![PublisherKeyConfig {
            name: "etl".into(),
            sha256: hex_sha256(PUBLISHER_KEY.as_bytes()),
            publish: vec!["logs:**".into()],
            admin: false,
        }],
        ..AuthConfig::default()
    }
}

fn strict_config() -> AuthConfig {
    AuthConfig {
        jwt_secret: Some(SECRET.into()),
        jwt_secret_algorithms: vec!["HS256".into()],
        issuer: Some(ISSUER.into()),
        audience: Some(AUDIENCE.into()),
        ..AuthConfig::default()
    }
}

fn new_auth(cfg: &AuthConfig) -> Auth {
    Auth::new(cfg, reqwest::Client::new(), Arc::new(Metrics::default())).expect("valid config")
}

fn harness() -> &'static Harness {
    static H: OnceLock<Harness> = OnceLock::new();
    H.get_or_init(|| Harness {
        plain: new_auth(&config()),
        strict: new_auth(&strict_config()),
    })
}

/// Tokens minted with `ssegate::auth::Minter` (valid for 100 years), which must verify.
fn minted() -> Vec<(&'static str, String)> {
    const TTL: u64 = 100 * 365 * 24 * 3600;
    let grants = |sub: &[&str], publish: &[&str], admin| Grants {
        subscribe: sub.iter().map(|s| s.to_string()).collect(),
        publish: publish.iter().map(|s| s.to_string()).collect(),
        admin,
        ..Grants::default()
    };
    let plain = Minter::new(SECRET, &config());
    let strict = Minter::new(SECRET, &strict_config());
    vec![
        (
            "minted-subscriber",
            plain
                .mint(
                    "u1",
                    grants(&["logs:w1:*", "notifications:{sub}"], &[], false),
                    TTL,
                )
                .unwrap(),
        ),
        (
            "minted-publisher",
            plain
                .mint("etl-worker", grants(&[], &["logs:**"], false), TTL)
                .unwrap(),
        ),
        (
            "minted-admin",
            plain
                .mint("root@example.com", grants(&["**"], &["**"], true), TTL)
                .unwrap(),
        ),
        (
            "minted-strict",
            strict
                .mint("u2", grants(&["a:*:b"], &["a:{sub}"], false), TTL)
                .unwrap(),
        ),
    ]
}

/// Checks that minted tokens verify (the harness reaches the accepting path), and writes
/// them as seeds into `$SSEGATE_FUZZ_SEEDS_OUT` when set (`fuzz/run.sh` points it at the
/// corpus, so every run starts from fresh, valid tokens).
fn init() {
    let h = harness();
    let out = std::env::var_os("SSEGATE_FUZZ_SEEDS_OUT");
    for (name, token) in minted() {
        let p = futures::executor::block_on(h.plain.verify_jwt(&token))
            .unwrap_or_else(|e| panic!("minted token {name} does not verify: {e}"));
        assert!(!p.user.is_empty());
        if name == "minted-strict" {
            futures::executor::block_on(h.strict.verify_jwt(&token))
                .unwrap_or_else(|e| panic!("minted token {name} does not verify: {e}"));
        }
        if let Some(dir) = &out {
            let dir = std::path::Path::new(dir);
            std::fs::create_dir_all(dir).expect("seed directory");
            std::fs::write(dir.join(name), &token).expect("write seed");
        }
    }
}

/// The token to verify: the input itself, or the input signed with the secret.
fn token_for(text: &str) -> Option<String> {
    if !text.starts_with('{') {
        return Some(text.to_owned());
    }
    let (header, payload) = match text.split_once('\n') {
        Some((h, p)) => (h.to_owned(), p),
        None => (r#"{"alg":"HS256","typ":"JWT"}"#.to_owned(), text),
    };
    let alg = match serde_json::from_str::<Value>(&header)
        .ok()
        .as_ref()
        .and_then(|h| h.get("alg"))
        .and_then(Value::as_str)
    {
        Some("HS384") => Algorithm::HS384,
        Some("HS512") => Algorithm::HS512,
        // Whatever else the header claims (`none`, `RS256`, garbage), an HS256 signature.
        _ => Algorithm::HS256,
    };
    let message = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header),
        URL_SAFE_NO_PAD.encode(payload)
    );
    let sig = jsonwebtoken::crypto::sign(
        message.as_bytes(),
        &EncodingKey::from_secret(SECRET.as_bytes()),
        alg,
    )
    .ok()?;
    Some(format!("{message}.{sig}"))
}

fn segment_char_ok(c: char) -> bool {
    c.is_ascii_alphanumeric() || "_-.@=+/~!$%&,".contains(c)
}

/// Whether `grant` is `template` with each `{claims.…}` replaced by one literal segment
/// value (template segments hold at most one placeholder, as the rules above do).
fn fits(template: &str, grant: &str) -> bool {
    let t: Vec<&str> = template.split(':').collect();
    let g: Vec<&str> = grant.split(':').collect();
    t.len() == g.len()
        && t.iter().zip(&g).all(|(ts, gs)| match ts.find("{claims.") {
            None => ts == gs,
            Some(start) => {
                let end = ts.rfind('}').expect("closed placeholder");
                let (pre, post) = (&ts[..start], &ts[end + 1..]);
                gs.len() > pre.len() + post.len()
                    && gs.starts_with(pre)
                    && gs.ends_with(post)
                    && gs[pre.len()..gs.len() - post.len()]
                        .chars()
                        .all(segment_char_ok)
            }
        })
}

/// The token's decoded header and payload, as the verifier saw them.
fn parts(token: &str) -> (Value, Value) {
    let mut it = token.split('.');
    let mut part = || {
        let raw = URL_SAFE_NO_PAD
            .decode(it.next().expect("three parts"))
            .expect("accepted tokens are base64url");
        serde_json::from_slice::<Value>(&raw).expect("accepted tokens hold JSON")
    };
    let header = part();
    let payload = part();
    (header, payload)
}

fn check_accepted(token: &str, p: &ssegate::auth::Principal, strict: bool) {
    let (header, claims) = parts(token);
    let alg = header["alg"].as_str().expect("alg is a string");
    let allowed: &[&str] = if strict {
        &["HS256"]
    } else {
        &["HS256", "HS384", "HS512"]
    };
    assert!(allowed.contains(&alg), "accepted alg {alg:?}");
    // `exp` and `sub` are required, the user is the token's `sub`.
    assert!(claims.get("exp").is_some_and(Value::is_number), "{claims}");
    assert_eq!(claims["sub"].as_str(), Some(p.user.as_str()));
    validate_user(&p.user).expect("the user id is valid");
    if strict {
        assert_eq!(claims["iss"], ISSUER, "{claims}");
        let aud_ok = match &claims["aud"] {
            Value::String(a) => a == AUDIENCE,
            Value::Array(a) => a.iter().any(|a| a == AUDIENCE),
            _ => false,
        };
        assert!(aud_ok, "{claims}");
    }
    // Grants: valid patterns, either the `ssegate` claim's own or a rule's template with a
    // literal segment per claim.
    let own = |kind: &str| -> Vec<String> {
        claims["ssegate"][kind]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default()
    };
    let check = |grants: &[String], own: Vec<String>, rules: &[&str]| {
        for g in grants {
            validate_pattern(g).unwrap_or_else(|e| panic!("granted invalid pattern {g:?}: {e}"));
            assert!(
                own.contains(g) || (!strict && rules.iter().any(|t| fits(t, g))),
                "grant {g:?} is neither the token's nor a rule's; claims {claims}"
            );
        }
    };
    check(&p.grants.subscribe, own("subscribe"), &SUBSCRIBE_RULES);
    check(&p.grants.publish, own("publish"), &PUBLISH_RULES);
    if p.grants.admin {
        assert_eq!(claims["ssegate"]["admin"], json!(true));
    }
}

/// Expiry and not-before depend on the clock; everything else must agree between runs.
fn timing(r: &Result<ssegate::auth::Principal, AuthError>) -> bool {
    matches!(r, Err(AuthError::Expired | AuthError::NotYetValid))
}

fuzz_target!(
    init: { init() },
    |data: &[u8]| {
        let Ok(text) = std::str::from_utf8(data) else {
            return;
        };
        let Some(token) = token_for(text) else {
            return;
        };
        let h = harness();
        for (auth, strict) in [(&h.plain, false), (&h.strict, true)] {
            let verified = futures::executor::block_on(auth.verify_jwt(&token));
            if let Ok(p) = &verified {
                check_accepted(&token, p, strict);
            }
            let creds = RequestCreds {
                token: Some(&token),
                ..RequestCreds::default()
            };
            let authenticated = futures::executor::block_on(auth.authenticate(&creds));
            let dots = token.bytes().filter(|b| *b == b'.').count();
            match &authenticated {
                Ok(p) if dots == 0 => {
                    assert!(!strict && token == PUBLISHER_KEY, "key {token:?} accepted");
                    assert_eq!(p.user, "etl");
                }
                Ok(p) => {
                    assert_eq!(dots, 2, "a token with {dots} dots was accepted");
                    check_accepted(&token, p, strict);
                }
                Err(_) => {}
            }
            if dots == 2 && !timing(&verified) && !timing(&authenticated) {
                assert_eq!(
                    verified.is_ok(),
                    authenticated.is_ok(),
                    "verify_jwt and authenticate disagree on {token:?}"
                );
            }
        }
    }
);
