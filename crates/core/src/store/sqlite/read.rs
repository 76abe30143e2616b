//! Reads, on their own connections: WAL lets them run beside the writer and
//! each read sees one consistent snapshot.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use rusqlite::{Connection, OptionalExtension, Row, params};
use tokio::sync::Semaphore;

use super::schema;
use crate::error::StoreError;
use crate::event::{Event, EventId};
use crate::name::{EventType, Topic};
use crate::store::{Page, ReadFrom, TopicInfo};

/// A fixed number of reader connections, reused so reads do not pay for
/// opening files. Reads beyond that many wait their turn without a thread:
/// two thousand clients catching up at once cost a queue, not two thousand
/// threads and connections.
#[derive(Debug)]
pub struct Readers {
    dir: PathBuf,
    /// A std mutex held only to push or pop a connection.
    idle: Mutex<Vec<Connection>>,
    /// One permit per read of pages running on the blocking pool.
    turns: Arc<Semaphore>,
    /// Turns for point lookups (a topic's head, the health check), which
    /// must not queue behind a storm of catch-ups.
    quick: Arc<Semaphore>,
}

/// Turns kept for point lookups.
const QUICK_TURNS: usize = 2;

impl Readers {
    pub fn new(dir: PathBuf) -> Arc<Readers> {
        Readers::with_limit(dir, reader_limit())
    }

    fn with_limit(dir: PathBuf, limit: usize) -> Arc<Readers> {
        Arc::new(Readers {
            dir,
            idle: Mutex::new(Vec::with_capacity(limit + QUICK_TURNS)),
            turns: Arc::new(Semaphore::new(limit)),
            quick: Arc::new(Semaphore::new(QUICK_TURNS)),
        })
    }

    /// Runs `f` on a reader connection, on the blocking thread pool, once a
    /// turn is free.
    pub async fn with<T, F>(self: &Arc<Self>, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    {
        self.run(&self.turns, f).await
    }

    /// [`Readers::with`] for a point lookup, on turns of its own.
    pub async fn quick<T, F>(self: &Arc<Self>, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    {
        self.run(&self.quick, f).await
    }

    async fn run<T, F>(self: &Arc<Self>, turns: &Arc<Semaphore>, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    {
        // Owned and moved into the read: if this future is dropped, the
        // turn stays taken until the read itself is done.
        let turn = Arc::clone(turns)
            .acquire_owned()
            .await
            .map_err(|_| StoreError::Internal("the reader pool is closed".into()))?;
        let readers = Arc::clone(self);
        let read = tokio::task::spawn_blocking(move || {
            let _turn = turn;
            let pooled = readers.idle.lock().unwrap_or_else(|e| e.into_inner()).pop();
            let mut conn = match pooled {
                Some(c) => c,
                None => schema::open_reader(&readers.dir)?,
            };
            let out = f(&mut conn);
            // At most one connection per turn is ever open.
            readers
                .idle
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(conn);
            out
        });
        read.await
            .map_err(|e| StoreError::Internal(format!("a read task failed: {e}")))?
    }
}

/// Reads run at once: two per core, at least four (a read may wait on the
/// disk rather than the CPU).
fn reader_limit() -> usize {
    std::thread::available_parallelism().map_or(4, |n| (2 * n.get()).max(4))
}

/// A topic's bookkeeping row.
#[derive(Debug, Clone, Copy, Default)]
pub struct TopicMeta {
    pub last: EventId,
    pub trimmed_to: Option<EventId>,
    pub count: u64,
}

fn id(ms: i64, seq: i64) -> EventId {
    EventId {
        ms: u64::try_from(ms).unwrap_or(0),
        seq: u64::try_from(seq).unwrap_or(0),
    }
}

pub fn sql_int(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// Reads a topic's bookkeeping, if it has any.
pub fn topic_meta(conn: &Connection, topic: &str) -> Result<Option<TopicMeta>, rusqlite::Error> {
    conn.prepare_cached(
        "SELECT last_ms, last_seq, trimmed_ms, trimmed_seq, count FROM topics WHERE topic = ?1",
    )?
    .query_row([topic], |row| {
        let trimmed_ms: Option<i64> = row.get(2)?;
        let trimmed_seq: Option<i64> = row.get(3)?;
        Ok(TopicMeta {
            last: id(row.get(0)?, row.get(1)?),
            trimmed_to: trimmed_ms.zip(trimmed_seq).map(|(m, s)| id(m, s)),
            count: u64::try_from(row.get::<_, i64>(4)?).unwrap_or(0),
        })
    })
    .optional()
}

/// A page of topics by name, from the `topics` table's primary key: the
/// rows from the first name past both `after` and `prefix`, up to the first
/// that does not start with `prefix`; and, for each, its oldest retained id
/// (one index lookup).
pub fn topics(
    conn: &mut Connection,
    prefix: &str,
    after: Option<&str>,
    limit: usize,
) -> Result<Vec<TopicInfo>, rusqlite::Error> {
    let tx = conn.transaction()?;
    let mut out = Vec::new();
    {
        // One bound only, so the primary key's range starts right there:
        // just past `after`, or at `prefix`, whichever comes later. (An
        // `OR` in the bound made SQLite walk from the first name.)
        let (sql, from) = match after {
            Some(a) if a >= prefix => (
                "SELECT topic, last_ms, last_seq, count FROM topics
                 WHERE topic > ?1 ORDER BY topic LIMIT ?2",
                a,
            ),
            _ => (
                "SELECT topic, last_ms, last_seq, count FROM topics
                 WHERE topic >= ?1 ORDER BY topic LIMIT ?2",
                prefix,
            ),
        };
        let mut rows = tx.prepare_cached(sql)?;
        let mut first = tx.prepare_cached(
            "SELECT ms, seq FROM events WHERE topic = ?1 ORDER BY ms, seq LIMIT 1",
        )?;
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let mut rows = rows.query(params![from, limit])?;
        while let Some(row) = rows.next()? {
            let name: String = row.get(0)?;
            if !name.starts_with(prefix) {
                break;
            }
            let Ok(topic) = Topic::new(&name) else {
                continue;
            };
            let events = u64::try_from(row.get::<_, i64>(3)?).unwrap_or(0);
            let first = if events == 0 {
                None
            } else {
                first
                    .query_row([&name], |r| Ok(id(r.get(0)?, r.get(1)?)))
                    .optional()?
            };
            out.push(TopicInfo {
                topic,
                events,
                first,
                last: id(row.get(1)?, row.get(2)?),
            });
        }
    }
    tx.commit()?;
    Ok(out)
}

/// Builds an event from a `(ms, seq, kind, data)` row.
pub fn event_from_row(topic: &Topic, row: &Row<'_>) -> Result<Event, rusqlite::Error> {
    let kind: String = row.get(2)?;
    let kind = EventType::new(&kind).unwrap_or_else(|_| EventType::message());
    Ok(Event::new(
        id(row.get(0)?, row.get(1)?),
        topic.clone(),
        kind,
        row.get(3)?,
    ))
}

/// The same answer as the memory store's, from the database.
pub fn read(
    conn: &mut Connection,
    topic: &Topic,
    from: ReadFrom,
    limit: usize,
) -> Result<Page, rusqlite::Error> {
    let tx = conn.transaction()?;
    let Some(meta) = topic_meta(&tx, topic.as_str())? else {
        return Ok(Page {
            events: Vec::new(),
            gap: matches!(from, ReadFrom::After(id) if id != EventId::START),
            next: EventId::START,
        });
    };
    let before_oldest = meta.trimmed_to.unwrap_or(EventId::START);
    let (after, gap) = match from {
        ReadFrom::Oldest => (None, false),
        ReadFrom::After(id) if id == before_oldest => (None, false),
        ReadFrom::After(id) => {
            let known = tx
                .prepare_cached("SELECT 1 FROM events WHERE topic = ?1 AND ms = ?2 AND seq = ?3")?
                .exists(params![topic.as_str(), sql_int(id.ms), sql_int(id.seq)])?;
            if known {
                (Some(id), false)
            } else {
                (None, true)
            }
        }
    };
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let events: Vec<Arc<Event>> = match after {
        None => tx
            .prepare_cached(
                "SELECT ms, seq, kind, data FROM events WHERE topic = ?1 ORDER BY ms, seq LIMIT ?2",
            )?
            .query_map(params![topic.as_str(), limit], |row| {
                event_from_row(topic, row)
            })?
            .map(|r| r.map(Arc::new))
            .collect::<Result<_, _>>()?,
        Some(a) => tx
            .prepare_cached(
                "SELECT ms, seq, kind, data FROM events WHERE topic = ?1 AND (ms, seq) > (?2, ?3)
                 ORDER BY ms, seq LIMIT ?4",
            )?
            .query_map(
                params![topic.as_str(), sql_int(a.ms), sql_int(a.seq), limit],
                |row| event_from_row(topic, row),
            )?
            .map(|r| r.map(Arc::new))
            .collect::<Result<_, _>>()?,
    };
    let next = match (events.last(), after) {
        (Some(e), _) => e.id,
        (None, Some(a)) => a,
        (None, None) => before_oldest,
    };
    Ok(Page { events, gap, next })
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc;
    use std::time::Duration;

    use super::*;

    /// Reads past the limit wait for a turn: no more connections (and
    /// blocking threads) than turns, however many reads are asked for.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn reads_beyond_the_limit_wait_their_turn() {
        let dir = std::env::temp_dir().join(format!("herald-readers-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        drop(schema::open_writer(&dir, None).unwrap());
        let readers = Readers::with_limit(dir.clone(), 3);
        let (entered_tx, entered) = mpsc::channel::<()>();
        let (release, release_rx) = tokio::sync::broadcast::channel::<()>(1);
        let mut reads = Vec::new();
        for _ in 0..10 {
            let (readers, entered_tx) = (Arc::clone(&readers), entered_tx.clone());
            let mut release_rx = release.subscribe();
            reads.push(tokio::spawn(async move {
                readers
                    .with(move |_| {
                        entered_tx.send(()).unwrap();
                        // Held in the read until the test lets go.
                        let _ = release_rx.blocking_recv();
                        Ok(())
                    })
                    .await
            }));
        }
        drop(release_rx);
        for _ in 0..3 {
            entered.recv_timeout(Duration::from_secs(10)).unwrap();
        }
        // Three reads hold their turns; the seven others hold nothing.
        assert_eq!(readers.turns.available_permits(), 0);
        assert!(entered.try_recv().is_err());
        release.send(()).unwrap();
        for read in reads {
            read.await.unwrap().unwrap();
        }
        assert_eq!(entered.try_iter().count(), 7);
        assert!(readers.idle.lock().unwrap().len() <= 3);
        // Point lookups have turns of their own while pages are queued.
        let blocked = Arc::clone(&readers.turns)
            .acquire_many_owned(3)
            .await
            .unwrap();
        readers.quick(|_| Ok(())).await.unwrap();
        drop(blocked);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
