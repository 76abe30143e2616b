//! Resources end with their clients; slow subscribers are cut off alone.

use eventsource_stream::Eventsource;
use futures_util::StreamExt;

use crate::harness::{Server, client, metric, publish, wait_for_metric, within};

const SSE_GAUGE: &str = "herald_subscriptions{transport=\"sse\"}";

#[tokio::test]
async fn a_thousand_sse_subscribers_leave_no_trace() {
    let server = Server::start(&[]);
    let baseline = metric(&server, SSE_GAUGE).await;
    let c = client();
    let mut streams = Vec::new();
    for _ in 0..1000 {
        let r = c
            .get(server.url("/topics/crowd"))
            .header("accept", "text/event-stream")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        streams.push(r.bytes_stream().eventsource());
    }
    wait_for_metric(&server, SSE_GAUGE, baseline + 1000.0).await;
    let id = publish(&server, "crowd", "to everyone").await;
    for s in &mut streams {
        let e = within("crowd event", s.next()).await.unwrap().unwrap();
        assert_eq!(e.id, id);
    }
    let delivered = metric(&server, "herald_events_delivered_total").await;
    assert!(delivered >= 1000.0, "{delivered}");
    drop(streams);
    drop(c);
    wait_for_metric(&server, SSE_GAUGE, baseline).await;
}

/// A subscriber that stops reading is cut off once it falls a whole buffer
/// behind; it resumes with its cursor and misses nothing, while a reader
/// that keeps up on the same topic is never interrupted.
#[tokio::test]
async fn a_slow_subscriber_is_cut_off_alone_and_resumes_exactly() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    const EVENTS: usize = 400;
    let server = Server::start(&["--subscriber-buffer", "64", "--retention-events", "10000"]);
    let payload = "x".repeat(32 * 1024);

    // The slow one: a tiny receive buffer, and it does not read for now.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut slow = socket.connect(server.addr.parse().unwrap()).await.unwrap();
    slow.write_all(b"GET /topics/busy HTTP/1.1\r\nHost: x\r\nConnection: close\r\nAccept: text/event-stream\r\n\r\n")
        .await
        .unwrap();

    // The fast one reads everything as it comes.
    let fast = client()
        .get(server.url("/topics/busy"))
        .header("accept", "text/event-stream")
        .send()
        .await
        .unwrap();
    wait_for_metric(&server, SSE_GAUGE, 2.0).await;
    let (seen_tx, mut seen_rx) = tokio::sync::mpsc::unbounded_channel();
    let fast = tokio::spawn(async move {
        let mut events = fast.bytes_stream().eventsource();
        while let Some(Ok(e)) = events.next().await {
            if seen_tx.send(e.id).is_err() {
                return;
            }
        }
    });

    // Publish one at a time; the fast reader confirms each before the next,
    // so it is never behind, while the slow one falls further and further.
    let mut published = Vec::new();
    for i in 0..EVENTS {
        let id = publish(&server, "busy", &format!("{i}:{payload}")).await;
        let seen = within("fast reader keeps up", seen_rx.recv()).await;
        assert_eq!(
            seen.as_deref(),
            Some(id.as_str()),
            "the fast reader is never cut off"
        );
        published.push(id);
    }
    fast.abort();

    // Now the slow one reads: what it has, then the end of its stream.
    let mut raw = Vec::new();
    within("slow stream ends", slow.read_to_end(&mut raw))
        .await
        .unwrap();
    let body = String::from_utf8_lossy(&raw);
    assert!(body.ends_with("0\r\n\r\n"), "the stream was ended cleanly");
    let mut decoder = herald_protocol::sse::Decoder::new();
    let mut got: Vec<String> = Vec::new();
    let after_head = &raw[raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4..];
    for frame in decoder.feed(&dechunk(after_head)) {
        if let herald_protocol::sse::Frame::Event { id: Some(id), .. } = frame {
            got.push(id);
        }
    }
    assert!(
        got.len() < EVENTS,
        "the slow reader was cut off before the end"
    );
    assert_eq!(
        got,
        published[..got.len()],
        "what it got is a prefix, in order"
    );
    assert!(metric(&server, "herald_subscribers_dropped_total").await >= 1.0);

    // It resumes from its last id and gets exactly the rest.
    let r = client()
        .get(server.url("/topics/busy"))
        .header("accept", "text/event-stream")
        .header(
            "last-event-id",
            got.last().cloned().unwrap_or_else(|| "all".into()),
        )
        .send()
        .await
        .unwrap();
    let mut events = r.bytes_stream().eventsource();
    while got.len() < EVENTS {
        got.push(within("resumed", events.next()).await.unwrap().unwrap().id);
    }
    assert_eq!(got, published);
}

/// Removes HTTP/1.1 chunk framing from raw bytes.
fn dechunk(mut rest: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(eol) = rest.windows(2).position(|w| w == b"\r\n") {
        let size = std::str::from_utf8(&rest[..eol])
            .ok()
            .and_then(|s| usize::from_str_radix(s.trim(), 16).ok());
        let Some(n) = size else { break };
        rest = &rest[eol + 2..];
        if n == 0 || rest.len() < n {
            break;
        }
        out.extend_from_slice(&rest[..n]);
        rest = rest.get(n + 2..).unwrap_or_default();
    }
    out
}

/// A SIGTERM sent the moment the server says it listens is a clean stop:
/// the handler is installed before that line is printed.
#[tokio::test]
async fn a_sigterm_right_after_the_listening_line_is_a_clean_stop() {
    for _ in 0..3 {
        let mut server = Server::start(&[]);
        server.terminate();
        let status = server.wait();
        assert!(status.success(), "herald ended with {status:?}");
    }
}
