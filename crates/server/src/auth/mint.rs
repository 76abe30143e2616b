//! Making an HS256 token (`herald token`): for development and for
//! deployments whose backend shares the secret with herald.

use std::time::{Duration, SystemTime};

use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use serde::Serialize;

use super::Scopes;
use super::claims::unix_seconds;

/// What a minted token says.
#[derive(Debug, Clone, Default)]
pub struct Mint {
    pub scopes: Scopes,
    pub sub: Option<String>,
    /// How long it lasts; `None` makes a token with no `exp`, valid until
    /// the secret changes.
    pub ttl: Option<Duration>,
    pub issuer: Option<String>,
    pub audience: Option<String>,
}

/// Why no token was made.
#[derive(Debug, thiserror::Error)]
pub enum MintError {
    #[error("the secret is empty")]
    EmptySecret,
    #[error("encoding the token: {0}")]
    Encode(String),
}

#[derive(Serialize)]
struct Claims<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    sub: Option<&'a str>,
    iat: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    exp: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    iss: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    aud: Option<&'a str>,
    herald: &'a Scopes,
}

/// An HS256 token issued at `now`.
pub fn mint(secret: &str, spec: &Mint, now: SystemTime) -> Result<String, MintError> {
    let iat = unix_seconds(now);
    let exp = spec
        .ttl
        .map(|ttl| iat.saturating_add(i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX)));
    let claims = Claims {
        sub: spec.sub.as_deref(),
        iat,
        exp,
        iss: spec.issuer.as_deref(),
        aud: spec.audience.as_deref(),
        herald: &spec.scopes,
    };
    let key = EncodingKey::from_secret(secret.as_bytes()).map_err(|_| MintError::EmptySecret)?;
    encode(&Header::new(Algorithm::HS256), &claims, &key)
        .map_err(|e| MintError::Encode(e.to_string()))
}
