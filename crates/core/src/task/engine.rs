//! The task engine: claims that wait for work, waiters told the moment a
//! task finishes, leases that run out on time — all by notification.
//!
//! - A new or requeued task wakes exactly one waiting claim of its queue
//!   (`Notify::notify_one`).
//! - Whoever waits for a task's end watches the task's topic, where the
//!   store writes `done` / `error` in the same step as the status.
//! - Queue positions only move when a task leaves the queue or comes back
//!   (enqueueing appends at the end); those moments bump a per-queue watch
//!   that streams waiting in the queue follow.
//! - One reaper sleeps until the earliest lease deadline, or until a claim
//!   sets an earlier one.
//! - A task queued again with a retry backoff wakes no claim yet: one timer
//!   sleeps until the earliest moment a waiting task becomes claimable (the
//!   store knows it), or until a task queued again may make it sooner, and
//!   then wakes one claim per task that became claimable.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::{Notify, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{Cancel, NewTask, Op, QueueSignal, Status, Task, TaskError, TaskId, TaskStore};
use crate::event::{Event, now_ms};
use crate::hub::Hub;
use crate::name::Topic;

/// The signals of one queue on this node.
#[derive(Debug)]
struct QueueSignals {
    /// One permit per task that became claimable.
    work: Notify,
    /// Bumped whenever positions in the queue may have moved.
    moved: watch::Sender<u64>,
    /// The queue's metrics, registered once: looking a labelled metric up
    /// costs a registry lookup and label allocations, on every change.
    metrics: QueueMetrics,
}

#[derive(Debug)]
struct QueueMetrics {
    /// `herald_tasks` by status, in [`Status::ALL`] order.
    tasks: [metrics::Gauge; 5],
    run_seconds: metrics::Histogram,
    claim_wait_seconds: metrics::Histogram,
}

impl QueueMetrics {
    fn new(queue: &str) -> QueueMetrics {
        QueueMetrics {
            tasks: Status::ALL.map(|status| gauge(queue, status)),
            run_seconds: metrics::histogram!("herald_task_run_seconds", "queue" => queue.to_owned()),
            claim_wait_seconds: metrics::histogram!(
                "herald_task_claim_wait_seconds", "queue" => queue.to_owned()
            ),
        }
    }

    fn tasks(&self, status: Status) -> &metrics::Gauge {
        let i = Status::ALL.iter().position(|&s| s == status).unwrap_or(0);
        &self.tasks[i]
    }

    /// Moves a task between the status gauges of this node's own count.
    fn moved(&self, from: Option<Status>, task: &Task) {
        if from == Some(task.status) {
            return;
        }
        if let Some(from) = from {
            self.tasks(from).decrement(1.0);
        }
        self.tasks(task.status).increment(1.0);
        self.finished(task);
    }

    /// Records the run time of a task that just finished.
    fn finished(&self, task: &Task) {
        if task.status.is_finished()
            && let (Some(start), Some(end)) = (task.started_ms, task.finished_ms)
        {
            self.run_seconds
                .record(end.saturating_sub(start) as f64 / 1000.0);
        }
    }
}

struct Inner {
    store: Arc<dyn TaskStore>,
    hub: Hub,
    queues: Mutex<HashMap<String, Arc<QueueSignals>>>,
    /// Wakes the reaper when a lease that may end sooner was handed out.
    reaper: Notify,
    /// The lease deadline the reaper sleeps until (ms since 1970;
    /// `u64::MAX`: none, 0: it is reading the next one), so a claim wakes
    /// it only for a lease that ends sooner — most end later.
    reaper_at: AtomicU64,
    /// Wakes the backoff timer when a task was queued again with a wait
    /// that may end sooner than the one it sleeps for.
    backoff: Notify,
    shutdown: CancellationToken,
    /// Queue signals come from the store (shared by several nodes) rather
    /// than from this node's own operations.
    remote: bool,
}

/// A cheap, clonable handle on the task engine.
#[derive(Clone)]
pub struct Tasks {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Tasks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tasks").finish_non_exhaustive()
    }
}

/// How a wait for a task ended.
#[derive(Debug, Clone)]
pub enum Waited {
    /// The task is finished.
    Finished(Task),
    /// The task finished while we waited: the `done` or `error` event the
    /// store wrote in the same step as the status. Its data is the finished
    /// task's JSON document, the very bytes a `GET` would answer, so the
    /// waiter is answered from it without reading the task again.
    Told(Arc<Event>),
    /// The timeout passed (or the server is stopping) first.
    TimedOut(Task, Option<u64>),
}

fn gauge(queue: &str, status: Status) -> metrics::Gauge {
    metrics::gauge!("herald_tasks", "queue" => queue.to_owned(), "status" => status.as_str())
}

impl Tasks {
    /// Starts the engine (and its lease reaper) over `store`; `hub` carries
    /// the task events. Must run inside a tokio runtime.
    pub async fn start(store: Arc<dyn TaskStore>, hub: Hub) -> Result<Tasks, TaskError> {
        set_gauges(&*store).await?;
        let shutdown = hub.heartbeat().shutdown().clone();
        let remote = store.signals();
        let tasks = Tasks {
            inner: Arc::new(Inner {
                store,
                hub,
                queues: Mutex::new(HashMap::new()),
                reaper: Notify::new(),
                reaper_at: AtomicU64::new(0),
                backoff: Notify::new(),
                shutdown,
                remote: remote.is_some(),
            }),
        };
        tokio::spawn(reap(tasks.clone()));
        tokio::spawn(wake_when_available(tasks.clone()));
        if let Some(rx) = remote {
            tokio::spawn(listen(tasks.clone(), rx));
        }
        Ok(tasks)
    }

    pub fn hub(&self) -> &Hub {
        &self.inner.hub
    }

    /// The store, for reads that pass no state machine (the listings).
    pub fn store(&self) -> &Arc<dyn TaskStore> {
        &self.inner.store
    }

    fn signals(&self, queue: &str) -> Arc<QueueSignals> {
        let mut queues = self.inner.queues.lock().unwrap_or_else(|e| e.into_inner());
        // Looked up by `&str` first: the owned key is made once per queue.
        if let Some(q) = queues.get(queue) {
            return Arc::clone(q);
        }
        let q = Arc::new(QueueSignals {
            work: Notify::new(),
            moved: watch::channel(0).0,
            metrics: QueueMetrics::new(queue),
        });
        queues.insert(queue.to_owned(), Arc::clone(&q));
        q
    }

    /// Tells the queue what happened to one of its tasks.
    fn signal(&self, before: Option<Status>, task: &Task) {
        let q = self.signals(&task.queue);
        if self.inner.remote {
            // Every node, this one included, hears of it from the store,
            // and reads the shared counts then.
            if before != Some(task.status) {
                q.metrics.finished(task);
            }
            return;
        }
        q.metrics.moved(before, task);
        if task.status == Status::Queued && before != Some(Status::Queued) {
            if task.waiting_until(now_ms()).is_some() {
                self.inner.backoff.notify_one();
            } else {
                q.work.notify_one();
            }
        }
        if before == Some(Status::Queued) || (task.status == Status::Queued && before.is_some()) {
            q.moved.send_modify(|n| *n += 1);
        }
    }

    /// Applies a signal from the shared store.
    fn remote_signal(&self, signal: &QueueSignal) {
        let queues: Vec<Arc<QueueSignals>> = if signal.queue.is_empty() {
            let all = self.inner.queues.lock().unwrap_or_else(|e| e.into_inner());
            all.values().cloned().collect()
        } else {
            vec![self.signals(&signal.queue)]
        };
        for q in queues {
            if signal.work && !signal.queue.is_empty() {
                q.work.notify_one();
            } else if signal.work {
                q.work.notify_waiters();
            }
            q.moved.send_modify(|n| *n += 1);
        }
        // A claim on another node may have set a sooner lease deadline, and
        // a task queued again there (signal `later`) a sooner end of a
        // backoff: each node's timers look again at the shared store, so
        // every node wakes its own claims when the task becomes claimable.
        self.inner.reaper.notify_one();
        self.inner.backoff.notify_one();
    }

    /// Enqueues a task; `true` when an earlier one with the same
    /// idempotency key is returned instead.
    pub async fn enqueue(&self, new: NewTask) -> Result<(Task, Option<u64>, bool), TaskError> {
        let (task, position, replayed) = self.inner.store.enqueue_placed(new).await?;
        if !replayed {
            self.signal(None, &task);
        }
        Ok((task, position, replayed))
    }

    /// A task and its queue position.
    pub async fn get(&self, id: TaskId) -> Result<Option<(Task, Option<u64>)>, TaskError> {
        self.inner.store.get(id).await
    }

    /// Waits until the task is finished, for at most `timeout`.
    pub async fn wait(&self, id: TaskId, timeout: Duration) -> Result<Waited, TaskError> {
        let deadline = Instant::now() + timeout;
        // Watch before reading, so a finish in between is not missed.
        let mut events = self.inner.hub.store().watch(&id.topic());
        loop {
            let (task, position) = self.get(id).await?.ok_or(TaskError::NotFound)?;
            if task.status.is_finished() {
                return Ok(Waited::Finished(task));
            }
            tokio::select! {
                event = events.next() => {
                    if let Some(Ok(event)) = event
                        && is_final(&event)
                    {
                        return Ok(Waited::Told(event));
                    }
                }
                () = tokio::time::sleep_until(deadline) => return Ok(Waited::TimedOut(task, position)),
                () = self.inner.shutdown.cancelled() => return Ok(Waited::TimedOut(task, position)),
            }
        }
    }

    /// Enqueues a task and waits for its end, for at most `timeout`. Also
    /// says which task was waited on, and `true` when it is an earlier one
    /// with the same idempotency key.
    ///
    /// Why not `enqueue` then `wait`: here the task's topic is watched
    /// before the task exists (its id is chosen by the caller), so its end
    /// cannot slip by, and neither its queue position nor a first read of
    /// it is needed — on the durable store those are two trips to a reader
    /// thread a task. Where the store is shared by several nodes, events
    /// reach this node by a subscription that may not be in place yet when
    /// `watch` returns, so there the first read stays.
    pub async fn enqueue_and_wait(
        &self,
        new: NewTask,
        timeout: Duration,
    ) -> Result<(Waited, TaskId, bool), TaskError> {
        if self.inner.remote {
            // No position: the wait's own read says where the task is.
            let (task, replayed) = self.inner.store.enqueue(new).await?;
            if !replayed {
                self.signal(None, &task);
            }
            return Ok((self.wait(task.id, timeout).await?, task.id, replayed));
        }
        let deadline = Instant::now() + timeout;
        let mut events = self.inner.hub.store().watch(&new.id.topic());
        let (task, replayed) = self.inner.store.enqueue(new).await?;
        if replayed {
            drop(events);
            return Ok((self.wait(task.id, timeout).await?, task.id, true));
        }
        self.signal(None, &task);
        loop {
            tokio::select! {
                event = events.next() => match event {
                    Some(Ok(event)) if is_final(&event) => return Ok((Waited::Told(event), task.id, false)),
                    Some(Ok(_)) => {}
                    // Lagged behind its own topic (or the watch ended): the
                    // end may have been missed, so read as `wait` does.
                    Some(Err(_)) | None => break,
                },
                () = tokio::time::sleep_until(deadline) => break,
                () = self.inner.shutdown.cancelled() => break,
            }
        }
        let left = deadline.saturating_duration_since(Instant::now());
        Ok((self.wait(task.id, left).await?, task.id, false))
    }

    /// Claims the oldest task of `queue`, waiting up to `wait` for one.
    pub async fn claim(
        &self,
        queue: &Topic,
        lease_secs: f64,
        wait: Duration,
    ) -> Result<Option<Task>, TaskError> {
        let started = Instant::now();
        let deadline = started + wait;
        let signals = self.signals(queue.as_str());
        let out = loop {
            let notified = signals.work.notified();
            tokio::pin!(notified);
            // Registered before looking, so a task enqueued in between wakes us.
            notified.as_mut().enable();
            if let Some(task) = self.inner.store.claim(queue, lease_secs).await? {
                self.signal(Some(Status::Queued), &task);
                self.wake_reaper(&task);
                break Some(task);
            }
            tokio::select! {
                () = &mut notified => {}
                () = tokio::time::sleep_until(deadline) => break None,
                () = self.inner.shutdown.cancelled() => break None,
            }
        };
        signals
            .metrics
            .claim_wait_seconds
            .record(started.elapsed().as_secs_f64());
        Ok(out)
    }

    /// Wakes the reaper if the lease just handed out ends before the
    /// deadline it sleeps until (or while it is reading that deadline).
    fn wake_reaper(&self, task: &Task) {
        let ends = task.lease.as_ref().map_or(0, |l| l.expires_ms);
        // SeqCst pairs with the reaper's stores: either it sees this lease
        // when it reads the next deadline, or this sees the deadline it read.
        if ends < self.inner.reaper_at.load(Ordering::SeqCst) {
            self.inner.reaper.notify_one();
        }
    }

    /// Progress, completion, failure or cancellation.
    pub async fn update(
        &self,
        id: TaskId,
        op: Op,
        key: Option<&str>,
    ) -> Result<(Task, Option<Cancel>), TaskError> {
        let u = self.inner.store.update(id, op, key).await?;
        self.signal(Some(u.before), &u.task);
        match u.refused {
            Some(e) => Err(e),
            None => Ok((u.task, u.cancel)),
        }
    }

    /// A receiver that changes whenever positions in `queue` may have moved.
    pub fn positions(&self, queue: &str) -> watch::Receiver<u64> {
        self.signals(queue).moved.subscribe()
    }
}

/// Whether `event`, on a task's topic, is the one that ends it (`done` or
/// `error`, whose data is the finished task).
fn is_final(event: &Event) -> bool {
    matches!(event.kind.as_str(), "done" | "error")
}

/// Sets the status gauges to the store's counts.
async fn set_gauges(store: &dyn TaskStore) -> Result<(), TaskError> {
    for (queue, status, n) in store.counts().await? {
        gauge(&queue, status).set(n as f64);
    }
    Ok(())
}

/// Forwards the shared store's queue signals to this node's waiters, and
/// keeps the status gauges at the shared counts (read once per burst of
/// signals).
async fn listen(tasks: Tasks, mut rx: tokio::sync::broadcast::Receiver<QueueSignal>) {
    use tokio::sync::broadcast::error::{RecvError, TryRecvError};
    let everyone = QueueSignal {
        queue: String::new(),
        work: true,
    };
    loop {
        let first = tokio::select! {
            signal = rx.recv() => signal,
            () = tasks.inner.shutdown.cancelled() => return,
        };
        match first {
            Ok(s) => tasks.remote_signal(&s),
            // Missed some: wake everyone, they look for themselves.
            Err(RecvError::Lagged(_)) => tasks.remote_signal(&everyone),
            Err(RecvError::Closed) => return,
        }
        loop {
            match rx.try_recv() {
                Ok(s) => tasks.remote_signal(&s),
                Err(TryRecvError::Lagged(_)) => tasks.remote_signal(&everyone),
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Closed) => return,
            }
        }
        if let Err(e) = set_gauges(&*tasks.inner.store).await {
            tracing::debug!(error = %e, "reading task counts failed");
        }
    }
}

/// Settles leases as they run out: sleeps until the earliest deadline, or
/// until a claim hands out a lease that may end sooner.
async fn reap(tasks: Tasks) {
    let inner = &tasks.inner;
    loop {
        let woken = inner.reaper.notified();
        tokio::pin!(woken);
        woken.as_mut().enable();
        // While reading, every claim wakes it (its lease may be missed by
        // the read); after, only one whose lease ends before `next`.
        inner.reaper_at.store(0, Ordering::SeqCst);
        let next = match inner.store.next_expiry().await {
            Ok(next) => next,
            Err(e) => {
                tracing::warn!(error = %e, "reading lease deadlines failed; retrying in 1 s");
                Some(now_ms() + 1000)
            }
        };
        inner
            .reaper_at
            .store(next.unwrap_or(u64::MAX), Ordering::SeqCst);
        let sleep = async {
            match next {
                Some(at) => {
                    let wait = Duration::from_millis(at.saturating_sub(now_ms()));
                    tokio::time::sleep(wait).await;
                }
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = sleep => {}
            () = &mut woken => continue,
            () = inner.shutdown.cancelled() => return,
        }
        match inner.store.expire().await {
            Ok(expired) => {
                for task in &expired {
                    tracing::info!(task = %task.id, status = task.status.as_str(), "a lease ran out");
                    tasks.signal(Some(Status::Running), task);
                }
            }
            Err(e) => tracing::warn!(error = %e, "settling expired leases failed"),
        }
    }
}

/// How far apart the clocks of nodes sharing a store may be for a task
/// delayed on one to still wake claims on another at once.
const CLOCK_SKEW_MS: u64 = 1000;

/// Wakes one waiting claim for each task whose backoff has passed: sleeps
/// until the earliest moment a waiting task becomes claimable, or until a
/// task queued again may make that sooner.
async fn wake_when_available(tasks: Tasks) {
    let inner = &tasks.inner;
    // Everything that became claimable before now needs no wake: a claim
    // looks for itself when it starts. Waiting tasks stay known to the store
    // until claimed, so asking again (after a wake) finds what is still due.
    let mut since = now_ms();
    loop {
        let woken = inner.backoff.notified();
        tokio::pin!(woken);
        woken.as_mut().enable();
        let next = match inner.store.next_available(since).await {
            Ok(next) => next,
            Err(e) => {
                tracing::warn!(error = %e, "reading when tasks become claimable failed; retrying in 1 s");
                Some((now_ms() + 1000, Vec::new()))
            }
        };
        let at = next.as_ref().map(|(at, _)| *at);
        tokio::select! {
            () = sleep_until_ms(at) => {}
            () = &mut woken => {
                if inner.remote {
                    // Another node set the time by its own clock, which may
                    // be a little behind ours: look back a little, so its
                    // task is not taken for one already announced. (At worst
                    // a claim is woken once more and finds nothing.)
                    since = since.min(now_ms().saturating_sub(CLOCK_SKEW_MS));
                }
                continue;
            }
            () = inner.shutdown.cancelled() => return,
        }
        let Some((at, queues)) = next else { continue };
        // The timer may fire a hair before the wall clock (which the stores
        // compare with) reaches `at`: a claim woken then would find the
        // task still waiting, and nobody would wake it again.
        if now_ms() < at {
            continue;
        }
        for queue in queues {
            tasks.signals(&queue).work.notify_one();
        }
        since = at;
    }
}

/// Sleeps until wall-clock time `at` (ms since 1970), forever for `None`.
async fn sleep_until_ms(at: Option<u64>) {
    match at {
        Some(at) => tokio::time::sleep(Duration::from_millis(at.saturating_sub(now_ms()))).await,
        None => std::future::pending().await,
    }
}
