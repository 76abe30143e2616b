//! `GET /queues/{queue}/work?lease=SECONDS&count=N`: a worker on one
//! WebSocket. The server hands it up to `count` tasks at a time (claimed
//! for it, each under its own lease) and takes its progress, complete and
//! fail ops as text frames, answering each; when the worker finishes a task
//! or its lease runs out, the next is claimed. The frames are in [`frame`].
//!
//! Why: a task costs the HTTP worker two requests (claim, complete) and a
//! connection's worth of kernel work each; here a complete and the next
//! task share one socket, and the ops of one worker run concurrently, so
//! on the durable store several completes share one group commit.
//!
//! When the socket ends (the worker closed it, the server stops, the token
//! expired), claiming stops; the tasks the worker still holds are left to
//! their leases, then queued again (at-least-once), as with a worker that
//! vanished between HTTP calls.

pub mod frame;

use std::collections::HashMap;
use std::time::Duration;

use axum::extract::rejection::PathRejection;
use axum::extract::ws::{Message, WebSocket, close_code};
use axum::extract::{Path, Request, State};
use axum::response::Response;
use futures_util::StreamExt;
use futures_util::future::BoxFuture;
use futures_util::stream::FuturesUnordered;
use herald_core::Topic;
use herald_core::heartbeat::Beat;
use herald_core::task::{Op, Payload, Task, TaskId};
use serde_json::value::RawValue;
use tokio::time::Instant;

use crate::access::Caller;
use crate::error::ApiError;
use crate::publish::path_topic;
use crate::query::Query;
use crate::state::AppState;
use crate::tasks::{Scope, allow_task, lease_secs, task_id};
use crate::transport::ws;

/// The most tasks one socket may hold at once.
pub const MAX_COUNT: u64 = 256;
/// Ops of one socket being applied at once; beyond it the socket is not
/// read until one is answered, so a flood of ops waits in TCP's buffers
/// rather than in the server's memory.
const MAX_OPS_IN_FLIGHT: usize = 512;
/// Room for an op's own fields around a result of `--max-body` bytes.
const FRAME_OVERHEAD: usize = 64 * 1024;
/// How long a claim waits before it is asked again (it is woken by the
/// queue's notification long before, whenever a task comes).
const CLAIM_WAIT: Duration = Duration::from_secs(3600);
/// A claim that failed (store unreachable) is tried again after this.
const CLAIM_RETRY: Duration = Duration::from_secs(1);

/// Opens the worker socket once the request checks out: the gate has
/// already allowed `work` on the queue.
pub async fn handle(
    State(state): State<AppState>,
    caller: Caller,
    path: Result<Path<String>, PathRejection>,
    request: Request,
) -> Result<Response, ApiError> {
    let queue = path_topic(path)?;
    let (mut parts, _body) = request.into_parts();
    let query = Query::parse(parts.uri.query());
    let lease = lease_secs(&query)?;
    let count = usize::try_from(query.integer("count", 1, 1, MAX_COUNT)?).unwrap_or(1);
    let upgrade = ws::upgrade_request(&mut parts, &state).await?;
    let max = state.config().max_body.saturating_add(FRAME_OVERHEAD);
    let until = caller.until();
    let session = Session {
        state: state.clone(),
        caller,
        queue,
        lease,
        count,
    };
    Ok(ws::upgrade_sized(&state, upgrade, max, move |socket| {
        session.run(socket, until)
    }))
}

/// One worker's socket.
struct Session {
    state: AppState,
    /// Asked about tasks this socket did not hand out (another queue's,
    /// another connection's), as the HTTP routes ask.
    caller: Caller,
    queue: Topic,
    lease: f64,
    count: usize,
}

/// An op's outcome, ready to be answered.
struct Done {
    reference: Option<Box<RawValue>>,
    id: TaskId,
    finishes: bool,
    result: Result<Task, ApiError>,
}

/// Counts open worker sockets (`herald_worker_sockets`) while alive.
struct Gauge;

impl Gauge {
    fn open() -> Gauge {
        metrics::gauge!("herald_worker_sockets").increment(1.0);
        Gauge
    }
}

impl Drop for Gauge {
    fn drop(&mut self) {
        metrics::gauge!("herald_worker_sockets").decrement(1.0);
    }
}

impl Session {
    /// Serves the socket until it ends. Every claim and op in flight is a
    /// future owned here, so all of them end with it.
    async fn run(self, mut socket: WebSocket, until: Option<Instant>) {
        let _gauge = Gauge::open();
        let mut beats = self.state.hub().heartbeat().beats();
        let expiry = sleep_until(until);
        tokio::pin!(expiry);
        let mut claims: FuturesUnordered<BoxFuture<'static, Task>> = FuturesUnordered::new();
        let mut ops: FuturesUnordered<BoxFuture<'static, Done>> = FuturesUnordered::new();
        // The tasks handed out and not yet finished, with their lease's end.
        let mut held: HashMap<TaskId, Instant> = HashMap::new();
        loop {
            while claims.len() + held.len() < self.count {
                claims.push(self.claim());
            }
            let lease_end = sleep_until(held.values().min().copied());
            let out = tokio::select! {
                incoming = socket.recv(), if ops.len() < MAX_OPS_IN_FLIGHT => match incoming {
                    Some(Ok(Message::Text(text))) => match self.op(text.as_str(), &held) {
                        Ok(op) => {
                            ops.push(op);
                            None
                        }
                        Err(answer) => Some(answer),
                    },
                    Some(Ok(Message::Binary(_))) => {
                        return ws::close(&mut socket, close_code::UNSUPPORTED, "ops are text frames").await;
                    }
                    Some(Ok(Message::Close(_))) | None => return,
                    // Pings are answered by the socket itself.
                    Some(Ok(_)) => None,
                    Some(Err(e)) => return ws::refuse_frame(&mut socket, e).await,
                },
                Some(task) = claims.next() => Some(self.handed(task, &mut held)),
                Some(done) = ops.next() => Some(answer(done, &mut held)),
                () = lease_end => {
                    // The worker kept a task past its lease: the reaper
                    // queues it again, and this socket claims another.
                    let now = Instant::now();
                    held.retain(|_, end| *end > now);
                    None
                }
                beat = beats.wait() => match beat {
                    Beat::KeepAlive => Some(Message::Ping(bytes::Bytes::new())),
                    Beat::Shutdown => {
                        return ws::close(&mut socket, close_code::AWAY, "server shutting down").await;
                    }
                },
                () = &mut expiry => {
                    return ws::close(
                        &mut socket,
                        ws::TOKEN_EXPIRED,
                        "the token expired: reconnect with a fresh one",
                    )
                    .await;
                }
            };
            if let Some(message) = out
                && socket.send(message).await.is_err()
            {
                return;
            }
        }
    }

    /// A claim for this socket: waits on the queue's notification until a
    /// task comes. Dropped with the socket (a claim dropped inside the
    /// store's step may leave a task claimed for nobody: its lease runs
    /// out and it is queued again).
    fn claim(&self) -> BoxFuture<'static, Task> {
        let tasks = self.state.tasks().clone();
        let queue = self.queue.clone();
        let lease = self.lease;
        let shutdown = self.state.hub().heartbeat().shutdown().clone();
        Box::pin(async move {
            loop {
                match tasks.claim(&queue, lease, CLAIM_WAIT).await {
                    Ok(Some(task)) => return task,
                    // The server is stopping: the socket closes on its own.
                    Ok(None) if shutdown.is_cancelled() => std::future::pending().await,
                    Ok(None) => {}
                    Err(e) => {
                        tracing::warn!(error = %e, queue = queue.as_str(), "a worker socket's claim failed; retrying");
                        tokio::time::sleep(CLAIM_RETRY).await;
                    }
                }
            }
        })
    }

    /// The `task` frame of a task just claimed, which the socket now holds.
    fn handed(&self, task: Task, held: &mut HashMap<TaskId, Instant>) -> Message {
        let expires = task
            .lease
            .as_ref()
            .map_or_else(herald_core::event::now_ms, |l| l.expires_ms);
        held.insert(task.id, instant_of(expires));
        Message::Text(frame::task(&herald_core::task::claim_json(&task)).into())
    }

    /// Parses an op and starts it; a frame that is no op is answered at
    /// once with its error frame.
    fn op(
        &self,
        text: &str,
        held: &HashMap<TaskId, Instant>,
    ) -> Result<BoxFuture<'static, Done>, Message> {
        let refuse = |reference: Option<&RawValue>, id: Option<&str>, e: ApiError| {
            Message::Text(
                frame::error(reference, id, e.code(), &e.to_string(), e.status().as_u16()).into(),
            )
        };
        let op = frame::parse(text)
            .map_err(|r| refuse(r.reference, r.id.as_deref(), ApiError::BadRequest(r.why)))?;
        let id = task_id(&op.id).map_err(|e| refuse(op.reference, Some(&op.id), e))?;
        let token = Some(op.lease.into_owned());
        let finishes = op.kind.finishes();
        let change = match op.kind {
            frame::Kind::Progress { progress, message } => Op::Progress {
                token,
                progress,
                message: message.map(|m| m.into_owned()),
            },
            frame::Kind::Complete(frame::Outcome::Json(raw)) => Op::Complete {
                token,
                // Kept as a JSON body is (same checks, same canonical form),
                // so a result reads back alike whichever way it came.
                result: crate::body::json_payload(raw.to_owned())
                    .map_err(|e| refuse(op.reference, Some(&op.id), e))?,
            },
            frame::Kind::Complete(frame::Outcome::Text(text)) => Op::Complete {
                token,
                result: Payload::Text(text.into_owned()),
            },
            frame::Kind::Fail { error, retry } => Op::Fail {
                token,
                error: error.into_owned(),
                retry,
            },
        };
        let reference = op.reference.map(RawValue::to_owned);
        // A task this socket handed out is of its queue, which the gate
        // allowed; any other is checked as the HTTP routes check it.
        let caller = (!held.contains_key(&id)).then(|| self.caller.clone());
        let state = self.state.clone();
        Ok(Box::pin(async move {
            let result = async {
                if let Some(caller) = caller {
                    allow_task(&state, &caller, id, Scope::Work).await?;
                }
                let (task, _) = state.tasks().update(id, change, None).await?;
                Ok(task)
            }
            .await;
            Done {
                reference,
                id,
                finishes,
                result,
            }
        }))
    }
}

/// The answer to an op, and what it changes in what the socket holds: a
/// finished task leaves it (so the next is claimed), as does one the worker
/// lost (`409`: lease lost or task cancelled; `404`); progress moves the
/// lease's end. A malformed op (`400`) or a store failure (`5xx`) changes
/// nothing: the worker still holds the task and may try again.
fn answer(done: Done, held: &mut HashMap<TaskId, Instant>) -> Message {
    let id = done.id.to_string();
    let reference = done.reference.as_deref();
    let text = match &done.result {
        Ok(task) => {
            if done.finishes {
                held.remove(&done.id);
            } else if let (Some(end), Some(lease)) = (held.get_mut(&done.id), &task.lease) {
                *end = instant_of(lease.expires_ms);
            }
            frame::ok(reference, &id, task.status.as_str())
        }
        Err(e) => {
            let status = e.status().as_u16();
            if status == 409 || status == 404 {
                held.remove(&done.id);
            }
            if status >= 500 {
                tracing::warn!(task = %id, error = ?e, "a worker socket's op failed");
            }
            frame::error(reference, Some(&id), e.code(), &e.to_string(), status)
        }
    };
    Message::Text(text.into())
}

/// The runtime's instant of a wall-clock time in ms (now, if past).
fn instant_of(ms: u64) -> Instant {
    let left = ms.saturating_sub(herald_core::event::now_ms());
    Instant::now() + Duration::from_millis(left)
}

/// Sleeps until `at`, for ever for `None`.
async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
