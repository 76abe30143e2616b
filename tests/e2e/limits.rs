//! The limits of SPEC's table: connections, subscriptions per client,
//! publish rate, topics per subscription and the size of a head — each a
//! JSON refusal with its status, counted in `herald_refused_total`, and
//! nothing stored by a refused request.

use std::time::{Duration, Instant};

use crate::harness::{PATIENCE, Raw, Server, client, metric, read_all, within};

const SSE_GET: &str = "Accept: text/event-stream\r\nHost: t\r\n\r\n";

/// An SSE stream on the direct path, its head read.
async fn stream(server: &Server, topic: &str) -> Raw {
    let mut raw = Raw::request(
        server,
        &format!("GET /topics/{topic} HTTP/1.1\r\n{SSE_GET}"),
    )
    .await;
    raw.until("\r\n\r\n").await;
    raw
}

/// Tries `attempt` until it returns `Some`, for at most [`PATIENCE`]: the
/// server notices a closed socket in its own time, and the next try is
/// the only way to see it has.
async fn eventually<T, F, Fut>(what: &str, mut attempt: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Some(v) = attempt().await {
            return v;
        }
        assert!(Instant::now() < deadline, "{what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn connections_beyond_the_limit_get_503_and_are_closed() {
    let server = Server::start(&["--max-connections", "3"]);
    let a = stream(&server, "c").await;
    let _b = stream(&server, "c").await;
    let _c = stream(&server, "c").await;
    let mut refused = Raw::request(&server, &format!("GET /topics/c HTTP/1.1\r\n{SSE_GET}")).await;
    let answer = refused.read_to_close().await;
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(answer.contains("retry-after: 5"), "{answer}");
    assert!(answer.contains("\"code\":\"unavailable\""), "{answer}");
    drop(a);
    // Its place is given back once the server sees it closed.
    let mut served = eventually("a place freed by a closed connection", || async {
        let mut raw = Raw::request(&server, &format!("GET /topics/c HTTP/1.1\r\n{SSE_GET}")).await;
        let head = raw.until("\r\n").await;
        head.starts_with("HTTP/1.1 200").then_some(raw)
    })
    .await;
    served.until("\r\n\r\n").await;
    drop(served);
    drop(_b);
    let refusals = eventually("the metrics once a place is free", || async {
        match client().get(server.url("/metrics")).send().await {
            Ok(r) if r.status() == 200 => Some(r.text().await.unwrap()),
            _ => None,
        }
    })
    .await;
    let counted = refusals
        .lines()
        .find_map(|l| l.strip_prefix("herald_refused_total{reason=\"connections\"} "))
        .expect("refusals counted");
    assert!(counted.trim().parse::<f64>().unwrap() >= 1.0);
}

#[tokio::test]
async fn subscriptions_beyond_the_limit_per_client_get_429_until_one_closes() {
    let server = Server::start(&["--max-subscriptions-per-client", "2"]);
    let a = stream(&server, "s").await;
    let _b = stream(&server, "s").await;
    // Over HTTP/2 (hyper) the same client counts the same.
    let h2 = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    for (what, r) in [
        (
            "SSE over HTTP/2",
            h2.get(server.url("/topics/s"))
                .header("accept", "text/event-stream")
                .send()
                .await
                .unwrap(),
        ),
        (
            "a long poll",
            client()
                .get(server.url("/topics/s?transport=long-poll&timeout=5"))
                .send()
                .await
                .unwrap(),
        ),
    ] {
        assert_eq!(r.status(), 429, "{what}");
        assert!(r.headers().contains_key("retry-after"), "{what}");
        let v: serde_json::Value = r.json().await.unwrap();
        assert_eq!(v["error"]["code"], "too_many_requests", "{what}");
    }
    // A short poll holds nothing: it is not a subscription.
    let r = client().get(server.url("/topics/s")).send().await.unwrap();
    assert!(r.status() == 200 || r.status() == 204, "{}", r.status());
    assert!(metric(&server, "herald_refused_total{reason=\"subscriptions\"}").await >= 2.0);
    drop(a);
    eventually("a place freed by a closed stream", || async {
        let r = h2
            .get(server.url("/topics/s"))
            .header("accept", "text/event-stream")
            .send()
            .await
            .unwrap();
        (r.status() == 200).then_some(())
    })
    .await;
}

#[tokio::test]
async fn publishing_faster_than_the_rate_gets_429_and_stores_nothing() {
    let server = Server::start(&["--publish-rate", "5"]);
    let started = Instant::now();
    let (mut stored, mut refused) = (0usize, 0usize);
    for i in 0..30 {
        let r = client()
            .post(server.url("/topics/rated"))
            .body(format!("e{i}"))
            .send()
            .await
            .unwrap();
        match r.status().as_u16() {
            201 => stored += 1,
            429 => {
                refused += 1;
                let wait: u64 = r.headers()["retry-after"]
                    .to_str()
                    .unwrap()
                    .parse()
                    .unwrap();
                assert!(wait >= 1);
                let v: serde_json::Value = r.json().await.unwrap();
                assert_eq!(v["error"]["code"], "too_many_requests");
            }
            other => panic!("publish answered {other}"),
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    // A burst of twice the rate, then the rate.
    let allowed = 10.0 + 5.0 * elapsed;
    assert!(stored >= 10, "the burst is allowed: {stored}");
    assert!(
        (stored as f64) <= allowed.ceil(),
        "{stored} stored in {elapsed:.2} s"
    );
    assert!(refused > 0);
    assert_eq!(
        read_all(&server, "rated").await.len(),
        stored,
        "refused ones stored nothing"
    );
    // A batch costs one per line.
    let lines: String = (0..20)
        .map(|i| format!("{{\"topic\":\"rated\",\"data\":\"b{i}\"}}\n"))
        .collect();
    let r = client()
        .post(server.url("/publish"))
        .body(lines)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429, "twenty lines at once exceed the burst");
    assert!(metric(&server, "herald_refused_total{reason=\"publish_rate\"}").await >= 2.0);
}

#[tokio::test]
async fn topics_per_subscription_and_head_size_are_bounded() {
    let server = Server::start(&["--max-topics-per-subscription", "2"]);
    let r = within(
        "three topics",
        client()
            .get(server.url("/subscribe?topic=a&topic=b&topic=c"))
            .header("accept", "text/event-stream")
            .send(),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 400);
    let r = client()
        .get(server.url("/subscribe?topic=a&topic=b"))
        .send()
        .await
        .unwrap();
    assert!(r.status() == 200 || r.status() == 204);

    // A head over 16 KiB on a connection hyper holds (a publish came
    // first) is refused 431 there too.
    let mut raw = Raw::request(
        &server,
        "POST /topics/h HTTP/1.1\r\nHost: t\r\nContent-Length: 1\r\n\r\nx",
    )
    .await;
    raw.until("201").await;
    let big = "a".repeat(20 * 1024);
    raw.send(&format!(
        "GET /topics/h HTTP/1.1\r\nHost: t\r\nX-Big: {big}\r\n\r\n"
    ))
    .await;
    let answer = raw.until("431").await;
    assert!(answer.contains("HTTP/1.1 431"), "{answer}");
}
