//! `--public-subscribe 'public.*'`: requests with no token read the
//! matching topics and nothing else; a `/subscribe` naming one topic that
//! is not public needs a token for it; a bad token is refused even on a
//! public topic; publishing is never public.

use eventsource_stream::Eventsource;
use futures_util::StreamExt;
use serde_json::json;

use super::{
    Answer, Refusal, Way, assert_read_by, bad_tokens, bearer, events_of, publish, stacks, token,
};
use crate::harness::{Server, within};

/// A GET on `way`, with `accept` and an optional bearer token.
async fn get(
    server: &Server,
    way: Way,
    path: &str,
    accept: &str,
    token: Option<&str>,
) -> reqwest::Response {
    let mut r = way
        .client()
        .get(server.url(path))
        .version(way.version())
        .header("accept", accept);
    if let Some(t) = token {
        r = r.header("authorization", bearer(t));
    }
    within(path, r.send()).await.expect("an answer")
}

const SSE: &str = "text/event-stream";

/// Reads the next SSE event of `r`'s body: its data.
async fn first_data(r: reqwest::Response, what: &str) -> String {
    let mut events = r.bytes_stream().eventsource();
    within(what, events.next())
        .await
        .expect("an event")
        .expect("a parsed event")
        .data
}

/// Without a token: a public topic by SSE (live) and by short poll, a
/// private one by neither. Returns how many requests it made.
async fn anonymous_reads(server: &Server, way: Way) -> usize {
    let r = get(server, way, "/topics/public.x", SSE, None).await;
    assert_eq!(r.status(), 200, "{way:?}: SSE of a public topic");
    publish(server, "public.x", "p1").await;
    assert_eq!(first_data(r, "public SSE").await, "p1");
    let poll = Answer::of(get(server, way, "/topics/public.x", "*/*", None).await).await;
    assert_eq!(poll.status, 200, "{way:?}: short poll of a public topic");
    assert_eq!(poll.json()["events"][0]["data"], "p1");

    publish(server, "private.x", "secret").await;
    for accept in [SSE, "*/*"] {
        let r = Answer::of(get(server, way, "/topics/private.x", accept, None).await).await;
        r.assert_refused(&format!("{way:?} private.x {accept}"), Refusal::NoToken);
        assert!(!r.body.contains("secret"));
    }
    4
}

/// `/subscribe` over a public and a private topic: each must be allowed,
/// by the public patterns or by the token. Returns how many requests.
async fn several_topics(server: &Server, way: Way) -> usize {
    let both = "/subscribe?topic=public.a&topic=private.b";
    let r = Answer::of(get(server, way, both, SSE, None).await).await;
    r.assert_refused(&format!("{way:?} {both}, no token"), Refusal::NoToken);
    let for_b = token(json!({"subscribe": ["private.b"]}));
    let r = get(server, way, both, SSE, Some(&for_b)).await;
    assert_eq!(
        r.status(),
        200,
        "{way:?}: public.a public, private.b the token's"
    );
    let mut events = r.bytes_stream().eventsource();
    publish(server, "public.a", "to a").await;
    publish(server, "private.b", "to b").await;
    for want in ["to a", "to b"] {
        let e = within(want, events.next()).await.unwrap().unwrap();
        assert_eq!(e.data, want);
    }
    let other = "/subscribe?topic=public.a&topic=private.c";
    let r = Answer::of(get(server, way, other, SSE, Some(&for_b)).await).await;
    r.assert_refused(&format!("{way:?} {other}"), Refusal::Forbidden);
    3
}

async fn public_topics(way: Way) {
    let server = super::server(&["--public-subscribe", "public.*"]);
    let before = stacks(&server).await;
    let mut requests = anonymous_reads(&server, way).await;
    requests += several_topics(&server, way).await;
    // A bad token is refused even where no token would do.
    let (_, bad) = bad_tokens().remove(0);
    let r = get(&server, way, "/topics/public.x", SSE, Some(&bad)).await;
    requests += 1;
    let what = format!("{way:?} public.x, a bad token");
    Answer::of(r).await.assert_refused(&what, Refusal::BadToken);
    assert_read_by(&server, before, way.stack(), requests, &format!("{way:?}")).await;

    // Reading is public; publishing is not.
    let r = way
        .client()
        .post(server.url("/topics/public.x"))
        .version(way.version())
        .body("anonymous")
        .send();
    let what = format!("{way:?} publish to public.x");
    Answer::of(r.await.unwrap())
        .await
        .assert_refused(&what, Refusal::NoToken);
    let data: Vec<_> = events_of(&server, "public.x")
        .await
        .iter()
        .map(|e| e["data"].clone())
        .collect();
    assert_eq!(data, [json!("p1")], "nothing published without a token");
}

#[tokio::test]
async fn only_matching_topics_are_read_without_a_token_http11() {
    public_topics(Way::Http11).await;
}

#[tokio::test]
async fn only_matching_topics_are_read_without_a_token_h2c() {
    public_topics(Way::H2c).await;
}
