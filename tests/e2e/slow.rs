//! A client that stops reading is cut off once its socket has taken
//! nothing for the write timeout — long before it falls a whole
//! subscriber buffer behind — on both HTTP stacks, while a reader of the
//! same topic that keeps up gets every event.

use eventsource_stream::Eventsource;
use futures_util::StreamExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

use crate::harness::{Server, client, metric, wait_for_metric, within};

const SSE: &str = "herald_subscriptions{transport=\"sse\"}";
const DROPPED: &str = "herald_subscribers_dropped_total";

/// What Linux may buffer for a loopback connection whose reader stopped:
/// the sender's socket up to `tcp_wmem`'s maximum, the receiver's (kept
/// small here) besides.
fn send_buffer_max() -> usize {
    std::fs::read_to_string("/proc/sys/net/ipv4/tcp_wmem")
        .ok()
        .and_then(|s| s.split_whitespace().nth(2)?.parse().ok())
        .unwrap_or(4 << 20)
}

/// An SSE subscriber with a 4 KiB receive buffer that reads the head and
/// preamble, then nothing more.
async fn stuck(server: &Server, request: &str) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut tcp = socket.connect(server.addr.parse().unwrap()).await.unwrap();
    tcp.write_all(request.as_bytes()).await.unwrap();
    let mut seen = Vec::new();
    while !String::from_utf8_lossy(&seen).contains(": herald\n\n") {
        let mut chunk = [0u8; 512];
        let n = within("the preamble", tcp.read(&mut chunk)).await.unwrap();
        assert!(n > 0, "closed before the preamble");
        seen.extend_from_slice(&chunk[..n]);
    }
    tcp
}

async fn cut_off(request: &str, via_direct: bool) {
    // Long enough that the fast reader, on a loaded machine, is not cut.
    let server = Server::start(&["--write-timeout", "2s"]);
    let _stuck = stuck(&server, request).await;
    let fast = client()
        .get(server.url("/topics/flood"))
        .header("accept", "text/event-stream")
        .send()
        .await
        .unwrap();
    wait_for_metric(&server, SSE, 2.0).await;
    // Short lines keep an SSE parser's work linear; far fewer events than
    // the subscriber buffer (1,024), far more bytes than the sockets hold.
    let payload = format!("{}\n", "x".repeat(4095)).repeat(16);
    let events = send_buffer_max() / payload.len() + 32;
    let reader = tokio::spawn(async move {
        let mut stream = fast.bytes_stream().eventsource();
        let mut seen = Vec::new();
        while seen.len() < events {
            let e = within("an event", stream.next()).await.unwrap().unwrap();
            seen.push(e.data.split(':').next().unwrap_or_default().to_owned());
        }
        seen
    });
    let c = client();
    for i in 0..events {
        let r = c
            .post(server.url("/topics/flood"))
            .body(format!("{i}:{payload}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
    }
    let seen = within("the fast reader", reader).await.unwrap();
    let want: Vec<String> = (0..events).map(|i| i.to_string()).collect();
    assert_eq!(seen, want, "the reader that keeps up gets everything");
    // The stuck one is gone; the direct path counts it as cut off.
    wait_for_metric(&server, SSE, 0.0).await;
    if via_direct {
        assert_eq!(metric(&server, DROPPED).await, 1.0);
    }
}

#[tokio::test]
async fn a_client_that_stops_reading_is_cut_off_on_the_direct_path() {
    let request = "GET /topics/flood HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n";
    cut_off(request, true).await;
}

#[tokio::test]
async fn a_client_that_stops_reading_is_cut_off_through_hyper() {
    // HTTP/1.0 with keep-alive is hyper's to serve.
    let request =
        "GET /topics/flood HTTP/1.0\r\nConnection: keep-alive\r\nAccept: text/event-stream\r\n\r\n";
    cut_off(request, false).await;
}
