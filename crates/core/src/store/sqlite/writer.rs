//! The one writer: a thread that owns the writing connection and commits
//! whatever publishes are waiting as one transaction (group commit).
//!
//! While one commit's fsync runs, new publishes queue up; the next loop
//! takes them all, so concurrency raises throughput without any timer or
//! added latency for a lone publish. Only after the commit returns are the
//! new events handed to the fan-out — in commit order, which is id order —
//! and the publishers answered.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Receiver;

use rusqlite::{Connection, OptionalExtension, Transaction, TransactionBehavior, params};
use tokio::sync::oneshot;

use super::read::{TopicMeta, event_from_row, sql_int, topic_meta};
use super::schema::error;
use crate::error::StoreError;
use crate::event::{Event, EventId, now_ms};
use crate::fanout::Fanout;
use crate::store::{Appended, NewEvent, Retention};

/// Where the writer answers one append.
pub type Reply = oneshot::Sender<Result<Vec<Appended>, StoreError>>;

/// Told after the group's commit whether it held (`Ok`) or not.
pub type Finish = Box<dyn FnOnce(Result<(), StoreError>) + Send>;

/// A unit of work run inside the group's transaction (a task operation).
/// `Err` is a storage failure and fails the whole group; a refusal is the
/// job's own answer, delivered by its [`Finish`].
pub type Job = Box<dyn FnOnce(&mut Ctx<'_, '_>) -> Result<Finish, StoreError> + Send>;

/// Work for the writer.
pub enum Command {
    /// Store a batch, all or nothing, and answer on `reply`.
    Append { batch: Vec<NewEvent>, reply: Reply },
    /// Run a job in the next group's transaction.
    Job(Job),
    /// Drop events (and finished tasks) older than the retention age.
    Trim,
}

/// Most commands folded into one transaction.
const MAX_GROUP: usize = 1024;

/// What a job sees of the transaction: SQL, and appending events that
/// reach subscribers once the transaction commits.
pub struct Ctx<'t, 'c> {
    pub tx: &'t Transaction<'c>,
    pub now: u64,
    meta: &'t HashMap<String, TopicMeta>,
    touched: HashMap<String, TopicMeta>,
    fresh: Vec<Arc<Event>>,
}

impl Ctx<'_, '_> {
    /// Appends an event in this transaction.
    pub fn append(&mut self, new: NewEvent) -> Result<Appended, StoreError> {
        let appended = append_one(self.tx, self.meta, &mut self.touched, new, self.now)?;
        if !appended.replayed {
            self.fresh.push(Arc::clone(&appended.event));
        }
        Ok(appended)
    }
}

/// Who is waiting for the group's outcome.
enum Waiter {
    Append(Reply, Option<Vec<Appended>>),
    Job(Finish),
}

pub struct Writer {
    conn: Connection,
    fanout: Arc<Fanout>,
    retention: Retention,
    /// The writer is the only one who changes `topics`, so this cache is the
    /// truth once loaded. Cleared whenever a transaction fails.
    meta: HashMap<String, TopicMeta>,
    /// Set when a write found no room (SQLITE_FULL), cleared by the next
    /// commit that holds; the store's health check reads it.
    full: Arc<AtomicBool>,
}

impl Writer {
    pub fn new(
        conn: Connection,
        fanout: Arc<Fanout>,
        retention: Retention,
        full: Arc<AtomicBool>,
    ) -> Writer {
        Writer {
            conn,
            fanout,
            retention,
            meta: HashMap::new(),
            full,
        }
    }

    /// Remembers whether the last transaction found room.
    fn outcome<T>(&self, result: &Result<T, StoreError>) {
        let full = matches!(result, Err(StoreError::Full(_)));
        // Only after a write: a failure of another kind says nothing of room.
        if full || result.is_ok() {
            self.full.store(full, Ordering::Relaxed);
        }
    }

    /// Runs until every sender is gone.
    pub fn run(mut self, commands: Receiver<Command>) {
        while let Ok(first) = commands.recv() {
            let mut work = Vec::new();
            let mut trim = false;
            let mut next = Some(first);
            while let Some(cmd) = next.take() {
                match cmd {
                    Command::Trim => trim = true,
                    other => work.push(other),
                }
                if work.len() < MAX_GROUP {
                    // Empty or disconnected: commit what we have.
                    next = commands.try_recv().ok();
                }
            }
            if !work.is_empty() {
                self.commit_group(work);
            }
            let trimmed = if trim { self.trim_by_age() } else { Ok(()) };
            // A sweep that found no room says so; one that held may have
            // deleted nothing, which proves no room for a publish.
            if matches!(trimmed, Err(StoreError::Full(_))) {
                self.outcome(&trimmed);
            }
            if let Err(e) = trimmed {
                self.meta.clear();
                tracing::warn!(error = %e, "retention sweep failed; will retry");
            }
        }
    }

    fn commit_group(&mut self, work: Vec<Command>) {
        let now = now_ms();
        let mut waiters = Vec::with_capacity(work.len());
        let written = self.write(work, now, &mut waiters);
        self.outcome(&written);
        match written {
            Ok(fresh) => {
                self.fanout.send(&fresh);
                for waiter in waiters {
                    match waiter {
                        Waiter::Append(reply, out) => {
                            let _ = reply.send(Ok(out.unwrap_or_default()));
                        }
                        Waiter::Job(finish) => finish(Ok(())),
                    }
                }
            }
            Err(e) => {
                self.meta.clear();
                tracing::error!(error = %e, "a group commit failed; its writes are refused");
                for waiter in waiters {
                    match waiter {
                        Waiter::Append(reply, _) => {
                            let _ = reply.send(Err(e.clone()));
                        }
                        Waiter::Job(finish) => finish(Err(e.clone())),
                    }
                }
            }
        }
    }

    /// One transaction for the whole group. Every command leaves a waiter,
    /// even after a failure, so everyone is answered.
    fn write(
        &mut self,
        work: Vec<Command>,
        now: u64,
        waiters: &mut Vec<Waiter>,
    ) -> Result<Vec<Arc<Event>>, StoreError> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate);
        let tx = match tx {
            Ok(tx) => tx,
            Err(e) => {
                waiters.extend(work.into_iter().filter_map(unstarted));
                return Err(error("starting a write", e));
            }
        };
        let mut ctx = Ctx {
            tx: &tx,
            now,
            meta: &self.meta,
            touched: HashMap::new(),
            fresh: Vec::new(),
        };
        let mut failure = None;
        for cmd in work {
            if failure.is_some() {
                waiters.extend(unstarted(cmd));
                continue;
            }
            match cmd {
                Command::Append { batch, reply } => {
                    let out: Result<Vec<_>, _> =
                        batch.into_iter().map(|new| ctx.append(new)).collect();
                    match out {
                        Ok(out) => waiters.push(Waiter::Append(reply, Some(out))),
                        Err(e) => {
                            waiters.push(Waiter::Append(reply, None));
                            failure = Some(e);
                        }
                    }
                }
                Command::Job(job) => match job(&mut ctx) {
                    Ok(finish) => waiters.push(Waiter::Job(finish)),
                    Err(e) => failure = Some(e),
                },
                Command::Trim => {}
            }
        }
        if let Some(e) = failure {
            return Err(e);
        }
        let (mut touched, fresh) = (ctx.touched, ctx.fresh);
        let max = self.retention.max_events as u64;
        for (topic, m) in &mut touched {
            trim_to_count(&tx, topic, m, max).map_err(|e| error("trimming", e))?;
            save_meta(&tx, topic, m).map_err(|e| error("recording topics", e))?;
        }
        tx.commit().map_err(|e| error("committing", e))?;
        self.meta.extend(touched);
        Ok(fresh)
    }

    /// Deletes, per topic, the events older than the retention age, and the
    /// tasks that finished before it.
    fn trim_by_age(&mut self) -> Result<(), StoreError> {
        let Some(age) = self.retention.max_age else {
            return Ok(());
        };
        let cutoff = now_ms().saturating_sub(u64::try_from(age.as_millis()).unwrap_or(u64::MAX));
        let tx = self
            .conn
            .transaction()
            .map_err(|e| error("starting a sweep", e))?;
        super::tasks::forget_finished_before(&tx, cutoff)
            .map_err(|e| error("dropping old tasks", e))?;
        let topics: Vec<String> = tx
            .prepare("SELECT topic FROM topics WHERE count > 0")
            .and_then(|mut s| s.query_map([], |r| r.get(0))?.collect())
            .map_err(|e| error("listing topics", e))?;
        let mut touched = HashMap::new();
        for topic in topics {
            let boundary: Option<(i64, i64)> = tx
                .prepare_cached(
                    "SELECT ms, seq FROM events WHERE topic = ?1 AND ms < ?2 ORDER BY ms DESC, seq DESC LIMIT 1",
                )
                .and_then(|mut s| s.query_row(params![topic, sql_int(cutoff)], |r| Ok((r.get(0)?, r.get(1)?))).optional())
                .map_err(|e| error("finding old events", e))?;
            let Some((ms, seq)) = boundary else { continue };
            let mut m = cached(&tx, &self.meta, &touched, &topic)?;
            let deleted = delete_through(&tx, &topic, ms, seq)
                .map_err(|e| error("deleting old events", e))?;
            m.count = m.count.saturating_sub(deleted);
            m.trimmed_to = Some(EventId {
                ms: u64::try_from(ms).unwrap_or(0),
                seq: u64::try_from(seq).unwrap_or(0),
            });
            save_meta(&tx, &topic, &m).map_err(|e| error("recording topics", e))?;
            touched.insert(topic, m);
        }
        tx.commit().map_err(|e| error("committing a sweep", e))?;
        self.meta.extend(touched);
        Ok(())
    }
}

/// The waiter of a command that never ran.
fn unstarted(cmd: Command) -> Option<Waiter> {
    match cmd {
        Command::Append { reply, .. } => Some(Waiter::Append(reply, None)),
        // A job that never ran has no one to tell: its requester sees its
        // answer channel close, which it reports as the store failing.
        Command::Job(_) | Command::Trim => None,
    }
}

/// A topic's bookkeeping as this transaction sees it.
fn cached(
    tx: &Transaction<'_>,
    meta: &HashMap<String, TopicMeta>,
    touched: &HashMap<String, TopicMeta>,
    topic: &str,
) -> Result<TopicMeta, StoreError> {
    if let Some(m) = touched.get(topic).or_else(|| meta.get(topic)) {
        return Ok(*m);
    }
    Ok(topic_meta(tx, topic)
        .map_err(|e| error("reading topics", e))?
        .unwrap_or_default())
}

fn append_one(
    tx: &Transaction<'_>,
    meta: &HashMap<String, TopicMeta>,
    touched: &mut HashMap<String, TopicMeta>,
    new: NewEvent,
    now: u64,
) -> Result<Appended, StoreError> {
    let topic = new.topic.as_str();
    if let Some(key) = &new.idempotency_key {
        let known = tx
            .prepare_cached(
                "SELECT ms, seq, kind, data FROM events WHERE topic = ?1 AND idem_key = ?2",
            )
            .and_then(|mut s| {
                s.query_row(params![topic, key], |row| event_from_row(&new.topic, row))
                    .optional()
            })
            .map_err(|e| error("looking up an idempotency key", e))?;
        if let Some(event) = known {
            return Ok(Appended {
                event: Arc::new(event),
                replayed: true,
            });
        }
    }
    let mut m = cached(tx, meta, touched, topic)?;
    let id = EventId::next_after(m.last, now);
    tx.prepare_cached(
        "INSERT INTO events (topic, ms, seq, kind, data, idem_key) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )
    .and_then(|mut s| {
        s.execute(params![
            topic,
            sql_int(id.ms),
            sql_int(id.seq),
            new.kind.as_str(),
            new.data,
            new.idempotency_key
        ])
    })
    .map_err(|e| error("storing an event", e))?;
    m.last = id;
    m.count += 1;
    touched.insert(topic.to_owned(), m);
    let event = Event::new(id, new.topic, new.kind, new.data);
    Ok(Appended {
        event: Arc::new(event),
        replayed: false,
    })
}

/// Deletes a topic's oldest events beyond `max`, once per topic per group
/// rather than once per event: the same events go as if each append had
/// trimmed, in one statement instead of one per append.
fn trim_to_count(
    tx: &Transaction<'_>,
    topic: &str,
    m: &mut TopicMeta,
    max: u64,
) -> Result<(), rusqlite::Error> {
    if m.count <= max {
        return Ok(());
    }
    let excess = m.count - max;
    let (ms, seq): (i64, i64) = tx
        .prepare_cached(
            "SELECT ms, seq FROM events WHERE topic = ?1 ORDER BY ms, seq LIMIT 1 OFFSET ?2",
        )?
        .query_row(params![topic, sql_int(excess - 1)], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })?;
    let deleted = delete_through(tx, topic, ms, seq)?;
    m.count = m.count.saturating_sub(deleted);
    m.trimmed_to = Some(EventId {
        ms: u64::try_from(ms).unwrap_or(0),
        seq: u64::try_from(seq).unwrap_or(0),
    });
    Ok(())
}

/// Deletes a topic's events up to and including `(ms, seq)`.
fn delete_through(
    tx: &Transaction<'_>,
    topic: &str,
    ms: i64,
    seq: i64,
) -> Result<u64, rusqlite::Error> {
    let n = tx
        .prepare_cached("DELETE FROM events WHERE topic = ?1 AND (ms, seq) <= (?2, ?3)")?
        .execute(params![topic, ms, seq])?;
    Ok(n as u64)
}

fn save_meta(tx: &Transaction<'_>, topic: &str, m: &TopicMeta) -> Result<(), rusqlite::Error> {
    tx.prepare_cached(
        "INSERT INTO topics (topic, last_ms, last_seq, trimmed_ms, trimmed_seq, count)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)
         ON CONFLICT (topic) DO UPDATE SET last_ms = ?2, last_seq = ?3, trimmed_ms = ?4,
             trimmed_seq = ?5, count = ?6",
    )?
    .execute(params![
        topic,
        sql_int(m.last.ms),
        sql_int(m.last.seq),
        m.trimmed_to.map(|t| sql_int(t.ms)),
        m.trimmed_to.map(|t| sql_int(t.seq)),
        sql_int(m.count)
    ])?;
    Ok(())
}
