//! An online copy of the database: `herald backup` while `herald serve`
//! goes on writing.
//!
//! `VACUUM INTO` reads the database inside one read transaction — in WAL
//! mode a snapshot that the writer never waits for — and writes a compact,
//! consistent copy. The copy is written beside the target under a
//! temporary name, synced, checked, and only then given the target's name
//! (a hard link, which never replaces a file), so a file at the target's
//! name is always a whole copy.

use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};

use super::schema::FILE_NAME;

/// What a backup wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backup {
    /// The database that was copied.
    pub source: PathBuf,
    /// The copy.
    pub target: PathBuf,
    /// The copy's size.
    pub bytes: u64,
    /// Events and tasks in the copy.
    pub events: u64,
    pub tasks: u64,
}

/// Why a backup was not made. Nothing is left at the target's name.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error(
        "there is no database at {0}: give the data directory herald serve uses (its --store file:DIR)"
    )]
    NoDatabase(PathBuf),
    #[error("{0} is not a herald database")]
    NotHerald(PathBuf),
    #[error("{0} already exists: a backup never replaces a file; choose a new name")]
    TargetExists(PathBuf),
    #[error("the backup's name {0} is not valid UTF-8")]
    NotUtf8(PathBuf),
    #[error("reading {path}: {reason}")]
    Read { path: PathBuf, reason: String },
    #[error("writing {path}: {reason}")]
    Write { path: PathBuf, reason: String },
    #[error("the copy {path} failed its check ({reason}); nothing was kept")]
    Check { path: PathBuf, reason: String },
}

/// Copies the database of the data directory `dir` to `target`, a file
/// that must not exist yet. Safe while a server writes to it: publishes go
/// on during the copy, and the copy holds every event committed before it
/// began. Blocks for as long as the copy takes.
pub fn backup(dir: &Path, target: &Path) -> Result<Backup, BackupError> {
    let source = dir.join(FILE_NAME);
    if !source.is_file() {
        return Err(BackupError::NoDatabase(source));
    }
    if fs::symlink_metadata(target).is_ok() {
        return Err(BackupError::TargetExists(target.to_owned()));
    }
    let parent = parent(target);
    if !parent.is_dir() {
        return Err(BackupError::Write {
            path: target.to_owned(),
            reason: format!("there is no directory {}", parent.display()),
        });
    }
    let read = |reason: rusqlite::Error| BackupError::Read {
        path: source.clone(),
        reason: reason.to_string(),
    };
    // Read-write without create: a missing file is an error, never a new
    // empty database; nothing is written through this connection.
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(&source, flags).map_err(read)?;
    conn.busy_timeout(Duration::from_secs(10)).map_err(read)?;
    let version: i64 = conn
        .pragma_query_value(None, "user_version", |row| row.get(0))
        .map_err(read)?;
    if version < 1 {
        return Err(BackupError::NotHerald(source));
    }
    let partial = partial_name(target);
    let _ = fs::remove_file(&partial);
    let copied = copy(&conn, &partial, target).and_then(|()| {
        let (events, tasks) = check(&partial)?;
        let bytes = sync(&partial)?;
        place(&partial, target)?;
        Ok((bytes, events, tasks))
    });
    let _ = fs::remove_file(&partial);
    let (bytes, events, tasks) = copied?;
    Ok(Backup {
        source,
        target: target.to_owned(),
        bytes,
        events,
        tasks,
    })
}

/// Where the copy is written before it gets its name: beside it, so the
/// final link stays on one file system.
fn partial_name(target: &Path) -> PathBuf {
    let name = target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    target.with_file_name(format!(".{name}.partial-{}", std::process::id()))
}

/// Writes the copy to `partial`; errors name `target`, the file asked for.
fn copy(conn: &Connection, partial: &Path, target: &Path) -> Result<(), BackupError> {
    let text = partial
        .to_str()
        .ok_or_else(|| BackupError::NotUtf8(target.to_owned()))?;
    conn.execute("VACUUM INTO ?1", [text])
        .map(drop)
        .map_err(|e| BackupError::Write {
            path: target.to_owned(),
            reason: e.to_string(),
        })
}

/// The directory `path` is in (`.` for a bare name).
fn parent(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// Opens the copy on its own and asks SQLite whether it is sound; counts
/// what it holds.
fn check(partial: &Path) -> Result<(u64, u64), BackupError> {
    let fail = |e: rusqlite::Error| BackupError::Check {
        path: partial.to_owned(),
        reason: e.to_string(),
    };
    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(partial, flags).map_err(fail)?;
    let verdict: String = conn
        .query_row("PRAGMA quick_check", [], |row| row.get(0))
        .map_err(fail)?;
    if verdict != "ok" {
        return Err(BackupError::Check {
            path: partial.to_owned(),
            reason: verdict,
        });
    }
    let count = |table: &str| -> Result<u64, BackupError> {
        conn.query_row(&format!("SELECT count(*) FROM {table}"), [], |row| {
            row.get::<_, i64>(0)
        })
        .map(|n| u64::try_from(n).unwrap_or(0))
        .map_err(fail)
    };
    Ok((count("events")?, count("tasks")?))
}

/// `VACUUM INTO` does not sync what it writes: sync it before it counts as
/// a backup. Returns its size.
fn sync(partial: &Path) -> Result<u64, BackupError> {
    let write = |e: io::Error| BackupError::Write {
        path: partial.to_owned(),
        reason: e.to_string(),
    };
    let file = File::open(partial).map_err(write)?;
    file.sync_all().map_err(write)?;
    Ok(file.metadata().map_err(write)?.len())
}

/// Gives the finished copy its name without ever replacing a file, and
/// makes the name durable.
fn place(partial: &Path, target: &Path) -> Result<(), BackupError> {
    let write = |e: io::Error| BackupError::Write {
        path: target.to_owned(),
        reason: e.to_string(),
    };
    match fs::hard_link(partial, target) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            return Err(BackupError::TargetExists(target.to_owned()));
        }
        // A file system without hard links: a rename, after looking again.
        Err(_) => {
            if fs::symlink_metadata(target).is_ok() {
                return Err(BackupError::TargetExists(target.to_owned()));
            }
            fs::rename(partial, target).map_err(write)?;
        }
    }
    // Syncing a directory is how a new name becomes durable on Linux; where
    // a directory cannot be opened as a file there is nothing to sync.
    if let Ok(d) = File::open(parent(target)) {
        d.sync_all().map_err(write)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fanout::Fanout;
    use crate::name::{EventType, Topic};
    use crate::store::sqlite::{SqliteConfig, SqliteStore};
    use crate::store::{NewEvent, Retention, Store};

    #[tokio::test]
    async fn copies_what_was_committed_and_never_replaces_a_file() {
        let root = std::env::temp_dir().join(format!("herald-backup-{}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        let dir = root.join("data");
        let config = SqliteConfig {
            dir: dir.clone(),
            retention: Retention::default(),
            max_bytes: None,
        };
        let store = SqliteStore::open(config, Fanout::new(64)).unwrap();
        let events = (0..10)
            .map(|i| NewEvent {
                topic: Topic::new("b").unwrap(),
                kind: EventType::message(),
                data: i.to_string(),
                idempotency_key: None,
            })
            .collect();
        store.append(events).await.unwrap();

        let target = root.join("copy.db");
        let made = backup(&dir, &target).unwrap();
        assert_eq!((made.events, made.tasks), (10, 0));
        assert_eq!(made.bytes, fs::metadata(&target).unwrap().len());
        assert!(matches!(
            backup(&dir, &target),
            Err(BackupError::TargetExists(_))
        ));
        assert!(matches!(
            backup(&root.join("nowhere"), &root.join("other.db")),
            Err(BackupError::NoDatabase(_))
        ));
        // Nothing but the two files is left behind.
        let mut names: Vec<_> = fs::read_dir(&root)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, ["copy.db", "data"]);

        // The copy opens as a store with the same events.
        store.close();
        let restored = root.join("restored");
        fs::create_dir_all(&restored).unwrap();
        fs::copy(&target, restored.join(FILE_NAME)).unwrap();
        let config = SqliteConfig {
            dir: restored,
            retention: Retention::default(),
            max_bytes: None,
        };
        let again = SqliteStore::open(config, Fanout::new(64)).unwrap();
        let page = again
            .read(
                &Topic::new("b").unwrap(),
                crate::store::ReadFrom::Oldest,
                100,
            )
            .await
            .unwrap();
        let data: Vec<_> = page.events.iter().map(|e| e.data.clone()).collect();
        assert_eq!(data, (0..10).map(|i| i.to_string()).collect::<Vec<_>>());
        again.close();
        let _ = fs::remove_dir_all(root);
    }
}
