//! `GET /sse`, the counter demo of the first seed article: `data: N` once a
//! second, forever (until the client leaves or the server stops). The
//! interval lives in the response body, so it is dropped with the
//! connection — the article's leaking-timer trap avoided.

use std::time::Duration;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use herald_protocol::sse;
use tokio::time::{Instant, Interval, MissedTickBehavior, interval_at};
use tokio_util::sync::CancellationToken;

use crate::state::AppState;
use crate::transport::{Fill, streaming_body};

/// What the body of `/sse` pulls from.
struct Counter {
    first: Option<Bytes>,
    ticks: Interval,
    n: u64,
    shutdown: CancellationToken,
}

impl Fill for Counter {
    async fn next_bytes(&mut self) -> Option<Bytes> {
        if let Some(first) = self.first.take() {
            return Some(first);
        }
        tokio::select! {
            _ = self.ticks.tick() => {}
            () = self.shutdown.cancelled() => return None,
        }
        self.n += 1;
        Some(sse::encode_event(None, "message", &self.n.to_string()).full())
    }
}

pub async fn counter(State(state): State<AppState>) -> Response {
    let every = Duration::from_secs(1);
    let mut ticks = interval_at(Instant::now() + every, every);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let counter = Counter {
        first: Some(state.sse_preamble()),
        ticks,
        n: 0,
        shutdown: state.shutdown().clone(),
    };
    let mut response = streaming_body(counter).into_response();
    crate::transport::sse::set_headers(response.headers_mut());
    response
}
