//! Who may do what: a JWT verified against the configured key becomes a
//! [`Grant`], and a request's [`Action`]s are checked against it. Pure
//! decisions over a token and a clock; reading the token out of a request
//! is [`extract`], answering the refusal is the caller's.
//!
//! ```text
//! token ──verify──▶ Grant ──allows(Action)──▶ yes / 403
//!   │ bad                                            ▲
//!   └──────────────▶ AuthError ──▶ 401               │
//! no token ──public_allows(Action)──────────────────┘ (else 401)
//! ```

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Validation, decode, decode_header};

pub mod claims;
pub mod extract;
pub mod keys;
pub mod mint;

pub use claims::{Action, Grant, Pattern, PatternError, Scopes};
pub use extract::{Found, Source};
pub use keys::{ConfigError, Keys};
pub use mint::{Mint, MintError, mint};

use claims::{Claims, any_matches, unix_seconds};

/// How far `exp` and `nbf` may be off, for clocks that disagree a little.
pub const LEEWAY_SECS: i64 = 5;

/// Where the verification key comes from.
#[derive(Debug, Clone)]
pub enum KeySource {
    /// An HS256 shared secret.
    Secret(String),
    /// A PEM public key (RS256, ES256, EdDSA) or a JWKS JSON file.
    File(PathBuf),
}

/// The authorization settings, as the binary's flags give them.
#[derive(Debug, Clone)]
pub struct AuthConfig {
    pub key: KeySource,
    /// When set, a token's `iss` must equal it.
    pub issuer: Option<String>,
    /// When set, a token's `aud` must be or contain it.
    pub audience: Option<String>,
    /// Topics a request without a token may read.
    pub public_subscribe: Vec<Pattern>,
}

/// Why a token was not accepted: each is a `401`. The messages are safe to
/// send to the client: they say nothing of the key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("a token is required (Authorization: Bearer, the herald_token cookie or access_token)")]
    Missing,
    #[error("the token is not a well-formed JWT")]
    Malformed,
    #[error("the token's signature does not verify")]
    BadSignature,
    /// Its header's `alg` is not the one the key verifies (an HS256 token
    /// against a public key, say). `alg: none` is not even read as a JWT:
    /// that one is [`AuthError::Malformed`].
    #[error("the token is signed with an algorithm this server does not accept")]
    WrongAlgorithm,
    #[error("the token has expired")]
    Expired,
    #[error("the token is not valid yet")]
    NotYetValid,
    #[error("the token is from another issuer")]
    WrongIssuer,
    #[error("the token is for another audience")]
    WrongAudience,
    #[error("the token names a key this server does not know")]
    UnknownKid,
}

impl AuthError {
    /// Whether a token was presented at all: RFC 6750 sends
    /// `error="invalid_token"` only then.
    pub fn token_presented(&self) -> bool {
        !matches!(self, AuthError::Missing)
    }
}

/// Why a request may not go on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Denied {
    /// No usable token: `401`.
    #[error(transparent)]
    Unauthorized(#[from] AuthError),
    /// A valid token that does not cover the action: `403`. The message
    /// names the action, which is the client's own request.
    #[error("{0}")]
    Forbidden(String),
}

/// The verifier: keys, expected issuer and audience, and what is public.
/// Built once at start-up and shared (`Arc`) by every request.
#[derive(Debug)]
pub struct Auth {
    keys: Keys,
    issuer: Option<String>,
    audience: Option<String>,
    public_subscribe: Vec<Pattern>,
    /// Tokens verified already, by their text: a client sends the same
    /// token with every request, and verifying it (the signature, then
    /// the claims decoded) was a fifth of a publish's cost. A token's
    /// verdict changes only with time, and only at `exp`, which is checked
    /// again at every use.
    verified: Mutex<HashMap<Box<str>, Arc<Grant>>>,
}

/// Most tokens remembered at once; past it the memory is cleared.
const VERIFIED_CAP: usize = 4096;

impl Auth {
    /// Reads the key (a file, when named). The error is for the operator.
    pub fn new(config: AuthConfig) -> Result<Auth, ConfigError> {
        let keys = match &config.key {
            KeySource::Secret(secret) => Keys::secret(secret)?,
            KeySource::File(path) => Keys::file(path)?,
        };
        Ok(Auth::with_keys(keys, config))
    }

    /// With keys already loaded (`config.key` is not read).
    pub fn with_keys(keys: Keys, config: AuthConfig) -> Auth {
        Auth {
            keys,
            issuer: config.issuer,
            audience: config.audience,
            public_subscribe: config.public_subscribe,
            verified: Mutex::default(),
        }
    }

    /// For the start-up log: which algorithms, issuer, audience.
    pub fn describe(&self) -> String {
        let mut text = self.keys.describe();
        if let Some(iss) = &self.issuer {
            text.push_str(&format!("; issuer {iss:?}"));
        }
        if let Some(aud) = &self.audience {
            text.push_str(&format!("; audience {aud:?}"));
        }
        if !self.public_subscribe.is_empty() {
            let public: Vec<&str> = self.public_subscribe.iter().map(Pattern::as_str).collect();
            text.push_str(&format!("; public subscribe {}", public.join(" ")));
        }
        text
    }

    /// What the operator should be told at start-up (unused JWKS keys).
    pub fn warnings(&self) -> Vec<String> {
        self.keys.warnings()
    }

    /// Checks `token` at time `now`: its signature with the key its `kid`
    /// picks and the algorithm that key fixes, then `exp` and `nbf` (when
    /// present, with [`LEEWAY_SECS`]), then `iss` and `aud` when the server
    /// expects them. Nothing of a token is read before its signature holds.
    pub fn verify(&self, token: &str, now: SystemTime) -> Result<Grant, AuthError> {
        let header = decode_header(token).map_err(|e| refusal(e.kind()))?;
        let key = self.keys.select(header.kid.as_deref())?;
        if header.alg != key.alg() {
            return Err(AuthError::WrongAlgorithm);
        }
        // The library checks the signature and the algorithm; the claims
        // are checked below against `now`, not the library's own clock, so
        // that the caller (and its tests) decide what time it is.
        let mut validation = Validation::new(key.alg());
        validation.required_spec_claims.clear();
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.validate_aud = false;
        let claims = decode::<Claims>(token, key.key(), &validation)
            .map_err(|e| refusal(e.kind()))?
            .claims;
        let now = unix_seconds(now);
        if claims
            .exp
            .is_some_and(|exp| now > exp.0.saturating_add(LEEWAY_SECS))
        {
            return Err(AuthError::Expired);
        }
        if claims
            .nbf
            .is_some_and(|nbf| now < nbf.0.saturating_sub(LEEWAY_SECS))
        {
            return Err(AuthError::NotYetValid);
        }
        if let Some(wanted) = &self.issuer
            && claims.iss.as_deref() != Some(wanted.as_str())
        {
            return Err(AuthError::WrongIssuer);
        }
        // Without `--auth-audience` a token's `aud` is not looked at: the
        // server has no name of its own to find in it.
        if let Some(wanted) = &self.audience
            && !claims.aud.as_ref().is_some_and(|aud| aud.contains(wanted))
        {
            return Err(AuthError::WrongAudience);
        }
        Ok(Grant {
            scopes: claims.herald.unwrap_or_default(),
            sub: claims.sub,
            exp: claims.exp.map(|exp| exp.to_system_time()),
        })
    }

    /// [`Auth::verify`], remembered: a token verified before is accepted
    /// again without its signature being checked, until its `exp` (with
    /// the leeway) has passed.
    pub fn check(&self, token: &str, now: SystemTime) -> Result<Arc<Grant>, AuthError> {
        let mut verified = self.verified.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(grant) = verified.get(token) {
            let expired = grant.exp.is_some_and(|exp| {
                unix_seconds(now) > unix_seconds(exp).saturating_add(LEEWAY_SECS)
            });
            if !expired {
                return Ok(Arc::clone(grant));
            }
            verified.remove(token);
        }
        drop(verified);
        let grant = Arc::new(self.verify(token, now)?);
        let mut verified = self.verified.lock().unwrap_or_else(|e| e.into_inner());
        if verified.len() >= VERIFIED_CAP {
            verified.clear();
        }
        verified.insert(token.into(), Arc::clone(&grant));
        Ok(grant)
    }

    /// Whether a request with no token may do `action`: read a topic that
    /// `--public-subscribe` names, nothing else.
    pub fn public_allows(&self, action: &Action<'_>) -> bool {
        match *action {
            Action::Subscribe(topic) => any_matches(&self.public_subscribe, topic),
            _ => false,
        }
    }

    /// The whole decision for one request that asks to do every one of
    /// `actions` (each topic of a subscribe, each line of a batch):
    ///
    /// - no token: allowed (`Ok(None)`) when every action is public, else
    ///   [`AuthError::Missing`];
    /// - a token that does not verify: refused `401` even where no token
    ///   would have been allowed, so a client learns its token is bad;
    /// - a valid token: allowed when its scopes or the public patterns
    ///   cover each action (a token never allows less than none), else
    ///   `403` naming the first action refused.
    pub fn authorize(
        &self,
        token: Option<&str>,
        actions: &[Action<'_>],
        now: SystemTime,
    ) -> Result<Option<Arc<Grant>>, Denied> {
        let Some(token) = token else {
            return if actions.iter().all(|a| self.public_allows(a)) {
                Ok(None)
            } else {
                Err(AuthError::Missing.into())
            };
        };
        let grant = self.check(token, now)?;
        match actions
            .iter()
            .find(|a| !grant.allows(a) && !self.public_allows(a))
        {
            Some(refused) => Err(Denied::Forbidden(format!("this token may not {refused}"))),
            None => Ok(Some(grant)),
        }
    }
}

/// A library error as what the client is told.
fn refusal(kind: &ErrorKind) -> AuthError {
    match kind {
        ErrorKind::InvalidSignature
        | ErrorKind::InvalidEcdsaKey
        | ErrorKind::InvalidEddsaKey
        | ErrorKind::InvalidRsaKey(_)
        | ErrorKind::InvalidKeyFormat
        | ErrorKind::Provider(_) => AuthError::BadSignature,
        ErrorKind::InvalidAlgorithm
        | ErrorKind::MissingAlgorithm
        | ErrorKind::UnsupportedAlgorithm
        | ErrorKind::InvalidAlgorithmName => AuthError::WrongAlgorithm,
        _ => AuthError::Malformed,
    }
}

#[cfg(test)]
mod tests;
