//! The `tasks` mode: the whole task cycle against a running herald. A
//! submitter enqueues N tasks; W workers loop long-poll claim → complete;
//! for each task a waiting client long polls its result. Tasks/s runs from
//! the first enqueue to the last waiting client told, latency from each
//! enqueue to its waiting client told; the server's count of succeeded
//! tasks checks that every task ran exactly once.
//!
//! Every request goes over [`crate::http1`] keep-alive connections (one per
//! worker, one for the submitter, a pool for the waiting clients), so the
//! driver stays cheap next to a server that does four requests per task.
//! The waiting clients are bounded (`--waiters`): the submitter enqueues
//! only while fewer are outstanding, which also bounds the tasks in flight
//! and keeps the run far below the open-file limit.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde_json::{Value, json};
use tokio::sync::Semaphore;

use crate::http1::{Answer, Conn, request};
use crate::metrics::labelled_metric;
use crate::net::{Target, http};
use crate::procfs::CpuMark;
use crate::report::{latency_json, new_hist, round};

/// How long a worker's claim waits for a task, in seconds: also how long
/// the workers take to notice the run is over.
const CLAIM_WAIT: u32 = 1;
/// How long a waiting client's long poll lasts before it asks again.
const TASK_WAIT: u32 = 30;
/// The longest any one request may take before it counts as an error.
pub const PATIENCE: Duration = Duration::from_secs(60);
/// The header that carries a claim's lease token back on `complete`.
pub const LEASE_HEADER: &str = "Herald-Lease";

/// What a run is asked to do.
pub struct Load {
    pub workers: usize,
    pub tasks: usize,
    /// Waiting clients outstanding at most (so tasks in flight at most).
    pub waiters: usize,
    pub queue: String,
}

/// Failures by description, shared by every part of a run.
#[derive(Clone, Default)]
pub struct Errors(Arc<Mutex<BTreeMap<String, u64>>>);

impl Errors {
    pub fn add(&self, what: impl Into<String>) {
        // A std Mutex: held for one map update, never across an await.
        *self.0.lock().unwrap().entry(what.into()).or_default() += 1;
    }

    pub fn total(&self) -> u64 {
        self.0.lock().unwrap().values().sum()
    }

    /// Every failure so far, by description.
    pub fn kinds(&self) -> BTreeMap<String, u64> {
        self.0.lock().unwrap().clone()
    }
}

/// Idle connections of the waiting clients: a waiter takes one (or opens
/// one) and gives it back, so there are never more than `--waiters`.
#[derive(Clone)]
struct Pool {
    t: Target,
    // A std Mutex: a push or pop, never held across an await.
    idle: Arc<Mutex<Vec<Conn>>>,
}

impl Pool {
    fn take(&self) -> Conn {
        self.idle
            .lock()
            .unwrap()
            .pop()
            .unwrap_or_else(|| Conn::new(&self.t))
    }

    fn give(&self, c: Conn) {
        self.idle.lock().unwrap().push(c);
    }
}

/// Sends one request with [`PATIENCE`]; `Err` describes what went wrong.
pub async fn send(conn: &mut Conn, req: &[u8], what: &str) -> Result<Answer, String> {
    match tokio::time::timeout(PATIENCE, conn.send(req)).await {
        Ok(Ok(a)) => Ok(a),
        Ok(Err(e)) => Err(format!("{what}: {e}")),
        Err(_) => {
            // The answer may still come: it must not pass for the next one's.
            conn.reset();
            Err(format!("{what}: no answer within {} s", PATIENCE.as_secs()))
        }
    }
}

/// `Err` naming the status and body of an unexpected answer.
pub fn unexpected(what: &str, a: &Answer) -> String {
    format!(
        "{what}: HTTP {} {}",
        a.status,
        String::from_utf8_lossy(&a.body)
    )
}

/// Runs the cycle and reports it.
pub async fn tasks(t: &Target, load: Load) -> (Value, bool) {
    let succeeded0 = succeeded(t, &load.queue).await;
    let errors = Errors::default();
    let stop = Arc::new(AtomicBool::new(false));
    let empty_claims = Arc::new(AtomicU64::new(0));
    let workers: Vec<_> = (0..load.workers)
        .map(|_| {
            let (t, q, stop, errors, empty) = (
                t.clone(),
                load.queue.clone(),
                stop.clone(),
                errors.clone(),
                empty_claims.clone(),
            );
            tokio::spawn(worker(t, q, stop, errors, empty))
        })
        .collect();

    let cpu = CpuMark::now();
    let (first_enqueue, waiting) = submit(t, &load, &errors).await;
    let (hist, last_told) = collect(waiting).await;
    let cpu_run = cpu.since();

    // Every waiting client has its answer: the workers may go (within one
    // claim wait).
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.await.unwrap();
    }
    let told = hist.len();
    let cycle_s = match (first_enqueue, last_told) {
        (Some(a), Some(b)) => b.duration_since(a).as_secs_f64(),
        _ => 0.0,
    };
    let succeeded = succeeded(t, &load.queue).await - succeeded0;
    if succeeded != told as f64 {
        errors.add(format!(
            "server counts {succeeded} succeeded tasks, {told} waiting clients were told"
        ));
    }
    let kinds = errors.kinds();
    for (what, n) in &kinds {
        eprintln!("tasks: {n} × {what}");
    }
    let n_errors = errors.total();
    let v = json!({
        "mode": "tasks",
        "workers": load.workers,
        "tasks": load.tasks,
        "waiters": load.waiters,
        "queue": load.queue,
        "told": told,
        "errors": n_errors,
        "error_kinds": format!("{kinds:?}"),
        "empty_claims": empty_claims.load(Ordering::Relaxed),
        "server_succeeded": succeeded as u64,
        "cycle_s": round(cycle_s, 3),
        "tasks_per_s": (told as f64 / cycle_s.max(1e-9)).round() as u64,
        "latency": latency_json(&hist),
        "cpu": cpu_run,
    });
    (v, n_errors == 0 && told == load.tasks as u64)
}

/// The server's count of succeeded tasks in `queue`.
async fn succeeded(t: &Target, queue: &str) -> f64 {
    let labels = [("queue", queue), ("status", "succeeded")];
    labelled_metric(&http(), t, "herald_tasks", &labels).await
}

/// A waiting client's outcome: (enqueue sent, told), or None on an error.
type Waiting = tokio::task::JoinHandle<Option<(Instant, Instant)>>;

/// Waits for every waiting client: the enqueue → told latencies, and when
/// the last one was told.
async fn collect(waiting: Vec<Waiting>) -> (Histogram<u64>, Option<Instant>) {
    let mut hist = new_hist();
    let mut last_told = None;
    for w in waiting {
        if let Some((sent, told)) = w.await.unwrap() {
            hist.saturating_record(told.duration_since(sent).as_micros() as u64);
            last_told = last_told.max(Some(told));
        }
    }
    (hist, last_told)
}

/// Enqueues every task on one connection, each once a waiting client is
/// free, and starts that client right after the `201`. Returns when the
/// first enqueue was sent, and the waiting clients.
async fn submit(t: &Target, load: &Load, errors: &Errors) -> (Option<Instant>, Vec<Waiting>) {
    let slots = Arc::new(Semaphore::new(load.waiters.max(1)));
    let pool = Pool {
        t: t.clone(),
        idle: Arc::new(Mutex::new(Vec::new())),
    };
    let path = format!("/queues/{}/tasks", load.queue);
    let mut conn = Conn::new(t);
    let mut first = None;
    let mut waiting = Vec::with_capacity(load.tasks);
    for n in 0..load.tasks {
        let permit = slots.clone().acquire_owned().await.unwrap();
        let req = request(
            "POST",
            &path,
            &t.host,
            &["Content-Type: application/json"],
            format!("{{\"n\":{n}}}").as_bytes(),
        );
        let sent = Instant::now();
        first.get_or_insert(sent);
        let id = match send(&mut conn, &req, "enqueue").await {
            Ok(a) if a.status == 201 => serde_json::from_slice::<Value>(&a.body)
                .ok()
                .and_then(|v| v["id"].as_str().map(str::to_owned)),
            Ok(a) => {
                errors.add(unexpected("enqueue", &a));
                continue;
            }
            Err(e) => {
                errors.add(e);
                continue;
            }
        };
        let Some(id) = id else {
            errors.add("enqueue: 201 without a task id");
            continue;
        };
        let (pool, errors) = (pool.clone(), errors.clone());
        waiting.push(tokio::spawn(async move {
            let told = wait_for(&pool, &id).await;
            drop(permit);
            match told {
                Ok(told) => Some((sent, told)),
                Err(e) => {
                    errors.add(e);
                    None
                }
            }
        }));
    }
    (first, waiting)
}

/// Long polls `GET /tasks/{id}?wait=30` until the task has succeeded;
/// returns when the answer came. A `408` (not finished yet) asks again.
async fn wait_for(pool: &Pool, id: &str) -> Result<Instant, String> {
    let req = request(
        "GET",
        &format!("/tasks/{id}?wait={TASK_WAIT}"),
        &pool.t.host,
        &[],
        b"",
    );
    let mut conn = pool.take();
    loop {
        let a = send(&mut conn, &req, "wait").await?;
        let told = Instant::now();
        match a.status {
            200 => {
                pool.give(conn);
                let status = serde_json::from_slice::<Value>(&a.body)
                    .ok()
                    .and_then(|v| v["status"].as_str().map(str::to_owned));
                return match status.as_deref() {
                    Some("succeeded") => Ok(told),
                    other => Err(format!("wait: task status {other:?}, not succeeded")),
                };
            }
            408 => continue,
            _ => return Err(unexpected("wait", &a)),
        }
    }
}

/// A worker: claims (waiting up to [`CLAIM_WAIT`] s) and completes with
/// the lease token, on its own connection, until `stop`.
async fn worker(
    t: Target,
    queue: String,
    stop: Arc<AtomicBool>,
    errors: Errors,
    empty_claims: Arc<AtomicU64>,
) {
    let claim = request(
        "POST",
        &format!("/queues/{queue}/claim?wait={CLAIM_WAIT}&lease=30"),
        &t.host,
        &[],
        b"",
    );
    let mut conn = Conn::new(&t);
    while !stop.load(Ordering::Relaxed) {
        let (id, token) = match send(&mut conn, &claim, "claim").await {
            Ok(a) if a.status == 204 => {
                empty_claims.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            Ok(a) if a.status == 200 => match claimed(&a.body) {
                Some(c) => c,
                None => {
                    errors.add("claim: 200 without task.id and lease.token");
                    continue;
                }
            },
            Ok(a) => {
                errors.add(unexpected("claim", &a));
                // Do not spin on a failing server.
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
            Err(e) => {
                errors.add(e);
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let lease = format!("{LEASE_HEADER}: {token}");
        let req = request(
            "POST",
            &format!("/tasks/{id}/complete"),
            &t.host,
            &[&lease, "Content-Type: application/json"],
            br#"{"ok":true}"#,
        );
        match send(&mut conn, &req, "complete").await {
            Ok(a) if a.status == 200 => {}
            Ok(a) => errors.add(unexpected("complete", &a)),
            Err(e) => errors.add(e),
        }
    }
}

/// The task id and lease token of a claim's answer.
fn claimed(body: &[u8]) -> Option<(String, String)> {
    let v: Value = serde_json::from_slice(body).ok()?;
    Some((
        v["task"]["id"].as_str()?.to_owned(),
        v["lease"]["token"].as_str()?.to_owned(),
    ))
}
