//! The database file: where it lives, how it is opened, what it holds.
//!
//! Plain tables, readable with the `sqlite3` shell:
//!
//! - `topics`: per topic, the newest id ever given out (`last_*`), the newest
//!   id dropped by retention (`trimmed_*`) and how many events are kept.
//! - `events`: one row per retained event, keyed by `(topic, ms, seq)`.

use std::path::Path;
use std::time::Duration;

use rusqlite::config::DbConfig;
use rusqlite::{Connection, OpenFlags};

use crate::error::StoreError;

/// The database's file name inside the data directory.
pub const FILE_NAME: &str = "herald.db";

/// 2: tasks carry `available_ms` (retry backoff). A herald that knows only
/// 1 refuses the file, since it would hand out tasks still waiting.
const SCHEMA_VERSION: i64 = 2;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS topics (
    topic       TEXT PRIMARY KEY,
    last_ms     INTEGER NOT NULL,
    last_seq    INTEGER NOT NULL,
    trimmed_ms  INTEGER,
    trimmed_seq INTEGER,
    count       INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS events (
    topic    TEXT NOT NULL,
    ms       INTEGER NOT NULL,
    seq      INTEGER NOT NULL,
    kind     TEXT NOT NULL,
    data     TEXT NOT NULL,
    idem_key TEXT,
    PRIMARY KEY (topic, ms, seq)
) WITHOUT ROWID;
CREATE UNIQUE INDEX IF NOT EXISTS events_idem ON events (topic, idem_key) WHERE idem_key IS NOT NULL;
";

/// Turns a SQLite error into a store error: whatever stops a write (a full
/// disk, a quota, an I/O error, a damaged file) makes the store unavailable.
pub fn error(context: &str, e: rusqlite::Error) -> StoreError {
    // SQLITE_FULL is what a full disk and `--max-db-size` both raise: told
    // apart so that `/healthz` can say the store has no room.
    if e.sqlite_error_code() == Some(rusqlite::ErrorCode::DiskFull) {
        return StoreError::Full(format!("{context}: {e}"));
    }
    StoreError::Unavailable(format!("{context}: {e}"))
}

/// Prepared statements kept per connection. rusqlite keeps 16 by default;
/// the writer uses more than that (events, retention, tasks), and a
/// statement pushed out of the cache is parsed and planned again on its
/// next use — which showed up as a few percent of a durable publish.
const STATEMENT_CACHE: usize = 64;

fn tune(conn: &Connection) -> Result<(), rusqlite::Error> {
    conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
    // The query planner stability guarantee: plan without looking at bound
    // values. Without it SQLite (built with STAT4) lets the value bound to
    // `topic = ?1` steer the plan, marks the statement as depending on it,
    // and the statement cache's clearing of bindings on every return then
    // expires it — so every cached statement with such a term was parsed and
    // planned again on every use (3% of a durable publish's CPU).
    conn.set_db_config(DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG, true)?;
    conn.busy_timeout(Duration::from_secs(5))?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    Ok(())
}

/// Opens (creating if needed) the database for the single writer, checks it
/// is sound and brings its schema up to date. `max_bytes` caps its size.
pub fn open_writer(dir: &Path, max_bytes: Option<u64>) -> Result<Connection, StoreError> {
    std::fs::create_dir_all(dir).map_err(|e| {
        StoreError::Unavailable(format!(
            "cannot create the data directory {}: {e}",
            dir.display()
        ))
    })?;
    let path = dir.join(FILE_NAME);
    let fail = |what: &str, e: rusqlite::Error| {
        StoreError::Unavailable(format!("{} {what}: {e}", path.display()))
    };
    let conn = Connection::open(&path).map_err(|e| fail("cannot be opened", e))?;
    let mode: String = conn
        .pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0))
        .map_err(|e| fail("is not a usable database", e))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(StoreError::Unavailable(format!(
            "{} cannot use write-ahead logging (journal mode {mode})",
            path.display()
        )));
    }
    tune(&conn).map_err(|e| fail("cannot be configured", e))?;
    let check: String = conn
        .query_row("PRAGMA quick_check", [], |row| row.get(0))
        .map_err(|e| fail("failed its integrity check", e))?;
    if check != "ok" {
        return Err(StoreError::Unavailable(format!(
            "{} is damaged ({check}); restore it from a backup or move it away",
            path.display()
        )));
    }
    let version: i64 = conn
        .pragma_query_value(None, "user_version", |row| row.get(0))
        .map_err(|e| fail("cannot be read", e))?;
    if version > SCHEMA_VERSION {
        return Err(StoreError::Unavailable(format!(
            "{} was written by a newer herald (schema {version})",
            path.display()
        )));
    }
    conn.execute_batch(SCHEMA)
        .map_err(|e| fail("cannot be written", e))?;
    conn.execute_batch(super::tasks::SCHEMA)
        .map_err(|e| fail("cannot be written", e))?;
    super::tasks::migrate(&conn).map_err(|e| fail("cannot be brought up to date", e))?;
    conn.pragma_update(None, "user_version", SCHEMA_VERSION)
        .map_err(|e| fail("cannot be written", e))?;
    if let Some(max) = max_bytes {
        let page: i64 = conn
            .pragma_query_value(None, "page_size", |row| row.get(0))
            .map_err(|e| fail("cannot be read", e))?;
        let pages = i64::try_from(max).unwrap_or(i64::MAX) / page.max(1);
        conn.pragma_update(None, "max_page_count", pages.max(1))
            .map_err(|e| fail("cannot be configured", e))?;
    }
    Ok(conn)
}

/// Opens a connection for reading; the writer has created the file.
pub fn open_reader(dir: &Path) -> Result<Connection, StoreError> {
    let path = dir.join(FILE_NAME);
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn =
        Connection::open_with_flags(&path, flags).map_err(|e| error("opening a reader", e))?;
    tune(&conn).map_err(|e| error("configuring a reader", e))?;
    Ok(conn)
}

#[cfg(test)]
mod tests {
    use rusqlite::{StatementStatus, TransactionBehavior, params};

    use super::*;

    /// A cached statement filtering on `topic = ?1` is planned once, however
    /// often it is used inside transactions with new bindings.
    #[test]
    fn cached_statements_are_not_planned_again_on_every_use() {
        let dir = std::env::temp_dir().join(format!("herald-plan-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut conn = open_writer(&dir, None).unwrap();
        let sql = "SELECT ms, seq FROM events WHERE topic = ?1 ORDER BY ms, seq LIMIT 1 OFFSET ?2";
        for round in 0..20i64 {
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .unwrap();
            tx.prepare_cached(
                "INSERT INTO events (topic, ms, seq, kind, data) VALUES (?1, ?2, 0, 'message', '')",
            )
            .unwrap()
            .execute(params![format!("t{}", round % 3), round])
            .unwrap();
            let _ = tx
                .prepare_cached(sql)
                .unwrap()
                .query_row(params![format!("t{}", round % 3), round % 2], |r| {
                    r.get::<_, i64>(0)
                });
            tx.commit().unwrap();
        }
        let reprepared = conn
            .prepare_cached(sql)
            .unwrap()
            .get_status(StatementStatus::RePrepare);
        assert_eq!(reprepared, 0);
        drop(conn);
        let _ = std::fs::remove_dir_all(dir);
    }

    /// A file written before retry backoff (schema 1) opens, gains the
    /// column and index, and keeps its tasks.
    #[test]
    fn a_schema_1_file_is_brought_up_to_date() {
        let dir = std::env::temp_dir().join(format!("herald-migrate-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let old = Connection::open(dir.join(FILE_NAME)).unwrap();
        old.execute_batch(
            "CREATE TABLE tasks (id TEXT PRIMARY KEY, queue TEXT NOT NULL, seq INTEGER NOT NULL,
                 status TEXT NOT NULL, lease_expires INTEGER, finished_ms INTEGER,
                 idem_key TEXT, data TEXT NOT NULL) WITHOUT ROWID;
             INSERT INTO tasks VALUES ('t', 'q', 1, 'queued', NULL, NULL, NULL, '{}');
             PRAGMA user_version = 1;",
        )
        .unwrap();
        drop(old);
        let conn = open_writer(&dir, None).unwrap();
        let (n, waiting): (i64, Option<i64>) = conn
            .query_row("SELECT COUNT(*), MAX(available_ms) FROM tasks", [], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .unwrap();
        assert_eq!((n, waiting), (1, None), "kept, and claimable");
        let version: i64 = conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .unwrap();
        assert_eq!(version, SCHEMA_VERSION);
        let index: i64 = conn
            .query_row(
                "SELECT COUNT(*) FROM sqlite_master WHERE name = 'tasks_waiting'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(index, 1);
        drop(conn);
        assert!(open_writer(&dir, None).is_ok(), "and opens again");
        let _ = std::fs::remove_dir_all(dir);
    }
}
