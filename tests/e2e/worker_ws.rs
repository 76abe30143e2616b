//! The worker on one WebSocket (`GET /queues/{q}/work`) and the enqueue
//! that waits (`POST /queues/{q}/tasks?wait=`), with a real WebSocket
//! client. Every wait is bounded by [`within`]; the only sleeps let a
//! lease's wall-clock time pass, which is the behaviour under test.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use futures_util::stream::FuturesUnordered;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use crate::harness::{Server, client, metric, temp_dir, wait_for_metric, within};

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A worker socket on `queue` with the query `query`.
async fn work(server: &Server, queue: &str, query: &str) -> Ws {
    let url = server
        .url(&format!("/queues/{queue}/work?{query}"))
        .replacen("http", "ws", 1);
    let (ws, response) = within("worker socket", tokio_tungstenite::connect_async(url))
        .await
        .expect("the worker socket opens");
    assert_eq!(response.status(), 101);
    ws
}

/// The next text frame as JSON (pings are skipped).
async fn next(ws: &mut Ws) -> Value {
    loop {
        match within("a frame", ws.next()).await {
            Some(Ok(Message::Text(t))) => return serde_json::from_str(&t).expect("JSON frame"),
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            other => panic!("expected a text frame, got {other:?}"),
        }
    }
}

/// The next `task` frame: (id, lease token, payload).
async fn task(ws: &mut Ws) -> (String, String, Value) {
    let f = next(ws).await;
    assert_eq!(f["type"], "task", "{f}");
    assert_eq!(f["task"]["status"], "running", "{f}");
    assert!(f["lease"]["expires"].is_string(), "{f}");
    (
        f["task"]["id"].as_str().expect("id").to_owned(),
        f["lease"]["token"].as_str().expect("token").to_owned(),
        f["task"]["payload"].clone(),
    )
}

async fn send(ws: &mut Ws, op: Value) {
    within("send", ws.send(Message::Text(op.to_string().into())))
        .await
        .expect("send");
}

/// How the socket closed: its close code.
async fn closed(ws: &mut Ws) -> CloseCode {
    loop {
        match within("the close", ws.next()).await {
            Some(Ok(Message::Close(Some(f)))) => return f.code,
            Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Text(_))) => continue,
            other => panic!("expected a close frame, got {other:?}"),
        }
    }
}

async fn enqueue(server: &Server, queue: &str, query: &str, payload: &str) -> reqwest::Response {
    client()
        .post(server.url(&format!("/queues/{queue}/tasks{query}")))
        .header("content-type", "application/json")
        .body(payload.to_owned())
        .send()
        .await
        .expect("enqueue")
}

async fn get_task(server: &Server, id: &str) -> Value {
    client()
        .get(server.url(&format!("/tasks/{id}")))
        .send()
        .await
        .expect("get")
        .json()
        .await
        .expect("task JSON")
}

fn tasks_metric(queue: &str, status: &str) -> String {
    format!("herald_tasks{{queue=\"{queue}\",status=\"{status}\"}}")
}

#[tokio::test]
async fn a_socket_holds_count_tasks_and_each_producer_gets_its_own_result_once() {
    let server = Server::start(&[]);
    let mut ws = work(&server, "w4", "count=4&lease=60").await;
    // Six producers, each enqueueing and waiting on one round trip.
    let mut producers: FuturesUnordered<_> = (0..6)
        .map(|n| {
            let url = server.url("/queues/w4/tasks?wait=30");
            async move {
                let r = client()
                    .post(url)
                    .header("content-type", "application/json")
                    .body(json!({ "n": n }).to_string())
                    .send()
                    .await
                    .expect("enqueue and wait");
                let status = r.status().as_u16();
                let location = r.headers()["location"].to_str().expect("ascii").to_owned();
                let body: Value = r.json().await.expect("task JSON");
                (n, status, location, body)
            }
        })
        .collect();
    let producing = tokio::spawn(async move {
        let mut answers = Vec::new();
        while let Some(a) = producers.next().await {
            answers.push(a);
        }
        answers
    });

    let mut held = Vec::new();
    for _ in 0..4 {
        held.push(task(&mut ws).await);
    }
    // Four held, none claimed beyond them: the other two stay queued.
    wait_for_metric(&server, &tasks_metric("w4", "queued"), 2.0).await;
    assert_eq!(metric(&server, &tasks_metric("w4", "running")).await, 4.0);

    // Completes each held task, and each task that comes next, until all
    // six are answered (answers come by ref, in any order).
    let complete = |id: &str, lease: &str, payload: &Value| {
        let result = json!({ "doubled": payload["n"].as_i64().expect("n") * 2 });
        json!({"op":"complete","id":id,"lease":lease,"result":result,"ref":format!("r-{id}")})
    };
    for (id, lease, payload) in &held {
        send(&mut ws, complete(id, lease, payload)).await;
    }
    let mut answered = HashSet::new();
    while answered.len() < 6 {
        let f = next(&mut ws).await;
        match f["type"].as_str() {
            Some("ok") => {
                assert_eq!(f["status"], "succeeded", "{f}");
                let id = f["id"].as_str().expect("id");
                assert_eq!(f["ref"], format!("r-{id}"), "{f}");
                assert!(answered.insert(id.to_owned()), "answered twice: {f}");
            }
            Some("task") => {
                let lease = f["lease"]["token"].as_str().expect("token");
                let id = f["task"]["id"].as_str().expect("id");
                send(&mut ws, complete(id, lease, &f["task"]["payload"])).await;
            }
            _ => panic!("unexpected frame {f}"),
        }
    }
    let answers = within("producers", producing).await.expect("producers");
    assert_eq!(answers.len(), 6);
    let mut ids = HashSet::new();
    for (n, status, location, body) in answers {
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["status"], "succeeded");
        assert_eq!(body["result"], json!({ "doubled": n * 2 }), "{body}");
        assert_eq!(
            location,
            format!("/tasks/{}", body["id"].as_str().expect("id"))
        );
        assert!(ids.insert(body["id"].clone()), "one task per producer");
    }
    assert_eq!(metric(&server, &tasks_metric("w4", "succeeded")).await, 6.0);
    assert_eq!(metric(&server, &tasks_metric("w4", "running")).await, 0.0);
    assert_eq!(metric(&server, &tasks_metric("w4", "queued")).await, 0.0);
}

/// A JSON result reads back alike whether it came over the socket or by
/// `POST /tasks/{id}/complete`: both are kept in the same canonical form.
#[tokio::test]
async fn a_json_result_reads_back_alike_by_socket_and_by_http() {
    let server = Server::start(&[]);
    let raw = r#"{ "b": [1, 2.50], "a": "x" }"#;
    let mut ws = work(&server, "wj", "").await;
    enqueue(&server, "wj", "", "1").await;
    let (by_socket, lease, _) = task(&mut ws).await;
    let frame =
        format!(r#"{{"op":"complete","id":"{by_socket}","lease":"{lease}","result":{raw}}}"#);
    within("send", ws.send(Message::Text(frame.into())))
        .await
        .expect("send");
    assert_eq!(next(&mut ws).await["status"], "succeeded");
    drop(ws);

    enqueue(&server, "wj", "", "2").await;
    let claimed: Value = client()
        .post(server.url("/queues/wj/claim?wait=5"))
        .send()
        .await
        .expect("claim")
        .json()
        .await
        .expect("claim JSON");
    let by_http = claimed["task"]["id"].as_str().expect("id").to_owned();
    let done = client()
        .post(server.url(&format!("/tasks/{by_http}/complete")))
        .header(
            "herald-lease",
            claimed["lease"]["token"].as_str().expect("token"),
        )
        .header("content-type", "application/json")
        .body(raw)
        .send()
        .await
        .expect("complete");
    assert_eq!(done.status(), 200);

    let result_text = |task: String| {
        let at = task.find("\"result\":").expect("a result") + "\"result\":".len();
        let end = task[at..].find(",\"started_at\"").expect("the next key");
        task[at..at + end].to_owned()
    };
    let get = |id: String| {
        let url = server.url(&format!("/tasks/{id}"));
        async move {
            client()
                .get(url)
                .send()
                .await
                .expect("get")
                .text()
                .await
                .expect("text")
        }
    };
    let socket = result_text(get(by_socket).await);
    assert_eq!(socket, result_text(get(by_http).await));
    assert_eq!(socket, r#"{"a":"x","b":[1,2.5]}"#);
}

#[tokio::test]
async fn progress_extends_the_lease_and_text_results_are_text() {
    let server = Server::start(&[]);
    let mut ws = work(&server, "wp", "lease=5").await;
    enqueue(&server, "wp", "", "1").await;
    let (id, lease, _) = task(&mut ws).await;
    let before = get_task(&server, &id).await["lease_expires_at"].clone();
    // Let the clock move, so the extended lease ends visibly later.
    tokio::time::sleep(Duration::from_millis(20)).await;
    send(
        &mut ws,
        json!({"op":"progress","id":id,"lease":lease,"progress":0.5,"message":"half","ref":1}),
    )
    .await;
    let ok = next(&mut ws).await;
    assert_eq!(ok, json!({"type":"ok","ref":1,"id":id,"status":"running"}));
    let after = get_task(&server, &id).await;
    assert_eq!(after["progress"], 0.5);
    assert_eq!(after["message"], "half");
    let (before, after) = (
        before.as_str().expect("expiry"),
        after["lease_expires_at"].as_str().expect("expiry"),
    );
    assert!(after > before, "{after} is later than {before}");
    send(
        &mut ws,
        json!({"op":"complete","id":id,"lease":lease,"text":"plain words"}),
    )
    .await;
    assert_eq!(
        next(&mut ws).await,
        json!({"type":"ok","id":id,"status":"succeeded"})
    );
    assert_eq!(get_task(&server, &id).await["result"], "plain words");
}

#[tokio::test]
async fn a_lost_lease_or_a_cancelled_task_is_409_and_frees_the_slot() {
    let server = Server::start(&[]);
    let mut ws = work(&server, "wc", "count=1").await;
    enqueue(&server, "wc", "", "1").await;
    let (id, lease, _) = task(&mut ws).await;
    send(
        &mut ws,
        json!({"op":"complete","id":id,"lease":"not-the-lease","result":1,"ref":"a"}),
    )
    .await;
    let f = next(&mut ws).await;
    assert_eq!(f["type"], "error");
    assert_eq!(f["ref"], "a");
    assert_eq!(f["status"], 409);
    assert_eq!(f["error"]["code"], "conflict");
    // The lease the socket was given still holds the task.
    let cancel = client()
        .delete(server.url(&format!("/tasks/{id}")))
        .send()
        .await
        .expect("cancel");
    assert_eq!(cancel.status(), 202);
    send(
        &mut ws,
        json!({"op":"progress","id":id,"lease":lease,"progress":0.1,"ref":"b"}),
    )
    .await;
    let f = next(&mut ws).await;
    assert_eq!(
        (f["type"].clone(), f["status"].clone()),
        (json!("error"), json!(409)),
        "{f}"
    );
    assert_eq!(f["ref"], "b");
    assert_eq!(get_task(&server, &id).await["status"], "cancelled");
    // The slot is free again: the next task comes to this count=1 socket.
    enqueue(&server, "wc", "", "2").await;
    let (_, _, payload) = task(&mut ws).await;
    assert_eq!(payload, 2);
}

#[tokio::test]
async fn malformed_frames_get_error_frames_and_binary_closes() {
    let server = Server::start(&[]);
    let mut ws = work(&server, "wm", "").await;
    let unknown = "01a237a3-85ef-7261-b987-73e17416c1b4";
    for (frame, status, code, reference) in [
        ("not json".to_owned(), 400, "bad_request", Value::Null),
        (
            json!({"op":"nap","id":"x","lease":"l","ref":5}).to_string(),
            400,
            "bad_request",
            json!(5),
        ),
        (
            json!({"op":"complete","id":"x","lease":"l","ref":6}).to_string(),
            400,
            "bad_request",
            json!(6),
        ),
        (
            json!({"op":"fail","id":"not-an-id","lease":"l","error":"e","ref":7}).to_string(),
            400,
            "bad_task_id",
            json!(7),
        ),
        (
            json!({"op":"fail","id":unknown,"lease":"l","error":"e","ref":8}).to_string(),
            404,
            "not_found",
            json!(8),
        ),
    ] {
        within("send", ws.send(Message::Text(frame.clone().into())))
            .await
            .expect("send");
        let f = next(&mut ws).await;
        assert_eq!(f["type"], "error", "{frame}: {f}");
        assert_eq!(f["status"], status, "{frame}: {f}");
        assert_eq!(f["error"]["code"], code, "{frame}: {f}");
        assert_eq!(
            f.get("ref").cloned().unwrap_or(Value::Null),
            reference,
            "{frame}"
        );
    }
    // Still open and serving.
    enqueue(&server, "wm", "", "1").await;
    task(&mut ws).await;
    within("send", ws.send(Message::Binary(vec![1, 2, 3].into())))
        .await
        .expect("send");
    assert_eq!(closed(&mut ws).await, CloseCode::Unsupported);
    // A bad query is refused before the upgrade.
    for query in ["count=0", "count=257", "lease=0", "lease=x"] {
        let r = client()
            .get(server.url(&format!("/queues/wm/work?{query}")))
            .send()
            .await
            .expect("get");
        assert_eq!(r.status(), 400, "{query}");
    }
}

#[tokio::test]
async fn tasks_of_a_worker_that_closes_are_claimed_again_after_their_leases() {
    let server = Server::start(&[]);
    let gauge = "herald_worker_sockets";
    let mut ws = work(&server, "wl", "count=2&lease=0.3").await;
    wait_for_metric(&server, gauge, 1.0).await;
    for n in 0..2 {
        enqueue(&server, "wl", "?backoff=none", &n.to_string()).await;
    }
    let first: HashSet<String> = [task(&mut ws).await.0, task(&mut ws).await.0].into();
    ws.close(None).await.expect("close");
    drop(ws);
    // The socket's claims and tasks ended with it.
    wait_for_metric(&server, gauge, 0.0).await;

    let mut again = work(&server, "wl", "count=2&lease=30").await;
    let mut second = HashMap::new();
    for _ in 0..2 {
        let (id, lease, _) = task(&mut again).await;
        second.insert(id, lease);
    }
    assert_eq!(first, second.keys().cloned().collect::<HashSet<_>>());
    for (id, lease) in &second {
        assert_eq!(get_task(&server, id).await["attempts"], 2);
        send(
            &mut again,
            json!({"op":"fail","id":id,"lease":lease,"error":"no","retry":false}),
        )
        .await;
        let f = next(&mut again).await;
        assert_eq!(
            (f["type"].clone(), f["status"].clone()),
            (json!("ok"), json!("failed"))
        );
    }
    assert_eq!(metric(&server, &tasks_metric("wl", "failed")).await, 2.0);
}

#[tokio::test]
async fn enqueue_wait_answers_200_with_the_result_or_408_with_the_task() {
    let server = Server::start(&[]);
    // Nobody works: 408, the body is the task, which stays queued.
    let r = enqueue(&server, "we", "?wait=0", "1").await;
    assert_eq!(r.status(), 408);
    let location = r.headers()["location"].to_str().expect("ascii").to_owned();
    let t: Value = r.json().await.expect("task");
    assert_eq!(t["status"], "queued");
    assert_eq!(
        location,
        format!("/tasks/{}", t["id"].as_str().expect("id"))
    );
    // A bad wait enqueues nothing.
    let r = enqueue(&server, "we", "?wait=soon", "2").await;
    assert_eq!(r.status(), 400);
    assert_eq!(metric(&server, &tasks_metric("we", "queued")).await, 1.0);

    // A keyed enqueue that times out, then its replay after the worker.
    let keyed = |wait: &str| {
        client()
            .post(server.url(&format!("/queues/we/tasks?wait={wait}")))
            .header("idempotency-key", "k1")
            .body("keyed")
    };
    let r = keyed("0").send().await.expect("enqueue");
    assert_eq!(r.status(), 408);
    let keyed_id = r.json::<Value>().await.expect("task")["id"].clone();

    let mut ws = work(&server, "we", "count=1").await;
    let producer = tokio::spawn({
        let url = server.url("/queues/we/tasks?wait=30");
        async move {
            let r = client().post(url).body("3").send().await.expect("enqueue");
            (r.status().as_u16(), r.json::<Value>().await.expect("task"))
        }
    });
    let mut done = 0;
    while done < 3 {
        let (id, lease, payload) = task(&mut ws).await;
        send(
            &mut ws,
            json!({"op":"complete","id":id,"lease":lease,"text":format!("did {}", payload.as_str().unwrap_or("?"))}),
        )
        .await;
        let f = next(&mut ws).await;
        assert_eq!(f["type"], "ok", "{f}");
        done += 1;
    }
    let (status, body) = within("producer", producer).await.expect("producer");
    assert_eq!(status, 200);
    assert_eq!(body["result"], "did 3");
    let r = keyed("5").send().await.expect("replay");
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["idempotent-replayed"], "true");
    let t: Value = r.json().await.expect("task");
    assert_eq!(
        (t["id"].clone(), t["result"].clone()),
        (keyed_id, json!("did keyed"))
    );
}

#[tokio::test]
async fn a_crash_loses_no_acknowledged_completion_and_every_task_finishes_once() {
    const TASKS: usize = 30;
    let dir = temp_dir();
    let mut server = Server::start_in(dir.path(), &[]);
    let mut ids = Vec::new();
    for n in 0..TASKS {
        let r = enqueue(&server, "wd", "?backoff=none", &n.to_string()).await;
        assert_eq!(r.status(), 201);
        ids.push(r.json::<Value>().await.expect("task")["id"].clone());
    }
    // Short leases, so what the crashed socket held comes back soon.
    let mut ws = work(&server, "wd", "count=4&lease=0.5").await;
    let mut acked = HashSet::new();
    let mut results = HashMap::new();
    while acked.len() < TASKS / 2 {
        let f = next(&mut ws).await;
        match f["type"].as_str() {
            Some("task") => {
                let id = f["task"]["id"].as_str().expect("id").to_owned();
                let result = json!({ "from": id });
                results.insert(id.clone(), result.clone());
                send(
                    &mut ws,
                    json!({"op":"complete","id":id,"lease":f["lease"]["token"],"result":result}),
                )
                .await;
            }
            Some("ok") => {
                acked.insert(f["id"].as_str().expect("id").to_owned());
            }
            _ => {}
        }
    }
    server.crash();
    drop(ws);
    server.start_again();

    // What was committed before the crash, acknowledged or not.
    let mut finished = HashSet::new();
    for id in &ids {
        let id = id.as_str().expect("id");
        if get_task(&server, id).await["status"] == "succeeded" {
            finished.insert(id.to_owned());
        }
    }
    assert!(
        acked.is_subset(&finished),
        "no acknowledged completion is lost"
    );
    let mut ws = work(&server, "wd", "count=4&lease=30").await;
    while finished.len() < TASKS {
        let f = next(&mut ws).await;
        match f["type"].as_str() {
            Some("task") => {
                let id = f["task"]["id"].as_str().expect("id").to_owned();
                assert!(!acked.contains(&id), "an acknowledged task came back: {id}");
                send(
                    &mut ws,
                    json!({"op":"complete","id":id,"lease":f["lease"]["token"],"result":{"from":id}}),
                )
                .await;
            }
            Some("ok") => {
                let id = f["id"].as_str().expect("id").to_owned();
                assert!(finished.insert(id.clone()), "finished twice: {id}");
            }
            _ => panic!("unexpected frame {f}"),
        }
    }
    for id in &ids {
        let t = get_task(&server, id.as_str().expect("id")).await;
        assert_eq!(t["status"], "succeeded", "{t}");
        assert_eq!(t["result"], json!({ "from": id }), "{t}");
    }
    for id in &acked {
        assert_eq!(get_task(&server, id).await["result"], results[id]);
    }
}

#[tokio::test]
async fn the_client_worker_uses_the_socket_and_enqueue_and_wait_gets_the_result() {
    use herald_client::{Client, Payload, WaitOutcome, Worker};
    let server = Server::start(&[]);
    let c = Client::new(server.url("")).expect("client");
    // Nobody works yet: the wait runs out with the task as it is.
    let how = c
        .enqueue_and_wait("wk", Payload::Text("0".into()), Duration::ZERO)
        .await
        .expect("enqueue");
    let WaitOutcome::TimedOut(Some(first)) = how else {
        panic!("{how:?}")
    };
    assert_eq!(first.status, "queued");

    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let run = tokio::spawn(Worker::new(c.clone(), "wk").concurrency(2).run(
        |task, progress| async move {
            progress.report(Some(0.5), None).await.ok();
            Ok(Payload::Text(format!(
                "did {}",
                task.payload.as_str().unwrap_or("?")
            )))
        },
        async {
            let _ = stop_rx.await;
        },
    ));
    wait_for_metric(&server, "herald_worker_sockets", 1.0).await;
    for n in 1..4 {
        let how = c
            .enqueue_and_wait("wk", Payload::Text(n.to_string()), Duration::from_secs(30))
            .await
            .expect("enqueue and wait");
        let WaitOutcome::Finished(t) = how else {
            panic!("{how:?}")
        };
        assert_eq!(t.result, Some(json!(format!("did {n}"))));
    }
    let _ = stop_tx.send(());
    within("the worker stops", run)
        .await
        .expect("run")
        .expect("ok");
    wait_for_metric(&server, "herald_worker_sockets", 0.0).await;
    assert_eq!(get_task(&server, &first.id).await["result"], "did 0");
}
