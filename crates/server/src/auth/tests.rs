//! `Auth::verify` and `Auth::authorize` against tokens of every algorithm,
//! signed here with the test keys under `crates/server/tests/keys/`.

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use serde_json::{Value, json};

use super::keys::tests::{test_jwks, test_key};
use super::*;

/// The test's "now": any fixed time works, the checks never read the clock.
const NOW: u64 = 1_700_000_000;

fn now() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(NOW)
}

fn at(offset: i64) -> i64 {
    i64::try_from(NOW).unwrap_or(0) + offset
}

fn config(key: KeySource) -> AuthConfig {
    AuthConfig {
        key,
        issuer: None,
        audience: None,
        public_subscribe: Vec::new(),
    }
}

fn auth(key: KeySource) -> Auth {
    Auth::new(config(key)).unwrap_or_else(|e| panic!("{e}"))
}

fn key_file(name: &str) -> KeySource {
    KeySource::File(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/keys")
            .join(name),
    )
}

fn secret() -> KeySource {
    KeySource::Secret("s3cret".into())
}

/// A token of `claims` signed by `alg` with the private key in file
/// `private` (or, for HMAC, with `private` itself as the secret).
fn sign(alg: Algorithm, private: &str, kid: Option<&str>, claims: &Value) -> String {
    let key = match alg {
        Algorithm::HS256 => EncodingKey::from_secret(private.as_bytes()),
        Algorithm::RS256 => EncodingKey::from_rsa_pem(test_key(private).as_bytes()),
        Algorithm::ES256 => EncodingKey::from_ec_pem(test_key(private).as_bytes()),
        Algorithm::EdDSA => EncodingKey::from_ed_pem(test_key(private).as_bytes()),
        other => panic!("no test key for {other:?}"),
    }
    .unwrap_or_else(|e| panic!("{e}"));
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_owned);
    encode(&header, claims, &key).unwrap_or_else(|e| panic!("{e}"))
}

fn scoped() -> Value {
    json!({
        "sub": "alice",
        "exp": at(60),
        "herald": {"publish": ["news"], "subscribe": ["chat.*"]},
    })
}

#[test]
fn every_algorithm_verifies_with_its_key() {
    let cases = [
        (Algorithm::RS256, "rsa.key", "rsa.pub"),
        (Algorithm::RS256, "rsa.key", "rsa-pkcs1.pub"),
        (Algorithm::ES256, "ec.key", "ec.pub"),
        (Algorithm::EdDSA, "ed.key", "ed.pub"),
    ];
    for (alg, private, public) in cases {
        let grant = auth(key_file(public))
            .verify(&sign(alg, private, None, &scoped()), now())
            .unwrap_or_else(|e| panic!("{alg:?} with {public}: {e}"));
        assert_eq!(grant.sub.as_deref(), Some("alice"));
        assert!(grant.allows(&Action::Publish("news")));
        assert!(grant.allows(&Action::Subscribe("chat.1")));
        assert!(!grant.allows(&Action::Subscribe("news")));
        assert_eq!(grant.exp, Some(now() + Duration::from_secs(60)));
    }
    let grant = auth(secret())
        .verify(&sign(Algorithm::HS256, "s3cret", None, &scoped()), now())
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(grant.sub.as_deref(), Some("alice"));
}

#[test]
fn another_key_or_a_changed_token_is_a_bad_signature() {
    let ec = auth(key_file("ec.pub"));
    let token = sign(Algorithm::ES256, "ec2.key", None, &scoped());
    assert_eq!(ec.verify(&token, now()), Err(AuthError::BadSignature));
    let hs = auth(secret());
    let token = sign(Algorithm::HS256, "other", None, &scoped());
    assert_eq!(hs.verify(&token, now()), Err(AuthError::BadSignature));
    // Someone else's claims on a genuine signature.
    let genuine = sign(Algorithm::HS256, "s3cret", None, &json!({"herald": {}}));
    let forged = sign(
        Algorithm::HS256,
        "x",
        None,
        &json!({"herald": {"admin": true}}),
    );
    let mut parts: Vec<&str> = forged.split('.').collect();
    parts[2] = genuine.split('.').nth(2).unwrap_or_default();
    assert_eq!(
        hs.verify(&parts.join("."), now()),
        Err(AuthError::BadSignature)
    );
}

#[test]
fn the_algorithm_is_the_keys_not_the_tokens() {
    // The classic confusion: HS256 "signed" with the RSA public key itself.
    let rsa = auth(key_file("rsa.pub"));
    let public_pem = test_key("rsa.pub");
    let confused = sign(Algorithm::HS256, &public_pem, None, &scoped());
    assert_eq!(rsa.verify(&confused, now()), Err(AuthError::WrongAlgorithm));
    // A public-key token against a secret, and one family against another.
    let rs = sign(Algorithm::RS256, "rsa.key", None, &scoped());
    assert_eq!(
        auth(secret()).verify(&rs, now()),
        Err(AuthError::WrongAlgorithm)
    );
    let es = sign(Algorithm::ES256, "ec.key", None, &scoped());
    assert_eq!(
        auth(key_file("ed.pub")).verify(&es, now()),
        Err(AuthError::WrongAlgorithm)
    );
}

#[test]
fn alg_none_and_junk_are_refused() {
    let hs = auth(secret());
    // {"alg":"none","typ":"JWT"} . {"herald":{"admin":true}} . (no signature)
    let none = "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.eyJoZXJhbGQiOnsiYWRtaW4iOnRydWV9fQ.";
    assert_eq!(hs.verify(none, now()), Err(AuthError::Malformed));
    // An HS256 header with the signature left off.
    let real = sign(Algorithm::HS256, "s3cret", None, &scoped());
    let unsigned = format!("{}.", &real[..real.rfind('.').unwrap_or(0)]);
    assert_eq!(hs.verify(&unsigned, now()), Err(AuthError::BadSignature));
    for junk in ["", "abc", "a.b", "a.b.c.d", "!!.!!.!!", "e30.e30.e30"] {
        let err = hs.verify(junk, now());
        assert!(
            matches!(
                err,
                Err(AuthError::Malformed | AuthError::WrongAlgorithm | AuthError::BadSignature)
            ),
            "{junk:?}: {err:?}"
        );
    }
}

#[test]
fn signed_claims_of_the_wrong_shape_are_malformed() {
    let hs = auth(secret());
    for claims in [
        json!({"herald": {"publish": "news"}}),
        json!({"exp": "tomorrow"}),
        json!({"herald": {"admin": "yes"}}),
    ] {
        let token = sign(Algorithm::HS256, "s3cret", None, &claims);
        assert_eq!(
            hs.verify(&token, now()),
            Err(AuthError::Malformed),
            "{claims}"
        );
    }
    // No herald claim, no exp: valid, and allows only what any token may.
    let token = sign(Algorithm::HS256, "s3cret", None, &json!({}));
    let grant = hs.verify(&token, now()).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(grant.scopes, Scopes::default());
    assert_eq!(grant.exp, None);
    assert!(grant.allows(&Action::AnyValidToken));
    assert!(!grant.allows(&Action::Subscribe("a")));
}

#[test]
fn exp_and_nbf_hold_with_five_seconds_of_leeway() {
    let hs = auth(secret());
    let check = |claims: Value| hs.verify(&sign(Algorithm::HS256, "s3cret", None, &claims), now());
    assert!(check(json!({"exp": at(-LEEWAY_SECS)})).is_ok());
    assert_eq!(
        check(json!({"exp": at(-LEEWAY_SECS - 1)})),
        Err(AuthError::Expired)
    );
    assert!(check(json!({"nbf": at(LEEWAY_SECS)})).is_ok());
    assert_eq!(
        check(json!({"nbf": at(LEEWAY_SECS + 1)})),
        Err(AuthError::NotYetValid)
    );
    assert!(check(json!({"nbf": at(-100), "exp": at(100)})).is_ok());
    assert_eq!(check(json!({"exp": 0})), Err(AuthError::Expired));
}

#[test]
fn issuer_and_audience_must_match_when_configured() {
    let strict = Auth::new(AuthConfig {
        issuer: Some("https://id.example".into()),
        audience: Some("herald".into()),
        ..config(secret())
    })
    .unwrap_or_else(|e| panic!("{e}"));
    let check =
        |claims: Value| strict.verify(&sign(Algorithm::HS256, "s3cret", None, &claims), now());
    let iss = "https://id.example";
    assert!(check(json!({"iss": iss, "aud": "herald"})).is_ok());
    assert!(check(json!({"iss": iss, "aud": ["other", "herald"]})).is_ok());
    assert_eq!(
        check(json!({"iss": iss, "aud": ["other"]})),
        Err(AuthError::WrongAudience)
    );
    assert_eq!(check(json!({"iss": iss})), Err(AuthError::WrongAudience));
    assert_eq!(
        check(json!({"iss": "https://evil.example", "aud": "herald"})),
        Err(AuthError::WrongIssuer)
    );
    assert_eq!(check(json!({"aud": "herald"})), Err(AuthError::WrongIssuer));
    // Unconfigured, neither is looked at.
    let lax = auth(secret());
    let token = sign(
        Algorithm::HS256,
        "s3cret",
        None,
        &json!({"iss": "x", "aud": "y"}),
    );
    assert!(lax.verify(&token, now()).is_ok());
}

#[test]
fn a_jwks_picks_the_key_by_kid() {
    let keys =
        Keys::parse(&test_jwks(&["rsa.pub", "ec.pub", "ed.pub"])).unwrap_or_else(|e| panic!("{e}"));
    let jwks = Auth::with_keys(keys, config(secret()));
    let ok = |alg, private, kid| {
        jwks.verify(&sign(alg, private, kid, &scoped()), now())
            .map(|g| g.sub)
    };
    assert_eq!(
        ok(Algorithm::RS256, "rsa.key", Some("rsa.pub")),
        Ok(Some("alice".into()))
    );
    assert!(ok(Algorithm::ES256, "ec.key", Some("ec.pub")).is_ok());
    assert!(ok(Algorithm::EdDSA, "ed.key", Some("ed.pub")).is_ok());
    // The kid picks a key whose algorithm is not the token's.
    assert_eq!(
        ok(Algorithm::ES256, "ec.key", Some("rsa.pub")),
        Err(AuthError::WrongAlgorithm)
    );
    // The right algorithm, another key.
    assert_eq!(
        ok(Algorithm::ES256, "ec2.key", Some("ec.pub")),
        Err(AuthError::BadSignature)
    );
    assert_eq!(
        ok(Algorithm::ES256, "ec.key", Some("nope")),
        Err(AuthError::UnknownKid)
    );
    assert_eq!(
        ok(Algorithm::ES256, "ec.key", None),
        Err(AuthError::UnknownKid)
    );
}

#[test]
fn a_jwks_file_loads_like_a_pem_file() {
    let dir = std::env::temp_dir().join(format!("herald-auth-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{e}"));
    let path = dir.join("jwks.json");
    std::fs::write(&path, test_jwks(&["ed.pub"])).unwrap_or_else(|e| panic!("{e}"));
    let jwks = auth(KeySource::File(path));
    let _ = std::fs::remove_dir_all(&dir);
    // One key: a token without kid uses it.
    let token = sign(Algorithm::EdDSA, "ed.key", None, &scoped());
    assert!(jwks.verify(&token, now()).is_ok());
    assert!(jwks.describe().contains("EdDSA"));
}

#[test]
fn a_config_error_names_the_file_and_a_refusal_says_nothing_of_keys() {
    let err = Auth::new(config(key_file("missing.pem")))
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(err.contains("missing.pem"), "{err}");
    let err = Auth::new(config(key_file("rsa.key")))
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(
        err.contains("rsa.key") && err.contains("private key"),
        "{err}"
    );
    for e in [
        AuthError::Missing,
        AuthError::Malformed,
        AuthError::BadSignature,
        AuthError::WrongAlgorithm,
        AuthError::Expired,
        AuthError::NotYetValid,
        AuthError::WrongIssuer,
        AuthError::WrongAudience,
        AuthError::UnknownKid,
    ] {
        let text = e.to_string();
        assert!(!text.contains("keys/") && !text.contains("BEGIN"), "{text}");
        assert_eq!(e.token_presented(), e != AuthError::Missing);
    }
}

#[test]
fn authorize_decides_anonymous_bad_and_scoped_requests() {
    let auth = Auth::new(AuthConfig {
        public_subscribe: vec![Pattern::parse("public.*").unwrap_or_else(|e| panic!("{e}"))],
        ..config(secret())
    })
    .unwrap_or_else(|e| panic!("{e}"));
    let token = sign(Algorithm::HS256, "s3cret", None, &scoped());
    let bad = sign(Algorithm::HS256, "wrong", None, &scoped());
    let decide = |t: Option<&str>, actions: &[Action<'_>]| auth.authorize(t, actions, now());

    // No token: public topics only.
    assert_eq!(decide(None, &[Action::Subscribe("public.a")]), Ok(None));
    assert_eq!(
        decide(
            None,
            &[Action::Subscribe("public.a"), Action::Subscribe("news")]
        ),
        Err(Denied::Unauthorized(AuthError::Missing))
    );
    assert_eq!(
        decide(None, &[Action::Publish("public.a")]),
        Err(Denied::Unauthorized(AuthError::Missing))
    );
    assert_eq!(
        decide(None, &[Action::AnyValidToken]),
        Err(Denied::Unauthorized(AuthError::Missing))
    );
    // A bad token is refused even where none would do.
    assert_eq!(
        decide(Some(&bad), &[Action::Subscribe("public.a")]),
        Err(Denied::Unauthorized(AuthError::BadSignature))
    );
    // A valid token: its scopes, plus what is public.
    let granted = decide(
        Some(&token),
        &[Action::Subscribe("chat.1"), Action::Subscribe("public.a")],
    );
    assert_eq!(
        granted.ok().flatten().and_then(|g| g.sub.clone()),
        Some("alice".into())
    );
    assert!(decide(Some(&token), &[Action::AnyValidToken]).is_ok());
    match decide(
        Some(&token),
        &[Action::Publish("news"), Action::Publish("sport")],
    ) {
        Err(Denied::Forbidden(why)) => assert!(why.contains("\"sport\""), "{why}"),
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        decide(Some(&token), &[Action::Admin]),
        Err(Denied::Forbidden(_))
    ));
}

#[test]
fn a_minted_token_verifies_with_its_secret() {
    let spec = Mint {
        scopes: Scopes {
            enqueue: vec![Pattern::parse("images").unwrap_or_else(|e| panic!("{e}"))],
            admin: true,
            ..Scopes::default()
        },
        sub: Some("bob".into()),
        ttl: Some(Duration::from_secs(3600)),
        issuer: Some("me".into()),
        audience: Some("herald".into()),
    };
    let token = mint("s3cret", &spec, now()).unwrap_or_else(|e| panic!("{e}"));
    let strict = Auth::new(AuthConfig {
        issuer: Some("me".into()),
        audience: Some("herald".into()),
        ..config(secret())
    })
    .unwrap_or_else(|e| panic!("{e}"));
    let grant = strict
        .verify(&token, now())
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(grant.scopes, spec.scopes);
    assert_eq!(grant.sub.as_deref(), Some("bob"));
    assert_eq!(grant.exp, Some(now() + Duration::from_secs(3600)));
    assert_eq!(
        strict.verify(&token, now() + Duration::from_secs(3600 + 6)),
        Err(AuthError::Expired)
    );
    let forever = mint("s3cret", &Mint::default(), now()).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        auth(secret()).verify(&forever, now()).map(|g| g.exp),
        Ok(None)
    );
    assert!(matches!(
        mint("", &spec, now()),
        Err(MintError::EmptySecret)
    ));
}

#[test]
fn a_verified_token_is_remembered_until_it_expires() {
    let auth = Auth::new(config(secret())).unwrap_or_else(|e| panic!("{e}"));
    let token = sign(Algorithm::HS256, "s3cret", None, &scoped());
    let first = auth.check(&token, now()).unwrap_or_else(|e| panic!("{e}"));
    let again = auth.check(&token, now()).unwrap_or_else(|e| panic!("{e}"));
    assert!(std::sync::Arc::ptr_eq(&first, &again), "verified once");
    // Past its exp and the leeway, the remembered verdict no longer holds.
    let exp = first
        .exp
        .unwrap_or_else(|| panic!("the test token expires"));
    let later = exp + std::time::Duration::from_secs(LEEWAY_SECS as u64 + 1);
    assert_eq!(auth.check(&token, later).err(), Some(AuthError::Expired));
    // A bad token is never remembered as good.
    let bad = sign(Algorithm::HS256, "wrong", None, &scoped());
    assert_eq!(auth.check(&bad, now()).err(), Some(AuthError::BadSignature));
    assert_eq!(auth.check(&bad, now()).err(), Some(AuthError::BadSignature));
}
