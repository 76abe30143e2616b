//! Retry backoff (SPEC § Tasks): a task queued again waits before it is
//! claimable, says until when in `available_at`, and a claim long poll that
//! waits meanwhile gets it as soon as the wait is over — on one node, after a
//! restart of the durable store, and across nodes sharing Redis.
//!
//! Times are compared with the server's own timestamps (`updated_at`,
//! `available_at`, `started_at`, all from one clock in ms), never with the
//! test's clock, so a slow machine cannot make these fail or pass wrongly.

use std::time::{Duration, Instant, SystemTime};

use reqwest::Response;
use serde_json::{Value, json};

use crate::cluster::Redis;
use crate::harness::{PATIENCE, Server, client, temp_dir, within};

/// A server timestamp (RFC 3339) as ms since 1970.
fn ms(v: &Value, field: &str) -> u64 {
    let text = v[field]
        .as_str()
        .unwrap_or_else(|| panic!("{field} in {v}"));
    let at = humantime::parse_rfc3339(text).unwrap_or_else(|e| panic!("{field} {text:?}: {e}"));
    let since = at.duration_since(SystemTime::UNIX_EPOCH).unwrap();
    u64::try_from(since.as_millis()).unwrap()
}

/// Enqueues `payload` into `queue` with `query` (e.g. `backoff=300ms`).
async fn enqueue(server: &Server, queue: &str, query: &str) -> Response {
    client()
        .post(server.url(&format!("/queues/{queue}/tasks?{query}")))
        .body("job")
        .send()
        .await
        .unwrap()
}

/// Enqueues, asserting `201`; the task's id.
async fn enqueued(server: &Server, queue: &str, query: &str) -> String {
    let r = enqueue(server, queue, query).await;
    assert_eq!(r.status(), 201, "enqueue ?{query}");
    let v: Value = r.json().await.unwrap();
    v["id"].as_str().unwrap().to_owned()
}

async fn try_claim(server: &Server, queue: &str, query: &str) -> Response {
    within(
        "claim",
        client()
            .post(server.url(&format!("/queues/{queue}/claim?{query}")))
            .send(),
    )
    .await
    .unwrap()
}

/// A claim that must get a task: `(task, lease)`.
async fn claim(server: &Server, queue: &str, query: &str) -> (Value, Value) {
    let r = try_claim(server, queue, query).await;
    assert_eq!(r.status(), 200, "claim {queue}?{query}");
    let v: Value = r.json().await.unwrap();
    (v["task"].clone(), v["lease"].clone())
}

/// Fails the claimed task with `retry`; the task JSON of the answer.
async fn fail_retry(server: &Server, id: &str, lease: &Value) -> Value {
    let r = client()
        .post(server.url(&format!("/tasks/{id}/fail")))
        .header("Herald-Lease", lease["token"].as_str().unwrap())
        .json(&json!({"error": "flaky", "retry": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    r.json().await.unwrap()
}

/// A claim long poll that must get task `id` again, no earlier than
/// `available`, and well before its `wait=30` runs out.
async fn claimed_once_available(server: &Server, queue: &str, id: &str, available: u64) -> Value {
    let asked = Instant::now();
    let (task, _) = claim(server, queue, "wait=30&lease=30").await;
    assert!(
        asked.elapsed() < Duration::from_secs(10),
        "woken, not timed out"
    );
    assert_eq!(
        (task["id"].as_str(), &task["attempts"]),
        (Some(id), &json!(2))
    );
    let started = ms(&task, "started_at");
    assert!(
        started >= available,
        "claimed at {started}, before {available}"
    );
    assert!(task.get("available_at").is_none(), "claimed: {task}");
    task
}

#[tokio::test]
async fn a_failed_attempt_waits_out_its_backoff_then_wakes_a_waiting_claim() {
    let server = Server::start(&[]);
    let id = enqueued(&server, "b", "backoff=300ms").await;
    let (_, lease) = claim(&server, "b", "wait=0").await;
    let queued = fail_retry(&server, &id, &lease).await;
    assert_eq!(queued["status"], "queued");
    let available = ms(&queued, "available_at");
    assert_eq!(available, ms(&queued, "updated_at") + 300, "{queued}");

    // A claim right now either finds nothing, or (on a machine slow enough
    // for the wait to be over already) gets the task no earlier.
    let r = try_claim(&server, "b", "wait=0").await;
    if r.status() == 200 {
        let v: Value = r.json().await.unwrap();
        assert!(ms(&v["task"], "started_at") >= available, "{v}");
        return;
    }
    assert_eq!(r.status(), 204);
    claimed_once_available(&server, "b", &id, available).await;
}

#[tokio::test]
async fn a_lease_that_runs_out_backs_off_too() {
    let server = Server::start(&[]);
    let id = enqueued(&server, "exp", "backoff=300ms").await;
    let (_, lease) = claim(&server, "exp", "wait=0&lease=0.2").await;
    // The lease runs out at `expires` (or a little later, when the reaper
    // sees it); the backoff counts from then.
    let expired = ms(&lease, "expires");
    claimed_once_available(&server, "exp", &id, expired + 300).await;
}

#[tokio::test]
async fn the_default_is_one_second_and_none_is_at_once() {
    let server = Server::start(&[]);
    let id = enqueued(&server, "d", "").await;
    let (_, lease) = claim(&server, "d", "wait=0").await;
    let queued = fail_retry(&server, &id, &lease).await;
    assert_eq!(
        ms(&queued, "available_at"),
        ms(&queued, "updated_at") + 1000
    );
    let r = client()
        .get(server.url(&format!("/tasks/{id}")))
        .send()
        .await;
    let shown: Value = r.unwrap().json().await.unwrap();
    assert_eq!(shown["available_at"], queued["available_at"], "{shown}");
    assert_eq!(shown["position"], 1, "a waiting task keeps its place");

    // The seed article's route enqueues with the default too.
    let r = client().post(server.url("/api/queue")).body("seed").send();
    let seed: Value = r.await.unwrap().json().await.unwrap();
    let (task, lease) = claim(&server, "default", "wait=0").await;
    assert_eq!(task["id"], seed["id"]);
    let queued = fail_retry(&server, task["id"].as_str().unwrap(), &lease).await;
    assert_eq!(
        ms(&queued, "available_at"),
        ms(&queued, "updated_at") + 1000
    );

    let id = enqueued(&server, "n", "backoff=none").await;
    let (_, lease) = claim(&server, "n", "wait=0").await;
    let queued = fail_retry(&server, &id, &lease).await;
    assert!(queued.get("available_at").is_none(), "{queued}");
    let (again, _) = claim(&server, "n", "wait=0").await;
    assert_eq!(again["id"].as_str(), Some(id.as_str()));
}

#[tokio::test]
async fn bad_backoff_values_are_400_json() {
    let server = Server::start(&[]);
    for bad in [
        "abc", "200", "", "0ms", "0s", "6m", "1h", "-1s", "1.5s", "2%20s", "None",
    ] {
        let r = enqueue(&server, "bad", &format!("backoff={bad}")).await;
        assert_eq!(r.status(), 400, "backoff={bad}");
        let json = r.headers()["content-type"].to_str().unwrap();
        assert!(json.starts_with("application/json"), "{json}");
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["error"]["code"], "bad_query", "backoff={bad}: {v}");
        assert!(
            v["error"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("backoff")),
            "{v}"
        );
    }
    for good in ["none", "1ms", "200ms", "2s", "1m", "5m", "300000ms"] {
        let r = enqueue(&server, "good", &format!("backoff={good}")).await;
        assert_eq!(r.status(), 201, "backoff={good}");
    }
    let r = try_claim(&server, "bad", "wait=0").await;
    assert_eq!(r.status(), 204, "nothing was enqueued by a refused call");
}

#[tokio::test]
async fn the_durable_store_keeps_the_backoff_and_the_wait_across_restarts() {
    let dir = temp_dir();
    let mut server = Server::start_in(dir.path(), &[]);
    let id = enqueued(&server, "keep", "backoff=200ms&max_attempts=3").await;
    server.restart();
    let (_, lease) = claim(&server, "keep", "wait=0").await;
    let queued = fail_retry(&server, &id, &lease).await;
    let available = ms(&queued, "available_at");
    assert_eq!(
        available,
        ms(&queued, "updated_at") + 200,
        "the base survived"
    );
    // Restarted while the task waits: the new process knows the wait and
    // wakes a claim when it is over.
    server.restart();
    claimed_once_available(&server, "keep", &id, available).await;
}

/// Two nodes on one Redis: a fail on node A delays the task; a claim
/// waiting on node B gets it once the wait is over, woken by B's own timer
/// (A has no claim waiting).
#[tokio::test]
async fn a_claim_waiting_on_another_node_gets_the_task_once_available() {
    let Some(redis) = Redis::start() else { return };
    let node = || Server::start_with(&redis.url(), &["--retry", "100ms"]);
    let (a, b) = (node(), node());
    let id = enqueued(&a, "shared", "backoff=300ms").await;
    let (_, lease) = claim(&a, "shared", "wait=0").await;
    let waiting = {
        let b_url = b.url("/queues/shared/claim?wait=30&lease=30");
        tokio::spawn(async move { client().post(b_url).send().await })
    };
    let queued = fail_retry(&a, &id, &lease).await;
    let available = ms(&queued, "available_at");
    let asked = Instant::now();
    let r = tokio::time::timeout(PATIENCE, waiting)
        .await
        .expect("the claim on B returns")
        .unwrap()
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(
        asked.elapsed() < Duration::from_secs(10),
        "woken, not timed out"
    );
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["task"]["id"].as_str(), Some(id.as_str()));
    assert_eq!(v["task"]["attempts"], 2);
    let started = ms(&v["task"], "started_at");
    assert!(
        started >= available,
        "claimed at {started}, before {available}"
    );
}
