//! The behaviour every [`Store`] must show, as one suite that each backend
//! runs against itself (memory here; the others in their own crates with
//! the `contract-tests` feature).

use std::sync::Arc;

use futures_util::StreamExt;

use super::{NewEvent, ReadFrom, Store};
use crate::event::EventId;
use crate::name::{EventType, Topic};

fn topic(name: &str) -> Topic {
    Topic::new(name).unwrap_or_else(|e| panic!("bad test topic {name}: {e}"))
}

fn new(t: &str, data: &str, key: Option<&str>) -> NewEvent {
    NewEvent {
        topic: topic(t),
        kind: EventType::message(),
        data: data.to_owned(),
        idempotency_key: key.map(str::to_owned),
    }
}

async fn append(store: &dyn Store, batch: Vec<NewEvent>) -> Vec<EventId> {
    match store.append(batch).await {
        Ok(out) => out.iter().map(|a| a.event.id).collect(),
        Err(e) => panic!("append failed: {e}"),
    }
}

/// Runs every case against stores made by `make`, which must return an
/// empty store keeping at most `max_events` (= 5) events per topic and no
/// age limit.
pub async fn run<F, Fut>(make: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Arc<dyn Store>>,
{
    ids_increase_and_reads_resume(&*make().await).await;
    gaps_are_exact(&*make().await).await;
    idempotency_is_per_topic(&*make().await).await;
    watchers_see_appends_in_order(&*make().await).await;
    topics_are_listed_by_name_in_pages(&*make().await).await;
}

async fn topics_are_listed_by_name_in_pages(store: &dyn Store) {
    assert!(
        store
            .topics("", None, 10)
            .await
            .unwrap_or_else(|e| panic!("{e}"))
            .is_empty()
    );
    let names = ["b.2", "a", "b.1", "c", "b.10", "ba"];
    for n in names {
        append(store, vec![new(n, "x", None)]).await;
    }
    // Seven events in "a": five retained (max_events = 5).
    let ids = append(
        store,
        (0..6).map(|i| new("a", &i.to_string(), None)).collect(),
    )
    .await;
    let all = store
        .topics("", None, 100)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let listed: Vec<&str> = all.iter().map(|t| t.topic.as_str()).collect();
    assert_eq!(listed, ["a", "b.1", "b.10", "b.2", "ba", "c"]);
    let a = &all[0];
    assert_eq!((a.events, a.last), (5, ids[5]));
    assert_eq!(a.first, Some(ids[1]), "the oldest retained event");
    assert_eq!(all[1].events, 1);
    assert_eq!(all[1].first, Some(all[1].last));

    let page = |prefix: &'static str, after: Option<&'static str>, limit| async move {
        let out = store
            .topics(prefix, after, limit)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        out.into_iter()
            .map(|t| t.topic.as_str().to_owned())
            .collect::<Vec<_>>()
    };
    assert_eq!(page("", None, 2).await, ["a", "b.1"]);
    assert_eq!(page("", Some("b.1"), 2).await, ["b.10", "b.2"]);
    assert_eq!(page("", Some("b.2"), 10).await, ["ba", "c"]);
    assert_eq!(page("", Some("c"), 10).await, Vec::<String>::new());
    assert_eq!(page("b.", None, 10).await, ["b.1", "b.10", "b.2"]);
    assert_eq!(page("b.", Some("b.10"), 10).await, ["b.2"]);
    assert_eq!(page("b.", Some("a"), 1).await, ["b.1"]);
    assert_eq!(page("b", Some("b.2"), 10).await, ["ba"]);
    assert_eq!(page("z", None, 10).await, Vec::<String>::new());
}

async fn ids_increase_and_reads_resume(store: &dyn Store) {
    let t = topic("a");
    assert_eq!(store.head(&t).await.ok(), Some(EventId::START));
    let ids = append(
        store,
        vec![
            new("a", "1", None),
            new("b", "x", None),
            new("a", "2", None),
        ],
    )
    .await;
    assert!(ids[0] < ids[2], "ids increase within a topic");
    let all = store
        .read(&t, ReadFrom::Oldest, 10)
        .await
        .ok()
        .unwrap_or_default();
    let data: Vec<_> = all.events.iter().map(|e| e.data.as_str()).collect();
    assert_eq!(data, ["1", "2"]);
    assert!(!all.gap);
    assert_eq!(all.next, ids[2]);
    let rest = store
        .read(&t, ReadFrom::After(ids[0]), 10)
        .await
        .ok()
        .unwrap_or_default();
    assert_eq!(rest.events.len(), 1);
    assert_eq!(rest.events[0].id, ids[2]);
    let none = store
        .read(&t, ReadFrom::After(ids[2]), 10)
        .await
        .ok()
        .unwrap_or_default();
    assert!(none.events.is_empty() && !none.gap);
    assert_eq!(none.next, ids[2]);
    assert_eq!(store.head(&t).await.ok(), Some(ids[2]));
    let limited = store
        .read(&t, ReadFrom::Oldest, 1)
        .await
        .ok()
        .unwrap_or_default();
    assert_eq!(limited.events.len(), 1);
    assert_eq!(limited.next, ids[0]);
}

async fn gaps_are_exact(store: &dyn Store) {
    let t = topic("g");
    let fresh = store
        .read(&t, ReadFrom::After(EventId::START), 10)
        .await
        .ok()
        .unwrap_or_default();
    assert!(!fresh.gap, "the start of an untouched topic is no gap");
    let unknown = store
        .read(&t, ReadFrom::After(EventId { ms: 9, seq: 9 }), 10)
        .await
        .ok()
        .unwrap_or_default();
    assert!(unknown.gap, "an id never handed out is a gap");
    let mut ids = Vec::new();
    for i in 0..8 {
        ids.extend(append(store, vec![new("g", &i.to_string(), None)]).await);
    }
    // Five kept: ids[3..8]; ids[2] was the last dropped.
    let from_start = store
        .read(&t, ReadFrom::After(EventId::START), 10)
        .await
        .ok()
        .unwrap_or_default();
    assert!(from_start.gap, "history was dropped since the start");
    assert_eq!(from_start.events.first().map(|e| e.id), Some(ids[3]));
    let exact = store
        .read(&t, ReadFrom::After(ids[2]), 10)
        .await
        .ok()
        .unwrap_or_default();
    assert!(!exact.gap, "the newest dropped id still resumes exactly");
    assert_eq!(exact.events.len(), 5);
    let old = store
        .read(&t, ReadFrom::After(ids[1]), 10)
        .await
        .ok()
        .unwrap_or_default();
    assert!(old.gap, "older than history is a gap");
    assert_eq!(old.events.len(), 5);
    let bogus = EventId {
        ms: ids[4].ms,
        seq: ids[4].seq + 1000,
    };
    let between = store
        .read(&t, ReadFrom::After(bogus), 10)
        .await
        .ok()
        .unwrap_or_default();
    assert!(
        between.gap,
        "an id inside the range that was never given out is a gap"
    );
}

async fn idempotency_is_per_topic(store: &dyn Store) {
    let first = store
        .append(vec![new("i", "one", Some("k"))])
        .await
        .ok()
        .unwrap_or_default();
    let again = store
        .append(vec![new("i", "two", Some("k"))])
        .await
        .ok()
        .unwrap_or_default();
    assert!(!first[0].replayed);
    assert!(again[0].replayed);
    assert_eq!(first[0].event.id, again[0].event.id);
    assert_eq!(again[0].event.data, "one");
    let other = store
        .append(vec![new("j", "three", Some("k"))])
        .await
        .ok()
        .unwrap_or_default();
    assert!(!other[0].replayed, "keys are per topic");
    let page = store
        .read(&topic("i"), ReadFrom::Oldest, 10)
        .await
        .ok()
        .unwrap_or_default();
    assert_eq!(page.events.len(), 1, "a replay stores nothing");
}

async fn watchers_see_appends_in_order(store: &dyn Store) {
    let t = topic("w");
    let mut watch = store.watch(&t);
    let ids = append(
        store,
        vec![
            new("w", "1", None),
            new("x", "-", None),
            new("w", "2", None),
        ],
    )
    .await;
    let a = watch.next().await.and_then(Result::ok).map(|e| e.id);
    let b = watch.next().await.and_then(Result::ok).map(|e| e.id);
    assert_eq!((a, b), (Some(ids[0]), Some(ids[2])));
}
