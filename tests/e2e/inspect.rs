//! Looking inside (issue 16): `GET /topics` paged by name, with this node's
//! subscribers; `GET /queues` and `GET /queues/{queue}/tasks` paged by age;
//! on the memory, the durable and the Redis store; refused without the `admin` scope.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::harness::{PATIENCE, Server, temp_dir, wait_for_metric};

/// Publishes one event to each of `topics` in one NDJSON batch.
async fn publish_each(server: &Server, topics: &[String]) {
    crate::harness::publish_batch(server, topics.iter().map(|t| (t.as_str(), "x"))).await;
}

async fn get(server: &Server, path: &str) -> Value {
    let r = server
        .client()
        .get(server.url(path))
        .send()
        .await
        .expect("get");
    assert_eq!(r.status(), 200, "GET {path}");
    r.json().await.expect("json")
}

fn names(page: &Value) -> Vec<String> {
    page["topics"]
        .as_array()
        .expect("topics")
        .iter()
        .map(|t| t["topic"].as_str().expect("name").to_owned())
        .collect()
}

/// Every page of `prefix`, `limit` at a time, following `next`.
async fn all_pages(server: &Server, prefix: &str, limit: usize) -> Vec<Vec<String>> {
    let mut pages = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let mut path = format!("/topics?prefix={prefix}&limit={limit}");
        if let Some(a) = &after {
            path.push_str(&format!("&after={a}"));
        }
        let page = get(server, &path).await;
        pages.push(names(&page));
        match page.get("next") {
            Some(next) => after = Some(next.as_str().expect("next").to_owned()),
            None => return pages,
        }
    }
}

async fn lists_topics_by_name_in_pages(server: Server) {
    let mut topics: Vec<String> = (0..25).map(|i| format!("room.{i:02}")).collect();
    topics.push("other".into());
    publish_each(&server, &topics).await;
    publish_each(&server, &["room.03".to_owned()]).await;

    let pages = all_pages(&server, "room.", 10).await;
    assert_eq!(pages.iter().map(Vec::len).collect::<Vec<_>>(), [10, 10, 5]);
    let flat: Vec<String> = pages.concat();
    assert_eq!(flat, topics[..25].to_vec(), "by name, each once");

    let page = get(&server, "/topics?prefix=room.03").await;
    let t = &page["topics"][0];
    assert_eq!(t["topic"], "room.03");
    assert_eq!(t["events"], 2);
    assert!(t["first_id"].as_str().unwrap() < t["last_id"].as_str().unwrap());
    assert!(t["last_time"].as_str().unwrap().ends_with('Z'));
    assert_eq!(t["subscribers"], 0);
    assert!(page.get("next").is_none(), "one page: no next");

    // No prefix: every topic (and the default page holds them all).
    let all = get(&server, "/topics").await;
    assert_eq!(names(&all).len(), 26);
    assert_eq!(names(&all)[0], "other");

    for bad in ["limit=0", "limit=1001", "limit=ten"] {
        let r = server
            .client()
            .get(server.url(&format!("/topics?{bad}")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::BAD_REQUEST, "{bad}");
    }

    // Two open SSE streams on room.07 are its subscribers on this node.
    let mut streams = Vec::new();
    for _ in 0..2 {
        let r = server
            .client()
            .get(server.url("/topics/room.07"))
            .header("accept", "text/event-stream")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        streams.push(r);
    }
    wait_for_metric(&server, "herald_subscriptions{transport=\"sse\"}", 2.0).await;
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let page = get(&server, "/topics?prefix=room.07").await;
        if page["topics"][0]["subscribers"] == json!(2) {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{page}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(streams);
    wait_for_metric(&server, "herald_subscriptions{transport=\"sse\"}", 0.0).await;
}

#[tokio::test]
async fn lists_topics_on_the_memory_store() {
    lists_topics_by_name_in_pages(Server::start(&[])).await;
}

#[tokio::test]
async fn lists_topics_on_the_durable_store() {
    let dir = temp_dir();
    lists_topics_by_name_in_pages(Server::start_in(dir.path(), &[])).await;
}

async fn post(server: &Server, path: &str, body: Value) -> Value {
    let r = server
        .client()
        .post(server.url(path))
        .json(&body)
        .send()
        .await
        .expect("post");
    assert!(r.status().is_success(), "POST {path}: {}", r.status());
    r.json().await.expect("json")
}

async fn lists_queues_and_their_tasks(server: Server) {
    let empty = get(&server, "/queues").await;
    assert_eq!(empty, json!({"queues": []}));
    let mut ids = Vec::new();
    for i in 0..7 {
        let task = post(&server, "/queues/jobs/tasks", json!({ "n": i })).await;
        ids.push(task["id"].as_str().unwrap().to_owned());
    }
    post(&server, "/queues/other/tasks", json!({})).await;
    // The first is claimed and completed; the second is claimed and runs.
    for done in [true, false] {
        let claimed = post(&server, "/queues/jobs/claim?wait=0", json!({})).await;
        if done {
            let id = claimed["task"]["id"].as_str().unwrap();
            let token = claimed["lease"]["token"].as_str().unwrap();
            let r = server
                .client()
                .post(server.url(&format!("/tasks/{id}/complete")))
                .header("Herald-Lease", token)
                .json(&json!({"ok": true}))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
        }
    }

    let queues = get(&server, "/queues").await;
    let jobs = &queues["queues"][0];
    assert_eq!(jobs["queue"], "jobs");
    assert_eq!(
        (&jobs["queued"], &jobs["running"], &jobs["succeeded"]),
        (&json!(5), &json!(1), &json!(1))
    );
    assert_eq!(
        (&jobs["failed"], &jobs["cancelled"]),
        (&json!(0), &json!(0))
    );
    assert!(jobs["oldest_queued_ms"].as_u64().is_some(), "{jobs}");
    assert_eq!(queues["queues"][1]["queue"], "other");

    // Every task, oldest first, three at a time.
    let mut seen = Vec::new();
    let mut path = "/queues/jobs/tasks?limit=3".to_owned();
    loop {
        let page = get(&server, &path).await;
        let tasks = page["tasks"].as_array().unwrap();
        seen.extend(tasks.iter().map(|t| t["id"].as_str().unwrap().to_owned()));
        match page.get("next") {
            Some(next) => {
                path = format!(
                    "/queues/jobs/tasks?limit=3&after={}",
                    next.as_str().unwrap()
                )
            }
            None => break,
        }
    }
    assert_eq!(seen, ids);

    // The queued ones only, with their positions, two at a time.
    let first = get(&server, "/queues/jobs/tasks?status=queued&limit=2").await;
    let tasks = first["tasks"].as_array().unwrap();
    assert_eq!(tasks.len(), 2);
    assert_eq!(tasks[0]["id"], ids[2].as_str());
    assert_eq!(
        (&tasks[0]["position"], &tasks[1]["position"]),
        (&json!(1), &json!(2))
    );
    let next = first["next"].as_str().unwrap();
    let second = get(
        &server,
        &format!("/queues/jobs/tasks?status=queued&limit=2&after={next}"),
    )
    .await;
    assert_eq!(second["tasks"][0]["id"], ids[4].as_str());
    assert_eq!(second["tasks"][0]["position"], 3);
    let done = get(&server, "/queues/jobs/tasks?status=succeeded").await;
    assert_eq!(done["tasks"][0]["id"], ids[0].as_str());
    assert!(done.get("next").is_none());

    // `after` must name a task of the queue listed.
    let elsewhere = format!("after={}", ids[0]);
    for bad in ["status=done", "limit=0", "after=nope", elsewhere.as_str()] {
        let r = server
            .client()
            .get(server.url(&format!("/queues/other/tasks?{bad}")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::BAD_REQUEST, "{bad}");
    }
}

#[tokio::test]
async fn lists_queues_on_the_memory_store() {
    lists_queues_and_their_tasks(Server::start(&[])).await;
}

#[tokio::test]
async fn lists_queues_on_the_durable_store() {
    let dir = temp_dir();
    lists_queues_and_their_tasks(Server::start_in(dir.path(), &[])).await;
}

#[tokio::test]
async fn lists_topics_and_queues_on_redis() {
    let Some(redis) = crate::cluster::Redis::start() else {
        return;
    };
    lists_topics_by_name_in_pages(Server::start_with(&redis.url(), &[])).await;
    let redis = crate::cluster::Redis::start().expect("a second redis-server");
    lists_queues_and_their_tasks(Server::start_with(&redis.url(), &[])).await;
}

#[tokio::test]
async fn only_admins_may_look_inside() {
    let server = crate::auth::server(&[]);
    let plain = crate::auth::token(json!({"publish": ["*"], "subscribe": ["*"]}));
    let admin = crate::auth::token(json!({"admin": true}));
    let ask = |token: Option<String>| {
        let mut request = server.client().get(server.url("/topics"));
        if let Some(t) = token {
            request = request.bearer_auth(t);
        }
        request.send()
    };
    assert_eq!(ask(None).await.unwrap().status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        ask(Some(plain)).await.unwrap().status(),
        StatusCode::FORBIDDEN
    );
    assert_eq!(ask(Some(admin)).await.unwrap().status(), StatusCode::OK);
    for path in ["/queues", "/queues/jobs/tasks"] {
        let plain = crate::auth::token(json!({"enqueue": ["*"], "work": ["*"]}));
        let admin = crate::auth::token(json!({"admin": true}));
        let ask = |token: String| {
            server
                .client()
                .get(server.url(path))
                .bearer_auth(token)
                .send()
        };
        assert_eq!(
            ask(plain).await.unwrap().status(),
            StatusCode::FORBIDDEN,
            "{path}"
        );
        assert_eq!(ask(admin).await.unwrap().status(), StatusCode::OK, "{path}");
    }
}
