//! What a subscribe request was decided to be, when it is not answered at
//! once: the plan a stack carries out (see [`crate::subscribe::decide`]).

use axum::http::HeaderMap;
use bytes::Bytes;
use herald_core::{CursorInput, Topic};
use tokio::time::Instant;

use crate::negotiate::Transport;

/// A stream or long poll, decided: what the stack carries out.
#[derive(Debug)]
pub struct Plan {
    pub topics: Vec<Topic>,
    pub cursor: CursorInput,
    pub transport: Transport,
    /// Long poll: most events in its answer.
    pub limit: usize,
    /// Long poll: when it answers `204` if nothing came.
    pub deadline: Instant,
    /// Headers the answer carries: a stream's head is these, a long poll's
    /// answer adds its own.
    pub headers: HeaderMap,
    /// SSE: a comment line written inside every event (the notification
    /// route's).
    pub comment: Option<Bytes>,
}
