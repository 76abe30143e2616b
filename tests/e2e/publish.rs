//! Publishing: single, batch, idempotency, and the answers SPEC lists.

use serde_json::Value;

use crate::harness::{Server, client};

#[tokio::test]
async fn single_publish_answers_201_with_the_receipt() {
    let server = Server::start(&[]);
    let r = client()
        .post(server.url("/topics/orders?event=created"))
        .body("{\"n\":1}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    assert!(r.headers().get("idempotent-replayed").is_none());
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["topic"], "orders");
    assert_eq!(v["event"], "created");
    assert!(v["id"].as_str().is_some_and(|s| !s.is_empty()));
    let time = v["time"].as_str().unwrap();
    assert!(
        time.ends_with('Z') && time.len() == "2026-01-01T00:00:00.000Z".len(),
        "{time}"
    );

    let page: Value = client()
        .get(server.url("/topics/orders"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(page["events"][0]["data"], "{\"n\":1}");
    assert_eq!(page["events"][0]["event"], "created");
    assert_eq!(page["events"][0]["id"], v["id"]);
}

#[tokio::test]
async fn an_idempotent_retry_returns_the_first_answer_and_publishes_nothing() {
    let server = Server::start(&[]);
    let send = |body: &'static str, key: &'static str, topic: &'static str| {
        client()
            .post(server.url(&format!("/topics/{topic}")))
            .header("Idempotency-Key", key)
            .body(body)
            .send()
    };
    let first = send("one", "k-1", "t").await.unwrap();
    assert_eq!(first.status(), 201);
    let first: Value = first.json().await.unwrap();
    let again = send("two", "k-1", "t").await.unwrap();
    assert_eq!(again.status(), 201);
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    let again: Value = again.json().await.unwrap();
    assert_eq!(first, again);
    // Another topic, same key: a different event.
    let other: Value = send("three", "k-1", "u")
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_ne!(other["id"], Value::Null);
    assert_eq!(other["topic"], "u");

    let page: Value = client()
        .get(server.url("/topics/t"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let events = page["events"].as_array().unwrap();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["data"], "one");
}

#[tokio::test]
async fn a_batch_is_stored_in_order_all_or_nothing() {
    let server = Server::start(&[]);
    let body = "{\"topic\":\"a\",\"data\":\"1\"}\n{\"topic\":\"b\",\"event\":\"x\",\"data\":\"2\"}\r\n\n{\"topic\":\"a\",\"data\":\"3\"}\n";
    let r = client()
        .post(server.url("/publish"))
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let v: Value = r.json().await.unwrap();
    let events = v["events"].as_array().unwrap();
    let topics: Vec<_> = events
        .iter()
        .map(|e| e["topic"].as_str().unwrap())
        .collect();
    assert_eq!(topics, ["a", "b", "a"]);
    assert_eq!(events[1]["event"], "x");
    assert_ne!(events[0]["id"], events[2]["id"]);

    // One bad line: nothing of the batch is stored.
    let bad = "{\"topic\":\"c\",\"data\":\"ok\"}\n{\"topic\":\"bad topic\",\"data\":\"x\"}\n";
    let r = client()
        .post(server.url("/publish"))
        .body(bad)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let err: Value = r.json().await.unwrap();
    assert_eq!(err["error"]["code"], "bad_batch");
    assert!(err["error"]["message"].as_str().unwrap().contains("line 2"));
    let c = client().get(server.url("/topics/c")).send().await.unwrap();
    assert_eq!(c.status(), 204, "nothing of a refused batch is stored");

    for junk in [
        "not json\n",
        "{\"topic\":\"a\"}\n",
        "{\"topic\":\"a\",\"data\":1}\n",
        "\n\n",
    ] {
        let r = client()
            .post(server.url("/publish"))
            .body(junk)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "{junk:?}");
        let err: Value = r.json().await.unwrap();
        assert!(err["error"]["code"].is_string());
    }
}

#[tokio::test]
async fn a_retried_batch_with_a_key_publishes_nothing_twice() {
    let server = Server::start(&[]);
    let body = "{\"topic\":\"a\",\"data\":\"1\"}\n{\"topic\":\"a\",\"data\":\"2\"}\n";
    let send = || {
        client()
            .post(server.url("/publish"))
            .header("Idempotency-Key", "batch-7")
            .body(body)
            .send()
    };
    let first: Value = send().await.unwrap().json().await.unwrap();
    let again = send().await.unwrap();
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    assert_eq!(first, again.json::<Value>().await.unwrap());
    let page: Value = client()
        .get(server.url("/topics/a"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(page["events"].as_array().unwrap().len(), 2);
}
