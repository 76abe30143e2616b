//! Who may do what, proved from outside: a real server with
//! `--auth-jwt-secret`, tokens minted here with `jsonwebtoken`, and every
//! route tried with no token, with bad ones, with one outside its scope and
//! with one in scope — the subscribe routes on both ways in (HTTP/1.1, read
//! by the direct path; HTTP/2 with prior knowledge, read by hyper). Then
//! where a token may come from, public topics, streams that end with their
//! token, origins, and fenced workers.
//!
//! Test names read `auth::AREA::CASE`.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use reqwest::{Client, Response, Version};
use serde_json::{Value, json};

use crate::harness::Server;

mod attempt;
mod cors;
mod expiry;
mod fenced;
mod public;
mod routes;
mod sources;

/// The server's HS256 secret (32 bytes or more, so no start-up warning).
const SECRET: &str = "e2e-auth-secret-0123456789abcdef-0123";

/// A server that wants tokens signed with [`SECRET`], plus `extra` flags.
pub(crate) fn server(extra: &[&str]) -> Server {
    let mut flags = vec!["--auth-jwt-secret", SECRET];
    flags.extend_from_slice(extra);
    Server::start(&flags)
}

/// How a request gets into the server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Way {
    /// HTTP/1.1: subscribe GETs are read by herald's direct path.
    Http11,
    /// HTTP/2 with prior knowledge on the plain port: hyper reads all.
    H2c,
}

impl Way {
    /// The stack that reads this way's subscribe requests (WebSocket
    /// upgrades excepted: hyper's on every way).
    fn stack(self) -> &'static str {
        match self {
            Way::Http11 => "direct",
            Way::H2c => "hyper",
        }
    }

    fn version(self) -> Version {
        match self {
            Way::Http11 => Version::HTTP_11,
            Way::H2c => Version::HTTP_2,
        }
    }

    /// A client of its own: a connection the direct path answered stays
    /// with it only until a request it leaves to hyper, so a table of
    /// mixed routes must not share connections.
    fn client(self) -> Client {
        let builder = crate::harness::builder().timeout(Duration::from_secs(60));
        let builder = match self {
            Way::Http11 => builder.http1_only(),
            Way::H2c => builder.http2_prior_knowledge(),
        };
        builder.build().expect("reqwest client")
    }
}

/// Seconds since 1970, now.
fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_secs()
}

/// Fractional seconds since 1970, now.
fn unix_now_f64() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_secs_f64()
}

/// The claims of a token: `herald` as given, `exp` as given (none: no
/// expiry).
fn claims(herald: Value, exp: Option<u64>) -> Value {
    let mut claims = json!({ "sub": "e2e", "herald": herald });
    if let Some(exp) = exp {
        claims["exp"] = exp.into();
    }
    claims
}

/// `claims` signed with `secret` by `alg`.
fn sign_with(claims: &Value, secret: &str, alg: Algorithm) -> String {
    let key = EncodingKey::from_secret(secret.as_bytes()).expect("an HS key");
    encode(&Header::new(alg), claims, &key).expect("sign a token")
}

/// A valid token allowing `herald`, for an hour.
pub(crate) fn token(herald: Value) -> String {
    sign_with(
        &claims(herald, Some(unix_now() + 3600)),
        SECRET,
        Algorithm::HS256,
    )
}

/// A valid token expiring at `exp` (seconds since 1970).
fn token_until(herald: Value, exp: u64) -> String {
    sign_with(&claims(herald, Some(exp)), SECRET, Algorithm::HS256)
}

/// Every scope there is.
fn everything() -> Value {
    json!({"publish": ["*"], "subscribe": ["*"], "enqueue": ["*"], "work": ["*"], "admin": true})
}

/// A token that may do anything: the tests' own setup and observation.
fn root() -> String {
    token(everything())
}

/// Tokens that must be refused `401 invalid_token` however much they
/// claim: (what is wrong, the token).
fn bad_tokens() -> Vec<(&'static str, String)> {
    let all = claims(everything(), Some(unix_now() + 3600));
    let expired = claims(everything(), Some(unix_now() - 60));
    let b64 = |v: &Value| {
        use base64_url::encode as url;
        url(&v.to_string())
    };
    let unsigned = format!(
        "{}.{}.",
        b64(&json!({"alg": "none", "typ": "JWT"})),
        b64(&all)
    );
    vec![
        (
            "badly signed",
            sign_with(
                &all,
                "another-secret-0123456789abcdef-0123",
                Algorithm::HS256,
            ),
        ),
        (
            "expired beyond the leeway",
            sign_with(&expired, SECRET, Algorithm::HS256),
        ),
        ("alg none", unsigned),
        (
            "another algorithm (HS384)",
            sign_with(&all, SECRET, Algorithm::HS384),
        ),
        ("not a JWT", "not-a-jwt".to_owned()),
    ]
}

/// URL-safe base64 without padding, as JWTs use (for the hand-made
/// `alg: none` token).
mod base64_url {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

    pub fn encode(text: &str) -> String {
        let bytes = text.as_bytes();
        let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
        for chunk in bytes.chunks(3) {
            let n = chunk
                .iter()
                .enumerate()
                .fold(0u32, |n, (i, &b)| n | (u32::from(b) << (16 - 8 * i)));
            for i in 0..=chunk.len() {
                let six = (n >> (18 - 6 * i)) & 63;
                out.push(char::from(ALPHABET[six as usize]));
            }
        }
        out
    }

    #[test]
    fn encodes_as_rfc_4648_url_safe_without_padding() {
        assert_eq!(encode(""), "");
        assert_eq!(encode("f"), "Zg");
        assert_eq!(encode("fo"), "Zm8");
        assert_eq!(encode("foo"), "Zm9v");
        assert_eq!(encode("foob"), "Zm9vYg");
        assert_eq!(encode("\u{fb}\u{ff}"), "w7vDvw");
    }
}

/// `Authorization: Bearer TOKEN`.
fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

/// A whole answer, read: its status, headers and body text.
#[derive(Debug)]
struct Answer {
    status: u16,
    headers: reqwest::header::HeaderMap,
    body: String,
}

impl Answer {
    async fn of(r: Response) -> Answer {
        Answer {
            status: r.status().as_u16(),
            headers: r.headers().clone(),
            body: r.text().await.expect("an answer's body"),
        }
    }

    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {:?}", self.body))
    }
}

/// Asserts the answer is herald's JSON error with `status` and `code`,
/// and, for a `401`, what `WWW-Authenticate` says.
fn assert_refused(
    what: &str,
    status: u16,
    headers: &reqwest::header::HeaderMap,
    body: &str,
    want: Refusal,
) {
    let (want_status, code) = match want {
        Refusal::NoToken | Refusal::BadToken => (401, "unauthorized"),
        Refusal::Forbidden => (403, "forbidden"),
    };
    assert_eq!(status, want_status, "{what}: {body}");
    let header = |name: &str| headers.get(name).map(|v| v.to_str().expect("text"));
    assert_eq!(
        header("content-type"),
        Some("application/json"),
        "{what}: errors are JSON"
    );
    let v: Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("{what}: {e}: {body}"));
    assert_eq!(v["error"]["code"], code, "{what}: {v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{what}: {v}"
    );
    let challenge = header("www-authenticate");
    match want {
        Refusal::NoToken => assert_eq!(challenge, Some("Bearer"), "{what}"),
        Refusal::BadToken => assert!(
            challenge.is_some_and(|c| c.starts_with("Bearer") && c.contains("invalid_token")),
            "{what}: {challenge:?}"
        ),
        Refusal::Forbidden => assert_eq!(challenge, None, "{what}"),
    }
}

/// Why a request is expected to be refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Refusal {
    /// No token: `401`, `WWW-Authenticate: Bearer`.
    NoToken,
    /// A token that does not verify: `401`, `error="invalid_token"`.
    BadToken,
    /// A valid token outside its scope: `403 forbidden`.
    Forbidden,
}

impl Answer {
    fn assert_refused(&self, what: &str, want: Refusal) {
        assert_refused(what, self.status, &self.headers, &self.body, want);
    }
}

/// `GET path` with the root token, over HTTP/1.1 (hyper serves every
/// route but the subscribe ones there; those are the direct path's).
async fn get_root(server: &Server, path: &str) -> Answer {
    let r = Way::Http11
        .client()
        .get(server.url(path))
        .header("authorization", bearer(&root()))
        .send()
        .await
        .expect("GET");
    Answer::of(r).await
}

/// The value of one metric line (`name{labels} value`), read with the
/// root token.
pub(crate) async fn metric(server: &Server, series: &str) -> f64 {
    let text = get_root(server, "/metrics").await;
    assert_eq!(text.status, 200, "/metrics: {}", text.body);
    text.body
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .map(|v| v.trim().parse().expect("metric value"))
        .unwrap_or_else(|| panic!("no metric {series}"))
}

/// Subscribe requests read so far by each stack: `[direct, hyper]`.
async fn stacks(server: &Server) -> [f64; 2] {
    [
        metric(server, "herald_subscribe_requests_total{stack=\"direct\"}").await,
        metric(server, "herald_subscribe_requests_total{stack=\"hyper\"}").await,
    ]
}

/// Asserts that the subscribe requests made since `before` were read by
/// `stack` alone: `n` of them.
async fn assert_read_by(server: &Server, before: [f64; 2], stack: &str, n: usize, what: &str) {
    let after = stacks(server).await;
    for (i, name) in ["direct", "hyper"].into_iter().enumerate() {
        let want = if name == stack { n as f64 } else { 0.0 };
        assert_eq!(
            after[i] - before[i],
            want,
            "{what}: subscribe requests read by the {name} stack"
        );
    }
}

/// Publishes `data` to `topic` with the root token; returns the event id.
async fn publish(server: &Server, topic: &str, data: &str) -> String {
    let r = Way::Http11
        .client()
        .post(server.url(&format!("/topics/{topic}")))
        .header("authorization", bearer(&root()))
        .body(data.to_owned())
        .send()
        .await
        .expect("publish");
    let a = Answer::of(r).await;
    assert_eq!(a.status, 201, "publish to {topic}: {}", a.body);
    a.json()["id"].as_str().expect("id").to_owned()
}

/// Every event of `topic`, read by short poll with the root token.
pub(crate) async fn events_of(server: &Server, topic: &str) -> Vec<Value> {
    let a = get_root(server, &format!("/topics/{topic}?limit=1000")).await;
    match a.status {
        204 => Vec::new(),
        200 => a.json()["events"].as_array().expect("events").clone(),
        s => panic!("reading {topic}: {s} {}", a.body),
    }
}
