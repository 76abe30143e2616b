//! herald-client against the real server: every transport from every
//! starting point, resuming across restarts and slow-subscriber cuts, gaps,
//! publishing, tasks and workers, and what bad input gets.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures_util::StreamExt;
use herald_client::{
    BatchEvent, Client, Cursor, Delivery, Error, Event, Failure, Payload, Receipt, Subscription,
    Transport, Update, Wait, WaitOutcome, Worker,
};
use serde_json::json;
use tokio::sync::{Barrier, mpsc, oneshot};

use crate::harness::{PATIENCE, Server, metric, temp_dir, wait_for_metric, within};

const POLL: Transport = Transport::Poll {
    interval: Duration::from_millis(50),
};

fn connect(server: &Server) -> Client {
    Client::new(format!("http://{}", server.addr)).unwrap()
}

/// The `transport` label of `herald_subscriptions` for a streaming transport.
fn gauge(transport: Transport) -> String {
    let label = match transport {
        Transport::Sse => "sse",
        Transport::WebSocket => "ws",
        Transport::Stream => "stream",
        Transport::LongPoll => "long-poll",
        Transport::Poll { .. } => "poll",
    };
    format!("herald_subscriptions{{transport=\"{label}\"}}")
}

fn is_streaming(transport: Transport) -> bool {
    matches!(
        transport,
        Transport::Sse | Transport::WebSocket | Transport::Stream
    )
}

/// The next delivery, which must be an event.
async fn next_event(sub: &mut Subscription, what: &str) -> Event {
    match within(what, sub.next()).await {
        Some(Ok(Delivery::Event(e))) => e,
        other => panic!("{what}: expected an event, got {other:?}"),
    }
}

/// The next `n` deliveries, which must all be events.
async fn take(sub: &mut Subscription, n: usize, what: &str) -> Vec<Event> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        out.push(next_event(sub, what).await);
    }
    out
}

/// Asserts that `got` is exactly what `sent` published (with `data` and
/// `event`), one for one, in order. Event times are compared where the
/// transport carries them (SSE does not).
fn assert_same(got: &[Event], sent: &[(Receipt, &str)], what: &str) {
    let got: Vec<_> = got
        .iter()
        .map(|e| (&e.id, &e.topic, &e.event, e.data.as_str()))
        .collect();
    let want: Vec<_> = sent
        .iter()
        .map(|(r, data)| (&r.id, &r.topic, &r.event, *data))
        .collect();
    assert_eq!(got, want, "{what}");
}

/// Splits events by topic, keeping their order within each topic.
fn by_topic(events: &[Event]) -> HashMap<String, Vec<String>> {
    let mut out: HashMap<String, Vec<String>> = HashMap::new();
    for e in events {
        out.entry(e.topic.clone())
            .or_default()
            .push(format!("{} {} {}", e.id, e.event, e.data));
    }
    out
}

fn receipts_by_topic(sent: &[(Receipt, &str)]) -> HashMap<String, Vec<String>> {
    let mut out: HashMap<String, Vec<String>> = HashMap::new();
    for (r, data) in sent {
        out.entry(r.topic.clone())
            .or_default()
            .push(format!("{} {} {data}", r.id, r.event));
    }
    out
}

/// Publishes `data` to `topic` through the client under test.
async fn send<'a>(client: &Client, topic: &str, data: &'a str) -> (Receipt, &'a str) {
    (client.publish(topic, data).await.unwrap(), data)
}

/// Makes sure a subscription from `now` is live before the test publishes.
/// Streaming transports: the server counts it in its gauge (`open` such
/// subscriptions of this transport are expected in all). Polls hold no
/// connection to count, so probes are published until one arrives: the
/// probes after it must follow, and they are returned to be drained.
async fn go_live(
    server: &Server,
    client: &Client,
    sub: &mut Subscription,
    transport: Transport,
    topic: &str,
    open: usize,
) -> Vec<(Receipt, String)> {
    if is_streaming(transport) {
        wait_for_metric(server, &gauge(transport), open as f64).await;
        return Vec::new();
    }
    let deadline = tokio::time::Instant::now() + PATIENCE;
    let mut probes = Vec::new();
    loop {
        let data = format!("probe {}", probes.len());
        probes.push((client.publish(topic, data.as_str()).await.unwrap(), data));
        // Not a stand-in for synchronisation: how long to wait before
        // publishing another probe, should this one predate the first poll.
        if let Ok(first) = tokio::time::timeout(Duration::from_millis(300), sub.next()).await {
            let Some(Ok(Delivery::Event(e))) = first else {
                panic!("probing: {first:?}");
            };
            let k = probes
                .iter()
                .position(|(r, _)| r.id == e.id)
                .unwrap_or_else(|| panic!("{e:?} is no probe"));
            assert_eq!(e.data, probes[k].1);
            return probes.split_off(k + 1);
        }
        assert!(tokio::time::Instant::now() < deadline, "never went live");
    }
}

/// Drains the probes that [`go_live`] left behind.
async fn drain_probes(sub: &mut Subscription, probes: Vec<(Receipt, String)>) {
    for (r, data) in probes {
        let e = next_event(sub, "late probe").await;
        assert_eq!((e.id, e.data), (r.id, data));
    }
}

// ---------------------------------------------------------------------------
// 1. Every transport, from the start and from now, one topic and several.

async fn every_way(transport: Transport) {
    let server = Server::start(&[]);
    let client = connect(&server);
    let mut open = 0;

    // One topic, from the start: history, then live.
    let mut history = vec![
        send(&client, "one", "first").await,
        send(&client, "one", "two\nlines").await,
    ];
    history.push((
        client
            .publish_as("one", Some("note"), "typed")
            .await
            .unwrap(),
        "typed",
    ));
    let mut sub = client.subscribe(&["one"], Cursor::All, transport);
    if is_streaming(transport) {
        open += 1;
    }
    let got = take(&mut sub, 3, "history of one").await;
    assert_same(&got, &history, "one topic from the start");
    let live = vec![
        send(&client, "one", "live 1").await,
        send(&client, "one", "live 2").await,
    ];
    let got = take(&mut sub, 2, "live on one").await;
    assert_same(&got, &live, "one topic, live after history");

    // One topic, from now: nothing of the past.
    let _old = send(&client, "later", "before subscribing").await;
    let mut now = client.subscribe(&["later"], Cursor::Now, transport);
    if is_streaming(transport) {
        open += 1;
    }
    let probes = go_live(&server, &client, &mut now, transport, "later", open).await;
    drain_probes(&mut now, probes).await;
    let sent = vec![
        send(&client, "later", "n1").await,
        send(&client, "later", "n2\n").await,
        send(&client, "later", "n3").await,
    ];
    let got = take(&mut now, 3, "from now on one topic").await;
    assert_same(&got, &sent, "one topic from now");

    // Several topics, from the start: each topic in order.
    let mut sent = vec![
        send(&client, "a", "a1").await,
        send(&client, "b", "b1").await,
        send(&client, "a", "a2").await,
        send(&client, "b", "b2").await,
        send(&client, "a", "a3").await,
    ];
    let mut multi = client.subscribe(&["a", "b"], Cursor::All, transport);
    if is_streaming(transport) {
        open += 1;
    }
    let mut got = take(&mut multi, 5, "history of a and b").await;
    assert_eq!(
        by_topic(&got),
        receipts_by_topic(&sent),
        "a and b from the start"
    );
    // Then live, still one for one.
    let live = vec![
        send(&client, "b", "b3").await,
        send(&client, "a", "a4").await,
    ];
    got.extend(take(&mut multi, 2, "live on a and b").await);
    sent.extend(live);
    assert_eq!(
        by_topic(&got),
        receipts_by_topic(&sent),
        "a and b, live after history"
    );

    // Several topics, from now.
    let _old = send(&client, "c", "old c").await;
    let _old = send(&client, "d", "old d").await;
    let mut multi_now = client.subscribe(&["c", "d"], Cursor::Now, transport);
    if is_streaming(transport) {
        open += 1;
    }
    let probes = go_live(&server, &client, &mut multi_now, transport, "c", open).await;
    drain_probes(&mut multi_now, probes).await;
    let sent = vec![
        send(&client, "d", "d1").await,
        send(&client, "c", "c1").await,
        send(&client, "d", "d2").await,
        send(&client, "c", "c2").await,
    ];
    let got = take(&mut multi_now, 4, "from now on c and d").await;
    assert_eq!(by_topic(&got), receipts_by_topic(&sent), "c and d from now");

    // A last event on each proves nothing was repeated after the above.
    let end = send(&client, "one", "end").await;
    assert_same(&[next_event(&mut sub, "end").await], &[end], "one: end");
    let end = send(&client, "a", "end").await;
    assert_same(&[next_event(&mut multi, "end").await], &[end], "a: end");
}

#[tokio::test]
async fn every_way_by_sse() {
    every_way(Transport::Sse).await;
}

#[tokio::test]
async fn every_way_by_websocket() {
    every_way(Transport::WebSocket).await;
}

#[tokio::test]
async fn every_way_by_stream() {
    every_way(Transport::Stream).await;
}

#[tokio::test]
async fn every_way_by_long_poll() {
    every_way(Transport::LongPoll).await;
}

#[tokio::test]
async fn every_way_by_short_poll() {
    every_way(POLL).await;
}

// ---------------------------------------------------------------------------
// 2. Resuming across a server restart.

/// Events before a restart, then after it: each exactly once, in order,
/// and no error in between.
async fn across_a_restart(transport: Transport, topics: &[&str]) {
    let dir = temp_dir();
    let mut server = Server::start_in(dir.path(), &["--retry", "100ms"]);
    let client = connect(&server);
    let mut sub = client.subscribe(topics, Cursor::All, transport);
    let mut sent = Vec::new();
    for (i, data) in ["before 1", "before 2", "before 3"].into_iter().enumerate() {
        sent.push(send(&client, topics[i % topics.len()], data).await);
    }
    let mut got = take(&mut sub, 3, "before the restart").await;

    server.restart();

    for (i, data) in ["after 1", "after 2", "after 3"].into_iter().enumerate() {
        sent.push(send(&client, topics[(i + 1) % topics.len()], data).await);
    }
    got.extend(take(&mut sub, 3, "after the restart").await);
    if topics.len() == 1 {
        assert_same(&got, &sent, "across a restart");
    } else {
        assert_eq!(by_topic(&got), receipts_by_topic(&sent), "across a restart");
    }
    let end = send(&client, topics[0], "end").await;
    assert_same(
        &[next_event(&mut sub, "end").await],
        &[end],
        "nothing twice",
    );
}

#[tokio::test]
async fn sse_resumes_across_a_restart() {
    across_a_restart(Transport::Sse, &["r"]).await;
}

#[tokio::test]
async fn sse_resumes_several_topics_across_a_restart() {
    across_a_restart(Transport::Sse, &["x", "y"]).await;
}

#[tokio::test]
async fn websocket_resumes_across_a_restart() {
    across_a_restart(Transport::WebSocket, &["r"]).await;
}

#[tokio::test]
async fn websocket_resumes_several_topics_across_a_restart() {
    across_a_restart(Transport::WebSocket, &["x", "y"]).await;
}

#[tokio::test]
async fn stream_resumes_across_a_restart() {
    across_a_restart(Transport::Stream, &["r"]).await;
}

#[tokio::test]
async fn stream_resumes_several_topics_across_a_restart() {
    across_a_restart(Transport::Stream, &["x", "y"]).await;
}

#[tokio::test]
async fn long_poll_resumes_across_a_restart() {
    across_a_restart(Transport::LongPoll, &["r"]).await;
}

#[tokio::test]
async fn short_poll_resumes_across_a_restart() {
    across_a_restart(POLL, &["r"]).await;
}

/// A subscription from `now` that loses its connection before its first
/// event still resumes from where `now` was, not from a new `now`.
async fn from_now_across_a_restart(transport: Transport, topics: &[&str]) {
    let dir = temp_dir();
    let mut server = Server::start_in(dir.path(), &["--retry", "100ms"]);
    let client = connect(&server);
    let _old = send(&client, topics[0], "old").await;
    let mut sub = client.subscribe(topics, Cursor::Now, transport);
    wait_for_metric(&server, &gauge(transport), 1.0).await;

    server.restart();

    // Published before the client can have reconnected.
    let mut sent = Vec::new();
    for (i, data) in ["after 1", "after 2"].into_iter().enumerate() {
        sent.push(send(&client, topics[(i + 1) % topics.len()], data).await);
    }
    let got = take(&mut sub, 2, "after the restart").await;
    assert_eq!(by_topic(&got), receipts_by_topic(&sent), "from now");
}

#[tokio::test]
async fn sse_from_now_resumes_across_a_restart() {
    from_now_across_a_restart(Transport::Sse, &["r"]).await;
}

#[tokio::test]
async fn sse_from_now_resumes_several_topics_across_a_restart() {
    from_now_across_a_restart(Transport::Sse, &["x", "y"]).await;
}

#[tokio::test]
async fn websocket_from_now_resumes_across_a_restart() {
    from_now_across_a_restart(Transport::WebSocket, &["x", "y"]).await;
}

#[tokio::test]
async fn stream_from_now_resumes_across_a_restart() {
    from_now_across_a_restart(Transport::Stream, &["r"]).await;
}

#[tokio::test]
async fn long_poll_from_now_resumes_across_a_restart() {
    from_now_across_a_restart(Transport::LongPoll, &["r"]).await;
}

// ---------------------------------------------------------------------------
// 3. Resuming after the server cut a slow subscriber off.

/// Events, and their size, enough to fill the client's channel (256), the
/// socket buffers both ways and the server's subscriber buffer (8).
const FLOOD: usize = 1000;
const FLOOD_SIZE: usize = 32 * 1024;

async fn after_a_slow_cut(transport: Transport) {
    let server = Server::start(&[
        "--subscriber-buffer",
        "8",
        "--retention-events",
        "100000",
        "--retry",
        "100ms",
    ]);
    let client = connect(&server);
    let mut sub = client.subscribe(&["flood"], Cursor::Now, transport);
    wait_for_metric(&server, &gauge(transport), 1.0).await;

    // The test does not read while it publishes.
    let payload = "x".repeat(FLOOD_SIZE);
    let mut sent = Vec::with_capacity(FLOOD);
    for i in 0..FLOOD {
        let r = client
            .publish("flood", format!("{i}:{payload}"))
            .await
            .unwrap();
        sent.push(r.id);
    }

    // Now it reads: every event once, in order, across the cut.
    let mut got = Vec::with_capacity(FLOOD);
    for i in 0..FLOOD {
        let e = next_event(&mut sub, "flooded event").await;
        assert!(e.data.starts_with(&format!("{i}:")), "event {i} in order");
        assert_eq!(e.data.len(), FLOOD_SIZE + format!("{i}:").len());
        got.push(e.id);
    }
    assert_eq!(got, sent);
    let dropped = metric(&server, "herald_subscribers_dropped_total").await;
    assert!(dropped >= 1.0, "the server really cut it off: {dropped}");

    let end = send(&client, "flood", "end").await;
    assert_same(
        &[next_event(&mut sub, "end").await],
        &[end],
        "nothing twice",
    );
}

#[tokio::test]
async fn sse_resumes_after_a_slow_cut() {
    after_a_slow_cut(Transport::Sse).await;
}

#[tokio::test]
async fn websocket_resumes_after_a_slow_cut() {
    after_a_slow_cut(Transport::WebSocket).await;
}

#[tokio::test]
async fn stream_resumes_after_a_slow_cut() {
    after_a_slow_cut(Transport::Stream).await;
}

// ---------------------------------------------------------------------------
// 4. Gaps.

#[tokio::test]
async fn a_stale_cursor_yields_a_gap_then_the_retained_events() {
    let server = Server::start(&["--retention-events", "3"]);
    let client = connect(&server);
    let mut sent = Vec::new();
    for data in ["g1", "g2", "g3", "g4", "g5"] {
        sent.push(send(&client, "g", data).await);
    }
    let stale = sent[0].0.id.clone();
    for transport in [
        Transport::Sse,
        Transport::WebSocket,
        Transport::Stream,
        Transport::LongPoll,
        POLL,
    ] {
        let mut sub = client.subscribe(&["g"], Cursor::After(stale.clone()), transport);
        match within("gap", sub.next()).await {
            Some(Ok(Delivery::Gap { topic, cursor })) => {
                assert_eq!(cursor, stale, "{transport:?}");
                assert_eq!(topic, "g", "{transport:?}");
            }
            other => panic!("{transport:?}: expected a gap, got {other:?}"),
        }
        let got = take(&mut sub, 3, "retained events").await;
        assert_same(&got, &sent[2..], &format!("{transport:?} after the gap"));
    }
}

/// A gap is reported even when nothing at all is left of the history: a
/// short poll then answers `204` with `Herald-Gap: true`.
#[tokio::test]
async fn a_gap_is_reported_when_nothing_is_left() {
    const TRANSPORTS: [Transport; 5] = [
        Transport::Sse,
        Transport::WebSocket,
        Transport::Stream,
        Transport::LongPoll,
        POLL,
    ];
    let server = Server::start(&["--retention-age", "1s"]);
    let client = connect(&server);
    let mut stale = Vec::new();
    for i in 0..TRANSPORTS.len() {
        let topic = format!("aged{i}");
        stale.push(client.publish(&topic, "e1").await.unwrap().id);
        let _missed = client.publish(&topic, "e2").await.unwrap();
    }
    // Bounded wait for the background sweep, the only thing that can drop
    // them: a short poll from the start finds nothing.
    let deadline = tokio::time::Instant::now() + PATIENCE;
    for i in 0..TRANSPORTS.len() {
        loop {
            let r = crate::harness::client()
                .get(server.url(&format!("/topics/aged{i}?last-event-id=all")))
                .send()
                .await
                .unwrap();
            if r.status() == 204 {
                break;
            }
            assert!(tokio::time::Instant::now() < deadline, "never swept");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    for ((i, transport), stale) in TRANSPORTS.into_iter().enumerate().zip(stale) {
        let topic = format!("aged{i}");
        let mut sub = client.subscribe(&[topic.as_str()], Cursor::After(stale.clone()), transport);
        // A long poll answers only once there is an event.
        let fresh = if transport == Transport::LongPoll {
            Some(send(&client, &topic, "fresh").await)
        } else {
            None
        };
        match within("gap", sub.next()).await {
            Some(Ok(Delivery::Gap { topic: t, cursor })) => {
                assert_eq!((t, cursor), (topic.clone(), stale), "{transport:?}");
            }
            other => panic!("{transport:?}: expected a gap, got {other:?}"),
        }
        let fresh = match fresh {
            Some(f) => f,
            None => send(&client, &topic, "fresh").await,
        };
        let got = next_event(&mut sub, "after the gap").await;
        assert_same(
            &[got],
            &[fresh],
            &format!("{transport:?}: once, no second gap"),
        );
    }
}

// ---------------------------------------------------------------------------
// 5. Publishing.

#[tokio::test]
async fn receipts_match_what_subscribers_see() {
    let server = Server::start(&[]);
    let client = connect(&server);
    let mut sub = client.subscribe(&["p", "q"], Cursor::All, Transport::WebSocket);

    let plain = client.publish("p", "plain").await.unwrap();
    let typed = client
        .publish_as("q", Some("alert"), "typed")
        .await
        .unwrap();
    let batch = client
        .publish_batch(&[
            BatchEvent {
                topic: "p".into(),
                event: None,
                data: "b1".into(),
            },
            BatchEvent {
                topic: "q".into(),
                event: Some("note".into()),
                data: "b2\nsecond line".into(),
            },
            BatchEvent {
                topic: "p".into(),
                event: None,
                data: "b3".into(),
            },
        ])
        .await
        .unwrap();

    assert_eq!(
        (plain.topic.as_str(), plain.event.as_str()),
        ("p", "message")
    );
    assert_eq!((typed.topic.as_str(), typed.event.as_str()), ("q", "alert"));
    let shape: Vec<_> = batch
        .iter()
        .map(|r| (r.topic.as_str(), r.event.as_str()))
        .collect();
    assert_eq!(shape, [("p", "message"), ("q", "note"), ("p", "message")]);
    let all: Vec<&Receipt> = [&plain, &typed].into_iter().chain(&batch).collect();
    for r in &all {
        assert!(!r.replayed, "{r:?}");
        assert!(r.time.ends_with('Z') && r.time.len() >= 20, "{r:?}");
    }
    let datas = ["plain", "typed", "b1", "b2\nsecond line", "b3"];
    let sent: Vec<(Receipt, &str)> = all.into_iter().cloned().zip(datas).collect();

    let got = take(&mut sub, 5, "published events").await;
    assert_eq!(by_topic(&got), receipts_by_topic(&sent));
    for e in &got {
        let (r, _) = sent.iter().find(|(r, _)| r.id == e.id).unwrap();
        assert_eq!(
            e.time, r.time,
            "the time a subscriber sees is the receipt's"
        );
    }

    // A short poll of one topic agrees too.
    let mut poll = client.subscribe(&["p"], Cursor::All, POLL);
    let got = take(&mut poll, 3, "p by short poll").await;
    let on_p: Vec<_> = sent
        .iter()
        .filter(|(r, _)| r.topic == "p")
        .cloned()
        .collect();
    assert_same(&got, &on_p, "p by short poll");
}

// ---------------------------------------------------------------------------
// 6. Tasks.

/// Collects the updates a wait reports.
fn updates() -> (impl FnMut(Update), mpsc::UnboundedReceiver<Update>) {
    let (tx, rx) = mpsc::unbounded_channel();
    (
        move |u| {
            let _ = tx.send(u);
        },
        rx,
    )
}

fn drained(rx: &mut mpsc::UnboundedReceiver<Update>) -> Vec<Update> {
    let mut out = Vec::new();
    while let Ok(u) = rx.try_recv() {
        out.push(u);
    }
    out
}

#[tokio::test]
async fn tasks_are_enqueued_looked_at_and_cancelled() {
    let server = Server::start(&[]);
    let client = connect(&server);

    let json = client
        .enqueue("jobs", Payload::Json(json!({"url": "cat.png", "n": 1})))
        .await
        .unwrap();
    assert_eq!(json.queue, "jobs");
    assert_eq!(json.status, "queued");
    assert_eq!(json.payload, json!({"url": "cat.png", "n": 1}));
    assert_eq!(json.position, Some(1));
    assert_eq!((json.attempts, json.max_attempts), (0, 3));
    assert!(!json.is_finished());

    let text = client
        .enqueue("jobs", Payload::Text("plain words".into()))
        .await
        .unwrap();
    assert_eq!(text.payload, json!("plain words"));
    assert_eq!(text.position, Some(2));

    let looked = client.task(&text.id).await.unwrap();
    assert_eq!(looked.status, "queued");
    assert_eq!(looked.payload, json!("plain words"));

    // Queued: cancelled at once; after that, it is finished.
    let cancelled = client.cancel(&json.id).await.unwrap();
    assert_eq!(cancelled.status, "cancelled");
    assert!(cancelled.is_finished() && !cancelled.succeeded());
    assert_eq!(client.task(&json.id).await.unwrap().status, "cancelled");
    match client.cancel(&json.id).await {
        Err(Error::Api { status: 409, .. }) => {}
        other => panic!("cancelling a cancelled task: {other:?}"),
    }
    // The other one moved up.
    assert_eq!(client.task(&text.id).await.unwrap().position, Some(1));

    // Finished by a worker: cancelling is a conflict.
    let claimed = client
        .claim("jobs", Duration::from_secs(5), Duration::from_secs(30))
        .await
        .unwrap()
        .expect("a task to claim");
    assert_eq!(claimed.task.id, text.id);
    assert_eq!(claimed.task.status, "running");
    let done = client
        .complete(&claimed, &Payload::Text("ok".into()))
        .await
        .unwrap();
    assert!(done.succeeded());
    match client.cancel(&text.id).await {
        Err(Error::Api { status: 409, .. }) => {}
        other => panic!("cancelling a finished task: {other:?}"),
    }

    // Unknown and malformed ids.
    match client.task("not-an-id").await {
        Err(e) => assert_eq!(e.status(), Some(400), "{e}"),
        Ok(t) => panic!("{t:?}"),
    }
    assert!(
        client
            .claim("jobs", Duration::ZERO, Duration::from_secs(1))
            .await
            .unwrap()
            .is_none(),
        "nothing left to claim"
    );
}

#[tokio::test]
async fn waiting_by_long_poll() {
    let server = Server::start(&[]);
    let client = connect(&server);

    // Nobody works: the time runs out, and the task is as last seen.
    let idle = client
        .enqueue("lp", Payload::Json(json!({"idle": true})))
        .await
        .unwrap();
    let (on_update, mut seen) = updates();
    let outcome = within(
        "short long poll",
        client.wait(
            &idle.id,
            Wait::LongPoll {
                ttl: Duration::from_millis(300),
            },
            on_update,
        ),
    )
    .await
    .unwrap();
    match outcome {
        WaitOutcome::TimedOut(Some(t)) => {
            assert_eq!(
                (t.id.as_str(), t.status.as_str()),
                (idle.id.as_str(), "queued")
            );
        }
        other => panic!("expected a timeout, got {other:?}"),
    }
    assert_eq!(drained(&mut seen), [Update::Position(1)]);

    // A worker finishes it while the client waits.
    let waiting = {
        let client = client.clone();
        let id = idle.id.clone();
        tokio::spawn(async move {
            client
                .wait(
                    &id,
                    Wait::LongPoll {
                        ttl: Duration::from_secs(10),
                    },
                    |_| {},
                )
                .await
        })
    };
    let claimed = client
        .claim("lp", Duration::from_secs(5), Duration::from_secs(30))
        .await
        .unwrap()
        .unwrap();
    client
        .complete(&claimed, &Payload::Json(json!({"answer": 42})))
        .await
        .unwrap();
    match within("long poll", waiting).await.unwrap().unwrap() {
        WaitOutcome::Finished(t) => {
            assert_eq!(t.status, "succeeded");
            assert_eq!(t.result, Some(json!({"answer": 42})));
        }
        other => panic!("expected the result, got {other:?}"),
    }

    // A failed task is finished too.
    let doomed = client
        .enqueue("lp", Payload::Text("doomed".into()))
        .await
        .unwrap();
    let claimed = client
        .claim("lp", Duration::from_secs(5), Duration::from_secs(30))
        .await
        .unwrap()
        .unwrap();
    client
        .fail(&claimed, &Failure::new("no luck", false))
        .await
        .unwrap();
    let ttl = Duration::from_secs(10);
    match client
        .wait(&doomed.id, Wait::LongPoll { ttl }, |_| {})
        .await
        .unwrap()
    {
        WaitOutcome::Finished(t) => {
            assert_eq!(t.status, "failed");
            assert_eq!(t.error.as_deref(), Some("no luck"));
        }
        other => panic!("expected the failure, got {other:?}"),
    }
}

#[tokio::test]
async fn waiting_by_short_poll() {
    let server = Server::start(&[]);
    let client = connect(&server);

    // Out of attempts: the task as last seen.
    let first = client
        .enqueue("sp", Payload::Text("first".into()))
        .await
        .unwrap();
    let second = client
        .enqueue("sp", Payload::Text("second".into()))
        .await
        .unwrap();
    let (on_update, mut seen) = updates();
    let how = Wait::ShortPoll {
        interval: Duration::from_millis(20),
        max_attempts: 3,
    };
    match client.wait(&second.id, how, on_update).await.unwrap() {
        WaitOutcome::TimedOut(Some(t)) => {
            assert_eq!(t.status, "queued");
            assert_eq!(t.position, Some(2));
        }
        other => panic!("expected a timeout, got {other:?}"),
    }
    // Told once: the position did not change.
    assert_eq!(drained(&mut seen), [Update::Position(2)]);

    // Finished while polling.
    let (on_update, mut seen) = updates();
    let waiting = {
        let client = client.clone();
        let id = second.id.clone();
        tokio::spawn(async move {
            let how = Wait::ShortPoll {
                interval: Duration::from_millis(20),
                max_attempts: 500,
            };
            client.wait(&id, how, on_update).await
        })
    };
    // It has looked at least once before the first task is taken.
    assert_eq!(
        within("first look", seen.recv()).await,
        Some(Update::Position(2))
    );
    let one = client
        .claim("sp", Duration::from_secs(5), Duration::from_secs(30))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(one.task.id, first.id);
    assert_eq!(
        within("moved up", seen.recv()).await,
        Some(Update::Position(1))
    );
    let two = client
        .claim("sp", Duration::from_secs(5), Duration::from_secs(30))
        .await
        .unwrap()
        .unwrap();
    client
        .progress(&two, Some(0.25), Some("a quarter"))
        .await
        .unwrap();
    assert_eq!(
        within("progress", seen.recv()).await,
        Some(Update::Progress {
            progress: Some(0.25),
            message: Some("a quarter".into())
        })
    );
    client
        .complete(&two, &Payload::Text("second done".into()))
        .await
        .unwrap();
    match within("short poll", waiting).await.unwrap().unwrap() {
        WaitOutcome::Finished(t) => {
            assert_eq!(t.status, "succeeded");
            assert_eq!(t.result, Some(json!("second done")));
        }
        other => panic!("expected the result, got {other:?}"),
    }
}

#[tokio::test]
async fn waiting_by_sse_and_websocket() {
    let server = Server::start(&[]);
    let client = connect(&server);

    for (outcome, how) in [
        ("succeeded", Wait::Sse),
        ("failed", Wait::Sse),
        ("succeeded", Wait::WebSocket),
    ] {
        let task = client
            .enqueue("sse", Payload::Json(json!({"want": outcome})))
            .await
            .unwrap();
        let (on_update, mut seen) = updates();
        let waiting = {
            let client = client.clone();
            let id = task.id.clone();
            tokio::spawn(async move { client.wait(&id, how, on_update).await })
        };
        assert_eq!(
            within("position", seen.recv()).await,
            Some(Update::Position(1))
        );
        let claimed = client
            .claim("sse", Duration::from_secs(5), Duration::from_secs(30))
            .await
            .unwrap()
            .unwrap();
        client
            .progress(&claimed, Some(0.5), Some("halfway"))
            .await
            .unwrap();
        assert_eq!(
            within("progress", seen.recv()).await,
            Some(Update::Progress {
                progress: Some(0.5),
                message: Some("halfway".into())
            })
        );
        if outcome == "succeeded" {
            client
                .complete(&claimed, &Payload::Json(json!({"ok": true})))
                .await
                .unwrap();
        } else {
            client
                .fail(&claimed, &Failure::new("broken", false))
                .await
                .unwrap();
        }
        match within("sse wait", waiting).await.unwrap().unwrap() {
            WaitOutcome::Finished(t) => {
                assert_eq!(t.id, task.id);
                assert_eq!(t.status, outcome);
                if outcome == "succeeded" {
                    assert_eq!(t.result, Some(json!({"ok": true})));
                } else {
                    assert_eq!(t.error.as_deref(), Some("broken"));
                }
            }
            other => panic!("expected the outcome, got {other:?}"),
        }
        assert_eq!(drained(&mut seen), [], "nothing after the end");

        // Waiting on a finished task ends at once, by every way.
        for how in [
            Wait::Sse,
            Wait::WebSocket,
            Wait::LongPoll {
                ttl: Duration::from_secs(5),
            },
            Wait::ShortPoll {
                interval: Duration::from_millis(20),
                max_attempts: 1,
            },
        ] {
            match within("finished", client.wait(&task.id, how, |_| {}))
                .await
                .unwrap()
            {
                WaitOutcome::Finished(t) => assert_eq!(t.status, outcome, "{how:?}"),
                other => panic!("{how:?}: {other:?}"),
            }
        }
    }
}

// ---------------------------------------------------------------------------
// 7. Workers.

#[tokio::test]
async fn a_worker_runs_tasks_three_at_a_time_and_stops_gracefully() {
    const TASKS: u64 = 10;
    const FAILING: u64 = 7;
    let server = Server::start(&[]);
    let client = connect(&server);
    let mut ids = Vec::new();
    for n in 0..TASKS {
        let t = client
            .enqueue("work", Payload::Json(json!({ "n": n })))
            .await
            .unwrap();
        ids.push(t.id);
    }

    // The three oldest meet at a barrier: they only pass if three run at once.
    let barrier = Arc::new(Barrier::new(3));
    let running = Arc::new(AtomicUsize::new(0));
    let most = Arc::new(AtomicUsize::new(0));
    // The slow task, sent later, holds on until released.
    let (started_tx, mut started) = mpsc::unbounded_channel::<()>();
    let release = Arc::new(tokio::sync::Notify::new());

    let handler = {
        let (barrier, running, most, release) = (
            Arc::clone(&barrier),
            Arc::clone(&running),
            Arc::clone(&most),
            Arc::clone(&release),
        );
        move |task: herald_client::Task, progress: herald_client::Progress| {
            let (barrier, running, most, release, started) = (
                Arc::clone(&barrier),
                Arc::clone(&running),
                Arc::clone(&most),
                Arc::clone(&release),
                started_tx.clone(),
            );
            async move {
                let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                most.fetch_max(now, Ordering::SeqCst);
                let n = task.payload["n"].as_u64();
                progress
                    .report(Some(0.5), Some("halfway"))
                    .await
                    .map_err(|e| Failure::new(e.to_string(), false))?;
                let outcome = match n {
                    Some(n) if n < 3 => {
                        barrier.wait().await;
                        Ok(Payload::Json(json!({ "double": n * 2 })))
                    }
                    Some(FAILING) => Err(Failure::new("boom", false)),
                    Some(n) => Ok(Payload::Json(json!({ "double": n * 2 }))),
                    None => {
                        let _ = started.send(());
                        release.notified().await;
                        Ok(Payload::Text("slow but done".into()))
                    }
                };
                running.fetch_sub(1, Ordering::SeqCst);
                outcome
            }
        }
    };
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let worker = Worker::new(client.clone(), "work")
        .concurrency(3)
        .claim_wait(Duration::from_secs(5));
    let run = tokio::spawn(worker.run(handler, async {
        let _ = stop_rx.await;
    }));

    for (n, id) in (0..TASKS).zip(&ids) {
        let how = Wait::LongPoll { ttl: PATIENCE };
        let WaitOutcome::Finished(t) = client.wait(id, how, |_| {}).await.unwrap() else {
            panic!("task {n} did not finish");
        };
        if n == FAILING {
            assert_eq!(t.status, "failed", "{t:?}");
            assert_eq!(t.error.as_deref(), Some("boom"));
            assert_eq!(t.attempts, 1, "not retried");
        } else {
            assert_eq!(t.status, "succeeded", "{t:?}");
            assert_eq!(t.result, Some(json!({ "double": n * 2 })));
        }
    }
    assert_eq!(most.load(Ordering::SeqCst), 3, "three at a time, no more");

    // Shut down while a handler is in flight: it still gets reported.
    let slow = client
        .enqueue("work", Payload::Text("slow".into()))
        .await
        .unwrap();
    within("slow handler starts", started.recv()).await.unwrap();
    let _ = stop_tx.send(());
    // Its progress was reported before shutdown, so it is running now.
    let seen = client.task(&slow.id).await.unwrap();
    assert_eq!(seen.status, "running");
    release.notify_one();
    within("run returns", run).await.unwrap().unwrap();
    let slow = client.task(&slow.id).await.unwrap();
    assert_eq!(slow.status, "succeeded");
    assert_eq!(slow.result, Some(json!("slow but done")));

    // Nothing claims any more.
    let after = client
        .enqueue("work", Payload::Text("after".into()))
        .await
        .unwrap();
    assert_eq!(client.task(&after.id).await.unwrap().status, "queued");
    let left = client
        .claim("work", Duration::from_secs(1), Duration::from_secs(5))
        .await
        .unwrap()
        .expect("the task after shutdown is still there to claim");
    assert_eq!(left.task.id, after.id);
}

// ---------------------------------------------------------------------------
// 8. Bad input.

#[tokio::test]
async fn a_bad_topic_is_an_error_and_ends_the_subscription() {
    let server = Server::start(&[]);
    let client = connect(&server);
    for transport in [
        Transport::Sse,
        Transport::WebSocket,
        Transport::Stream,
        Transport::LongPoll,
        POLL,
    ] {
        // From `now` the refusal comes while resolving `now`; from the start
        // it comes from the transport's own request.
        for (topics, cursor) in [
            (&["bad topic"][..], Cursor::Now),
            (&["bad topic"][..], Cursor::All),
            (&["fine", "bad topic"][..], Cursor::All),
        ] {
            let mut sub = client.subscribe(topics, cursor, transport);
            match within("refusal", sub.next()).await {
                Some(Err(Error::Api {
                    status: 400, code, ..
                })) => assert_eq!(code, "bad_topic", "{transport:?} {topics:?}"),
                other => panic!("{transport:?} {topics:?}: {other:?}"),
            }
            assert!(
                within("end", sub.next()).await.is_none(),
                "{transport:?} {topics:?}: the stream ends"
            );
        }
    }
    match client.publish("bad topic", "x").await {
        Err(Error::Api {
            status: 400, code, ..
        }) => assert_eq!(code, "bad_topic"),
        other => panic!("{other:?}"),
    }
    assert!(matches!(Client::new("ftp://x"), Err(Error::Url(_))));
    assert!(matches!(Client::new("localhost:7171"), Err(Error::Url(_))));
    assert!(matches!(Client::new("http://exa mple"), Err(Error::Url(_))));
}
