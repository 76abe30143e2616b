//! `GET /topics/{topic}` and `GET /subscribe?topic=…`: read the cursor,
//! negotiate the transport, hand over to it.

use axum::extract::rejection::PathRejection;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{FromRequestParts, Path, Request, State};
use axum::http::HeaderMap;
use axum::response::Response;
use herald_core::{CursorInput, StoreError, Topic};

use crate::error::ApiError;
use crate::negotiate::{Transport, negotiate};
use crate::publish::{path_topic, topic};
use crate::query::Query;
use crate::state::AppState;
use crate::transport::{long_poll, poll, sse, stream, ws};

/// Most topics one `/subscribe` request may name.
pub const MAX_TOPICS: usize = 64;

/// The cursor a request carries: the `Last-Event-ID` header wins over the
/// `last-event-id` query parameter (which browsers' EventSource needs).
pub fn cursor(headers: &HeaderMap, query: &Query, default: CursorInput) -> CursorInput {
    let header = headers
        .get("last-event-id")
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
    let raw = header.as_deref().or_else(|| query.get("last-event-id"));
    CursorInput::parse(raw, default)
}

pub async fn one(
    State(state): State<AppState>,
    path: Result<Path<String>, PathRejection>,
    request: Request,
) -> Result<Response, ApiError> {
    let topic = path_topic(path)?;
    subscribe(state, vec![topic], request).await
}

pub async fn many(State(state): State<AppState>, request: Request) -> Result<Response, ApiError> {
    let topics = query_topics(&Query::parse(request.uri().query()))?;
    subscribe(state, topics, request).await
}

/// The topics of `/subscribe?topic=…&topic=…`, each once, in order.
pub fn query_topics(query: &Query) -> Result<Vec<Topic>, ApiError> {
    let mut topics: Vec<Topic> = Vec::new();
    for name in query.all("topic") {
        let t = topic(name)?;
        if !topics.contains(&t) {
            topics.push(t);
        }
    }
    if topics.is_empty() {
        return Err(ApiError::bad_query("topic", "name at least one topic"));
    }
    if topics.len() > MAX_TOPICS {
        return Err(ApiError::bad_query(
            "topic",
            format!("at most {MAX_TOPICS} topics"),
        ));
    }
    Ok(topics)
}

/// What a subscribe request asks for, read from its headers and query.
#[derive(Debug)]
pub struct Plan {
    pub transport: Transport,
    pub cursor: CursorInput,
    pub query: Query,
}

impl Plan {
    /// Negotiates the transport and reads the cursor: from the beginning
    /// for a short poll, from now for everything else.
    pub fn new(headers: &HeaderMap, query: Query) -> Result<Plan, ApiError> {
        let transport = negotiate(headers, &query)?;
        let default = if transport == Transport::Poll {
            CursorInput::All
        } else {
            CursorInput::Now
        };
        let cursor = cursor(headers, &query, default);
        Ok(Plan {
            transport,
            cursor,
            query,
        })
    }
}

async fn subscribe(
    state: AppState,
    topics: Vec<Topic>,
    request: Request,
) -> Result<Response, ApiError> {
    let (mut parts, _body) = request.into_parts();
    metrics::counter!("herald_subscribe_requests_total", "stack" => "hyper").increment(1);
    let Plan {
        transport,
        cursor,
        query,
    } = Plan::new(&parts.headers, Query::parse(parts.uri.query()))?;
    let hub = state.hub();
    match transport {
        Transport::WebSocket => {
            let upgrade = WebSocketUpgrade::from_request_parts(&mut parts, &state)
                .await
                .map_err(|e| ApiError::BadRequest(e.body_text()))?;
            let sub = hub.subscribe(topics, &cursor).await?;
            Ok(ws::respond(&state, upgrade, sub))
        }
        Transport::Sse => match hub.subscribe(topics, &cursor).await {
            Ok(sub) => Ok(sse::respond(&state, sub, sse::SseEncoder::default())),
            Err(StoreError::Unavailable(why)) => {
                tracing::warn!(%why, "an SSE client was asked to retry: the store is unavailable");
                Ok(sse::retry_later(&state))
            }
            Err(e) => Err(e.into()),
        },
        Transport::Stream => Ok(stream::respond(hub.subscribe(topics, &cursor).await?)),
        Transport::LongPoll => long_poll::respond(&state, &topics, &cursor, &query).await,
        Transport::Poll => poll::respond(&state, &topics, &cursor, &query).await,
    }
}
