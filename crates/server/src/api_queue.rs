//! The task queue of the first seed article, on its own paths:
//! `POST /api/queue` (body = payload) → `{"id"}`, and `GET /api/queue?id=`
//! by short poll (`204` pending, `200` finished), long poll (`&ttl=MS`,
//! `408` after it) or SSE. Its tasks go to the queue `default`.

use std::time::Duration;

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use herald_core::task::engine::Waited;
use herald_core::task::{Backoff, NewTask, TaskError};
use herald_core::{CursorInput, Topic};

use crate::error::ApiError;
use crate::query::Query;
use crate::seed::ARTICLE_QUEUE;
use crate::state::AppState;
use crate::subscribe::decide::cursor;
use crate::task_stream::WaitData;
use crate::tasks::task_response;

/// `POST /api/queue` (body = payload) → `{"id"}`.
pub async fn enqueue(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let queue = Topic::new(ARTICLE_QUEUE).map_err(|e| ApiError::Internal(e.to_string()))?;
    let key = crate::publish::idempotency_key(&headers)?;
    let new = NewTask {
        id: herald_core::task::TaskId::new(),
        queue,
        payload: crate::tasks::payload(&state, &headers, body).await?,
        max_attempts: 3,
        idempotency_key: key.clone(),
        backoff: Backoff::DEFAULT,
    };
    let (task, _, _) = state
        .tasks()
        .enqueue(new)
        .await
        .map_err(|e| ApiError::from(e).keyed(key.as_deref()))?;
    Ok(axum::Json(serde_json::json!({ "id": task.id.to_string() })).into_response())
}

/// `GET /api/queue?id=ID` — short poll (`204` pending, `200` finished),
/// `&ttl=MS` — long poll (`408` after `ttl`), or SSE with
/// `Accept: text/event-stream`. A missing, malformed or unknown id is `400`.
pub async fn poll(
    State(state): State<AppState>,
    caller: crate::access::Caller,
    headers: HeaderMap,
    uri: axum::http::Uri,
) -> Result<Response, ApiError> {
    let query = Query::parse(uri.query());
    let raw = query
        .get("id")
        .ok_or_else(|| ApiError::bad_query("id", "name the task: ?id=ID"))?;
    let id = crate::tasks::task_id(raw)?;
    let unknown = || ApiError::UnknownTaskId(raw.to_owned());
    // The gate allowed the queue `default`; the task named may be of
    // another queue.
    match crate::tasks::allow_task(&state, &caller, id, crate::tasks::Scope::Enqueue).await {
        Err(ApiError::NotFound) => return Err(unknown()),
        other => other?,
    }
    let wants_sse = headers
        .get(axum::http::header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("text/event-stream"));
    if wants_sse {
        let cursor = cursor(&headers, &query, CursorInput::All);
        return match crate::task_stream::open(&state, id, &cursor).await {
            Ok(Some(mut feed)) => {
                if let Some(until) = caller.until() {
                    feed.end_at(until);
                }
                Ok(crate::task_stream::sse_response(
                    &state,
                    feed,
                    WaitData::Bare,
                ))
            }
            Ok(None) => Ok(StatusCode::NO_CONTENT.into_response()),
            Err(ApiError::NotFound) => Err(unknown()),
            Err(e) => Err(e),
        };
    }
    if query.get("ttl").is_some() {
        let max = u64::try_from(state.config().long_poll_max.as_millis()).unwrap_or(u64::MAX);
        let ttl = query.integer("ttl", 0, 0, u64::MAX)?.min(max);
        return match state.tasks().wait(id, Duration::from_millis(ttl)).await {
            Ok(Waited::Finished(task)) => Ok(task_response(StatusCode::OK, &task, None)),
            Ok(Waited::Told(event)) => Ok(crate::tasks::json_response(
                StatusCode::OK,
                event.data.clone().into_bytes(),
            )),
            Ok(Waited::TimedOut(task, position)) => {
                Ok(task_response(StatusCode::REQUEST_TIMEOUT, &task, position))
            }
            Err(TaskError::NotFound) => Err(unknown()),
            Err(e) => Err(e.into()),
        };
    }
    let (task, _) = state.tasks().get(id).await?.ok_or_else(unknown)?;
    if task.status.is_finished() {
        Ok(task_response(StatusCode::OK, &task, None))
    } else {
        Ok(StatusCode::NO_CONTENT.into_response())
    }
}
