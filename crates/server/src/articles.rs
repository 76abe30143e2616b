//! The routes of the seed articles, served exactly as their clients expect:
//! the notification server (`POST`/`GET /api/notifications`), the counter
//! demo (`GET /sse`) and the task queue (`POST`/`GET /api/queue`).

use std::convert::Infallible;
use std::time::Duration;

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures_util::stream;
use herald_core::store::NewEvent;
use herald_core::task::engine::Waited;
use herald_core::task::{NewTask, TaskError};
use herald_core::{CursorInput, EventType, Topic};
use serde::Deserialize;
use tokio::time::{Instant, MissedTickBehavior, interval_at};
use tokio_util::sync::CancellationToken;

use crate::body::read_text;
use crate::error::ApiError;
use crate::query::Query;
use crate::state::AppState;
use crate::subscribe::cursor;
use crate::task_stream::WaitData;
use crate::tasks::task_response;
use crate::transport::sse::{self, SseEncoder};

/// The topic behind `/api/notifications`; also readable by every transport
/// at `/topics/api.notifications`.
pub const NOTIFICATIONS_TOPIC: &str = "api.notifications";
/// The type of every notification event.
pub const NOTIFICATION_EVENT: &str = "notification";
/// The comment line each notification event carries, as in the article.
const NOTIFICATION_COMMENT: &[u8] = b": notification\n";

#[derive(Deserialize)]
struct Notification {
    #[serde(rename = "type")]
    kind: String,
    message: String,
}

fn notifications_topic() -> Result<Topic, ApiError> {
    Topic::new(NOTIFICATIONS_TOPIC).map_err(|e| ApiError::Internal(e.to_string()))
}

/// `POST /api/notifications` `{"type","message"}` → `ok`.
pub async fn notify(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Result<&'static str, ApiError> {
    let text = read_text(&headers, body, state.config().max_body).await?;
    let n: Notification = serde_json::from_str(&text).map_err(|e| {
        ApiError::BadRequest(format!(
            "expected {{\"type\": string, \"message\": string}}: {e}"
        ))
    })?;
    let new = NewEvent {
        topic: notifications_topic()?,
        kind: EventType::new(NOTIFICATION_EVENT).map_err(|e| ApiError::Internal(e.to_string()))?,
        data: format!("{}: {}", n.kind, n.message),
        idempotency_key: None,
    };
    state.hub().publish(vec![new]).await?;
    Ok("ok")
}

/// `GET /api/notifications`: SSE, only new notifications unless the client
/// resumes with `Last-Event-ID`.
pub async fn follow(
    State(state): State<AppState>,
    headers: HeaderMap,
    uri: axum::http::Uri,
) -> Result<Response, ApiError> {
    let query = Query::parse(uri.query());
    let cursor = cursor(&headers, &query, CursorInput::Now);
    let sub = match state
        .hub()
        .subscribe(vec![notifications_topic()?], &cursor)
        .await
    {
        Ok(sub) => sub,
        Err(herald_core::StoreError::Unavailable(_)) => return Ok(sse::retry_later(&state)),
        Err(e) => return Err(e.into()),
    };
    let encoder = SseEncoder {
        comment: Some(Bytes::from_static(NOTIFICATION_COMMENT)),
    };
    Ok(sse::respond(&state, sub, encoder))
}

/// `GET /sse`: `data: N` once a second, forever (until the client leaves or
/// the server stops). The interval lives in the body stream, so it is
/// dropped with the connection — the article's leaking-timer trap avoided.
pub async fn counter(State(state): State<AppState>) -> Response {
    struct Tick {
        ticks: tokio::time::Interval,
        n: u64,
        shutdown: CancellationToken,
    }
    let every = Duration::from_secs(1);
    let mut ticks = interval_at(Instant::now() + every, every);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let first = stream::once(std::future::ready(Ok::<_, Infallible>(
        state.sse_preamble(),
    )));
    let start = Tick {
        ticks,
        n: 0,
        shutdown: state.shutdown().clone(),
    };
    let counting = stream::unfold(start, |mut s| async move {
        tokio::select! {
            _ = s.ticks.tick() => {}
            () = s.shutdown.cancelled() => return None,
        }
        s.n += 1;
        Some((Ok(Bytes::from(format!("data: {}\n\n", s.n))), s))
    });
    let mut response =
        Body::from_stream(futures_util::StreamExt::chain(first, counting)).into_response();
    sse::headers(&mut response);
    response
}

/// The queue behind `/api/queue`.
pub const ARTICLE_QUEUE: &str = "default";

/// `POST /api/queue` (body = payload) → `{"id"}`.
pub async fn enqueue(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let queue = Topic::new(ARTICLE_QUEUE).map_err(|e| ApiError::Internal(e.to_string()))?;
    let new = NewTask {
        queue,
        payload: crate::tasks::payload(&state, &headers, body).await?,
        max_attempts: 3,
        idempotency_key: crate::publish::idempotency_key(&headers)?,
    };
    let (task, _, _) = state.tasks().enqueue(new).await?;
    Ok(axum::Json(serde_json::json!({ "id": task.id.to_string() })).into_response())
}

/// `GET /api/queue?id=ID` — short poll (`204` pending, `200` finished),
/// `&ttl=MS` — long poll (`408` after `ttl`), or SSE with
/// `Accept: text/event-stream`. A missing, malformed or unknown id is `400`.
pub async fn poll(
    State(state): State<AppState>,
    headers: HeaderMap,
    uri: axum::http::Uri,
) -> Result<Response, ApiError> {
    let query = Query::parse(uri.query());
    let raw = query
        .get("id")
        .ok_or_else(|| ApiError::bad_query("id", "name the task: ?id=ID"))?;
    let id = crate::tasks::task_id(raw)?;
    let unknown = || ApiError::BadTaskId(raw.to_owned());
    let wants_sse = headers
        .get(axum::http::header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("text/event-stream"));
    if wants_sse {
        let cursor = cursor(&headers, &query, CursorInput::All);
        return match crate::task_stream::open(&state, id, &cursor).await {
            Ok(Some(feed)) => Ok(crate::task_stream::sse_response(
                &state,
                feed,
                WaitData::Bare,
            )),
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
