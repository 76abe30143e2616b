//! Fan-out of stored events to the subscribers of each topic on this node.
//!
//! One bounded broadcast ring per topic that has subscribers. A publish puts
//! one `Arc<Event>` in the ring; every subscriber reads the same `Arc`, so the
//! event and its cached encodings exist once however many read it. A
//! subscriber that falls a whole ring behind is told it lagged and is cut off
//! (it resumes from the store with its cursor); the publisher never waits for
//! anyone.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};

use futures_util::Stream;
use tokio::sync::broadcast;
use tokio_stream::wrappers::BroadcastStream;
use tokio_stream::wrappers::errors::BroadcastStreamRecvError;

use crate::event::Event;
use crate::name::Topic;

/// The topic registry of one node: topic → broadcast ring, for topics with at
/// least one subscriber.
#[derive(Debug)]
pub struct Fanout {
    /// A std mutex: every critical section is a map lookup or insert with no
    /// `.await` inside, far cheaper than an async lock.
    topics: Mutex<HashMap<Topic, broadcast::Sender<Arc<Event>>>>,
    /// Events a subscriber may fall behind before it is cut off.
    capacity: usize,
}

impl Fanout {
    pub fn new(capacity: usize) -> Arc<Fanout> {
        Arc::new(Fanout {
            topics: Mutex::new(HashMap::new()),
            capacity: capacity.max(1),
        })
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<Topic, broadcast::Sender<Arc<Event>>>> {
        // A panic while holding this lock cannot leave the map inconsistent
        // (each operation is a single insert, remove or lookup).
        self.topics.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Starts receiving the events of `topic` sent from now on.
    pub fn watch(self: &Arc<Self>, topic: &Topic) -> Watch {
        let rx = self
            .lock()
            .entry(topic.clone())
            .or_insert_with(|| broadcast::channel(self.capacity).0)
            .subscribe();
        Watch {
            stream: BroadcastStream::new(rx),
            _guard: WatchGuard {
                fanout: Arc::clone(self),
                topic: topic.clone(),
            },
        }
    }

    /// [`Fanout::watch`], only if `topic` already has subscribers on this
    /// node: a look at what is sent meanwhile that never builds a ring (a
    /// whole `capacity` of slots) for itself.
    pub fn watch_existing(self: &Arc<Self>, topic: &Topic) -> Option<Watch> {
        let rx = self.lock().get(topic)?.subscribe();
        Some(Watch {
            stream: BroadcastStream::new(rx),
            _guard: WatchGuard {
                fanout: Arc::clone(self),
                topic: topic.clone(),
            },
        })
    }

    /// Hands stored events to the topics' subscribers. Callers send in the
    /// order the store committed them, per topic: subscribers rely on ids
    /// arriving in increasing order.
    pub fn send(&self, events: &[Arc<Event>]) {
        let topics = self.lock();
        for event in events {
            if let Some(tx) = topics.get(&event.topic) {
                // An error only means every receiver is gone at this instant.
                let _ = tx.send(Arc::clone(event));
            }
        }
    }

    /// Topics that have subscribers on this node.
    pub fn watched(&self) -> Vec<Topic> {
        self.lock().keys().cloned().collect()
    }

    /// Whether `topic` has subscribers on this node.
    pub fn is_watched(&self, topic: &Topic) -> bool {
        self.lock().contains_key(topic)
    }

    /// How many topics have subscribers on this node.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A subscriber's view of one topic: a stream of the events sent after it
/// was created, or a lag error once it fell a whole ring behind.
#[derive(Debug)]
pub struct Watch {
    // Declared before the guard so the receiver is gone when the guard checks
    // whether anyone still listens.
    stream: BroadcastStream<Arc<Event>>,
    _guard: WatchGuard,
}

/// The subscriber fell this many events behind and missed them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lagged(pub u64);

impl Stream for Watch {
    type Item = Result<Arc<Event>, Lagged>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        Pin::new(&mut self.stream)
            .poll_next(cx)
            .map(|item| item.map(|r| r.map_err(|BroadcastStreamRecvError::Lagged(n)| Lagged(n))))
    }
}

/// Removes a topic's ring when its last subscriber on this node leaves, so
/// idle topics cost nothing.
#[derive(Debug)]
struct WatchGuard {
    fanout: Arc<Fanout>,
    topic: Topic,
}

impl Drop for WatchGuard {
    fn drop(&mut self) {
        let mut topics = self.fanout.lock();
        if topics
            .get(&self.topic)
            .is_some_and(|tx| tx.receiver_count() == 0)
        {
            topics.remove(&self.topic);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::EventId;
    use crate::name::EventType;
    use futures_util::StreamExt;

    fn ev(topic: &Topic, seq: u64) -> Arc<Event> {
        Arc::new(Event::new(
            EventId { ms: 1, seq },
            topic.clone(),
            EventType::message(),
            String::new(),
        ))
    }

    #[tokio::test]
    async fn shares_one_event_and_forgets_idle_topics() {
        let fanout = Fanout::new(8);
        let t = Topic::new("t").unwrap();
        let mut a = fanout.watch(&t);
        let mut b = fanout.watch(&t);
        let e = ev(&t, 1);
        fanout.send(&[Arc::clone(&e)]);
        let got_a = a.next().await.unwrap().unwrap();
        let got_b = b.next().await.unwrap().unwrap();
        assert!(Arc::ptr_eq(&got_a, &e) && Arc::ptr_eq(&got_b, &e));
        assert_eq!(fanout.len(), 1);
        drop(a);
        assert_eq!(fanout.len(), 1);
        drop(b);
        assert!(fanout.is_empty());
    }

    #[tokio::test]
    async fn watching_an_existing_ring_never_builds_one() {
        let fanout = Fanout::new(8);
        let t = Topic::new("t").unwrap();
        assert!(fanout.watch_existing(&t).is_none());
        assert!(fanout.is_empty());
        let first = fanout.watch(&t);
        let mut second = fanout.watch_existing(&t).unwrap();
        fanout.send(&[ev(&t, 1)]);
        assert_eq!(second.next().await.unwrap().unwrap().id.seq, 1);
        drop(first);
        assert_eq!(fanout.len(), 1);
        drop(second);
        assert!(fanout.is_empty());
    }

    #[tokio::test]
    async fn a_slow_watcher_lags_without_blocking_the_sender() {
        let fanout = Fanout::new(2);
        let t = Topic::new("t").unwrap();
        let mut w = fanout.watch(&t);
        for i in 0..5 {
            fanout.send(&[ev(&t, i)]);
        }
        assert_eq!(w.next().await.unwrap().unwrap_err(), Lagged(3));
    }
}
