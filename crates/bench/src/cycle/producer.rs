//! A producer of the `cycle` mode: it enqueues one task, waits for its
//! result the way `--wait` says, checks the result is its own, and starts
//! the next, until the window closes.
//!
//! The payload `{"p":P,"seq":N}` names the producer and its sequence
//! number; the workers echo it as the result, so a result told to the wrong
//! producer, or twice, shows. Enqueues, long polls and SSE streams go over
//! one keep-alive [`Conn`] per producer (the stream of a task ends after
//! `done`, so the connection carries the next request); a WebSocket is a
//! new socket per task, as a client following one task would open.

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use hdrhistogram::Histogram;
use herald_protocol::json::WireEvent;
use herald_protocol::sse::{Decoder, Frame};
use serde_json::Value;
use tokio_tungstenite::tungstenite::Message;

use super::worker::open_ws;
use super::{Failure, Shared, Wait, Window};
use crate::http1::{Conn, request};
use crate::report::new_hist;
use crate::tasks::{PATIENCE, send, unexpected};

/// How long a waiting request lasts before it asks again, in seconds.
const TASK_WAIT: u32 = 30;
/// How long a producer waits for the server's close after `done` on a
/// WebSocket, counting any further `done` as a duplicate.
const CLOSE_WAIT: Duration = Duration::from_secs(5);

/// What the producers of a run did: every task sent and told, and the
/// latencies of those told inside the window.
pub struct Tally {
    pub sent: u64,
    /// Tasks whose own result came back.
    pub told: u64,
    /// Results that were not the producer's (or not `succeeded`).
    pub wrong: u64,
    /// A second `done` for a task already told.
    pub duplicates: u64,
    /// Tasks told inside the window: the rate's numerator.
    pub in_window: u64,
    /// Enqueue sent → result in hand, µs, for the tasks in the window.
    pub hist: Histogram<u64>,
}

impl Tally {
    pub fn new() -> Tally {
        Tally {
            sent: 0,
            told: 0,
            wrong: 0,
            duplicates: 0,
            in_window: 0,
            hist: new_hist(),
        }
    }

    /// Adds another producer's tally to this one.
    pub fn add(&mut self, o: &Tally) {
        self.sent += o.sent;
        self.told += o.told;
        self.wrong += o.wrong;
        self.duplicates += o.duplicates;
        self.in_window += o.in_window;
        self.hist.add(&o.hist).unwrap();
    }
}

/// A task's final state as a producer got it.
struct Told {
    /// When the result was in hand.
    at: Instant,
    task: Value,
    /// Further `done` events after the first (a stream that tells twice).
    extra: u64,
}

/// Producer `p`: enqueue, wait, check, again, until the window closes or
/// the run stops.
pub async fn run(shared: Shared, wait: Wait, p: usize, window: Window) -> Tally {
    let mut client = Client {
        conn: Conn::new(&shared.t),
        shared: shared.clone(),
    };
    let mut tally = Tally::new();
    let mut seq = 0u64;
    while Instant::now() < window.to && !shared.stopped() {
        let payload = format!(r#"{{"p":{p},"seq":{seq}}}"#);
        let sent = Instant::now();
        tally.sent += 1;
        match client.cycle(wait, &payload).await {
            Ok(told) => {
                tally.duplicates += told.extra;
                let result = &told.task["result"];
                let own =
                    told.task["status"] == "succeeded" && result["p"] == p && result["seq"] == seq;
                if own {
                    tally.told += 1;
                    if window.holds(told.at) {
                        tally.in_window += 1;
                        let us = told.at.duration_since(sent).as_micros() as u64;
                        tally.hist.saturating_record(us);
                    }
                } else {
                    tally.wrong += 1;
                    shared
                        .errors
                        .add("a task told a result that was not its own");
                }
            }
            Err(f) => {
                shared.fail(f);
                // Do not spin on a failing server.
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        seq += 1;
    }
    tally
}

/// One producer's connection to the server.
struct Client {
    shared: Shared,
    conn: Conn,
}

impl Client {
    /// One task, from the enqueue to its result in hand.
    async fn cycle(&mut self, wait: Wait, payload: &str) -> Result<Told, Failure> {
        match wait {
            Wait::LongPoll => {
                let id = self.enqueue(payload).await?;
                self.long_poll(&id).await
            }
            Wait::Sse => {
                let id = self.enqueue(payload).await?;
                self.sse(&id).await
            }
            Wait::Ws => {
                let id = self.enqueue(payload).await?;
                self.ws(&id).await
            }
            Wait::Enqueue => self.enqueue_and_wait(payload).await,
        }
    }

    /// Sends one request on the producer's connection.
    async fn send(
        &mut self,
        method: &str,
        path: &str,
        more: &[&str],
        body: &[u8],
        what: &str,
    ) -> Result<crate::http1::Answer, Failure> {
        let req = request(
            method,
            path,
            &self.shared.t.host,
            &self.shared.headers(more),
            body,
        );
        send(&mut self.conn, &req, what)
            .await
            .map_err(Failure::once)
    }

    /// `POST /queues/{q}/tasks`: the new task's id.
    async fn enqueue(&mut self, payload: &str) -> Result<String, Failure> {
        let path = format!("/queues/{}/tasks", self.shared.queue);
        let json = ["Content-Type: application/json"];
        let a = self
            .send("POST", &path, &json, payload.as_bytes(), "enqueue")
            .await?;
        if a.status != 201 {
            return Err(Failure::once(unexpected("enqueue", &a)));
        }
        task_json(&a.body)
            .and_then(|v| v["id"].as_str().map(str::to_owned))
            .ok_or_else(|| Failure::once("enqueue: 201 without a task id"))
    }

    /// `GET /tasks/{id}?wait=30` until the task is finished (`408`: ask
    /// again).
    async fn long_poll(&mut self, id: &str) -> Result<Told, Failure> {
        let path = format!("/tasks/{id}?wait={TASK_WAIT}");
        loop {
            let a = self.send("GET", &path, &[], b"", "wait").await?;
            let at = Instant::now();
            match a.status {
                200 => {
                    let task = task_json(&a.body)
                        .ok_or_else(|| Failure::once("wait: 200 that is not JSON"))?;
                    return Ok(Told { at, task, extra: 0 });
                }
                408 => continue,
                _ => return Err(Failure::once(unexpected("wait", &a))),
            }
        }
    }

    /// `POST /queues/{q}/tasks?wait=30`: `200` with the finished task, or
    /// `408` with the task still unfinished, then a long poll. A `201`
    /// (the server ignored `wait`), `400` or `404` means this server cannot
    /// enqueue and wait.
    async fn enqueue_and_wait(&mut self, payload: &str) -> Result<Told, Failure> {
        let path = format!("/queues/{}/tasks?wait={TASK_WAIT}", self.shared.queue);
        let json = ["Content-Type: application/json"];
        let a = self
            .send("POST", &path, &json, payload.as_bytes(), "enqueue?wait")
            .await?;
        let at = Instant::now();
        match a.status {
            200 => {
                let task = task_json(&a.body)
                    .ok_or_else(|| Failure::once("enqueue?wait: 200 that is not JSON"))?;
                Ok(Told { at, task, extra: 0 })
            }
            408 => {
                let id = task_json(&a.body)
                    .and_then(|v| v["id"].as_str().map(str::to_owned))
                    .ok_or_else(|| Failure::once("enqueue?wait: 408 without the task"))?;
                self.long_poll(&id).await
            }
            201 | 400 | 404 => Err(Failure::unsupported(format!(
                "--wait enqueue: the server answered {} to POST {path}; it cannot enqueue and \
                 wait in one request (a herald with `?wait=` on enqueue is needed)",
                a.status
            ))),
            _ => Err(Failure::once(unexpected("enqueue?wait", &a))),
        }
    }

    /// `GET /tasks/{id}/events` as SSE on the keep-alive connection: the
    /// stream ends after `done`, so the whole answer is the story.
    async fn sse(&mut self, id: &str) -> Result<Told, Failure> {
        let path = format!("/tasks/{id}/events");
        let accept = ["Accept: text/event-stream"];
        let a = self.send("GET", &path, &accept, b"", "sse").await?;
        let at = Instant::now();
        if a.status != 200 {
            return Err(Failure::once(unexpected("sse", &a)));
        }
        let mut found: Option<Told> = None;
        for f in Decoder::new().feed(&a.body) {
            let Frame::Event { event, data, .. } = f else {
                continue;
            };
            match (event.as_str(), &mut found) {
                ("done", Some(t)) => t.extra += 1,
                ("done", None) => {
                    let task = task_json(data.as_bytes())
                        .ok_or_else(|| Failure::once("sse: done whose data is not JSON"))?;
                    found = Some(Told { at, task, extra: 0 });
                }
                ("error", _) => return Err(Failure::once("sse: the task ended in error")),
                _ => {}
            }
        }
        found.ok_or_else(|| Failure::once("sse: the stream ended without done"))
    }

    /// `GET /tasks/{id}/events` as a WebSocket: frames until `done`, then
    /// the server's close (a second `done` before it is a duplicate).
    async fn ws(&mut self, id: &str) -> Result<Told, Failure> {
        let path = format!("/tasks/{id}/events");
        let mut ws = open_ws(&self.shared, &path)
            .await
            .map_err(|(_, e)| Failure::once(format!("ws: {e}")))?;
        let mut found: Option<Told> = None;
        loop {
            let limit = if found.is_some() {
                CLOSE_WAIT
            } else {
                PATIENCE
            };
            let m = match tokio::time::timeout(limit, ws.next()).await {
                Ok(m) => m,
                Err(_) if found.is_some() => break,
                Err(_) => return Err(Failure::once("ws: no done in time")),
            };
            let text = match m {
                Some(Ok(Message::Text(t))) => t,
                Some(Ok(Message::Close(_))) | None => break,
                Some(Ok(_)) => continue,
                // The result is in hand; a rough close does not undo it.
                Some(Err(_)) if found.is_some() => break,
                Some(Err(e)) => return Err(Failure::once(format!("ws: {e}"))),
            };
            let Ok(ev) = serde_json::from_str::<WireEvent>(text.as_str()) else {
                return Err(Failure::once("ws: a frame that is not an event"));
            };
            match (ev.event.as_str(), &mut found) {
                ("done", Some(t)) => t.extra += 1,
                ("done", None) => {
                    let at = Instant::now();
                    let task = task_json(ev.data.as_bytes())
                        .ok_or_else(|| Failure::once("ws: done whose data is not JSON"))?;
                    found = Some(Told { at, task, extra: 0 });
                }
                ("error", _) => return Err(Failure::once("ws: the task ended in error")),
                _ => {}
            }
        }
        found.ok_or_else(|| Failure::once("ws: closed without done"))
    }
}

/// A task (or any JSON) from a body.
fn task_json(body: &[u8]) -> Option<Value> {
    serde_json::from_slice(body).ok()
}
