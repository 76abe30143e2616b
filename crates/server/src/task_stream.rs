//! `GET /tasks/{id}/events`: a task's `wait`, `progress`, `done` / `error`
//! over SSE, WebSocket or an NDJSON stream, ending after the final event.

use std::convert::Infallible;

use axum::body::Body;
use axum::extract::rejection::PathRejection;
use axum::extract::ws::{Message, Utf8Bytes, WebSocket, WebSocketUpgrade, close_code};
use axum::extract::{FromRequestParts, Path, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures_util::stream::unfold;
use herald_core::CursorInput;
use herald_core::task::TaskId;
use herald_core::task::feed::{Feed, FeedError, FeedItem};
use herald_protocol::{json, ndjson, sse};

use crate::error::ApiError;
use crate::negotiate::{Transport, negotiate};
use crate::query::Query;
use crate::state::AppState;
use crate::subscribe::cursor;
use crate::tasks::task_id;
use crate::transport::sse::headers as sse_headers;
use crate::transport::ws;
use crate::transport::{SubscriptionGauge, gap_data};

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
    path: Result<Path<String>, PathRejection>,
    request: Request,
) -> Result<Response, ApiError> {
    let id = match path {
        Ok(Path(raw)) => task_id(&raw)?,
        Err(e) => return Err(ApiError::BadTaskId(e.body_text())),
    };
    let (mut parts, _body) = request.into_parts();
    let query = Query::parse(parts.uri.query());
    let transport = negotiate(&parts.headers, &query)?;
    let cursor = cursor(&parts.headers, &query, CursorInput::All);
    let upgrade = if transport == Transport::WebSocket {
        Some(
            WebSocketUpgrade::from_request_parts(&mut parts, &state)
                .await
                .map_err(|e| ApiError::BadRequest(e.body_text()))?,
        )
    } else {
        None
    };
    let Some(feed) = open(&state, id, &cursor).await? else {
        return Ok(StatusCode::NO_CONTENT.into_response());
    };
    Ok(match (transport, upgrade) {
        (Transport::WebSocket, Some(upgrade)) => websocket(&state, upgrade, feed),
        (Transport::Stream, _) => ndjson_response(feed),
        _ => sse_response(&state, feed, WaitData::Object),
    })
}

/// One item as the JSON frame of WebSocket and NDJSON.
fn json_frame(feed: &Feed, item: &FeedItem, wait: WaitData) -> Option<Bytes> {
    match item {
        FeedItem::Event(e) => Some(e.json()),
        FeedItem::Wait(p) => {
            let topic = feed.id().topic();
            Some(Bytes::from(json::encode_event(
                None,
                topic.as_str(),
                "wait",
                &wait.render(*p),
                None,
            )))
        }
        FeedItem::Gap { cursor } => {
            let topic = feed.id().topic();
            let data = gap_data(topic.as_str(), cursor);
            Some(Bytes::from(json::encode_event(
                None,
                topic.as_str(),
                "gap",
                &data,
                None,
            )))
        }
        FeedItem::KeepAlive | FeedItem::End => None,
    }
}

/// Streams a task feed through `encode` as a response body; the feed and
/// the gauge live in the body and go with it.
fn body<F>(feed: Feed, transport: Transport, first: Option<Bytes>, encode: F) -> Body
where
    F: FnMut(&Feed, &FeedItem) -> Option<Bytes> + Send + 'static,
{
    struct State<F> {
        feed: Feed,
        first: Option<Bytes>,
        encode: F,
        _gauge: SubscriptionGauge,
    }
    let state = State {
        feed,
        first,
        encode,
        _gauge: SubscriptionGauge::open(transport),
    };
    Body::from_stream(unfold(state, |mut s| async move {
        if let Some(bytes) = s.first.take() {
            return Some((Ok::<_, Infallible>(bytes), s));
        }
        loop {
            let item = s.feed.next().await;
            if let FeedItem::End = item {
                return None;
            }
            if let Some(bytes) = (s.encode)(&s.feed, &item) {
                return Some((Ok(bytes), s));
            }
        }
    }))
}

/// The SSE form: stored events as they were encoded, `wait` without an id.
pub fn sse_response(state: &AppState, feed: Feed, wait: WaitData) -> Response {
    let encode = move |feed: &Feed, item: &FeedItem| match item {
        FeedItem::Event(e) => Some(e.sse().full()),
        FeedItem::Wait(p) => Some(sse::encode_event(None, "wait", &wait.render(*p)).full()),
        FeedItem::Gap { cursor } => {
            let data = gap_data(feed.id().topic().as_str(), cursor);
            Some(sse::encode_event(None, "gap", &data).full())
        }
        FeedItem::KeepAlive => Some(Bytes::from_static(b": keep-alive\n\n")),
        FeedItem::End => None,
    };
    let mut response =
        body(feed, Transport::Sse, Some(state.sse_preamble()), encode).into_response();
    sse_headers(&mut response);
    response
}

fn ndjson_response(feed: Feed) -> Response {
    let encode = |feed: &Feed, item: &FeedItem| match item {
        FeedItem::Event(e) => Some(e.json_line().clone()),
        FeedItem::KeepAlive => Some(Bytes::from_static(ndjson::KEEP_ALIVE)),
        other => json_frame(feed, other, WaitData::Object).map(|b| {
            let mut line = b.to_vec();
            line.push(b'\n');
            Bytes::from(line)
        }),
    };
    let mut response = body(feed, Transport::Stream, None, encode).into_response();
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/x-ndjson"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
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
                Some(Ok(Message::Close(_)) | Err(_)) | None => return,
                Some(Ok(_)) => continue,
            },
            item = feed.next() => item,
        };
        let message = match &item {
            FeedItem::End => {
                ws::close(&mut socket, close_code::NORMAL, "the task is over").await;
                return;
            }
            FeedItem::KeepAlive => Message::Ping(Bytes::new()),
            other => match json_frame(&feed, other, WaitData::Object)
                .and_then(|b| Utf8Bytes::try_from(b).ok())
            {
                Some(text) => Message::Text(text),
                None => continue,
            },
        };
        if socket.send(message).await.is_err() {
            return;
        }
    }
}
