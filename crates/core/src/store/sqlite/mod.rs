//! The embedded durable store: SQLite in WAL mode, in a data directory.
//!
//! One writer thread commits publishes in groups ([`writer`]); reads run on
//! their own connections in the blocking pool ([`read`]). A publish is
//! answered only after its transaction is committed with `synchronous=FULL`,
//! so an acknowledged event survives a crash or power loss.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Sender};
use std::sync::{Arc, Mutex, Weak};
use std::thread::JoinHandle;
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::oneshot;

use super::{Appended, Footprint, NewEvent, Page, ReadFrom, Retention, Store, TopicInfo};
use crate::error::StoreError;
use crate::event::EventId;
use crate::fanout::{Fanout, Watch};
use crate::name::Topic;

pub mod backup;
mod read;
mod schema;
mod tasks;
mod writer;

use read::Readers;
use writer::{Command, Writer};

/// Settings of the embedded store.
#[derive(Debug, Clone)]
pub struct SqliteConfig {
    /// The data directory; the database is `DIR/herald.db`.
    pub dir: PathBuf,
    pub retention: Retention,
    /// Refuse writes (503) once the file would grow past this many bytes.
    pub max_bytes: Option<u64>,
}

/// The SQLite-backed store.
pub struct SqliteStore {
    /// Behind a mutex only so the store is `Sync` on every toolchain; sends
    /// are non-blocking.
    commands: Mutex<Option<Sender<Command>>>,
    readers: Arc<Readers>,
    fanout: Arc<Fanout>,
    dir: PathBuf,
    writer: Mutex<Option<JoinHandle<()>>>,
    /// The writer's last transaction found no room (see [`Writer`]).
    full: Arc<AtomicBool>,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

impl SqliteStore {
    /// Opens (or creates) the store. Fails with a clear message when the
    /// directory cannot be written or the file is not a sound database.
    /// Must be called inside a tokio runtime (for the retention sweep).
    pub fn open(config: SqliteConfig, fanout: Arc<Fanout>) -> Result<Arc<SqliteStore>, StoreError> {
        let conn = schema::open_writer(&config.dir, config.max_bytes)?;
        let (tx, rx) = mpsc::channel();
        let full = Arc::new(AtomicBool::new(false));
        let writer = Writer::new(
            conn,
            Arc::clone(&fanout),
            config.retention,
            Arc::clone(&full),
        );
        let handle = std::thread::Builder::new()
            .name("herald-sqlite-writer".into())
            .spawn(move || writer.run(rx))
            .map_err(|e| StoreError::Internal(format!("cannot start the writer thread: {e}")))?;
        let store = Arc::new(SqliteStore {
            commands: Mutex::new(Some(tx)),
            readers: Readers::new(config.dir.clone()),
            fanout,
            dir: config.dir,
            writer: Mutex::new(Some(handle)),
            full,
        });
        if let Some(age) = config.retention.max_age {
            tokio::spawn(sweep(Arc::downgrade(&store), age));
        }
        Ok(store)
    }

    pub fn path(&self) -> PathBuf {
        self.dir.join(schema::FILE_NAME)
    }

    fn send(&self, cmd: Command) -> Result<(), StoreError> {
        let guard = self.commands.lock().unwrap_or_else(|e| e.into_inner());
        guard
            .as_ref()
            .and_then(|tx| tx.send(cmd).ok())
            .ok_or_else(|| StoreError::Unavailable("the store is closed".into()))
    }

    /// Stops the writer after it has committed everything queued, and waits
    /// for it. Later appends are refused.
    pub fn close(&self) {
        drop(
            self.commands
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .take(),
        );
        let handle = self.writer.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(h) = handle
            && h.join().is_err()
        {
            tracing::error!("the store's writer thread panicked");
        }
    }
}

impl Drop for SqliteStore {
    fn drop(&mut self) {
        self.close();
    }
}

/// Asks the writer to apply the age limit a few times per age window.
async fn sweep(store: Weak<SqliteStore>, age: Duration) {
    let every = (age / 4).clamp(Duration::from_millis(100), Duration::from_secs(60));
    loop {
        tokio::time::sleep(every).await;
        let Some(store) = store.upgrade() else { return };
        if store.send(Command::Trim).is_err() {
            return;
        }
    }
}

fn sql(context: &'static str) -> impl Fn(rusqlite::Error) -> StoreError {
    move |e| schema::error(context, e)
}

#[async_trait]
impl Store for SqliteStore {
    async fn append(&self, batch: Vec<NewEvent>) -> Result<Vec<Appended>, StoreError> {
        let (reply, answer) = oneshot::channel();
        self.send(Command::Append { batch, reply })?;
        answer
            .await
            .map_err(|_| StoreError::Unavailable("the store's writer stopped".into()))?
    }

    async fn read(&self, topic: &Topic, from: ReadFrom, limit: usize) -> Result<Page, StoreError> {
        let topic = topic.clone();
        self.readers
            .with(move |conn| read::read(conn, &topic, from, limit).map_err(sql("reading events")))
            .await
    }

    async fn head(&self, topic: &Topic) -> Result<EventId, StoreError> {
        let topic = topic.clone();
        self.readers
            .quick(move |conn| {
                let meta =
                    read::topic_meta(conn, topic.as_str()).map_err(sql("reading a topic"))?;
                Ok(meta.map_or(EventId::START, |m| m.last))
            })
            .await
    }

    fn watch(&self, topic: &Topic) -> Watch {
        self.fanout.watch(topic)
    }

    async fn topics(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<TopicInfo>, StoreError> {
        let (prefix, after) = (prefix.to_owned(), after.map(str::to_owned));
        self.readers
            .with(move |conn| {
                read::topics(conn, &prefix, after.as_deref(), limit).map_err(sql("listing topics"))
            })
            .await
    }

    async fn health(&self) -> Result<(), StoreError> {
        // Known from the last write rather than probed: a probe would have
        // to write, and the free space of the file system says nothing of
        // `--max-db-size`, while SQLITE_FULL is raised for both.
        if self.full.load(Ordering::Relaxed) {
            return Err(StoreError::Full("the last write found no room".into()));
        }
        self.readers
            .quick(|conn| {
                conn.query_row("SELECT 1", [], |_| Ok(()))
                    .map_err(sql("checking the database"))
            })
            .await
    }

    /// Topics by counting the rows of `topics` (one small row per topic,
    /// never the events); bytes from the sizes of the file and its WAL.
    async fn footprint(&self) -> Result<Footprint, StoreError> {
        let topics = self
            .readers
            .quick(|conn| {
                conn.query_row("SELECT count(*) FROM topics", [], |row| {
                    row.get::<_, i64>(0)
                })
                .map_err(sql("counting topics"))
            })
            .await?;
        let main = self.path();
        let mut wal = main.clone().into_os_string();
        wal.push("-wal");
        let size = |path: &std::path::Path| std::fs::metadata(path).map_or(0, |m| m.len());
        Ok(Footprint {
            topics: u64::try_from(topics).unwrap_or(0),
            bytes: Some(size(&main) + size(std::path::Path::new(&wal))),
        })
    }

    fn describe(&self) -> String {
        format!("sqlite {} (WAL, synchronous=FULL)", self.path().display())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn keeps_the_store_contract() {
        let root = std::env::temp_dir().join(format!("herald-contract-{}", std::process::id()));
        let n = std::sync::atomic::AtomicUsize::new(0);
        super::super::contract::run(|| {
            let dir = root.join(
                n.fetch_add(1, std::sync::atomic::Ordering::SeqCst)
                    .to_string(),
            );
            async move {
                let config = SqliteConfig {
                    dir,
                    retention: Retention {
                        max_events: 5,
                        max_age: None,
                    },
                    max_bytes: None,
                };
                SqliteStore::open(config, Fanout::new(64)).unwrap() as Arc<dyn Store>
            }
        })
        .await;
        let _ = std::fs::remove_dir_all(root);
    }
}

#[cfg(test)]
mod seam_tests {
    use std::time::Duration;

    use tokio_util::sync::CancellationToken;

    use super::*;
    use crate::cursor::CursorInput;
    use crate::heartbeat::Heartbeat;
    use crate::hub::{Hub, HubConfig};
    use crate::name::EventType;
    use crate::subscription::Next;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn history_then_live_without_gap_or_duplicate_under_concurrent_publishing() {
        let dir = std::env::temp_dir().join(format!("herald-seam-{}", std::process::id()));
        let config = SqliteConfig {
            dir: dir.clone(),
            retention: Retention {
                max_events: 100_000,
                max_age: None,
            },
            max_bytes: None,
        };
        let store = SqliteStore::open(config, Fanout::new(100_000)).unwrap();
        let token = CancellationToken::new();
        let hub_config = HubConfig {
            page_size: 7,
            ..HubConfig::default()
        };
        let hub = Hub::new(
            store,
            hub_config,
            Heartbeat::start(Duration::from_secs(3600), token.clone()),
        );
        let new = |i: usize| NewEvent {
            topic: Topic::new("seam").unwrap(),
            kind: EventType::message(),
            data: i.to_string(),
            idempotency_key: None,
        };
        for i in 0..200 {
            hub.publish(vec![new(i)]).await.unwrap();
        }
        let mut sub = hub
            .subscribe(vec![Topic::new("seam").unwrap()], &CursorInput::All)
            .await
            .unwrap();
        let publisher = {
            let hub = hub.clone();
            tokio::spawn(async move {
                for i in 200..1200 {
                    hub.publish(vec![new(i)]).await.unwrap();
                }
            })
        };
        for want in 0..1200 {
            match tokio::time::timeout(Duration::from_secs(10), sub.next()).await {
                Ok(Next::Event(e)) => assert_eq!(e.data, want.to_string()),
                other => panic!("expected event {want}, got {other:?}"),
            }
        }
        publisher.await.unwrap();
        drop(sub);
        drop(hub);
        token.cancel();
        let _ = std::fs::remove_dir_all(dir);
    }
}

#[cfg(test)]
mod task_tests {
    use super::*;

    #[tokio::test]
    async fn keeps_the_task_contract() {
        let root =
            std::env::temp_dir().join(format!("herald-task-contract-{}", std::process::id()));
        let n = std::sync::atomic::AtomicUsize::new(0);
        crate::task::contract::run(|| {
            let dir = root.join(
                n.fetch_add(1, std::sync::atomic::Ordering::SeqCst)
                    .to_string(),
            );
            async move {
                let config = SqliteConfig {
                    dir,
                    retention: Retention::default(),
                    max_bytes: None,
                };
                SqliteStore::open(config, Fanout::new(64)).unwrap()
                    as Arc<dyn crate::task::contract::Both>
            }
        })
        .await;
        let _ = std::fs::remove_dir_all(root);
    }
}
