//! The `cycle` mode: producers and workers side by side, as an application
//! uses a task queue. P producers each enqueue a small JSON task and wait
//! for its result, over and over; W workers complete each task at once,
//! echoing its payload as the result. Tasks/s and enqueue → result latency
//! are taken over `--secs` after a warm-up, with the server's CPU per task;
//! the run checks that every task was told exactly once, with its own
//! result, and that the server's `herald_tasks` counts agree.
//!
//! This is the shape a BullMQ benchmark has (`Queue.add`, then
//! `job.waitUntilFinished`, against a `Worker`), so the two can be set side
//! by side: `benches/tasks-vs-bullmq.sh`. How a producer waits (`--wait`)
//! lives in [`producer`], how a worker works (`--worker`) in [`worker`];
//! this file owns the run's clock, its stop, the checks and the report.

mod producer;
mod worker;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::ValueEnum;
use serde_json::{Value, json};
use tokio::sync::Notify;

use crate::metrics::labelled_metric;
use crate::net::{Target, authorization, http};
use crate::procfs::CpuMark;
use crate::report::{latency_json, round};
use crate::tasks::{Errors, PATIENCE};

pub use producer::Tally;

/// How a producer waits for its task's result.
#[derive(ValueEnum, Clone, Copy, Debug)]
pub enum Wait {
    /// `POST /queues/{q}/tasks`, then `GET /tasks/{id}?wait=30`.
    LongPoll,
    /// `POST /queues/{q}/tasks`, then `GET /tasks/{id}/events` as SSE until
    /// `done` (on the same keep-alive connection).
    Sse,
    /// `POST /queues/{q}/tasks`, then `GET /tasks/{id}/events` as a
    /// WebSocket until `done` (a new socket per task).
    Ws,
    /// `POST /queues/{q}/tasks?wait=30`: one request enqueues and waits
    /// (`408` at the timeout, then `GET /tasks/{id}?wait=30`).
    Enqueue,
}

/// How a worker takes and completes tasks.
#[derive(ValueEnum, Clone, Copy, Debug)]
pub enum Work {
    /// `POST /queues/{q}/claim?wait=30&lease=30`, then
    /// `POST /tasks/{id}/complete` with `Herald-Lease`.
    Http,
    /// One WebSocket per worker, `GET /queues/{q}/work?lease=30&count=N`:
    /// the server pushes tasks, the worker sends `complete` ops back.
    Ws,
}

/// The name clap gives a value (`long-poll`), for the report.
fn value_name(v: impl ValueEnum) -> String {
    v.to_possible_value()
        .map(|p| p.get_name().to_owned())
        .unwrap_or_default()
}

/// What a run is asked to do.
pub struct Load {
    pub producers: usize,
    pub workers: usize,
    /// Tasks a `ws` worker holds at once (`count=` of the work socket).
    pub count: usize,
    pub secs: f64,
    pub warmup: f64,
    pub wait: Wait,
    pub work: Work,
    pub queue: String,
}

/// Why one exchange failed, and whether the run can go on.
pub struct Failure {
    what: String,
    /// The server lacks the route the run needs (a 404/400 where the flow
    /// expects an answer, or a 201 where it expects to wait): every later
    /// attempt would fail the same way, so the run ends at once.
    unsupported: bool,
}

impl Failure {
    pub fn once(what: impl Into<String>) -> Failure {
        Failure {
            what: what.into(),
            unsupported: false,
        }
    }

    pub fn unsupported(what: impl Into<String>) -> Failure {
        Failure {
            what: what.into(),
            unsupported: true,
        }
    }
}

/// What every producer and worker of a run shares: a cheap handle.
#[derive(Clone)]
pub struct Shared {
    pub t: Target,
    pub queue: String,
    pub errors: Errors,
    /// `Authorization: Bearer …` as a header line, with `HERALD_TOKEN`.
    pub auth: Option<String>,
    /// Set at the end of the window, or early when the server cannot run
    /// the flow: producers finish the task in hand and stop.
    stop: Arc<AtomicBool>,
    /// Wakes the run's clock when a failure ends the run early.
    fatal: Arc<Notify>,
    fatal_seen: Arc<AtomicBool>,
}

impl Shared {
    fn new(t: &Target, queue: &str) -> Shared {
        Shared {
            t: t.clone(),
            queue: queue.to_owned(),
            errors: Errors::default(),
            auth: authorization().map(|a| format!("Authorization: {a}")),
            stop: Arc::new(AtomicBool::new(false)),
            fatal: Arc::new(Notify::new()),
            fatal_seen: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Counts a failure; one that says the server cannot run this flow
    /// ends the run, said once on stderr so the reason is not lost among
    /// the counts.
    pub fn fail(&self, f: Failure) {
        if f.unsupported && !self.fatal_seen.swap(true, Ordering::Relaxed) {
            eprintln!("cycle: {}", f.what);
            self.stop.store(true, Ordering::Relaxed);
            // notify_one keeps a permit: the clock wakes even if it was not
            // waiting yet.
            self.fatal.notify_one();
        }
        self.errors.add(f.what);
    }

    pub fn stopped(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    fn fatal(&self) -> bool {
        self.fatal_seen.load(Ordering::Relaxed)
    }

    /// Header lines every request carries (`Authorization`, when set).
    pub fn headers<'a>(&'a self, more: &[&'a str]) -> Vec<&'a str> {
        let mut h = more.to_vec();
        h.extend(self.auth.as_deref());
        h
    }

    /// Sleeps until `at`; false if a fatal failure came first.
    async fn sleep_until(&self, at: Instant) -> bool {
        tokio::select! {
            _ = tokio::time::sleep_until(at.into()) => !self.fatal(),
            _ = self.fatal.notified() => false,
        }
    }
}

/// The measured stretch of a run: a task counts (rate and latency) when
/// its result came inside it.
#[derive(Clone, Copy)]
pub struct Window {
    pub from: Instant,
    pub to: Instant,
}

impl Window {
    pub fn holds(&self, at: Instant) -> bool {
        at >= self.from && at < self.to
    }
}

/// Runs the producers and workers for the warm-up and the window, then
/// checks and reports.
pub async fn cycle(t: &Target, load: Load) -> (Value, bool) {
    let shared = Shared::new(t, &load.queue);
    let before = ServerCounts::read(t, &load.queue).await;
    let completed = Arc::new(AtomicU64::new(0));
    let workers = worker::start(&shared, load.work, load.workers, load.count, &completed);

    let from = Instant::now() + Duration::from_secs_f64(load.warmup);
    let window = Window {
        from,
        to: from + Duration::from_secs_f64(load.secs),
    };
    let producers: Vec<_> = (0..load.producers)
        .map(|p| tokio::spawn(producer::run(shared.clone(), load.wait, p, window)))
        .collect();
    let warmed = shared.sleep_until(window.from).await;
    let mark = CpuMark::now();
    if warmed {
        shared.sleep_until(window.to).await;
    }
    let cpu = mark.since();
    shared.stop.store(true, Ordering::Relaxed);

    let tally = collect(&shared, producers).await;
    // A producer may hear of its result before the worker hears its
    // complete answered (both follow the same commit): give those answers
    // a moment to arrive before the workers go.
    let answered_by = tokio::time::Instant::now() + Duration::from_secs(10);
    while completed.load(Ordering::Relaxed) < tally.told
        && tokio::time::Instant::now() < answered_by
    {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    // Every producer has its last result: no worker has anything left to
    // do, and a worker parked in a 30 s claim would only delay the end.
    for w in workers {
        w.abort();
    }
    let after = ServerCounts::read(t, &load.queue).await;
    let server = after.minus(&before);
    let completed = completed.load(Ordering::Relaxed);
    let v = report(&load, &shared, &tally, &server, completed, cpu);
    let ok = v["exactly_once"] == true && v["errors"] == 0 && tally.in_window > 0;
    (v, ok)
}

/// Waits for every producer to finish the task in hand (at most
/// [`PATIENCE`] in all), or stops them at once after a fatal failure.
async fn collect(shared: &Shared, producers: Vec<tokio::task::JoinHandle<Tally>>) -> Tally {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    let mut all = Tally::new();
    for mut h in producers {
        if shared.fatal() {
            h.abort();
            continue;
        }
        match tokio::time::timeout_at(deadline, &mut h).await {
            Ok(Ok(t)) => all.add(&t),
            Ok(Err(e)) => shared.errors.add(format!("a producer failed: {e}")),
            Err(_) => {
                h.abort();
                shared
                    .errors
                    .add("a producer still waited for its task long after the run");
            }
        }
    }
    all
}

/// The run as one JSON object: the figures, then the checks.
fn report(
    load: &Load,
    shared: &Shared,
    tally: &Tally,
    server: &ServerCounts,
    completed: u64,
    cpu: Value,
) -> Value {
    let exactly_once = tally.sent == tally.told
        && tally.wrong == 0
        && tally.duplicates == 0
        && completed == tally.told
        && server.succeeded == tally.told as f64
        && server.unfinished() == 0.0;
    let server_cpu_us = cpu["server_cpu_s"]
        .as_f64()
        .filter(|_| tally.in_window > 0)
        .map(|s| (s * 1e6 / tally.in_window as f64).round());
    let kinds = shared.errors.kinds();
    for (what, n) in &kinds {
        eprintln!("cycle: {n} × {what}");
    }
    json!({
        "mode": "cycle",
        "wait": value_name(load.wait),
        "worker": value_name(load.work),
        "producers": load.producers,
        "workers": load.workers,
        "count": load.count,
        "queue": load.queue,
        "secs": load.secs,
        "warmup_s": load.warmup,
        "tasks": tally.in_window,
        "tasks_per_s": (tally.in_window as f64 / load.secs.max(1e-9)).round() as u64,
        "latency": latency_json(&tally.hist),
        "server_cpu_us_per_task": server_cpu_us,
        "sent": tally.sent,
        "told": tally.told,
        "wrong_result": tally.wrong,
        "duplicates": tally.duplicates,
        "worker_completed": completed,
        "server": {
            "succeeded": server.succeeded as u64,
            "queued": server.queued as u64,
            "running": server.running as u64,
            "failed": server.failed as u64,
            "cancelled": server.cancelled as u64,
        },
        "exactly_once": exactly_once,
        "errors": shared.errors.total(),
        "error_kinds": format!("{kinds:?}"),
        "cpu": cpu,
        "tasks_per_server_cpu_s": cpu["server_cpu_s"]
            .as_f64()
            .filter(|s| *s > 0.0)
            .map(|s| round(tally.in_window as f64 / s, 0)),
    })
}

/// The server's `herald_tasks{queue,status}` gauges for one queue.
struct ServerCounts {
    succeeded: f64,
    queued: f64,
    running: f64,
    failed: f64,
    cancelled: f64,
}

impl ServerCounts {
    async fn read(t: &Target, queue: &str) -> ServerCounts {
        let client = http();
        let get = |status: &'static str| {
            let client = client.clone();
            async move {
                let labels = [("queue", queue), ("status", status)];
                labelled_metric(&client, t, "herald_tasks", &labels).await
            }
        };
        ServerCounts {
            succeeded: get("succeeded").await,
            queued: get("queued").await,
            running: get("running").await,
            failed: get("failed").await,
            cancelled: get("cancelled").await,
        }
    }

    /// What the run added (the queue is fresh unless `--queue` names one).
    fn minus(&self, before: &ServerCounts) -> ServerCounts {
        ServerCounts {
            succeeded: self.succeeded - before.succeeded,
            queued: self.queued - before.queued,
            running: self.running - before.running,
            failed: self.failed - before.failed,
            cancelled: self.cancelled - before.cancelled,
        }
    }

    /// Tasks of the run the server does not count as succeeded.
    fn unfinished(&self) -> f64 {
        self.queued + self.running + self.failed + self.cancelled
    }
}
