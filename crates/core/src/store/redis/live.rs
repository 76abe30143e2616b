//! The node's live feed from Redis: one Pub/Sub connection for the whole
//! node, carrying every stored event (`herald:events`) and every queue
//! signal (`herald:signals`).
//!
//! Pub/Sub does not keep messages for a connection that is gone, so after a
//! reconnect the node re-reads, from the streams, every topic it serves
//! after the last event it handed out; subscribers drop the copies they
//! already have by id.

use std::collections::HashMap;
use std::sync::{Arc, Weak};
use std::time::Duration;

use futures_util::StreamExt;

use super::{RedisStore, parse_id};
use crate::error::StoreError;
use crate::event::{Event, EventId};
use crate::name::{EventType, Topic};
use crate::store::{ReadFrom, Store};

pub use crate::task::QueueSignal;

const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Opens the node's Pub/Sub connection and subscribes to both channels.
pub async fn open(client: &redis::Client) -> redis::RedisResult<redis::aio::PubSub> {
    let mut pubsub = client.get_async_pubsub().await?;
    pubsub.subscribe("herald:events").await?;
    pubsub.subscribe("herald:signals").await?;
    Ok(pubsub)
}

/// Runs the feed from `first` (already subscribed, so nothing stored after
/// the store was opened is missed), reconnecting whenever it is lost.
pub async fn run(store: Weak<RedisStore>, first: redis::aio::PubSub) {
    let mut backoff = Duration::from_millis(100);
    let mut connected_before = false;
    let mut first = Some(first);
    loop {
        let Some(client) = store.upgrade().map(|s| s.client.clone()) else {
            return;
        };
        let pubsub = match first.take() {
            Some(p) => Ok(p),
            None => open(&client).await,
        };
        match pubsub {
            Ok(pubsub) => {
                if connected_before {
                    tracing::info!("redis live feed is back; catching up");
                    let Some(s) = store.upgrade() else { return };
                    if let Err(e) = resync(&s).await {
                        // Redis may answer before it can serve reads (it
                        // says LOADING while it reads its data back): try
                        // the whole catch-up again after a pause, from what
                        // was handed out so far.
                        tracing::warn!(error = %e, "catching up after a redis outage failed; retrying");
                        drop(pubsub);
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(MAX_BACKOFF);
                        continue;
                    }
                }
                connected_before = true;
                backoff = Duration::from_millis(100);
                let mut messages = pubsub.into_on_message();
                while let Some(msg) = messages.next().await {
                    let Some(s) = store.upgrade() else { return };
                    match msg.get_channel_name() {
                        "herald:events" => on_event(&s, msg.get_payload_bytes()),
                        "herald:signals" => on_signal(&s, msg.get_payload_bytes()),
                        _ => {}
                    }
                }
                tracing::warn!("redis live feed lost; reconnecting");
            }
            Err(e) => tracing::warn!(error = %e, "redis live feed unavailable; retrying"),
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

fn on_event(store: &RedisStore, payload: &[u8]) {
    let Ok((topic, id, kind, data)) =
        serde_json::from_slice::<(String, String, String, String)>(payload)
    else {
        tracing::warn!("a malformed message on herald:events was ignored");
        return;
    };
    let (Ok(topic), Ok(id)) = (Topic::new(&topic), parse_id(&id)) else {
        return;
    };
    if !store.fanout.is_watched(&topic) {
        return;
    }
    let kind = EventType::new(&kind).unwrap_or_else(|_| EventType::message());
    store.saw(&topic, id);
    store
        .fanout
        .send(&[Arc::new(Event::new(id, topic, kind, data))]);
}

fn on_signal(store: &RedisStore, payload: &[u8]) {
    let text = String::from_utf8_lossy(payload);
    let Some((kind, queue)) = text.split_once('|') else {
        return;
    };
    // No receiver only means no task engine listens yet.
    let _ = store.signals.send(QueueSignal {
        queue: queue.to_owned(),
        work: kind == "work",
    });
}

/// A read of `topic` during a catch-up: an outage (`Unavailable`) fails the
/// catch-up, to be tried again; anything else — a key that is not what
/// herald wrote, say — will not heal by waiting, so that topic is skipped
/// (logged) and the others carry on.
fn skip_broken<T>(topic: &Topic, read: Result<T, StoreError>) -> Result<Option<T>, StoreError> {
    match read {
        Ok(v) => Ok(Some(v)),
        Err(e @ StoreError::Unavailable(_)) => Err(e),
        Err(e) => {
            tracing::warn!(error = %e, topic = %topic, "catching up after a redis outage skipped a topic");
            Ok(None)
        }
    }
}

/// Hands out, for every topic this node serves, what was stored while the
/// feed was down: after the newest id the node had read, pinned or
/// delivered for it. A watched topic it has read nothing of has no
/// subscriber past its first read (that read catches up by itself), only
/// waiters that look at the store when woken: they get its newest event.
async fn resync(store: &RedisStore) -> Result<(), StoreError> {
    let watched = store.fanout.watched();
    let known: HashMap<Topic, EventId> = {
        let mut seen = store.seen.lock().unwrap_or_else(|e| e.into_inner());
        seen.retain(|t, _| watched.contains(t));
        seen.clone()
    };
    for topic in watched.iter().filter(|t| !known.contains_key(*t)) {
        if let Some(event) = skip_broken(topic, store.newest(topic).await)?.flatten() {
            store.saw(topic, event.id);
            store.fanout.send(&[Arc::new(event)]);
        }
    }
    for (topic, after) in known {
        let mut from = ReadFrom::After(after);
        loop {
            let Some(page) = skip_broken(&topic, store.read(&topic, from, 500).await)? else {
                break;
            };
            let Some(last) = page.events.last().map(|e| e.id) else {
                break;
            };
            // Noted as handed out, so a retry after a failure further on
            // starts here (and subscribers drop what they already have).
            store.saw(&topic, last);
            store.fanout.send(&page.events);
            from = ReadFrom::After(last);
        }
    }
    // Claims waiting on this node look again.
    let _ = store.signals.send(QueueSignal {
        queue: String::new(),
        work: true,
    });
    Ok(())
}
