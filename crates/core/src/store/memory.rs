//! A store that keeps history in memory: fast, and gone on restart.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use async_trait::async_trait;

use super::{Appended, Footprint, NewEvent, Page, ReadFrom, Retention, Store, TopicInfo};
use crate::error::StoreError;
use crate::event::{Event, EventId, now_ms};
use crate::fanout::{Fanout, Watch};
use crate::name::Topic;

/// The in-memory store.
#[derive(Debug)]
pub struct MemoryStore {
    /// One lock for all topics. Appending and handing events to the fan-out
    /// happen under it, which is what keeps ids in order for subscribers.
    /// No `.await` is ever held across it.
    state: Mutex<HashMap<Topic, Log>>,
    fanout: Arc<Fanout>,
    retention: Retention,
    /// Tasks, locked before `state` when both are needed.
    pub(crate) tasks: Mutex<crate::task::memory::MemTasks>,
}

/// One topic's retained history.
#[derive(Debug, Default)]
pub(crate) struct Log {
    events: VecDeque<Retained>,
    /// The newest id ever given out; survives trimming so ids never repeat.
    last: EventId,
    /// The newest id that was dropped by retention, if any: a cursor equal
    /// to it is still exact, anything older is a gap.
    trimmed_to: Option<EventId>,
    /// Idempotency key → id, for retained events only.
    keys: HashMap<String, EventId>,
}

#[derive(Debug)]
struct Retained {
    event: Arc<Event>,
    key: Option<String>,
}

impl Log {
    fn find(&self, id: EventId) -> Result<usize, usize> {
        self.events.binary_search_by(|r| r.event.id.cmp(&id))
    }

    fn pop_front(&mut self) {
        if let Some(r) = self.events.pop_front() {
            self.trimmed_to = Some(r.event.id);
            if let Some(k) = r.key {
                self.keys.remove(&k);
            }
        }
    }

    fn trim(&mut self, retention: &Retention, now: u64) {
        while self.events.len() > retention.max_events {
            self.pop_front();
        }
        if let Some(age) = retention.max_age {
            let cutoff = now.saturating_sub(u64::try_from(age.as_millis()).unwrap_or(u64::MAX));
            while self
                .events
                .front()
                .is_some_and(|r| r.event.time_ms() < cutoff)
            {
                self.pop_front();
            }
        }
    }

    fn read(&self, from: ReadFrom, limit: usize) -> Page {
        let before_oldest = self.trimmed_to.unwrap_or(EventId::START);
        let (start, gap) = match from {
            ReadFrom::Oldest => (0, false),
            ReadFrom::After(id) if id == before_oldest => (0, false),
            ReadFrom::After(id) => match self.find(id) {
                Ok(i) => (i + 1, false),
                Err(_) => (0, true),
            },
        };
        let events: Vec<Arc<Event>> = self
            .events
            .iter()
            .skip(start)
            .take(limit)
            .map(|r| Arc::clone(&r.event))
            .collect();
        let next = match (events.last(), from) {
            (Some(e), _) => e.id,
            (None, ReadFrom::After(id)) if !gap => id,
            (None, _) => before_oldest,
        };
        Page { events, gap, next }
    }
}

impl MemoryStore {
    /// Appends under an already held lock and hands the new events to the
    /// fan-out before the lock is released (which keeps them in id order).
    pub(crate) fn append_locked(
        &self,
        state: &mut HashMap<Topic, Log>,
        batch: Vec<NewEvent>,
        now: u64,
    ) -> Vec<Appended> {
        let mut out = Vec::with_capacity(batch.len());
        let mut fresh = Vec::with_capacity(batch.len());
        for new in batch {
            let log = state.entry(new.topic.clone()).or_default();
            let known = new.idempotency_key.as_ref().and_then(|k| log.keys.get(k));
            if let Some(i) = known.and_then(|id| log.find(*id).ok()) {
                out.push(Appended {
                    event: Arc::clone(&log.events[i].event),
                    replayed: true,
                });
                continue;
            }
            let id = EventId::next_after(log.last, now);
            let event = Arc::new(Event::new(id, new.topic, new.kind, new.data));
            log.last = id;
            if let Some(k) = &new.idempotency_key {
                log.keys.insert(k.clone(), id);
            }
            log.events.push_back(Retained {
                event: Arc::clone(&event),
                key: new.idempotency_key,
            });
            fresh.push(Arc::clone(&event));
            out.push(Appended {
                event,
                replayed: false,
            });
        }
        for event in &fresh {
            if let Some(log) = state.get_mut(&event.topic) {
                log.trim(&self.retention, now);
            }
        }
        self.fanout.send(&fresh);
        out
    }

    pub(crate) fn tasks_lock(&self) -> MutexGuard<'_, crate::task::memory::MemTasks> {
        // Every task change completes before the guard drops.
        self.tasks.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A new store; must be created inside a tokio runtime when retention
    /// has an age, for the task that drops old events.
    pub fn new(retention: Retention, fanout: Arc<Fanout>) -> Arc<MemoryStore> {
        let store = Arc::new(MemoryStore {
            state: Mutex::new(HashMap::new()),
            fanout,
            retention,
            tasks: Mutex::default(),
        });
        if let Some(age) = retention.max_age {
            tokio::spawn(sweep(Arc::downgrade(&store), age));
        }
        store
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, HashMap<Topic, Log>> {
        // Every mutation completes before the guard drops; a poisoned lock
        // still holds consistent logs.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Drops events older than the retention age, in the background, a few
/// times per age window (at most once a second, at least once a minute).
async fn sweep(store: Weak<MemoryStore>, age: Duration) {
    let every = (age / 4).clamp(Duration::from_millis(100), Duration::from_secs(60));
    loop {
        tokio::time::sleep(every).await;
        let Some(store) = store.upgrade() else { return };
        let now = now_ms();
        store.tasks_lock().forget_finished_before(
            now.saturating_sub(u64::try_from(age.as_millis()).unwrap_or(u64::MAX)),
        );
        let mut state = store.lock();
        for log in state.values_mut() {
            log.trim(&store.retention, now);
        }
    }
}

#[async_trait]
impl Store for MemoryStore {
    async fn append(&self, batch: Vec<NewEvent>) -> Result<Vec<Appended>, StoreError> {
        let mut state = self.lock();
        Ok(self.append_locked(&mut state, batch, now_ms()))
    }

    async fn read(&self, topic: &Topic, from: ReadFrom, limit: usize) -> Result<Page, StoreError> {
        let state = self.lock();
        Ok(match state.get(topic) {
            Some(log) => log.read(from, limit),
            None => Page {
                events: Vec::new(),
                gap: matches!(from, ReadFrom::After(id) if id != EventId::START),
                next: EventId::START,
            },
        })
    }

    async fn head(&self, topic: &Topic) -> Result<EventId, StoreError> {
        Ok(self.lock().get(topic).map_or(EventId::START, |l| l.last))
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
        // The map is not ordered: one pass picks the `limit` smallest
        // matching names without sorting every topic.
        let state = self.lock();
        let mut names: Vec<&Topic> = state
            .keys()
            .filter(|t| t.as_str().starts_with(prefix) && after.is_none_or(|a| t.as_str() > a))
            .collect();
        if names.len() > limit {
            names.select_nth_unstable(limit);
            names.truncate(limit);
        }
        names.sort_unstable();
        Ok(names
            .into_iter()
            .map(|t| {
                let log = &state[t];
                TopicInfo {
                    topic: t.clone(),
                    events: u64::try_from(log.events.len()).unwrap_or(u64::MAX),
                    first: log.events.front().map(|r| r.event.id),
                    last: log.last,
                }
            })
            .collect())
    }

    async fn health(&self) -> Result<(), StoreError> {
        Ok(())
    }

    /// No size: what the process's heap holds for the events is not
    /// counted, and a guess would read as a measurement.
    async fn footprint(&self) -> Result<Footprint, StoreError> {
        let topics = self.lock().len();
        Ok(Footprint {
            topics: u64::try_from(topics).unwrap_or(u64::MAX),
            bytes: None,
        })
    }

    fn describe(&self) -> String {
        "memory (nothing is kept across restarts)".to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::name::EventType;

    #[tokio::test]
    async fn keeps_the_store_contract() {
        super::super::contract::run(|| async {
            let retention = Retention {
                max_events: 5,
                max_age: None,
            };
            MemoryStore::new(retention, Fanout::new(64)) as Arc<dyn Store>
        })
        .await;
    }

    #[test]
    fn age_retention_drops_old_events_and_their_keys() {
        let mut log = Log::default();
        let t = Topic::new("t").unwrap();
        for (ms, key) in [(1_000, "a"), (5_000, "b")] {
            let id = EventId { ms, seq: 0 };
            let event = Arc::new(Event::new(
                id,
                t.clone(),
                EventType::message(),
                String::new(),
            ));
            log.keys.insert(key.into(), id);
            log.events.push_back(Retained {
                event,
                key: Some(key.into()),
            });
            log.last = id;
        }
        let retention = Retention {
            max_events: 10,
            max_age: Some(Duration::from_secs(2)),
        };
        log.trim(&retention, 6_000);
        assert_eq!(log.events.len(), 1);
        assert_eq!(log.trimmed_to, Some(EventId { ms: 1_000, seq: 0 }));
        assert!(!log.keys.contains_key("a") && log.keys.contains_key("b"));
    }
}
