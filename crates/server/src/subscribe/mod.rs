//! Subscribe requests: decided once, in [`decide`], whichever stack read
//! them; carried out here for hyper (HTTP/2, WebSocket, and whatever the
//! direct path leaves to it) and in [`crate::direct`] for the rest. A
//! stream's outbox is opened here for both; a long poll runs in
//! [`crate::transport::long_poll`] for both.

use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use herald_core::{CursorInput, StoreError, Topic};

use crate::access::Caller;
use crate::answer::Whole;
use crate::error::ApiError;
use crate::request::RequestView;
use crate::state::AppState;
use crate::transport::long_poll::{self, Polled};
use crate::transport::sse::{self, SseEncoder};
use crate::transport::stream::NdjsonEncoder;
use crate::transport::{Outbox, streaming_body, ws};

pub mod decide;
pub mod route;

pub use decide::{Decision, Mode, Plan, Route, StreamKind, decide, route};

/// `GET /topics/{topic}`, `GET /subscribe` and `GET /api/notifications`
/// through hyper; also the first two as HTTP/2's WebSocket upgrade, an
/// extended `CONNECT` (RFC 8441).
pub async fn handle(State(state): State<AppState>, request: Request) -> Response {
    let (mut parts, _body) = request.into_parts();
    // Put there by the gate every hyper request passes (`access::layer`),
    // which also counts the request in `herald_subscribe_requests_total`.
    let Some(caller) = parts.extensions.remove::<Caller>() else {
        return ApiError::Internal("a subscribe request did not pass the gate".into())
            .into_response();
    };
    let view = RequestView::of(&parts);
    // The router sends only the subscribe routes here.
    let Some(route) = route(view.path) else {
        return ApiError::NotFound.into_response();
    };
    let plan = match decide(&state, &caller, route, &view).await {
        Decision::Answer(whole) => return whole.into_response(),
        Decision::Plan(plan) => plan,
    };
    match plan.mode {
        Mode::WebSocket => {
            let upgrade = match ws::upgrade_request(&mut parts, &state).await {
                Ok(upgrade) => upgrade,
                Err(e) => return e.into_response(),
            };
            match state.hub().subscribe(plan.topics, &plan.cursor).await {
                Ok(mut sub) => {
                    if let Some(until) = plan.until {
                        sub.end_at(until);
                    }
                    ws::respond(&state, upgrade, sub, plan.slot)
                }
                Err(e) => ApiError::from(e).into_response(),
            }
        }
        Mode::LongPoll { limit, deadline } => {
            let mut watches = state.hub().watches(&plan.topics);
            let polled = long_poll::run(&state, &plan, limit, deadline, &mut watches).await;
            match polled {
                Polled::Answer(whole) => whole.into_response(),
                Polled::Answered(never) => match never {},
            }
        }
        Mode::Stream(kind) => {
            let opened = open(
                &state,
                plan.topics,
                &plan.cursor,
                kind,
                plan.until,
                plan.slot,
            );
            let body = match opened.await {
                Ok(Stream::Sse(outbox)) => streaming_body(*outbox),
                Ok(Stream::Ndjson(outbox)) => streaming_body(*outbox),
                Err(whole) => return whole.into_response(),
            };
            let mut response = body.into_response();
            response.headers_mut().extend(plan.headers);
            response
        }
    }
}

/// A stream's outbox, boxed so that it stays small wherever it waits.
pub enum Stream {
    Sse(Box<Outbox<SseEncoder>>),
    Ndjson(Box<Outbox<NdjsonEncoder>>),
}

/// Opens a stream of `topics` from `cursor`, or says what to answer
/// instead: an SSE client whose store is unavailable is told to come back
/// (a browser gives up for good on an error status).
pub async fn open(
    state: &AppState,
    topics: Vec<Topic>,
    cursor: &CursorInput,
    kind: StreamKind,
    until: Option<tokio::time::Instant>,
    slot: Option<crate::limits::Slot>,
) -> Result<Stream, Whole> {
    let opened = state.hub().subscribe(topics, cursor).await.map(|mut sub| {
        if let Some(until) = until {
            sub.end_at(until);
        }
        sub
    });
    match (kind, opened) {
        (StreamKind::Sse { comment }, Ok(sub)) => {
            let mut outbox = sse::outbox(state, sub, SseEncoder { comment });
            outbox.hold(slot);
            Ok(Stream::Sse(Box::new(outbox)))
        }
        (StreamKind::Sse { .. }, Err(StoreError::Unavailable(why))) => {
            tracing::warn!(%why, "an SSE client was asked to retry: the store is unavailable");
            Err(sse::retry_later(state))
        }
        (StreamKind::Ndjson, Ok(sub)) => {
            let mut outbox = crate::transport::stream::outbox(sub);
            outbox.hold(slot);
            Ok(Stream::Ndjson(Box::new(outbox)))
        }
        (_, Err(e)) => Err(ApiError::from(e).whole()),
    }
}
