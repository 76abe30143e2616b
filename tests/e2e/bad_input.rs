//! Bad input gets a JSON error with a fitting status, and the server stays
//! healthy with its data intact.

use serde_json::Value;

use crate::harness::{Server, client, publish};

async fn expect_error(r: reqwest::Response, status: u16, code: &str) {
    assert_eq!(r.status(), status);
    assert!(
        r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/json"),
        "errors are JSON"
    );
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], code, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty())
    );
}

#[tokio::test]
async fn every_kind_of_bad_input_is_refused_cleanly() {
    let server = Server::start(&["--max-body", "64"]);
    let c = client();
    let kept = publish(&server, "safe", "precious").await;

    let long = "x".repeat(129);
    for topic in ["bad%20topic", "a%2Fb", "caf%C3%A9", "%FF", long.as_str()] {
        let url = server.url(&format!("/topics/{topic}"));
        expect_error(
            c.post(&url).body("x").send().await.unwrap(),
            400,
            "bad_topic",
        )
        .await;
        expect_error(c.get(&url).send().await.unwrap(), 400, "bad_topic").await;
    }
    expect_error(
        c.get(server.url("/subscribe?topic=ok&topic=no%20way"))
            .send()
            .await
            .unwrap(),
        400,
        "bad_topic",
    )
    .await;
    expect_error(
        c.get(server.url("/subscribe")).send().await.unwrap(),
        400,
        "bad_query",
    )
    .await;
    expect_error(
        c.post(server.url("/topics/t?event=bad%20type"))
            .body("x")
            .send()
            .await
            .unwrap(),
        400,
        "bad_event_type",
    )
    .await;

    let latin1 = vec![b'c', b'a', b'f', 0xE9];
    expect_error(
        c.post(server.url("/topics/t"))
            .body(latin1.clone())
            .send()
            .await
            .unwrap(),
        415,
        "not_utf8",
    )
    .await;
    expect_error(
        c.post(server.url("/publish"))
            .body(latin1)
            .send()
            .await
            .unwrap(),
        415,
        "not_utf8",
    )
    .await;

    let big = "y".repeat(65);
    expect_error(
        c.post(server.url("/topics/t"))
            .body(big.clone())
            .send()
            .await
            .unwrap(),
        413,
        "too_large",
    )
    .await;
    // Without a Content-Length, the limit holds while streaming the body.
    let chunks = futures_util::stream::iter(vec![Ok::<_, std::io::Error>(big.clone())]);
    let streamed = c
        .post(server.url("/topics/t"))
        .body(reqwest::Body::wrap_stream(chunks))
        .send()
        .await
        .unwrap();
    expect_error(streamed, 413, "too_large").await;
    expect_error(
        c.post(server.url("/publish"))
            .body(big)
            .send()
            .await
            .unwrap(),
        413,
        "too_large",
    )
    .await;

    for q in ["limit=abc", "limit=0", "limit=100000", "limit=-1"] {
        let url = server.url(&format!("/topics/t?{q}"));
        expect_error(c.get(&url).send().await.unwrap(), 400, "bad_query").await;
    }
    for q in ["timeout=soon", "timeout=-1", "timeout=NaN"] {
        let url = server.url(&format!("/topics/t?transport=long-poll&{q}"));
        expect_error(c.get(&url).send().await.unwrap(), 400, "bad_query").await;
    }
    expect_error(
        c.get(server.url("/topics/t?transport=pigeon"))
            .send()
            .await
            .unwrap(),
        400,
        "bad_query",
    )
    .await;
    expect_error(
        c.post(server.url("/topics/t"))
            .header("Idempotency-Key", "")
            .body("x")
            .send()
            .await
            .unwrap(),
        400,
        "bad_request",
    )
    .await;
    expect_error(
        c.get(server.url("/nowhere")).send().await.unwrap(),
        404,
        "not_found",
    )
    .await;
    expect_error(
        c.delete(server.url("/topics/t")).send().await.unwrap(),
        405,
        "method_not_allowed",
    )
    .await;

    // A junk cursor is never an error: it is an unknown cursor (a gap).
    for cursor in ["junk", "1-", "%00", "a=b,c"] {
        let r = c
            .get(server.url(&format!("/topics/safe?last-event-id={cursor}")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "cursor {cursor:?}");
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["gap"], true);
        assert_eq!(v["events"][0]["data"], "precious");
    }

    // Still healthy, nothing lost, nothing extra.
    assert_eq!(
        c.get(server.url("/healthz")).send().await.unwrap().status(),
        200
    );
    let page: Value = c
        .get(server.url("/topics/safe"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(page["events"].as_array().unwrap().len(), 1);
    assert_eq!(page["events"][0]["id"], kept.as_str());
    assert_eq!(
        c.get(server.url("/topics/t"))
            .send()
            .await
            .unwrap()
            .status(),
        204
    );
}
