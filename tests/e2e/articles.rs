//! The seed articles' routes: the notification server and the counter demo.

use eventsource_stream::Eventsource;
use futures_util::StreamExt;

use crate::harness::{Server, client, within};

async fn notify(server: &Server, kind: &str, message: &str) {
    let r = client()
        .post(server.url("/api/notifications"))
        .json(&serde_json::json!({ "type": kind, "message": message }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), "ok");
}

#[tokio::test]
async fn notifications_stream_with_increasing_ids_and_resume() {
    let server = Server::start(&[]);
    notify(&server, "info", "before anyone listened").await;
    let r = client()
        .get(server.url("/api/notifications"))
        .header("accept", "text/event-stream")
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["content-type"], "text/event-stream");
    let mut events = r.bytes_stream().eventsource();
    notify(&server, "info", "hello").await;
    notify(&server, "warning", "disk at 91%").await;
    let a = within("first notification", events.next())
        .await
        .unwrap()
        .unwrap();
    let b = within("second notification", events.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (a.event.as_str(), a.data.as_str()),
        ("notification", "info: hello")
    );
    assert_eq!(
        (b.event.as_str(), b.data.as_str()),
        ("notification", "warning: disk at 91%")
    );
    assert_ne!(a.id, b.id);
    drop(events);

    notify(&server, "error", "missed while away").await;
    let r = client()
        .get(server.url("/api/notifications"))
        .header("last-event-id", &a.id)
        .send()
        .await
        .unwrap();
    let mut events = r.bytes_stream().eventsource();
    let again = within("resumed b", events.next()).await.unwrap().unwrap();
    let missed = within("resumed c", events.next()).await.unwrap().unwrap();
    assert_eq!(again.id, b.id);
    assert_eq!(missed.data, "error: missed while away");

    let bad = client()
        .post(server.url("/api/notifications"))
        .body("{\"type\":1}")
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
}

#[tokio::test]
async fn each_notification_carries_a_comment_line() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let server = Server::start(&[]);
    let mut tcp = tokio::net::TcpStream::connect(&server.addr).await.unwrap();
    tcp.write_all(b"GET /api/notifications HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&seen).contains(": herald") {
        let n = within("preamble", tcp.read(&mut buf)).await.unwrap();
        seen.extend_from_slice(&buf[..n]);
    }
    notify(&server, "info", "x").await;
    while !String::from_utf8_lossy(&seen).contains("data: info: x\n\n") {
        let n = within("notification", tcp.read(&mut buf)).await.unwrap();
        assert!(n > 0);
        seen.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&seen).replace("\r\n", "|");
    assert!(
        text.contains("event: notification\n")
            && text.contains(": notification\n")
            && text.contains("data: info: x\n\n"),
        "{text}"
    );
}

#[tokio::test]
async fn the_counter_demo_counts_once_a_second_and_stops_with_its_client() {
    let server = Server::start(&[]);
    let r = client().get(server.url("/sse")).send().await.unwrap();
    assert_eq!(r.headers()["content-type"], "text/event-stream");
    let mut events = r.bytes_stream().eventsource();
    let started = std::time::Instant::now();
    let one = within("tick 1", events.next()).await.unwrap().unwrap();
    let two = within("tick 2", events.next()).await.unwrap().unwrap();
    assert_eq!((one.data.as_str(), two.data.as_str()), ("1", "2"));
    // Two ticks of a one-second interval cannot arrive in under a second.
    assert!(started.elapsed() >= std::time::Duration::from_millis(1900));
}
