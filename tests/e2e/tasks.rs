//! Tasks end to end: clients enqueue and wait (short poll, long poll, SSE,
//! WebSocket, NDJSON), workers claim under a lease, report, finish or die,
//! and the embedded store keeps every task across a restart. Also the seed
//! article's `/api/queue` and the task metrics.
//!
//! Every wait is bounded by [`within`]; the only sleeps are a short poll's
//! interval and, in the restart test, letting a lease's wall-clock deadline
//! pass while the server is down — that is the behaviour under test.

use std::time::Duration;

use eventsource_stream::{Event, EventStreamError, Eventsource};
use futures_util::StreamExt;
use futures_util::stream::{BoxStream, FuturesUnordered};
use reqwest::{Method, Response};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

use crate::harness::{Server, client, metric, temp_dir, wait_for_metric, within};

/// Every field of a task as clients see it.
const TASK_FIELDS: [&str; 16] = [
    "id",
    "queue",
    "status",
    "payload",
    "progress",
    "message",
    "position",
    "result",
    "error",
    "attempts",
    "max_attempts",
    "created_at",
    "updated_at",
    "started_at",
    "finished_at",
    "lease_expires_at",
];

/// A third-party SSE parser over a response body.
type Sse = BoxStream<'static, Result<Event, EventStreamError<reqwest::Error>>>;

/// A claimed task and the lease token that proves it.
struct Claimed {
    task: Value,
    token: String,
    expires: String,
}

impl Claimed {
    fn id(&self) -> String {
        id_of(&self.task)
    }
}

fn id_of(task: &Value) -> String {
    task["id"].as_str().expect("task id").to_owned()
}

/// Sends `method path` with an optional lease token and JSON body.
async fn call(
    server: &Server,
    method: Method,
    path: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> Response {
    let mut req = client().request(method, server.url(path));
    if let Some(token) = token {
        req = req.header("Herald-Lease", token);
    }
    if let Some(body) = body {
        req = req.json(&body);
    }
    req.send().await.unwrap()
}

async fn get(server: &Server, path: &str) -> Response {
    call(server, Method::GET, path, None, None).await
}

/// Status and JSON body of an answer.
async fn answer(r: Response) -> (u16, Value) {
    let status = r.status().as_u16();
    let v = r.json().await.unwrap();
    (status, v)
}

/// Enqueues a text payload; asserts `201` and returns the task. With
/// `backoff=none`: these tests are not about the retry backoff (backoff.rs
/// is), and a task queued again is claimable at once.
async fn enqueue(server: &Server, queue: &str, payload: &str) -> Value {
    let r = client()
        .post(server.url(&format!("/queues/{queue}/tasks?backoff=none")))
        .body(payload.to_owned())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201, "enqueue into {queue}");
    r.json().await.unwrap()
}

/// One claim of `queue` with `query` (e.g. `wait=0&lease=30`).
async fn try_claim(server: &Server, queue: &str, query: &str) -> Response {
    call(
        server,
        Method::POST,
        &format!("/queues/{queue}/claim?{query}"),
        None,
        None,
    )
    .await
}

/// A claim that must get a task.
async fn claim(server: &Server, queue: &str, query: &str) -> Claimed {
    let r = within("claim", try_claim(server, queue, query)).await;
    assert_eq!(r.status(), 200, "claim {queue}?{query}");
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["task"]["status"], "running");
    Claimed {
        token: v["lease"]["token"]
            .as_str()
            .expect("lease token")
            .to_owned(),
        expires: v["lease"]["expires"]
            .as_str()
            .expect("lease expiry")
            .to_owned(),
        task: v["task"].clone(),
    }
}

async fn progress(
    server: &Server,
    id: &str,
    token: Option<&str>,
    progress: Option<f64>,
    message: Option<&str>,
) -> Response {
    let body = json!({ "progress": progress, "message": message });
    call(
        server,
        Method::POST,
        &format!("/tasks/{id}/progress"),
        token,
        Some(body),
    )
    .await
}

/// Completes with a JSON result.
async fn complete(server: &Server, id: &str, token: Option<&str>, result: Value) -> Response {
    call(
        server,
        Method::POST,
        &format!("/tasks/{id}/complete"),
        token,
        Some(result),
    )
    .await
}

async fn fail(
    server: &Server,
    id: &str,
    token: Option<&str>,
    error: &str,
    retry: bool,
) -> Response {
    let body = json!({ "error": error, "retry": retry });
    call(
        server,
        Method::POST,
        &format!("/tasks/{id}/fail"),
        token,
        Some(body),
    )
    .await
}

async fn cancel(server: &Server, id: &str) -> Response {
    call(server, Method::DELETE, &format!("/tasks/{id}"), None, None).await
}

/// Asserts a JSON error answer with `status` and `code`.
async fn expect_error(r: Response, status: u16, code: &str) {
    let url = r.url().to_string();
    assert_eq!(r.status(), status, "{url}");
    assert!(
        r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/json"),
        "errors are JSON: {url}"
    );
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], code, "{url}: {v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{url}: {v}"
    );
}

/// Opens an SSE stream at `path`; asserts `200 text/event-stream`.
async fn sse(server: &Server, path: &str, last_event_id: Option<&str>) -> Sse {
    let r = sse_request(server, path, last_event_id).await;
    assert_eq!(r.status(), 200, "SSE {path}");
    assert_eq!(r.headers()["content-type"], "text/event-stream");
    r.bytes_stream().eventsource().boxed()
}

async fn sse_request(server: &Server, path: &str, last_event_id: Option<&str>) -> Response {
    let mut req = client()
        .get(server.url(path))
        .header("accept", "text/event-stream");
    if let Some(id) = last_event_id {
        req = req.header("last-event-id", id);
    }
    req.send().await.unwrap()
}

async fn next_event(events: &mut Sse, what: &str) -> Event {
    within(what, events.next())
        .await
        .unwrap_or_else(|| panic!("{what}: the stream ended"))
        .unwrap()
}

/// The stream ends cleanly, with nothing more on it.
async fn assert_ended(events: &mut Sse, what: &str) {
    if let Some(item) = within(what, events.next()).await {
        panic!("{what}: expected the end, got {item:?}");
    }
}

fn data_json(e: &Event) -> Value {
    serde_json::from_str(&e.data).unwrap_or_else(|err| panic!("{e:?}: {err}"))
}

/// The next text frame of a WebSocket as JSON, or the close code.
async fn ws_next<S>(ws: &mut S) -> Result<Value, Option<u16>>
where
    S: futures_util::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin,
{
    loop {
        match within("ws frame", ws.next()).await {
            Some(Ok(Message::Text(t))) => return Ok(serde_json::from_str(&t).unwrap()),
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
            Some(Ok(Message::Close(frame))) => return Err(frame.map(|f| u16::from(f.code))),
            other => panic!("unexpected websocket item {other:?}"),
        }
    }
}

// ---------------------------------------------------------------------------
// The task table, row by row.

#[tokio::test]
async fn enqueue_answers_201_with_the_task_and_replays_idempotent_retries() {
    let server = Server::start(&[]);
    let text = enqueue(&server, "q", "{\"not\": \"json\"}").await;
    for field in TASK_FIELDS {
        assert!(text.get(field).is_some(), "field {field} in {text}");
    }
    assert_eq!(text["queue"], "q");
    assert_eq!(text["status"], "queued");
    assert_eq!(
        text["payload"], "{\"not\": \"json\"}",
        "text stays a string"
    );
    assert_eq!(text["position"], 1);
    assert_eq!(text["attempts"], 0);
    assert_eq!(text["max_attempts"], 3, "the default");
    assert_eq!(text["progress"], Value::Null);
    assert_eq!(text["result"], Value::Null);
    assert_eq!(text["started_at"], Value::Null);
    assert_eq!(text["lease_expires_at"], Value::Null);
    assert!(text["created_at"].as_str().unwrap().ends_with('Z'));

    let r = client()
        .post(server.url("/queues/q/tasks?max_attempts=5"))
        .json(&json!({"n": [1, 2]}))
        .send()
        .await
        .unwrap();
    let (status, typed) = answer(r).await;
    assert_eq!(status, 201);
    assert_eq!(
        typed["payload"],
        json!({"n": [1, 2]}),
        "JSON comes back as JSON"
    );
    assert_eq!(typed["max_attempts"], 5);
    assert_eq!(typed["position"], 2);
    assert_ne!(typed["id"], text["id"]);

    // Invalid JSON sent as JSON is refused, and nothing is enqueued.
    let r = client()
        .post(server.url("/queues/q/tasks"))
        .header("content-type", "application/json")
        .body("{nope")
        .send()
        .await
        .unwrap();
    expect_error(r, 400, "bad_request").await;

    // A retry with the same key gets the first task back and adds nothing.
    let keyed = || {
        client()
            .post(server.url("/queues/q/tasks"))
            .header("Idempotency-Key", "k1")
            .body("once")
    };
    let first = keyed().send().await.unwrap();
    assert_eq!(first.status(), 201);
    assert!(first.headers().get("idempotent-replayed").is_none());
    let first: Value = first.json().await.unwrap();
    assert_eq!(first["position"], 3);
    let again = keyed().send().await.unwrap();
    assert_eq!(again.status(), 201);
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    let again: Value = again.json().await.unwrap();
    assert_eq!(again["id"], first["id"]);
    assert_eq!(again["payload"], "once");

    // Exactly three tasks are queued: the bad one and the replay added none.
    for want in [&text, &typed, &first] {
        let got = claim(&server, "q", "wait=0").await;
        assert_eq!(got.task["id"], want["id"]);
    }
    assert_eq!(try_claim(&server, "q", "wait=0").await.status(), 204);
}

#[tokio::test]
async fn short_poll_answers_202_until_finished_then_200_and_404_or_400_for_bad_ids() {
    let server = Server::start(&[]);
    let ahead = enqueue(&server, "sp", "ahead").await;
    let task = enqueue(&server, "sp", "job").await;
    let id = id_of(&task);

    let (status, v) = answer(get(&server, &format!("/tasks/{id}")).await).await;
    assert_eq!((status, &v["status"]), (202, &json!("queued")));
    assert_eq!(v["position"], 2);
    for field in TASK_FIELDS {
        assert!(v.get(field).is_some(), "field {field} in {v}");
    }

    let first = claim(&server, "sp", "wait=0&lease=30").await;
    assert_eq!(first.task["id"], ahead["id"]);
    let (_, v) = answer(get(&server, &format!("/tasks/{id}")).await).await;
    assert_eq!(v["position"], 1, "one ahead was claimed");

    let worker = claim(&server, "sp", "wait=0&lease=30").await;
    assert_eq!(worker.id(), id);
    assert_eq!(worker.task["attempts"], 1);
    assert!(worker.task["started_at"].is_string());
    assert_eq!(worker.task["lease_expires_at"], worker.expires.as_str());
    let (status, v) = answer(get(&server, &format!("/tasks/{id}")).await).await;
    assert_eq!((status, &v["status"]), (202, &json!("running")));
    assert_eq!(v["position"], Value::Null, "no position while running");
    assert_eq!(v["lease_expires_at"], worker.expires.as_str());

    let r = complete(&server, &id, Some(&worker.token), json!({"answer": 42})).await;
    let (status, done) = answer(r).await;
    assert_eq!((status, &done["status"]), (200, &json!("succeeded")));
    let (status, v) = answer(get(&server, &format!("/tasks/{id}")).await).await;
    assert_eq!(status, 200);
    assert_eq!(v["status"], "succeeded");
    assert_eq!(v["result"], json!({"answer": 42}));
    assert_eq!(v["progress"], 1.0);
    assert!(v["finished_at"].is_string());
    assert_eq!(v["lease_expires_at"], Value::Null);

    // A valid id nobody enqueued is 404; anything else is 400, on every route.
    let unknown = "0190a4b2-7c3d-7e8f-9a0b-1c2d3e4f5a6b";
    expect_error(
        get(&server, &format!("/tasks/{unknown}")).await,
        404,
        "not_found",
    )
    .await;
    expect_error(
        get(&server, &format!("/tasks/{unknown}?wait=0.1")).await,
        404,
        "not_found",
    )
    .await;
    expect_error(
        get(&server, &format!("/tasks/{unknown}/events?transport=sse")).await,
        404,
        "not_found",
    )
    .await;
    expect_error(cancel(&server, unknown).await, 404, "not_found").await;
    expect_error(
        progress(&server, unknown, None, Some(0.5), None).await,
        404,
        "not_found",
    )
    .await;
    expect_error(
        complete(&server, unknown, None, json!(1)).await,
        404,
        "not_found",
    )
    .await;
    expect_error(
        fail(&server, unknown, None, "x", false).await,
        404,
        "not_found",
    )
    .await;
    for bad in [
        "nope",
        "12345",
        "0190a4b2-7c3d-7e8f-9a0b-1c2d3e4f5a6",
        "%20",
    ] {
        expect_error(
            get(&server, &format!("/tasks/{bad}")).await,
            400,
            "bad_task_id",
        )
        .await;
        expect_error(
            get(&server, &format!("/tasks/{bad}/events?transport=sse")).await,
            400,
            "bad_task_id",
        )
        .await;
        expect_error(cancel(&server, bad).await, 400, "bad_task_id").await;
        expect_error(
            complete(&server, bad, None, json!(1)).await,
            400,
            "bad_task_id",
        )
        .await;
    }
}

#[tokio::test]
async fn long_poll_answers_200_when_finished_and_408_with_the_task_at_the_timeout() {
    let server = Server::start(&[]);
    let task = enqueue(&server, "lp", "job").await;
    let id = id_of(&task);

    let r = get(&server, &format!("/tasks/{id}?wait=0.2")).await;
    let (status, v) = answer(r).await;
    assert_eq!(status, 408);
    assert!(
        v.get("error").is_some_and(Value::is_null),
        "the task, not an error: {v}"
    );
    assert_eq!(v["id"], id.as_str());
    assert_eq!(v["status"], "queued");
    assert_eq!(v["position"], 1);

    let url = server.url(&format!("/tasks/{id}?wait=30"));
    let waiting = tokio::spawn(async move { client().get(url).send().await.unwrap() });
    let worker = claim(&server, "lp", "wait=0").await;
    let r = get(&server, &format!("/tasks/{id}?wait=0.1")).await;
    let (status, v) = answer(r).await;
    assert_eq!((status, &v["status"]), (408, &json!("running")));

    assert_eq!(
        complete(&server, &id, Some(&worker.token), json!("fine"))
            .await
            .status(),
        200
    );
    let (status, v) = answer(within("long poll", waiting).await.unwrap()).await;
    assert_eq!(status, 200);
    assert_eq!(v["status"], "succeeded");
    assert_eq!(v["result"], "fine");

    // A finished task answers a long poll at once.
    let (status, _) = answer(
        within(
            "finished long poll",
            get(&server, &format!("/tasks/{id}?wait=30")),
        )
        .await,
    )
    .await;
    assert_eq!(status, 200);
}

/// A long poll parked when the task finishes is answered from the event
/// the store wrote with the result: the same bytes a `GET` answers after,
/// on every store kind (memory, durable, and enqueue?wait's own wait).
#[tokio::test]
async fn a_woken_long_poll_answers_the_same_bytes_as_a_get() {
    let dir = temp_dir();
    let store = format!("file:{}", dir.path().display());
    for (server, via_enqueue) in [
        (Server::start(&[]), false),
        (Server::start_with(&store, &[]), false),
        (Server::start(&[]), true),
    ] {
        let (waiting, id) = if via_enqueue {
            let url = server.url("/queues/same/tasks?wait=30&backoff=none");
            let waiting = tokio::spawn(async move {
                client()
                    .post(url)
                    .header("content-type", "application/json")
                    .body(r#"{"b":1,"a":[1.5,"x"]}"#)
                    .send()
                    .await
                    .unwrap()
            });
            (waiting, None)
        } else {
            let id = id_of(&enqueue(&server, "same", r#"{"b":1,"a":[1.5,"x"]}"#).await);
            let url = server.url(&format!("/tasks/{id}?wait=30"));
            let waiting = tokio::spawn(async move { client().get(url).send().await.unwrap() });
            (waiting, Some(id))
        };
        // Parked before the task finishes, so the wake is what answers.
        wait_for_metric(
            &server,
            "herald_subscriptions{transport=\"long-poll\"}",
            1.0,
        )
        .await;
        let worker = claim(&server, "same", "wait=5").await;
        let id = id.unwrap_or_else(|| id_of(&worker.task));
        let done = complete(&server, &id, Some(&worker.token), json!({"ok": [1, 2]})).await;
        assert_eq!(done.status(), 200);
        let woken = within("woken long poll", waiting).await.unwrap();
        assert_eq!(woken.status(), 200);
        assert_eq!(
            woken.headers()["content-type"],
            "application/json",
            "as a GET answers"
        );
        let woken = woken.text().await.unwrap();
        let after = get(&server, &format!("/tasks/{id}"))
            .await
            .text()
            .await
            .unwrap();
        assert_eq!(woken, after);
    }
}

#[tokio::test]
async fn bad_query_values_and_bodies_are_400_json() {
    let server = Server::start(&[]);
    let task = enqueue(&server, "bq", "job").await;
    let id = id_of(&task);
    for query in [
        "max_attempts=0",
        "max_attempts=abc",
        "max_attempts=-1",
        "max_attempts=1.5",
    ] {
        let r = client()
            .post(server.url(&format!("/queues/bq/tasks?{query}")))
            .body("x")
            .send()
            .await
            .unwrap();
        expect_error(r, 400, "bad_query").await;
    }
    for query in ["wait=abc", "wait=-1", "wait=NaN", "wait=inf"] {
        expect_error(
            get(&server, &format!("/tasks/{id}?{query}")).await,
            400,
            "bad_query",
        )
        .await;
    }
    for query in [
        "wait=abc",
        "wait=-1",
        "lease=0",
        "lease=-1",
        "lease=abc",
        "lease=100000",
    ] {
        expect_error(try_claim(&server, "bq", query).await, 400, "bad_query").await;
    }
    let r = client()
        .post(server.url("/queues/bad%20queue/tasks"))
        .body("x")
        .send()
        .await
        .unwrap();
    expect_error(r, 400, "bad_topic").await;

    // Nothing above claimed the task; worker bodies are checked too.
    let worker = claim(&server, "bq", "wait=0").await;
    assert_eq!(worker.id(), id, "the bad claims took nothing");
    for body in [
        json!({"progress": 1.5}),
        json!({"progress": -0.1}),
        json!({"progress": "half"}),
    ] {
        let r = call(
            &server,
            Method::POST,
            &format!("/tasks/{id}/progress"),
            Some(&worker.token),
            Some(body),
        )
        .await;
        expect_error(r, 400, "bad_request").await;
    }
    for body in [json!({"retry": true}), json!({"error": 5}), json!("boom")] {
        let r = call(
            &server,
            Method::POST,
            &format!("/tasks/{id}/fail"),
            Some(&worker.token),
            Some(body),
        )
        .await;
        expect_error(r, 400, "bad_request").await;
    }
    let r = client()
        .post(server.url(&format!("/tasks/{id}/complete")))
        .header("content-type", "application/json")
        .header("Herald-Lease", &worker.token)
        .body("{broken")
        .send()
        .await
        .unwrap();
    expect_error(r, 400, "bad_request").await;
    let (status, v) = answer(get(&server, &format!("/tasks/{id}")).await).await;
    assert_eq!((status, &v["status"]), (202, &json!("running")), "unharmed");
    assert_eq!(v["progress"], Value::Null);
}

#[tokio::test]
async fn worker_calls_need_a_live_lease_and_the_right_token() {
    let server = Server::start(&[]);
    let task = enqueue(&server, "w", "job").await;
    let id = id_of(&task);

    // Not running yet: 409.
    expect_error(
        progress(&server, &id, None, Some(0.1), None).await,
        409,
        "conflict",
    )
    .await;
    expect_error(
        complete(&server, &id, None, json!(1)).await,
        409,
        "conflict",
    )
    .await;
    expect_error(fail(&server, &id, None, "x", false).await, 409, "conflict").await;

    let worker = claim(&server, "w", "wait=0&lease=30").await;
    let token = worker.token.as_str();
    // Someone else's token: 409, and nothing changes.
    expect_error(
        progress(&server, &id, Some("not-the-token"), Some(0.1), None).await,
        409,
        "conflict",
    )
    .await;
    expect_error(
        complete(&server, &id, Some("not-the-token"), json!(1)).await,
        409,
        "conflict",
    )
    .await;
    expect_error(
        fail(&server, &id, Some("not-the-token"), "x", false).await,
        409,
        "conflict",
    )
    .await;

    // Progress records itself and pushes the lease out.
    let (status, v) =
        answer(progress(&server, &id, Some(token), Some(0.25), Some("a quarter")).await).await;
    assert_eq!(status, 200);
    assert_eq!(v["progress"], 0.25);
    assert_eq!(v["message"], "a quarter");
    let extended = v["lease_expires_at"].as_str().unwrap().to_owned();
    assert!(
        extended >= worker.expires,
        "progress extends the lease: {extended} < {}",
        worker.expires
    );
    // A null progress with a message is fine too.
    let (status, v) =
        answer(progress(&server, &id, Some(token), None, Some("thinking")).await).await;
    assert_eq!(
        (status, &v["progress"], &v["message"]),
        (200, &Value::Null, &json!("thinking"))
    );

    let (status, done) = answer(complete(&server, &id, Some(token), json!({"r": 1})).await).await;
    assert_eq!((status, &done["status"]), (200, &json!("succeeded")));
    // The same completion again (a retry) is 200 and changes nothing.
    let (status, again) =
        answer(complete(&server, &id, Some(token), json!({"r": "other"})).await).await;
    assert_eq!(status, 200);
    assert_eq!(again["result"], json!({"r": 1}), "the first result stands");
    assert_eq!(again["finished_at"], done["finished_at"]);
    // Anyone else, or a different call, is refused.
    expect_error(
        complete(&server, &id, Some("someone"), json!(2)).await,
        409,
        "conflict",
    )
    .await;
    expect_error(
        complete(&server, &id, None, json!(2)).await,
        409,
        "conflict",
    )
    .await;
    expect_error(
        progress(&server, &id, Some(token), Some(0.9), None).await,
        409,
        "conflict",
    )
    .await;
    expect_error(
        fail(&server, &id, Some(token), "late", false).await,
        409,
        "conflict",
    )
    .await;
    expect_error(cancel(&server, &id).await, 409, "conflict").await;
    let (status, v) = answer(get(&server, &format!("/tasks/{id}")).await).await;
    assert_eq!(
        (status, &v["status"], &v["result"]),
        (200, &json!("succeeded"), &json!({"r": 1}))
    );

    // A text result comes back as a string; fail repeated with its token is 200.
    let task = enqueue(&server, "w", "two").await;
    let id = id_of(&task);
    let worker = claim(&server, "w", "wait=0").await;
    let (status, v) = answer(fail(&server, &id, Some(&worker.token), "broken", false).await).await;
    assert_eq!(
        (status, &v["status"], &v["error"]),
        (200, &json!("failed"), &json!("broken"))
    );
    let (status, v) = answer(fail(&server, &id, Some(&worker.token), "broken", false).await).await;
    assert_eq!(
        (status, &v["status"]),
        (200, &json!("failed")),
        "idempotent"
    );
    expect_error(
        complete(&server, &id, Some(&worker.token), json!(1)).await,
        409,
        "conflict",
    )
    .await;

    let task = enqueue(&server, "w", "three").await;
    let id = id_of(&task);
    let worker = claim(&server, "w", "wait=0").await;
    let r = client()
        .post(server.url(&format!("/tasks/{id}/complete")))
        .header("Herald-Lease", &worker.token)
        .body("{\"plain\": true}")
        .send()
        .await
        .unwrap();
    let (status, v) = answer(r).await;
    assert_eq!((status, &v["result"]), (200, &json!("{\"plain\": true}")));
}

#[tokio::test]
async fn fail_with_retry_queues_again_until_the_attempts_are_spent() {
    let server = Server::start(&[]);
    let r = client()
        .post(server.url("/queues/rt/tasks?max_attempts=2&backoff=none"))
        .body("flaky")
        .send()
        .await
        .unwrap();
    let task: Value = r.json().await.unwrap();
    let id = id_of(&task);

    let first = claim(&server, "rt", "wait=0").await;
    assert_eq!(first.task["attempts"], 1);
    let (status, v) = answer(fail(&server, &id, Some(&first.token), "try again", true).await).await;
    assert_eq!(status, 200);
    assert_eq!(v["status"], "queued", "attempts left: queued again");
    assert_eq!(v["position"], 1);
    assert_eq!(v["lease_expires_at"], Value::Null);
    let (status, _) = answer(fail(&server, &id, Some(&first.token), "try again", true).await).await;
    assert_eq!(status, 200, "a repeated fail with the same token");
    let (status, v) = answer(get(&server, &format!("/tasks/{id}")).await).await;
    assert_eq!((status, &v["status"]), (202, &json!("queued")));
    // The old worker cannot finish what is queued again.
    expect_error(
        complete(&server, &id, Some(&first.token), json!(1)).await,
        409,
        "conflict",
    )
    .await;

    let second = claim(&server, "rt", "wait=0").await;
    assert_eq!(second.id(), id);
    assert_eq!(second.task["attempts"], 2);
    assert_ne!(second.token, first.token);
    let (status, v) =
        answer(fail(&server, &id, Some(&second.token), "still broken", true).await).await;
    assert_eq!(status, 200);
    assert_eq!(v["status"], "failed", "no attempts left");
    assert_eq!(v["error"], "still broken");
    assert_eq!(try_claim(&server, "rt", "wait=0").await.status(), 204);
}

// ---------------------------------------------------------------------------
// Workers.

#[tokio::test]
async fn two_workers_racing_for_one_task_one_wins() {
    let server = Server::start(&[]);
    let task = enqueue(&server, "race", "only one").await;
    let (a, b) = within(
        "both claims",
        futures_util::future::join(
            try_claim(&server, "race", "wait=0.5"),
            try_claim(&server, "race", "wait=0.5"),
        ),
    )
    .await;
    let mut statuses = [a.status().as_u16(), b.status().as_u16()];
    statuses.sort_unstable();
    assert_eq!(statuses, [200, 204]);
    let winner = if a.status() == 200 { a } else { b };
    let v: Value = winner.json().await.unwrap();
    assert_eq!(v["task"]["id"], task["id"]);
    assert_eq!(v["task"]["attempts"], 1, "claimed once");
}

#[tokio::test]
async fn a_new_task_wakes_exactly_one_of_several_waiting_claims() {
    let server = Server::start(&[]);
    let mut claims: FuturesUnordered<_> = (0..3)
        .map(|_| {
            let url = server.url("/queues/wake/claim?wait=3");
            tokio::spawn(async move { client().post(url).send().await.unwrap() })
        })
        .collect();
    let task = enqueue(&server, "wake", "one").await;
    // The first answer is the task, long before the others' wait is over.
    let first = within("the first claim", claims.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(first.status(), 200, "the winner answers first");
    let v: Value = first.json().await.unwrap();
    assert_eq!(v["task"]["id"], task["id"]);
    let mut rest = Vec::new();
    while let Some(r) = within("the other claims", claims.next()).await {
        rest.push(r.unwrap().status().as_u16());
    }
    assert_eq!(rest, [204, 204], "nobody else got it");
}

#[tokio::test]
async fn each_queue_hands_out_its_tasks_in_fifo_order() {
    let server = Server::start(&[]);
    let mut a = Vec::new();
    let mut b = Vec::new();
    for i in 0..5 {
        let t = enqueue(&server, "fifo-a", &format!("a{i}")).await;
        assert_eq!(t["position"], i + 1);
        a.push(t["id"].clone());
        let t = enqueue(&server, "fifo-b", &format!("b{i}")).await;
        assert_eq!(t["position"], i + 1, "queues count separately");
        b.push(t["id"].clone());
    }
    for want in &b[..2] {
        assert_eq!(&claim(&server, "fifo-b", "wait=0").await.task["id"], want);
    }
    for (i, want) in a.iter().enumerate() {
        let got = claim(&server, "fifo-a", "wait=0").await;
        assert_eq!(&got.task["id"], want);
        assert_eq!(got.task["payload"], format!("a{i}"));
    }
    assert_eq!(try_claim(&server, "fifo-a", "wait=0").await.status(), 204);
    for want in &b[2..] {
        assert_eq!(&claim(&server, "fifo-b", "wait=0").await.task["id"], want);
    }
}

#[tokio::test]
async fn a_dead_workers_task_goes_to_the_next_worker() {
    let server = Server::start(&[]);
    let task = enqueue(&server, "dead", "work").await;
    let id = id_of(&task);
    let dying = claim(&server, "dead", "wait=0&lease=1").await;
    assert_eq!(dying.task["attempts"], 1);
    // The first worker never reports; the next one waits for the task.
    let next = claim(&server, "dead", "wait=5&lease=30").await;
    assert_eq!(next.id(), id, "the same task, again");
    assert_eq!(next.task["attempts"], 2);
    assert_ne!(next.token, dying.token);

    // The dead worker wakes up late: its lease is gone.
    expect_error(
        progress(&server, &id, Some(&dying.token), Some(0.5), None).await,
        409,
        "conflict",
    )
    .await;
    let (status, v) =
        answer(complete(&server, &id, Some(&next.token), json!("second")).await).await;
    assert_eq!((status, &v["status"]), (200, &json!("succeeded")));
    expect_error(
        complete(&server, &id, Some(&dying.token), json!("first")).await,
        409,
        "conflict",
    )
    .await;
    let (status, v) = answer(get(&server, &format!("/tasks/{id}")).await).await;
    assert_eq!(
        (status, &v["result"], &v["attempts"]),
        (200, &json!("second"), &json!(2))
    );
}

#[tokio::test]
async fn a_lease_that_runs_out_on_the_last_attempt_fails_the_task() {
    let server = Server::start(&[]);
    let r = client()
        .post(server.url("/queues/last/tasks?max_attempts=1"))
        .body("once")
        .send()
        .await
        .unwrap();
    let id = id_of(&r.json().await.unwrap());
    let worker = claim(&server, "last", "wait=0&lease=0.3").await;
    let r = within(
        "the lease runs out",
        get(&server, &format!("/tasks/{id}?wait=10")),
    )
    .await;
    let (status, v) = answer(r).await;
    assert_eq!(status, 200);
    assert_eq!(v["status"], "failed");
    assert!(
        v["error"].as_str().is_some_and(|e| !e.is_empty()),
        "the failure says why: {v}"
    );
    assert_eq!(v["attempts"], 1);
    expect_error(
        complete(&server, &id, Some(&worker.token), json!(1)).await,
        409,
        "conflict",
    )
    .await;
    assert_eq!(try_claim(&server, "last", "wait=0").await.status(), 204);
}

// ---------------------------------------------------------------------------
// Clients waiting for a task.

#[tokio::test]
async fn every_way_of_waiting_sees_the_same_finish() {
    let server = Server::start(&[]);
    let task = enqueue(&server, "modes", "job").await;
    let id = id_of(&task);
    let events = format!("/tasks/{id}/events");

    // SSE, WebSocket and NDJSON: each is waiting once it has its `wait`.
    let mut sse_events = sse(&server, &events, None).await;
    let first = next_event(&mut sse_events, "sse wait").await;
    assert_eq!((first.event.as_str(), first.id.as_str()), ("wait", ""));
    assert_eq!(data_json(&first), json!({"position": 1}));

    let (mut ws, _) =
        tokio_tungstenite::connect_async(server.url(&events).replacen("http", "ws", 1))
            .await
            .unwrap();
    let frame = ws_next(&mut ws).await.unwrap();
    assert_eq!(frame["event"], "wait");
    assert_eq!(frame["topic"], format!("tasks.{id}"));
    assert!(
        frame.get("id").is_none(),
        "wait frames carry no id: {frame}"
    );
    assert!(frame.get("time").is_none(), "nor a time: {frame}");
    assert_eq!(frame["data"], "{\"position\":1}");

    let nd = client()
        .get(server.url(&format!("{events}?transport=stream")))
        .send()
        .await
        .unwrap();
    assert_eq!(nd.headers()["content-type"], "application/x-ndjson");
    let mut nd = nd.bytes_stream();
    let mut splitter = herald_protocol::ndjson::LineSplitter::new();
    let mut nd_lines: Vec<Value> = Vec::new();
    let mut read_lines = async |want: usize, lines: &mut Vec<Value>| {
        while lines.len() < want {
            match within("ndjson", nd.next()).await {
                Some(chunk) => lines.extend(
                    splitter
                        .feed(&chunk.unwrap())
                        .iter()
                        .map(|l| serde_json::from_slice::<Value>(l).unwrap()),
                ),
                None => return false,
            }
        }
        true
    };
    assert!(read_lines(1, &mut nd_lines).await);
    assert_eq!(nd_lines[0]["event"], "wait");

    // Long poll and a short poll loop.
    let url = server.url(&format!("/tasks/{id}?wait=30"));
    let long_poll = tokio::spawn(async move { client().get(url).send().await.unwrap() });
    let url = server.url(&format!("/tasks/{id}"));
    let short_poll = tokio::spawn(async move {
        let mut polls = 0;
        loop {
            let r = client().get(&url).send().await.unwrap();
            polls += 1;
            match r.status().as_u16() {
                200 => return (polls, r.json::<Value>().await.unwrap()),
                202 => tokio::time::sleep(Duration::from_millis(20)).await,
                other => panic!("short poll answered {other}"),
            }
        }
    });

    let worker = claim(&server, "modes", "wait=0").await;
    let (status, done) =
        answer(complete(&server, &id, Some(&worker.token), json!({"ok": true})).await).await;
    assert_eq!(status, 200);

    // SSE: `done` with the task, then the end.
    let e = next_event(&mut sse_events, "sse done").await;
    assert_eq!(e.event, "done");
    assert!(!e.id.is_empty(), "done has an id");
    let v = data_json(&e);
    assert_eq!(
        (&v["status"], &v["result"]),
        (&json!("succeeded"), &json!({"ok": true}))
    );
    assert_eq!(v["id"], id.as_str());
    assert_ended(&mut sse_events, "sse end").await;

    // WebSocket: `done`, then a normal close.
    let frame = ws_next(&mut ws).await.unwrap();
    assert_eq!(frame["event"], "done");
    assert_eq!(frame["id"], e.id.as_str(), "the same event id as SSE");
    assert!(frame["time"].is_string());
    let v: Value = serde_json::from_str(frame["data"].as_str().unwrap()).unwrap();
    assert_eq!(v["status"], "succeeded");
    assert_eq!(
        ws_next(&mut ws).await.unwrap_err(),
        Some(1000),
        "closed normally"
    );
    ws.close(None).await.ok();

    // NDJSON: `done`, then the body ends.
    assert!(read_lines(2, &mut nd_lines).await);
    assert_eq!(nd_lines[1]["event"], "done");
    assert_eq!(nd_lines[1]["id"], e.id.as_str());
    assert!(
        !read_lines(3, &mut nd_lines).await,
        "the stream ends: {nd_lines:?}"
    );

    let (status, v) = answer(within("long poll", long_poll).await.unwrap()).await;
    assert_eq!(status, 200);
    assert_eq!(v, done, "the long poll gets the finished task");
    let (polls, v) = within("short poll", short_poll).await.unwrap();
    assert!(polls >= 1);
    assert_eq!(v, done);
}

#[tokio::test]
async fn a_failing_task_streams_wait_progress_error_and_then_ends() {
    let server = Server::start(&[]);
    let task = enqueue(&server, "sad", "doomed").await;
    let id = id_of(&task);
    let path = format!("/tasks/{id}/events");
    let mut events = sse(&server, &path, None).await;
    let wait = next_event(&mut events, "wait").await;
    assert_eq!((wait.event.as_str(), wait.id.as_str()), ("wait", ""));
    assert_eq!(data_json(&wait), json!({"position": 1}));

    let worker = claim(&server, "sad", "wait=0").await;
    let token = Some(worker.token.as_str());
    assert_eq!(
        progress(&server, &id, token, Some(0.5), Some("half way"))
            .await
            .status(),
        200
    );
    let p = next_event(&mut events, "progress").await;
    assert_eq!(p.event, "progress");
    assert!(!p.id.is_empty(), "progress has an id");
    assert_eq!(
        data_json(&p),
        json!({"progress": 0.5, "message": "half way"})
    );

    assert_eq!(
        fail(&server, &id, token, "it broke", false).await.status(),
        200
    );
    let err = next_event(&mut events, "error").await;
    assert_eq!(err.event, "error");
    assert!(!err.id.is_empty() && err.id != p.id, "error has its own id");
    let v = data_json(&err);
    assert_eq!(v["id"], id.as_str());
    assert_eq!(v["status"], "failed");
    assert_eq!(v["error"], "it broke");
    assert_eq!(v["progress"], 0.5);
    assert_ended(&mut events, "after error").await;

    // Reconnecting: from the start, the stored story again (no `wait`, it is
    // not queued); after `progress`, only the error; after the error, 204.
    let mut again = sse(&server, &path, None).await;
    assert_eq!(next_event(&mut again, "replayed progress").await.id, p.id);
    assert_eq!(next_event(&mut again, "replayed error").await.id, err.id);
    assert_ended(&mut again, "replay end").await;
    let mut resumed = sse(&server, &path, Some(&p.id)).await;
    let e = next_event(&mut resumed, "resumed error").await;
    assert_eq!(
        (e.event.as_str(), e.id.as_str()),
        ("error", err.id.as_str())
    );
    assert_ended(&mut resumed, "resumed end").await;
    let r = sse_request(&server, &path, Some(&err.id)).await;
    assert_eq!(r.status(), 204, "nothing more will come: stop reconnecting");
    let r = get(
        &server,
        &format!("{path}?transport=sse&last-event-id={}", err.id),
    )
    .await;
    assert_eq!(r.status(), 204, "the query cursor too");
    let ws = tokio_tungstenite::connect_async(
        server
            .url(&format!("{path}?last-event-id={}", err.id))
            .replacen("http", "ws", 1),
    )
    .await;
    match ws {
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => assert_eq!(r.status(), 204),
        other => panic!("expected a 204 refusal of the upgrade, got {other:?}"),
    }
}

#[tokio::test]
async fn cancelling_a_queued_task_ends_it_at_once() {
    let server = Server::start(&[]);
    let task = enqueue(&server, "cq", "unwanted").await;
    let id = id_of(&task);
    let mut events = sse(&server, &format!("/tasks/{id}/events"), None).await;
    assert_eq!(next_event(&mut events, "wait").await.event, "wait");

    let (status, v) = answer(cancel(&server, &id).await).await;
    assert_eq!((status, &v["status"]), (200, &json!("cancelled")));
    let e = next_event(&mut events, "cancel error").await;
    assert_eq!(e.event, "error");
    assert_eq!(data_json(&e)["status"], "cancelled");
    assert_ended(&mut events, "after cancel").await;

    let (status, v) = answer(get(&server, &format!("/tasks/{id}")).await).await;
    assert_eq!((status, &v["status"]), (200, &json!("cancelled")));
    assert_eq!(v["position"], Value::Null);
    expect_error(cancel(&server, &id).await, 409, "conflict").await;
    assert_eq!(
        try_claim(&server, "cq", "wait=0").await.status(),
        204,
        "a cancelled task is never handed out"
    );
}

#[tokio::test]
async fn cancelling_a_running_task_stops_its_worker_at_the_next_call() {
    let server = Server::start(&[]);
    let task = enqueue(&server, "cr", "long job").await;
    let id = id_of(&task);
    let worker = claim(&server, "cr", "wait=0&lease=30").await;
    let mut events = sse(&server, &format!("/tasks/{id}/events"), None).await;

    let (status, v) = answer(cancel(&server, &id).await).await;
    assert_eq!(status, 202, "asked, not yet done");
    assert_eq!(v["status"], "running");
    let (status, v) = answer(get(&server, &format!("/tasks/{id}")).await).await;
    assert_eq!((status, &v["status"]), (202, &json!("running")));

    expect_error(
        progress(&server, &id, Some(&worker.token), Some(0.5), None).await,
        409,
        "conflict",
    )
    .await;
    let e = next_event(&mut events, "cancel error").await;
    assert_eq!(e.event, "error");
    assert_eq!(data_json(&e)["status"], "cancelled");
    assert_ended(&mut events, "after cancel").await;
    let (status, v) = answer(get(&server, &format!("/tasks/{id}")).await).await;
    assert_eq!((status, &v["status"]), (200, &json!("cancelled")));
    expect_error(
        complete(&server, &id, Some(&worker.token), json!(1)).await,
        409,
        "conflict",
    )
    .await;
    expect_error(cancel(&server, &id).await, 409, "conflict").await;

    // A worker that never calls again: the lease running out ends it cancelled.
    let task = enqueue(&server, "cr", "abandoned").await;
    let id = id_of(&task);
    let worker = claim(&server, "cr", "wait=0&lease=0.5").await;
    assert_eq!(cancel(&server, &id).await.status(), 202);
    let (status, v) = answer(
        within(
            "lease runs out",
            get(&server, &format!("/tasks/{id}?wait=10")),
        )
        .await,
    )
    .await;
    assert_eq!((status, &v["status"]), (200, &json!("cancelled")));
    expect_error(
        complete(&server, &id, Some(&worker.token), json!(1)).await,
        409,
        "conflict",
    )
    .await;
    assert_eq!(
        try_claim(&server, "cr", "wait=0").await.status(),
        204,
        "not queued again"
    );
}

#[tokio::test]
async fn positions_count_down_as_the_tasks_ahead_leave_the_queue() {
    let server = Server::start(&[]);
    enqueue(&server, "pos", "one").await;
    enqueue(&server, "pos", "two").await;
    let third = enqueue(&server, "pos", "three").await;
    let fourth = enqueue(&server, "pos", "four").await;
    assert_eq!(
        (&third["position"], &fourth["position"]),
        (&json!(3), &json!(4))
    );
    let (id, last) = (id_of(&third), id_of(&fourth));
    let mut third_events = sse(&server, &format!("/tasks/{id}/events?transport=sse"), None).await;
    let mut fourth_events = sse(&server, &format!("/tasks/{last}/events"), None).await;
    async fn position(events: &mut Sse) -> Value {
        let e = next_event(events, "wait").await;
        assert_eq!((e.event.as_str(), e.id.as_str()), ("wait", ""), "{e:?}");
        data_json(&e)["position"].clone()
    }
    assert_eq!(position(&mut third_events).await, 3);
    assert_eq!(position(&mut fourth_events).await, 4);
    claim(&server, "pos", "wait=0").await;
    assert_eq!(position(&mut third_events).await, 2);
    assert_eq!(position(&mut fourth_events).await, 3);
    let (_, v) = answer(get(&server, &format!("/tasks/{id}")).await).await;
    assert_eq!(v["position"], 2);
    claim(&server, "pos", "wait=0").await;
    assert_eq!(position(&mut third_events).await, 1);
    assert_eq!(position(&mut fourth_events).await, 2);

    // A cancel ahead moves the one behind up too.
    assert_eq!(cancel(&server, &id).await.status(), 200);
    assert_eq!(
        next_event(&mut third_events, "cancelled").await.event,
        "error"
    );
    assert_ended(&mut third_events, "third ends").await;
    assert_eq!(position(&mut fourth_events).await, 1);

    // Tasks behind it and other queues do not move it: the next item is `done`.
    enqueue(&server, "pos", "five").await;
    enqueue(&server, "other", "x").await;
    claim(&server, "other", "wait=0").await;
    let worker = claim(&server, "pos", "wait=0").await;
    assert_eq!(worker.id(), last);
    complete(&server, &last, Some(&worker.token), json!(4)).await;
    let e = next_event(&mut fourth_events, "done").await;
    assert_eq!(e.event, "done", "no stray wait: {e:?}");
}

#[tokio::test]
async fn a_task_queued_again_is_told_its_position_again() {
    let server = Server::start(&[]);
    // Followed from while it runs: the lease runs out, it waits again.
    let task = enqueue(&server, "again", "first").await;
    let id = id_of(&task);
    let worker = claim(&server, "again", "wait=0&lease=0.5").await;
    let mut events = sse(&server, &format!("/tasks/{id}/events"), None).await;
    let e = next_event(&mut events, "wait after the lease ran out").await;
    assert_eq!(
        (e.event.as_str(), data_json(&e)),
        ("wait", json!({"position": 1}))
    );
    let again = claim(&server, "again", "wait=5").await;
    assert_eq!(again.id(), id);
    assert_ne!(again.token, worker.token);
    complete(&server, &id, Some(&again.token), json!(1)).await;
    assert_eq!(next_event(&mut events, "done").await.event, "done");
    assert_ended(&mut events, "end").await;

    // Followed from the queue: it waits, runs, fails with retry — and must be
    // told it waits again, or its client believes it is still running.
    let task = enqueue(&server, "again", "second").await;
    let id = id_of(&task);
    let mut events = sse(&server, &format!("/tasks/{id}/events"), None).await;
    let e = next_event(&mut events, "first wait").await;
    assert_eq!(
        (e.event.as_str(), data_json(&e)),
        ("wait", json!({"position": 1}))
    );
    let worker = claim(&server, "again", "wait=0").await;
    progress(&server, &id, Some(&worker.token), Some(0.3), None).await;
    assert_eq!(next_event(&mut events, "progress").await.event, "progress");
    let (status, v) = answer(fail(&server, &id, Some(&worker.token), "flaky", true).await).await;
    assert_eq!(
        (status, &v["status"], &v["position"]),
        (200, &json!("queued"), &json!(1))
    );
    let e = next_event(&mut events, "wait after fail with retry").await;
    assert_eq!(
        (e.event.as_str(), e.data.as_str()),
        ("wait", "{\"position\":1}"),
        "queued again at position 1"
    );
}

#[tokio::test]
async fn a_finished_tasks_stream_from_now_ends_at_once() {
    let server = Server::start(&[]);
    let id = id_of(&enqueue(&server, "now", "job").await);
    let worker = claim(&server, "now", "wait=0").await;
    complete(&server, &id, Some(&worker.token), json!(1)).await;
    // Nothing will ever come after `now` on a finished task: like a cursor
    // at its final event, it must not leave the client hanging.
    for path in [
        format!("/tasks/{id}/events?last-event-id=now"),
        format!("/api/queue?id={id}&last-event-id=now"),
    ] {
        let r = sse_request(&server, &path, None).await;
        if r.status() == 204 {
            continue;
        }
        assert_eq!(r.status(), 200, "{path}");
        let mut events: Sse = r.bytes_stream().eventsource().boxed();
        assert_ended(
            &mut events,
            &format!("{path}: the stream of a finished task ends"),
        )
        .await;
    }
}

#[tokio::test]
async fn publishing_to_a_tasks_topic_cannot_fake_its_end() {
    let server = Server::start(&[]);
    let id = id_of(&enqueue(&server, "spoof", "job").await);
    let mut events = sse(&server, &format!("/tasks/{id}/events"), None).await;
    assert_eq!(next_event(&mut events, "wait").await.event, "wait");
    // Anyone may publish to any topic, but a task's story is the server's.
    let r = client()
        .post(server.url(&format!("/topics/tasks.{id}?event=done")))
        .body("fake")
        .send()
        .await
        .unwrap();
    let refused = r.status().is_client_error();
    let worker = claim(&server, "spoof", "wait=0").await;
    complete(&server, &id, Some(&worker.token), json!("real")).await;
    let e = next_event(&mut events, "done").await;
    assert_eq!(e.event, "done");
    assert_eq!(
        e.data
            .starts_with('{')
            .then(|| data_json(&e)["result"].clone()),
        Some(json!("real")),
        "the stream's `done` is the task's (publish refused: {refused}): {e:?}"
    );
}

// ---------------------------------------------------------------------------
// Durability.

#[tokio::test]
async fn tasks_in_every_state_survive_a_restart() {
    let dir = temp_dir();
    let mut server = Server::start_in(dir.path(), &[]);
    let q = "keep";

    let succeeded = id_of(&enqueue(&server, q, "s").await);
    let w = claim(&server, q, "wait=0").await;
    assert_eq!(
        complete(&server, &succeeded, Some(&w.token), json!({"kept": 1}))
            .await
            .status(),
        200
    );
    let failed = id_of(&enqueue(&server, q, "f").await);
    let w = claim(&server, q, "wait=0").await;
    assert_eq!(
        fail(&server, &failed, Some(&w.token), "gave up", false)
            .await
            .status(),
        200
    );
    let cancelled = id_of(&enqueue(&server, q, "c").await);
    assert_eq!(cancel(&server, &cancelled).await.status(), 200);
    let running = id_of(&enqueue(&server, q, "long").await);
    let long = claim(&server, q, "wait=0&lease=60").await;
    assert_eq!(long.id(), running);
    let expiring = id_of(&enqueue(&server, q, "short").await);
    let short = claim(&server, q, "wait=0&lease=1").await;
    let lease_over = tokio::time::Instant::now() + Duration::from_millis(1200);
    assert_eq!(short.id(), expiring);
    let keyed = || {
        client()
            .post(server.url(&format!("/queues/{q}/tasks")))
            .header("Idempotency-Key", "q1")
            .body("q1")
    };
    let q1: Value = keyed().send().await.unwrap().json().await.unwrap();
    let queued = vec![id_of(&q1), id_of(&enqueue(&server, q, "q2").await)];
    let mut finished_before = Vec::new();
    for id in [&succeeded, &failed, &cancelled] {
        finished_before.push(answer(get(&server, &format!("/tasks/{id}")).await).await.1);
    }

    assert!(server.stop().success(), "graceful stop");
    // The short lease's deadline passes while nobody is there to see it.
    tokio::time::sleep_until(lease_over).await;
    server.start_again();

    // Finished tasks keep their status, result and error.
    for (id, before) in [&succeeded, &failed, &cancelled]
        .iter()
        .zip(&finished_before)
    {
        let (status, v) = answer(get(&server, &format!("/tasks/{id}")).await).await;
        assert_eq!(status, 200);
        assert_eq!(&v, before, "a finished task is unchanged");
    }
    let (_, v) = answer(get(&server, &format!("/tasks/{succeeded}")).await).await;
    assert_eq!(v["result"], json!({"kept": 1}));
    let (_, v) = answer(get(&server, &format!("/tasks/{failed}")).await).await;
    assert_eq!(v["error"], "gave up");

    // The running task keeps its lease; the expired one is queued again.
    let (status, v) = answer(get(&server, &format!("/tasks/{running}")).await).await;
    assert_eq!((status, &v["status"]), (202, &json!("running")));
    assert_eq!(v["lease_expires_at"], long.expires.as_str());
    let (status, v) = answer(
        within(
            "the expired lease is settled",
            get(&server, &format!("/tasks/{expiring}?wait=0")),
        )
        .await,
    )
    .await;
    let v = if v["status"] == "queued" {
        v
    } else {
        // The reaper settles it right after the start; wait for that.
        assert_eq!((status, &v["status"]), (408, &json!("running")));
        requeued(&server, &expiring).await
    };
    assert_eq!(v["attempts"], 1);
    assert_eq!(v["lease_expires_at"], Value::Null);

    // Queued ones are still queued, in the same order.
    let mut positions = Vec::new();
    for id in &queued {
        let (status, v) = answer(get(&server, &format!("/tasks/{id}")).await).await;
        assert_eq!((status, &v["status"]), (202, &json!("queued")));
        positions.push(v["position"].as_u64().unwrap());
    }
    let (_, v) = answer(get(&server, &format!("/tasks/{expiring}")).await).await;
    let expired_at = v["position"].as_u64().unwrap();
    let mut all = positions.clone();
    all.push(expired_at);
    all.sort_unstable();
    assert_eq!(all, [1, 2, 3], "three queued, positions 1..3");
    assert!(positions[0] < positions[1], "q1 before q2: {positions:?}");
    // Idempotency keys of tasks survive too.
    let keyed = || {
        client()
            .post(server.url(&format!("/queues/{q}/tasks")))
            .header("Idempotency-Key", "q1")
            .body("q1")
    };
    let r = keyed().send().await.unwrap();
    assert_eq!(r.status(), 201);
    assert_eq!(r.headers()["idempotent-replayed"], "true");
    assert_eq!(r.json::<Value>().await.unwrap()["id"], q1["id"]);

    // The worker of the running task finishes it with its old token.
    let (status, v) =
        answer(complete(&server, &running, Some(&long.token), json!("after")).await).await;
    assert_eq!((status, &v["status"]), (200, &json!("succeeded")));

    // Claims hand out the queue in position order; the expired task again.
    let mut order: Vec<(u64, String)> = positions.into_iter().zip(queued.iter().cloned()).collect();
    order.push((expired_at, expiring.clone()));
    order.sort();
    for (_, want) in &order {
        let got = claim(&server, q, "wait=0").await;
        assert_eq!(&got.id(), want);
        if *want == expiring {
            assert_eq!(got.task["attempts"], 2, "claimed a second time");
        }
    }
    assert_eq!(try_claim(&server, q, "wait=0").await.status(), 204);

    // Streams of finished tasks still replay and still say 204 at the end.
    let path = format!("/tasks/{succeeded}/events");
    let mut events = sse(&server, &path, None).await;
    let done = next_event(&mut events, "replayed done").await;
    assert_eq!(done.event, "done");
    assert_ended(&mut events, "replay end").await;
    assert_eq!(
        sse_request(&server, &path, Some(&done.id)).await.status(),
        204
    );

    // The gauges are rebuilt from the store.
    let series = |status: &str| format!("herald_tasks{{queue=\"{q}\",status=\"{status}\"}}");
    assert_eq!(metric(&server, &series("succeeded")).await, 2.0);
    assert_eq!(metric(&server, &series("failed")).await, 1.0);
    assert_eq!(metric(&server, &series("cancelled")).await, 1.0);
    assert_eq!(metric(&server, &series("running")).await, 3.0);
}

#[tokio::test]
async fn acknowledged_task_changes_survive_a_crash() {
    let dir = temp_dir();
    let mut server = Server::start_in(dir.path(), &[]);
    let mut ids = Vec::new();
    for i in 0..20 {
        ids.push(id_of(&enqueue(&server, "crash", &format!("t{i}")).await));
    }
    let mut tokens = Vec::new();
    for (i, id) in ids.iter().enumerate().take(10) {
        let w = claim(&server, "crash", "wait=0&lease=600").await;
        assert_eq!(&w.id(), id);
        if i % 2 == 0 {
            let r = complete(&server, id, Some(&w.token), json!(i)).await;
            assert_eq!(r.status(), 200);
        }
        tokens.push(w.token);
    }
    server.crash();
    server.start_again();
    for (i, id) in ids.iter().enumerate() {
        let (status, v) = answer(get(&server, &format!("/tasks/{id}")).await).await;
        let want = match i {
            0..10 if i % 2 == 0 => "succeeded",
            0..10 => "running",
            _ => "queued",
        };
        assert_eq!(v["status"], want, "task {i}: {v}");
        assert_eq!(status, if want == "succeeded" { 200 } else { 202 });
        if want == "succeeded" {
            assert_eq!(v["result"], i);
        }
        if want == "queued" {
            assert_eq!(v["position"], i - 9, "task {i} keeps its place");
        }
    }
    // The running ones are still their workers'.
    for (i, token) in tokens.iter().enumerate().filter(|(i, _)| i % 2 == 1) {
        let r = complete(&server, &ids[i], Some(token), json!(i)).await;
        assert_eq!(r.status(), 200, "task {i}");
    }
    assert_eq!(claim(&server, "crash", "wait=0").await.id(), ids[10]);
}

/// Short polls the task, bounded, until the reaper has queued it again (a
/// long poll would only return when it finishes).
async fn requeued(server: &Server, id: &str) -> Value {
    within("queued again", async {
        loop {
            let (status, v) = answer(get(server, &format!("/tasks/{id}")).await).await;
            assert_eq!(status, 202);
            if v["status"] == "queued" {
                return v;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
}

// ---------------------------------------------------------------------------
// The seed article's /api/queue, and metrics.

#[tokio::test]
async fn api_queue_serves_the_articles_client() {
    let server = Server::start(&[]);
    let r = client()
        .post(server.url("/api/queue"))
        .body("article job")
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.status());
    let v: Value = r.json().await.unwrap();
    assert_eq!(v.as_object().unwrap().len(), 1, "just the id: {v}");
    let id = v["id"].as_str().unwrap().to_owned();
    let poll = format!("/api/queue?id={id}");

    // Short poll: 204 while pending (queued or running).
    assert_eq!(get(&server, &poll).await.status(), 204);
    let worker = claim(&server, "default", "wait=0").await;
    assert_eq!(worker.id(), id, "the article's queue is `default`");
    assert_eq!(worker.task["payload"], "article job");
    assert_eq!(get(&server, &poll).await.status(), 204);

    // Long poll: 408 after ttl, 200 when done.
    let (status, v) = answer(get(&server, &format!("{poll}&ttl=200")).await).await;
    assert_eq!((status, &v["status"]), (408, &json!("running")));
    let url = server.url(&format!("{poll}&ttl=30000"));
    let waiting = tokio::spawn(async move { client().get(url).send().await.unwrap() });
    assert_eq!(
        complete(&server, &id, Some(&worker.token), json!("made"))
            .await
            .status(),
        200
    );
    let (status, v) = answer(within("ttl long poll", waiting).await.unwrap()).await;
    assert_eq!(
        (status, &v["status"], &v["result"]),
        (200, &json!("succeeded"), &json!("made"))
    );
    let (status, v) = answer(get(&server, &poll).await).await;
    assert_eq!((status, &v["id"]), (200, &json!(id)));

    // SSE: `wait` with a bare number, then progress, then `done`.
    let r = client()
        .post(server.url("/api/queue"))
        .body("second")
        .send()
        .await
        .unwrap();
    let second = r.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let path = format!("/api/queue?id={second}");
    let mut events = sse(&server, &path, None).await;
    let wait = next_event(&mut events, "article wait").await;
    assert_eq!((wait.event.as_str(), wait.data.as_str()), ("wait", "1"));
    let worker = claim(&server, "default", "wait=0").await;
    progress(&server, &second, Some(&worker.token), Some(0.5), None).await;
    let p = next_event(&mut events, "article progress").await;
    assert_eq!(p.event, "progress");
    complete(&server, &second, Some(&worker.token), json!(2)).await;
    let done = next_event(&mut events, "article done").await;
    assert_eq!(done.event, "done");
    assert_eq!(data_json(&done)["result"], 2);
    assert_ended(&mut events, "article end").await;
    assert_eq!(
        sse_request(&server, &path, Some(&done.id)).await.status(),
        204
    );

    // A failed task: short poll 200 (whatever the outcome), SSE `error`.
    let r = client()
        .post(server.url("/api/queue"))
        .json(&json!({"n": 3}))
        .send()
        .await
        .unwrap();
    let third = r.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let worker = claim(&server, "default", "wait=0").await;
    assert_eq!(worker.task["payload"], json!({"n": 3}));
    fail(&server, &third, Some(&worker.token), "nope", false).await;
    let (status, v) = answer(get(&server, &format!("/api/queue?id={third}")).await).await;
    assert_eq!((status, &v["status"]), (200, &json!("failed")));
    let mut events = sse(&server, &format!("/api/queue?id={third}"), None).await;
    let e = next_event(&mut events, "article error").await;
    assert_eq!(
        (e.event.as_str(), &data_json(&e)["error"]),
        ("error", &json!("nope"))
    );
    assert_ended(&mut events, "article error end").await;

    // A missing, malformed or unknown id is 400, however it is asked.
    let unknown = "0190a4b2-7c3d-7e8f-9a0b-1c2d3e4f5a6b";
    for query in ["", "?id=", "?id=nope", &format!("?id={unknown}")] {
        let path = format!("/api/queue{query}");
        let r = get(&server, &path).await;
        assert_eq!(r.status(), 400, "{path}");
        let r = get(
            &server,
            &format!("{path}{}ttl=100", if query.is_empty() { "?" } else { "&" }),
        )
        .await;
        assert_eq!(r.status(), 400, "{path} long poll");
        let r = sse_request(&server, &path, None).await;
        assert_eq!(r.status(), 400, "{path} SSE");
    }
    // The unknown id is told apart from a malformed one in the message.
    let r = get(&server, &format!("/api/queue?id={unknown}")).await;
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "bad_task_id");
    let message = v["error"]["message"].as_str().unwrap();
    assert!(message.starts_with("no task has the id"), "{message}");
    let r = get(&server, &format!("/api/queue?id={id}&ttl=abc")).await;
    expect_error(r, 400, "bad_query").await;
}

#[tokio::test]
async fn metrics_count_tasks_by_queue_and_status() {
    let server = Server::start(&[]);
    for i in 0..4 {
        enqueue(&server, "m", &format!("t{i}")).await;
    }
    enqueue(&server, "m2", "elsewhere").await;
    wait_for_metric(&server, "herald_tasks{queue=\"m\",status=\"queued\"}", 4.0).await;
    for _ in 0..2 {
        let w = claim(&server, "m", "wait=0").await;
        complete(&server, &w.id(), Some(&w.token), json!(null)).await;
    }
    let w = claim(&server, "m", "wait=0").await;
    fail(&server, &w.id(), Some(&w.token), "x", false).await;
    let running = claim(&server, "m", "wait=0").await;
    assert_eq!(try_claim(&server, "m", "wait=0").await.status(), 204);

    let series =
        |q: &str, status: &str| format!("herald_tasks{{queue=\"{q}\",status=\"{status}\"}}");
    wait_for_metric(&server, &series("m", "succeeded"), 2.0).await;
    assert_eq!(metric(&server, &series("m", "failed")).await, 1.0);
    assert_eq!(metric(&server, &series("m", "running")).await, 1.0);
    assert_eq!(metric(&server, &series("m", "queued")).await, 0.0);
    assert_eq!(metric(&server, &series("m2", "queued")).await, 1.0);
    assert_eq!(
        metric(&server, "herald_task_claim_wait_seconds_count{queue=\"m\"}").await,
        5.0,
        "every claim, the empty one too"
    );
    assert_eq!(
        metric(&server, "herald_task_run_seconds_count{queue=\"m\"}").await,
        3.0
    );

    cancel(&server, &running.id()).await;
    progress(&server, &running.id(), Some(&running.token), None, None).await;
    wait_for_metric(&server, &series("m", "cancelled"), 1.0).await;
    assert_eq!(metric(&server, &series("m", "running")).await, 0.0);

    // Every family the tasks add says what it is.
    let text = crate::harness::metrics_text(&server).await;
    for family in [
        "herald_tasks",
        "herald_task_run_seconds",
        "herald_task_claim_wait_seconds",
    ] {
        assert!(
            text.contains(&format!("# HELP {family} ")),
            "no HELP for {family}"
        );
    }
}
