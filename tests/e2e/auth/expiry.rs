//! A stream never outlives its token: at `exp` (the raw one, not `exp`
//! plus the 5 s of leeway verification allows) an SSE stream sends
//! `event: expired` with no id and data `{}` and ends, an NDJSON stream
//! writes `{"event":"expired"}` and ends, a WebSocket closes with 4401.
//! The client reconnects with a fresh token and its cursor and gets every
//! event published meanwhile, once.

use std::sync::{Arc, Mutex};

use eventsource_stream::Eventsource;
use futures_util::StreamExt;
use futures_util::stream::BoxStream;
use herald_protocol::ndjson::LineSplitter;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use super::{
    Way, assert_read_by, bearer, publish, stacks, token, token_until, unix_now, unix_now_f64,
};
use crate::harness::{Server, within};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Transport {
    Sse,
    Ndjson,
    WebSocket,
}

/// What a client reads off a stream.
#[derive(Debug, PartialEq, Eq)]
enum Item {
    Event {
        id: String,
        data: String,
    },
    /// The token ran out: `event: expired`, `{"event":"expired"}`, 4401.
    Expired,
}

/// A stream's items; `None` once it ended.
struct Feed(BoxStream<'static, Item>);

impl Feed {
    async fn next(&mut self, what: &str) -> Option<Item> {
        within(what, self.0.next()).await
    }

    /// The next item, which must be an event: its (id, data).
    async fn event(&mut self, what: &str) -> (String, String) {
        match self.next(what).await {
            Some(Item::Event { id, data }) => (id, data),
            other => panic!("{what}: wanted an event, got {other:?}"),
        }
    }
}

/// The SSE events of `response`, parsed by eventsource-stream. The raw
/// bytes are kept too: the parser hands every event the last id it saw
/// (as a browser's `lastEventId`), so only they show that `expired`
/// carries none.
fn sse_feed(response: reqwest::Response) -> Feed {
    let raw = Arc::new(Mutex::new(String::new()));
    let tee = Arc::clone(&raw);
    let body = response.bytes_stream().inspect(move |chunk| {
        if let Ok(chunk) = chunk {
            tee.lock()
                .unwrap()
                .push_str(std::str::from_utf8(chunk).expect("UTF-8"));
        }
    });
    Feed(
        body.eventsource()
            .map(move |e| {
                let e = e.expect("an SSE event");
                match e.event.as_str() {
                    "message" => Item::Event {
                        id: e.id,
                        data: e.data,
                    },
                    "expired" => {
                        assert_eq!(e.data, "{}", "expired's data");
                        let raw = raw.lock().unwrap();
                        assert!(
                            raw.split("\n\n")
                                .any(|block| block == "event: expired\ndata: {}"),
                            "`event: expired` is a block of its own, with no id: {raw:?}"
                        );
                        Item::Expired
                    }
                    other => panic!("an unexpected SSE event {other}: {e:?}"),
                }
            })
            .boxed(),
    )
}

/// The lines of an NDJSON `response` (keep-alive empty lines skipped).
fn ndjson_feed(response: reqwest::Response) -> Feed {
    let mut lines = LineSplitter::new();
    Feed(
        response
            .bytes_stream()
            .flat_map(move |chunk| {
                futures_util::stream::iter(lines.feed(&chunk.expect("an NDJSON chunk")))
            })
            .filter(|line| std::future::ready(!line.iter().all(u8::is_ascii_whitespace)))
            .map(|line| {
                let v: Value = serde_json::from_slice(&line).expect("a JSON line");
                if v == json!({"event": "expired"}) {
                    return Item::Expired;
                }
                assert_eq!(v["event"], "message", "{v}");
                Item::Event {
                    id: v["id"].as_str().expect("id").to_owned(),
                    data: v["data"].as_str().expect("data").to_owned(),
                }
            })
            .boxed(),
    )
}

/// Opens `topic` by `transport` on `way` with `token`, from `cursor`.
async fn open(
    server: &Server,
    way: Way,
    transport: Transport,
    topic: &str,
    token: &str,
    cursor: Option<&str>,
) -> Feed {
    let path = format!("/topics/{topic}");
    if transport == Transport::WebSocket {
        let url = server.url(&path).replacen("http", "ws", 1);
        let mut request = url.into_client_request().expect("a ws request");
        let headers = request.headers_mut();
        headers.insert("authorization", bearer(token).parse().unwrap());
        if let Some(cursor) = cursor {
            headers.insert("last-event-id", cursor.parse().unwrap());
        }
        let (ws, _) = within("ws handshake", tokio_tungstenite::connect_async(request))
            .await
            .expect("a WebSocket");
        return ws_feed(ws);
    }
    let accept = match transport {
        Transport::Sse => "text/event-stream",
        _ => "application/x-ndjson",
    };
    let mut r = way
        .client()
        .get(server.url(&path))
        .version(way.version())
        .header("accept", accept)
        .header("authorization", bearer(token));
    if let Some(cursor) = cursor {
        r = r.header("last-event-id", cursor);
    }
    let r = within("stream head", r.send()).await.expect("a stream");
    assert_eq!(r.status(), 200, "{way:?} {transport:?}");
    assert_eq!(r.version(), way.version());
    match transport {
        Transport::Sse => sse_feed(r),
        _ => ndjson_feed(r),
    }
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A WebSocket's text frames as events; its close frame with 4401 as
/// [`Item::Expired`] (any other close code fails the test).
fn ws_feed(ws: Ws) -> Feed {
    Feed(
        ws.filter_map(|m| {
            std::future::ready(match m {
                Ok(Message::Text(t)) => {
                    let v: Value = serde_json::from_str(&t).expect("a JSON frame");
                    Some(Item::Event {
                        id: v["id"].as_str().expect("id").to_owned(),
                        data: v["data"].as_str().expect("data").to_owned(),
                    })
                }
                Ok(Message::Close(frame)) => {
                    let code = frame.map(|f| u16::from(f.code));
                    assert_eq!(code, Some(4401), "the close code of an expired token");
                    Some(Item::Expired)
                }
                Ok(Message::Ping(_) | Message::Pong(_)) => None,
                Ok(other) => panic!("an unexpected frame {other:?}"),
                // After the close: the connection is gone.
                Err(_) => None,
            })
        })
        .boxed(),
    )
}

/// The scenario on one transport and way in.
async fn ends_with_its_token(way: Way, transport: Transport) {
    let server = super::server(&[]);
    let topic = "exp.t";
    let scope = json!({"subscribe": [topic]});
    let before = stacks(&server).await;
    // Seconds, as `exp` is: 1 to 2 s from now.
    let exp = unix_now() + 2;
    let mut feed = open(
        &server,
        way,
        transport,
        topic,
        &token_until(scope.clone(), exp),
        None,
    )
    .await;

    let mut sent = vec![(publish(&server, topic, "e0").await, "e0".to_owned())];
    let mut got = vec![feed.event("the first event").await];
    sent.push((publish(&server, topic, "e1").await, "e1".to_owned()));
    // e1 may come before the end, or be left for the next stream.
    loop {
        match feed.next("the end of the token").await {
            Some(Item::Event { id, data }) => got.push((id, data)),
            Some(Item::Expired) => break,
            None => panic!("{way:?} {transport:?}: the stream ended without saying why"),
        }
    }
    let at = unix_now_f64();
    let exp_f = exp as f64;
    assert!(
        at + 0.1 >= exp_f,
        "ended at {at}, before its token's exp {exp}"
    );
    assert!(
        at < exp_f + 4.0,
        "ended at {at}: at exp {exp}, not exp plus the leeway"
    );
    assert_eq!(
        feed.next("the end after expired").await,
        None,
        "{way:?} {transport:?}: nothing after the expiry"
    );

    for data in ["e2", "e3"] {
        sent.push((publish(&server, topic, data).await, data.to_owned()));
    }
    let cursor = got.last().expect("an event").0.clone();
    let fresh = token(scope);
    let mut feed = open(&server, way, transport, topic, &fresh, Some(&cursor)).await;
    while got.len() < sent.len() {
        got.push(feed.event("the events missed").await);
    }
    // Nothing comes twice: the next event is a new one.
    sent.push((publish(&server, topic, "e4").await, "e4".to_owned()));
    got.push(feed.event("the next new event").await);
    assert_eq!(
        got, sent,
        "{way:?} {transport:?}: nothing lost, nothing doubled"
    );

    let stack = match transport {
        Transport::WebSocket => "hyper",
        _ => way.stack(),
    };
    assert_read_by(&server, before, stack, 2, &format!("{way:?} {transport:?}")).await;
}

#[tokio::test]
async fn sse_http11() {
    ends_with_its_token(Way::Http11, Transport::Sse).await;
}

#[tokio::test]
async fn sse_h2c() {
    ends_with_its_token(Way::H2c, Transport::Sse).await;
}

#[tokio::test]
async fn ndjson_http11() {
    ends_with_its_token(Way::Http11, Transport::Ndjson).await;
}

#[tokio::test]
async fn ndjson_h2c() {
    ends_with_its_token(Way::H2c, Transport::Ndjson).await;
}

/// WebSocket handshakes are HTTP/1.1 upgrades, which hyper serves.
#[tokio::test]
async fn websocket_http11() {
    ends_with_its_token(Way::Http11, Transport::WebSocket).await;
}

/// What one of the other streams sends: anything up to the token's end
/// (`wait`, a counter tick), then its end.
#[derive(Debug)]
enum Seen {
    Expired,
    Other(String),
}

/// A stream's items; `None` stands for what is not part of the stream's
/// content (a WebSocket's closing handshake).
type Seeing = BoxStream<'static, Option<Seen>>;

/// Reads `feed` until the token's end, which must come at `exp`; then
/// nothing more, and the stream ends.
async fn until_expired(mut feed: Seeing, exp: u64, what: &str) {
    loop {
        match within(what, feed.next()).await {
            Some(Some(Seen::Expired)) => break,
            Some(_) => {}
            None => panic!("{what}: the stream ended without saying why"),
        }
    }
    let at = unix_now_f64();
    let exp_f = exp as f64;
    assert!(at + 0.1 >= exp_f, "{what}: ended at {at}, before exp {exp}");
    assert!(
        at < exp_f + 4.0,
        "{what}: ended at {at}: at exp {exp}, not exp plus the leeway"
    );
    while let Some(item) = within(what, feed.next()).await {
        match item {
            None => {}
            Some(Seen::Expired) => panic!("{what}: a second expiry"),
            Some(Seen::Other(sent)) => panic!("{what}: {sent} after the expiry"),
        }
    }
}

/// An SSE response as [`Seeing`].
fn sse_seeing(r: reqwest::Response) -> Seeing {
    r.bytes_stream()
        .eventsource()
        .map(|e| {
            let e = e.expect("an SSE event");
            Some(if e.event == "expired" {
                assert_eq!(e.data, "{}");
                Seen::Expired
            } else {
                Seen::Other(format!("{e:?}"))
            })
        })
        .boxed()
}

/// An NDJSON response as [`Seeing`] (keep-alive empty lines skipped).
fn ndjson_seeing(r: reqwest::Response) -> Seeing {
    let mut lines = LineSplitter::new();
    r.bytes_stream()
        .flat_map(move |chunk| futures_util::stream::iter(lines.feed(&chunk.unwrap())))
        .filter(|line| std::future::ready(!line.iter().all(u8::is_ascii_whitespace)))
        .map(|line| {
            let v: Value = serde_json::from_slice(&line).expect("a JSON line");
            Some(if v == json!({"event": "expired"}) {
                Seen::Expired
            } else {
                Seen::Other(v.to_string())
            })
        })
        .boxed()
}

/// A WebSocket as [`Seeing`]: its close must carry 4401.
fn ws_seeing(ws: Ws) -> Seeing {
    ws.map(|m| match m {
        Ok(Message::Close(frame)) => {
            let code = frame.map(|f| u16::from(f.code));
            assert_eq!(code, Some(4401), "the close code of an expired token");
            Some(Seen::Expired)
        }
        Ok(Message::Text(t)) => Some(Seen::Other(t.to_string())),
        _ => None,
    })
    .boxed()
}

/// Opens `path` with `accept` and `token` over HTTP/1.1 (these routes are
/// hyper's on every way in).
async fn open_stream(server: &Server, path: &str, accept: &str, token: &str) -> Seeing {
    let r = Way::Http11
        .client()
        .get(server.url(path))
        .header("accept", accept)
        .header("authorization", bearer(token))
        .send();
    let r = within(path, r).await.expect("a stream");
    assert_eq!(r.status(), 200, "{path} {accept}");
    match accept {
        "text/event-stream" => sse_seeing(r),
        _ => ndjson_seeing(r),
    }
}

/// Every other stream a token opens ends with it too: a task's events
/// (SSE, NDJSON, WebSocket), the seed articles' `/api/queue` SSE and `/sse`.
#[tokio::test]
async fn task_and_article_streams_end_with_their_token() {
    let server = super::server(&[]);
    let task = Way::Http11
        .client()
        .post(server.url("/queues/default/tasks"))
        .header("authorization", bearer(&super::root()))
        .body("job")
        .send();
    let task = super::Answer::of(task.await.unwrap()).await.json();
    let id = task["id"].as_str().expect("id");
    let exp = unix_now() + 2;
    let short = token_until(json!({"enqueue": ["default"]}), exp);
    let events = format!("/tasks/{id}/events");

    let mut feeds: Vec<(String, Seeing)> = Vec::new();
    for (path, accept) in [
        (events.clone(), "text/event-stream"),
        (format!("/api/queue?id={id}"), "text/event-stream"),
        ("/sse".to_owned(), "text/event-stream"),
        (events.clone(), "application/x-ndjson"),
    ] {
        let feed = open_stream(&server, &path, accept, &short).await;
        feeds.push((format!("{path} {accept}"), feed));
    }
    let url = server.url(&events).replacen("http", "ws", 1);
    let mut request = url.into_client_request().unwrap();
    let bearer = bearer(&short).parse().unwrap();
    request.headers_mut().insert("authorization", bearer);
    let (ws, _) = within("ws", tokio_tungstenite::connect_async(request))
        .await
        .expect("a WebSocket");
    feeds.push((format!("{events} WebSocket"), ws_seeing(ws)));

    let ends = feeds
        .into_iter()
        .map(|(what, feed)| async move { until_expired(feed, exp, &what).await });
    futures_util::future::join_all(ends).await;
}
