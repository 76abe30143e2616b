//! Shared reads: callers asking the store for the same page at the same time
//! wait on one read and all get its answer.
//!
//! After a restart thousands of clients catch up on the same topic from the
//! same cursor, page by page; each would otherwise read the same rows once
//! (issue 14). A read is keyed by `(topic, from, limit)`; while one is in
//! flight, a caller with the same key joins it instead of reading again. The
//! entry goes as soon as the read ends: a read asked for after that reads the
//! store again.
//!
//! Joining must not hand a caller less than its own read would have. A
//! subscriber opens its watch *before* the read that ends its catch-up, and
//! counts on every event stored before that read to be in the page (see
//! [`crate::subscription`]). A read already in flight may have looked at the
//! store before such an event was stored; so each read opens a watch on its
//! topic before it starts, and a caller joins only while that watch has seen
//! nothing. An event stored before the watch opened is in the page; one
//! stored after reaches the joining caller's own watch, or the caller reads
//! for itself.
//!
//! Only topics that already have a watch on this node are shared: catch-ups
//! and long polls watch their topic while they read, so storms are covered,
//! and a short poll of a topic nobody follows does not pay for a fan-out
//! ring of its own (a `--subscriber-buffer` of slots) just to be shared.
//!
//! Clients a page apart still read the same rows in different reads; the
//! events of a shared read are swapped for copies already in memory
//! ([`recent`]), so a storm holds each event about once.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;
use futures_util::StreamExt;
use futures_util::future::{BoxFuture, FutureExt, Shared, WeakShared};
use metrics::Counter;

use super::{Appended, Footprint, NewEvent, Page, ReadFrom, Store, TopicInfo};
use crate::error::StoreError;
use crate::event::EventId;
use crate::fanout::{Fanout, Watch};
use crate::name::Topic;
use recent::Recent;

mod recent;

/// What a read is asked: topic, the id it reads after (`None`: the oldest),
/// and the limit. `ReadFrom` itself is not `Hash`.
type Key = (Topic, Option<EventId>, usize);

/// One read, awaited by every caller that joined it.
type Read = Shared<BoxFuture<'static, Result<Page, StoreError>>>;

/// Wraps any store so that identical reads in flight at once are one read.
/// Everything else passes straight through.
pub struct SharedReads {
    inner: Arc<dyn Store>,
    /// The fan-out `inner` hands its events to: where a read watches its
    /// topic.
    fanout: Arc<Fanout>,
    flights: Arc<Flights>,
    recent: Arc<Recent>,
    /// `herald_store_reads_shared_total`: reads answered by another caller's
    /// read. Store reads done = `herald_store_seconds_count{op="read"}` minus
    /// this.
    shared: Counter,
}

/// The reads in flight, by key.
#[derive(Default)]
struct Flights {
    /// A std mutex: every critical section is a lookup, insert or removal
    /// with no `.await` inside. Taken before the fan-out's lock (opening a
    /// watch) and never while holding it.
    map: Mutex<HashMap<Key, Flight>>,
    /// Numbers the reads, so a read that ends removes its own entry only.
    next_id: AtomicU64,
}

/// A read in flight.
struct Flight {
    /// Tells this read from a later one under the same key, so the read
    /// removes its own entry only.
    id: u64,
    /// Weak: once every caller waiting on it has gone, the read is dropped
    /// (and with it, this entry) rather than run for nobody.
    read: WeakShared<BoxFuture<'static, Result<Page, StoreError>>>,
    /// Opened before the read began; anything on it was stored after the
    /// read may have looked, so a caller arriving now reads for itself.
    since: Watch,
}

impl Flights {
    fn lock(&self) -> MutexGuard<'_, HashMap<Key, Flight>> {
        // Each critical section is one map operation (or a lookup followed
        // by one): a panic cannot leave the map half changed.
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Forgets read `id` under `key`, if it is still the one there.
    fn land(&self, key: &Key, id: u64) {
        let gone = {
            let mut map = self.lock();
            match map.get(key) {
                Some(f) if f.id == id => map.remove(key),
                _ => None,
            }
        };
        // Dropped outside our lock: dropping its watch takes the fan-out's.
        drop(gone);
    }

    /// Forgets every read of `topic`, so the next caller reads for itself.
    fn close(&self, topic: &Topic) {
        let gone: Vec<Flight> = {
            let mut map = self.lock();
            let keys: Vec<Key> = map.keys().filter(|k| &k.0 == topic).cloned().collect();
            keys.iter().filter_map(|k| map.remove(k)).collect()
        };
        drop(gone);
    }
}

/// Removes a read's entry when the read ends — answered, failed, or dropped
/// because every caller went away — so the map only ever holds reads in
/// flight.
struct Landing {
    flights: Arc<Flights>,
    key: Key,
    id: u64,
}

impl Drop for Landing {
    fn drop(&mut self) {
        self.flights.land(&self.key, self.id);
    }
}

impl SharedReads {
    /// Shares the reads of `inner`, whose events go to `fanout`.
    pub fn new(inner: Arc<dyn Store>, fanout: Arc<Fanout>) -> SharedReads {
        SharedReads {
            inner,
            fanout,
            flights: Arc::default(),
            recent: Arc::default(),
            shared: metrics::counter!("herald_store_reads_shared_total"),
        }
    }

    /// The read in flight for this key if a caller may still join it, or a
    /// new one; `None` for a topic not watched on this node. Runs in the
    /// caller's first poll, before it waits on anything: the caller joins a
    /// read only if nothing was stored since that read began.
    fn join_or_start(&self, topic: &Topic, from: ReadFrom, limit: usize) -> Option<Read> {
        let after = match from {
            ReadFrom::Oldest => None,
            ReadFrom::After(id) => Some(id),
        };
        let key: Key = (topic.clone(), after, limit);
        let mut map = self.flights.lock();
        if let Some(f) = map.get_mut(&key)
            && quiet(&mut f.since)
            && let Some(read) = f.read.upgrade()
        {
            self.shared.increment(1);
            return Some(read);
        }
        // Opened before the read is first polled (by our caller, once this
        // returns), so it sees whatever is stored after the read looks.
        let since = self.fanout.watch_existing(topic)?;
        let id = self.flights.next_id.fetch_add(1, Ordering::Relaxed);
        let landing = Landing {
            flights: Arc::clone(&self.flights),
            key: key.clone(),
            id,
        };
        let (inner, recent) = (Arc::clone(&self.inner), Arc::clone(&self.recent));
        let topic = topic.clone();
        let read = async move {
            let _landing = landing;
            let mut page = inner.read(&topic, from, limit).await?;
            recent.share(&topic, &mut page);
            Ok(page)
        }
        .boxed()
        .shared();
        // `None` only for a read already finished, which this one is not;
        // then it is simply not shared.
        if let Some(weak) = read.downgrade() {
            let old = map.insert(
                key,
                Flight {
                    id,
                    read: weak,
                    since,
                },
            );
            drop(map);
            drop(old);
        }
        Some(read)
    }

    /// Reads in flight, for tests.
    #[cfg(test)]
    fn in_flight(&self) -> usize {
        self.flights.lock().len()
    }
}

/// Whether nothing was stored in the watched topic since `since` opened.
fn quiet(since: &mut Watch) -> bool {
    // An event, a lag or a closed ring all mean "something was stored".
    since.next().now_or_never().is_none()
}

#[async_trait]
impl Store for SharedReads {
    async fn append(&self, batch: Vec<NewEvent>) -> Result<Vec<Appended>, StoreError> {
        let mut topics: Vec<Topic> = batch.iter().map(|e| e.topic.clone()).collect();
        topics.sort_unstable();
        topics.dedup();
        let out = self.inner.append(batch).await;
        // Stored events reach reads in flight through their watch, but on
        // Redis that watch hears of them only later, by Pub/Sub: closing the
        // topics' reads here keeps a poll made after this append returns
        // from joining a read that began before it.
        for topic in &topics {
            self.flights.close(topic);
        }
        out
    }

    async fn read(&self, topic: &Topic, from: ReadFrom, limit: usize) -> Result<Page, StoreError> {
        match self.join_or_start(topic, from, limit) {
            Some(read) => read.await,
            None => self.inner.read(topic, from, limit).await,
        }
    }

    async fn head(&self, topic: &Topic) -> Result<EventId, StoreError> {
        self.inner.head(topic).await
    }

    fn watch(&self, topic: &Topic) -> Watch {
        self.inner.watch(topic)
    }

    async fn topics(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<TopicInfo>, StoreError> {
        self.inner.topics(prefix, after, limit).await
    }

    async fn health(&self) -> Result<(), StoreError> {
        self.inner.health().await
    }

    async fn footprint(&self) -> Result<Footprint, StoreError> {
        self.inner.footprint().await
    }

    fn describe(&self) -> String {
        self.inner.describe()
    }
}

#[cfg(test)]
mod tests {
    use std::future::Future;
    use std::pin::Pin;
    use std::sync::atomic::{AtomicBool, AtomicUsize};
    use std::task::{Context, Poll};

    use futures_util::future::join_all;
    use futures_util::task::noop_waker_ref;
    use tokio::sync::Semaphore;

    use super::*;
    use crate::event::Event;
    use crate::name::EventType;

    /// A store whose reads count themselves and then wait for the test to
    /// let them answer (one permit per read).
    struct Held {
        fanout: Arc<Fanout>,
        reads: AtomicUsize,
        gate: Semaphore,
        fail: AtomicBool,
    }

    impl Held {
        fn new() -> (Arc<Held>, SharedReads) {
            let fanout = Fanout::new(16);
            let held = Arc::new(Held {
                fanout: Arc::clone(&fanout),
                reads: AtomicUsize::new(0),
                gate: Semaphore::new(0),
                fail: AtomicBool::new(false),
            });
            let shared = SharedReads::new(Arc::clone(&held) as Arc<dyn Store>, fanout);
            (held, shared)
        }

        fn reads(&self) -> usize {
            self.reads.load(Ordering::SeqCst)
        }

        fn release(&self, n: usize) {
            self.gate.add_permits(n);
        }
    }

    #[async_trait]
    impl Store for Held {
        async fn append(&self, batch: Vec<NewEvent>) -> Result<Vec<Appended>, StoreError> {
            // Stores nothing and tells no watcher, as Redis seems to the
            // node until its Pub/Sub message comes.
            Ok(batch
                .into_iter()
                .map(|e| Appended {
                    event: ev(&e.topic, 1),
                    replayed: false,
                })
                .collect())
        }

        async fn read(&self, topic: &Topic, _: ReadFrom, _: usize) -> Result<Page, StoreError> {
            // The nth read answers one event with sequence n, so pages of
            // different reads differ.
            let n = self.reads.fetch_add(1, Ordering::SeqCst) + 1;
            let permit = self
                .gate
                .acquire()
                .await
                .map_err(|_| StoreError::Internal("gate closed".into()))?;
            permit.forget();
            if self.fail.load(Ordering::SeqCst) {
                return Err(StoreError::Unavailable(format!("read {n} failed")));
            }
            let event = ev(topic, n as u64);
            Ok(Page {
                next: event.id,
                events: vec![event],
                gap: false,
            })
        }

        async fn head(&self, _: &Topic) -> Result<EventId, StoreError> {
            Ok(EventId::START)
        }

        fn watch(&self, topic: &Topic) -> Watch {
            self.fanout.watch(topic)
        }

        async fn topics(
            &self,
            _: &str,
            _: Option<&str>,
            _: usize,
        ) -> Result<Vec<super::TopicInfo>, StoreError> {
            Ok(Vec::new())
        }

        async fn health(&self) -> Result<(), StoreError> {
            Ok(())
        }

        async fn footprint(&self) -> Result<Footprint, StoreError> {
            Ok(Footprint::default())
        }

        fn describe(&self) -> String {
            "held".to_owned()
        }
    }

    fn ev(topic: &Topic, seq: u64) -> Arc<Event> {
        Arc::new(Event::new(
            EventId { ms: 1, seq },
            topic.clone(),
            EventType::message(),
            String::new(),
        ))
    }

    fn topic(name: &str) -> Topic {
        Topic::new(name).unwrap()
    }

    const FROM: ReadFrom = ReadFrom::After(EventId { ms: 1, seq: 0 });

    /// Polls `read` once, as its caller's task would on its first turn: it
    /// joins or starts a read, which then waits on the gate.
    fn start<F: Future + Unpin>(read: &mut F) {
        let mut cx = Context::from_waker(noop_waker_ref());
        assert!(matches!(Pin::new(read).poll(&mut cx), Poll::Pending));
    }

    /// The sequence number of the one event of a page (which read it was).
    fn which(page: &Result<Page, StoreError>) -> u64 {
        let page = page.as_ref().unwrap();
        assert_eq!(page.events.len(), 1);
        assert_eq!(page.next, page.events[0].id);
        page.events[0].id.seq
    }

    /// Wrapped, a store still keeps every promise of [`Store`].
    #[tokio::test]
    async fn keeps_the_store_contract() {
        use crate::store::Retention;
        use crate::store::sqlite::{SqliteConfig, SqliteStore};
        let root = std::env::temp_dir().join(format!("herald-shared-{}", std::process::id()));
        let n = AtomicUsize::new(0);
        crate::store::contract::run(|| {
            let dir = root.join(n.fetch_add(1, Ordering::SeqCst).to_string());
            async move {
                let config = SqliteConfig {
                    dir,
                    retention: Retention {
                        max_events: 5,
                        max_age: None,
                    },
                    max_bytes: None,
                };
                let fanout = Fanout::new(64);
                let sqlite = SqliteStore::open(config, Arc::clone(&fanout)).unwrap();
                Arc::new(SharedReads::new(sqlite, fanout)) as Arc<dyn Store>
            }
        })
        .await;
        let _ = std::fs::remove_dir_all(root);
    }

    #[tokio::test]
    async fn identical_reads_at_once_are_one_read() {
        let (held, shared) = Held::new();
        let t = topic("t");
        let _subscriber = held.fanout.watch(&t);
        let mut reads: Vec<_> = (0..5).map(|_| shared.read(&t, FROM, 10)).collect();
        for r in &mut reads {
            start(r);
        }
        assert_eq!(held.reads(), 1);
        assert_eq!(shared.in_flight(), 1);
        held.release(1);
        let pages = join_all(reads).await;
        assert!(pages.iter().all(|p| which(p) == 1));
        // The very same events, not copies.
        let first = &pages[0].as_ref().unwrap().events[0];
        assert!(
            pages
                .iter()
                .all(|p| Arc::ptr_eq(&p.as_ref().unwrap().events[0], first))
        );
        assert_eq!(held.reads(), 1);
        assert_eq!(shared.in_flight(), 0);
    }

    #[tokio::test]
    async fn different_reads_are_not_shared() {
        let (held, shared) = Held::new();
        let (t, u) = (topic("t"), topic("u"));
        let _watches = (held.fanout.watch(&t), held.fanout.watch(&u));
        let mut reads = vec![
            shared.read(&t, FROM, 10),
            shared.read(&t, FROM, 20),
            shared.read(&t, ReadFrom::Oldest, 10),
            shared.read(&t, ReadFrom::After(EventId { ms: 1, seq: 7 }), 10),
            shared.read(&u, FROM, 10),
        ];
        for r in &mut reads {
            start(r);
        }
        assert_eq!(held.reads(), 5);
        held.release(5);
        let mut seen: Vec<u64> = join_all(reads).await.iter().map(which).collect();
        seen.sort_unstable();
        assert_eq!(seen, [1, 2, 3, 4, 5]);
        assert_eq!(shared.in_flight(), 0);
    }

    #[tokio::test]
    async fn a_read_after_the_last_one_ended_reads_again() {
        let (held, shared) = Held::new();
        let t = topic("t");
        let _subscriber = held.fanout.watch(&t);
        held.release(2);
        assert_eq!(which(&shared.read(&t, FROM, 10).await), 1);
        assert_eq!(which(&shared.read(&t, FROM, 10).await), 2);
        assert_eq!(held.reads(), 2);
    }

    #[tokio::test]
    async fn a_caller_that_goes_away_strands_nobody() {
        let (held, shared) = Held::new();
        let t = topic("t");
        let _subscriber = held.fanout.watch(&t);
        let mut leader = shared.read(&t, FROM, 10);
        let mut follower = shared.read(&t, FROM, 10);
        start(&mut leader);
        start(&mut follower);
        drop(leader);
        held.release(1);
        assert_eq!(which(&follower.await), 1);
        assert_eq!(held.reads(), 1);
        assert_eq!(shared.in_flight(), 0);
    }

    #[tokio::test]
    async fn a_read_everyone_left_is_dropped_and_forgotten() {
        let (held, shared) = Held::new();
        let t = topic("t");
        let _subscriber = held.fanout.watch(&t);
        let mut a = shared.read(&t, FROM, 10);
        let mut b = shared.read(&t, FROM, 10);
        start(&mut a);
        start(&mut b);
        drop((a, b));
        assert_eq!(shared.in_flight(), 0);
        // The abandoned read gave its place up; the next reads afresh.
        held.release(1);
        assert_eq!(which(&shared.read(&t, FROM, 10).await), 2);
        assert_eq!(held.gate.available_permits(), 0);
    }

    #[tokio::test]
    async fn an_error_reaches_every_caller() {
        let (held, shared) = Held::new();
        let t = topic("t");
        let _subscriber = held.fanout.watch(&t);
        held.fail.store(true, Ordering::SeqCst);
        let mut reads: Vec<_> = (0..3).map(|_| shared.read(&t, FROM, 10)).collect();
        for r in &mut reads {
            start(r);
        }
        held.release(1);
        for out in join_all(reads).await {
            assert!(matches!(out, Err(StoreError::Unavailable(m)) if m == "read 1 failed"));
        }
        assert_eq!(held.reads(), 1);
        assert_eq!(shared.in_flight(), 0);
    }

    /// A subscriber watches, then reads: it must not take a page read before
    /// an event that reached nobody's watch it had open.
    #[tokio::test]
    async fn nobody_joins_a_read_older_than_a_stored_event() {
        let (held, shared) = Held::new();
        let t = topic("t");
        let _subscriber = held.fanout.watch(&t);
        let mut before = shared.read(&t, FROM, 10);
        start(&mut before);
        held.fanout.send(&[ev(&t, 99)]);
        let mut after = shared.read(&t, FROM, 10);
        start(&mut after);
        assert_eq!(held.reads(), 2);
        // A third caller joins the newer read.
        let mut third = shared.read(&t, FROM, 10);
        start(&mut third);
        assert_eq!(held.reads(), 2);
        held.release(2);
        let (before, after, third) = (before.await, after.await, third.await);
        assert_eq!((which(&before), which(&after), which(&third)), (1, 2, 2));
        assert_eq!(shared.in_flight(), 0);
    }

    #[tokio::test]
    async fn an_append_through_it_closes_the_topics_reads() {
        let (held, shared) = Held::new();
        let t = topic("t");
        let _subscriber = held.fanout.watch(&t);
        let mut before = shared.read(&t, FROM, 10);
        start(&mut before);
        let new = NewEvent {
            topic: t.clone(),
            kind: EventType::message(),
            data: String::new(),
            idempotency_key: None,
        };
        shared.append(vec![new]).await.unwrap();
        let mut after = shared.read(&t, FROM, 10);
        start(&mut after);
        assert_eq!(held.reads(), 2);
        held.release(2);
        assert_eq!((which(&before.await), which(&after.await)), (1, 2));
    }

    #[tokio::test]
    async fn a_topic_nobody_watches_is_read_alone() {
        let (held, shared) = Held::new();
        let t = topic("t");
        let mut reads: Vec<_> = (0..2).map(|_| shared.read(&t, FROM, 10)).collect();
        for r in &mut reads {
            start(r);
        }
        assert_eq!(held.reads(), 2);
        assert_eq!(shared.in_flight(), 0);
        // No ring was built for the look.
        assert!(held.fanout.is_empty());
        held.release(2);
        join_all(reads).await;
    }
}
