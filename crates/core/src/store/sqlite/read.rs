//! Reads, on their own connections: WAL lets them run beside the writer and
//! each read sees one consistent snapshot.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use rusqlite::{Connection, OptionalExtension, Row, params};

use super::schema;
use crate::error::StoreError;
use crate::event::{Event, EventId};
use crate::name::{EventType, Topic};
use crate::store::{Page, ReadFrom};

/// Idle reader connections, reused so reads do not pay for opening files.
#[derive(Debug)]
pub struct Readers {
    dir: PathBuf,
    /// A std mutex held only to push or pop a connection.
    idle: Mutex<Vec<Connection>>,
}

/// Reader connections kept open when idle.
const MAX_IDLE: usize = 8;

impl Readers {
    pub fn new(dir: PathBuf) -> Arc<Readers> {
        Arc::new(Readers {
            dir,
            idle: Mutex::new(Vec::new()),
        })
    }

    /// Runs `f` on a reader connection, on the blocking thread pool.
    pub async fn with<T, F>(self: &Arc<Self>, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let readers = Arc::clone(self);
        tokio::task::spawn_blocking(move || {
            let pooled = readers.idle.lock().unwrap_or_else(|e| e.into_inner()).pop();
            let mut conn = match pooled {
                Some(c) => c,
                None => schema::open_reader(&readers.dir)?,
            };
            let out = f(&mut conn);
            let mut idle = readers.idle.lock().unwrap_or_else(|e| e.into_inner());
            if idle.len() < MAX_IDLE {
                idle.push(conn);
            }
            out
        })
        .await
        .map_err(|e| StoreError::Internal(format!("a read task failed: {e}")))?
    }
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
