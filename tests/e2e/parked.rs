//! Long polls of one topic parked in the topic's lot, answered by the lot's
//! task for all of them at once: every parked poll gets the event, a poll
//! that loops with its cursor while events pour in misses none, and the
//! ways out of a lot (timeout, HTTP/1.0 close, an overflowing ring, a
//! client leaving) answer as a long poll always has.

use futures_util::future::join_all;
use serde_json::Value;

use crate::harness::{
    Raw, Server, client, publish, publish_numbered_batch, temp_dir, wait_for_metric, within,
};

const LONG_POLLS: &str = "herald_subscriptions{transport=\"long-poll\"}";

/// The topic's head as a cursor: a short poll from `now` answers `204` with
/// it in `Herald-Cursor`.
async fn head(server: &Server, topic: &str) -> String {
    let r = client()
        .get(server.url(&format!("/topics/{topic}?last-event-id=now")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    r.headers()["herald-cursor"].to_str().unwrap().to_owned()
}

/// One long poll from `cursor`: (status, `Herald-Cursor`, body).
async fn long_poll(
    server: &Server,
    topic: &str,
    cursor: &str,
    timeout: &str,
) -> (u16, String, Value) {
    let r = client()
        .get(server.url(&format!(
            "/topics/{topic}?transport=long-poll&timeout={timeout}"
        )))
        .header("last-event-id", cursor)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let next = r.headers()["herald-cursor"].to_str().unwrap().to_owned();
    let body = if status == 200 {
        r.json().await.unwrap()
    } else {
        Value::Null
    };
    (status, next, body)
}

/// A raw long poll of `topic` from `cursor` over `version` (`1.0` or
/// `1.1`), returned once the server counts `parked` long polls.
async fn park_raw(server: &Server, topic: &str, cursor: &str, version: &str, parked: f64) -> Raw {
    let raw = Raw::request(
        server,
        &format!("GET /topics/{topic}?transport=long-poll&timeout=60 HTTP/{version}\r\nHost: x\r\nLast-Event-ID: {cursor}\r\n\r\n"),
    )
    .await;
    wait_for_metric(server, LONG_POLLS, parked).await;
    raw
}

#[tokio::test]
async fn every_parked_poll_gets_the_one_publish() {
    let server = Server::start(&[]);
    let cursor = head(&server, "lot").await;
    let polls: Vec<_> = (0..40)
        .map(|_| long_poll(&server, "lot", &cursor, "60"))
        .collect();
    let (answers, id) = tokio::join!(
        within("the parked polls' answers", join_all(polls)),
        async {
            wait_for_metric(&server, LONG_POLLS, 40.0).await;
            publish(&server, "lot", "for everyone").await
        }
    );
    for (status, next, body) in answers {
        assert_eq!(status, 200);
        assert_eq!(next, id);
        assert_eq!(body["next"], id.as_str());
        assert_eq!(body["gap"], false);
        let events = body["events"].as_array().unwrap();
        assert_eq!(events.len(), 1, "{body}");
        assert_eq!(events[0]["id"], id.as_str());
        assert_eq!(events[0]["data"], "for everyone");
    }
    wait_for_metric(&server, LONG_POLLS, 0.0).await;
}

/// Pollers loop on their cursors while a publisher posts without pause, so
/// polls park, get answered and park again while events arrive in between.
async fn pollers_racing_a_publisher_miss_nothing(server: &Server) {
    const EVENTS: usize = 300;
    let cursor = head(server, "race").await;
    let pollers: Vec<_> = (0..6)
        .map(|_| {
            let (server_url, cursor) = (server.url(""), cursor.clone());
            tokio::spawn(async move {
                let c = client();
                let (mut cursor, mut seen) = (cursor, Vec::new());
                while seen.len() < EVENTS {
                    let r = c
                        .get(format!(
                            "{server_url}/topics/race?transport=long-poll&timeout=60"
                        ))
                        .header("last-event-id", &cursor)
                        .send()
                        .await
                        .unwrap();
                    assert_eq!(r.status(), 200);
                    let v: Value = r.json().await.unwrap();
                    assert_eq!(v["gap"], false);
                    for e in v["events"].as_array().unwrap() {
                        seen.push(e["data"].as_str().unwrap().to_owned());
                    }
                    cursor = v["next"].as_str().unwrap().to_owned();
                }
                seen
            })
        })
        .collect();
    wait_for_metric(server, LONG_POLLS, 6.0).await;
    let c = client();
    for i in 0..EVENTS {
        let r = c
            .post(server.url("/topics/race"))
            .body(i.to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
    }
    let want: Vec<String> = (0..EVENTS).map(|i| i.to_string()).collect();
    for poller in pollers {
        let seen = within("a poller's events", poller).await.unwrap();
        assert_eq!(seen, want);
    }
}

#[tokio::test]
async fn pollers_racing_a_publisher_miss_nothing_memory() {
    pollers_racing_a_publisher_miss_nothing(&Server::start(&[])).await;
}

#[tokio::test]
async fn pollers_racing_a_publisher_miss_nothing_file() {
    let dir = temp_dir();
    pollers_racing_a_publisher_miss_nothing(&Server::start_in(dir.path(), &[])).await;
}

#[tokio::test]
async fn a_parked_poll_times_out_with_its_cursor_and_the_next_finds_the_event() {
    let server = Server::start(&[]);
    let cursor = head(&server, "quiet").await;
    let (status, next, _) = long_poll(&server, "quiet", &cursor, "0.2").await;
    assert_eq!((status, next.as_str()), (204, cursor.as_str()));
    wait_for_metric(&server, LONG_POLLS, 0.0).await;
    // The lot closed with its last poll; the next one opens a new one.
    let id = publish(&server, "quiet", "later").await;
    let (status, next, body) = long_poll(&server, "quiet", &cursor, "60").await;
    assert_eq!((status, next.as_str()), (200, id.as_str()));
    assert_eq!(body["events"][0]["data"], "later");
}

#[tokio::test]
async fn a_parked_poll_over_http10_is_answered_then_closed() {
    let server = Server::start(&[]);
    let cursor = head(&server, "old").await;
    let mut raw = park_raw(&server, "old", &cursor, "1.0", 1.0).await;
    let id = publish(&server, "old", "once").await;
    let text = raw.read_to_close().await;
    assert!(text.starts_with("HTTP/1.0 200 OK\r\n"), "{text}");
    assert!(text.contains(&format!("herald-cursor: {id}\r\n")), "{text}");
    let body = text.split_once("\r\n\r\n").unwrap().1;
    let v: Value = serde_json::from_str(body).unwrap();
    assert_eq!(v["events"][0]["data"], "once");
}

#[tokio::test]
async fn a_parked_answer_leaves_the_connection_ready_for_the_next_request() {
    let server = Server::start(&[]);
    let cursor = head(&server, "keep").await;
    let mut raw = park_raw(&server, "keep", &cursor, "1.1", 1.0).await;
    publish(&server, "keep", "first").await;
    raw.until("\"gap\":false}").await;
    raw.send("GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await;
    let text = raw.until("{\"status\":\"ok\"}").await;
    assert_eq!(text.matches("HTTP/1.1 200 OK\r\n").count(), 2, "{text}");
    assert!(text.contains("\"data\":\"first\""), "{text}");
}

#[tokio::test]
async fn a_ring_that_overflows_sends_parked_polls_back_to_the_store() {
    // A ring of 4: a batch of 10 overflows it before the lot's task runs,
    // so the lot cannot know what it missed and its polls read the store.
    let server = Server::start(&["--subscriber-buffer", "4"]);
    let cursor = head(&server, "flood").await;
    let polls: Vec<_> = (0..3)
        .map(|_| long_poll(&server, "flood", &cursor, "60"))
        .collect();
    let (answers, want) = tokio::join!(within("the flooded polls", join_all(polls)), async {
        wait_for_metric(&server, LONG_POLLS, 3.0).await;
        publish_numbered_batch(&server, "flood", 10).await
    });
    for (status, _, body) in answers {
        assert_eq!(status, 200);
        assert_eq!(body["gap"], false);
        let got: Vec<String> = body["events"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["data"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(got, want);
    }
}

#[tokio::test]
async fn clients_leaving_a_lot_are_forgotten_and_the_topic_serves_on() {
    let server = Server::start(&[]);
    let cursor = head(&server, "gone").await;
    let mut raws = Vec::new();
    for parked in 1..=5 {
        raws.push(park_raw(&server, "gone", &cursor, "1.1", f64::from(parked)).await);
    }
    drop(raws);
    wait_for_metric(&server, LONG_POLLS, 0.0).await;
    let id = publish(&server, "gone", "after").await;
    let (status, next, _) = within(
        "a poll after the others left",
        long_poll(&server, "gone", &cursor, "60"),
    )
    .await;
    assert_eq!((status, next.as_str()), (200, id.as_str()));
}
