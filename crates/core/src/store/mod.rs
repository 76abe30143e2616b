//! The storage trait every backend implements, and the values it trades in.
//!
//! The engine asks a store two questions: "which events of this topic come
//! after this cursor?" ([`Store::read`]) and "tell me of the next ones"
//! ([`Store::watch`]). Everything else — poll, long poll, streams — is built
//! from those two and [`Store::append`].

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use crate::error::StoreError;
use crate::event::{Event, EventId};
use crate::fanout::Watch;
use crate::name::{EventType, Topic};

pub mod memory;
pub mod metered;
pub mod redis;
pub mod shared;
pub mod sqlite;

#[cfg(any(test, feature = "contract-tests"))]
pub mod contract;

/// An event to be stored; the store gives it an id and a time.
#[derive(Debug, Clone)]
pub struct NewEvent {
    pub topic: Topic,
    pub kind: EventType,
    pub data: String,
    /// A retried publish with the same key (per topic, while the first event
    /// is retained) stores nothing and returns the first event.
    pub idempotency_key: Option<String>,
}

/// The outcome of one [`NewEvent`].
#[derive(Debug, Clone)]
pub struct Appended {
    pub event: Arc<Event>,
    /// The idempotency key was known: this is the event stored the first time.
    pub replayed: bool,
}

/// Where a read starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadFrom {
    /// The oldest retained event.
    Oldest,
    /// The first event after this id.
    After(EventId),
}

/// An answer to [`Store::read`].
#[derive(Debug, Clone, Default)]
pub struct Page {
    /// At most `limit` events, in id order.
    pub events: Vec<Arc<Event>>,
    /// The cursor was unknown or older than the retained history: `events`
    /// start at the oldest retained event instead.
    pub gap: bool,
    /// The position to read on from: the last event's id, or — when no event
    /// came back — the position just before the first one that would have.
    pub next: EventId,
}

/// How much history each topic keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// Newest events kept per topic.
    pub max_events: usize,
    /// Events older than this are dropped; `None` keeps them by count only.
    pub max_age: Option<Duration>,
}

impl Default for Retention {
    fn default() -> Self {
        Retention {
            max_events: 1000,
            max_age: Some(Duration::from_secs(24 * 3600)),
        }
    }
}

/// What [`Store::topics`] tells of one topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicInfo {
    pub topic: Topic,
    /// Events retained.
    pub events: u64,
    /// The oldest retained event's id; `None` when none is retained.
    pub first: Option<EventId>,
    /// The newest id ever given out (it may have been dropped since).
    pub last: EventId,
}

/// How much a store holds, for `/metrics`. Cheap to ask: a store answers
/// from its topic bookkeeping and file sizes, never by reading events.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Footprint {
    /// Topics the store keeps bookkeeping for.
    pub topics: u64,
    /// Bytes the store takes where it keeps events (the database file and
    /// its write-ahead log; Redis's `used_memory`); `None` when the store
    /// cannot say honestly (memory).
    pub bytes: Option<u64>,
}

/// A place where events are kept: memory, an embedded database, Redis.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Stores a batch, all or nothing, in order; events with a known
    /// idempotency key come back as `replayed` and are not stored again.
    /// Returns only once the events are as durable as the store can make
    /// them, after handing the new ones to [`Store::watch`]ers in id order.
    async fn append(&self, batch: Vec<NewEvent>) -> Result<Vec<Appended>, StoreError>;

    /// Up to `limit` events of `topic` from `from`. A cursor that is not a
    /// retained id (nor the id just before the oldest retained one, nor
    /// [`EventId::START`] while nothing was ever dropped) gives a gap.
    async fn read(&self, topic: &Topic, from: ReadFrom, limit: usize) -> Result<Page, StoreError>;

    /// The newest id ever given out in `topic` ([`EventId::START`] if none).
    async fn head(&self, topic: &Topic) -> Result<EventId, StoreError>;

    /// Receives the events of `topic` stored from now on, from any writer.
    fn watch(&self, topic: &Topic) -> Watch;

    /// Up to `limit` topics whose names start with `prefix` and sort after
    /// `after`, in name (byte) order. Reads each topic's bookkeeping, never
    /// its events one by one.
    async fn topics(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<TopicInfo>, StoreError>;

    /// Whether the store answers and can write: [`StoreError::Full`] when
    /// its last write found no room, another error when it cannot be
    /// reached.
    async fn health(&self) -> Result<(), StoreError>;

    /// How many topics it holds and how large it is.
    async fn footprint(&self) -> Result<Footprint, StoreError>;

    /// Where the store keeps its data, for the start-up log.
    fn describe(&self) -> String;
}
