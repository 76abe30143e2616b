//! The `longpoll` mode: many long polls parked on one topic, then one
//! publish, to measure how fast the server wakes every one of them.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;

use crate::metrics::{metric, wait_metric};
use crate::net::{Answer, Target, connect, http, read_answer};
use crate::procfs::CpuMark;
use crate::publish::{epoch_us, publish_body};
use crate::report::{latency_json, ms, round};
use crate::stamp;
use crate::subscriber::Latencies;

/// One parked poll: its answer once woken, and its connection, kept open
/// until every answer is in so no close competes with the wake being
/// measured.
type Poll = JoinHandle<std::io::Result<(Answer, TcpStream)>>;

/// Parks `n` long polls on `topic`, waits until the server counts them all,
/// publishes one event and times each poll's answer from that publish.
pub async fn longpoll(t: &Target, n: usize, topic: &str, concurrency: usize) -> (Value, bool) {
    let client = http();
    let cursor = head_cursor(&client, t, topic).await;
    let gauge = "herald_subscriptions{transport=\"long-poll\"}";
    let gauge0 = metric(&client, t, gauge).await;

    let start = Instant::now();
    let tasks = park_all(t, n, topic, &cursor, concurrency);
    let parked = wait_metric(&client, t, gauge, Duration::from_secs(60), |v| {
        v >= gauge0 + n as f64
    })
    .await;
    let park_s = start.elapsed().as_secs_f64();

    let cpu = CpuMark::now();
    let t0 = epoch_us();
    let r = client
        .post(format!("{}/topics/{topic}", t.base))
        .body(publish_body(0))
        .send()
        .await
        .expect("publish");
    let publish_status = r.status().as_u16();
    let publish_us = epoch_us().saturating_sub(t0);
    let (lats, errors, statuses) = collect(tasks, t0).await;
    let cpu_run = cpu.since();
    let ok = parked.is_some() && errors == 0 && publish_status == 201;
    let v = json!({
        "mode": "longpoll",
        "polls": n,
        "parked": parked.is_some(),
        "park_s": round(park_s, 3),
        "woken": lats.arrival.len(),
        "errors": errors,
        "statuses": format!("{statuses:?}"),
        // The first answer's arrival: what the publish itself took.
        "first_ms": ms(lats.arrival.min()),
        // The publisher's `201`, from the same instant.
        "publish_ms": ms(publish_us),
        "wake": latency_json(&lats.arrival),
        "read_wake": latency_json(&lats.read),
        "cpu": cpu_run,
    });
    (v, ok)
}

/// The current head: a short poll from `now` answers 204 + Herald-Cursor,
/// so the parked polls wait for the next event and not an old one.
async fn head_cursor(client: &reqwest::Client, t: &Target, topic: &str) -> String {
    let r = client
        .get(format!("{}/topics/{topic}?last-event-id=now", t.base))
        .send()
        .await
        .expect("short poll for the head");
    r.headers()
        .get("herald-cursor")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .expect("Herald-Cursor on the short poll")
}

/// Starts `n` long polls from `cursor`, each on its own keep-alive
/// HTTP/1.1 connection, as a browser's `fetch` would.
fn park_all(t: &Target, n: usize, topic: &str, cursor: &str, concurrency: usize) -> Vec<Poll> {
    let sem = Arc::new(Semaphore::new(concurrency));
    let mut tasks = Vec::with_capacity(n);
    for _ in 0..n {
        let (t, sem, cursor, topic) = (t.clone(), sem.clone(), cursor.to_owned(), topic.to_owned());
        tasks.push(tokio::spawn(async move {
            let permit = sem.acquire_owned().await.unwrap();
            let mut s = connect(&t).await?;
            stamp::enable(&s)?;
            let req = format!(
                "GET /topics/{topic}?transport=long-poll&timeout=60 HTTP/1.1\r\nHost: {}\r\nLast-Event-ID: {cursor}\r\n\r\n",
                t.host
            );
            s.write_all(req.as_bytes()).await?;
            drop(permit);
            let answer = read_answer(&s).await?;
            Ok((answer, s))
        }));
    }
    tasks
}

/// Waits for every poll's answer: a 200 with the event counts as woken (its
/// latency from `t0`, µs since the epoch just before the publish, to the
/// answer's arrival and to its read), anything else as an error. Also
/// counts the answers by status, so a failing run shows what it got.
async fn collect(tasks: Vec<Poll>, t0: u64) -> (Latencies, u64, BTreeMap<u16, u64>) {
    let mut lats = Latencies::new();
    let mut errors = 0u64;
    let mut statuses = BTreeMap::<u16, u64>::new();
    let mut open = Vec::with_capacity(tasks.len());
    let mut pending = Vec::with_capacity(tasks.len());
    for task in tasks {
        match task.await.unwrap() {
            Ok((answer, stream)) => {
                open.push(stream);
                *statuses.entry(answer.status).or_default() += 1;
                let has_event = serde_json::from_slice::<Value>(&answer.body)
                    .ok()
                    .and_then(|v| v["events"].as_array().map(|a| !a.is_empty()))
                    .unwrap_or(false);
                if answer.status == 200 && has_event {
                    pending.push(Latencies::pair(t0, answer.arrived, answer.read));
                } else {
                    errors += 1;
                }
            }
            Err(e) => {
                if errors < 3 {
                    eprintln!("long poll: {e}");
                }
                errors += 1;
            }
        }
    }
    lats.record(&mut pending);
    (lats, errors, statuses)
}
