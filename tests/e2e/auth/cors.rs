//! Origins: `--cors-origin` answers preflights and marks answers (streams
//! and refusals included, on both ways in) as readable by the listed
//! origins, `*` without credentials, nothing at all without the flag. The
//! `herald_token` cookie does not let another site act for its holder, and
//! with `--cors-origin` a WebSocket from an origin not listed is refused.

use reqwest::Method;
use serde_json::json;

use super::attempt::{Got, SSE, ws_attempt};
use super::{Refusal, Way, assert_read_by, bearer, events_of, publish, root, stacks, token};
use crate::harness::{Server, within};

const APP: &str = "https://app.example";
const EVIL: &str = "https://evil.example";

type Headers = Vec<(&'static str, String)>;

fn origin(o: &str) -> (&'static str, String) {
    ("origin", o.to_owned())
}

fn auth(t: &str) -> (&'static str, String) {
    ("authorization", bearer(t))
}

fn accept_sse() -> (&'static str, String) {
    ("accept", SSE.to_owned())
}

/// Requests to one server on one way in.
struct On<'a> {
    server: &'a Server,
    way: Way,
}

impl On<'_> {
    /// The server's own origin, as its pages would send it.
    fn own(&self) -> String {
        format!("http://{}", self.server.addr)
    }

    /// Sends `method path` with `headers` (a `POST` with a body); a stream
    /// is not read.
    async fn send(&self, method: Method, path: &str, headers: &[(&'static str, String)]) -> Got {
        let post = method == Method::POST;
        let mut r = self
            .way
            .client()
            .request(method, self.server.url(path))
            .version(self.way.version());
        for (name, value) in headers {
            r = r.header(*name, value);
        }
        if post {
            r = r.body("from a page");
        }
        let r = within(path, r.send()).await.expect("an answer");
        assert_eq!(r.version(), self.way.version(), "{path}");
        let (status, headers) = (r.status().as_u16(), r.headers().clone());
        let stream = headers.get("content-type").is_some_and(|v| v == SSE);
        let body = if stream && status == 200 {
            String::new()
        } else {
            r.text().await.expect("a body")
        };
        Got {
            status,
            headers,
            body,
        }
    }

    async fn get(&self, path: &str, headers: &[(&'static str, String)]) -> Got {
        self.send(Method::GET, path, headers).await
    }

    /// A preflight for a `POST` from `from`, asking for the headers a
    /// client sends.
    async fn preflight(&self, path: &str, from: &str) -> Got {
        let headers = [
            origin(from),
            ("access-control-request-method", "POST".into()),
            (
                "access-control-request-headers",
                "authorization, content-type, last-event-id, idempotency-key".into(),
            ),
        ];
        self.send(Method::OPTIONS, path, &headers).await
    }
}

impl Got {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(|v| v.to_str().expect("text"))
    }

    /// Whether the comma-separated header `name` lists `item` (any case).
    fn lists(&self, name: &str, item: &str) -> bool {
        self.header(name)
            .is_some_and(|l| l.split(',').any(|i| i.trim().eq_ignore_ascii_case(item)))
    }

    /// Lets `origin`'s pages read it, with credentials (or, for `*`,
    /// without), and exposes `Herald-Cursor` and `Idempotent-Replayed`.
    fn assert_allows(&self, origin: &str, what: &str) {
        let allow = self.header("access-control-allow-origin");
        assert_eq!(allow, Some(origin), "{what}");
        let credentials = (origin != "*").then_some("true");
        let got = self.header("access-control-allow-credentials");
        assert_eq!(got, credentials, "{what}");
        for name in ["Herald-Cursor", "Idempotent-Replayed"] {
            let exposed = self.lists("access-control-expose-headers", name);
            assert!(exposed, "{what}: {:?}", self.headers);
        }
    }

    /// No CORS header at all.
    fn assert_no_cors(&self, what: &str) {
        let cors: Vec<_> = self
            .headers
            .keys()
            .filter(|k| k.as_str().starts_with("access-control-"))
            .collect();
        assert!(cors.is_empty(), "{what}: {cors:?}");
    }

    /// A preflight's answer: `204`, allowing `origin` the methods and
    /// request headers clients use.
    fn assert_preflight(&self, origin: &str, what: &str) {
        assert_eq!(self.status, 204, "{what}: {}", self.body);
        let allow = self.header("access-control-allow-origin");
        assert_eq!(allow, Some(origin), "{what}");
        let credentials = (origin != "*").then_some("true");
        let got = self.header("access-control-allow-credentials");
        assert_eq!(got, credentials, "{what}");
        for m in ["GET", "POST", "DELETE"] {
            let allowed = self.lists("access-control-allow-methods", m);
            assert!(allowed, "{what}: {m} in {:?}", self.headers);
        }
        for h in [
            "Authorization",
            "Content-Type",
            "Last-Event-ID",
            "Idempotency-Key",
        ] {
            let allowed = self.lists("access-control-allow-headers", h);
            assert!(allowed, "{what}: {h} in {:?}", self.headers);
        }
    }
}

/// Answers of every kind to a listed origin carry it: a short poll, a
/// long poll's `204` with its `Herald-Cursor`, an SSE stream's head (the
/// direct path's, on HTTP/1.1), a `401` and a `403`.
async fn answers_to_a_listed_origin(on: &On<'_>, topic: &str, reader: &str) {
    let way = on.way;
    let path = format!("/topics/{topic}");
    let got = on.get(&path, &[origin(APP), auth(reader)]).await;
    assert_eq!(got.status, 200, "{way:?} short poll");
    got.assert_allows(APP, &format!("{way:?} short poll"));
    let wait = format!("{path}?transport=long-poll&timeout=0");
    let got = on.get(&wait, &[origin(APP), auth(reader)]).await;
    assert_eq!(got.status, 204, "{way:?} a long poll that timed out");
    assert!(got.header("herald-cursor").is_some(), "{way:?}");
    got.assert_allows(APP, &format!("{way:?} long poll 204"));

    let before = stacks(on.server).await;
    let got = on
        .get(&path, &[origin(APP), auth(reader), accept_sse()])
        .await;
    assert_eq!(got.status, 200);
    assert_eq!(got.header("content-type"), Some(SSE));
    got.assert_allows(APP, &format!("{way:?} SSE stream head"));
    let got = on.get(&path, &[origin(APP), accept_sse()]).await;
    got.assert_refused(&format!("{way:?} no token"), Refusal::NoToken);
    got.assert_allows(APP, &format!("{way:?} 401"));
    assert_read_by(on.server, before, way.stack(), 2, &format!("{way:?}")).await;

    let writer = token(json!({"publish": ["elsewhere"]}));
    let got = on
        .send(Method::POST, &path, &[origin(APP), auth(&writer)])
        .await;
    got.assert_refused(&format!("{way:?} out of scope"), Refusal::Forbidden);
    got.assert_allows(APP, &format!("{way:?} 403"));
}

async fn listed_origin(way: Way) {
    let server = super::server(&["--cors-origin", APP]);
    let on = On {
        server: &server,
        way,
    };
    let topic = "cors.t";
    let reader = token(json!({"subscribe": [topic]}));
    publish(&server, topic, "one").await;

    // The preflight needs no token.
    let got = on.preflight("/topics/x", APP).await;
    got.assert_preflight(APP, &format!("{way:?} preflight"));
    let got = on.preflight("/topics/x", EVIL).await;
    assert_eq!(got.status, 204, "{way:?} preflight from {EVIL}");
    got.assert_no_cors(&format!("{way:?} preflight from {EVIL}"));

    answers_to_a_listed_origin(&on, topic, &reader).await;

    // Another origin's pages may not read them; neither is a request with
    // no Origin (not a browser's cross-origin one) marked.
    let path = format!("/topics/{topic}");
    for headers in [vec![origin(EVIL), auth(&reader)], vec![auth(&reader)]] {
        let got = on.get(&path, &headers).await;
        assert_eq!(got.status, 200, "{way:?} {headers:?}");
        got.assert_no_cors(&format!("{way:?} {headers:?}"));
    }
    let got = on.get(&path, &[origin(EVIL)]).await;
    assert_eq!(got.status, 401);
    got.assert_no_cors(&format!("{way:?} 401 to {EVIL}"));
}

#[tokio::test]
async fn a_listed_origin_is_answered_and_no_other_http11() {
    listed_origin(Way::Http11).await;
}

#[tokio::test]
async fn a_listed_origin_is_answered_and_no_other_h2c() {
    listed_origin(Way::H2c).await;
}

#[tokio::test]
async fn a_wildcard_allows_every_origin_without_credentials() {
    let server = super::server(&["--cors-origin", "*"]);
    let reader = token(json!({"subscribe": ["star"]}));
    publish(&server, "star", "one").await;
    for way in [Way::Http11, Way::H2c] {
        let on = On {
            server: &server,
            way,
        };
        let got = on.preflight("/topics/star", EVIL).await;
        got.assert_preflight("*", &format!("{way:?} preflight"));
        for accept in ["*/*", SSE] {
            let headers = [origin(EVIL), auth(&reader), ("accept", accept.to_owned())];
            let got = on.get("/topics/star", &headers).await;
            assert_eq!(got.status, 200, "{way:?} {accept}");
            got.assert_allows("*", &format!("{way:?} {accept}"));
        }
        let got = on.get("/topics/star", &[origin(EVIL)]).await;
        got.assert_refused(&format!("{way:?} no token"), Refusal::NoToken);
        got.assert_allows("*", &format!("{way:?} 401"));
    }
}

#[tokio::test]
async fn without_the_flag_no_cors_header_at_all() {
    let server = super::server(&[]);
    let reader = token(json!({"subscribe": ["plain"]}));
    publish(&server, "plain", "one").await;
    for way in [Way::Http11, Way::H2c] {
        let on = On {
            server: &server,
            way,
        };
        let got = on.preflight("/topics/plain", APP).await;
        got.assert_no_cors(&format!("{way:?} preflight"));
        for accept in ["*/*", SSE] {
            let headers = [origin(APP), auth(&reader), ("accept", accept.to_owned())];
            let got = on.get("/topics/plain", &headers).await;
            assert_eq!(got.status, 200, "{way:?} {accept}");
            got.assert_no_cors(&format!("{way:?} {accept}"));
        }
        let got = on.get("/topics/plain", &[origin(APP)]).await;
        assert_eq!(got.status, 401);
        got.assert_no_cors(&format!("{way:?} 401"));
    }
}

/// Reading by SSE with the cookie: refused from another origin; allowed
/// from the server's own pages, a listed origin, or no page at all (no
/// `Origin`); the same token in `Authorization`, which a page must set
/// itself, works from anywhere. Returns how many requests it made.
async fn cookie_reads(on: &On<'_>, path: &str, cookie: &(&'static str, String), t: &str) -> usize {
    let way = on.way;
    let got = on
        .get(path, &[cookie.clone(), accept_sse(), origin(EVIL)])
        .await;
    got.assert_refused(&format!("{way:?} cookie from {EVIL}"), Refusal::Forbidden);
    for from in [Some(on.own()), Some(APP.to_owned()), None] {
        let mut headers: Headers = vec![cookie.clone(), accept_sse()];
        headers.extend(from.as_deref().map(origin));
        let got = on.get(path, &headers).await;
        assert_eq!(
            got.status, 200,
            "{way:?} cookie from {from:?}: {}",
            got.body
        );
        assert_eq!(got.header("content-type"), Some(SSE));
    }
    let got = on.get(path, &[auth(t), accept_sse(), origin(EVIL)]).await;
    assert_eq!(got.status, 200, "{way:?} Authorization from {EVIL}");
    5
}

/// The cookie does not let another site act for its holder, reading or
/// writing, however good the token; what is open stays open.
async fn cookie_origin(way: Way) {
    let server = super::server(&["--cors-origin", APP]);
    let on = On {
        server: &server,
        way,
    };
    let topic = "cookie.t";
    let t = token(json!({"subscribe": [topic], "publish": [topic]}));
    let cookie = ("cookie", format!("theme=dark; herald_token={t}"));
    let path = format!("/topics/{topic}");

    let before = stacks(&server).await;
    let reads = cookie_reads(&on, &path, &cookie, &t).await;
    assert_read_by(&server, before, way.stack(), reads, &format!("{way:?}")).await;

    let got = on
        .send(Method::POST, &path, &[cookie.clone(), origin(EVIL)])
        .await;
    got.assert_refused(&format!("{way:?} publish from {EVIL}"), Refusal::Forbidden);
    let published = events_of(&server, topic).await;
    assert!(published.is_empty(), "{way:?}: nothing published");
    let own = origin(&on.own());
    let got = on.send(Method::POST, &path, &[cookie.clone(), own]).await;
    assert_eq!(got.status, 201, "{way:?} from its own page: {}", got.body);
    assert_eq!(events_of(&server, topic).await.len(), 1);

    let got = on.get("/healthz", &[cookie.clone(), origin(EVIL)]).await;
    assert_eq!(got.status, 200, "{way:?} /healthz, {EVIL}: {}", got.body);
}

#[tokio::test]
async fn a_cookie_from_another_origin_is_refused_http11() {
    cookie_origin(Way::Http11).await;
}

#[tokio::test]
async fn a_cookie_from_another_origin_is_refused_h2c() {
    cookie_origin(Way::H2c).await;
}

#[tokio::test]
async fn websockets_from_an_origin_not_listed_are_refused() {
    let server = super::server(&["--cors-origin", APP]);
    let t = root();
    let task = On {
        server: &server,
        way: Way::Http11,
    }
    .send(Method::POST, "/queues/wsq/tasks", &[auth(&t)])
    .await;
    assert_eq!(task.status, 201, "{}", task.body);
    let task: serde_json::Value = serde_json::from_str(&task.body).unwrap();
    let events = format!("/tasks/{}/events", task["id"].as_str().unwrap());
    let own = format!("http://{}", server.addr);
    for path in ["/topics/ws.t", "/subscribe?topic=ws.t", events.as_str()] {
        let got = ws_attempt(&server, path, &[auth(&t), origin(EVIL)]).await;
        got.assert_refused(&format!("{path} from {EVIL}"), Refusal::Forbidden);
        for from in [Some(APP), Some(own.as_str()), None] {
            let mut headers: Headers = vec![auth(&t)];
            headers.extend(from.map(origin));
            let got = ws_attempt(&server, path, &headers).await;
            assert_eq!(got.status, 101, "{path} from {from:?}: {}", got.body);
        }
    }

    // The rule is about origins: it holds with authorization off, and
    // without --cors-origin there is no list to refuse by.
    let open = Server::start(&["--cors-origin", APP]);
    let got = ws_attempt(&open, "/topics/ws.t", &[origin(EVIL)]).await;
    got.assert_refused(&format!("no auth, {EVIL}"), Refusal::Forbidden);
    let got = ws_attempt(&open, "/topics/ws.t", &[origin(APP)]).await;
    assert_eq!(got.status, 101, "no auth, {APP}: {}", got.body);
    let unlisted = super::server(&[]);
    let got = ws_attempt(&unlisted, "/topics/ws.t", &[auth(&t), origin(EVIL)]).await;
    assert_eq!(got.status, 101, "no --cors-origin: {}", got.body);
}
