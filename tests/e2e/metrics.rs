//! `/metrics` as Prometheus reads it (issue 16, point 6): every family
//! described, latencies as histograms, the build, the store's footprint,
//! every answer counted by route on both HTTP stacks; and `/healthz`
//! telling an unreachable store from a full one.

use std::collections::{BTreeMap, BTreeSet};

use reqwest::StatusCode;
use serde_json::Value;

use crate::cluster::Redis;
use crate::harness::{
    PATIENCE, Raw, Server, client, metric, metrics_text, publish, temp_dir, wait_for_metric, within,
};

/// What the text says of each family: its `# TYPE`, whether it has a
/// `# HELP`, and the names of its samples.
#[derive(Debug, Default)]
struct Family {
    kind: Option<String>,
    help: bool,
    samples: BTreeSet<String>,
}

/// Parses the whole exposition text into families. A sample belongs to the
/// family whose name it is, or — for `_bucket`, `_sum`, `_count` — to the
/// histogram it extends.
fn families(text: &str) -> BTreeMap<String, Family> {
    let mut out: BTreeMap<String, Family> = BTreeMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let name = rest.split(' ').next().unwrap();
            out.entry(name.to_owned()).or_default().help = true;
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap();
            out.entry(name.to_owned()).or_default().kind = Some(kind.to_owned());
        }
    }
    for line in text.lines() {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let name = line.split(['{', ' ']).next().unwrap();
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .filter_map(|s| name.strip_suffix(s))
            .find(|base| {
                out.get(*base)
                    .is_some_and(|f| f.kind.as_deref() == Some("histogram"))
            })
            .unwrap_or(name);
        out.entry(family.to_owned())
            .or_default()
            .samples
            .insert(name.to_owned());
    }
    out
}

/// Makes every kind of family herald has record something: a publish, a
/// poll on the direct path, a task claimed (with a wait) and finished.
async fn exercise(server: &Server) {
    publish(server, "m", "one").await;
    let polled = client().get(server.url("/topics/m")).send().await.unwrap();
    assert_eq!(polled.status(), 200);
    let enqueued = client()
        .post(server.url("/queues/q/tasks"))
        .body("work")
        .send()
        .await
        .unwrap();
    assert_eq!(enqueued.status(), 201);
    let claimed: Value = client()
        .post(server.url("/queues/q/claim?wait=1"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = claimed["task"]["id"].as_str().unwrap();
    let token = claimed["lease"]["token"].as_str().unwrap();
    let done = client()
        .post(server.url(&format!("/tasks/{id}/complete")))
        .header("Herald-Lease", token)
        .json(&serde_json::json!({"ok": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(done.status(), 200);
}

#[tokio::test]
async fn every_family_has_help_and_type_and_latencies_are_histograms() {
    for store in ["memory", "durable"] {
        let dir = temp_dir();
        let server = match store {
            "memory" => Server::start(&[]),
            _ => Server::start_in(dir.path(), &[]),
        };
        exercise(&server).await;
        let text = metrics_text(&server).await;
        let families = families(&text);
        for (name, f) in &families {
            assert!(f.help, "{store}: {name} has no # HELP in:\n{text}");
            assert!(
                f.kind.is_some(),
                "{store}: {name} has no # TYPE in:\n{text}"
            );
            assert_ne!(
                f.kind.as_deref(),
                Some("summary"),
                "{store}: {name} is a summary, not a histogram"
            );
        }
        let histograms: Vec<&String> = families
            .iter()
            .filter(|(_, f)| f.kind.as_deref() == Some("histogram"))
            .map(|(n, _)| n)
            .collect();
        for name in [
            "herald_store_seconds",
            "herald_task_run_seconds",
            "herald_task_claim_wait_seconds",
        ] {
            assert!(
                histograms.contains(&&name.to_owned()),
                "{store}: {name} is not a histogram in:\n{text}"
            );
        }
        for name in histograms {
            let samples = &families[name].samples;
            for part in ["_bucket", "_sum", "_count"] {
                assert!(
                    samples.contains(&format!("{name}{part}")),
                    "{store}: {name} has no {part} in:\n{text}"
                );
            }
            // The bounds run from 100 µs to 30 s, then +Inf.
            for le in ["0.0001", "30", "+Inf"] {
                let bucket = format!("{name}_bucket{{");
                assert!(
                    text.lines()
                        .any(|l| l.starts_with(&bucket) && l.contains(&format!("le=\"{le}\""))),
                    "{store}: {name} has no le=\"{le}\" bucket in:\n{text}"
                );
            }
        }
        let version = env!("CARGO_PKG_VERSION");
        assert_eq!(
            metric(
                &server,
                &format!("herald_build_info{{version=\"{version}\"}}")
            )
            .await,
            1.0
        );
    }
}

#[tokio::test]
async fn topics_and_store_size_are_the_stores() {
    let server = Server::start(&[]);
    for topic in ["a", "b", "c"] {
        publish(&server, topic, "x").await;
    }
    assert_eq!(metric(&server, "herald_topics").await, 3.0);
    // The memory store cannot say honestly how much it holds: no series.
    let text = metrics_text(&server).await;
    assert!(!text.contains("herald_store_bytes"), "{text}");

    let dir = temp_dir();
    let server = Server::start_in(dir.path(), &[]);
    for topic in ["a", "b"] {
        publish(&server, topic, &"x".repeat(10_000)).await;
    }
    assert_eq!(metric(&server, "herald_topics").await, 2.0);
    let bytes = metric(&server, "herald_store_bytes").await;
    let on_disk: u64 = ["herald.db", "herald.db-wal"]
        .iter()
        .filter_map(|f| std::fs::metadata(dir.path().join(f)).ok())
        .map(|m| m.len())
        .sum();
    assert!(
        bytes >= 20_000.0,
        "the events are in the file or its WAL: {bytes}"
    );
    assert!(bytes <= on_disk as f64, "{bytes} > {on_disk} on disk");
}

fn responses(route: &str, status: u16) -> String {
    format!("herald_http_responses_total{{route=\"{route}\",status=\"{status}\"}}")
}

/// The count of `series`, 0 while it has never been answered.
async fn count(server: &Server, series: &str) -> f64 {
    let text = metrics_text(server).await;
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|r| r.strip_prefix(' ')))
        .map_or(0.0, |v| v.trim().parse().unwrap())
}

#[tokio::test]
async fn every_answer_is_counted_by_route_pattern_on_both_stacks() {
    let server = Server::start(&[]);
    let direct = "herald_subscribe_requests_total{stack=\"direct\"}";
    // hyper: publishes, a 404, a 405, a task that does not exist.
    publish(&server, "room-1", "x").await;
    publish(&server, "room-2", "x").await;
    let c = client();
    let missing = c.get(server.url("/nowhere/at/all")).send().await.unwrap();
    assert_eq!(missing.status(), 404);
    let wrong = c.put(server.url("/topics/room-1")).send().await.unwrap();
    assert_eq!(wrong.status(), 405);
    let task = c.get(server.url("/tasks/0190a0b0-0000-7000-8000-000000000000/events"));
    let task = task.send().await.unwrap().status().as_u16();
    assert!(matches!(task, 400 | 404), "{task}");
    // The direct path (each on a fresh connection: hyper keeps those it
    // served): polls, answered whole, a bad query, and an SSE stream,
    // counted with the 200 it opened with while still open.
    for topic in ["room-1", "room-2"] {
        let polled = client()
            .get(server.url(&format!("/topics/{topic}")))
            .send()
            .await;
        assert_eq!(polled.unwrap().status(), 200);
    }
    let bad = client()
        .get(server.url("/topics/room-1?limit=nope"))
        .send()
        .await;
    assert_eq!(bad.unwrap().status(), 400);
    let mut sse = Raw::request(
        &server,
        "GET /topics/room-1 HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n",
    )
    .await;
    sse.until("200 OK").await;
    assert_eq!(
        metric(&server, direct).await,
        4.0,
        "read by the direct path"
    );

    assert_eq!(
        count(&server, &responses("/topics/{topic}", 201)).await,
        2.0
    );
    assert_eq!(
        count(&server, &responses("/topics/{topic}", 405)).await,
        1.0
    );
    assert_eq!(
        count(&server, &responses("/topics/{topic}", 400)).await,
        1.0
    );
    assert_eq!(
        count(&server, &responses("/tasks/{id}/events", task)).await,
        1.0
    );
    assert_eq!(count(&server, &responses("other", 404)).await, 1.0);
    wait_for_metric(&server, &responses("/topics/{topic}", 200), 3.0).await;
    // Each scrape is answered too; the one being read is not yet.
    let before = count(&server, &responses("/metrics", 200)).await;
    assert!(before >= 1.0);
    // Routes, never raw paths: no topic name or task id in any label.
    let text = metrics_text(&server).await;
    for raw in ["room-1", "room-2", "nowhere", "0190a0b0"] {
        assert!(!text.contains(raw), "{raw} in a label:\n{text}");
    }
    drop(sse);
}

#[tokio::test]
async fn healthz_says_when_redis_cannot_be_reached() {
    let Some(redis) = Redis::start() else { return };
    let server = Server::start_with(&redis.url(), &[]);
    let ok = client().get(server.url("/healthz")).send().await.unwrap();
    assert_eq!(ok.status(), 200);
    assert_eq!(ok.json::<Value>().await.unwrap()["status"], "ok");
    drop(redis);
    let refused = within("healthz with Redis gone", async {
        client().get(server.url("/healthz")).send().await.unwrap()
    })
    .await;
    assert_eq!(refused.status(), StatusCode::SERVICE_UNAVAILABLE);
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["error"]["code"], "store_unreachable", "{body}");
    let message = body["error"]["message"].as_str().unwrap().to_lowercase();
    for internal in ["redis", "127.0.0.1", "refused", "io error"] {
        assert!(!message.contains(internal), "{internal:?} in {message:?}");
    }
    // `/metrics` still answers, without the store's gauges.
    let text = within("metrics with Redis gone", metrics_text(&server)).await;
    assert!(text.contains("herald_http_responses_total"), "{text}");
    assert!(!text.contains("herald_topics "), "{text}");
}

/// A full disk is made with `--max-db-size`: SQLite refuses a write past it
/// with SQLITE_FULL, the very error a full file system gives, so the path
/// from the write to `/healthz` is the one a real full disk takes. (Filling
/// a real file system would need a small one mounted for the test.)
#[tokio::test]
async fn healthz_says_when_the_durable_store_has_no_room() {
    let dir = temp_dir();
    let quota = ["--max-db-size", "262144", "--retention-events", "100000"];
    let mut server = Server::start_in(dir.path(), &quota);
    let healthy = client().get(server.url("/healthz")).send().await.unwrap();
    assert_eq!(healthy.status(), 200);
    let chunk = "q".repeat(8000);
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let r = client()
            .post(server.url("/topics/full"))
            .body(chunk.clone())
            .send()
            .await
            .unwrap();
        if r.status() == 503 {
            break;
        }
        assert_eq!(r.status(), 201);
        assert!(
            tokio::time::Instant::now() < deadline,
            "the quota never bit"
        );
    }
    let full = client().get(server.url("/healthz")).send().await.unwrap();
    assert_eq!(full.status(), StatusCode::SERVICE_UNAVAILABLE);
    let body: Value = full.json().await.unwrap();
    assert_eq!(body["error"]["code"], "disk_full", "{body}");
    let message = body["error"]["message"].as_str().unwrap().to_lowercase();
    let dir_text = dir.path().display().to_string().to_lowercase();
    for internal in ["sqlite", "database or disk", dir_text.as_str()] {
        assert!(!message.contains(internal), "{internal:?} in {message:?}");
    }
    // Room again (no quota): healthy from the start.
    server.stop();
    let server = Server::start_in(dir.path(), &["--retention-events", "100000"]);
    let healthy = client().get(server.url("/healthz")).send().await.unwrap();
    assert_eq!(healthy.status(), 200);
}
