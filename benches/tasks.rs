//! Tasks: throughput of the whole enqueue → claim → complete → waiting client
//! told cycle, and the latency from a worker's `complete` to the waiting
//! client's answer for each way of waiting (long poll, SSE, WebSocket, short
//! poll), on the memory store and the durable (file) store.
//!
//! Run with `cargo bench --bench tasks`. Every case starts a fresh `herald
//! serve` (the release binary cargo builds for benches).
//!
//! 1. Cycle: producers enqueue JSON tasks, never more than [`IN_FLIGHT`]
//!    unfinished at once; right after each `201` a waiting client long polls
//!    `GET /tasks/{id}?wait=30`; 1 or 16 workers loop `claim?wait=1&lease=30`
//!    → `complete`. A task counts as done when its waiting client got the
//!    `200`. After 1 s of warm-up the run lasts `HERALD_BENCH_SECS` (default
//!    5); then producers stop, every outstanding task is drained, and the
//!    bench checks that every enqueued task was told and that the server
//!    counts as many `succeeded` tasks.
//! 2. Wake-up latency: `HERALD_BENCH_ROUNDS` (default 200) sequential rounds
//!    per mode of: enqueue, start the waiter and make sure it waits, claim,
//!    then t0 just before sending `complete` and t1 when the waiter has its
//!    answer.
//!
//! Every unexpected status or transport error is counted and reported; the
//! bench exits non-zero if there was any. See `docs/performance.md`.

// A benchmark, not library code: a failure to start the server or build a
// client should abort the run loudly, which is what unwrap/expect do.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use support::Server;

use std::collections::BTreeMap;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use eventsource_stream::Eventsource;
use futures_util::StreamExt;
use hdrhistogram::Histogram;
use reqwest::StatusCode;
use serde_json::Value;
use tokio::sync::{Semaphore, oneshot};
use tokio::task::JoinSet;
use tokio_tungstenite::tungstenite::Message;

/// Workers per cycle case.
const WORKERS: [usize; 2] = [1, 16];
/// Tasks enqueued but not yet told, at most (shared by all producers).
const IN_FLIGHT: usize = 64;
/// Concurrent producers in the cycle case.
const PRODUCERS: usize = 4;
/// Load run before measuring the cycle.
const WARMUP: Duration = Duration::from_secs(1);
/// Unrecorded rounds before each latency mode.
const WARMUP_ROUNDS: usize = 10;
/// The short poll's interval.
const POLL_INTERVAL: Duration = Duration::from_millis(100);
/// How long a long poll is given to reach the server and start waiting:
/// herald exposes no signal for a task long poll that is waiting.
const LONG_POLL_SETTLE: Duration = Duration::from_millis(20);
/// Upper bound on any single wait of the bench.
const PATIENCE: Duration = Duration::from_secs(35);
/// The header that carries a claim's lease token.
const LEASE_HEADER: &str = "herald-lease";

/// Errors by description, shared by every task of a case.
#[derive(Clone, Default)]
struct Errors(Arc<Mutex<BTreeMap<String, u64>>>);

impl Errors {
    fn add(&self, what: impl Into<String>) {
        *self.0.lock().unwrap().entry(what.into()).or_default() += 1;
    }

    fn take(&self) -> BTreeMap<String, u64> {
        std::mem::take(&mut *self.0.lock().unwrap())
    }
}

fn histogram() -> Histogram<u64> {
    // 1 µs .. 120 s, 3 significant digits.
    Histogram::new_with_bounds(1, 120_000_000, 3).unwrap()
}

fn record(h: &mut Histogram<u64>, d: Duration) {
    let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
    h.saturating_record(us.max(1));
}

fn ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

fn client() -> reqwest::Client {
    herald_client::use_ring();
    reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        .pool_max_idle_per_host(256)
        .build()
        .unwrap()
}

/// Reads a whole answer; `Err` describes a transport problem.
async fn answer(request: reqwest::RequestBuilder) -> Result<(StatusCode, bytes::Bytes), String> {
    let send = async {
        let resp = request.send().await.map_err(|e| format!("request: {e}"))?;
        let status = resp.status();
        let body = resp
            .bytes()
            .await
            .map_err(|e| format!("reading answer: {e}"))?;
        Ok((status, body))
    };
    match tokio::time::timeout(PATIENCE, send).await {
        Ok(out) => out,
        Err(_) => Err(format!("no answer within {} s", PATIENCE.as_secs())),
    }
}

fn json(body: &[u8]) -> Option<Value> {
    serde_json::from_slice(body).ok()
}

/// `POST /queues/{queue}/tasks` with a small JSON payload; the task id.
async fn enqueue(
    client: &reqwest::Client,
    base: &str,
    queue: &str,
    n: u64,
    errors: &Errors,
) -> Option<String> {
    let request = client
        .post(format!("{base}/queues/{queue}/tasks"))
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .body(format!("{{\"n\":{n}}}"));
    match answer(request).await {
        Ok((StatusCode::CREATED, body)) => {
            match json(&body).and_then(|t| t["id"].as_str().map(str::to_owned)) {
                Some(id) => Some(id),
                None => {
                    errors.add("enqueue: 201 without a task id");
                    None
                }
            }
        }
        Ok((status, _)) => {
            errors.add(format!("enqueue: HTTP {status}"));
            None
        }
        Err(e) => {
            errors.add(format!("enqueue: {e}"));
            None
        }
    }
}

/// A claimed task: its id and lease token.
struct Claimed {
    id: String,
    token: String,
}

/// `POST /queues/{queue}/claim?wait=1&lease=30`: `Ok(None)` on `204`.
async fn claim(
    client: &reqwest::Client,
    base: &str,
    queue: &str,
) -> Result<Option<Claimed>, String> {
    let request = client.post(format!("{base}/queues/{queue}/claim?wait=1&lease=30"));
    match answer(request).await? {
        (StatusCode::NO_CONTENT, _) => Ok(None),
        (StatusCode::OK, body) => {
            let v = json(&body).ok_or("claim: 200 whose body is not JSON")?;
            let id = v["task"]["id"]
                .as_str()
                .ok_or("claim: 200 without task.id")?;
            let token = v["lease"]["token"]
                .as_str()
                .ok_or("claim: 200 without lease.token")?;
            Ok(Some(Claimed {
                id: id.to_owned(),
                token: token.to_owned(),
            }))
        }
        (status, _) => Err(format!("claim: HTTP {status}")),
    }
}

/// `POST /tasks/{id}/complete` under the claim's lease.
async fn complete(client: &reqwest::Client, base: &str, claimed: &Claimed) -> Result<(), String> {
    let request = client
        .post(format!("{base}/tasks/{}/complete", claimed.id))
        .header(LEASE_HEADER, &claimed.token)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .body(r#"{"ok":true}"#);
    match answer(request).await {
        Ok((StatusCode::OK, _)) => Ok(()),
        Ok((status, _)) => Err(format!("complete: HTTP {status}")),
        Err(e) => Err(format!("complete: {e}")),
    }
}

/// Checks a finished task's JSON: it must have succeeded.
fn succeeded(task: &Value, what: &str) -> Result<(), String> {
    match task["status"].as_str() {
        Some("succeeded") => Ok(()),
        other => Err(format!("{what}: task status {other:?}, not \"succeeded\"")),
    }
}

/// `GET /tasks/{id}?wait=30`: `Ok` when the `200` (a succeeded task) came.
async fn long_poll(client: &reqwest::Client, base: &str, id: &str) -> Result<Instant, String> {
    let request = client.get(format!("{base}/tasks/{id}?wait=30"));
    match answer(request).await {
        Ok((StatusCode::OK, body)) => {
            let told = Instant::now();
            let task = json(&body).ok_or("long poll: 200 whose body is not JSON")?;
            succeeded(&task, "long poll")?;
            Ok(told)
        }
        Ok((StatusCode::REQUEST_TIMEOUT, _)) => {
            Err("long poll: 408, the task was not finished within 30 s".into())
        }
        Ok((status, _)) => Err(format!("long poll: HTTP {status}")),
        Err(e) => Err(format!("long poll: {e}")),
    }
}

// ---------------------------------------------------------------------------
// 1. The whole cycle.

/// One producer's tally.
struct Produced {
    enqueued: u64,
    told: u64,
    /// Told within the measured window.
    told_in_window: u64,
    /// Enqueue → told, for tasks enqueued within the measured window.
    latency_us: Histogram<u64>,
}

struct Window {
    measure_from: Instant,
    stop: Instant,
}

async fn producer(
    client: reqwest::Client,
    base: Arc<str>,
    queue: Arc<str>,
    slots: Arc<Semaphore>,
    window: Arc<Window>,
    errors: Errors,
    first: u64,
) -> Produced {
    let mut out = Produced {
        enqueued: 0,
        told: 0,
        told_in_window: 0,
        latency_us: histogram(),
    };
    let mut waiters = JoinSet::new();
    let absorb = |out: &mut Produced, r: Result<Option<(Instant, Instant)>, _>| match r {
        Ok(Some((enqueued_at, told))) => {
            out.told += 1;
            if told >= window.measure_from && told < window.stop {
                out.told_in_window += 1;
            }
            if enqueued_at >= window.measure_from && enqueued_at < window.stop {
                record(&mut out.latency_us, told - enqueued_at);
            }
        }
        Ok(None) => {}
        Err(e) => errors.add(format!("cycle waiter task: {e}")),
    };
    let mut n = first;
    loop {
        let permit = Arc::clone(&slots).acquire_owned().await.unwrap();
        let enqueued_at = Instant::now();
        if enqueued_at >= window.stop {
            break;
        }
        n += 1;
        let Some(id) = enqueue(&client, &base, &queue, n, &errors).await else {
            continue;
        };
        out.enqueued += 1;
        let (client, base, errors) = (client.clone(), Arc::clone(&base), errors.clone());
        waiters.spawn(async move {
            let told = long_poll(&client, &base, &id).await;
            drop(permit);
            match told {
                Ok(told) => Some((enqueued_at, told)),
                Err(e) => {
                    errors.add(format!("cycle: {e}"));
                    None
                }
            }
        });
        while let Some(r) = waiters.try_join_next() {
            absorb(&mut out, r);
        }
    }
    while let Some(r) = waiters.join_next().await {
        absorb(&mut out, r);
    }
    out
}

async fn worker(
    client: reqwest::Client,
    base: Arc<str>,
    queue: Arc<str>,
    stop: Arc<AtomicBool>,
    errors: Errors,
) {
    while !stop.load(Ordering::Relaxed) {
        let claimed = match claim(&client, &base, &queue).await {
            Ok(Some(c)) => c,
            Ok(None) => continue,
            Err(e) => {
                errors.add(format!("worker {e}"));
                // Do not spin on a failing server.
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        if let Err(e) = complete(&client, &base, &claimed).await {
            errors.add(format!("worker {e}"));
        }
    }
}

struct CycleResult {
    enqueued: u64,
    told: u64,
    rate: f64,
    latency_us: Histogram<u64>,
}

async fn run_cycle(addr: &str, workers: usize, secs: Duration, errors: &Errors) -> CycleResult {
    let base: Arc<str> = Arc::from(format!("http://{addr}"));
    let queue: Arc<str> = Arc::from("bench");
    let client = client();
    let started = Instant::now();
    let window = Arc::new(Window {
        measure_from: started + WARMUP,
        stop: started + WARMUP + secs,
    });
    let stop_workers = Arc::new(AtomicBool::new(false));
    let worker_tasks: Vec<_> = (0..workers)
        .map(|_| {
            tokio::spawn(worker(
                client.clone(),
                Arc::clone(&base),
                Arc::clone(&queue),
                Arc::clone(&stop_workers),
                errors.clone(),
            ))
        })
        .collect();
    let slots = Arc::new(Semaphore::new(IN_FLIGHT));
    let producer_tasks: Vec<_> = (0..PRODUCERS as u64)
        .map(|p| {
            tokio::spawn(producer(
                client.clone(),
                Arc::clone(&base),
                Arc::clone(&queue),
                Arc::clone(&slots),
                Arc::clone(&window),
                errors.clone(),
                p << 40,
            ))
        })
        .collect();
    let mut result = CycleResult {
        enqueued: 0,
        told: 0,
        rate: 0.0,
        latency_us: histogram(),
    };
    let mut told_in_window = 0;
    for t in producer_tasks {
        let p = t.await.expect("producer panicked");
        result.enqueued += p.enqueued;
        result.told += p.told;
        told_in_window += p.told_in_window;
        result.latency_us.add(&p.latency_us).unwrap();
    }
    // Every waiter has its answer (or its error): the workers may go.
    stop_workers.store(true, Ordering::Relaxed);
    for t in worker_tasks {
        t.await.expect("worker panicked");
    }
    result.rate = told_in_window as f64 / secs.as_secs_f64();
    result
}

/// `herald_tasks{queue=QUEUE,status=STATUS}` from the server's `/metrics`.
async fn task_gauge(addr: &str, queue: &str, status: &str) -> Option<u64> {
    herald_client::use_ring();
    let text = reqwest::get(format!("http://{addr}/metrics"))
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    let (q, s) = (format!("queue=\"{queue}\""), format!("status=\"{status}\""));
    let found = text.lines().find_map(|l| {
        let rest = l.strip_prefix("herald_tasks{")?;
        let (labels, value) = rest.split_once('}')?;
        (labels.contains(&q) && labels.contains(&s))
            .then(|| value.trim().parse::<f64>().ok())
            .flatten()
    });
    // A gauge never touched is absent, which means 0.
    Some(found.map_or(0, |v| v as u64))
}

// ---------------------------------------------------------------------------
// 2. Completion → waiting client, per wait mode.

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    LongPoll,
    Sse,
    WebSocket,
    ShortPoll,
}

impl Mode {
    const ALL: [Mode; 4] = [Mode::LongPoll, Mode::Sse, Mode::WebSocket, Mode::ShortPoll];

    fn label(self) -> &'static str {
        match self {
            Mode::LongPoll => "long poll",
            Mode::Sse => "SSE",
            Mode::WebSocket => "WebSocket",
            Mode::ShortPoll => "short poll (100 ms)",
        }
    }

    fn queue(self) -> &'static str {
        match self {
            Mode::LongPoll => "lat-long-poll",
            Mode::Sse => "lat-sse",
            Mode::WebSocket => "lat-ws",
            Mode::ShortPoll => "lat-poll",
        }
    }
}

/// A small xorshift generator: the short poll's phase must be random.
struct Rng(u64);

impl Rng {
    fn new() -> Rng {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1);
        Rng(seed | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// Uniform in `[0, max)`.
    fn duration(&mut self, max: Duration) -> Duration {
        let nanos = u64::try_from(max.as_nanos()).unwrap_or(u64::MAX).max(1);
        Duration::from_nanos(self.next() % nanos)
    }
}

/// A waiter that is waiting: it resolves to the instant it was told.
type Told = tokio::task::JoinHandle<Result<Instant, String>>;

/// SSE: connects, reads up to the first `wait` event, then hands the rest
/// of the stream to a task that resolves on `done` (and checks the end).
async fn sse_waiter(client: &reqwest::Client, base: &str, id: &str) -> Result<Told, String> {
    let resp = client
        .get(format!("{base}/tasks/{id}/events"))
        .header(reqwest::header::ACCEPT, "text/event-stream")
        .send()
        .await
        .map_err(|e| format!("SSE: request: {e}"))?;
    if resp.status() != StatusCode::OK {
        return Err(format!("SSE: HTTP {}", resp.status()));
    }
    let mut events = resp.bytes_stream().eventsource();
    let first_wait = async {
        match events.next().await {
            Some(Ok(event)) if event.event == "wait" => Ok(()),
            Some(Ok(event)) => Err(format!(
                "SSE: first event {:?}, expected \"wait\"",
                event.event
            )),
            Some(Err(e)) => Err(format!("SSE: stream: {e}")),
            None => Err("SSE: stream ended before the first `wait`".to_owned()),
        }
    };
    tokio::time::timeout(PATIENCE, first_wait)
        .await
        .map_err(|_| "SSE: no `wait` event in time".to_owned())??;
    Ok(tokio::spawn(async move {
        let done = async {
            while let Some(event) = events.next().await {
                let event = event.map_err(|e| format!("SSE: stream: {e}"))?;
                match event.event.as_str() {
                    "wait" | "progress" => {}
                    "done" => {
                        let told = Instant::now();
                        let task: Value = serde_json::from_str(&event.data)
                            .map_err(|_| "SSE: `done` whose data is not JSON".to_owned())?;
                        succeeded(&task, "SSE `done`")?;
                        return Ok(told);
                    }
                    other => return Err(format!("SSE: unexpected event {other:?}")),
                }
            }
            Err("SSE: stream ended without `done`".to_owned())
        };
        let told = tokio::time::timeout(PATIENCE, done)
            .await
            .map_err(|_| "SSE: no `done` in time".to_owned())??;
        // The stream must end after `done`.
        match tokio::time::timeout(Duration::from_secs(5), events.next()).await {
            Ok(None) => Ok(told),
            Ok(Some(Ok(e))) => Err(format!("SSE: event {:?} after `done`", e.event)),
            Ok(Some(Err(e))) => Err(format!("SSE: stream error after `done`: {e}")),
            Err(_) => Err("SSE: stream still open 5 s after `done`".into()),
        }
    }))
}

/// The `event` of a WebSocket text frame, and the frame.
fn ws_event(message: &Message) -> Option<(String, Value)> {
    match message {
        Message::Text(text) => {
            let v: Value = serde_json::from_str(text.as_str()).ok()?;
            Some((v["event"].as_str()?.to_owned(), v))
        }
        _ => None,
    }
}

/// WebSocket: connects, reads up to the first `wait` frame, then hands the
/// socket to a task that resolves on `done` (and checks the close).
async fn ws_waiter(addr: &str, id: &str) -> Result<Told, String> {
    let url = format!("ws://{addr}/tasks/{id}/events");
    let (mut socket, _) = tokio::time::timeout(PATIENCE, tokio_tungstenite::connect_async(url))
        .await
        .map_err(|_| "WebSocket: no handshake in time".to_owned())?
        .map_err(|e| format!("WebSocket: connect: {e}"))?;
    let first_wait = async {
        while let Some(message) = socket.next().await {
            let message = message.map_err(|e| format!("WebSocket: {e}"))?;
            match ws_event(&message) {
                Some((event, _)) if event == "wait" => return Ok(()),
                Some((event, _)) => {
                    return Err(format!(
                        "WebSocket: first event {event:?}, expected \"wait\""
                    ));
                }
                None if message.is_ping() || message.is_pong() => {}
                None => return Err(format!("WebSocket: unexpected frame {message:?}")),
            }
        }
        Err("WebSocket: closed before the first `wait`".to_owned())
    };
    tokio::time::timeout(PATIENCE, first_wait)
        .await
        .map_err(|_| "WebSocket: no `wait` frame in time".to_owned())??;
    Ok(tokio::spawn(async move {
        let done = async {
            while let Some(message) = socket.next().await {
                let message = message.map_err(|e| format!("WebSocket: {e}"))?;
                match ws_event(&message) {
                    Some((event, frame)) if event == "done" => {
                        let told = Instant::now();
                        let task: Value = frame["data"]
                            .as_str()
                            .and_then(|d| serde_json::from_str(d).ok())
                            .ok_or("WebSocket: `done` whose data is not task JSON")?;
                        succeeded(&task, "WebSocket `done`")?;
                        return Ok(told);
                    }
                    Some((event, _)) if event == "wait" || event == "progress" => {}
                    Some((event, _)) => {
                        return Err(format!("WebSocket: unexpected event {event:?}"));
                    }
                    None if message.is_ping() || message.is_pong() => {}
                    None => return Err(format!("WebSocket: unexpected frame {message:?}")),
                }
            }
            Err("WebSocket: closed without `done`".to_owned())
        };
        let told = tokio::time::timeout(PATIENCE, done)
            .await
            .map_err(|_| "WebSocket: no `done` in time".to_owned())??;
        // The server closes the socket after `done`.
        let closed = async {
            while let Some(message) = socket.next().await {
                match message {
                    Ok(Message::Close(_)) => return Ok(()),
                    Ok(m) if m.is_ping() || m.is_pong() => {}
                    Ok(m) => return Err(format!("WebSocket: frame after `done`: {m:?}")),
                    Err(e) => return Err(format!("WebSocket: error after `done`: {e}")),
                }
            }
            Err("WebSocket: ended without a close frame".to_owned())
        };
        match tokio::time::timeout(Duration::from_secs(5), closed).await {
            Ok(Ok(())) => Ok(told),
            Ok(Err(e)) => Err(e),
            Err(_) => Err("WebSocket: still open 5 s after `done`".into()),
        }
    }))
}

/// Short poll: `GET /tasks/{id}` every [`POLL_INTERVAL`] until `200`; the
/// waiter counts as waiting once its first `202` came back.
async fn short_poll_waiter(client: &reqwest::Client, base: &str, id: &str) -> Result<Told, String> {
    let (first_tx, first_rx) = oneshot::channel();
    let (client, url) = (client.clone(), format!("{base}/tasks/{id}"));
    let handle = tokio::spawn(async move {
        let mut first_tx = Some(first_tx);
        let mut tick = tokio::time::interval(POLL_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let deadline = Instant::now() + PATIENCE;
        loop {
            tick.tick().await;
            if Instant::now() > deadline {
                return Err("short poll: not finished in time".to_owned());
            }
            match answer(client.get(&url)).await {
                Ok((StatusCode::ACCEPTED, _)) => {
                    if let Some(tx) = first_tx.take() {
                        let _ = tx.send(());
                    }
                }
                Ok((StatusCode::OK, body)) => {
                    let told = Instant::now();
                    let task = json(&body).ok_or("short poll: 200 whose body is not JSON")?;
                    succeeded(&task, "short poll")?;
                    return Ok(told);
                }
                Ok((status, _)) => return Err(format!("short poll: HTTP {status}")),
                Err(e) => return Err(format!("short poll: {e}")),
            }
        }
    });
    match first_rx.await {
        Ok(()) => Ok(handle),
        // The poller ended before its first 202: it has the reason.
        Err(_) => match handle.await {
            Ok(Err(e)) => Err(e),
            Ok(Ok(_)) => Err("short poll: 200 before the task was claimed".into()),
            Err(e) => Err(format!("short poll task: {e}")),
        },
    }
}

/// One round; `Ok(latency)` from just before `complete` to the waiter told.
async fn round(
    mode: Mode,
    client: &reqwest::Client,
    addr: &str,
    n: u64,
    rng: &mut Rng,
    errors: &Errors,
) -> Option<Duration> {
    let base = format!("http://{addr}");
    let queue = mode.queue();
    let id = enqueue(client, &base, queue, n, errors).await?;
    let waiter = match mode {
        Mode::LongPoll => {
            let (client, base, id) = (client.clone(), base.clone(), id.clone());
            let handle = tokio::spawn(async move { long_poll(&client, &base, &id).await });
            tokio::time::sleep(LONG_POLL_SETTLE).await;
            Ok(handle)
        }
        Mode::Sse => sse_waiter(client, &base, &id).await,
        Mode::WebSocket => ws_waiter(addr, &id).await,
        Mode::ShortPoll => {
            let w = short_poll_waiter(client, &base, &id).await;
            // Complete at a random phase of the poll interval.
            tokio::time::sleep(rng.duration(POLL_INTERVAL)).await;
            w
        }
    };
    let waiter = match waiter {
        Ok(w) => Some(w),
        Err(e) => {
            errors.add(e);
            None
        }
    };
    let claimed = match claim(client, &base, queue).await {
        Ok(Some(c)) if c.id == id => c,
        Ok(Some(c)) => {
            errors.add(format!(
                "{}: claimed {} instead of {id}",
                mode.label(),
                c.id
            ));
            return None;
        }
        Ok(None) => {
            errors.add(format!(
                "{}: claim got 204 with a task queued",
                mode.label()
            ));
            return None;
        }
        Err(e) => {
            errors.add(e);
            return None;
        }
    };
    if let Some(w) = &waiter
        && w.is_finished()
    {
        errors.add(format!("{}: waiter answered before complete", mode.label()));
    }
    let t0 = Instant::now();
    if let Err(e) = complete(client, &base, &claimed).await {
        errors.add(e);
        return None;
    }
    match waiter?.await {
        Ok(Ok(told)) if told >= t0 => Some(told - t0),
        Ok(Ok(_)) => {
            errors.add(format!("{}: told before complete was sent", mode.label()));
            None
        }
        Ok(Err(e)) => {
            errors.add(e);
            None
        }
        Err(e) => {
            errors.add(format!("{} waiter task: {e}", mode.label()));
            None
        }
    }
}

async fn run_latency(addr: &str, mode: Mode, rounds: usize, errors: &Errors) -> Histogram<u64> {
    let client = client();
    let mut rng = Rng::new();
    let mut h = histogram();
    for i in 0..WARMUP_ROUNDS + rounds {
        let latency = round(mode, &client, addr, i as u64, &mut rng, errors).await;
        if let Some(d) = latency
            && i >= WARMUP_ROUNDS
        {
            record(&mut h, d);
        }
    }
    h
}

// ---------------------------------------------------------------------------

fn machine() -> String {
    let run = |cmd: &str, args: &[&str]| {
        Command::new(cmd)
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .map(|s| s.trim().to_owned())
            .unwrap_or_else(|| "?".into())
    };
    format!(
        "nproc {}, kernel {}",
        run("nproc", &[]),
        run("uname", &["-r"])
    )
}

fn env_number(name: &str, default: f64) -> f64 {
    std::env::var(name)
        .ok()
        .map(|s| {
            s.trim()
                .parse::<f64>()
                .unwrap_or_else(|_| panic!("{name} must be a number"))
        })
        .unwrap_or(default)
}

/// A fresh server for `store_name`; the directory must outlive it.
fn fresh_server(store_name: &str) -> (Server, tempfile::TempDir) {
    let dir = tempfile::Builder::new()
        .prefix("herald-bench-tasks-")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .unwrap();
    let store = match store_name {
        "memory" => "memory".to_owned(),
        _ => format!("file:{}", dir.path().display()),
    };
    (Server::start(&store), dir)
}

fn main() {
    let secs = Duration::from_secs_f64(env_number("HERALD_BENCH_SECS", 5.0));
    let rounds = env_number("HERALD_BENCH_ROUNDS", 200.0) as usize;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let started = Instant::now();
    let mut all_errors = BTreeMap::<String, u64>::new();
    let mut keep = |case: &str, errors: BTreeMap<String, u64>| {
        let n = errors.values().sum::<u64>();
        for (what, k) in errors {
            *all_errors.entry(format!("{case}: {what}")).or_default() += k;
        }
        n
    };

    println!("machine: {}", machine());
    println!();
    println!(
        "1. cycle: enqueue → claim (wait=1, lease=30) → complete → long-polling client told; \
         {PRODUCERS} producers, at most {IN_FLIGHT} tasks in flight, {:.0} ms warm-up, {:.1} s measured",
        WARMUP.as_secs_f64() * 1000.0,
        secs.as_secs_f64()
    );
    println!();
    println!(
        "| store | workers | tasks/s | p50 ms | p90 ms | p99 ms | max ms | enqueued | told | errors |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for store_name in ["memory", "file"] {
        for workers in WORKERS {
            let (server, dir) = fresh_server(store_name);
            let errors = Errors::default();
            let (r, succeeded, unfinished) = runtime.block_on(async {
                let r = run_cycle(&server.addr, workers, secs, &errors).await;
                let succeeded = task_gauge(&server.addr, "bench", "succeeded").await;
                let mut unfinished = Some(0);
                for status in ["queued", "running"] {
                    unfinished = match (unfinished, task_gauge(&server.addr, "bench", status).await)
                    {
                        (Some(a), Some(b)) => Some(a + b),
                        _ => None,
                    };
                }
                (r, succeeded, unfinished)
            });
            drop(server);
            drop(dir);
            if r.told != r.enqueued {
                errors.add(format!(
                    "{} of {} enqueued tasks never told their waiting client",
                    r.enqueued - r.told.min(r.enqueued),
                    r.enqueued
                ));
            }
            match succeeded {
                Some(n) if n == r.enqueued => {}
                Some(n) => errors.add(format!(
                    "server counts {n} succeeded tasks, client enqueued {}",
                    r.enqueued
                )),
                None => errors.add("could not read herald_tasks from /metrics"),
            }
            match unfinished {
                Some(0) => {}
                Some(n) => errors.add(format!("server still has {n} queued or running tasks")),
                None => errors.add("could not read herald_tasks from /metrics"),
            }
            let n_errors = keep(&format!("cycle {store_name}/{workers}"), errors.take());
            let h = &r.latency_us;
            println!(
                "| {store_name} | {workers} | {:.0} | {:.2} | {:.2} | {:.2} | {:.2} | {} | {} | {n_errors} |",
                r.rate,
                ms(h.value_at_quantile(0.50)),
                ms(h.value_at_quantile(0.90)),
                ms(h.value_at_quantile(0.99)),
                ms(h.max()),
                r.enqueued,
                r.told,
            );
        }
    }

    println!();
    println!(
        "2. complete → waiting client told: {rounds} rounds per mode after {WARMUP_ROUNDS} \
         warm-up rounds; long poll given {} ms to start waiting; short poll every {} ms, \
         complete at a random phase",
        LONG_POLL_SETTLE.as_millis(),
        POLL_INTERVAL.as_millis()
    );
    println!();
    println!("| store | wait mode | rounds | p50 ms | p90 ms | p99 ms | max ms | errors |");
    println!("|---|---|---:|---:|---:|---:|---:|---:|");
    for store_name in ["memory", "file"] {
        let (server, dir) = fresh_server(store_name);
        for mode in Mode::ALL {
            let errors = Errors::default();
            let h = runtime.block_on(run_latency(&server.addr, mode, rounds, &errors));
            let n_errors = keep(
                &format!("latency {store_name}/{}", mode.label()),
                errors.take(),
            );
            println!(
                "| {store_name} | {} | {} | {:.2} | {:.2} | {:.2} | {:.2} | {n_errors} |",
                mode.label(),
                h.len(),
                ms(h.value_at_quantile(0.50)),
                ms(h.value_at_quantile(0.90)),
                ms(h.value_at_quantile(0.99)),
                ms(h.max()),
            );
        }
        drop(server);
        drop(dir);
    }

    println!();
    println!("total wall time: {:.1} s", started.elapsed().as_secs_f64());
    if all_errors.is_empty() {
        println!(
            "no errors: every answer had the expected status, every task was told, \
             and each server counted exactly the tasks enqueued"
        );
    } else {
        println!("ERRORS:");
        for (what, n) in &all_errors {
            println!("  {n} × {what}");
        }
        std::process::exit(1);
    }
}
