//! What a subscribe request was decided to be, when it is not answered at
//! once: the plan a stack carries out (see [`crate::subscribe::decide`]).

use axum::http::HeaderMap;
use bytes::Bytes;
use herald_core::{CursorInput, Topic};
use tokio::time::Instant;

/// A stream, WebSocket or long poll, decided.
#[derive(Debug)]
pub struct Plan {
    pub topics: Vec<Topic>,
    pub cursor: CursorInput,
    pub mode: Mode,
    /// Headers every answer to the request carries: a stream's head is
    /// these, a long poll's answer (parked ones too) adds its own.
    pub headers: HeaderMap,
    /// When the caller's token expires: a stream ends then.
    pub until: Option<Instant>,
    /// The caller's place under `--max-subscriptions-per-client`, held
    /// for as long as the stream, socket or long poll.
    pub slot: Option<crate::limits::Slot>,
}

/// How the request is carried out.
#[derive(Debug)]
pub enum Mode {
    /// Upgraded to a WebSocket (hyper only: the direct path reads no
    /// upgrades).
    WebSocket,
    Stream(StreamKind),
    /// Held until an event is after the cursor, or `204` at `deadline`.
    LongPoll {
        limit: usize,
        deadline: Instant,
    },
}

/// Which event stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamKind {
    /// SSE; `comment` is a line written inside every event (the
    /// notification route's).
    Sse {
        comment: Option<Bytes>,
    },
    Ndjson,
}
