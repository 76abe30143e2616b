//! The Redis task store's own cases: the claim script agrees with the
//! state machine, and nodes racing on one task are decided once.

use std::sync::Arc;

use super::*;
use crate::fanout::Fanout;
use crate::store::redis::test_server;
use crate::store::{ReadFrom, Retention, Store};
use crate::task::{Backoff, Payload};

async fn node(url: &str) -> Arc<RedisStore> {
    RedisStore::connect(url, Retention::default(), Fanout::new(64))
        .await
        .unwrap_or_else(|e| panic!("{e}"))
}

/// Two nodes on one empty Redis.
async fn two_nodes() -> Option<(test_server::RedisServer, Arc<RedisStore>, Arc<RedisStore>)> {
    let server = test_server::start()?;
    let (a, b) = (node(&server.url).await, node(&server.url).await);
    Some((server, a, b))
}

fn queue(name: &str) -> Topic {
    Topic::new(name).unwrap_or_else(|e| panic!("{e}"))
}

async fn enqueue(store: &RedisStore, q: &str, payload: Payload, max_attempts: u32) -> Task {
    let new = NewTask {
        id: TaskId::new(),
        queue: queue(q),
        payload,
        max_attempts,
        idempotency_key: None,
        backoff: Backoff::NONE,
    };
    store.enqueue(new).await.unwrap_or_else(|e| panic!("{e}")).0
}

async fn stored(store: &RedisStore, id: TaskId) -> Task {
    store.load(id).await.ok().flatten().map(|(_, t)| t).unwrap()
}

fn token(task: &Task) -> Option<String> {
    task.lease.as_ref().map(|l| l.token.clone())
}

fn complete(token: Option<String>) -> Op {
    Op::Complete {
        token,
        result: Payload::Text("r".into()),
    }
}

async fn kinds(store: &RedisStore, id: TaskId) -> Vec<String> {
    let page = store.read(&id.topic(), ReadFrom::Oldest, 100).await;
    let page = page.unwrap_or_else(|e| panic!("{e}"));
    page.events
        .iter()
        .map(|e| e.kind.as_str().to_owned())
        .collect()
}

/// `claim.lua` makes the task `machine::claim` would, field for field, for
/// fresh tasks, tasks queued again with an old lease and an error, and
/// payloads that a JSON round trip through Lua could spoil.
#[tokio::test]
async fn the_claim_script_agrees_with_the_state_machine() {
    let Some((_server, store, _)) = two_nodes().await else {
        return;
    };
    let payloads = [
        Payload::Text("plain".into()),
        Payload::Json(r#"{"n":0.1000000000000000055511151231257827,"big":12345678901234567890,"a":[],"o":{}}"#.into()),
        Payload::Text("quote \" slash / back \\ nul \u{0} é \u{2028} 😀 ,\"seq\":0,".into()),
    ];
    for (i, payload) in payloads.into_iter().enumerate() {
        let q = format!("agree{i}");
        enqueue(&store, &q, payload, 3).await;
        for round in 0..2 {
            let before = store.load(stored_head(&store, &q).await).await;
            let (_, before) = before.ok().flatten().unwrap();
            let secs = 0.1 + 1.0 / 3.0;
            let claimed = store.claim(&queue(&q), secs).await;
            let claimed = claimed.unwrap_or_else(|e| panic!("{e}")).unwrap();
            let now = claimed.started_ms.unwrap();
            let mut expected = machine::claim(&before, now, secs);
            expected.lease.as_mut().unwrap().token = token(&claimed).unwrap();
            assert_eq!(claimed, expected, "case {i}, round {round}");
            assert_eq!(stored(&store, claimed.id).await, expected, "as stored");
            if round == 0 {
                let op = Op::Fail {
                    token: token(&claimed),
                    error: "again".into(),
                    retry: true,
                };
                let u = store.update(claimed.id, op, None).await.unwrap();
                assert_eq!(u.task.status, Status::Queued);
            }
        }
    }
}

async fn stored_head(store: &RedisStore, q: &str) -> TaskId {
    let mut conn = store.conn();
    let head: Vec<String> = conn
        .zrange(format!("herald:queue:{q}"), 0, 0)
        .await
        .unwrap();
    head[0].parse().unwrap()
}

/// Many claims on two nodes at once: every task is handed out exactly once.
#[tokio::test]
async fn claims_racing_on_two_nodes_each_get_their_own_task() {
    let Some((_server, a, b)) = two_nodes().await else {
        return;
    };
    let n = 20;
    for i in 0..n {
        enqueue(&a, "race", Payload::Text(i.to_string()), 1).await;
    }
    let claims = (0..n + 4).map(|i| {
        let store = if i % 2 == 0 { a.clone() } else { b.clone() };
        async move { store.claim(&queue("race"), 30.0).await.unwrap() }
    });
    let got: Vec<Task> = futures_util::future::join_all(claims)
        .await
        .into_iter()
        .flatten()
        .collect();
    let mut ids: Vec<TaskId> = got.iter().map(|t| t.id).collect();
    ids.sort();
    ids.dedup();
    assert_eq!((got.len(), ids.len()), (n, n), "each task once");
    let counts = a.counts().await.unwrap();
    assert!(counts.contains(&("race".into(), Status::Running, n as u64)));
}

/// A worker's complete (sent to the node it claimed from) and its fail
/// (sent to another node) race: one of them is applied, the other is
/// refused, and the task emits one final event.
#[tokio::test]
async fn a_change_racing_on_two_nodes_is_decided_once() {
    let Some((_server, a, b)) = two_nodes().await else {
        return;
    };
    for round in 0..10 {
        let t = enqueue(&a, "once", Payload::Text(round.to_string()), 1).await;
        let claimed = a.claim(&queue("once"), 30.0).await.unwrap().unwrap();
        assert_eq!(claimed.id, t.id);
        let fail = Op::Fail {
            token: token(&claimed),
            error: "no".into(),
            retry: false,
        };
        let (done, failed) = tokio::join!(
            a.update(t.id, complete(token(&claimed)), None),
            b.update(t.id, fail, None)
        );
        let (done, failed) = (done.unwrap(), failed.unwrap());
        assert_eq!(
            done.refused.is_none() as u8 + failed.refused.is_none() as u8,
            1,
            "exactly one wins: {done:?} {failed:?}"
        );
        let end = stored(&a, t.id).await;
        let winner = if done.refused.is_none() {
            &done
        } else {
            &failed
        };
        assert_eq!(end, winner.task);
        let finals = kinds(&a, t.id).await;
        assert_eq!(finals.len(), 1, "{finals:?}");
    }
}

/// The node a worker claimed from holds a hint that another node's change
/// made stale: its next change is decided on the task as it is now — here
/// accepted, although the hint alone would refuse it (its lease ran out
/// there, but the other node's progress report extended it).
#[tokio::test]
async fn a_stale_hint_is_never_decided_on() {
    let Some((_server, a, b)) = two_nodes().await else {
        return;
    };
    let t = enqueue(&a, "stale", Payload::Text("x".into()), 1).await;
    let claimed = a.claim(&queue("stale"), 1.0).await.unwrap().unwrap();
    let progress = Op::Progress {
        token: token(&claimed),
        progress: Some(0.5),
        message: None,
    };
    let started = claimed.started_ms.unwrap();
    wait_until(started + 500).await;
    let u = b.update(t.id, progress, None).await.unwrap();
    assert!(u.refused.is_none(), "{u:?}");
    // Past the first deadline (which A's hint still holds), before the
    // extended one.
    wait_until(claimed.lease.as_ref().unwrap().expires_ms + 100).await;
    let u = a
        .update(t.id, complete(token(&claimed)), None)
        .await
        .unwrap();
    assert!(u.refused.is_none(), "{u:?}");
    assert_eq!(u.task.status, Status::Succeeded);
    assert_eq!(kinds(&a, t.id).await, ["progress", "done"]);
}

/// A claim sent again after its answer was lost gets the task the first
/// sending claimed, and claims nothing more.
#[tokio::test]
async fn a_claim_sent_again_is_answered_with_the_same_task() {
    let Some((_server, a, _)) = two_nodes().await else {
        return;
    };
    for i in 0..2 {
        enqueue(&a, "again", Payload::Text(i.to_string()), 1).await;
    }
    let mark = Mark::internal();
    let now = now_ms();
    let lease = machine::lease(now, 30.0);
    let first = a.claim_as(&queue("again"), lease.clone(), now, &mark).await;
    let again = a.claim_as(&queue("again"), lease, now, &mark).await;
    let (first, again) = (first.unwrap().unwrap(), again.unwrap().unwrap());
    assert_eq!(first, again);
    let counts = a.counts().await.unwrap();
    assert!(counts.contains(&("again".into(), Status::Running, 1)));
    assert!(counts.contains(&("again".into(), Status::Queued, 1)));
}

async fn wait_until(at: u64) {
    while now_ms() < at {
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
}
