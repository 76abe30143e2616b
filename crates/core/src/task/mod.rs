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
mod json;
pub mod machine;
pub mod memory;
mod store;

#[cfg(any(test, feature = "contract-tests"))]
pub mod contract;

pub use backoff::{Backoff, BadBackoff};
pub use json::claim_json;
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
/// otherwise. JSON is kept as its text, checked once on the way in and
/// written out as it is kept: build it with [`Payload::json`], so that text
/// is valid and canonical.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "body", rename_all = "lowercase")]
pub enum Payload {
    Json(String),
    Text(String),
}

impl Payload {
    /// JSON text kept in its canonical form (compact, object keys sorted,
    /// numbers as serde_json writes them) — the form answers have always
    /// shown it in — so every later answer can copy it out instead of
    /// parsing it again. Text that is not JSON (or nests deeper than
    /// serde_json reads back) is refused, never kept as something else.
    pub fn json(text: String) -> Result<Payload, serde_json::Error> {
        let canonical = serde_json::from_str::<serde_json::Value>(&text)?.to_string();
        Ok(Payload::Json(if canonical == text {
            text
        } else {
            canonical
        }))
    }

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
    /// The task as clients see it, as JSON text; `position` is its place in
    /// the queue (1 = next) while queued.
    pub fn to_json_bytes(&self, position: Option<u64>) -> Vec<u8> {
        let mut out = Vec::with_capacity(512);
        json::write_task(&mut out, self, position, crate::event::now_ms());
        out
    }

    /// [`Task::to_json_bytes`] as a value, for documents that gather several
    /// tasks.
    pub fn to_json(&self, position: Option<u64>) -> serde_json::Value {
        serde_json::from_slice(&self.to_json_bytes(position)).unwrap_or_default()
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
    /// Chosen by the caller (usually [`TaskId::new`]), so that it can watch
    /// the task's topic before the task exists.
    pub id: TaskId,
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
            id: TaskId::new(),
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

    /// The document as it was built before it was written by hand: a
    /// `Value` (a sorted map) with the payload parsed again.
    fn value_built(t: &Task, position: Option<u64>) -> serde_json::Value {
        let time = |ms: Option<u64>| ms.map(herald_protocol::time::rfc3339_ms);
        let mut json = serde_json::json!({
            "id": t.id.to_string(),
            "queue": t.queue,
            "status": t.status.as_str(),
            "payload": t.payload.to_value(),
            "progress": t.progress,
            "message": t.message,
            "position": if t.status == Status::Queued { position } else { None },
            "result": t.result.as_ref().map(Payload::to_value),
            "error": t.error,
            "attempts": t.attempts,
            "max_attempts": t.max_attempts,
            "created_at": time(Some(t.created_ms)),
            "updated_at": time(Some(t.updated_ms)),
            "started_at": time(t.started_ms),
            "finished_at": time(t.finished_ms),
            "lease_expires_at": time(
                t.lease
                    .as_ref()
                    .filter(|_| t.status == Status::Running)
                    .map(|l| l.expires_ms)
            ),
        });
        if let Some(at) = t.waiting_until(crate::event::now_ms()) {
            json["available_at"] = herald_protocol::time::rfc3339_ms(at).into();
        }
        json
    }

    fn assert_same_text(t: &Task, position: Option<u64>) {
        let bytes = t.to_json_bytes(position);
        let text = std::str::from_utf8(&bytes).unwrap();
        assert_eq!(text, value_built(t, position).to_string(), "{t:?}");
    }

    #[test]
    fn the_written_document_is_the_one_the_value_gave() {
        let sent = r#"{ "z": [1, 2.50, 1e2, -0, "\u00e9\/"], "a": {"y": null, "b": true} }"#;
        let new = NewTask {
            id: TaskId::new(),
            queue: Topic::new("q.x-1").unwrap(),
            payload: Payload::json(sent.into()).unwrap(),
            max_attempts: 3,
            idempotency_key: Some("k".into()),
            backoff: Backoff::DEFAULT,
        };
        let queued = machine::enqueue(new, 7, 1_700_000_000_123);
        assert_same_text(&queued, Some(4));
        assert_same_text(&queued, None);
        let mut waiting = queued.clone();
        waiting.available_ms = Some(crate::event::now_ms() + 60_000);
        waiting.error = Some("boom \"quoted\"\n\u{1}é".into());
        waiting.attempts = 1;
        assert_same_text(&waiting, Some(1));
        let running = machine::claim(&queued, 1_700_000_001_000, 2.5);
        assert!(running.lease.is_some());
        assert_same_text(&running, Some(9));
        let mut reported = running.clone();
        reported.progress = Some(0.333_333_333_333_333_3);
        reported.message = Some("a third — nearly".into());
        assert_same_text(&reported, None);
        reported.progress = Some(f64::NAN);
        assert_same_text(&reported, None);
        for result in [
            Payload::json("[1, {\"b\":2, \"a\":1}]".into()).unwrap(),
            Payload::Text("{\"a\":1} as text\t".into()),
            Payload::json("\"s\"".into()).unwrap(),
        ] {
            let mut done = running.clone();
            done.status = Status::Succeeded;
            done.result = Some(result);
            done.progress = Some(1.0);
            done.finished_ms = Some(1_700_000_002_000);
            assert_same_text(&done, Some(3));
        }
        let mut text = queued;
        text.payload = Payload::Text("plain \u{7f} text".into());
        text.status = Status::Cancelled;
        assert_same_text(&text, None);
    }

    #[test]
    fn a_json_payload_is_kept_canonical_once() {
        let kept = Payload::json(r#"{"b": 1, "a": [1.0, 1e3]}"#.into()).unwrap();
        assert_eq!(kept, Payload::Json(r#"{"a":[1.0,1000.0],"b":1}"#.into()));
        assert!(
            Payload::json("nope".into()).is_err(),
            "refused, not kept as null"
        );
    }

    #[test]
    fn the_claim_and_progress_documents() {
        let new = NewTask {
            id: TaskId::new(),
            queue: Topic::new("q").unwrap(),
            payload: Payload::Text("p".into()),
            max_attempts: 3,
            idempotency_key: None,
            backoff: Backoff::DEFAULT,
        };
        let running = machine::claim(&machine::enqueue(new, 1, 1000), 2000, 30.0);
        let lease = running.lease.as_ref().unwrap();
        let want = serde_json::json!({
            "task": value_built(&running, None),
            "lease": {
                "expires": herald_protocol::time::rfc3339_ms(lease.expires_ms),
                "token": lease.token,
            },
        });
        assert_eq!(
            String::from_utf8(claim_json(&running)).unwrap(),
            want.to_string()
        );
        let mut unleased = running.clone();
        unleased.lease = None;
        let want = serde_json::json!({ "task": value_built(&unleased, None), "lease": null });
        assert_eq!(
            String::from_utf8(claim_json(&unleased)).unwrap(),
            want.to_string()
        );
        for (p, m) in [
            (None, None),
            (Some(0.5), Some("hé \"x\"")),
            (Some(1.0), None),
        ] {
            let want = serde_json::json!({ "progress": p, "message": m }).to_string();
            assert_eq!(json::progress_json(p, m), want);
        }
    }

    #[test]
    fn payloads_come_back_as_sent() {
        assert_eq!(Payload::Json("{\"a\":1}".into()).to_value()["a"], 1);
        assert_eq!(Payload::Text("{\"a\":1}".into()).to_value(), "{\"a\":1}");
    }
}
