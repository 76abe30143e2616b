//! Tasks in Redis: the task as JSON under `herald:task:{id}`, queued ids in
//! a sorted set per queue (by enqueue order), running ids in `herald:leases`
//! (by lease deadline), tasks waiting out a retry backoff in
//! `herald:waiting` (`queue|id`, by when they become claimable). Every change is a compare-and-set script: read the
//! task, let the Rust state machine decide, write only if nobody changed it
//! meanwhile (else read again) — so two nodes never both win a claim.

use async_trait::async_trait;
use redis::AsyncCommands;
use tokio::sync::broadcast;

use super::resend::{self, CLIENT_MARK_TTL, MARK_TTL};
use super::{RedisStore, key_ttl, unavailable};
use crate::error::StoreError;
use crate::event::now_ms;
use crate::name::Topic;
use crate::task::machine::{self, Decision};
use crate::task::{NewTask, Op, Status, Task, TaskError, TaskId, TaskStore, Updated};

/// Rounds of compare-and-set before giving up on a hotly contended task.
const CAS_ROUNDS: usize = 32;

/// The write id a task change carries (see `resend.rs`).
struct Mark {
    id: String,
    ttl: std::time::Duration,
    /// The mark keeps the whole outcome, for a client's retry.
    full: bool,
}

impl Mark {
    /// A fresh id, only for the store's own sending again.
    fn internal() -> Mark {
        Mark {
            id: resend::write_id(),
            ttl: MARK_TTL,
            full: false,
        }
    }

    /// An id named by the client's `Idempotency-Key` for this call on this
    /// task, so its retry meets the mark its first try left.
    fn client(task: TaskId, op: &Op, key: &str) -> Mark {
        Mark {
            id: format!("op:{task}:{}:{key}", op.name()),
            ttl: CLIENT_MARK_TTL,
            full: true,
        }
    }
}

fn encode(task: &Task) -> Result<String, StoreError> {
    serde_json::to_string(task).map_err(|e| StoreError::Internal(e.to_string()))
}

fn decode(json: &str) -> Result<Task, StoreError> {
    serde_json::from_str(json)
        .map_err(|e| StoreError::Internal(format!("a stored task is unreadable: {e}")))
}

impl RedisStore {
    async fn load(&self, id: TaskId) -> Result<Option<(String, Task)>, StoreError> {
        let mut conn = self.conn();
        let json: Option<String> = conn
            .get(format!("herald:task:{id}"))
            .await
            .map_err(|e| unavailable("reading a task", e))?;
        json.map(|j| decode(&j).map(|t| (j, t))).transpose()
    }

    /// Writes `new` if the task is still `old` (`None`: it must not exist),
    /// with its queue, lease, counts and emitted event, under the write id
    /// of `mark`. `Ok(false)`: it changed meanwhile. The string is the id
    /// already holding `idem`.
    async fn cas(
        &self,
        old: Option<(&str, Status)>,
        new: &Task,
        emit: Option<&machine::Emit>,
        idem: Option<&str>,
        mark: &Mark,
    ) -> Result<(bool, String), StoreError> {
        let finished_ttl = self
            .retention
            .max_age
            .map_or(24 * 3600, |a| a.as_secs().max(1));
        let lease = new
            .lease
            .as_ref()
            .filter(|_| new.status == Status::Running)
            .map_or(String::new(), |l| l.expires_ms.to_string());
        let available = new
            .available_ms
            .filter(|_| new.status == Status::Queued)
            .map_or(String::new(), |at| at.to_string());
        let mut invocation = self.scripts.task.prepare_invoke();
        invocation
            .arg(new.id.to_string())
            .arg(old.map_or("", |(json, _)| json))
            .arg(encode(new)?)
            .arg(&new.queue)
            .arg(new.seq)
            .arg(old.map_or("", |(_, s)| s.as_str()))
            .arg(new.status.as_str())
            .arg(lease)
            .arg(emit.map_or("", |e| e.kind))
            .arg(emit.map_or("", |e| e.data.as_str()))
            .arg(self.retention.max_events)
            .arg(key_ttl(&self.retention))
            .arg(finished_ttl)
            .arg(idem.unwrap_or(""))
            .arg(&mark.id)
            .arg(mark.ttl.as_secs())
            .arg(if mark.full { "1" } else { "0" })
            .arg(available);
        let (ok, other): (i64, String) = self.write("changing a task", &invocation).await?;
        Ok((ok == 1, other))
    }

    /// The answer a change named by `mark` got, if it was made already: a
    /// client retrying with its own key after an unknown outcome gets the
    /// first answer, not a refusal from the state that change led to.
    async fn marked(&self, mark: &Mark) -> Result<Option<Updated>, TaskError> {
        if !mark.full {
            return Ok(None);
        }
        let mut conn = self.conn();
        let found: Option<String> = conn
            .get(format!("herald:write:{}", mark.id))
            .await
            .map_err(|e| unavailable("reading a write mark", e))?;
        let Some(found) = found else { return Ok(None) };
        let (_, _, before, task): (i64, String, String, String) = serde_json::from_str(&found)
            .map_err(|e| StoreError::Internal(format!("a write mark is unreadable: {e}")))?;
        let before = Status::ALL
            .into_iter()
            .find(|s| s.as_str() == before)
            .ok_or_else(|| StoreError::Internal(format!("a write mark holds status {before:?}")))?;
        Ok(Some(Updated {
            before,
            task: decode(&task)?,
            cancel: None,
            refused: None,
        }))
    }

    /// Applies `decide` to the current task until the write holds.
    async fn change<F>(&self, id: TaskId, mark: &Mark, mut decide: F) -> Result<Updated, TaskError>
    where
        F: FnMut(&Task, u64) -> (Decision, Option<crate::task::Cancel>),
    {
        if let Some(done) = self.marked(mark).await? {
            return Ok(done);
        }
        for _ in 0..CAS_ROUNDS {
            let (json, task) = self.load(id).await?.ok_or(TaskError::NotFound)?;
            let (decision, cancel) = decide(&task, now_ms());
            if let Some(new) = &decision.task {
                let (ok, _) = self
                    .cas(
                        Some((&json, task.status)),
                        new,
                        decision.emit.as_ref(),
                        None,
                        mark,
                    )
                    .await?;
                if !ok {
                    continue;
                }
            }
            return Ok(Updated::from_decision(task, decision, cancel));
        }
        Err(TaskError::Conflict(
            "the task is changing too fast; try again".into(),
        ))
    }

    /// Positions may be computed on any node.
    async fn position(&self, task: &Task) -> Result<Option<u64>, StoreError> {
        if task.status != Status::Queued {
            return Ok(None);
        }
        let mut conn = self.conn();
        let rank: Option<u64> = conn
            .zrank(format!("herald:queue:{}", task.queue), task.id.to_string())
            .await
            .map_err(|e| unavailable("computing a position", e))?;
        Ok(rank.map(|r| r + 1))
    }
}

#[async_trait]
impl TaskStore for RedisStore {
    async fn enqueue(&self, new: NewTask) -> Result<(Task, bool), TaskError> {
        let mut conn = self.conn();
        let seq: u64 = conn
            .incr("herald:task-seq", 1)
            .await
            .map_err(|e| unavailable("numbering a task", e))?;
        let key = new.idempotency_key.clone();
        let task = machine::enqueue(new, seq, now_ms());
        let (ok, holder) = self
            .cas(None, &task, None, key.as_deref(), &Mark::internal())
            .await?;
        if ok {
            return Ok((task, false));
        }
        let id: TaskId = holder.parse().map_err(|_| {
            TaskError::Conflict("the idempotency key is being used right now".into())
        })?;
        let (_, known) = self.load(id).await?.ok_or(TaskError::NotFound)?;
        Ok((known, true))
    }

    async fn get(&self, id: TaskId) -> Result<Option<(Task, Option<u64>)>, TaskError> {
        let Some((_, task)) = self.load(id).await? else {
            return Ok(None);
        };
        let position = self.position(&task).await?;
        Ok(Some((task, position)))
    }

    async fn claim(&self, queue: &Topic, lease_secs: f64) -> Result<Option<Task>, TaskError> {
        for _ in 0..CAS_ROUNDS {
            let mut conn = self.conn();
            let now = now_ms();
            let next: Option<String> = self
                .scripts
                .claimable
                .arg(queue.as_str())
                .arg(now)
                .invoke_async(&mut conn)
                .await
                .map_err(|e| unavailable("finding work", e))?;
            let Some(id) = next.and_then(|i| i.parse::<TaskId>().ok()) else {
                return Ok(None);
            };
            let Some((json, task)) = self.load(id).await? else {
                continue;
            };
            if !machine::claimable(&task, now) {
                continue;
            }
            let running = machine::claim(&task, now, lease_secs);
            let (ok, _) = self
                .cas(
                    Some((&json, task.status)),
                    &running,
                    None,
                    None,
                    &Mark::internal(),
                )
                .await?;
            if ok {
                return Ok(Some(running));
            }
        }
        Ok(None)
    }

    async fn update(&self, id: TaskId, op: Op, key: Option<&str>) -> Result<Updated, TaskError> {
        let mark = key.map_or_else(Mark::internal, |key| Mark::client(id, &op, key));
        self.change(id, &mark, |task, now| op.decide(task, now))
            .await
    }

    async fn expire(&self) -> Result<Vec<Task>, TaskError> {
        let mut conn = self.conn();
        let due: Vec<String> = conn
            .zrangebyscore("herald:leases", "-inf", now_ms())
            .await
            .map_err(|e| unavailable("finding expired leases", e))?;
        let mut out = Vec::new();
        for id in due.iter().filter_map(|i| i.parse::<TaskId>().ok()) {
            let updated = self
                .change(id, &Mark::internal(), |task, now| {
                    let decision = machine::expire(task, now).unwrap_or(Decision {
                        task: None,
                        emit: None,
                        answer: Ok(()),
                    });
                    (decision, None)
                })
                .await;
            match updated {
                // Another node may have settled it first: nothing changed.
                Ok(u) if u.before != u.task.status || u.task.status == Status::Queued => {
                    out.push(u.task)
                }
                Ok(_) | Err(TaskError::NotFound) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }

    async fn next_expiry(&self) -> Result<Option<u64>, TaskError> {
        let mut conn = self.conn();
        let first: Vec<(String, f64)> = conn
            .zrange_withscores("herald:leases", 0, 0)
            .await
            .map_err(|e| unavailable("reading lease deadlines", e))?;
        Ok(first.first().map(|(_, at)| *at as u64))
    }

    async fn next_available(&self, after: u64) -> Result<Option<(u64, Vec<String>)>, TaskError> {
        let mut conn = self.conn();
        let first: Vec<(String, f64)> = conn
            .zrangebyscore_limit_withscores("herald:waiting", format!("({after}"), "+inf", 0, 1)
            .await
            .map_err(|e| unavailable("reading when tasks become claimable", e))?;
        let Some(at) = first.first().map(|(_, at)| *at as u64) else {
            return Ok(None);
        };
        let due: Vec<String> = conn
            .zrangebyscore("herald:waiting", at, at)
            .await
            .map_err(|e| unavailable("reading when tasks become claimable", e))?;
        let queues = due
            .iter()
            .filter_map(|m| m.split_once('|').map(|(q, _)| q.to_owned()))
            .collect();
        Ok(Some((at, queues)))
    }

    async fn oldest_queued(&self, queue: &str) -> Result<Option<u64>, TaskError> {
        let mut conn = self.conn();
        let head: Vec<String> = conn
            .zrange(format!("herald:queue:{queue}"), 0, 0)
            .await
            .map_err(|e| unavailable("reading a queue", e))?;
        let Some(id) = head.first().and_then(|i| i.parse::<TaskId>().ok()) else {
            return Ok(None);
        };
        Ok(self.load(id).await?.map(|(_, t)| t.created_ms))
    }

    async fn list(
        &self,
        queue: &str,
        status: Option<Status>,
        after_seq: Option<u64>,
        limit: usize,
    ) -> Result<Vec<Task>, TaskError> {
        let index = match status {
            Some(s) => format!("herald:queue-tasks:{queue}|{}", s.as_str()),
            None => format!("herald:queue-tasks:{queue}"),
        };
        let after = after_seq.map_or(-1, |a| i64::try_from(a).unwrap_or(i64::MAX));
        let mut conn = self.conn();
        let rows: Vec<String> = self
            .scripts
            .list
            .arg(index)
            .arg(after)
            .arg(limit)
            .invoke_async(&mut conn)
            .await
            .map_err(|e| unavailable("listing tasks", e))?;
        Ok(rows.iter().map(|j| decode(j)).collect::<Result<_, _>>()?)
    }

    async fn counts(&self) -> Result<Vec<(String, Status, u64)>, TaskError> {
        let mut conn = self.conn();
        let all: Vec<(String, i64)> = conn
            .hgetall("herald:task-counts")
            .await
            .map_err(|e| unavailable("counting tasks", e))?;
        Ok(all
            .into_iter()
            .filter_map(|(k, n)| {
                let (queue, status) = k.rsplit_once('|')?;
                let status = Status::ALL.into_iter().find(|s| s.as_str() == status)?;
                Some((queue.to_owned(), status, u64::try_from(n).unwrap_or(0)))
            })
            .collect())
    }

    fn signals(&self) -> Option<broadcast::Receiver<crate::task::QueueSignal>> {
        Some(self.queue_signals())
    }
}
