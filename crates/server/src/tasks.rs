//! The task routes of SPEC's task table: enqueue, short and long poll,
//! cancel, and the worker's claim, progress, complete and fail.

use std::time::Duration;

use axum::body::Body;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use herald_core::Topic;
use herald_core::task::engine::Waited;
use herald_core::task::{Backoff, Cancel, NewTask, Op, Payload, Task, TaskId};
use serde::Deserialize;

use crate::access::Caller;
use crate::auth::Action;
use crate::body::read_text;
use crate::error::ApiError;
use crate::publish::path_topic;
use crate::query::Query;
use crate::state::AppState;

/// Attempts a task gets when the client names none.
pub const DEFAULT_ATTEMPTS: u64 = 3;
/// Lease a claim gets when the worker names none.
pub const DEFAULT_LEASE_SECS: f64 = 30.0;
/// The longest lease a worker may ask for.
pub const MAX_LEASE_SECS: f64 = 3600.0;

/// The header a worker may send to prove it holds a task's lease.
pub const LEASE_HEADER: &str = "herald-lease";

pub fn task_id(raw: &str) -> Result<TaskId, ApiError> {
    raw.parse().map_err(|_| ApiError::BadTaskId(raw.to_owned()))
}

fn path_id(path: Result<Path<String>, PathRejection>) -> Result<TaskId, ApiError> {
    match path {
        Ok(Path(raw)) => task_id(&raw),
        Err(e) => Err(ApiError::BadTaskId(e.body_text())),
    }
}

/// A body as a payload: JSON (checked) when sent as `application/json`.
pub async fn payload(
    state: &AppState,
    headers: &HeaderMap,
    body: Body,
) -> Result<Payload, ApiError> {
    let text = read_text(headers, body, state.config()).await?;
    let is_json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.trim_start()
                .to_ascii_lowercase()
                .starts_with("application/json")
        });
    if is_json {
        crate::body::json_payload(text)
    } else {
        Ok(Payload::Text(text))
    }
}

/// A task as JSON with the given status code.
pub fn task_response(status: StatusCode, task: &Task, position: Option<u64>) -> Response {
    json_response(status, task.to_json_bytes(position))
}

/// A JSON document already written to bytes, as `axum::Json` would answer
/// it (without building a `Value` first).
pub fn json_response(status: StatusCode, body: Vec<u8>) -> Response {
    let mut response = (status, body).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

fn lease_token(headers: &HeaderMap) -> Option<String> {
    headers
        .get(LEASE_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

/// `backoff`: `none`, a base such as `200ms`, `2s` or `1m`, or the default
/// (exponential from 1 s) when absent.
fn backoff(query: &Query) -> Result<Backoff, ApiError> {
    query.get("backoff").map_or(Ok(Backoff::DEFAULT), |raw| {
        raw.trim()
            .parse()
            .map_err(|e: herald_core::task::BadBackoff| {
                ApiError::bad_query("backoff", e.to_string())
            })
    })
}

/// `POST /queues/{queue}/tasks[?max_attempts=N][&backoff=none|DURATION][&wait=SECONDS]`:
/// `201`; with `wait`, answered as `GET /tasks/{id}?wait=` once enqueued
/// (`200` finished, `408` not yet), with `Location: /tasks/{id}`.
pub async fn enqueue(
    State(state): State<AppState>,
    path: Result<Path<String>, PathRejection>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let queue = path_topic(path)?;
    let query = Query::parse(raw.as_deref());
    let max_attempts = query.integer("max_attempts", DEFAULT_ATTEMPTS, 1, 100)?;
    let backoff = backoff(&query)?;
    // Checked before anything is stored: a bad `wait` enqueues nothing.
    let wait = wait(&state, &query)?;
    let idempotency_key = crate::publish::idempotency_key(&headers)?;
    let new = NewTask {
        id: TaskId::new(),
        queue,
        payload: payload(&state, &headers, body).await?,
        max_attempts: u32::try_from(max_attempts).unwrap_or(3),
        idempotency_key: idempotency_key.clone(),
        backoff,
    };
    let keyed = |e| ApiError::from(e).keyed(idempotency_key.as_deref());
    let (mut response, replayed) = match wait {
        None => {
            let (task, position, replayed) = state.tasks().enqueue(new).await.map_err(keyed)?;
            (
                task_response(StatusCode::CREATED, &task, position),
                replayed,
            )
        }
        Some(wait) => {
            let _gauge =
                crate::transport::SubscriptionGauge::open(crate::negotiate::Transport::LongPoll);
            let (waited, id, replayed) = state
                .tasks()
                .enqueue_and_wait(new, wait)
                .await
                .map_err(keyed)?;
            let mut response = waited_response(waited);
            if let Ok(location) = HeaderValue::try_from(format!("/tasks/{id}")) {
                response.headers_mut().insert(header::LOCATION, location);
            }
            (response, replayed)
        }
    };
    if replayed {
        response
            .headers_mut()
            .insert("idempotent-replayed", HeaderValue::from_static("true"));
    }
    Ok(response)
}

/// `wait` in seconds (capped at `--long-poll-max`), if the query has one.
fn wait(state: &AppState, query: &Query) -> Result<Option<Duration>, ApiError> {
    if query.get("wait").is_none() {
        return Ok(None);
    }
    let secs = query.seconds("wait", 0.0, 1e9)?;
    Ok(Some(
        Duration::from_secs_f64(secs).min(state.config().long_poll_max),
    ))
}

/// Long polls task `id`: `200` once finished, `408` with the task itself
/// when `wait` runs out first.
async fn waited(state: &AppState, id: TaskId, wait: Duration) -> Result<Response, ApiError> {
    let _gauge = crate::transport::SubscriptionGauge::open(crate::negotiate::Transport::LongPoll);
    Ok(waited_response(state.tasks().wait(id, wait).await?))
}

/// The answer to a long poll: `200` and the finished task, or `408` and the
/// task as it is.
fn waited_response(waited: Waited) -> Response {
    match waited {
        Waited::Finished(task) => task_response(StatusCode::OK, &task, None),
        Waited::Told(event) => json_response(StatusCode::OK, event.data.clone().into_bytes()),
        Waited::TimedOut(task, position) => {
            task_response(StatusCode::REQUEST_TIMEOUT, &task, position)
        }
    }
}

/// `GET /tasks/{id}[?wait=SECONDS]`: `200` finished, `202` not yet (short
/// poll); with `wait`, `408` (the task itself) when the wait runs out.
pub async fn get(
    State(state): State<AppState>,
    caller: Caller,
    path: Result<Path<String>, PathRejection>,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let id = path_id(path)?;
    allow_task(&state, &caller, id, Scope::Enqueue).await?;
    let query = Query::parse(raw.as_deref());
    if let Some(wait) = wait(&state, &query)? {
        return waited(&state, id, wait).await;
    }
    let (task, position) = state.tasks().get(id).await?.ok_or(ApiError::NotFound)?;
    let status = if task.status.is_finished() {
        StatusCode::OK
    } else {
        StatusCode::ACCEPTED
    };
    Ok(task_response(status, &task, position))
}

/// `DELETE /tasks/{id}`: `200` cancelled, `202` cancel requested of a
/// running task, `409` already finished.
pub async fn cancel(
    State(state): State<AppState>,
    caller: Caller,
    path: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let id = path_id(path)?;
    allow_task(&state, &caller, id, Scope::Enqueue).await?;
    let (task, how) = update(&state, id, Op::Cancel, &headers).await?;
    let status = match how {
        Some(Cancel::Requested) => StatusCode::ACCEPTED,
        _ => StatusCode::OK,
    };
    Ok(task_response(status, &task, None))
}

/// `lease` of a claim (the claim route's and the worker socket's): seconds,
/// default 30, from 0.001 to 3600.
pub fn lease_secs(query: &Query) -> Result<f64, ApiError> {
    let lease = query.seconds("lease", DEFAULT_LEASE_SECS, MAX_LEASE_SECS)?;
    if lease < 0.001 {
        return Err(ApiError::bad_query(
            "lease",
            "must be at least 0.001 seconds",
        ));
    }
    Ok(lease)
}

/// `POST /queues/{queue}/claim?wait=SECONDS&lease=SECONDS`: long poll for
/// work. `200 {"task","lease":{"expires","token"}}` or `204`.
pub async fn claim(
    State(state): State<AppState>,
    path: Result<Path<String>, PathRejection>,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let queue: Topic = path_topic(path)?;
    let query = Query::parse(raw.as_deref());
    let max = state.config().long_poll_max;
    let wait = Duration::from_secs_f64(query.seconds("wait", 0.0, 1e9)?).min(max);
    let lease = lease_secs(&query)?;
    let Some(task) = state.tasks().claim(&queue, lease, wait).await? else {
        return Ok(StatusCode::NO_CONTENT.into_response());
    };
    Ok(json_response(
        StatusCode::OK,
        herald_core::task::claim_json(&task),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Progress {
    #[serde(default)]
    progress: Option<f64>,
    #[serde(default)]
    message: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Failure {
    error: String,
    #[serde(default)]
    retry: bool,
}

/// Which of a queue's scopes a call on one of its tasks needs.
#[derive(Debug, Clone, Copy)]
pub enum Scope {
    /// Reading, waiting on, cancelling: `enqueue`.
    Enqueue,
    /// Progress, complete, fail: `work`.
    Work,
}

/// Whether the caller may act on task `id` as `scope` of the task's queue.
/// The task is read only when authorization is on; an unknown task is
/// `404` (the caller's token is valid: the gate checked it).
pub async fn allow_task(
    state: &AppState,
    caller: &Caller,
    id: TaskId,
    scope: Scope,
) -> Result<(), ApiError> {
    if !caller.checks() {
        return Ok(());
    }
    let (task, _) = state.tasks().get(id).await?.ok_or(ApiError::NotFound)?;
    let queue = task.queue.as_str();
    caller.allow(&[match scope {
        Scope::Enqueue => Action::Enqueue(queue),
        Scope::Work => Action::Work(queue),
    }])
}

/// Applies a client's or worker's change. An `Idempotency-Key` names the
/// call, so that after an `outcome_unknown` answer its retry gets the first
/// call's outcome.
async fn update(
    state: &AppState,
    id: TaskId,
    op: Op,
    headers: &HeaderMap,
) -> Result<(Task, Option<Cancel>), ApiError> {
    let key = crate::publish::idempotency_key(headers)?;
    state
        .tasks()
        .update(id, op, key.as_deref())
        .await
        .map_err(|e| ApiError::from(e).keyed(key.as_deref()))
}

async fn json_body<T: serde::de::DeserializeOwned>(
    state: &AppState,
    headers: &HeaderMap,
    body: Body,
    shape: &str,
) -> Result<T, ApiError> {
    let text = read_text(headers, body, state.config()).await?;
    crate::body::json_object(&text, shape)
}

/// `POST /tasks/{id}/progress` `{"progress","message"}`: extends the lease.
pub async fn progress(
    State(state): State<AppState>,
    caller: Caller,
    path: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let id = path_id(path)?;
    allow_task(&state, &caller, id, Scope::Work).await?;
    let p: Progress = json_body(
        &state,
        &headers,
        body,
        "{\"progress\": 0..1, \"message\": string}",
    )
    .await?;
    if p.progress.is_some_and(|v| !(0.0..=1.0).contains(&v)) {
        return Err(ApiError::BadRequest(
            "progress must be between 0 and 1".into(),
        ));
    }
    let op = Op::Progress {
        token: lease_token(&headers),
        progress: p.progress,
        message: p.message,
    };
    let (task, _) = update(&state, id, op, &headers).await?;
    Ok(task_response(StatusCode::OK, &task, None))
}

/// `POST /tasks/{id}/complete`, body = result.
pub async fn complete(
    State(state): State<AppState>,
    caller: Caller,
    path: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let id = path_id(path)?;
    allow_task(&state, &caller, id, Scope::Work).await?;
    let op = Op::Complete {
        token: lease_token(&headers),
        result: payload(&state, &headers, body).await?,
    };
    let (task, _) = update(&state, id, op, &headers).await?;
    Ok(task_response(StatusCode::OK, &task, None))
}

/// `POST /tasks/{id}/fail` `{"error","retry"}`.
pub async fn fail(
    State(state): State<AppState>,
    caller: Caller,
    path: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let id = path_id(path)?;
    allow_task(&state, &caller, id, Scope::Work).await?;
    let f: Failure = json_body(
        &state,
        &headers,
        body,
        "{\"error\": string, \"retry\": bool}",
    )
    .await?;
    let op = Op::Fail {
        token: lease_token(&headers),
        error: f.error,
        retry: f.retry,
    };
    let (task, _) = update(&state, id, op, &headers).await?;
    let position = state.tasks().get(id).await?.and_then(|(_, p)| p);
    Ok(task_response(StatusCode::OK, &task, position))
}
