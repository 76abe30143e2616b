//! Lots: per topic, one task that takes the topic's events from the ring
//! and serves every client waiting in the lot from there — parked long
//! polls ([`super::park`]) and caught-up streams ([`super::live`]).
//!
//! Why: a publish that wakes N waiting clients' tasks pays for N task
//! wakes, N ring receives and N encodings before the last client's write.
//! A lot's task does one receive and one encoding, and between two
//! clients' writes there is nothing but the write.
//!
//! What keeps a lot exact is one rule: a client *joins* the lot (whose task
//! then watches the topic) before it reads the store, and *enters* it at
//! the position its read reached only if the lot's task has not yet taken
//! an event past that position; otherwise it reads again. Every event after
//! its position then either was in its read or reaches the lot's task after
//! it entered. A lot whose ring overflowed cannot keep that promise: it
//! closes, and its clients go back to the store.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use futures_util::{FutureExt, StreamExt};
use herald_core::fanout::Watch;
use herald_core::{Event, EventId, Store, Topic};
use metrics::Counter;
use tokio::sync::Notify;

/// Most events a lot's task takes from the ring before it serves them.
const MAX_BATCH: usize = 1024;

/// What a kind of lot keeps per client and how it serves them.
pub trait Kind: Sized + Send + Sync + 'static {
    /// What the lot keeps of one client.
    type Waiter: std::fmt::Debug + Send + Sync + 'static;

    /// Serves `events` (in id order, all newer than anything served
    /// before) to the clients in `lot`; the lot has noted them as seen.
    fn serve(
        lot: &Lot<Self>,
        events: &[Arc<Event>],
        delivered: &Counter,
    ) -> impl Future<Output = ()> + Send;

    /// The lot closed without serving these clients: tell them.
    fn lost(waiters: BTreeMap<u64, Arc<Self::Waiter>>);
}

/// The lots of one kind, by topic, watching the topics of one store.
pub struct Lots<K: Kind> {
    lots: Mutex<HashMap<Topic, Arc<Lot<K>>>>,
    store: Arc<dyn Store>,
}

impl<K: Kind> std::fmt::Debug for Lots<K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let topics = lock(&self.lots).len();
        f.debug_struct("Lots")
            .field("topics", &topics)
            .finish_non_exhaustive()
    }
}

/// One topic's lot.
#[derive(Debug)]
pub struct Lot<K: Kind> {
    topic: Topic,
    state: Mutex<LotState<K>>,
    /// Told when the last member leaves, so the lot's task can end.
    idle: Notify,
}

#[derive(Debug)]
pub struct LotState<K: Kind> {
    /// Clients that joined and have not left: reading the store or in.
    members: usize,
    /// The newest event the lot's task has taken from the ring.
    seen: Option<EventId>,
    /// The clients in the lot, in the order they entered.
    pub waiters: BTreeMap<u64, Arc<K::Waiter>>,
    next_key: u64,
    /// The lot's task has ended; nobody may enter any more.
    closed: bool,
}

/// Why a client could not enter.
#[derive(Debug, PartialEq, Eq)]
pub enum Refused {
    /// An event newer than the client's position has already gone by:
    /// read again.
    Moved,
    /// The lot closed: join a new one, then read again.
    Closed,
}

/// Every critical section here is a few map operations with no `.await`
/// inside; a panic inside one cannot leave a half-done change behind that
/// matters more than the server staying up.
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl<K: Kind> Lots<K> {
    pub fn new(store: &Arc<dyn Store>) -> Arc<Lots<K>> {
        Arc::new(Lots {
            lots: Mutex::default(),
            store: Arc::clone(store),
        })
    }

    /// Joins the lot of `topic`, opening it (and its task, watching the
    /// topic from now on) if there is none. Read the store only after this.
    pub fn join(self: &Arc<Self>, topic: &Topic) -> Member<K> {
        let lots = self;
        let mut map = lock(&lots.lots);
        let lot = match map.get(topic) {
            Some(lot) => Arc::clone(lot),
            None => {
                let lot = Arc::new(Lot {
                    topic: topic.clone(),
                    state: Mutex::new(LotState {
                        members: 0,
                        seen: None,
                        waiters: BTreeMap::new(),
                        next_key: 0,
                        closed: false,
                    }),
                    idle: Notify::new(),
                });
                map.insert(topic.clone(), Arc::clone(&lot));
                let watch = lots.store.watch(topic);
                tokio::spawn(run(Arc::clone(lots), Arc::clone(&lot), watch));
                lot
            }
        };
        lot.lock().members += 1;
        drop(map);
        Member { lot }
    }

    /// Ends `lot` if nobody is in it; says whether it did.
    fn retire_if_idle(&self, lot: &Arc<Lot<K>>) -> bool {
        let mut map = lock(&self.lots);
        let mut state = lot.lock();
        if state.members > 0 {
            return false;
        }
        unlist(&mut map, lot, &mut state);
        true
    }

    /// Ends `lot` at once: new clients go to a new lot, and those in this
    /// one are told.
    fn close(&self, lot: &Arc<Lot<K>>) {
        let waiters = {
            let mut map = lock(&self.lots);
            let mut state = lot.lock();
            unlist(&mut map, lot, &mut state);
            std::mem::take(&mut state.waiters)
        };
        K::lost(waiters);
    }
}

/// Closes `lot` and takes it off the map (both locks held by the caller),
/// so the next client of its topic opens a new one.
fn unlist<K: Kind>(
    map: &mut HashMap<Topic, Arc<Lot<K>>>,
    lot: &Arc<Lot<K>>,
    state: &mut LotState<K>,
) {
    state.closed = true;
    if map.get(&lot.topic).is_some_and(|l| Arc::ptr_eq(l, lot)) {
        map.remove(&lot.topic);
    }
}

impl<K: Kind> Lot<K> {
    pub fn topic(&self) -> &Topic {
        &self.topic
    }

    pub fn lock(&self) -> MutexGuard<'_, LotState<K>> {
        lock(&self.state)
    }

    /// Takes a client out of the lot (it may already be gone).
    pub fn remove(&self, key: u64) {
        self.lock().waiters.remove(&key);
    }
}

impl<K: Kind> LotState<K> {
    /// Notes that the lot's task took events up to `newest`.
    fn saw(&mut self, newest: EventId) {
        self.seen = self.seen.max(Some(newest));
    }
}

/// A client's membership of a lot, from joining until it leaves (dropped).
#[derive(Debug)]
pub struct Member<K: Kind> {
    lot: Arc<Lot<K>>,
}

impl<K: Kind> Member<K> {
    /// Enters the lot at `position` (what the client's read reached): the
    /// lot's task serves it the events after that. Returns its key.
    pub fn enter(&self, position: EventId, waiter: Arc<K::Waiter>) -> Result<u64, Refused> {
        let mut state = self.lot.lock();
        if state.closed {
            return Err(Refused::Closed);
        }
        if state.seen.is_some_and(|seen| seen > position) {
            return Err(Refused::Moved);
        }
        let key = state.next_key;
        state.next_key += 1;
        state.waiters.insert(key, waiter);
        Ok(key)
    }

    pub fn lot(&self) -> &Arc<Lot<K>> {
        &self.lot
    }
}

impl<K: Kind> Drop for Member<K> {
    fn drop(&mut self) {
        let mut state = self.lot.lock();
        state.members -= 1;
        if state.members == 0 {
            drop(state);
            self.lot.idle.notify_one();
        }
    }
}

/// A lot's task: takes the topic's events from the ring and serves them;
/// ends when the lot is empty, or closes it if the ring overflowed.
async fn run<K: Kind>(lots: Arc<Lots<K>>, lot: Arc<Lot<K>>, mut watch: Watch) {
    let delivered = metrics::counter!("herald_events_delivered_total");
    let mut batch = Vec::new();
    // The newest event taken. A ring may repeat events (the Redis store
    // replays after a reconnect): only newer ones are served, in order.
    let mut last = None;
    loop {
        tokio::select! {
            item = watch.next() => {
                let mut item = Some(item);
                let mut lagged = false;
                while let Some(next) = item.take() {
                    match next {
                        Some(Ok(event)) => {
                            if last.is_none_or(|last| event.id > last) {
                                last = Some(event.id);
                                batch.push(event);
                            }
                        }
                        Some(Err(_)) | None => lagged = true,
                    }
                    if !lagged && batch.len() < MAX_BATCH {
                        item = watch.next().now_or_never();
                    }
                }
                if lagged {
                    // What was missed is unknown: nobody may be served from
                    // here any more.
                    lots.close(&lot);
                    return;
                }
                if let Some(newest) = batch.last().map(|e| e.id) {
                    // Before anyone is served: a client entering from here
                    // on at an older position must read again.
                    lot.lock().saw(newest);
                    K::serve(&lot, &batch, &delivered).await;
                    batch.clear();
                }
            }
            () = lot.idle.notified() => {}
        }
        if lots.retire_if_idle(&lot) {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use herald_core::EventType;
    use herald_core::fanout::Fanout;
    use tokio::sync::mpsc;

    use super::*;

    /// A lot that reports the ids of every batch it serves.
    struct Record;

    impl Kind for Record {
        type Waiter = mpsc::UnboundedSender<Vec<EventId>>;

        async fn serve(lot: &Lot<Record>, events: &[Arc<Event>], _: &Counter) {
            let ids: Vec<EventId> = events.iter().map(|e| e.id).collect();
            for tx in lot.lock().waiters.values() {
                let _ = tx.send(ids.clone());
            }
        }

        fn lost(_: BTreeMap<u64, Arc<Self::Waiter>>) {}
    }

    fn event(topic: &Topic, seq: u64) -> Arc<Event> {
        let id = EventId { ms: 1, seq };
        Arc::new(Event::new(
            id,
            topic.clone(),
            EventType::message(),
            String::new(),
        ))
    }

    #[tokio::test]
    async fn a_ring_that_repeats_events_is_served_each_once_in_order() {
        let topic = Topic::new("t").unwrap();
        let fanout = Fanout::new(64);
        let retention = herald_core::Retention {
            max_events: 10,
            max_age: None,
        };
        let store: Arc<dyn Store> =
            herald_core::store::memory::MemoryStore::new(retention, Arc::clone(&fanout));
        let lots = Lots::<Record>::new(&store);
        let lot = Arc::new(Lot {
            topic: topic.clone(),
            state: Mutex::new(LotState {
                members: 1,
                seen: None,
                waiters: BTreeMap::new(),
                next_key: 0,
                closed: false,
            }),
            idle: Notify::new(),
        });
        let (tx, mut rx) = mpsc::unbounded_channel();
        lot.lock().waiters.insert(0, Arc::new(tx));
        let task = tokio::spawn(run(
            Arc::clone(&lots),
            Arc::clone(&lot),
            fanout.watch(&topic),
        ));
        // A replay after a reconnect: 2 and 3 again, then 4.
        let sent = [1, 2, 3, 2, 3, 4].map(|seq| event(&topic, seq));
        fanout.send(&sent);
        let mut served = Vec::new();
        while served.len() < 4 {
            served.extend(rx.recv().await.unwrap());
        }
        let want: Vec<EventId> = (1..=4).map(|seq| EventId { ms: 1, seq }).collect();
        assert_eq!(served, want);
        assert_eq!(lot.lock().seen, Some(want[3]));
        task.abort();
    }
}
