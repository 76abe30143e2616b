//! The hub: the one handle the server holds. It publishes through the store,
//! answers polls (long polls: [`crate::long_poll`]), and opens subscriptions.

use std::sync::Arc;
use std::time::Duration;

use crate::cursor::{Cursor, CursorInput, Start};
use crate::error::StoreError;
use crate::event::Event;
use crate::heartbeat::Heartbeat;
use crate::name::Topic;
use crate::store::metered::Metered;
use crate::store::{Appended, NewEvent, ReadFrom, Store};
use crate::subscription::Subscription;

/// Settings of the hub, validated by whoever builds it.
#[derive(Debug, Clone)]
pub struct HubConfig {
    /// Keep-alive interval of every stream.
    pub keepalive: Duration,
    /// Events read from the store per page while a subscriber catches up.
    pub page_size: usize,
    /// Streams end after this long (the client reconnects and resumes);
    /// `None`: they last as long as the client stays.
    pub max_stream_age: Option<Duration>,
}

impl Default for HubConfig {
    fn default() -> Self {
        HubConfig {
            keepalive: Duration::from_secs(15),
            page_size: 256,
            max_stream_age: None,
        }
    }
}

/// An answer to a poll or long poll.
#[derive(Debug, Clone)]
pub struct PollAnswer {
    pub events: Vec<Arc<Event>>,
    /// Some history was missed (unknown or too old a cursor).
    pub gap: bool,
    /// The cursor to poll with next.
    pub next: Cursor,
}

/// A cheap, clonable handle on the engine.
#[derive(Clone)]
pub struct Hub {
    inner: Arc<Inner>,
}

struct Inner {
    store: Arc<dyn Store>,
    heartbeat: Heartbeat,
    config: HubConfig,
    presence: Arc<crate::presence::Presence>,
}

impl std::fmt::Debug for Hub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hub")
            .field("store", &self.inner.store.describe())
            .finish_non_exhaustive()
    }
}

impl Hub {
    /// Builds a hub over `store`. Must run inside a tokio runtime: it starts
    /// the keep-alive clock, which stops when `heartbeat`'s token is cancelled.
    pub fn new(store: Arc<dyn Store>, config: HubConfig, heartbeat: Heartbeat) -> Hub {
        Hub {
            inner: Arc::new(Inner {
                store: Arc::new(Metered::new(store)),
                heartbeat,
                config,
                presence: Arc::default(),
            }),
        }
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.inner.store
    }

    /// Open subscriptions of `topic` on this node.
    pub fn subscribers(&self, topic: &Topic) -> usize {
        self.inner.presence.count(topic)
    }

    pub fn heartbeat(&self) -> &Heartbeat {
        &self.inner.heartbeat
    }

    /// Stores a batch, all or nothing, and hands it to subscribers.
    pub async fn publish(&self, batch: Vec<NewEvent>) -> Result<Vec<Appended>, StoreError> {
        let out = self.inner.store.append(batch).await?;
        let fresh = out.iter().filter(|a| !a.replayed).count();
        metrics::counter!("herald_events_published_total").increment(fresh as u64);
        Ok(out)
    }

    /// Opens a streaming subscription. Topics that start at `now` are pinned
    /// to their current head before this returns (so a client that sees the
    /// response open misses nothing published after); history is read on
    /// the first [`Subscription::next`].
    pub async fn subscribe(
        &self,
        topics: Vec<Topic>,
        cursor: &CursorInput,
    ) -> Result<Subscription, StoreError> {
        let present = self.inner.presence.enter(&topics);
        let mut sub = Subscription::new(
            Arc::clone(&self.inner.store),
            topics,
            cursor,
            self.inner.heartbeat.beats(),
            self.inner.config.max_stream_age,
            self.inner.config.page_size,
        );
        sub.count_in(present);
        sub.pin_heads().await?;
        Ok(sub)
    }

    /// Short poll: what is after the cursor now, at most `limit` events in
    /// all, topics in the order given.
    pub async fn poll(
        &self,
        topics: &[Topic],
        cursor: &CursorInput,
        limit: usize,
    ) -> Result<PollAnswer, StoreError> {
        let starts: Vec<(Topic, Start)> = topics
            .iter()
            .map(|t| (t.clone(), cursor.start_for(t)))
            .collect();
        self.poll_at(&starts, limit).await
    }

    /// Answers like a short poll from positions already resolved (a long
    /// poll that turned `now` into the head reads from there each time).
    pub async fn poll_at(
        &self,
        starts: &[(Topic, Start)],
        limit: usize,
    ) -> Result<PollAnswer, StoreError> {
        let store = &self.inner.store;
        let mut events = Vec::new();
        let mut gap = false;
        let mut positions = Vec::with_capacity(starts.len());
        for (topic, start) in starts {
            let room = limit.saturating_sub(events.len());
            let (from, forced_gap) = match start {
                Start::Head => {
                    positions.push((topic.clone(), store.head(topic).await?));
                    continue;
                }
                Start::Oldest => (ReadFrom::Oldest, false),
                Start::After(id) => (ReadFrom::After(*id), false),
                Start::Unknown(_) => (ReadFrom::Oldest, true),
            };
            let page = store.read(topic, from, room).await?;
            gap |= page.gap || forced_gap;
            positions.push((topic.clone(), page.next));
            events.extend(page.events);
        }
        Ok(PollAnswer {
            events,
            gap,
            next: Cursor { positions },
        })
    }
}
