//! Short poll: what is after the cursor right now — `200` with events, or
//! `204` when there is nothing — and the answer shape long poll shares.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use herald_core::{CursorInput, PollAnswer, Topic};
use herald_protocol::json;

use super::SubscriptionGauge;
use crate::error::ApiError;
use crate::negotiate::Transport;
use crate::query::Query;
use crate::state::AppState;

/// Events per answer when the client names no `limit`.
pub const DEFAULT_LIMIT: u64 = 100;
/// The largest `limit` a client may ask for.
pub const MAX_LIMIT: u64 = 1000;

/// Reads `?limit=`.
pub fn limit(query: &Query) -> Result<usize, ApiError> {
    let n = query.integer("limit", DEFAULT_LIMIT, 1, MAX_LIMIT)?;
    Ok(usize::try_from(n).unwrap_or(usize::MAX))
}

pub async fn respond(
    state: &AppState,
    topics: &[Topic],
    cursor: &CursorInput,
    query: &Query,
) -> Result<Response, ApiError> {
    let limit = limit(query)?;
    let _gauge = SubscriptionGauge::open(Transport::Poll);
    let answer = state.hub().poll(topics, cursor, limit).await?;
    Ok(to_response(&answer))
}

/// `200 {"events":[…],"next":CURSOR,"gap":bool}`, or `204` with the cursor in
/// `Herald-Cursor` (and `Herald-Gap: true` if history was missed).
pub fn to_response(answer: &PollAnswer) -> Response {
    let next = answer.next.to_string();
    let cursor = HeaderValue::from_str(&next).ok();
    let mut response = if answer.events.is_empty() {
        let mut r = StatusCode::NO_CONTENT.into_response();
        if answer.gap {
            r.headers_mut()
                .insert("herald-gap", HeaderValue::from_static("true"));
        }
        r
    } else {
        metrics::counter!("herald_events_delivered_total").increment(answer.events.len() as u64);
        let size: usize = answer.events.iter().map(|e| e.json_line().len()).sum();
        let mut body = Vec::with_capacity(size + next.len() + 48);
        body.extend_from_slice(b"{\"events\":[");
        for (i, e) in answer.events.iter().enumerate() {
            if i > 0 {
                body.push(b',');
            }
            body.extend_from_slice(&e.json());
        }
        body.extend_from_slice(b"],\"next\":");
        body.extend_from_slice(json::quote(&next).as_bytes());
        body.extend_from_slice(if answer.gap {
            b",\"gap\":true}"
        } else {
            b",\"gap\":false}"
        });
        let mut r = body.into_response();
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        r
    };
    let h = response.headers_mut();
    if let Some(cursor) = cursor {
        h.insert("herald-cursor", cursor);
    }
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}
