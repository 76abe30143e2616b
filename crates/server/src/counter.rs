//! `GET /sse`, the counter demo of the first seed article: `data: N` once a
//! second, forever (until the client leaves, the server stops or the token
//! that opened it expires: then `event: expired`, as on every stream). The
//! interval lives in the response body, so it is dropped with the
//! connection — the article's leaking-timer trap avoided.

use std::pin::Pin;
use std::time::Duration;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use herald_protocol::sse;
use tokio::time::{Instant, Interval, MissedTickBehavior, Sleep, interval_at};
use tokio_util::sync::CancellationToken;

use crate::access::Caller;
use crate::state::AppState;
use crate::transport::{Fill, streaming_body};

/// What the body of `/sse` pulls from.
struct Counter {
    first: Option<Bytes>,
    ticks: Interval,
    n: u64,
    shutdown: CancellationToken,
    /// The expiry of the token that opened the stream.
    expires: Option<Pin<Box<Sleep>>>,
    /// `event: expired` is sent: nothing more.
    over: bool,
}

/// Resolves at `at`, or never.
async fn expiry(at: &mut Option<Pin<Box<Sleep>>>) {
    match at {
        Some(at) => at.as_mut().await,
        None => std::future::pending().await,
    }
}

impl Fill for Counter {
    async fn next_bytes(&mut self) -> Option<Bytes> {
        if let Some(first) = self.first.take() {
            return Some(first);
        }
        if self.over {
            return None;
        }
        let expired = tokio::select! {
            _ = self.ticks.tick() => false,
            () = self.shutdown.cancelled() => return None,
            () = expiry(&mut self.expires) => true,
        };
        if expired {
            self.over = true;
            return Some(Bytes::from_static(sse::EXPIRED));
        }
        self.n += 1;
        Some(sse::encode_event(None, "message", &self.n.to_string()).full())
    }
}

pub async fn counter(State(state): State<AppState>, caller: Caller) -> Response {
    let every = Duration::from_secs(1);
    let mut ticks = interval_at(Instant::now() + every, every);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let counter = Counter {
        first: Some(state.sse_preamble()),
        ticks,
        n: 0,
        shutdown: state.shutdown().clone(),
        expires: caller
            .until()
            .map(|at| Box::pin(tokio::time::sleep_until(at))),
        over: false,
    };
    let mut response = streaming_body(counter).into_response();
    crate::transport::sse::set_headers(response.headers_mut());
    response
}
