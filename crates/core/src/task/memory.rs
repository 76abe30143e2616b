//! Tasks in the memory store: gone on restart, like its events.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use async_trait::async_trait;

use super::machine::{self, Decision};
use super::store::{Op, TaskStore, Updated};
use super::{NewTask, Status, Task, TaskError, TaskId};
use crate::event::now_ms;
use crate::name::{EventType, Topic};
use crate::store::NewEvent;
use crate::store::memory::MemoryStore;

/// The task tables of a [`MemoryStore`].
#[derive(Debug, Default)]
pub struct MemTasks {
    tasks: HashMap<TaskId, Task>,
    /// Per queue, the queued tasks by enqueue order.
    queued: HashMap<String, BTreeMap<u64, TaskId>>,
    /// (queue, idempotency key) → task.
    keys: HashMap<(String, String), TaskId>,
    /// Running tasks by lease deadline, so the reaper never scans them all.
    leases: BTreeSet<(u64, TaskId)>,
    /// Tasks queued again with a backoff, by when they become claimable
    /// (kept until they leave the queue; the engine asks what comes next).
    waiting: BTreeSet<(u64, TaskId)>,
    seq: u64,
}

/// The lease deadline of a running task.
fn deadline(task: &Task) -> Option<u64> {
    task.lease
        .as_ref()
        .filter(|_| task.status == Status::Running)
        .map(|l| l.expires_ms)
}

/// When a queued task with a backoff becomes claimable.
fn available(task: &Task) -> Option<u64> {
    task.available_ms.filter(|_| task.status == Status::Queued)
}

impl MemTasks {
    fn position(&self, task: &Task) -> Option<u64> {
        (task.status == Status::Queued).then(|| {
            let ahead = self
                .queued
                .get(&task.queue)
                .map_or(0, |q| q.range(..task.seq).count());
            ahead as u64 + 1
        })
    }

    /// Replaces a task, keeping the queue and lease indexes in step.
    fn put(&mut self, task: Task) {
        if let Some(at) = self.tasks.get(&task.id).and_then(deadline) {
            self.leases.remove(&(at, task.id));
        }
        if let Some(at) = deadline(&task) {
            self.leases.insert((at, task.id));
        }
        if let Some(at) = self.tasks.get(&task.id).and_then(available) {
            self.waiting.remove(&(at, task.id));
        }
        if let Some(at) = available(&task) {
            self.waiting.insert((at, task.id));
        }
        // Looked up by `&str` first: the queue's name is copied once, not
        // on every change.
        if task.status == Status::Queued {
            match self.queued.get_mut(task.queue.as_str()) {
                Some(queue) => {
                    queue.insert(task.seq, task.id);
                }
                None => {
                    let queue = BTreeMap::from([(task.seq, task.id)]);
                    self.queued.insert(task.queue.clone(), queue);
                }
            }
        } else if let Some(queue) = self.queued.get_mut(task.queue.as_str()) {
            queue.remove(&task.seq);
        }
        self.tasks.insert(task.id, task);
    }

    /// Drops finished tasks that finished before `cutoff` (retention).
    pub fn forget_finished_before(&mut self, cutoff: u64) {
        let old: Vec<TaskId> = self
            .tasks
            .values()
            .filter(|t| t.finished_ms.is_some_and(|f| f < cutoff))
            .map(|t| t.id)
            .collect();
        for id in old {
            if let Some(t) = self.tasks.remove(&id)
                && let Some(k) = t.idempotency_key
            {
                self.keys.remove(&(t.queue, k));
            }
        }
    }
}

impl MemoryStore {
    /// Saves a decision and appends its event under both locks, so the two
    /// are seen together. The event's data moves out of the decision.
    fn apply(&self, tasks: &mut MemTasks, decision: &mut Decision) {
        let Some(task) = decision.task.clone() else {
            return;
        };
        let id = task.id;
        tasks.put(task);
        if let Some(emit) = decision.emit.take() {
            let event = NewEvent {
                topic: id.topic(),
                kind: EventType::new(emit.kind).unwrap_or_else(|_| EventType::message()),
                data: emit.data,
                idempotency_key: None,
            };
            let mut state = self.lock();
            self.append_locked(&mut state, vec![event], now_ms());
        }
    }
}

#[async_trait]
impl TaskStore for MemoryStore {
    async fn enqueue(&self, new: NewTask) -> Result<(Task, bool), TaskError> {
        self.enqueue_placed(new)
            .await
            .map(|(task, _, replayed)| (task, replayed))
    }

    async fn enqueue_placed(&self, new: NewTask) -> Result<(Task, Option<u64>, bool), TaskError> {
        let mut tasks = self.tasks_lock();
        let key = new
            .idempotency_key
            .clone()
            .map(|k| (new.queue.as_str().to_owned(), k));
        if let Some(task) = key
            .as_ref()
            .and_then(|k| tasks.keys.get(k))
            .and_then(|id| tasks.tasks.get(id))
        {
            return Ok((task.clone(), tasks.position(task), true));
        }
        tasks.seq += 1;
        let task = machine::enqueue(new, tasks.seq, now_ms());
        if let Some(k) = key {
            tasks.keys.insert(k, task.id);
        }
        tasks.put(task.clone());
        // The newest task is the last of its queue: its place is the
        // queue's length, no count needed.
        let position = tasks.queued.get(&task.queue).map(|q| q.len() as u64);
        Ok((task, position, false))
    }

    async fn get(&self, id: TaskId) -> Result<Option<(Task, Option<u64>)>, TaskError> {
        let tasks = self.tasks_lock();
        Ok(tasks.tasks.get(&id).map(|t| (t.clone(), tasks.position(t))))
    }

    async fn claim(&self, queue: &Topic, lease_secs: f64) -> Result<Option<Task>, TaskError> {
        let mut tasks = self.tasks_lock();
        let now = now_ms();
        // Oldest first, stepping over tasks still waiting out their backoff
        // (few: retried failures in flight), which keep their place.
        let next = tasks.queued.get(queue.as_str()).and_then(|q| {
            q.values()
                .filter_map(|id| tasks.tasks.get(id))
                .find(|t| machine::claimable(t, now))
        });
        let Some(task) = next.cloned() else {
            return Ok(None);
        };
        let running = machine::claim(&task, now, lease_secs);
        tasks.put(running.clone());
        Ok(Some(running))
    }

    async fn update(&self, id: TaskId, op: Op, _key: Option<&str>) -> Result<Updated, TaskError> {
        let mut tasks = self.tasks_lock();
        let task = tasks.tasks.get(&id).cloned().ok_or(TaskError::NotFound)?;
        let (mut decision, cancel) = op.decide(&task, now_ms());
        self.apply(&mut tasks, &mut decision);
        Ok(Updated::from_decision(task, decision, cancel))
    }

    async fn expire(&self) -> Result<Vec<Task>, TaskError> {
        let mut tasks = self.tasks_lock();
        let now = now_ms();
        let due: Vec<TaskId> = tasks
            .leases
            .range(..=(now, TaskId(uuid::Uuid::max())))
            .map(|(_, id)| *id)
            .collect();
        let decisions: Vec<Decision> = due
            .iter()
            .filter_map(|id| tasks.tasks.get(id))
            .filter_map(|t| machine::expire(t, now))
            .collect();
        let mut out = Vec::with_capacity(decisions.len());
        for mut d in decisions {
            self.apply(&mut tasks, &mut d);
            out.extend(d.task);
        }
        Ok(out)
    }

    async fn next_expiry(&self) -> Result<Option<u64>, TaskError> {
        let tasks = self.tasks_lock();
        Ok(tasks.leases.first().map(|(at, _)| *at))
    }

    async fn next_available(&self, after: u64) -> Result<Option<(u64, Vec<String>)>, TaskError> {
        let tasks = self.tasks_lock();
        let from = (after.saturating_add(1), TaskId(uuid::Uuid::nil()));
        let Some(&(at, _)) = tasks.waiting.range(from..).next() else {
            return Ok(None);
        };
        let queues = tasks
            .waiting
            .range((at, TaskId(uuid::Uuid::nil()))..=(at, TaskId(uuid::Uuid::max())))
            .filter_map(|(_, id)| tasks.tasks.get(id))
            .map(|t| t.queue.clone())
            .collect();
        Ok(Some((at, queues)))
    }

    async fn oldest_queued(&self, queue: &str) -> Result<Option<u64>, TaskError> {
        let tasks = self.tasks_lock();
        Ok(tasks
            .queued
            .get(queue)
            .and_then(|q| q.values().next())
            .and_then(|id| tasks.tasks.get(id))
            .map(|t| t.created_ms))
    }

    async fn list(
        &self,
        queue: &str,
        status: Option<Status>,
        after_seq: Option<u64>,
        limit: usize,
    ) -> Result<Vec<Task>, TaskError> {
        // Memory keeps no per-queue index of every task: one pass over the
        // tasks picks the `limit` oldest matching ones without sorting all.
        let tasks = self.tasks_lock();
        let mut found: Vec<&Task> = tasks
            .tasks
            .values()
            .filter(|t| {
                t.queue == queue
                    && status.is_none_or(|s| t.status == s)
                    && after_seq.is_none_or(|a| t.seq > a)
            })
            .collect();
        if found.len() > limit {
            found.select_nth_unstable_by_key(limit, |t| t.seq);
            found.truncate(limit);
        }
        found.sort_unstable_by_key(|t| t.seq);
        Ok(found.into_iter().cloned().collect())
    }

    async fn counts(&self) -> Result<Vec<(String, Status, u64)>, TaskError> {
        let tasks = self.tasks_lock();
        let mut counts: HashMap<(String, Status), u64> = HashMap::new();
        for t in tasks.tasks.values() {
            *counts.entry((t.queue.clone(), t.status)).or_default() += 1;
        }
        Ok(counts.into_iter().map(|((q, s), n)| (q, s, n)).collect())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::fanout::Fanout;
    use crate::store::Retention;

    #[tokio::test]
    async fn keeps_the_task_contract() {
        crate::task::contract::run(|| async {
            MemoryStore::new(Retention::default(), Fanout::new(64))
                as Arc<dyn crate::task::contract::Both>
        })
        .await;
    }
}
