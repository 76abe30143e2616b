//! The notification server of the second seed article:
//! `POST /api/notifications` `{"type","message"}` → `ok`, and
//! `GET /api/notifications`, an SSE stream of them. Notifications live in
//! the topic `api.notifications`, so every transport can also read them at
//! `/topics/api.notifications`.

use axum::body::Body;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use herald_core::store::NewEvent;
use herald_core::{CursorInput, EventType, StoreError, Topic};
use serde::Deserialize;

use crate::body::read_text;
use crate::error::ApiError;
use crate::query::Query;
use crate::state::AppState;
use crate::subscribe::decide::cursor;
use crate::transport::sse::{self, SseEncoder};
use crate::transport::streaming_body;

/// The topic behind `/api/notifications`.
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
        Err(StoreError::Unavailable(_)) => return Ok(sse::retry_later(&state).into_response()),
        Err(e) => return Err(e.into()),
    };
    let encoder = SseEncoder {
        comment: Some(Bytes::from_static(NOTIFICATION_COMMENT)),
    };
    let mut response = streaming_body(sse::outbox(&state, sub, encoder)).into_response();
    sse::set_headers(response.headers_mut());
    Ok(response)
}
