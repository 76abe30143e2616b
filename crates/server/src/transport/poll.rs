//! Short poll: what is after the cursor right now — `200` with events, or
//! `204` when there is nothing — and the answer shape long poll shares.

use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use bytes::Bytes;
use herald_core::{CursorInput, PollAnswer, Topic};
use herald_protocol::json;

use super::SubscriptionGauge;
use crate::answer::Whole;
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

/// A short poll's answer: what is after `cursor` now.
pub async fn page(state: &AppState, topics: &[Topic], cursor: &CursorInput, limit: usize) -> Whole {
    let _gauge = SubscriptionGauge::open(Transport::Poll);
    match state.hub().poll(topics, cursor, limit).await {
        Ok(answer) => self::answer(&answer, &HeaderMap::new()),
        Err(e) => ApiError::from(e).whole(),
    }
}

/// [`whole`], counting the events as delivered.
pub fn answer(answer: &PollAnswer, extra: &HeaderMap) -> Whole {
    if !answer.events.is_empty() {
        metrics::counter!("herald_events_delivered_total").increment(answer.events.len() as u64);
    }
    whole(answer, extra)
}

/// `200 {"events":[…],"next":CURSOR,"gap":bool}`, or `204` with the cursor in
/// `Herald-Cursor` (and `Herald-Gap: true` if history was missed); then the
/// `extra` headers. Counts nothing: the direct path's parked long polls
/// write one encoding to many sockets.
pub fn whole(answer: &PollAnswer, extra: &HeaderMap) -> Whole {
    let next = answer.next.to_string();
    let mut headers = HeaderMap::new();
    let (status, body) = if answer.events.is_empty() {
        if answer.gap {
            headers.insert("herald-gap", HeaderValue::from_static("true"));
        }
        (StatusCode::NO_CONTENT, Bytes::new())
    } else {
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
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        (StatusCode::OK, Bytes::from(body))
    };
    if let Ok(cursor) = HeaderValue::from_str(&next) {
        headers.insert("herald-cursor", cursor);
    }
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.extend(extra.clone());
    Whole {
        status,
        headers,
        body,
    }
}
