//! The storage trait for tasks.

use async_trait::async_trait;
use tokio::sync::broadcast;

use super::machine::{self, Cancel, Decision};
use super::{NewTask, Payload, Status, Task, TaskError, TaskId};
use crate::name::Topic;

/// A change a client or worker asks for.
#[derive(Debug, Clone)]
pub enum Op {
    Progress {
        token: Option<String>,
        progress: Option<f64>,
        message: Option<String>,
    },
    Complete {
        token: Option<String>,
        result: Payload,
    },
    Fail {
        token: Option<String>,
        error: String,
        retry: bool,
    },
    Cancel,
}

impl Op {
    /// The call's name, as in its route.
    pub fn name(&self) -> &'static str {
        match self {
            Op::Progress { .. } => "progress",
            Op::Complete { .. } => "complete",
            Op::Fail { .. } => "fail",
            Op::Cancel => "cancel",
        }
    }

    /// What the state machine decides for `task` at `now`.
    pub fn decide(&self, task: &Task, now: u64) -> (Decision, Option<Cancel>) {
        match self {
            Op::Progress {
                token,
                progress,
                message,
            } => (
                machine::progress(task, token.as_deref(), *progress, message.clone(), now),
                None,
            ),
            Op::Complete { token, result } => (
                machine::complete(task, token.as_deref(), result.clone(), now),
                None,
            ),
            Op::Fail {
                token,
                error,
                retry,
            } => (
                machine::fail(task, token.as_deref(), error.clone(), *retry, now),
                None,
            ),
            Op::Cancel => machine::cancel(task, now),
        }
    }
}

/// Something happened in a queue on some node of a shared store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueSignal {
    /// The queue; empty means "every queue" (after a lost connection).
    pub queue: String,
    /// A task became claimable (else: positions may have moved).
    pub work: bool,
}

/// The outcome of [`TaskStore::update`].
#[derive(Debug, Clone)]
pub struct Updated {
    /// The status before the change.
    pub before: Status,
    /// The task after it (unchanged if nothing changed).
    pub task: Task,
    pub cancel: Option<Cancel>,
    /// Why the change was refused, if it was.
    pub refused: Option<TaskError>,
}

impl Updated {
    /// Builds the outcome from the task before and the machine's decision.
    pub fn from_decision(before: Task, decision: Decision, cancel: Option<Cancel>) -> Updated {
        Updated {
            before: before.status,
            refused: decision.answer.err(),
            task: decision.task.unwrap_or(before),
            cancel,
        }
    }
}

/// Where tasks are kept. Every change is saved together with the event it
/// emits on the task's topic, in one atomic step, so a waiter that sees the
/// task finished also finds its `done` or `error` event, and vice versa.
#[async_trait]
pub trait TaskStore: Send + Sync + 'static {
    /// Stores a new task, or returns the one enqueued before with the same
    /// idempotency key in this queue (`true`: replayed).
    async fn enqueue(&self, new: NewTask) -> Result<(Task, bool), TaskError>;

    /// [`TaskStore::enqueue`], with the task's position in its queue as the
    /// enqueue left it (`None` once it is no longer queued). Stores that
    /// know it as they enqueue answer it without reading the task again.
    async fn enqueue_placed(&self, new: NewTask) -> Result<(Task, Option<u64>, bool), TaskError> {
        let (task, replayed) = self.enqueue(new).await?;
        let position = self.get(task.id).await?.and_then(|(_, p)| p);
        Ok((task, position, replayed))
    }

    /// A task and, while it is queued, its position (1 = next).
    async fn get(&self, id: TaskId) -> Result<Option<(Task, Option<u64>)>, TaskError>;

    /// Hands the oldest claimable task of `queue` to a worker, if any: a
    /// task queued again is skipped until its backoff has passed
    /// ([`machine::claimable`]), without holding up those behind it.
    async fn claim(&self, queue: &Topic, lease_secs: f64) -> Result<Option<Task>, TaskError>;

    /// Applies a change through the state machine. `Err` only for an unknown
    /// task or a store failure; a refusal is in [`Updated::refused`], since
    /// it may still have changed the task (a running task that was asked to
    /// cancel ends cancelled when its worker is refused).
    ///
    /// `key` is the client's `Idempotency-Key`: a store that can answer
    /// "outcome unknown" ([`crate::StoreError::OutcomeUnknown`]) answers a
    /// retry with the same key with the first call's outcome. Stores that
    /// always know their outcome may ignore it.
    async fn update(&self, id: TaskId, op: Op, key: Option<&str>) -> Result<Updated, TaskError>;

    /// Settles every running task whose lease has run out; returns them.
    async fn expire(&self) -> Result<Vec<Task>, TaskError>;

    /// When the next lease runs out, if any task is running.
    async fn next_expiry(&self) -> Result<Option<u64>, TaskError>;

    /// The earliest moment after `after` (ms since 1970) at which a task
    /// queued again becomes claimable, and the queue of every task that does
    /// at that moment (once per task), so the engine can wake one waiting
    /// claim for each.
    async fn next_available(&self, after: u64) -> Result<Option<(u64, Vec<String>)>, TaskError>;

    /// How many tasks each queue holds in each status.
    async fn counts(&self) -> Result<Vec<(String, Status, u64)>, TaskError>;

    /// When the oldest task still queued in `queue` was enqueued (ms since
    /// 1970), if any is queued.
    async fn oldest_queued(&self, queue: &str) -> Result<Option<u64>, TaskError>;

    /// Up to `limit` tasks of `queue` in enqueue order (oldest first), only
    /// those in `status` if one is given, starting after the task numbered
    /// `after_seq` ([`Task::seq`]). Reads an index, not every task.
    async fn list(
        &self,
        queue: &str,
        status: Option<Status>,
        after_seq: Option<u64>,
        limit: usize,
    ) -> Result<Vec<Task>, TaskError>;

    /// For stores shared by several nodes: queue signals from every node
    /// (this one included), which then replace the engine's local ones.
    fn signals(&self) -> Option<broadcast::Receiver<QueueSignal>> {
        None
    }
}
