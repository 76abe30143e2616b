//! Where a token is read from: `Authorization: Bearer`, the cookie
//! `herald_token` (among other cookies, in one `Cookie` header or split
//! over several), the query parameter `access_token` — each opens an SSE
//! stream on both ways in, and a bad token in each is refused, so each is
//! really read. When several are sent, the first in that order wins.

use eventsource_stream::Eventsource;
use futures_util::StreamExt;
use serde_json::json;

use super::{Answer, Refusal, Way, assert_read_by, bad_tokens, bearer, publish, stacks, token};
use crate::harness::{Server, within};

/// Where a request carries its token.
#[derive(Clone, Copy, Debug)]
enum Place {
    Bearer,
    /// `Cookie: theme=dark; herald_token=T; lang=en`.
    Cookie,
    /// `Cookie: theme=dark` and `Cookie: lang=en; herald_token=T`.
    SplitCookies,
    /// `?access_token=T`.
    Query,
}

/// An SSE request for `topic` on `way` carrying each `(place, token)`.
fn request(
    server: &Server,
    way: Way,
    topic: &str,
    tokens: &[(Place, &str)],
) -> reqwest::RequestBuilder {
    let mut path = format!("/topics/{topic}");
    let mut headers: Vec<(&str, String)> = vec![("accept", "text/event-stream".into())];
    for (place, t) in tokens {
        match place {
            Place::Bearer => headers.push(("authorization", bearer(t))),
            Place::Cookie => {
                headers.push(("cookie", format!("theme=dark; herald_token={t}; lang=en")))
            }
            Place::SplitCookies => {
                headers.push(("cookie", "theme=dark".into()));
                headers.push(("cookie", format!("lang=en; herald_token={t}")));
            }
            Place::Query => path.push_str(&format!("?access_token={t}")),
        }
    }
    let mut r = way.client().get(server.url(&path)).version(way.version());
    for (name, value) in headers {
        r = r.header(name, value);
    }
    r
}

/// A good token in each place opens the stream, which then delivers; a
/// bad one in the same place is refused. Returns how many requests.
async fn each_place(server: &Server, way: Way, topic: &str, good: &str, bad: &str) -> usize {
    let places = [
        Place::Bearer,
        Place::Cookie,
        Place::SplitCookies,
        Place::Query,
    ];
    for place in places {
        let what = format!("{way:?} {place:?}");
        let r = request(server, way, topic, &[(place, good)]).send();
        let r = within(&what, r).await.expect("a stream");
        assert_eq!(r.status(), 200, "{what}");
        assert_eq!(r.headers()["content-type"], "text/event-stream", "{what}");
        let mut events = r.bytes_stream().eventsource();
        let id = publish(server, topic, &what).await;
        let e = within(&what, events.next()).await.expect("an event");
        let e = e.expect("a parsed event");
        assert_eq!((e.id, e.data), (id, what.clone()));

        let r = request(server, way, topic, &[(place, bad)]).send();
        let refused = Answer::of(within(&what, r).await.unwrap()).await;
        refused.assert_refused(&format!("{what}: a bad token"), Refusal::BadToken);
    }
    2 * places.len()
}

/// When a request carries several, the first place found wins, whatever
/// the others hold. Returns how many requests.
async fn first_wins(server: &Server, way: Way, topic: &str, good: &str, bad: &str) -> usize {
    let cases = [
        ((Place::Bearer, bad), (Place::Cookie, good), false),
        ((Place::Bearer, good), (Place::Cookie, bad), true),
        ((Place::Cookie, bad), (Place::Query, good), false),
        ((Place::Cookie, good), (Place::Query, bad), true),
        ((Place::Bearer, good), (Place::Query, bad), true),
    ];
    for (first, second, ok) in cases {
        let what = format!(
            "{way:?} {:?} then {:?}, the first good: {ok}",
            first.0, second.0
        );
        let r = request(server, way, topic, &[first, second]).send();
        let r = within(&what, r).await.expect("an answer");
        if ok {
            assert_eq!(r.status(), 200, "{what}");
        } else {
            Answer::of(r).await.assert_refused(&what, Refusal::BadToken);
        }
    }
    cases.len()
}

async fn every_place(way: Way) {
    let server = super::server(&[]);
    let topic = "src.t";
    let good = token(json!({"subscribe": [topic]}));
    let (_, bad) = bad_tokens().remove(0);
    let before = stacks(&server).await;
    let mut requests = each_place(&server, way, topic, &good, &bad).await;
    requests += first_wins(&server, way, topic, &good, &bad).await;
    assert_read_by(&server, before, way.stack(), requests, &format!("{way:?}")).await;
}

#[tokio::test]
async fn bearer_cookie_and_query_http11() {
    every_place(Way::Http11).await;
}

#[tokio::test]
async fn bearer_cookie_and_query_h2c() {
    every_place(Way::H2c).await;
}
