//! `GET /tasks/{id}/events`: a task's `wait`, `progress`, `done` / `error`
//! over SSE, WebSocket or an NDJSON stream, ending after the final event,
//! or at the expiry of the token that opened it (as a topic's stream does).

use std::pin::Pin;

use axum::extract::rejection::PathRejection;
use axum::extract::ws::{Message, Utf8Bytes, WebSocket, WebSocketUpgrade, close_code};
use axum::extract::{Path, Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use herald_core::CursorInput;
use herald_core::task::TaskId;
use herald_core::task::feed::{Feed, FeedError, FeedItem};
use tokio::time::{Instant, Sleep};

use crate::error::ApiError;
use crate::negotiate::{Transport, negotiate};
use crate::query::Query;
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
    let until = caller.stream_until();
    let (mut parts, _body) = request.into_parts();
    let query = Query::parse(parts.uri.query());
    let transport = negotiate(&parts.headers, &query)?;
    let cursor = cursor(&parts.headers, &query, CursorInput::All);
    let upgrade = if transport == Transport::WebSocket {
        Some(ws::upgrade_request(&mut parts, &state).await?)
    } else {
        None
    };
    let Some(feed) = open(&state, id, &cursor).await? else {
        return Ok(StatusCode::NO_CONTENT.into_response());
    };
    Ok(match (transport, upgrade) {
        (Transport::WebSocket, Some(upgrade)) => websocket(&state, upgrade, feed, until),
        (Transport::Stream, _) => ndjson_response(feed, until),
        _ => sse_response(&state, feed, WaitData::Object, until),
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
        FeedItem::Event(_) | FeedItem::KeepAlive | FeedItem::End => return None,
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
    /// The expiry of the token that opened the stream.
    expiry: Expiry,
    /// What the stream says when its token expires, before it ends.
    expired: &'static [u8],
    /// It said so: nothing more.
    over: bool,
    _gauge: SubscriptionGauge,
}

/// When a stream must end because its token expires.
type Expiry = Option<Pin<Box<Sleep>>>;

fn expiry(until: Option<Instant>) -> Expiry {
    until.map(|at| Box::pin(tokio::time::sleep_until(at)))
}

/// What a task's stream has next.
enum Step {
    Item(FeedItem),
    /// The token that opened the stream expired.
    Expired,
}

/// The feed's next item, unless the token expires first.
async fn next_or_expired(feed: &mut Feed, expiry: &mut Expiry) -> Step {
    let Some(at) = expiry else {
        return Step::Item(feed.next().await);
    };
    tokio::select! {
        item = feed.next() => Step::Item(item),
        () = at.as_mut() => Step::Expired,
    }
}

impl<F> Fill for FeedBody<F>
where
    F: FnMut(&Feed, &FeedItem) -> Option<Bytes> + Send + 'static,
{
    async fn next_bytes(&mut self) -> Option<Bytes> {
        if let Some(bytes) = self.first.take() {
            return Some(bytes);
        }
        if self.over {
            return None;
        }
        loop {
            let item = match next_or_expired(&mut self.feed, &mut self.expiry).await {
                Step::Item(item) => item,
                Step::Expired => {
                    self.over = true;
                    return Some(Bytes::from_static(self.expired));
                }
            };
            if let FeedItem::End = item {
                return None;
            }
            if let Some(bytes) = (self.encode)(&self.feed, &item) {
                return Some(bytes);
            }
        }
    }
}

/// How a streaming response opens and ends.
struct Framing {
    transport: Transport,
    first: Option<Bytes>,
    until: Option<Instant>,
    expired: &'static [u8],
}

fn body<F>(feed: Feed, framing: Framing, encode: F) -> Response
where
    F: FnMut(&Feed, &FeedItem) -> Option<Bytes> + Send + 'static,
{
    streaming_body(FeedBody {
        feed,
        first: framing.first,
        encode,
        expiry: expiry(framing.until),
        expired: framing.expired,
        over: false,
        _gauge: SubscriptionGauge::open(framing.transport),
    })
    .into_response()
}

/// The SSE form: stored events as they were encoded, `wait` without an id;
/// at `until` (the token's expiry), `event: expired` and the end.
pub fn sse_response(
    state: &AppState,
    feed: Feed,
    wait: WaitData,
    until: Option<Instant>,
) -> Response {
    let encode = move |feed: &Feed, item: &FeedItem| match item {
        FeedItem::Event(e) => Some(SseEncoder::default().shared(e)),
        FeedItem::KeepAlive => Some(SseEncoder::default().keep_alive()),
        other => with_signal(feed, other, wait, |s| s.sse()),
    };
    let framing = Framing {
        transport: Transport::Sse,
        first: Some(state.sse_preamble()),
        until,
        expired: herald_protocol::sse::EXPIRED,
    };
    let mut response = body(feed, framing, encode);
    crate::transport::sse::set_headers(response.headers_mut());
    response
}

fn ndjson_response(feed: Feed, until: Option<Instant>) -> Response {
    let encode = |feed: &Feed, item: &FeedItem| match item {
        FeedItem::Event(e) => Some(NdjsonEncoder.shared(e)),
        FeedItem::KeepAlive => Some(NdjsonEncoder.keep_alive()),
        other => with_signal(feed, other, WaitData::Object, |s| s.ndjson()),
    };
    let framing = Framing {
        transport: Transport::Stream,
        first: None,
        until,
        expired: herald_protocol::ndjson::EXPIRED,
    };
    let mut response = body(feed, framing, encode);
    crate::transport::stream::set_headers(response.headers_mut());
    response
}

fn websocket(
    state: &AppState,
    upgrade: WebSocketUpgrade,
    feed: Feed,
    until: Option<Instant>,
) -> Response {
    ws::upgrade(state, upgrade, move |socket| {
        run_socket(socket, feed, until)
    })
}

async fn run_socket(mut socket: WebSocket, mut feed: Feed, until: Option<Instant>) {
    let _gauge = SubscriptionGauge::open(Transport::WebSocket);
    let mut expiry = expiry(until);
    loop {
        let step = tokio::select! {
            incoming = socket.recv() => match incoming {
                Some(Ok(Message::Close(_))) | None => return,
                Some(Err(e)) => return ws::refuse_frame(&mut socket, e).await,
                Some(Ok(_)) => continue,
            },
            step = next_or_expired(&mut feed, &mut expiry) => step,
        };
        let item = match step {
            Step::Item(item) => item,
            Step::Expired => {
                let why = "the token expired: reconnect with a fresh one and your cursor";
                ws::close(&mut socket, ws::TOKEN_EXPIRED, why).await;
                return;
            }
        };
        let message = match &item {
            FeedItem::End => {
                ws::close(&mut socket, close_code::NORMAL, "the task is over").await;
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
