//! Fenced workers (no authorization needed): progress, complete and fail
//! carry the claim's `Herald-Lease`. Without it, or with the token of an
//! earlier claim whose lease ran out before the task was claimed again,
//! the answer is `409` and the task is left exactly as it was; with the
//! current claim's token, `200`. On the memory store and the default
//! (embedded, durable) one.

use std::time::Duration;

use serde_json::{Value, json};

use super::Answer;
use crate::harness::{Server, client, temp_dir, within};

#[derive(Clone, Copy, Debug)]
enum Store {
    Memory,
    File,
}

/// `POST path` with `body` and an optional `Herald-Lease`.
async fn post(server: &Server, path: &str, lease: Option<&str>, body: &str) -> Answer {
    let mut r = client().post(server.url(path)).body(body.to_owned());
    if let Some(lease) = lease {
        r = r.header("herald-lease", lease);
    }
    Answer::of(within(path, r.send()).await.expect("an answer")).await
}

/// The task as `GET /tasks/{id}` shows it.
async fn task(server: &Server, id: &str) -> Value {
    let r = client()
        .get(server.url(&format!("/tasks/{id}")))
        .send()
        .await
        .expect("GET task");
    Answer::of(r).await.json()
}

/// A claim of `queue` that must get `id`: its lease token.
async fn claim(server: &Server, queue: &str, query: &str, id: &str) -> String {
    let a = post(server, &format!("/queues/{queue}/claim?{query}"), None, "").await;
    assert_eq!(a.status, 200, "claim {queue}?{query}: {}", a.body);
    let v = a.json();
    assert_eq!(v["task"]["id"], id);
    assert_eq!(v["task"]["status"], "running");
    v["lease"]["token"]
        .as_str()
        .expect("a lease token")
        .to_owned()
}

async fn enqueue(server: &Server, queue: &str) -> String {
    // No backoff: the task queued again is claimable at once.
    let a = post(
        server,
        &format!("/queues/{queue}/tasks?backoff=none"),
        None,
        "job",
    )
    .await;
    assert_eq!(a.status, 201, "{}", a.body);
    a.json()["id"].as_str().expect("id").to_owned()
}

/// The three worker calls on task `id`: (name, path, body).
fn calls(id: &str) -> [(&'static str, String, &'static str); 3] {
    [
        (
            "progress",
            format!("/tasks/{id}/progress"),
            r#"{"progress":0.5,"message":"half"}"#,
        ),
        ("complete", format!("/tasks/{id}/complete"), "done"),
        (
            "fail",
            format!("/tasks/{id}/fail"),
            r#"{"error":"broken","retry":false}"#,
        ),
    ]
}

/// Each worker call with `lease` is refused `409` and changes nothing.
async fn all_refused(server: &Server, id: &str, lease: Option<&str>, what: &str) {
    let before = task(server, id).await;
    for (name, path, body) in calls(id) {
        let a = post(server, &path, lease, body).await;
        assert_eq!(a.status, 409, "{what}: {name}: {}", a.body);
        assert_eq!(a.json()["error"]["code"], "conflict", "{what}: {name}");
        assert_eq!(
            task(server, id).await,
            before,
            "{what}: {name} changed nothing"
        );
    }
}

async fn fenced(store: Store) {
    let dir = temp_dir();
    let server = match store {
        Store::Memory => Server::start(&[]),
        Store::File => Server::start_in(dir.path(), &[]),
    };
    let id = enqueue(&server, "fence").await;
    let first = claim(&server, "fence", "wait=0&lease=0.2", &id).await;

    // The lease runs out; the reaper queues the task again.
    within("the task queued again", async {
        loop {
            let t = task(&server, &id).await;
            if t["status"] == "queued" {
                assert_eq!(t["attempts"], 1, "{t}");
                return;
            }
            assert_eq!(t["status"], "running", "{t}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    let current = claim(&server, "fence", "wait=10&lease=600", &id).await;
    assert_ne!(current, first, "a new claim, a new token");

    all_refused(
        &server,
        &id,
        None,
        &format!("{store:?} without Herald-Lease"),
    )
    .await;
    all_refused(
        &server,
        &id,
        Some(&first),
        &format!("{store:?} an earlier claim's token"),
    )
    .await;

    let a = post(&server, &calls(&id)[0].1, Some(&current), calls(&id)[0].2).await;
    assert_eq!(a.status, 200, "{store:?} progress: {}", a.body);
    assert_eq!(a.json()["progress"], 0.5);
    let a = post(&server, &calls(&id)[1].1, Some(&current), calls(&id)[1].2).await;
    assert_eq!(a.status, 200, "{store:?} complete: {}", a.body);
    assert_eq!(
        (&a.json()["status"], &a.json()["result"]),
        (&json!("succeeded"), &json!("done"))
    );

    // fail, on a task of its own.
    let other = enqueue(&server, "fence").await;
    let lease = claim(&server, "fence", "wait=0&lease=600", &other).await;
    all_refused(&server, &other, None, &format!("{store:?} fail, no lease")).await;
    let a = post(
        &server,
        &calls(&other)[2].1,
        Some(&lease),
        calls(&other)[2].2,
    )
    .await;
    assert_eq!(a.status, 200, "{store:?} fail: {}", a.body);
    assert_eq!(a.json()["status"], "failed");
}

#[tokio::test]
async fn worker_calls_need_the_current_lease_memory() {
    fenced(Store::Memory).await;
}

#[tokio::test]
async fn worker_calls_need_the_current_lease_file() {
    fenced(Store::File).await;
}
