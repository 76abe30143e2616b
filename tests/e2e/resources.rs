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
