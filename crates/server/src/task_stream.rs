//! `GET /tasks/{id}/events`: a task's `wait`, `progress`, `done` / `error`
//! over SSE, WebSocket or an NDJSON stream, ending after the final event.

use axum::extract::rejection::PathRejection;
use axum::extract::ws::{Message, Utf8Bytes, WebSocket, WebSocketUpgrade, close_code};
use axum::extract::{Path, Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use herald_core::CursorInput;
use herald_core::task::TaskId;
use herald_core::task::feed::{Feed, FeedError, FeedItem};

use crate::error::ApiError;
use crate::negotiate::{Transport, negotiate};
use crate::query::Query;
use crate::request::RequestView;
use crate::state::AppState;
use crate::subscribe::decide::cursor;
use crate::tasks::task_id;
use crate::transport::sse::SseEncoder;
use crate::transport::stream::NdjsonEncoder;
use crate::transport::{Encode, Fill, Signal, SubscriptionGauge, streaming_body, ws};

/// How a `wait` event writes the queue position.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WaitData {
    /// `{"position":N}` (SPEC's task stream).
    Object,
    /// `N` (the seed article's `/api/queue`).
    Bare,
}

impl WaitData {
    fn render(self, position: u64) -> String {
        match self {
            WaitData::Object => format!("{{\"position\":{position}}}"),
            WaitData::Bare => position.to_string(),
        }
    }
}

/// Opens the feed; `Ok(None)` means the client already has the final event.
pub async fn open(
    state: &AppState,
    id: TaskId,
    cursor: &CursorInput,
) -> Result<Option<Feed>, ApiError> {
    match state.tasks().feed(id, cursor).await {
        Ok(feed) => Ok(Some(feed)),
        Err(FeedError::Over) => Ok(None),
        Err(FeedError::Task(e)) => Err(e.into()),
    }
}

pub async fn events(
    State(state): State<AppState>,
    caller: crate::access::Caller,
    path: Result<Path<String>, PathRejection>,
    request: Request,
) -> Result<Response, ApiError> {
    let id = match path {
        Ok(Path(raw)) => task_id(&raw)?,
        Err(e) => return Err(ApiError::BadTaskId(e.body_text())),
    };
    crate::tasks::allow_task(&state, &caller, id, crate::tasks::Scope::Enqueue).await?;
    let (mut parts, _body) = request.into_parts();
    let query = Query::parse(parts.uri.query());
    let transport = negotiate(&RequestView::of(&parts), &query)?;
    let cursor = cursor(&parts.headers, &query, CursorInput::All);
    let upgrade = if transport == Transport::WebSocket {
        Some(ws::upgrade_request(&mut parts, &state).await?)
    } else {
        None
    };
    let Some(mut feed) = open(&state, id, &cursor).await? else {
        return Ok(StatusCode::NO_CONTENT.into_response());
    };
    if let Some(until) = caller.until() {
        feed.end_at(until);
    }
    Ok(match (transport, upgrade) {
        (Transport::WebSocket, Some(upgrade)) => websocket(&state, upgrade, feed),
        (Transport::Stream, _) => ndjson_response(feed),
        _ => sse_response(&state, feed, WaitData::Object),
    })
}

/// A feed's `wait` or `gap` item as a signal (no id), handed to `with`.
fn with_signal<T>(
    feed: &Feed,
    item: &FeedItem,
    wait: WaitData,
    with: impl FnOnce(Signal<'_>) -> T,
) -> Option<T> {
    let topic = feed.id().topic();
    let data = match item {
        FeedItem::Wait(p) => wait.render(*p),
        FeedItem::Gap { cursor } => Signal::gap_data(topic.as_str(), cursor),
        FeedItem::Event(_) | FeedItem::KeepAlive | FeedItem::Expired | FeedItem::End => {
            return None;
        }
    };
    let kind = if matches!(item, FeedItem::Wait(_)) {
        "wait"
    } else {
        "gap"
    };
    Some(with(Signal {
        topic: topic.as_str(),
        kind,
        data: &data,
    }))
}

/// One item as the JSON frame of WebSocket (no newline).
fn json_frame(feed: &Feed, item: &FeedItem) -> Option<Bytes> {
    match item {
        FeedItem::Event(e) => Some(e.json()),
        other => with_signal(feed, other, WaitData::Object, |s| Bytes::from(s.json())),
    }
}

/// A task's feed as a response body: `first`, then each item through
/// `encode`; the feed and the gauge live in the body and go with it.
struct FeedBody<F> {
    feed: Feed,
    first: Option<Bytes>,
    encode: F,
    _gauge: SubscriptionGauge,
}

impl<F> Fill for FeedBody<F>
where
    F: FnMut(&Feed, &FeedItem) -> Option<Bytes> + Send + 'static,
{
    async fn next_bytes(&mut self) -> Option<Bytes> {
        if let Some(bytes) = self.first.take() {
            return Some(bytes);
        }
        loop {
            let item = self.feed.next().await;
            if let FeedItem::End = item {
                return None;
            }
            if let Some(bytes) = (self.encode)(&self.feed, &item) {
                return Some(bytes);
            }
        }
    }
}

fn body<F>(feed: Feed, transport: Transport, first: Option<Bytes>, encode: F) -> Response
where
    F: FnMut(&Feed, &FeedItem) -> Option<Bytes> + Send + 'static,
{
    streaming_body(FeedBody {
        feed,
        first,
        encode,
        _gauge: SubscriptionGauge::open(transport),
    })
    .into_response()
}

/// The SSE form: stored events as they were encoded, `wait` without an id.
pub fn sse_response(state: &AppState, feed: Feed, wait: WaitData) -> Response {
    let encode = move |feed: &Feed, item: &FeedItem| match item {
        FeedItem::Event(e) => Some(SseEncoder::default().shared(e)),
        FeedItem::KeepAlive => Some(SseEncoder::default().keep_alive()),
        FeedItem::Expired => Some(Bytes::from_static(herald_protocol::sse::EXPIRED)),
        other => with_signal(feed, other, wait, |s| s.sse()),
    };
    let mut response = body(feed, Transport::Sse, Some(state.sse_preamble()), encode);
    crate::transport::sse::set_headers(response.headers_mut());
    response
}

fn ndjson_response(feed: Feed) -> Response {
    let encode = |feed: &Feed, item: &FeedItem| match item {
        FeedItem::Event(e) => Some(NdjsonEncoder.shared(e)),
        FeedItem::KeepAlive => Some(NdjsonEncoder.keep_alive()),
        FeedItem::Expired => Some(Bytes::from_static(herald_protocol::ndjson::EXPIRED)),
        other => with_signal(feed, other, WaitData::Object, |s| s.ndjson()),
    };
    let mut response = body(feed, Transport::Stream, None, encode);
    crate::transport::stream::set_headers(response.headers_mut());
    response
}

fn websocket(state: &AppState, upgrade: WebSocketUpgrade, feed: Feed) -> Response {
    ws::upgrade(state, upgrade, move |socket| run_socket(socket, feed))
}

async fn run_socket(mut socket: WebSocket, mut feed: Feed) {
    let _gauge = SubscriptionGauge::open(Transport::WebSocket);
    loop {
        let item = tokio::select! {
            incoming = socket.recv() => match incoming {
                Some(Ok(Message::Close(_))) | None => return,
                Some(Err(e)) => return ws::refuse_frame(&mut socket, e).await,
                Some(Ok(_)) => continue,
            },
            item = feed.next() => item,
        };
        let message = match &item {
            FeedItem::End => {
                ws::close(&mut socket, close_code::NORMAL, "the task is over").await;
                return;
            }
            FeedItem::Expired => {
                let why = "the token expired: reconnect with a fresh one and your cursor";
                ws::close(&mut socket, ws::TOKEN_EXPIRED, why).await;
                return;
            }
            FeedItem::KeepAlive => Message::Ping(Bytes::new()),
            other => match json_frame(&feed, other).and_then(|b| Utf8Bytes::try_from(b).ok()) {
                Some(text) => Message::Text(text),
                None => continue,
            },
        };
        if socket.send(message).await.is_err() {
            return;
        }
    }
}
