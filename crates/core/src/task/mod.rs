//! Tasks: work that clients enqueue, workers claim under a lease, and
//! clients wait for — by short poll, long poll or a stream of its events.
//!
//! ```text
//!            claim                complete
//!  Queued ─────────► Running ─────────────► Succeeded
//!    ▲  │              │ │  fail (retry, attempts left) / lease out
//!    │  │              │ └──────────────────────────────► Queued
//!    │  │ cancel       │ fail / lease out, no attempts left
//!    │  ▼              ▼
//!  Cancelled ◄──── (cancel requested, next call or lease out)   Failed
//! ```
//!
//! [`machine`] holds every transition as a pure function, so all stores
//! decide the same way; a store only loads, applies and saves atomically,
//! together with the event the transition emits on the task's topic.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::StoreError;
use crate::name::Topic;

mod backoff;
pub mod engine;
pub mod feed;
pub mod machine;
pub mod memory;
mod store;

#[cfg(any(test, feature = "contract-tests"))]
pub mod contract;

pub use backoff::{Backoff, BadBackoff};
pub use machine::Cancel;
pub use store::{Op, QueueSignal, TaskStore, Updated};

/// A task's id: a UUID (v7, so ids sort by creation).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct TaskId(pub uuid::Uuid);

impl TaskId {
    pub fn new() -> TaskId {
        TaskId(uuid::Uuid::now_v7())
    }

    /// The topic that carries this task's `progress`, `done` and `error`
    /// events.
    pub fn topic(&self) -> Topic {
        // "tasks." and a hyphenated UUID are always a valid topic name.
        Topic::new(&format!("tasks.{}", self.0)).unwrap_or_else(|_| unreachable_topic())
    }
}

#[cold]
fn unreachable_topic() -> Topic {
    Topic::new("tasks.invalid").unwrap_or_else(|_| unreachable!("a constant topic name is valid"))
}

impl Default for TaskId {
    fn default() -> Self {
        TaskId::new()
    }
}

impl fmt::Display for TaskId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.hyphenated().fmt(f)
    }
}

impl FromStr for TaskId {
    type Err = uuid::Error;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        uuid::Uuid::try_parse(s).map(TaskId)
    }
}

/// Where a task is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Queued,
    Running,
    Succeeded,
    Failed,
    Cancelled,
}

impl Status {
    pub const ALL: [Status; 5] = [
        Status::Queued,
        Status::Running,
        Status::Succeeded,
        Status::Failed,
        Status::Cancelled,
    ];

    pub fn is_finished(self) -> bool {
        matches!(self, Status::Succeeded | Status::Failed | Status::Cancelled)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Status::Queued => "queued",
            Status::Running => "running",
            Status::Succeeded => "succeeded",
            Status::Failed => "failed",
            Status::Cancelled => "cancelled",
        }
    }
}

/// A payload or result: JSON when it was sent as `application/json`, text
/// otherwise. JSON is kept as its text, checked once on the way in.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "body", rename_all = "lowercase")]
pub enum Payload {
    Json(String),
    Text(String),
}

impl Payload {
    /// The payload as a JSON value: the JSON itself, or the text as a string.
    pub fn to_value(&self) -> serde_json::Value {
        match self {
            Payload::Json(text) => serde_json::from_str(text).unwrap_or(serde_json::Value::Null),
            Payload::Text(text) => serde_json::Value::String(text.clone()),
        }
    }
}

/// A worker's hold on a running task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Lease {
    /// Names this lease; a worker that sends it proves it holds the task.
    pub token: String,
    /// When the lease runs out, in ms since the epoch.
    pub expires_ms: u64,
    /// How long each progress report extends it.
    pub secs: f64,
}

/// A task as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Task {
    pub id: TaskId,
    pub queue: String,
    /// Order of enqueueing within its store; the queue is FIFO by it.
    pub seq: u64,
    pub status: Status,
    pub payload: Payload,
    pub progress: Option<f64>,
    pub message: Option<String>,
    pub result: Option<Payload>,
    pub error: Option<String>,
    pub attempts: u32,
    pub max_attempts: u32,
    pub created_ms: u64,
    pub updated_ms: u64,
    pub started_ms: Option<u64>,
    pub finished_ms: Option<u64>,
    pub lease: Option<Lease>,
    /// A cancel arrived while running: the worker's next call gets `409`
    /// and the task ends `cancelled`.
    pub cancel_requested: bool,
    pub idempotency_key: Option<String>,
    /// How long a retry waits (tasks stored before backoff existed read as
    /// the default).
    #[serde(default)]
    pub backoff: Backoff,
    /// While queued again after a failed attempt: not claimable before
    /// this time (ms since the epoch). Cleared when claimed.
    #[serde(default)]
    pub available_ms: Option<u64>,
}

impl Task {
    /// The task as clients see it; `position` is its place in the queue
    /// (1 = next) while queued.
    pub fn to_json(&self, position: Option<u64>) -> serde_json::Value {
        let time = |ms: Option<u64>| ms.map(herald_protocol::time::rfc3339_ms);
        let mut json = serde_json::json!({
            "id": self.id.to_string(),
            "queue": self.queue,
            "status": self.status.as_str(),
            "payload": self.payload.to_value(),
            "progress": self.progress,
            "message": self.message,
            "position": if self.status == Status::Queued { position } else { None },
            "result": self.result.as_ref().map(Payload::to_value),
            "error": self.error,
            "attempts": self.attempts,
            "max_attempts": self.max_attempts,
            "created_at": time(Some(self.created_ms)),
            "updated_at": time(Some(self.updated_ms)),
            "started_at": time(self.started_ms),
            "finished_at": time(self.finished_ms),
            "lease_expires_at": time(
                self.lease
                    .as_ref()
                    .filter(|_| self.status == Status::Running)
                    .map(|l| l.expires_ms)
            ),
        });
        if let Some(at) = self.waiting_until(crate::event::now_ms()) {
            json["available_at"] = herald_protocol::time::rfc3339_ms(at).into();
        }
        json
    }

    /// When a queued task that may not be claimed at `now` becomes
    /// claimable; `None` when it is claimable (or not queued).
    pub fn waiting_until(&self, now: u64) -> Option<u64> {
        self.available_ms
            .filter(|&at| self.status == Status::Queued && at > now)
    }
}

/// A task to enqueue.
#[derive(Debug, Clone)]
pub struct NewTask {
    pub queue: Topic,
    pub payload: Payload,
    pub max_attempts: u32,
    pub idempotency_key: Option<String>,
    pub backoff: Backoff,
}

/// Why a task operation was refused.
#[derive(Debug, Clone, thiserror::Error)]
pub enum TaskError {
    #[error("no such task")]
    NotFound,
    /// The task is not in a state that allows this (finished, not running
    /// under a live lease, lease held by someone else, cancelled).
    #[error("{0}")]
    Conflict(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_parse_strictly_and_name_a_topic() {
        let id = TaskId::new();
        assert_eq!(id.to_string().parse::<TaskId>().unwrap(), id);
        assert!("not-a-uuid".parse::<TaskId>().is_err());
        assert!(id.topic().as_str().starts_with("tasks."));
    }

    #[test]
    fn available_at_shows_only_while_a_queued_task_waits() {
        let new = NewTask {
            queue: Topic::new("q").unwrap(),
            payload: Payload::Text("p".into()),
            max_attempts: 3,
            idempotency_key: None,
            backoff: Backoff::DEFAULT,
        };
        let mut t = machine::enqueue(new, 1, 1000);
        assert!(t.to_json(Some(1)).get("available_at").is_none());
        let later = crate::event::now_ms() + 60_000;
        t.available_ms = Some(later);
        let json = t.to_json(Some(1));
        assert_eq!(
            json["available_at"],
            herald_protocol::time::rfc3339_ms(later)
        );
        t.available_ms = Some(1500);
        assert!(t.to_json(Some(1)).get("available_at").is_none(), "past");
        t.available_ms = Some(later);
        t.status = Status::Running;
        assert!(t.to_json(None).get("available_at").is_none(), "not queued");
    }

    #[test]
    fn payloads_come_back_as_sent() {
        assert_eq!(Payload::Json("{\"a\":1}".into()).to_value()["a"], 1);
        assert_eq!(Payload::Text("{\"a\":1}".into()).to_value(), "{\"a\":1}");
    }
}
