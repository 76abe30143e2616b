//! Workers: take tasks from the worker socket (or claim them by long poll
//! from a server without one), report progress, complete or fail — several
//! at once, stopping gracefully.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::error::{self, Error};
use crate::tasks::{Payload, Task, with_payload};
use crate::worker_socket::{self, Link, Refused};
use crate::{Client, encode};

/// A task this worker holds, with the lease that proves it.
#[derive(Debug, Clone)]
pub struct Claimed {
    pub task: Task,
    /// Sent back as `Herald-Lease` with every report.
    pub token: String,
    /// When the lease runs out unless progress is reported (RFC 3339).
    pub expires: String,
}

/// Why a task failed, and whether it should be tried again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub error: String,
    /// Queue it again if attempts are left.
    pub retry: bool,
}

impl Failure {
    pub fn new(error: impl Into<String>, retry: bool) -> Failure {
        Failure {
            error: error.into(),
            retry,
        }
    }
}

/// Lets a task handler report progress (which also extends its lease).
#[derive(Debug, Clone)]
pub struct Progress {
    client: Client,
    id: String,
    token: String,
    /// The socket the task came by, while it lasts.
    link: Option<Arc<Link>>,
}

impl Progress {
    /// Reports progress (0–1) and a message.
    pub async fn report(&self, progress: Option<f64>, message: Option<&str>) -> Result<(), Error> {
        if let Some(link) = &self.link
            && let Some(answer) = link
                .progress((&self.id, &self.token), progress, message)
                .await
        {
            return answer.map(drop);
        }
        self.client
            .post_report(
                &self.id,
                &self.token,
                "progress",
                serde_json::json!({ "progress": progress, "message": message }),
            )
            .await
            .map(drop)
    }
}

impl Client {
    /// Claims the oldest task of `queue`, waiting up to `wait`; `None` if
    /// none came. [`Worker`] runs this loop for you.
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), herald_client::Error> {
    /// use std::time::Duration;
    /// use herald_client::{Client, Failure, Payload};
    /// let client = Client::new("http://127.0.0.1:7171")?;
    /// if let Some(claimed) = client.claim("images", Duration::from_secs(30), Duration::from_secs(60)).await? {
    ///     client.progress(&claimed, Some(0.5), Some("halfway")).await?;
    ///     if claimed.task.payload.is_object() {
    ///         client.complete(&claimed, &Payload::Text("ok".into())).await?;
    ///     } else {
    ///         client.fail(&claimed, &Failure::new("not an object", false)).await?;
    ///     }
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub async fn claim(
        &self,
        queue: &str,
        wait: Duration,
        lease: Duration,
    ) -> Result<Option<Claimed>, Error> {
        let url = self.url(&format!(
            "/queues/{}/claim?wait={:.3}&lease={:.3}",
            encode(queue),
            wait.as_secs_f64(),
            lease.as_secs_f64().max(0.001)
        ));
        let response = self.http().post(url).send().await?;
        match response.status().as_u16() {
            204 => Ok(None),
            200 => {
                #[derive(Deserialize)]
                struct Lease {
                    expires: String,
                    token: String,
                }
                #[derive(Deserialize)]
                struct Answer {
                    task: Task,
                    lease: Lease,
                }
                let a: Answer = response.json().await?;
                Ok(Some(Claimed {
                    task: a.task,
                    token: a.lease.token,
                    expires: a.lease.expires,
                }))
            }
            _ => Err(error::from_response(response).await),
        }
    }

    /// Sends a worker's report, retried on transient failures under one
    /// `Idempotency-Key`: after a `503 outcome_unknown` the retry gets the
    /// first call's answer instead of a `409` from the state it led to.
    async fn post_report(
        &self,
        id: &str,
        token: &str,
        what: &str,
        body: serde_json::Value,
    ) -> Result<Task, Error> {
        let body = body.to_string();
        let request = || {
            self.http()
                .post(self.url(&format!("/tasks/{id}/{what}")))
                .header("herald-lease", token)
                .header("content-type", "application/json")
                .body(body.clone())
        };
        report(request).await
    }

    /// Reports progress on a claimed task.
    pub async fn progress(
        &self,
        claimed: &Claimed,
        progress: Option<f64>,
        message: Option<&str>,
    ) -> Result<Task, Error> {
        let body = serde_json::json!({ "progress": progress, "message": message });
        self.post_report(&claimed.task.id, &claimed.token, "progress", body)
            .await
    }

    /// Completes a claimed task with its result, retried like
    /// [`Client::progress`].
    pub async fn complete(&self, claimed: &Claimed, result: &Payload) -> Result<Task, Error> {
        let url = self.url(&format!("/tasks/{}/complete", claimed.task.id));
        let request = || {
            let request = self
                .http()
                .post(&url)
                .header("herald-lease", &claimed.token);
            with_payload(request, result)
        };
        report(request).await
    }

    /// Fails a claimed task; with `retry` it is queued again if attempts are
    /// left.
    pub async fn fail(&self, claimed: &Claimed, failure: &Failure) -> Result<Task, Error> {
        let body = serde_json::json!({ "error": failure.error, "retry": failure.retry });
        self.post_report(&claimed.task.id, &claimed.token, "fail", body)
            .await
    }
}

/// Runs a handler over the tasks of one queue.
///
/// ```no_run
/// # async fn demo() -> Result<(), herald_client::Error> {
/// use herald_client::{Client, Payload, Worker};
///
/// let client = Client::new("http://127.0.0.1:7171")?;
/// Worker::new(client, "images")
///     .concurrency(4)
///     .run(
///         |task, progress| async move {
///             progress.report(Some(0.5), Some("halfway")).await.ok();
///             Ok(Payload::Text(format!("done: {}", task.payload)))
///         },
///         async { tokio::signal::ctrl_c().await.ok(); },
///     )
///     .await
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct Worker {
    client: Client,
    queue: String,
    concurrency: usize,
    lease: Duration,
    wait: Duration,
}

impl Worker {
    pub fn new(client: Client, queue: impl Into<String>) -> Worker {
        Worker {
            client,
            queue: queue.into(),
            concurrency: 1,
            lease: Duration::from_secs(30),
            wait: Duration::from_secs(30),
        }
    }

    /// How many tasks run at once (the socket's `count`).
    pub fn concurrency(mut self, n: usize) -> Worker {
        self.concurrency = n.max(1);
        self
    }

    /// The lease asked for with each claim; report progress more often.
    pub fn lease(mut self, lease: Duration) -> Worker {
        self.lease = lease;
        self
    }

    /// How long each claim waits for work (when claiming by HTTP).
    pub fn claim_wait(mut self, wait: Duration) -> Worker {
        self.wait = wait;
        self
    }

    /// Takes and handles tasks until `shutdown` resolves; then stops
    /// taking, lets running handlers finish and reports them, and returns.
    /// `Ok(result)` completes a task; `Err(failure)` fails it.
    ///
    /// Tasks come over one WebSocket (`GET /queues/{queue}/work`), which
    /// holds up to [`Worker::concurrency`] of them; it reconnects with
    /// backoff when dropped. A server without that route, or a `wss://`
    /// this client cannot open, is worked by HTTP claims instead.
    pub async fn run<F, Fut>(
        self,
        handler: F,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<(), Error>
    where
        F: Fn(Task, Progress) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Payload, Failure>> + Send + 'static,
    {
        let handler = Arc::new(handler);
        let (stop_tx, stop_rx) = watch::channel(false);
        let session = tokio::spawn(socket_loop(self, handler, stop_rx));
        shutdown.await;
        let _ = stop_tx.send(true);
        if let Err(e) = session.await {
            tracing::error!(error = %e, "the worker panicked");
        }
        Ok(())
    }

    /// The HTTP way: one claim loop per slot, until stopped.
    async fn claim_loops<F, Fut>(self, handler: Arc<F>, stop: watch::Receiver<bool>)
    where
        F: Fn(Task, Progress) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Payload, Failure>> + Send + 'static,
    {
        let mut loops = JoinSet::new();
        for _ in 0..self.concurrency {
            loops.spawn(claim_loop(self.clone(), Arc::clone(&handler), stop.clone()));
        }
        while let Some(done) = loops.join_next().await {
            if let Err(e) = done {
                tracing::error!(error = %e, "a worker loop panicked");
            }
        }
    }
}

/// Holds the worker socket open (reconnecting with backoff) and runs each
/// task it hands out; on stop, closes it and waits for running handlers.
async fn socket_loop<F, Fut>(worker: Worker, handler: Arc<F>, mut stop: watch::Receiver<bool>)
where
    F: Fn(Task, Progress) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Payload, Failure>> + Send + 'static,
{
    let mut running = JoinSet::new();
    let mut backoff = Duration::from_millis(100);
    while !*stop.borrow() {
        let connected = tokio::select! {
            c = worker_socket::connect(&worker.client, &worker.queue, worker.lease, worker.concurrency) => c,
            _ = stop.changed() => break,
        };
        let mut socket = match connected {
            Ok(s) => s,
            Err(Refused::Unsupported) => {
                worker
                    .clone()
                    .claim_loops(Arc::clone(&handler), stop.clone())
                    .await;
                break;
            }
            Err(Refused::Failed(e)) => {
                tracing::warn!(error = %e, "opening the worker socket failed; retrying");
                tokio::select! {
                    () = tokio::time::sleep(backoff) => {}
                    _ = stop.changed() => break,
                }
                backoff = (backoff * 2).min(Duration::from_secs(10));
                continue;
            }
        };
        backoff = Duration::from_millis(100);
        let mut closing = false;
        loop {
            let next = tokio::select! {
                next = socket.next_task() => next,
                _ = stop.changed(), if !closing => {
                    // The server stops handing out tasks when it reads the
                    // close; those already sent are still run below.
                    closing = true;
                    socket.close().await;
                    continue;
                }
                Some(done) = running.join_next() => {
                    if let Err(e) = done {
                        tracing::error!(error = %e, "a task handler panicked");
                    }
                    continue;
                }
            };
            let Some(claimed) = next else { break };
            let (client, link) = (worker.client.clone(), Arc::clone(&socket.link));
            running.spawn(run_one(client, Some(link), claimed, Arc::clone(&handler)));
        }
        if !closing && !*stop.borrow() {
            tracing::warn!("the worker socket closed; reconnecting");
        }
    }
    while let Some(done) = running.join_next().await {
        if let Err(e) = done {
            tracing::error!(error = %e, "a task handler panicked");
        }
    }
}

/// Runs one task and reports its outcome: over the socket it came by while
/// that lasts, else by HTTP (retried under one `Idempotency-Key`).
async fn run_one<F, Fut>(client: Client, link: Option<Arc<Link>>, claimed: Claimed, handler: Arc<F>)
where
    F: Fn(Task, Progress) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Payload, Failure>> + Send + 'static,
{
    let progress = Progress {
        client: client.clone(),
        id: claimed.task.id.clone(),
        token: claimed.token.clone(),
        link: link.clone(),
    };
    let outcome = handler(claimed.task.clone(), progress).await;
    let by_socket = match &link {
        Some(link) => link.finish(&claimed, &outcome).await,
        None => None,
    };
    let reported = match by_socket {
        Some(answer) => answer.map(drop),
        None => match &outcome {
            Ok(result) => client.complete(&claimed, result).await.map(drop),
            Err(failure) => client.fail(&claimed, failure).await.map(drop),
        },
    };
    if let Err(e) = reported {
        // 409: the lease was lost or the task cancelled; nothing to do.
        tracing::warn!(task = %claimed.task.id, error = %e, "reporting the outcome failed");
    }
}

async fn claim_loop<F, Fut>(worker: Worker, handler: Arc<F>, mut stop: watch::Receiver<bool>)
where
    F: Fn(Task, Progress) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Payload, Failure>> + Send + 'static,
{
    let mut backoff = Duration::from_millis(100);
    loop {
        if *stop.borrow() {
            return;
        }
        let claimed = tokio::select! {
            c = worker.client.claim(&worker.queue, worker.wait, worker.lease) => c,
            _ = stop.changed() => return,
        };
        let claimed = match claimed {
            Ok(Some(c)) => c,
            Ok(None) => continue,
            Err(e) => {
                tracing::warn!(error = %e, "claiming failed; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(10));
                continue;
            }
        };
        backoff = Duration::from_millis(100);
        run_one(worker.client.clone(), None, claimed, Arc::clone(&handler)).await;
    }
}

/// Sends a report built by `request` until it is answered for good, with
/// one `Idempotency-Key` for every try.
async fn report<F>(request: F) -> Result<Task, Error>
where
    F: Fn() -> reqwest::RequestBuilder,
{
    let key = uuid::Uuid::new_v4().to_string();
    crate::retry(|| async {
        let response = request().header("idempotency-key", &key).send().await?;
        if response.status().as_u16() != 200 {
            return Err(error::from_response(response).await);
        }
        Ok(response.json().await?)
    })
    .await
}
