//! A store shared by several herald nodes: Redis.
//!
//! - Events live in one Redis Stream per topic (`herald:{topic}:events`),
//!   appended by a Lua script that applies herald's id rule (`MS-SEQ`, on
//!   Redis's clock, never reused), idempotency keys and retention in one
//!   atomic step, and then publishes the event on the channel
//!   `herald:events`.
//! - Every node holds one Pub/Sub connection ([`live`]) and hands what
//!   arrives to its own fan-out, so a node needs no Redis connection per
//!   subscriber or per topic. After that connection is lost and restored,
//!   the node re-reads the topics it serves from the streams, so no live
//!   subscriber misses an event.
//! - Tasks ([`tasks`]) are JSON values; every state change is one script
//!   call. The Rust state machine decides each change and a compare-and-set
//!   script writes it, except a claim, which one script finds and makes.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Script, Value};
use tokio::sync::broadcast;

use super::{Appended, Footprint, NewEvent, Page, ReadFrom, Retention, Store, TopicInfo};
use crate::error::StoreError;
use crate::event::{Event, EventId};
use crate::fanout::{Fanout, Watch};
use crate::name::{EventType, Topic};

mod hints;
mod live;
mod resend;
mod tasks;

pub use live::QueueSignal;

const APPEND: &str = include_str!("append.lua");
const SETTLE: &str = include_str!("settle.lua");

fn script(body: &str) -> Script {
    Script::new(&format!("{APPEND}\n{body}"))
}

/// A script that changes a task: it may append the task's event and keeps
/// every key that follows the task's status.
fn task_script(body: &str) -> Script {
    Script::new(&format!("{APPEND}\n{SETTLE}\n{body}"))
}

/// The compiled scripts (Redis caches them by hash).
struct Scripts {
    publish: Script,
    read: Script,
    sweep: Script,
    task: Script,
    claim: Script,
    get: Script,
    topics: Script,
    list: Script,
}

/// The Redis-backed store.
pub struct RedisStore {
    conn: ConnectionManager,
    client: redis::Client,
    fanout: Arc<Fanout>,
    retention: Retention,
    scripts: Scripts,
    signals: broadcast::Sender<QueueSignal>,
    /// Running tasks as this node last wrote them: where changes start.
    hints: hints::Hints,
    /// Per topic, the newest id this node has read, pinned or delivered:
    /// where the live feed resumes a topic after losing its connection.
    /// Pruned to watched topics on every resync.
    seen: std::sync::Mutex<std::collections::HashMap<Topic, EventId>>,
    url: String,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

/// How long any one Redis command may take before the store reports
/// itself unavailable.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(3);

pub(crate) fn unavailable(context: &str, e: redis::RedisError) -> StoreError {
    StoreError::Unavailable(format!("redis {context}: {e}"))
}

/// Idempotency keys live as long as events do by age (at least an hour).
fn key_ttl(retention: &Retention) -> u64 {
    retention
        .max_age
        .map_or(24 * 3600, |a| a.as_secs().max(3600))
}

impl RedisStore {
    /// Connects to `url` (`redis://host:port[/db]`) and starts the node's
    /// live feed. Fails when Redis cannot be reached at start-up; later
    /// outages make calls fail with `Unavailable` until it is back.
    pub async fn connect(
        url: &str,
        retention: Retention,
        fanout: Arc<Fanout>,
    ) -> Result<Arc<RedisStore>, StoreError> {
        let client = redis::Client::open(url).map_err(|e| unavailable("url", e))?;
        let config = ConnectionManagerConfig::new()
            .set_response_timeout(Some(RESPONSE_TIMEOUT))
            .set_connection_timeout(Some(RESPONSE_TIMEOUT))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_secs(1));
        let conn = client
            .get_connection_manager_with_config(config)
            .await
            .map_err(|e| unavailable(&format!("connecting to {url}"), e))?;
        let feed = live::open(&client)
            .await
            .map_err(|e| unavailable(&format!("subscribing on {url}"), e))?;
        let store = Arc::new(RedisStore {
            conn,
            client,
            fanout,
            retention,
            scripts: Scripts {
                publish: script(include_str!("publish.lua")),
                read: script(include_str!("read.lua")),
                sweep: script(include_str!("sweep.lua")),
                task: task_script(include_str!("task.lua")),
                claim: task_script(include_str!("claim.lua")),
                get: Script::new(include_str!("get.lua")),
                topics: Script::new(include_str!("topics.lua")),
                list: Script::new(include_str!("list.lua")),
            },
            signals: broadcast::channel(1024).0,
            hints: hints::Hints::default(),
            seen: std::sync::Mutex::default(),
            url: url.to_owned(),
        });
        store.index_topic_names().await?;
        tokio::spawn(live::run(Arc::downgrade(&store), feed));
        if let Some(age) = retention.max_age {
            tokio::spawn(sweep(Arc::downgrade(&store), age));
        }
        Ok(store)
    }

    fn conn(&self) -> ConnectionManager {
        self.conn.clone()
    }

    /// Notes that this node knows `topic` up to `id`.
    pub(crate) fn saw(&self, topic: &Topic, id: EventId) {
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        let entry = seen.entry(topic.clone()).or_insert(id);
        *entry = (*entry).max(id);
    }

    /// The newest retained event of `topic`.
    pub(crate) async fn newest(&self, topic: &Topic) -> Result<Option<Event>, StoreError> {
        let mut conn = self.conn();
        let last: Vec<(String, Vec<String>)> = redis::cmd("XREVRANGE")
            .arg(format!("herald:{{{topic}}}:events"))
            .arg("+")
            .arg("-")
            .arg("COUNT")
            .arg(1)
            .query_async(&mut conn)
            .await
            .map_err(|e| unavailable("reading a topic", e))?;
        last.first()
            .map(|(id, fields)| entry_event(topic, id, fields))
            .transpose()
    }

    /// Copies the names in `herald:topics` (a set, unordered) into
    /// `herald:topic-names` (a sorted set, paged by name), for data written
    /// before the sorted set existed. The append script adds new names to
    /// both; this is idempotent, and one pass at start-up suffices.
    async fn index_topic_names(&self) -> Result<(), StoreError> {
        let mut conn = self.conn();
        let mut cursor: u64 = 0;
        loop {
            let (next, names): (u64, Vec<String>) = redis::cmd("SSCAN")
                .arg("herald:topics")
                .arg(cursor)
                .arg("COUNT")
                .arg(1000)
                .query_async(&mut conn)
                .await
                .map_err(|e| unavailable("indexing topic names", e))?;
            if !names.is_empty() {
                let mut zadd = redis::cmd("ZADD");
                zadd.arg("herald:topic-names");
                for name in &names {
                    zadd.arg(0).arg(name);
                }
                let _: i64 = zadd
                    .query_async(&mut conn)
                    .await
                    .map_err(|e| unavailable("indexing topic names", e))?;
            }
            if next == 0 {
                return Ok(());
            }
            cursor = next;
        }
    }

    /// Signals about queues from every node (claims to wake, positions).
    pub fn queue_signals(&self) -> broadcast::Receiver<QueueSignal> {
        self.signals.subscribe()
    }
}

/// Applies the age limit a few times per age window. Every node runs it;
/// it is idempotent.
async fn sweep(store: std::sync::Weak<RedisStore>, age: Duration) {
    let every = (age / 4).clamp(Duration::from_millis(250), Duration::from_secs(60));
    loop {
        tokio::time::sleep(every).await;
        let Some(store) = store.upgrade() else { return };
        let cutoff = crate::event::now_ms()
            .saturating_sub(u64::try_from(age.as_millis()).unwrap_or(u64::MAX));
        let mut conn = store.conn();
        let done: Result<i64, _> = store
            .scripts
            .sweep
            .arg(cutoff)
            .invoke_async(&mut conn)
            .await;
        if let Err(e) = done {
            tracing::warn!(error = %e, "redis retention sweep failed; will retry");
        }
    }
}

/// Parses an `MS-SEQ` id handed back by Redis.
pub(crate) fn parse_id(id: &str) -> Result<EventId, StoreError> {
    id.parse()
        .map_err(|_| StoreError::Internal(format!("redis returned {id:?}, not an event id")))
}

/// Builds an event from a stream entry's fields (`k`, kind, `d`, data).
fn entry_event(topic: &Topic, id: &str, fields: &[String]) -> Result<Event, StoreError> {
    let kind = fields.get(1).map_or("message", String::as_str);
    let data = fields.get(3).cloned().unwrap_or_default();
    let kind = EventType::new(kind).unwrap_or_else(|_| EventType::message());
    Ok(Event::new(parse_id(id)?, topic.clone(), kind, data))
}

#[async_trait]
impl Store for RedisStore {
    async fn append(&self, batch: Vec<NewEvent>) -> Result<Vec<Appended>, StoreError> {
        let mut invocation = self.scripts.publish.prepare_invoke();
        invocation
            .arg(self.retention.max_events)
            .arg(key_ttl(&self.retention))
            .arg(resend::write_id())
            .arg(resend::MARK_TTL.as_secs())
            .arg(batch.len());
        for e in &batch {
            invocation
                .arg(e.topic.as_str())
                .arg(e.kind.as_str())
                .arg(&e.data)
                .arg(e.idempotency_key.as_deref().unwrap_or(""));
        }
        let rows: Vec<(String, String, String, i64)> =
            self.write("publishing", &invocation).await?;
        if rows.len() != batch.len() {
            return Err(StoreError::Internal(format!(
                "redis answered a batch of {} with {} events",
                batch.len(),
                rows.len()
            )));
        }
        batch
            .into_iter()
            .zip(rows)
            .map(|(new, (id, kind, data, replayed))| {
                let id = parse_id(&id)?;
                // A new event comes back without its kind and data: they
                // are the ones sent. A replayed one is the event stored
                // the first time, which may differ.
                let event = if replayed == 1 {
                    let kind = EventType::new(&kind).unwrap_or_else(|_| EventType::message());
                    Event::new(id, new.topic, kind, data)
                } else {
                    Event::new(id, new.topic, new.kind, new.data)
                };
                Ok(Appended {
                    event: Arc::new(event),
                    replayed: replayed == 1,
                })
            })
            .collect()
    }

    async fn read(&self, topic: &Topic, from: ReadFrom, limit: usize) -> Result<Page, StoreError> {
        let (mode, id) = match from {
            ReadFrom::Oldest => ("oldest", EventId::START),
            ReadFrom::After(id) => ("after", id),
        };
        let mut conn = self.conn();
        let (gap, next, entries): (i64, String, Vec<(String, Vec<String>)>) = self
            .scripts
            .read
            .arg(topic.as_str())
            .arg(mode)
            .arg(id.to_string())
            .arg(limit)
            .invoke_async(&mut conn)
            .await
            .map_err(|e| unavailable("reading", e))?;
        let events = entries
            .iter()
            .map(|(id, fields)| entry_event(topic, id, fields).map(Arc::new))
            .collect::<Result<_, _>>()?;
        let page = Page {
            events,
            gap: gap == 1,
            next: parse_id(&next)?,
        };
        if self.fanout.is_watched(topic) {
            self.saw(topic, page.next);
        }
        Ok(page)
    }

    async fn head(&self, topic: &Topic) -> Result<EventId, StoreError> {
        let mut conn = self.conn();
        let last: Option<String> = redis::cmd("HGET")
            .arg(format!("herald:{{{topic}}}:meta"))
            .arg("last")
            .query_async(&mut conn)
            .await
            .map_err(|e| unavailable("reading a topic", e))?;
        let head = last.map_or(Ok(EventId::START), |l| parse_id(&l))?;
        if self.fanout.is_watched(topic) {
            self.saw(topic, head);
        }
        Ok(head)
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
        // Names sort by bytes in both the sorted set and Rust, so the page
        // starts just past `after` or at `prefix`, whichever comes later.
        let min = match after {
            Some(a) if a >= prefix => format!("({a}"),
            _ if prefix.is_empty() => "-".to_owned(),
            _ => format!("[{prefix}"),
        };
        let mut conn = self.conn();
        let rows: Vec<(String, u64, String, String)> = self
            .scripts
            .topics
            .arg(min)
            .arg(prefix)
            .arg(limit)
            .invoke_async(&mut conn)
            .await
            .map_err(|e| unavailable("listing topics", e))?;
        let mut out = Vec::with_capacity(rows.len());
        for (name, events, first, last) in rows {
            let Ok(topic) = Topic::new(&name) else {
                continue;
            };
            let first = if first.is_empty() {
                None
            } else {
                Some(parse_id(&first)?)
            };
            out.push(TopicInfo {
                topic,
                events,
                first,
                last: parse_id(&last)?,
            });
        }
        Ok(out)
    }

    async fn health(&self) -> Result<(), StoreError> {
        let mut conn = self.conn();
        let pong: Value = redis::cmd("PING")
            .query_async(&mut conn)
            .await
            .map_err(|e| unavailable("ping", e))?;
        match pong {
            Value::SimpleString(_) | Value::BulkString(_) => Ok(()),
            other => Err(StoreError::Unavailable(format!(
                "redis answered PING with {other:?}"
            ))),
        }
    }

    /// Topics from the set `append.lua` adds each new topic to (`SCARD`,
    /// constant time); bytes are the whole Redis server's `used_memory`,
    /// herald's keys and anything else it holds: Redis cannot say which
    /// bytes are whose without scanning every key.
    async fn footprint(&self) -> Result<Footprint, StoreError> {
        let mut conn = self.conn();
        let (topics, info): (u64, String) = redis::pipe()
            .cmd("SCARD")
            .arg("herald:topics")
            .cmd("INFO")
            .arg("memory")
            .query_async(&mut conn)
            .await
            .map_err(|e| unavailable("footprint", e))?;
        let bytes = info.lines().find_map(|line| {
            line.strip_prefix("used_memory:")
                .and_then(|n| n.trim().parse().ok())
        });
        Ok(Footprint { topics, bytes })
    }

    fn describe(&self) -> String {
        format!(
            "redis {} (events in streams, tasks by compare-and-set)",
            self.url
        )
    }
}

/// A `redis-server` of the tests' own, on a free port, stopped when dropped.
#[cfg(test)]
pub(crate) mod test_server {
    use std::net::TcpListener;
    use std::process::{Child, Command, Stdio};
    use std::time::{Duration, Instant};

    pub struct RedisServer {
        child: Child,
        pub url: String,
    }

    impl Drop for RedisServer {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    /// Starts one, or says loudly why it cannot (and fails under
    /// `HERALD_STRICT_TESTS`, which CI sets).
    pub fn start() -> Option<RedisServer> {
        let port = TcpListener::bind("127.0.0.1:0")
            .ok()?
            .local_addr()
            .ok()?
            .port();
        let spawned = Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        let child = match spawned {
            Ok(c) => c,
            Err(e) => {
                assert!(
                    std::env::var_os("HERALD_STRICT_TESTS").is_none(),
                    "redis-server is required here: {e}"
                );
                eprintln!(
                    "SKIPPED: redis-server is not installed ({e}); the Redis store was not tested"
                );
                return None;
            }
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        Some(RedisServer {
            child,
            url: format!("redis://127.0.0.1:{port}"),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn fresh(url: &str, retention: Retention) -> Arc<RedisStore> {
        let client = redis::Client::open(url).unwrap();
        let mut conn = client.get_multiplexed_async_connection().await.unwrap();
        let _: () = redis::cmd("FLUSHALL").query_async(&mut conn).await.unwrap();
        RedisStore::connect(url, retention, Fanout::new(64))
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn keeps_the_store_contract() {
        let Some(server) = test_server::start() else {
            return;
        };
        let retention = Retention {
            max_events: 5,
            max_age: None,
        };
        crate::store::contract::run(|| async {
            fresh(&server.url, retention).await as Arc<dyn Store>
        })
        .await;
    }

    #[tokio::test]
    async fn keeps_the_task_contract() {
        let Some(server) = test_server::start() else {
            return;
        };
        crate::task::contract::run(|| async {
            fresh(&server.url, Retention::default()).await as Arc<dyn crate::task::contract::Both>
        })
        .await;
    }
}
