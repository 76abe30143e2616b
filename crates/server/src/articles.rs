//! The routes of the seed articles, served exactly as their clients expect:
//! the notification server (`POST`/`GET /api/notifications`) and the
//! counter demo (`GET /sse`).

use std::convert::Infallible;
use std::time::Duration;

use axum::body::Body;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures_util::stream;
use herald_core::store::NewEvent;
use herald_core::{CursorInput, EventType, Topic};
use serde::Deserialize;
use tokio::time::{Instant, MissedTickBehavior, interval_at};
use tokio_util::sync::CancellationToken;

use crate::body::read_text;
use crate::error::ApiError;
use crate::query::Query;
use crate::state::AppState;
use crate::subscribe::cursor;
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
    let sub = state
        .hub()
        .subscribe(vec![notifications_topic()?], &cursor)
        .await?;
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
