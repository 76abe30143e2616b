//! The running tasks this node last wrote, as stored: where a change
//! starts.
//!
//! A worker nearly always reports progress and completes on the node it
//! claimed from. Starting from the task as this node wrote it, the Rust
//! state machine decides at once and the compare-and-set script is the
//! change's only round trip; without it, every change would first read the
//! task. A hint is never trusted: the script compares it with what is
//! stored and answers a stale one with the current task, so a stale hint
//! costs one more round, never a wrong decision, and a decision that writes
//! nothing (a refusal) is always made again on a fresh read.

use std::collections::HashMap;
use std::sync::Mutex;

use crate::task::{Status, TaskId};

/// At most this many tasks, each at most [`MAX_JSON`] bytes, so the hints
/// never hold more than 16 MiB however large payloads are.
const CAPACITY: usize = 4096;
const MAX_JSON: usize = 4096;

#[derive(Debug, Default)]
pub(super) struct Hints {
    /// A std mutex: held for one map operation, never across an `.await`.
    tasks: Mutex<HashMap<TaskId, String>>,
}

impl Hints {
    /// The task as this node last saw it stored, if it is running.
    pub(super) fn get(&self, id: TaskId) -> Option<String> {
        self.lock().get(&id).cloned()
    }

    /// Notes what is stored now for `id`. Only running tasks are kept:
    /// those are the ones a worker is about to change.
    pub(super) fn note(&self, id: TaskId, status: Status, json: &str) {
        let mut tasks = self.lock();
        if status != Status::Running || json.len() > MAX_JSON {
            tasks.remove(&id);
            return;
        }
        if tasks.len() >= CAPACITY && !tasks.contains_key(&id) {
            // Any one will do: a missing hint only costs a read.
            if let Some(evict) = tasks.keys().next().copied() {
                tasks.remove(&evict);
            }
        }
        tasks.insert(id, json.to_owned());
    }

    pub(super) fn forget(&self, id: TaskId) {
        self.lock().remove(&id);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<TaskId, String>> {
        self.tasks.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_running_tasks_only_and_stays_bounded() {
        let hints = Hints::default();
        let id = TaskId::new();
        hints.note(id, Status::Running, "{}");
        assert_eq!(hints.get(id).as_deref(), Some("{}"));
        hints.note(id, Status::Succeeded, "{}");
        assert_eq!(hints.get(id), None, "finished: forgotten");
        hints.note(id, Status::Running, &"x".repeat(MAX_JSON + 1));
        assert_eq!(hints.get(id), None, "too large to keep");
        for _ in 0..CAPACITY + 10 {
            hints.note(TaskId::new(), Status::Running, "{}");
        }
        assert_eq!(hints.lock().len(), CAPACITY);
    }
}
