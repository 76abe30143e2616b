//! The behaviour every task store must show, as one suite each backend runs.

use std::sync::Arc;

use super::{Backoff, Cancel, NewTask, Op, Payload, Status, Task, TaskError, TaskId, TaskStore};
use crate::event::now_ms;
use crate::name::Topic;
use crate::store::{ReadFrom, Store};

/// A store of events and tasks together.
pub trait Both: Store + TaskStore {}
impl<T: Store + TaskStore> Both for T {}

fn new(queue: &str, body: &str, key: Option<&str>) -> NewTask {
    NewTask {
        id: TaskId::new(),
        queue: Topic::new(queue).unwrap_or_else(|e| panic!("{e}")),
        payload: Payload::Text(body.into()),
        max_attempts: 2,
        idempotency_key: key.map(str::to_owned),
        backoff: Backoff::NONE,
    }
}

/// Applies `op`; `Ok` when accepted, the refusal otherwise.
async fn update(store: &dyn Both, id: TaskId, op: Op) -> Result<(Task, Option<Cancel>), TaskError> {
    let u = store.update(id, op, None).await?;
    match u.refused {
        Some(e) => Err(e),
        None => Ok((u.task, u.cancel)),
    }
}

fn token(t: &Task) -> Option<String> {
    t.lease.as_ref().map(|l| l.token.clone())
}

async fn kinds(store: &dyn Both, task: &Task) -> Vec<String> {
    let page = store.read(&task.id.topic(), ReadFrom::Oldest, 100).await;
    page.map(|p| {
        p.events
            .iter()
            .map(|e| e.kind.as_str().to_owned())
            .collect()
    })
    .unwrap_or_default()
}

/// Runs every case on stores made by `make` (each call a fresh, empty store).
pub async fn run<F, Fut>(make: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Arc<dyn Both>>,
{
    fifo_positions_and_idempotency(&*make().await).await;
    lifecycle_emits_events(&*make().await).await;
    leases_expire_and_retries_run_out(&*make().await).await;
    cancellation(&*make().await).await;
    queues_are_listed_oldest_first(&*make().await).await;
    a_retry_waits_without_holding_up_the_queue(&*make().await).await;
}

/// Waits (on the wall clock, which the stores compare with) until `at` has
/// passed.
async fn until(at: u64) {
    while now_ms() < at {
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
}

async fn a_retry_waits_without_holding_up_the_queue(store: &dyn Both) {
    let q = Topic::new("bq").unwrap_or_else(|e| panic!("{e}"));
    let first = NewTask {
        id: TaskId::new(),
        max_attempts: 3,
        backoff: "200ms".parse().unwrap_or_else(|e| panic!("{e}")),
        ..new("bq", "first", None)
    };
    let enqueue = |n: NewTask| async move {
        let (t, _) = store.enqueue(n).await.unwrap_or_else(|e| panic!("{e}"));
        t
    };
    let a = enqueue(first).await;
    let claim = || async {
        store
            .claim(&q, 30.0)
            .await
            .unwrap_or_else(|e| panic!("{e}"))
    };
    let running = claim().await.unwrap_or_else(|| panic!("claim"));
    assert!(
        store.next_available(0).await.ok().flatten().is_none(),
        "none waits"
    );
    let b = enqueue(new("bq", "second", None)).await;
    let fail = Op::Fail {
        token: token(&running),
        error: "boom".into(),
        retry: true,
    };
    let (waiting, _) = update(store, a.id, fail)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let at = waiting.available_ms.unwrap_or_else(|| panic!("a wait"));
    assert_eq!(at, waiting.updated_ms + 200);
    let (stored, position) = store
        .get(a.id)
        .await
        .ok()
        .flatten()
        .unwrap_or_else(|| panic!("get"));
    assert_eq!(stored.available_ms, Some(at), "the wait is stored");
    assert_eq!(position, Some(1), "a waiting task keeps its place in line");
    let next = store
        .next_available(0)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(next, Some((at, vec!["bq".to_owned()])));
    assert!(store.next_available(at).await.ok().flatten().is_none());

    let behind = claim()
        .await
        .unwrap_or_else(|| panic!("the task behind is claimable"));
    assert_eq!(behind.id, b.id);
    if now_ms() < at {
        assert!(claim().await.is_none(), "not before its backoff has passed");
    }
    until(at).await;
    let again = claim()
        .await
        .unwrap_or_else(|| panic!("claimable once the wait is over"));
    assert_eq!(
        (again.id, again.attempts, again.available_ms),
        (a.id, 2, None)
    );
    assert!(
        store.next_available(0).await.ok().flatten().is_none(),
        "claimed: no longer waits"
    );
}

async fn queues_are_listed_oldest_first(store: &dyn Both) {
    assert_eq!(store.oldest_queued("l").await.ok(), Some(None));
    let mut ids = Vec::new();
    let mut created = Vec::new();
    for i in 0..5 {
        let (t, _) = store
            .enqueue(new("l", &i.to_string(), None))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        ids.push(t.id);
        created.push(t.created_ms);
    }
    store
        .enqueue(new("elsewhere", "x", None))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    // The first two are claimed: one is finished, one runs.
    let l = Topic::new("l").unwrap_or_else(|e| panic!("{e}"));
    let first = store
        .claim(&l, 30.0)
        .await
        .ok()
        .flatten()
        .unwrap_or_else(|| panic!("claim"));
    let complete = Op::Complete {
        token: token(&first),
        result: Payload::Text("ok".into()),
    };
    update(store, first.id, complete)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let second = store.claim(&l, 30.0).await;
    second.ok().flatten().unwrap_or_else(|| panic!("claim"));
    assert_eq!(store.oldest_queued("l").await.ok(), Some(Some(created[2])));

    let list = |status: Option<Status>, after: Option<u64>, limit: usize| async move {
        let tasks = store.list("l", status, after, limit).await;
        let tasks = tasks.unwrap_or_else(|e| panic!("{e}"));
        tasks
            .into_iter()
            .map(|t| (t.id, t.status, t.seq))
            .collect::<Vec<_>>()
    };
    let all = list(None, None, 100).await;
    let listed: Vec<TaskId> = all.iter().map(|t| t.0).collect();
    assert_eq!(listed, ids, "every task of the queue, oldest first");
    assert_eq!(all[0].1, Status::Succeeded);
    assert_eq!(all[1].1, Status::Running);
    let page = list(None, None, 2).await;
    assert_eq!(page.len(), 2);
    let rest = list(None, Some(page[1].2), 2).await;
    assert_eq!(rest.iter().map(|t| t.0).collect::<Vec<_>>(), ids[2..4]);
    let queued = list(Some(Status::Queued), None, 2).await;
    assert_eq!(queued.iter().map(|t| t.0).collect::<Vec<_>>(), ids[2..4]);
    let more = list(Some(Status::Queued), Some(queued[1].2), 2).await;
    assert_eq!(more.iter().map(|t| t.0).collect::<Vec<_>>(), ids[4..]);
    let done = list(Some(Status::Succeeded), None, 10).await;
    assert_eq!(done.iter().map(|t| t.0).collect::<Vec<_>>(), ids[..1]);
    assert!(list(Some(Status::Failed), None, 10).await.is_empty());
}

async fn fifo_positions_and_idempotency(store: &dyn Both) {
    let (a, _) = store
        .enqueue(new("q", "a", Some("k")))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let (b, _) = store
        .enqueue(new("q", "b", None))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let (again, replayed) = store
        .enqueue(new("q", "other", Some("k")))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(replayed);
    assert_eq!(again.id, a.id);
    let (_, pos_a) = store
        .get(a.id)
        .await
        .ok()
        .flatten()
        .unwrap_or_else(|| panic!("a"));
    let (_, pos_b) = store
        .get(b.id)
        .await
        .ok()
        .flatten()
        .unwrap_or_else(|| panic!("b"));
    assert_eq!((pos_a, pos_b), (Some(1), Some(2)));
    let q = Topic::new("q").unwrap_or_else(|e| panic!("{e}"));
    let first = store
        .claim(&q, 30.0)
        .await
        .ok()
        .flatten()
        .unwrap_or_else(|| panic!("claim"));
    assert_eq!(first.id, a.id, "first in, first out");
    assert_eq!(first.status, Status::Running);
    let (_, pos_b) = store
        .get(b.id)
        .await
        .ok()
        .flatten()
        .unwrap_or_else(|| panic!("b"));
    assert_eq!(pos_b, Some(1));
    let second = store
        .claim(&q, 30.0)
        .await
        .ok()
        .flatten()
        .unwrap_or_else(|| panic!("claim"));
    assert_eq!(second.id, b.id);
    assert!(store.claim(&q, 30.0).await.ok().flatten().is_none());
    let other = Topic::new("other").unwrap_or_else(|e| panic!("{e}"));
    assert!(store.claim(&other, 30.0).await.ok().flatten().is_none());
}

async fn lifecycle_emits_events(store: &dyn Both) {
    let (task, _) = store
        .enqueue(new("life", "p", None))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let q = Topic::new("life").unwrap_or_else(|e| panic!("{e}"));
    let running = store
        .claim(&q, 30.0)
        .await
        .ok()
        .flatten()
        .unwrap_or_else(|| panic!("claim"));
    let progress = Op::Progress {
        token: token(&running),
        progress: Some(0.5),
        message: Some("half".into()),
    };
    let (after, _) = update(store, task.id, progress)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(after.progress, Some(0.5));
    let complete = Op::Complete {
        token: token(&running),
        result: Payload::Json("{\"ok\":true}".into()),
    };
    let (done, _) = update(store, task.id, complete.clone())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(done.status, Status::Succeeded);
    assert_eq!(kinds(store, &task).await, ["progress", "done"]);
    let (repeat, _) = update(store, task.id, complete)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        repeat.status,
        Status::Succeeded,
        "complete is idempotent for the holder"
    );
    assert_eq!(
        kinds(store, &task).await,
        ["progress", "done"],
        "and emits nothing twice"
    );
    let stranger = Op::Complete {
        token: Some("someone-else".into()),
        result: Payload::Text("x".into()),
    };
    assert!(matches!(
        update(store, task.id, stranger).await,
        Err(TaskError::Conflict(_))
    ));
    let missing = TaskId::new();
    assert!(matches!(
        update(store, missing, Op::Cancel).await,
        Err(TaskError::NotFound)
    ));
    assert!(store.get(missing).await.ok().flatten().is_none());
}

async fn leases_expire_and_retries_run_out(store: &dyn Both) {
    let (task, _) = store
        .enqueue(new("lease", "p", None))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let q = Topic::new("lease").unwrap_or_else(|e| panic!("{e}"));
    let first = store
        .claim(&q, 0.05)
        .await
        .ok()
        .flatten()
        .unwrap_or_else(|| panic!("claim"));
    let deadline = store
        .next_expiry()
        .await
        .ok()
        .flatten()
        .unwrap_or_else(|| panic!("expiry"));
    assert_eq!(Some(deadline), first.lease.as_ref().map(|l| l.expires_ms));
    // The lease is a deadline on the wall clock: let it pass.
    while now_ms() <= deadline {
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    let expired = store.expire().await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(expired.len(), 1);
    assert_eq!(expired[0].status, Status::Queued, "requeued: attempts left");
    let late = Op::Complete {
        token: token(&first),
        result: Payload::Text("late".into()),
    };
    assert!(
        matches!(
            update(store, task.id, late).await,
            Err(TaskError::Conflict(_))
        ),
        "lost lease"
    );
    let second = store
        .claim(&q, 30.0)
        .await
        .ok()
        .flatten()
        .unwrap_or_else(|| panic!("claim"));
    assert_eq!((second.id, second.attempts), (task.id, 2));
    let fail = Op::Fail {
        token: token(&second),
        error: "boom".into(),
        retry: true,
    };
    let (failed, _) = update(store, task.id, fail)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(failed.status, Status::Failed, "no attempts left");
    assert_eq!(kinds(store, &task).await, ["error"]);
    assert!(store.next_expiry().await.ok().flatten().is_none());
}

async fn cancellation(store: &dyn Both) {
    let (queued, _) = store
        .enqueue(new("c", "1", None))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let (t, how) = update(store, queued.id, Op::Cancel)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        (t.status, how),
        (Status::Cancelled, Some(Cancel::Cancelled))
    );
    assert!(matches!(
        update(store, queued.id, Op::Cancel).await,
        Err(TaskError::Conflict(_))
    ));
    let (running, _) = store
        .enqueue(new("c", "2", None))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let q = Topic::new("c").unwrap_or_else(|e| panic!("{e}"));
    let claimed = store
        .claim(&q, 30.0)
        .await
        .ok()
        .flatten()
        .unwrap_or_else(|| panic!("claim"));
    assert_eq!(claimed.id, running.id, "a cancelled task is never claimed");
    let (t, how) = update(store, running.id, Op::Cancel)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!((t.status, how), (Status::Running, Some(Cancel::Requested)));
    let report = Op::Progress {
        token: token(&claimed),
        progress: None,
        message: None,
    };
    assert!(matches!(
        update(store, running.id, report).await,
        Err(TaskError::Conflict(_))
    ));
    let (t, _) = store
        .get(running.id)
        .await
        .ok()
        .flatten()
        .unwrap_or_else(|| panic!("get"));
    assert_eq!(t.status, Status::Cancelled);
    assert_eq!(kinds(store, &t).await, ["error"]);
    let counts = store.counts().await.unwrap_or_else(|e| panic!("{e}"));
    assert!(
        counts.contains(&("c".into(), Status::Cancelled, 2)),
        "{counts:?}"
    );
}
