//! Verification keys: a key and the algorithms it may verify, and the algorithm families
//! that bound every allow-list. Shared by the static keys ([`super::jwt`]) and the JWKS
//! document ([`super::jwks`]).

use jsonwebtoken::{Algorithm, DecodingKey};

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
