//! A store wrapper that records how long each store call takes.

use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;

use super::{Appended, NewEvent, Page, ReadFrom, Store};
use crate::error::StoreError;
use crate::event::EventId;
use crate::fanout::Watch;
use crate::name::Topic;

/// Wraps any store; `herald_store_seconds{op}` gets one sample per call.
pub struct Metered(pub Arc<dyn Store>);

fn record(op: &'static str, started: Instant) {
    metrics::histogram!("herald_store_seconds", "op" => op).record(started.elapsed().as_secs_f64());
}

#[async_trait]
impl Store for Metered {
    async fn append(&self, batch: Vec<NewEvent>) -> Result<Vec<Appended>, StoreError> {
        let started = Instant::now();
        let out = self.0.append(batch).await;
        record("append", started);
        out
    }

    async fn read(&self, topic: &Topic, from: ReadFrom, limit: usize) -> Result<Page, StoreError> {
        let started = Instant::now();
        let out = self.0.read(topic, from, limit).await;
        record("read", started);
        out
    }

    async fn head(&self, topic: &Topic) -> Result<EventId, StoreError> {
        let started = Instant::now();
        let out = self.0.head(topic).await;
        record("head", started);
        out
    }

    fn watch(&self, topic: &Topic) -> Watch {
        self.0.watch(topic)
    }

    async fn health(&self) -> Result<(), StoreError> {
        self.0.health().await
    }

    fn describe(&self) -> String {
        self.0.describe()
    }
}
