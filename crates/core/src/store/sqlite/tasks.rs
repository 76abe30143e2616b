//! Tasks in the embedded store: one row per task, its full state as JSON
//! (readable with `sqlite3`) beside the columns the queue is indexed by.
//! Every change runs as a job in the writer's group transaction, together
//! with the event it emits.

use async_trait::async_trait;
use rusqlite::{Connection, OptionalExtension, Transaction, params};
use tokio::sync::oneshot;

use super::SqliteStore;
use super::read::sql_int;
use super::schema::error;
use super::writer::{Command, Ctx, Finish};
use crate::error::StoreError;
use crate::name::{EventType, Topic};
use crate::store::NewEvent;
use crate::task::machine::{self, Decision};
use crate::task::{NewTask, Op, Status, Task, TaskError, TaskId, TaskStore, Updated};

pub const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS tasks (
    id            TEXT PRIMARY KEY,
    queue         TEXT NOT NULL,
    seq           INTEGER NOT NULL,
    status        TEXT NOT NULL,
    lease_expires INTEGER,
    finished_ms   INTEGER,
    idem_key      TEXT,
    data          TEXT NOT NULL,
    available_ms  INTEGER
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS tasks_queue ON tasks (queue, status, seq);
CREATE INDEX IF NOT EXISTS tasks_seq ON tasks (seq);
CREATE INDEX IF NOT EXISTS tasks_queue_seq ON tasks (queue, seq);
CREATE INDEX IF NOT EXISTS tasks_lease ON tasks (lease_expires) WHERE status = 'running';
CREATE INDEX IF NOT EXISTS tasks_finished ON tasks (finished_ms) WHERE finished_ms IS NOT NULL;
CREATE UNIQUE INDEX IF NOT EXISTS tasks_idem ON tasks (queue, idem_key) WHERE idem_key IS NOT NULL;
";

/// Brings a `tasks` table from before retry backoff (schema 1) up to date:
/// `available_ms` is when a task queued again becomes claimable (NULL:
/// claimable now), and an index finds the next one for the engine's timer.
/// Tasks queued under schema 1 have none, so they stay claimable.
pub fn migrate(conn: &Connection) -> Result<(), rusqlite::Error> {
    let has_column: bool = conn.query_row(
        "SELECT COUNT(*) > 0 FROM pragma_table_info('tasks') WHERE name = 'available_ms'",
        [],
        |r| r.get(0),
    )?;
    if !has_column {
        conn.execute_batch("ALTER TABLE tasks ADD COLUMN available_ms INTEGER")?;
    }
    conn.execute_batch(
        "CREATE INDEX IF NOT EXISTS tasks_waiting ON tasks (available_ms)
         WHERE status = 'queued' AND available_ms IS NOT NULL",
    )
}

fn decode(json: &str) -> Result<Task, StoreError> {
    serde_json::from_str(json)
        .map_err(|e| StoreError::Internal(format!("a stored task is unreadable: {e}")))
}

fn load(conn: &Connection, id: TaskId) -> Result<Option<Task>, StoreError> {
    let json: Option<String> = conn
        .prepare_cached("SELECT data FROM tasks WHERE id = ?1")
        .and_then(|mut s| s.query_row([id.to_string()], |r| r.get(0)).optional())
        .map_err(|e| error("reading a task", e))?;
    json.as_deref().map(decode).transpose()
}

fn position(conn: &Connection, task: &Task) -> Result<Option<u64>, StoreError> {
    if task.status != Status::Queued {
        return Ok(None);
    }
    queued_ahead(conn, &task.queue, task.seq).map(Some)
}

/// The place (1 = next) of the task numbered `seq` among `queue`'s queued
/// tasks.
fn queued_ahead(conn: &Connection, queue: &str, seq: u64) -> Result<u64, StoreError> {
    let ahead: i64 = conn
        .prepare_cached(
            "SELECT COUNT(*) FROM tasks WHERE queue = ?1 AND status = 'queued' AND seq < ?2",
        )
        .and_then(|mut s| s.query_row(params![queue, sql_int(seq)], |r| r.get(0)))
        .map_err(|e| error("computing a position", e))?;
    Ok(u64::try_from(ahead).unwrap_or(0) + 1)
}

fn save(tx: &Transaction<'_>, task: &Task) -> Result<(), StoreError> {
    let data = serde_json::to_string(task).map_err(|e| StoreError::Internal(e.to_string()))?;
    let lease = task
        .lease
        .as_ref()
        .filter(|_| task.status == Status::Running)
        .map(|l| sql_int(l.expires_ms));
    let available = task
        .available_ms
        .filter(|_| task.status == Status::Queued)
        .map(sql_int);
    tx.prepare_cached(
        "INSERT INTO tasks (id, queue, seq, status, lease_expires, finished_ms, idem_key, data, available_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)
         ON CONFLICT (id) DO UPDATE SET status = ?4, lease_expires = ?5, finished_ms = ?6, data = ?8,
             available_ms = ?9",
    )
    .and_then(|mut s| {
        s.execute(params![
            task.id.to_string(),
            task.queue,
            sql_int(task.seq),
            task.status.as_str(),
            lease,
            task.finished_ms.map(sql_int),
            task.idempotency_key,
            data,
            available
        ])
    })
    .map_err(|e| error("saving a task", e))?;
    Ok(())
}

/// Saves a decision and appends its event, in the job's transaction.
fn apply(ctx: &mut Ctx<'_, '_>, decision: &Decision) -> Result<(), StoreError> {
    let Some(task) = &decision.task else {
        return Ok(());
    };
    save(ctx.tx, task)?;
    if let Some(emit) = &decision.emit {
        ctx.append(NewEvent {
            topic: task.id.topic(),
            kind: EventType::new(emit.kind).unwrap_or_else(|_| EventType::message()),
            data: emit.data.clone(),
            idempotency_key: None,
        })?;
    }
    Ok(())
}

/// Drops tasks that finished before `cutoff` (retention).
pub fn forget_finished_before(tx: &Transaction<'_>, cutoff: u64) -> Result<usize, rusqlite::Error> {
    tx.execute(
        "DELETE FROM tasks WHERE finished_ms < ?1",
        [sql_int(cutoff)],
    )
}

impl SqliteStore {
    /// Runs `job` in the writer's next group and waits for its answer,
    /// given only once the group has committed.
    async fn job<T, F>(&self, job: F) -> Result<T, TaskError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Ctx<'_, '_>) -> Result<Result<T, TaskError>, StoreError> + Send + 'static,
    {
        let (reply, answer) = oneshot::channel();
        let run = move |ctx: &mut Ctx<'_, '_>| -> Result<Finish, StoreError> {
            let outcome = job(ctx)?;
            Ok(Box::new(move |committed: Result<(), StoreError>| {
                let _ = reply.send(committed.map_err(TaskError::from).and(outcome));
            }))
        };
        self.send(Command::Job(Box::new(run)))?;
        answer.await.map_err(|_| {
            TaskError::Store(StoreError::Unavailable("the store's writer stopped".into()))
        })?
    }
}

#[async_trait]
impl TaskStore for SqliteStore {
    async fn enqueue(&self, new: NewTask) -> Result<(Task, bool), TaskError> {
        self.job(move |ctx| {
            if let Some(key) = &new.idempotency_key {
                let known: Option<String> = ctx
                    .tx
                    .prepare_cached("SELECT data FROM tasks WHERE queue = ?1 AND idem_key = ?2")
                    .and_then(|mut s| {
                        s.query_row(params![new.queue.as_str(), key], |r| r.get(0))
                            .optional()
                    })
                    .map_err(|e| error("looking up an idempotency key", e))?;
                if let Some(json) = known {
                    return Ok(Ok((decode(&json)?, true)));
                }
            }
            let last: i64 = ctx
                .tx
                .prepare_cached("SELECT COALESCE(MAX(seq), 0) FROM tasks")
                .and_then(|mut s| s.query_row([], |r| r.get(0)))
                .map_err(|e| error("numbering a task", e))?;
            let task = machine::enqueue(new, u64::try_from(last).unwrap_or(0) + 1, ctx.now);
            save(ctx.tx, &task)?;
            Ok(Ok((task, false)))
        })
        .await
    }

    async fn enqueue_placed(&self, new: NewTask) -> Result<(Task, Option<u64>, bool), TaskError> {
        let (task, replayed) = self.enqueue(new).await?;
        if task.status != Status::Queued {
            return Ok((task, None, replayed));
        }
        // Counted on a reader, off the writer's group, as `get` counts it,
        // but without reading the task back.
        let (queue, seq) = (task.queue.clone(), task.seq);
        let position = self
            .readers
            .quick(move |conn| queued_ahead(conn, &queue, seq))
            .await?;
        Ok((task, Some(position), replayed))
    }

    async fn get(&self, id: TaskId) -> Result<Option<(Task, Option<u64>)>, TaskError> {
        Ok(self
            .readers
            .with(move |conn| {
                let tx = conn.transaction().map_err(|e| error("reading a task", e))?;
                let Some(task) = load(&tx, id)? else {
                    return Ok(None);
                };
                let pos = position(&tx, &task)?;
                Ok(Some((task, pos)))
            })
            .await?)
    }

    async fn claim(&self, queue: &Topic, lease_secs: f64) -> Result<Option<Task>, TaskError> {
        let queue = queue.as_str().to_owned();
        self.job(move |ctx| {
            // Walks the queue's (queue, status, seq) index oldest first and
            // steps over tasks waiting out a backoff: those are retried
            // failures in flight, few beside the queue, and an index on
            // availability could not give FIFO order.
            let json: Option<String> = ctx
                .tx
                .prepare_cached(
                    "SELECT data FROM tasks WHERE queue = ?1 AND status = 'queued'
                     AND (available_ms IS NULL OR available_ms <= ?2) ORDER BY seq LIMIT 1",
                )
                .and_then(|mut s| {
                    s.query_row(params![queue, sql_int(ctx.now)], |r| r.get(0))
                        .optional()
                })
                .map_err(|e| error("finding work", e))?;
            let Some(json) = json else {
                return Ok(Ok(None));
            };
            let running = machine::claim(&decode(&json)?, ctx.now, lease_secs);
            save(ctx.tx, &running)?;
            Ok(Ok(Some(running)))
        })
        .await
    }

    async fn update(&self, id: TaskId, op: Op, _key: Option<&str>) -> Result<Updated, TaskError> {
        self.job(move |ctx| {
            let Some(task) = load(ctx.tx, id)? else {
                return Ok(Err(TaskError::NotFound));
            };
            let (decision, cancel) = op.decide(&task, ctx.now);
            apply(ctx, &decision)?;
            Ok(Ok(Updated::from_decision(task, decision, cancel)))
        })
        .await
    }

    async fn expire(&self) -> Result<Vec<Task>, TaskError> {
        self.job(move |ctx| {
            let due: Vec<String> = ctx
                .tx
                .prepare_cached(
                    "SELECT data FROM tasks WHERE status = 'running' AND lease_expires <= ?1",
                )
                .and_then(|mut s| s.query_map([sql_int(ctx.now)], |r| r.get(0))?.collect())
                .map_err(|e| error("finding expired leases", e))?;
            let mut out = Vec::with_capacity(due.len());
            for json in due {
                if let Some(decision) = machine::expire(&decode(&json)?, ctx.now) {
                    apply(ctx, &decision)?;
                    out.extend(decision.task);
                }
            }
            Ok(Ok(out))
        })
        .await
    }

    async fn next_expiry(&self) -> Result<Option<u64>, TaskError> {
        Ok(self
            .readers
            .with(|conn| {
                let at: Option<i64> = conn
                    .prepare_cached("SELECT MIN(lease_expires) FROM tasks WHERE status = 'running'")
                    .and_then(|mut s| s.query_row([], |r| r.get(0)))
                    .map_err(|e| error("reading lease deadlines", e))?;
                Ok(at.map(|v| u64::try_from(v).unwrap_or(0)))
            })
            .await?)
    }

    async fn next_available(&self, after: u64) -> Result<Option<(u64, Vec<String>)>, TaskError> {
        let rows: Vec<(i64, String)> = self
            .readers
            .with(move |conn| {
                // Both on the partial index tasks_waiting.
                conn.prepare_cached(
                    "SELECT available_ms, queue FROM tasks WHERE status = 'queued'
                     AND available_ms = (SELECT MIN(available_ms) FROM tasks
                                         WHERE status = 'queued' AND available_ms > ?1)",
                )
                .and_then(|mut s| {
                    s.query_map([sql_int(after)], |r| Ok((r.get(0)?, r.get(1)?)))?
                        .collect()
                })
                .map_err(|e| error("reading when tasks become claimable", e))
            })
            .await?;
        let Some(&(at, _)) = rows.first() else {
            return Ok(None);
        };
        let at = u64::try_from(at).unwrap_or(0);
        Ok(Some((at, rows.into_iter().map(|(_, q)| q).collect())))
    }

    async fn oldest_queued(&self, queue: &str) -> Result<Option<u64>, TaskError> {
        let queue = queue.to_owned();
        let json: Option<String> = self
            .readers
            .quick(move |conn| {
                conn.prepare_cached(
                    "SELECT data FROM tasks WHERE queue = ?1 AND status = 'queued'
                     ORDER BY seq LIMIT 1",
                )
                .and_then(|mut s| s.query_row([queue], |r| r.get(0)).optional())
                .map_err(|e| error("reading a queue", e))
            })
            .await?;
        Ok(json
            .as_deref()
            .map(decode)
            .transpose()?
            .map(|t| t.created_ms))
    }

    async fn list(
        &self,
        queue: &str,
        status: Option<Status>,
        after_seq: Option<u64>,
        limit: usize,
    ) -> Result<Vec<Task>, TaskError> {
        let queue = queue.to_owned();
        let after = after_seq.map_or(-1, sql_int);
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows: Vec<String> = self
            .readers
            .with(move |conn| {
                // Each shape on its own index: (queue, status, seq) or
                // (queue, seq).
                let rows = match status {
                    Some(st) => conn
                        .prepare_cached(
                            "SELECT data FROM tasks WHERE queue = ?1 AND status = ?2 AND seq > ?3
                             ORDER BY seq LIMIT ?4",
                        )
                        .and_then(|mut s| {
                            s.query_map(params![queue, st.as_str(), after, limit], |r| r.get(0))?
                                .collect()
                        }),
                    None => conn
                        .prepare_cached(
                            "SELECT data FROM tasks WHERE queue = ?1 AND seq > ?2
                             ORDER BY seq LIMIT ?3",
                        )
                        .and_then(|mut s| {
                            s.query_map(params![queue, after, limit], |r| r.get(0))?
                                .collect()
                        }),
                };
                rows.map_err(|e| error("listing tasks", e))
            })
            .await?;
        Ok(rows.iter().map(|j| decode(j)).collect::<Result<_, _>>()?)
    }

    async fn counts(&self) -> Result<Vec<(String, Status, u64)>, TaskError> {
        Ok(self
            .readers
            .with(|conn| {
                let rows: Vec<(String, String, i64)> = conn
                    .prepare("SELECT queue, status, COUNT(*) FROM tasks GROUP BY queue, status")
                    .and_then(|mut s| {
                        s.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
                            .collect()
                    })
                    .map_err(|e| error("counting tasks", e))?;
                Ok(rows
                    .into_iter()
                    .filter_map(|(q, s, n)| {
                        let status = Status::ALL.into_iter().find(|st| st.as_str() == s)?;
                        Some((q, status, u64::try_from(n).unwrap_or(0)))
                    })
                    .collect())
            })
            .await?)
    }
}
