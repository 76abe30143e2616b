//! The same events through every transport, cursors and resume, long and
//! short poll answers, multi-topic subscriptions and gaps.

use eventsource_stream::Eventsource;
use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio_tungstenite::tungstenite::Message;

use crate::harness::{PATIENCE, Server, client, publish, within};

/// Data with every newline style, so each transport must carry it intact.
const DATA: [&str; 4] = ["plain", "two\nlines", "crlf\r\nand\rcr", "trailing\n"];

/// What a client saw of one event.
#[derive(Debug, Clone, PartialEq)]
struct Seen {
    id: String,
    event: String,
    data: String,
}

/// What an EventSource rebuilds: the same text with LF line ends.
fn as_sse(events: &[Seen]) -> Vec<Seen> {
    events
        .iter()
        .map(|e| Seen {
            data: e.data.replace("\r\n", "\n").replace('\r', "\n"),
            ..e.clone()
        })
        .collect()
}

fn from_json(v: &Value) -> Seen {
    Seen {
        id: v["id"].as_str().unwrap_or_default().to_owned(),
        event: v["event"].as_str().unwrap_or_default().to_owned(),
        data: v["data"].as_str().unwrap_or_default().to_owned(),
    }
}

async fn publish_all(server: &Server, topic: &str) -> Vec<Seen> {
    let mut out = Vec::new();
    for (i, data) in DATA.iter().enumerate() {
        let event = if i == 1 { "note" } else { "message" };
        let r = client()
            .post(server.url(&format!("/topics/{topic}?event={event}")))
            .body(*data)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
        let v: Value = r.json().await.unwrap();
        out.push(Seen {
            id: v["id"].as_str().unwrap().to_owned(),
            event: event.to_owned(),
            data: (*data).to_owned(),
        });
    }
    out
}

async fn via_sse(url: String, n: usize) -> Vec<Seen> {
    let r = client()
        .get(url)
        .header("accept", "text/event-stream")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "text/event-stream");
    let mut events = r.bytes_stream().eventsource();
    let mut out = Vec::new();
    while out.len() < n {
        let e = within("sse event", events.next()).await.unwrap().unwrap();
        out.push(Seen {
            id: e.id,
            event: e.event,
            data: e.data,
        });
    }
    out
}

async fn via_ws(url: String, n: usize) -> Vec<Seen> {
    let (mut ws, _) = tokio_tungstenite::connect_async(url.replacen("http", "ws", 1))
        .await
        .unwrap();
    let mut out = Vec::new();
    while out.len() < n {
        match within("ws frame", ws.next()).await.unwrap().unwrap() {
            Message::Text(t) => out.push(from_json(&serde_json::from_str(&t).unwrap())),
            Message::Ping(_) | Message::Pong(_) => {}
            other => panic!("unexpected frame {other:?}"),
        }
    }
    ws.close(None).await.ok();
    out
}

async fn via_stream(url: String, n: usize) -> Vec<Seen> {
    let r = client()
        .get(url)
        .header("accept", "application/x-ndjson")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "application/x-ndjson");
    let mut body = r.bytes_stream();
    let mut lines = herald_protocol::ndjson::LineSplitter::new();
    let mut out = Vec::new();
    while out.len() < n {
        let chunk = within("stream chunk", body.next()).await.unwrap().unwrap();
        for line in lines.feed(&chunk) {
            out.push(from_json(&serde_json::from_slice(&line).unwrap()));
        }
    }
    out
}

async fn via_poll(url: String, transport: &str) -> Vec<Seen> {
    let r = client()
        .get(format!("{url}&transport={transport}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["gap"], false);
    v["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(from_json)
        .collect()
}

/// Runs a scenario once on the memory store and once on the embedded store.
macro_rules! on_every_store {
    ($scenario:ident, $memory:ident, $file:ident, $flags:expr) => {
        #[tokio::test]
        async fn $memory() {
            $scenario(Server::start($flags)).await;
        }

        #[tokio::test]
        async fn $file() {
            let dir = crate::harness::temp_dir();
            $scenario(Server::start_in(dir.path(), $flags)).await;
        }
    };
}

on_every_store!(same_history, same_history_memory, same_history_file, &[]);
on_every_store!(resume, resume_memory, resume_file, &[]);
on_every_store!(gap, gap_memory, gap_file, &["--retention-events", "3"]);
on_every_store!(multi_topic, multi_topic_memory, multi_topic_file, &[]);

/// Every transport delivers the same history intact.
async fn same_history(server: Server) {
    let published = publish_all(&server, "same").await;
    let url = server.url("/topics/same?last-event-id=all");
    let n = published.len();
    assert_eq!(via_sse(url.clone(), n).await, as_sse(&published), "sse");
    assert_eq!(via_ws(url.clone(), n).await, published, "ws");
    assert_eq!(via_stream(url.clone(), n).await, published, "stream");
    assert_eq!(
        via_poll(url.clone(), "long-poll").await,
        published,
        "long-poll"
    );
    assert_eq!(via_poll(url, "poll").await, published, "poll");
}

#[tokio::test]
async fn every_streaming_transport_delivers_live_events_from_now() {
    let server = Server::start(&[]);
    publish(&server, "live", "before").await;
    let url = server.url("/topics/live");
    // Each subscriber is pinned to "now" once its response has started.
    let sse = client()
        .get(&url)
        .header("accept", "text/event-stream")
        .send()
        .await
        .unwrap();
    let nd = client()
        .get(&url)
        .header("accept", "application/x-ndjson")
        .send()
        .await
        .unwrap();
    let (mut ws, _) = tokio_tungstenite::connect_async(url.replacen("http", "ws", 1))
        .await
        .unwrap();
    let published = publish_all(&server, "live").await;

    let mut sse = sse.bytes_stream().eventsource();
    let mut got = Vec::new();
    while got.len() < published.len() {
        let e = within("sse", sse.next()).await.unwrap().unwrap();
        got.push(Seen {
            id: e.id,
            event: e.event,
            data: e.data,
        });
    }
    assert_eq!(got, as_sse(&published));

    let mut body = nd.bytes_stream();
    let mut lines = herald_protocol::ndjson::LineSplitter::new();
    let mut got = Vec::new();
    while got.len() < published.len() {
        for line in lines.feed(&within("ndjson", body.next()).await.unwrap().unwrap()) {
            got.push(from_json(&serde_json::from_slice(&line).unwrap()));
        }
    }
    assert_eq!(got, published);

    let mut got = Vec::new();
    while got.len() < published.len() {
        if let Message::Text(t) = within("ws", ws.next()).await.unwrap().unwrap() {
            got.push(from_json(&serde_json::from_str(&t).unwrap()));
        }
    }
    assert_eq!(got, published);
}

/// Each transport resumes after a cursor.
async fn resume(server: Server) {
    let published = publish_all(&server, "resume").await;
    let after = &published[1].id;
    let rest = published[2..].to_vec();
    let url = server.url(&format!("/topics/resume?last-event-id={after}"));
    assert_eq!(via_sse(url.clone(), 2).await, as_sse(&rest));
    assert_eq!(via_ws(url.clone(), 2).await, rest);
    assert_eq!(via_stream(url.clone(), 2).await, rest);
    assert_eq!(via_poll(url.clone(), "poll").await, rest);
    assert_eq!(via_poll(url, "long-poll").await, rest);
    // The header wins over the query parameter.
    let r = client()
        .get(server.url(&format!("/topics/resume?last-event-id={}", published[0].id)))
        .header("last-event-id", &published[2].id)
        .send()
        .await
        .unwrap();
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["events"].as_array().unwrap().len(), 1);
    assert_eq!(v["events"][0]["id"], published[3].id.as_str());
}

#[tokio::test]
async fn short_poll_answers_204_then_200_and_pages_with_next() {
    let server = Server::start(&[]);
    let r = client()
        .get(server.url("/topics/empty"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204, "a topic nobody published to is no error");
    for i in 0..5 {
        publish(&server, "paged", &format!("p{i}")).await;
    }
    let mut cursor = "all".to_owned();
    let mut seen = Vec::new();
    loop {
        let r = client()
            .get(server.url(&format!(
                "/topics/paged?transport=poll&limit=2&last-event-id={cursor}"
            )))
            .send()
            .await
            .unwrap();
        if r.status() == 204 {
            assert_eq!(r.headers()["herald-cursor"].to_str().unwrap(), cursor);
            break;
        }
        assert_eq!(r.status(), 200);
        let v: Value = r.json().await.unwrap();
        let events = v["events"].as_array().unwrap();
        assert!(events.len() <= 2);
        seen.extend(
            events
                .iter()
                .map(|e| e["data"].as_str().unwrap().to_owned()),
        );
        cursor = v["next"].as_str().unwrap().to_owned();
        assert_eq!(events.last().unwrap()["id"].as_str().unwrap(), cursor);
    }
    assert_eq!(seen, ["p0", "p1", "p2", "p3", "p4"]);
}

#[tokio::test]
async fn long_poll_waits_for_an_event_or_answers_204_with_the_cursor() {
    let server = Server::start(&[]);
    let head = publish(&server, "lp", "old").await;
    // Timeout: 204 with a cursor that resumes exactly.
    let r = client()
        .get(server.url("/topics/lp?transport=long-poll&timeout=0.2"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(r.headers()["herald-cursor"].to_str().unwrap(), head);

    // A waiting long poll is answered by the next publish.
    let url = server.url(&format!(
        "/topics/lp?transport=long-poll&timeout=30&last-event-id={head}"
    ));
    let waiting = tokio::spawn(async move { client().get(url).send().await.unwrap() });
    // The poll is registered once the server counts it.
    crate::harness::wait_for_metric(
        &server,
        "herald_subscriptions{transport=\"long-poll\"}",
        1.0,
    )
    .await;
    let id = publish(&server, "lp", "new").await;
    let r = within("long poll answer", waiting).await.unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["events"][0]["data"], "new");
    assert_eq!(v["next"], id.as_str());
    crate::harness::wait_for_metric(
        &server,
        "herald_subscriptions{transport=\"long-poll\"}",
        0.0,
    )
    .await;
}

/// A multi-topic cursor restores every topic.
async fn multi_topic(server: Server) {
    publish(&server, "m1", "a1").await;
    publish(&server, "m2", "b1").await;
    let url = server.url("/subscribe?topic=m1&topic=m2&last-event-id=all");
    let r = client()
        .get(&url)
        .header("accept", "text/event-stream")
        .send()
        .await
        .unwrap();
    let mut events = r.bytes_stream().eventsource();
    let mut data = Vec::new();
    let mut cursor = String::new();
    for _ in 0..2 {
        let e = within("multi sse", events.next()).await.unwrap().unwrap();
        data.push(e.data);
        cursor = e.id;
    }
    data.sort();
    assert_eq!(data, ["a1", "b1"]);
    drop(events);

    publish(&server, "m2", "b2").await;
    publish(&server, "m1", "a2").await;
    publish(&server, "m2", "b3").await;
    let r = client()
        .get(server.url("/subscribe?topic=m1&topic=m2"))
        .header("accept", "text/event-stream")
        .header("last-event-id", &cursor)
        .send()
        .await
        .unwrap();
    let mut events = r.bytes_stream().eventsource();
    let mut data = Vec::new();
    for _ in 0..3 {
        data.push(
            within("resumed multi sse", events.next())
                .await
                .unwrap()
                .unwrap()
                .data,
        );
    }
    let m2: Vec<_> = data.iter().filter(|d| d.starts_with('b')).collect();
    assert_eq!(m2, ["b2", "b3"], "order within a topic is kept");
    data.sort();
    assert_eq!(data, ["a2", "b2", "b3"], "nothing missed, nothing repeated");

    // The same cursor works for a short poll over both topics.
    let r = client()
        .get(server.url(&format!(
            "/subscribe?topic=m1&topic=m2&transport=poll&last-event-id={}",
            urlencode(&cursor)
        )))
        .send()
        .await
        .unwrap();
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["events"].as_array().unwrap().len(), 3);
    assert!(
        v["next"].as_str().unwrap().contains("m1=") && v["next"].as_str().unwrap().contains("m2=")
    );

    // WebSocket and NDJSON frames of a multi-topic subscription carry the
    // cursor of all topics, which resumes exactly like the SSE id.
    let ws_url = server
        .url("/subscribe?topic=m1&topic=m2&last-event-id=all")
        .replacen("http", "ws", 1);
    let (mut ws, _) = tokio_tungstenite::connect_async(ws_url).await.unwrap();
    let mut frames = Vec::new();
    while frames.len() < 5 {
        if let Message::Text(t) = within("multi ws", ws.next()).await.unwrap().unwrap() {
            frames.push(serde_json::from_str::<Value>(&t).unwrap());
        }
    }
    let after_b2 = frames.iter().find(|f| f["data"] == "b2").unwrap()["cursor"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        after_b2.contains("m1=") && after_b2.contains("m2="),
        "{after_b2}"
    );
    let r = client()
        .get(server.url(&format!(
            "/subscribe?topic=m1&topic=m2&transport=stream&last-event-id={}",
            urlencode(&after_b2)
        )))
        .send()
        .await
        .unwrap();
    let mut want: Vec<String> = frames
        .iter()
        .skip_while(|f| f["data"] != "b2")
        .skip(1)
        .map(|f| f["data"].as_str().unwrap().to_owned())
        .collect();
    let mut body = r.bytes_stream();
    let mut lines = herald_protocol::ndjson::LineSplitter::new();
    let mut rest = Vec::new();
    while rest.len() < want.len() {
        for line in lines.feed(&within("multi ndjson", body.next()).await.unwrap().unwrap()) {
            let v: Value = serde_json::from_slice(&line).unwrap();
            assert!(v["cursor"].as_str().is_some_and(|c| c.contains("m1=")));
            rest.push(v["data"].as_str().unwrap().to_owned());
        }
    }
    rest.sort();
    want.sort();
    assert_eq!(
        rest, want,
        "the frame's cursor resumes after exactly that frame"
    );
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A cursor older than history gets a gap signal first.
async fn gap(server: Server) {
    let mut ids = Vec::new();
    for i in 0..6 {
        ids.push(publish(&server, "short", &format!("s{i}")).await);
    }
    let url = server.url(&format!("/topics/short?last-event-id={}", ids[0]));

    // JSON answers carry "gap": true and replay from the oldest retained.
    let v: Value = client()
        .get(&url)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["gap"], true);
    let data: Vec<_> = v["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["data"].clone())
        .collect();
    assert_eq!(data, ["s3", "s4", "s5"]);

    // The cursor just before the oldest retained event is still exact.
    let v: Value = client()
        .get(server.url(&format!("/topics/short?last-event-id={}", ids[2])))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["gap"], false);

    // WebSocket: a gap frame without an id, then the events.
    let (mut ws, _) = tokio_tungstenite::connect_async(url.replacen("http", "ws", 1))
        .await
        .unwrap();
    let first = match within("gap frame", ws.next()).await.unwrap().unwrap() {
        Message::Text(t) => serde_json::from_str::<Value>(&t).unwrap(),
        other => panic!("unexpected {other:?}"),
    };
    assert_eq!(first["event"], "gap");
    assert!(first.get("id").is_none(), "a gap must not move the cursor");
    let gap_data: Value = serde_json::from_str(first["data"].as_str().unwrap()).unwrap();
    assert_eq!(gap_data["cursor"], ids[0].as_str());
    let next = match within("event after gap", ws.next()).await.unwrap().unwrap() {
        Message::Text(t) => serde_json::from_str::<Value>(&t).unwrap(),
        other => panic!("unexpected {other:?}"),
    };
    assert_eq!(next["data"], "s3");

    // SSE: the third-party parser sees a `gap` event, then the replay.
    let r = client()
        .get(&url)
        .header("accept", "text/event-stream")
        .send()
        .await
        .unwrap();
    let mut events = r.bytes_stream().eventsource();
    let gap = within("sse gap", events.next()).await.unwrap().unwrap();
    assert_eq!(gap.event, "gap");
    assert_eq!(gap.id, "", "no id before the gap, and the gap sets none");
    let s3 = within("sse s3", events.next()).await.unwrap().unwrap();
    assert_eq!((s3.data.as_str(), s3.id.as_str()), ("s3", ids[3].as_str()));
}

#[tokio::test]
async fn websocket_pings_and_says_goodbye_on_shutdown() {
    let mut server = Server::start(&["--keepalive", "100ms"]);
    let (mut ws, _) =
        tokio_tungstenite::connect_async(server.url("/topics/ka").replacen("http", "ws", 1))
            .await
            .unwrap();
    match within("ping", ws.next()).await.unwrap().unwrap() {
        Message::Ping(_) => {}
        other => panic!("expected a ping, got {other:?}"),
    }
    ws.send(Message::Text("ignored".into())).await.unwrap();
    server.terminate();
    let mut closed_with = None;
    while let Ok(Some(Ok(m))) = tokio::time::timeout(PATIENCE, ws.next()).await {
        if let Message::Close(frame) = m {
            closed_with = frame.map(|f| u16::from(f.code));
            break;
        }
    }
    assert_eq!(closed_with, Some(1001), "going away");
    assert!(server.wait().success(), "graceful shutdown exits 0");
}

#[tokio::test]
async fn streams_send_keep_alives_when_idle() {
    let server = Server::start(&["--keepalive", "100ms"]);
    let r = client()
        .get(server.url("/topics/idle"))
        .header("accept", "application/x-ndjson")
        .send()
        .await
        .unwrap();
    let mut body = r.bytes_stream();
    let chunk = within("keep-alive line", body.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&chunk[..], b"\n");
}

#[tokio::test]
async fn graceful_shutdown_ends_streams_and_answers_long_polls() {
    let mut server = Server::start(&[]);
    let sse = client()
        .get(server.url("/topics/bye"))
        .header("accept", "text/event-stream")
        .send()
        .await
        .unwrap();
    let nd = client()
        .get(server.url("/topics/bye"))
        .header("accept", "application/x-ndjson")
        .send()
        .await
        .unwrap();
    let url = server.url("/topics/bye?transport=long-poll&timeout=60");
    let poll = tokio::spawn(async move { client().get(url).send().await.unwrap() });
    crate::harness::wait_for_metric(
        &server,
        "herald_subscriptions{transport=\"long-poll\"}",
        1.0,
    )
    .await;
    server.terminate();

    // Each stream ends with a clean end of body, not an error.
    let mut events = sse.bytes_stream().eventsource();
    while let Some(item) = within("sse end", events.next()).await {
        item.expect("the SSE body ends cleanly");
    }
    let mut body = nd.bytes_stream();
    while let Some(item) = within("ndjson end", body.next()).await {
        item.expect("the NDJSON body ends cleanly");
    }
    let answer = within("long poll answered", poll).await.unwrap();
    assert_eq!(answer.status(), 204);
    assert!(answer.headers().contains_key("herald-cursor"));
    assert!(server.wait().success());
}
