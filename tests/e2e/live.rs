//! SSE streams of one topic that have caught up are written by the topic's
//! lot. The seams: streams that join while events pour in (each must see
//! every event once, in order), both framings, a lot whose ring overflows
//! (its streams carry on from the store, not cut off), and keep-alives
//! written while the lot writes events to the same socket.

use eventsource_stream::Eventsource;
use futures_util::StreamExt;
use futures_util::future::join_all;

use crate::harness::{
    Raw, Server, client, metric, publish_numbered_batch, temp_dir, wait_for_metric, within,
};

const SSE: &str = "herald_subscriptions{transport=\"sse\"}";

/// Reads `n` events' data from an SSE stream of `topic` opened with
/// `last_event_id` (reqwest plus the eventsource-stream parser).
async fn read_n(base: String, topic: &str, last_event_id: String, n: usize) -> Vec<String> {
    let r = client()
        .get(format!("{base}/topics/{topic}"))
        .header("accept", "text/event-stream")
        .header("last-event-id", last_event_id)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let mut events = r.bytes_stream().eventsource();
    let mut seen = Vec::with_capacity(n);
    while seen.len() < n {
        let e = within("an event", events.next()).await.unwrap().unwrap();
        if e.event == "message" {
            seen.push(e.data);
        }
    }
    seen
}

/// Streams join one by one while a publisher posts without pause, each
/// from the id of the event published just before it joined: it must get
/// every later event once and in order, whether it catches up from the
/// store, from its own watch, or from the lot it enters on the way.
async fn streams_joining_a_busy_topic_miss_nothing(server: &Server) {
    const EVENTS: usize = 400;
    const JOINERS: usize = 8;
    let c = client();
    let mut readers = Vec::new();
    let mut ids = Vec::with_capacity(EVENTS);
    for i in 0..EVENTS {
        let r = c
            .post(server.url("/topics/busy"))
            .body(i.to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
        let v: serde_json::Value = r.json().await.unwrap();
        ids.push(v["id"].as_str().unwrap().to_owned());
        if i % (EVENTS / JOINERS) == 0 {
            let (base, id) = (server.url(""), ids[i].clone());
            let want: Vec<String> = (i + 1..EVENTS).map(|k| k.to_string()).collect();
            readers.push(tokio::spawn(async move {
                (read_n(base, "busy", id, want.len()).await, want)
            }));
        }
    }
    for reader in readers {
        let (seen, want) = within("a joiner's events", reader).await.unwrap();
        assert_eq!(seen, want);
    }
}

#[tokio::test]
async fn streams_joining_a_busy_topic_miss_nothing_memory() {
    streams_joining_a_busy_topic_miss_nothing(&Server::start(&[])).await;
}

#[tokio::test]
async fn streams_joining_a_busy_topic_miss_nothing_file() {
    let dir = temp_dir();
    streams_joining_a_busy_topic_miss_nothing(&Server::start_in(dir.path(), &[])).await;
}

#[tokio::test]
async fn a_lot_whose_ring_overflows_hands_its_streams_back_whole() {
    // A ring of 4 and a batch of 10: the lot cannot know what it missed,
    // so its streams read the store — and are not cut off as slow.
    let server = Server::start(&["--subscriber-buffer", "4"]);
    let base = server.url("");
    let readers: Vec<_> = (0..3)
        .map(|_| tokio::spawn(read_n(base.clone(), "flood", "now".into(), 10)))
        .collect();
    wait_for_metric(&server, SSE, 3.0).await;
    let want = publish_numbered_batch(&server, "flood", 10).await;
    for seen in join_all(readers).await {
        assert_eq!(seen.unwrap(), want);
    }
    assert_eq!(
        metric(&server, "herald_subscribers_dropped_total").await,
        0.0
    );
}

#[tokio::test]
async fn a_close_delimited_stream_in_a_lot_gets_events_and_keep_alives() {
    let server = Server::start(&["--keepalive", "100ms"]);
    let mut raw = Raw::request(
        &server,
        "GET /topics/old HTTP/1.0\r\nAccept: text/event-stream\r\n\r\n",
    )
    .await;
    raw.until(": herald\n\n").await;
    wait_for_metric(&server, SSE, 1.0).await;
    // Keep-alives from the stream's task, events from the lot, on one socket.
    raw.until_n(": keep-alive\n\n", 2).await;
    for i in 0..20 {
        crate::harness::publish(&server, "old", &format!("e{i}")).await;
    }
    let text = raw.until("data: e19\n\n").await;
    let data: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .collect();
    let want: Vec<String> = (0..20).map(|i| format!("e{i}")).collect();
    assert_eq!(data, want);
    raw.until_n(": keep-alive\n\n", 4).await;
    assert!(!text.contains("\r\n0\r\n"), "no chunk framing on HTTP/1.0");
}
