//! The keys tokens are verified with: an HS256 secret, one PEM public key
//! (RS256, ES256 or EdDSA, told apart by the key itself), or a JWKS whose
//! keys a token picks by `kid`. Each key carries the one algorithm it
//! verifies, fixed here from the key and never taken from a token, so an
//! HS256 token "signed" with an RSA public key as its secret is refused.

use std::path::{Path, PathBuf};

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, JwkSet, PublicKeyUse};
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey};

use super::AuthError;

/// Why the configured key could not be used. Shown to the operator at
/// start-up, so it names the file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("the secret is empty")]
    EmptySecret,
    /// The I/O error is in the message rather than a `source`, so that
    /// whoever prints this prints the reason once.
    #[error("cannot read the key file {path}: {error}")]
    Unreadable {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("the key file {path} is not usable: {reason}")]
    Unusable { path: PathBuf, reason: String },
}

/// One key and the one algorithm it verifies.
#[derive(Clone, Debug)]
pub struct VerifyKey {
    key: DecodingKey,
    alg: Algorithm,
}

impl VerifyKey {
    pub fn alg(&self) -> Algorithm {
        self.alg
    }

    pub(crate) fn key(&self) -> &DecodingKey {
        &self.key
    }
}

/// Every key the server accepts tokens from.
#[derive(Clone, Debug)]
pub enum Keys {
    /// A secret or a PEM key: every token is checked against it, whatever
    /// `kid` it names (there is nothing to choose between).
    One(VerifyKey),
    /// A JWKS: the token's `kid` chooses.
    Set {
        keys: Vec<(Option<String>, VerifyKey)>,
        /// The set's keys herald cannot use, each with why, for the
        /// start-up log (read before logging starts, so not logged here).
        skipped: Vec<String>,
    },
}

impl Keys {
    /// An HS256 secret, used as its bytes.
    pub fn secret(secret: &str) -> Result<Keys, ConfigError> {
        if secret.is_empty() {
            return Err(ConfigError::EmptySecret);
        }
        let key =
            DecodingKey::from_secret(secret.as_bytes()).map_err(|_| ConfigError::EmptySecret)?;
        Ok(Keys::One(VerifyKey {
            key,
            alg: Algorithm::HS256,
        }))
    }

    /// A PEM public key or a JWKS JSON file.
    pub fn file(path: &Path) -> Result<Keys, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|error| ConfigError::Unreadable {
            path: path.to_owned(),
            error,
        })?;
        Keys::parse(&text).map_err(|reason| ConfigError::Unusable {
            path: path.to_owned(),
            reason,
        })
    }

    /// The text of a key file: a JWKS when it is a JSON object, else PEM.
    pub fn parse(text: &str) -> Result<Keys, String> {
        if text.trim_start().starts_with('{') {
            jwks(text)
        } else {
            pem(text).map(Keys::One)
        }
    }

    /// The key a token with header `kid` is checked against.
    pub fn select(&self, kid: Option<&str>) -> Result<&VerifyKey, AuthError> {
        match self {
            Keys::One(key) => Ok(key),
            Keys::Set { keys, .. } => {
                if let Some(kid) = kid
                    && let Some((_, key)) = keys.iter().find(|(k, _)| k.as_deref() == Some(kid))
                {
                    return Ok(key);
                }
                // A set of one key stands for that key: tokens from an
                // issuer with a single key often carry no `kid`.
                match keys.as_slice() {
                    [(None, key)] => Ok(key),
                    [(Some(_), key)] if kid.is_none() => Ok(key),
                    _ => Err(AuthError::UnknownKid),
                }
            }
        }
    }

    /// What the operator should hear about: keys of the set left unused.
    pub fn warnings(&self) -> Vec<String> {
        match self {
            Keys::One(_) => Vec::new(),
            Keys::Set { skipped, .. } => skipped
                .iter()
                .map(|why| format!("JWKS key skipped: {why}"))
                .collect(),
        }
    }

    /// For the start-up log: `HS256`, `ES256`, `JWKS: RS256 (kid a), …`.
    pub fn describe(&self) -> String {
        match self {
            Keys::One(k) => format!("{:?}", k.alg),
            Keys::Set { keys, .. } => {
                let each: Vec<String> = keys
                    .iter()
                    .map(|(kid, k)| match kid {
                        Some(kid) => format!("{:?} (kid {kid})", k.alg),
                        None => format!("{:?}", k.alg),
                    })
                    .collect();
                format!("JWKS: {}", each.join(", "))
            }
        }
    }
}

/// The label of the first PEM block: `PUBLIC KEY`, `RSA PUBLIC KEY`, …
fn pem_label(text: &str) -> Option<&str> {
    let rest = &text[text.find("-----BEGIN ")? + "-----BEGIN ".len()..];
    Some(&rest[..rest.find("-----")?])
}

/// One PEM public key, its algorithm found from the key.
fn pem(text: &str) -> Result<VerifyKey, String> {
    let label = pem_label(text).ok_or(
        "neither a PEM public key (-----BEGIN PUBLIC KEY-----) nor a JWKS ({\"keys\":[…]})",
    )?;
    match label {
        "PUBLIC KEY" | "RSA PUBLIC KEY" => {}
        l if l.contains("PRIVATE KEY") => {
            return Err(format!(
                "it holds a private key ({l}); give herald the public key only (openssl pkey -in KEY -pubout)"
            ));
        }
        "CERTIFICATE" => {
            return Err(
                "it holds a certificate; give herald its public key (openssl x509 -in CERT -pubkey -noout)"
                    .into(),
            );
        }
        other => return Err(format!("a PEM {other:?} is not a public key")),
    }
    let bytes = text.as_bytes();
    // Each constructor accepts only its own kind of key (it reads the
    // algorithm OID inside), so at most one of them succeeds.
    let key = DecodingKey::from_rsa_pem(bytes)
        .or_else(|_| DecodingKey::from_ec_pem(bytes))
        .or_else(|_| DecodingKey::from_ed_pem(bytes))
        .map_err(|_| "not an RSA, EC P-256 or Ed25519 public key".to_owned())?;
    let alg = algorithm_of(&key)?;
    Ok(VerifyKey { key, alg })
}

/// The algorithm a PEM key verifies: RS256, ES256 (ES384 for a P-384 key)
/// or EdDSA. Reading the key's parameters also checks it is well formed
/// now, rather than at the first token.
fn algorithm_of(key: &DecodingKey) -> Result<Algorithm, String> {
    let jwk = Jwk::from_decoding_key(key, None).map_err(|e| format!("a malformed key: {e}"))?;
    default_algorithm(&jwk.algorithm)
}

/// The algorithm a key's type implies when nothing says otherwise.
fn default_algorithm(params: &AlgorithmParameters) -> Result<Algorithm, String> {
    match params {
        AlgorithmParameters::RSA(_) => Ok(Algorithm::RS256),
        AlgorithmParameters::EllipticCurve(ec) => match ec.curve {
            EllipticCurve::P256 => Ok(Algorithm::ES256),
            EllipticCurve::P384 => Ok(Algorithm::ES384),
            ref other => Err(format!("the curve {other:?} is not supported")),
        },
        AlgorithmParameters::OctetKeyPair(okp) => match okp.curve {
            EllipticCurve::Ed25519 => Ok(Algorithm::EdDSA),
            ref other => Err(format!("the curve {other:?} is not supported")),
        },
        AlgorithmParameters::OctetKey(_) => Ok(Algorithm::HS256),
        _ => Err("an unsupported key type".into()),
    }
}

/// A JWKS: every signing key it holds that herald can use. Keys for
/// encryption or of unknown types are skipped (an issuer's set may hold
/// them); a set with no usable key, or two keys with one `kid`, is refused.
fn jwks(text: &str) -> Result<Keys, String> {
    let set: JwkSet =
        serde_json::from_str(text).map_err(|e| format!("not a JWKS ({{\"keys\":[…]}}): {e}"))?;
    let mut keys: Vec<(Option<String>, VerifyKey)> = Vec::new();
    let mut skipped = Vec::new();
    for (i, jwk) in set.keys.iter().enumerate() {
        let kid = jwk.common.key_id.clone();
        let name = kid.clone().unwrap_or_else(|| format!("#{i}"));
        match jwk_key(jwk) {
            Ok(key) => {
                if kid.is_some() && keys.iter().any(|(k, _)| *k == kid) {
                    return Err(format!("two keys have the kid {name:?}"));
                }
                keys.push((kid, key));
            }
            Err(why) => skipped.push(format!("{name}: {why}")),
        }
    }
    if keys.is_empty() {
        return Err(format!(
            "no key herald can verify with ({})",
            if skipped.is_empty() {
                "the set is empty".to_owned()
            } else {
                skipped.join("; ")
            }
        ));
    }
    Ok(Keys::Set { keys, skipped })
}

/// One JWK as a key, with its `alg` when it names one its type can do.
fn jwk_key(jwk: &Jwk) -> Result<VerifyKey, String> {
    if matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption)) {
        return Err("an encryption key (use: enc)".into());
    }
    let implied = default_algorithm(&jwk.algorithm)?;
    let alg = match jwk.common.key_algorithm {
        None => implied,
        Some(stated) => {
            let alg: Algorithm = stated
                .to_string()
                .parse()
                .map_err(|_| format!("the algorithm {stated} is not a signature algorithm"))?;
            // An EC key verifies only its curve's algorithm; the other
            // families' members share one key type.
            let fits = match implied.family() {
                AlgorithmFamily::Ec => alg == implied,
                family => alg.family() == family,
            };
            if !fits {
                return Err(format!("alg {alg:?} does not fit a key of this type"));
            }
            alg
        }
    };
    let key = DecodingKey::from_jwk(jwk).map_err(|e| format!("a malformed key: {e}"))?;
    Ok(VerifyKey { key, alg })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A test key file under `crates/server/tests/keys/`.
    pub fn test_key(name: &str) -> String {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/keys")
            .join(name);
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }

    fn alg_of(text: &str) -> Result<Algorithm, String> {
        match Keys::parse(text)? {
            Keys::One(k) => Ok(k.alg),
            Keys::Set { .. } => Err("a set".into()),
        }
    }

    #[test]
    fn a_pem_key_fixes_its_algorithm() {
        assert_eq!(alg_of(&test_key("rsa.pub")), Ok(Algorithm::RS256));
        assert_eq!(alg_of(&test_key("rsa-pkcs1.pub")), Ok(Algorithm::RS256));
        assert_eq!(alg_of(&test_key("ec.pub")), Ok(Algorithm::ES256));
        assert_eq!(alg_of(&test_key("ed.pub")), Ok(Algorithm::EdDSA));
    }

    #[test]
    fn private_keys_certificates_and_junk_are_refused_with_a_reason() {
        let private = alg_of(&test_key("ec.key")).err().unwrap_or_default();
        assert!(private.contains("private key"), "{private}");
        let junk = alg_of("hello").err().unwrap_or_default();
        assert!(junk.contains("PEM"), "{junk}");
        let broken = "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n";
        assert!(alg_of(broken).is_err());
        assert!(Keys::parse(r#"{"keys":[]}"#).is_err());
        assert!(Keys::parse(r#"{"keys": 3}"#).is_err());
    }

    #[test]
    fn a_missing_file_names_its_path() {
        let err = Keys::file(Path::new("/nonexistent/herald.pem"))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("/nonexistent/herald.pem"), "{err}");
        assert!(matches!(Keys::secret(""), Err(ConfigError::EmptySecret)));
    }

    /// A JWKS of the test public keys, each with `kid` = its file name.
    pub fn test_jwks(names: &[&str]) -> String {
        let keys: Vec<serde_json::Value> = names
            .iter()
            .map(|name| {
                let key = pem(&test_key(name)).unwrap_or_else(|e| panic!("{e}"));
                let mut jwk = Jwk::from_decoding_key(&key.key, Some(key.alg))
                    .unwrap_or_else(|e| panic!("{e}"));
                jwk.common.key_id = Some((*name).to_owned());
                serde_json::to_value(jwk).unwrap_or_default()
            })
            .collect();
        serde_json::json!({ "keys": keys }).to_string()
    }

    #[test]
    fn a_jwks_is_chosen_from_by_kid() {
        let keys = Keys::parse(&test_jwks(&["rsa.pub", "ec.pub", "ed.pub"]))
            .unwrap_or_else(|e| panic!("{e}"));
        let alg = |kid| keys.select(kid).map(VerifyKey::alg);
        assert_eq!(alg(Some("rsa.pub")), Ok(Algorithm::RS256));
        assert_eq!(alg(Some("ec.pub")), Ok(Algorithm::ES256));
        assert_eq!(alg(Some("ed.pub")), Ok(Algorithm::EdDSA));
        assert_eq!(alg(Some("other")), Err(AuthError::UnknownKid));
        // Several keys: a token must say which.
        assert_eq!(alg(None), Err(AuthError::UnknownKid));
        assert!(keys.describe().contains("ES256 (kid ec.pub)"));
    }

    #[test]
    fn a_jwks_of_one_key_serves_tokens_without_kid() {
        let keys = Keys::parse(&test_jwks(&["ec.pub"])).unwrap_or_else(|e| panic!("{e}"));
        assert!(keys.select(None).is_ok());
        assert!(keys.select(Some("ec.pub")).is_ok());
        assert_eq!(
            keys.select(Some("other")).map(VerifyKey::alg),
            Err(AuthError::UnknownKid)
        );
    }

    #[test]
    fn jwks_keys_herald_cannot_use_are_skipped_or_refused() {
        let mut set: serde_json::Value =
            serde_json::from_str(&test_jwks(&["rsa.pub", "ec.pub"])).unwrap_or_default();
        set["keys"][0]["use"] = "enc".into();
        // A stated alg that contradicts the key's type.
        set["keys"][1]["alg"] = "RS256".into();
        let err = Keys::parse(&set.to_string()).err().unwrap_or_default();
        assert!(err.contains("no key"), "{err}");
        set["keys"][1]["alg"] = "ES256".into();
        let keys = Keys::parse(&set.to_string()).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(keys.describe(), "JWKS: ES256 (kid ec.pub)");
        let warnings = keys.warnings();
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(warnings[0].contains("rsa.pub") && warnings[0].contains("enc"));
        let dup = test_jwks(&["ec.pub", "ec.pub"]);
        assert!(
            Keys::parse(&dup)
                .err()
                .unwrap_or_default()
                .contains("two keys")
        );
    }
}
