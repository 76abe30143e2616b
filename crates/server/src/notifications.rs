//! The notification server of the second seed article:
//! `POST /api/notifications` `{"type","message"}` → `ok`. Notifications live
//! in the topic `api.notifications`: `GET /api/notifications`, their SSE
//! stream, is a subscribe request like any other
//! ([`crate::subscribe::decide`]), and every transport can also read them
//! at `/topics/api.notifications`.

use axum::body::Body;
use axum::extract::State;
use axum::http::HeaderMap;
use herald_core::store::NewEvent;
use herald_core::{EventType, Topic};
use serde::Deserialize;

use crate::body::read_text;
use crate::error::ApiError;
use crate::seed::{NOTIFICATION_EVENT, NOTIFICATIONS_TOPIC};
use crate::state::AppState;

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
    caller: crate::access::Caller,
    headers: HeaderMap,
    body: Body,
) -> Result<&'static str, ApiError> {
    let text = read_text(&headers, body, state.config()).await?;
    let n: Notification =
        crate::body::json_object(&text, r#"{"type": string, "message": string}"#)?;
    let new = NewEvent {
        topic: notifications_topic()?,
        kind: EventType::new(NOTIFICATION_EVENT).map_err(|e| ApiError::Internal(e.to_string()))?,
        data: format!("{}: {}", n.kind, n.message),
        idempotency_key: None,
    };
    state.limits().publish(&caller.client, 1)?;
    state.hub().publish(vec![new]).await?;
    Ok("ok")
}
