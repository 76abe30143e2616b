//! Long poll: hold the request until an event is after the cursor (`200`),
//! or answer `204` with `Herald-Cursor` when the timeout passes first.
//!
//! The wait lives in the request's future; when the client leaves, hyper
//! drops it and with it the watches, so nothing outlives the request.

use std::time::Duration;

use axum::response::Response;
use herald_core::{CursorInput, Topic};

use super::SubscriptionGauge;
use super::poll::{limit, to_response};
use crate::error::ApiError;
use crate::negotiate::Transport;
use crate::query::Query;
use crate::state::AppState;

/// Reads `?timeout=SECONDS`: the configured default when absent, capped at
/// the configured maximum; negative or non-numbers are a `400`.
pub fn timeout(state: &AppState, query: &Query) -> Result<Duration, ApiError> {
    let config = state.config();
    let secs = query.seconds("timeout", config.long_poll_default.as_secs_f64(), 1e9)?;
    Ok(Duration::from_secs_f64(secs).min(config.long_poll_max))
}

pub async fn respond(
    state: &AppState,
    topics: &[Topic],
    cursor: &CursorInput,
    query: &Query,
) -> Result<Response, ApiError> {
    let limit = limit(query)?;
    let timeout = timeout(state, query)?;
    let _gauge = SubscriptionGauge::open(Transport::LongPoll);
    let answer = state
        .hub()
        .long_poll(topics, cursor, limit, timeout)
        .await?;
    Ok(to_response(&answer))
}
