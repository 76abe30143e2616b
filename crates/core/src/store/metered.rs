//! A store wrapper that records how long each store call takes.

use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use metrics::Histogram;

use super::{Appended, Footprint, NewEvent, Page, ReadFrom, Store, TopicInfo};
use crate::error::StoreError;
use crate::event::EventId;
use crate::fanout::Watch;
use crate::name::Topic;

/// Wraps any store; `herald_store_seconds{op}` gets one sample per call.
/// The histogram handles are looked up once, not on every call: reads run
/// once per subscriber catching up and once per poll.
pub struct Metered {
    inner: Arc<dyn Store>,
    append: Histogram,
    read: Histogram,
    head: Histogram,
}

impl Metered {
    pub fn new(inner: Arc<dyn Store>) -> Metered {
        let h = |op: &'static str| metrics::histogram!("herald_store_seconds", "op" => op);
        Metered {
            inner,
            append: h("append"),
            read: h("read"),
            head: h("head"),
        }
    }
}

fn record(histogram: &Histogram, started: Instant) {
    histogram.record(started.elapsed().as_secs_f64());
}

#[async_trait]
impl Store for Metered {
    async fn append(&self, batch: Vec<NewEvent>) -> Result<Vec<Appended>, StoreError> {
        let started = Instant::now();
        let out = self.inner.append(batch).await;
        record(&self.append, started);
        out
    }

    async fn read(&self, topic: &Topic, from: ReadFrom, limit: usize) -> Result<Page, StoreError> {
        let started = Instant::now();
        let out = self.inner.read(topic, from, limit).await;
        record(&self.read, started);
        out
    }

    async fn head(&self, topic: &Topic) -> Result<EventId, StoreError> {
        let started = Instant::now();
        let out = self.inner.head(topic).await;
        record(&self.head, started);
        out
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
