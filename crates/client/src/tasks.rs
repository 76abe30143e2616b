//! Tasks from the client's side: enqueue, look, cancel, and wait for the
//! result by long poll, short poll or SSE — the three ways of the seed
//! article, with a timeout as an outcome rather than an error.

use std::time::Duration;

use futures_util::StreamExt;
use herald_protocol::sse::{Decoder, Frame};
use serde::Deserialize;
use tokio::time::Instant;

use crate::error::{self, Error};
use crate::{Client, encode, retry};

/// A task payload or result.
#[derive(Debug, Clone, PartialEq)]
pub enum Payload {
    /// Sent as `application/json`; comes back as JSON.
    Json(serde_json::Value),
    /// Sent as text; comes back as a string.
    Text(String),
}

/// A task as the server reports it.
#[derive(Debug, Clone, PartialEq, Deserialize, serde::Serialize)]
pub struct Task {
    pub id: String,
    pub queue: String,
    /// `queued`, `running`, `succeeded`, `failed` or `cancelled`.
    pub status: String,
    pub payload: serde_json::Value,
    pub progress: Option<f64>,
    pub message: Option<String>,
    /// Place in the queue while queued (1 = next).
    pub position: Option<u64>,
    pub result: Option<serde_json::Value>,
    pub error: Option<String>,
    pub attempts: u32,
    pub max_attempts: u32,
    /// While queued again after a failed attempt: when it becomes claimable
    /// (RFC 3339); absent when it is claimable now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub available_at: Option<String>,
}

/// The wait before a failed task's next attempt; it doubles after each
/// attempt, up to 5 minutes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Backoff {
    /// The server's default: from 1 second.
    #[default]
    Default,
    /// No wait: claimable again at once.
    None,
    /// From this base (whole milliseconds, 1 ms to 5 minutes).
    From(Duration),
}

impl Backoff {
    /// The enqueue's query string, if it needs one.
    fn query(self) -> Option<String> {
        match self {
            Backoff::Default => None,
            Backoff::None => Some("backoff=none".into()),
            Backoff::From(base) => Some(format!("backoff={}ms", base.as_millis())),
        }
    }
}

impl Task {
    pub fn is_finished(&self) -> bool {
        matches!(self.status.as_str(), "succeeded" | "failed" | "cancelled")
    }

    pub fn succeeded(&self) -> bool {
        self.status == "succeeded"
    }
}

/// How to wait for a task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wait {
    /// Long polls (`408` means "ask again") until the task finishes or `ttl`
    /// has passed in all.
    LongPoll { ttl: Duration },
    /// Asks every `interval`, at most `max_attempts` times.
    ShortPoll {
        interval: Duration,
        max_attempts: u32,
    },
    /// Follows the task's event stream, reconnecting as needed.
    Sse,
    /// Follows the task's events over a WebSocket.
    WebSocket,
}

/// How a wait ended.
#[derive(Debug, Clone, PartialEq)]
pub enum WaitOutcome {
    /// The task is finished (whatever its outcome: see [`Task::status`]).
    Finished(Task),
    /// The time or the attempts ran out first; the task as last seen.
    TimedOut(Option<Task>),
}

/// News about a task while waiting.
#[derive(Debug, Clone, PartialEq)]
pub enum Update {
    /// Its place in the queue (1 = next).
    Position(u64),
    /// Its worker's report.
    Progress {
        progress: Option<f64>,
        message: Option<String>,
    },
}

/// Calls `on_update` with what changed between two looks at a task.
fn tell(last: &mut Option<Task>, now: &Task, on_update: &mut impl FnMut(Update)) {
    let before = last.as_ref();
    if let Some(p) = now.position
        && before.and_then(|t| t.position) != Some(p)
    {
        on_update(Update::Position(p));
    }
    let moved = before.is_none_or(|t| t.progress != now.progress || t.message != now.message);
    if now.status == "running" && moved && (now.progress.is_some() || now.message.is_some()) {
        on_update(Update::Progress {
            progress: now.progress,
            message: now.message.clone(),
        });
    }
    *last = Some(now.clone());
}

impl Client {
    /// Enqueues a task; retried with the same automatic idempotency key, so
    /// it is enqueued at most once.
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), herald_client::Error> {
    /// use herald_client::{Client, Payload};
    /// let client = Client::new("http://127.0.0.1:7171")?;
    /// let task = client.enqueue("reports", Payload::Text("march".into())).await?;
    /// println!("{} is {} at position {:?}", task.id, task.status, task.position);
    /// # Ok(())
    /// # }
    /// ```
    pub async fn enqueue(&self, queue: &str, payload: Payload) -> Result<Task, Error> {
        self.enqueue_with(queue, payload, Backoff::Default).await
    }

    /// Enqueues a task whose failed attempts are retried after `backoff`
    /// (see [`Client::enqueue`]). A base out of range is an [`Error::Api`]
    /// with status `400`.
    pub async fn enqueue_with(
        &self,
        queue: &str,
        payload: Payload,
        backoff: Backoff,
    ) -> Result<Task, Error> {
        let key = uuid::Uuid::new_v4().to_string();
        let mut url = self.url(&format!("/queues/{}/tasks", encode(queue)));
        if let Some(query) = backoff.query() {
            url = format!("{url}?{query}");
        }
        retry(|| async {
            let request = self.http().post(&url).header("idempotency-key", &key);
            let response = with_payload(request, &payload).send().await?;
            if response.status().as_u16() != 201 {
                return Err(error::from_response(response).await);
            }
            Ok(response.json().await?)
        })
        .await
    }

    /// Enqueues a task and waits up to `wait` for it to finish, in one
    /// round trip when the server's long-poll cap allows (`?wait=`): the
    /// way to call a worker like a function. Retried like
    /// [`Client::enqueue`], under one idempotency key, so a retry waits on
    /// the task already enqueued instead of adding another.
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), herald_client::Error> {
    /// use std::time::Duration;
    /// use herald_client::{Client, Payload, WaitOutcome};
    /// let client = Client::new("http://127.0.0.1:7171")?;
    /// let how = client.enqueue_and_wait("thumbs", Payload::Text("cat.png".into()), Duration::from_secs(30));
    /// if let WaitOutcome::Finished(task) = how.await? {
    ///     println!("{}: {:?}", task.status, task.result);
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub async fn enqueue_and_wait(
        &self,
        queue: &str,
        payload: Payload,
        wait: Duration,
    ) -> Result<WaitOutcome, Error> {
        let deadline = Instant::now() + wait;
        let key = uuid::Uuid::new_v4().to_string();
        let (finished, task) = retry(|| async {
            let left = deadline.saturating_duration_since(Instant::now());
            let url = self.url(&format!(
                "/queues/{}/tasks?wait={:.3}",
                encode(queue),
                left.as_secs_f64()
            ));
            let request = self.http().post(&url).header("idempotency-key", &key);
            let response = with_payload(request, &payload).send().await?;
            match response.status().as_u16() {
                200 => Ok((true, response.json::<Task>().await?)),
                408 => Ok((false, response.json::<Task>().await?)),
                _ => Err(error::from_response(response).await),
            }
        })
        .await?;
        if finished {
            return Ok(WaitOutcome::Finished(task));
        }
        // The server's long-poll cap may be shorter than `wait`.
        let ttl = deadline.saturating_duration_since(Instant::now());
        if ttl.is_zero() {
            return Ok(WaitOutcome::TimedOut(Some(task)));
        }
        self.wait(&task.id, Wait::LongPoll { ttl }, |_| {}).await
    }

    /// The task as it is now (finished or not).
    ///
    /// ```no_run
    /// # async fn demo(id: &str) -> Result<(), herald_client::Error> {
    /// let client = herald_client::Client::new("http://127.0.0.1:7171")?;
    /// let task = client.task(id).await?;
    /// if task.is_finished() {
    ///     println!("{}: {:?}", task.status, task.result);
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub async fn task(&self, id: &str) -> Result<Task, Error> {
        let response = self
            .http()
            .get(self.url(&format!("/tasks/{}", encode(id))))
            .send()
            .await?;
        match response.status().as_u16() {
            200 | 202 => Ok(response.json().await?),
            _ => Err(error::from_response(response).await),
        }
    }

    /// Cancels a task: at once if queued, at its worker's next call if
    /// running. A finished task is an [`Error::Api`] with status `409`.
    ///
    /// ```no_run
    /// # async fn demo(id: &str) -> Result<(), herald_client::Error> {
    /// let client = herald_client::Client::new("http://127.0.0.1:7171")?;
    /// match client.cancel(id).await {
    ///     Ok(task) => println!("now {}", task.status),
    ///     Err(e) if e.status() == Some(409) => println!("already finished"),
    ///     Err(e) => return Err(e),
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub async fn cancel(&self, id: &str) -> Result<Task, Error> {
        let response = self
            .http()
            .delete(self.url(&format!("/tasks/{}", encode(id))))
            .send()
            .await?;
        match response.status().as_u16() {
            200 | 202 => Ok(response.json().await?),
            _ => Err(error::from_response(response).await),
        }
    }

    /// Waits for task `id` to finish, telling `on_update` of its position
    /// and progress on the way.
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), herald_client::Error> {
    /// use std::time::Duration;
    /// use herald_client::{Client, Payload, Wait, WaitOutcome};
    /// let client = Client::new("http://127.0.0.1:7171")?;
    /// let task = client.enqueue("images", Payload::Json(serde_json::json!({"url": "cat.png"}))).await?;
    /// let how = Wait::LongPoll { ttl: Duration::from_secs(60) };
    /// match client.wait(&task.id, how, |update| println!("{update:?}")).await? {
    ///     WaitOutcome::Finished(t) if t.succeeded() => println!("result: {:?}", t.result),
    ///     WaitOutcome::Finished(t) => println!("{}: {:?}", t.status, t.error),
    ///     WaitOutcome::TimedOut(_) => println!("still not done"),
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub async fn wait(
        &self,
        id: &str,
        how: Wait,
        mut on_update: impl FnMut(Update),
    ) -> Result<WaitOutcome, Error> {
        match how {
            Wait::LongPoll { ttl } => self.wait_long(id, ttl, &mut on_update).await,
            Wait::ShortPoll {
                interval,
                max_attempts,
            } => {
                self.wait_short(id, interval, max_attempts, &mut on_update)
                    .await
            }
            Wait::Sse => self.wait_sse(id, &mut on_update).await,
            Wait::WebSocket => self.wait_ws(id, &mut on_update).await,
        }
    }

    async fn wait_ws(
        &self,
        id: &str,
        on_update: &mut impl FnMut(Update),
    ) -> Result<WaitOutcome, Error> {
        use tokio_tungstenite::tungstenite::Message;
        let url = self
            .url(&format!("/tasks/{}/events", encode(id)))
            .replacen("http", "ws", 1);
        loop {
            let request = self.ws_request(&url)?;
            let (mut socket, _) = match tokio_tungstenite::connect_async(request).await {
                Ok(s) => s,
                Err(tokio_tungstenite::tungstenite::Error::Http(r)) => {
                    let status = r.status().as_u16();
                    if status == 204 {
                        return Ok(WaitOutcome::Finished(self.task(id).await?));
                    }
                    let body = String::from_utf8_lossy(r.body().as_deref().unwrap_or_default())
                        .into_owned();
                    return Err(Error::Unexpected { status, body });
                }
                Err(e) => return Err(error::transport(&e)),
            };
            while let Some(message) = socket.next().await {
                let Ok(Message::Text(text)) = message else {
                    continue;
                };
                let Ok(frame) = serde_json::from_str::<serde_json::Value>(&text) else {
                    continue;
                };
                let data = frame["data"].as_str().unwrap_or_default();
                match frame["event"].as_str().unwrap_or_default() {
                    "done" | "error" => {
                        let task =
                            serde_json::from_str(data).map_err(|e| Error::Decode(e.to_string()))?;
                        return Ok(WaitOutcome::Finished(task));
                    }
                    other => event_update(other, data, on_update),
                }
            }
            // The socket closed before the end: look again, then follow on.
            let task = self.task(id).await?;
            if task.is_finished() {
                return Ok(WaitOutcome::Finished(task));
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    async fn wait_long(
        &self,
        id: &str,
        ttl: Duration,
        on_update: &mut impl FnMut(Update),
    ) -> Result<WaitOutcome, Error> {
        let deadline = Instant::now() + ttl;
        let mut last = None;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let secs = left.min(Duration::from_secs(30)).as_secs_f64();
            let url = self.url(&format!("/tasks/{}?wait={secs:.3}", encode(id)));
            let response = self.http().get(url).send().await?;
            match response.status().as_u16() {
                200 => return Ok(WaitOutcome::Finished(response.json().await?)),
                408 => {
                    let task: Task = response.json().await?;
                    tell(&mut last, &task, on_update);
                    if Instant::now() >= deadline {
                        return Ok(WaitOutcome::TimedOut(last));
                    }
                }
                _ => return Err(error::from_response(response).await),
            }
        }
    }

    async fn wait_short(
        &self,
        id: &str,
        interval: Duration,
        max_attempts: u32,
        on_update: &mut impl FnMut(Update),
    ) -> Result<WaitOutcome, Error> {
        let mut last = None;
        for attempt in 0..max_attempts {
            if attempt > 0 {
                tokio::time::sleep(interval).await;
            }
            let task = self.task(id).await?;
            if task.is_finished() {
                return Ok(WaitOutcome::Finished(task));
            }
            tell(&mut last, &task, on_update);
        }
        Ok(WaitOutcome::TimedOut(last))
    }

    async fn wait_sse(
        &self,
        id: &str,
        on_update: &mut impl FnMut(Update),
    ) -> Result<WaitOutcome, Error> {
        let mut cursor: Option<String> = None;
        let mut retry_delay = Duration::from_secs(1);
        let mut failures = 0;
        loop {
            let mut request = self
                .http()
                .get(self.url(&format!("/tasks/{}/events", encode(id))))
                .header("accept", "text/event-stream");
            if let Some(c) = &cursor {
                request = request.header("last-event-id", c);
            }
            let response = match request.send().await {
                Ok(r) => r,
                Err(e) if failures < 10 => {
                    failures += 1;
                    tracing::debug!(error = %e, "task stream failed; reconnecting");
                    tokio::time::sleep(retry_delay).await;
                    continue;
                }
                Err(e) => return Err(e.into()),
            };
            match response.status().as_u16() {
                200 => {}
                // The stream had ended at its final event.
                204 => return Ok(WaitOutcome::Finished(self.task(id).await?)),
                _ => return Err(error::from_response(response).await),
            }
            let mut body = response.bytes_stream();
            let mut decoder = Decoder::new();
            while let Some(chunk) = body.next().await {
                let Ok(chunk) = chunk else { break };
                failures = 0;
                for frame in decoder.feed(&chunk) {
                    match frame {
                        Frame::Retry(ms) => retry_delay = Duration::from_millis(ms),
                        Frame::Id(_) => {}
                        Frame::Event {
                            id: event_id,
                            event,
                            data,
                        } => {
                            cursor = event_id.or(cursor);
                            match event.as_str() {
                                "done" | "error" => {
                                    let task = serde_json::from_str(&data)
                                        .map_err(|e| Error::Decode(e.to_string()))?;
                                    return Ok(WaitOutcome::Finished(task));
                                }
                                other => event_update(other, &data, on_update),
                            }
                        }
                    }
                }
            }
            tokio::time::sleep(retry_delay).await;
        }
    }
}

/// Turns a `wait` or `progress` event into an [`Update`].
fn event_update(event: &str, data: &str, on_update: &mut impl FnMut(Update)) {
    match event {
        "wait" => {
            let v = serde_json::from_str::<serde_json::Value>(data).ok();
            let p = v.and_then(|v| {
                v.get("position")
                    .and_then(serde_json::Value::as_u64)
                    .or(v.as_u64())
            });
            if let Some(p) = p {
                on_update(Update::Position(p));
            }
        }
        "progress" => {
            #[derive(Deserialize)]
            struct P {
                progress: Option<f64>,
                message: Option<String>,
            }
            if let Ok(p) = serde_json::from_str::<P>(data) {
                on_update(Update::Progress {
                    progress: p.progress,
                    message: p.message,
                });
            }
        }
        _ => {}
    }
}

/// Attaches a payload as a body, with `Content-Type: application/json` for
/// JSON.
pub(crate) fn with_payload(
    request: reqwest::RequestBuilder,
    payload: &Payload,
) -> reqwest::RequestBuilder {
    match payload {
        Payload::Json(v) => request
            .header("content-type", "application/json")
            .body(v.to_string()),
        Payload::Text(t) => request
            .header("content-type", "text/plain; charset=utf-8")
            .body(t.clone()),
    }
}
