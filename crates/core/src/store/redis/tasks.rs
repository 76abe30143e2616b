//! Tasks in Redis: the task as JSON under `herald:task:{id}`, queued ids in
//! a sorted set per queue (by enqueue order), running ids in `herald:leases`
//! (by lease deadline), tasks waiting out a retry backoff in
//! `herald:waiting` (`queue|id`, by when they become claimable).
//!
//! Every state change is one script call, so each costs one round trip
//! (and, on a Redis that fsyncs every write, one fsync shared with whatever
//! else that turn of Redis's loop wrote):
//!
//! - enqueue: `task.lua` numbers the task and stores it;
//! - claim: `claim.lua` finds the oldest claimable task and claims it;
//! - progress, complete, fail, cancel, expiry: the Rust state machine
//!   decides on the task as this node last wrote it ([`hints`]) or as read,
//!   and `task.lua` writes the decision only if the task is still what was
//!   decided on; if not, it answers with the task as it is now, and the
//!   machine decides again — so two nodes never both win a change.
//!
//! [`hints`]: super::hints

use async_trait::async_trait;
use redis::AsyncCommands;
use tokio::sync::broadcast;

use super::resend::{self, CLIENT_MARK_TTL, MARK_TTL};
use super::{RedisStore, key_ttl, unavailable};
use crate::error::StoreError;
use crate::event::now_ms;
use crate::name::Topic;
use crate::task::machine::{self, Decision};
use crate::task::{Lease, NewTask, Op, Status, Task, TaskError, TaskId, TaskStore, Updated};

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

/// What `task.lua` answered.
enum Written {
    /// Written; the task's seq (numbered by the script for a new task).
    Done { seq: u64 },
    /// The task is not what the change was decided on: what it is now
    /// (`None`: gone).
    Changed(Option<String>),
    /// A new task's idempotency key names the task `holder` (`None`: the
    /// key has just gone), stored as `json` (`None`: gone).
    Taken {
        holder: Option<String>,
        json: Option<String>,
    },
    /// This write was made already; the mark it left.
    Marked(String),
}

fn nonempty(s: String) -> Option<String> {
    (!s.is_empty()).then_some(s)
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

    /// Writes `new` if the task is still `old` (`None`: it must not exist,
    /// and is numbered by the script when `new.seq` is 0), with its queue,
    /// lease, counts and emitted event, under the write id of `mark`.
    async fn cas(
        &self,
        old: Option<(&str, Status)>,
        new: &Task,
        emit: Option<&machine::Emit>,
        idem: Option<&str>,
        mark: &Mark,
    ) -> Result<Written, StoreError> {
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
        let seq = if old.is_none() && new.seq == 0 {
            String::new()
        } else {
            new.seq.to_string()
        };
        let mut invocation = self.scripts.task.prepare_invoke();
        invocation
            .arg(new.id.to_string())
            .arg(old.map_or("", |(json, _)| json))
            .arg(encode(new)?)
            .arg(&new.queue)
            .arg(seq)
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
        let (code, a, b): (i64, String, String) =
            self.write("changing a task", &invocation).await?;
        Ok(match code {
            1 => Written::Done {
                seq: b.parse().unwrap_or(new.seq),
            },
            0 => Written::Changed(nonempty(a)),
            2 => Written::Taken {
                holder: nonempty(b),
                json: nonempty(a),
            },
            3 => Written::Marked(a),
            other => {
                return Err(StoreError::Internal(format!(
                    "redis answered a task change with code {other}"
                )));
            }
        })
    }

    /// The outcome a client's keyed change got the first time, from the
    /// mark it left: a client retrying with its own key after an unknown
    /// outcome gets the first answer, not a refusal from the state that
    /// change led to. `None`: the mark is only a write id's (the store's
    /// own sending again), which says the write was made.
    fn full_outcome(mark: &str) -> Result<Option<Updated>, TaskError> {
        let unreadable = |e: String| {
            TaskError::from(StoreError::Internal(format!(
                "a write mark is unreadable: {e}"
            )))
        };
        let parts: Vec<serde_json::Value> =
            serde_json::from_str(mark).map_err(|e| unreadable(e.to_string()))?;
        let [_, _, before, task] = parts.as_slice() else {
            return Ok(None);
        };
        let (Some(before), Some(task)) = (before.as_str(), task.as_str()) else {
            return Err(unreadable(format!("{mark:?}")));
        };
        let before = Status::ALL
            .into_iter()
            .find(|s| s.as_str() == before)
            .ok_or_else(|| StoreError::Internal(format!("a write mark holds status {before:?}")))?;
        Ok(Some(Updated {
            before,
            task: decode(task)?,
            cancel: None,
            refused: None,
        }))
    }

    /// The task to decide on, read fresh, or the outcome of a keyed change
    /// made already (the mark read in the same round trip).
    async fn read_for_change(
        &self,
        id: TaskId,
        mark: &Mark,
    ) -> Result<Result<String, Updated>, TaskError> {
        let mut conn = self.conn();
        let (json, done): (Option<String>, Option<String>) = if mark.full {
            conn.mget((
                format!("herald:task:{id}"),
                format!("herald:write:{}", mark.id),
            ))
            .await
            .map_err(|e| unavailable("reading a task", e))?
        } else {
            let json = conn
                .get(format!("herald:task:{id}"))
                .await
                .map_err(|e| unavailable("reading a task", e))?;
            (json, None)
        };
        if let Some(done) = done
            && let Some(outcome) = Self::full_outcome(&done)?
        {
            return Ok(Err(outcome));
        }
        json.map(Ok).ok_or(TaskError::NotFound)
    }

    /// Claims the oldest claimable task of `queue` at `now` under `lease`
    /// (made by the state machine), sent under the write id of `mark`.
    async fn claim_as(
        &self,
        queue: &Topic,
        lease: Lease,
        now: u64,
        mark: &Mark,
    ) -> Result<Option<Task>, TaskError> {
        let lease_json =
            serde_json::to_string(&lease).map_err(|e| StoreError::Internal(e.to_string()))?;
        let mut invocation = self.scripts.claim.prepare_invoke();
        invocation
            .arg(queue.as_str())
            .arg(now)
            .arg(&lease.token)
            .arg(lease_json)
            .arg(lease.expires_ms)
            .arg(&mark.id)
            .arg(mark.ttl.as_secs());
        let json: Option<String> = self.write("claiming a task", &invocation).await?;
        let Some(json) = json else { return Ok(None) };
        let task = decode(&json)?;
        // Sent again after a lost answer, the claim is answered with the
        // task it claimed, as it is now: if that lease has already run out
        // and another worker holds it, this claim got nothing.
        if task.lease.as_ref().map(|l| &l.token) != Some(&lease.token) {
            return Ok(None);
        }
        self.hints.note(task.id, task.status, &json);
        Ok(Some(task))
    }

    /// Applies `decide` to the current task until the write holds.
    async fn change<F>(&self, id: TaskId, mark: &Mark, mut decide: F) -> Result<Updated, TaskError>
    where
        F: FnMut(&Task, u64) -> (Decision, Option<crate::task::Cancel>),
    {
        // (the task's JSON, whether it was read just now rather than hinted)
        let mut known = self.hints.get(id).map(|json| (json, false));
        for _ in 0..CAS_ROUNDS {
            let (json, fresh) = match known.take() {
                Some(k) => k,
                None => match self.read_for_change(id, mark).await? {
                    Ok(json) => (json, true),
                    Err(done) => return Ok(done),
                },
            };
            let task = decode(&json)?;
            let (decision, cancel) = decide(&task, now_ms());
            let Some(new) = &decision.task else {
                if fresh {
                    return Ok(Updated::from_decision(task, decision, cancel));
                }
                // A refusal (or "nothing to do") is only as good as what
                // it was decided on: decide again on the stored task.
                continue;
            };
            let written = self
                .cas(
                    Some((&json, task.status)),
                    new,
                    decision.emit.as_ref(),
                    None,
                    mark,
                )
                .await?;
            match written {
                Written::Done { .. } => {
                    if let Ok(json) = encode(new) {
                        self.hints.note(id, new.status, &json);
                    }
                }
                Written::Changed(Some(now)) => {
                    known = Some((now, true));
                    continue;
                }
                Written::Changed(None) => {
                    self.hints.forget(id);
                    return Err(TaskError::NotFound);
                }
                Written::Marked(done) => {
                    if let Some(outcome) = Self::full_outcome(&done)? {
                        return Ok(outcome);
                    }
                }
                Written::Taken { .. } => {
                    return Err(
                        StoreError::Internal("a change answered as an enqueue".into()).into(),
                    );
                }
            }
            return Ok(Updated::from_decision(task, decision, cancel));
        }
        Err(TaskError::Conflict(
            "the task is changing too fast; try again".into(),
        ))
    }
}

#[async_trait]
impl TaskStore for RedisStore {
    async fn enqueue(&self, new: NewTask) -> Result<(Task, bool), TaskError> {
        let key = new.idempotency_key.clone();
        // Seq 0: numbered by the script, in the same round trip.
        let mut task = machine::enqueue(new, 0, now_ms());
        let written = self
            .cas(None, &task, None, key.as_deref(), &Mark::internal())
            .await?;
        match written {
            Written::Done { seq } => {
                task.seq = seq;
                Ok((task, false))
            }
            Written::Marked(done) => {
                // This enqueue, sent again: the mark keeps its seq.
                let parts: (i64, String, String) = serde_json::from_str(&done).map_err(|e| {
                    StoreError::Internal(format!("a write mark is unreadable: {e}"))
                })?;
                task.seq = parts.2.parse().map_err(|_| {
                    StoreError::Internal(format!("a write mark holds seq {:?}", parts.2))
                })?;
                Ok((task, false))
            }
            Written::Taken {
                json: Some(json), ..
            } => Ok((decode(&json)?, true)),
            Written::Taken {
                holder: Some(_), ..
            } => Err(TaskError::NotFound),
            Written::Taken { holder: None, .. } => Err(TaskError::Conflict(
                "the idempotency key is being used right now".into(),
            )),
            Written::Changed(_) => {
                Err(StoreError::Internal("a new task's id is taken".into()).into())
            }
        }
    }

    async fn get(&self, id: TaskId) -> Result<Option<(Task, Option<u64>)>, TaskError> {
        let mut conn = self.conn();
        let (json, position): (String, u64) = self
            .scripts
            .get
            .arg(id.to_string())
            .invoke_async(&mut conn)
            .await
            .map_err(|e| unavailable("reading a task", e))?;
        if json.is_empty() {
            return Ok(None);
        }
        Ok(Some((decode(&json)?, (position > 0).then_some(position))))
    }

    async fn claim(&self, queue: &Topic, lease_secs: f64) -> Result<Option<Task>, TaskError> {
        let now = now_ms();
        self.claim_as(
            queue,
            machine::lease(now, lease_secs),
            now,
            &Mark::internal(),
        )
        .await
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

#[cfg(test)]
#[path = "tasks_tests.rs"]
mod tests;
