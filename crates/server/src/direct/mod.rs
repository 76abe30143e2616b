//! The direct path: subscribe requests over HTTP/1 — SSE, NDJSON streams,
//! long and short polls of `GET /topics/{topic}` and `GET /subscribe` —
//! answered straight on the socket; everything else goes to hyper and the
//! router, along with the bytes already read.
//!
//! Why: a stream held through hyper keeps hyper's per-connection read and
//! write buffers (8 KiB each) and the router's service state for as long as
//! the subscriber stays, ~30 KB per idle subscriber in all, where herald's
//! own part is ~2 KB; and every event goes through hyper's body machinery
//! for each subscriber. Here an idle subscriber holds its socket, its
//! subscription and nothing else, and an event is one `writev` of the
//! shared encoded bytes.
//!
//! What the direct path answers, it answers with the same code as the
//! router (the same [`Plan`], transports, errors and heads as hyper would
//! write), so a client cannot tell which path served it. It reads a request
//! only if it is a plain `GET` (see [`head::RequestHead::is_plain_get`]);
//! WebSocket upgrades, bodies, HTTP/2 and every other route are hyper's,
//! and once hyper has a connection it keeps it.

use std::collections::VecDeque;
use std::sync::Arc;

use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::{Buf, Bytes, BytesMut};
use herald_core::{StoreError, Topic};
use http_body_util::BodyExt;
use tokio::net::TcpStream;

use crate::error::ApiError;
use crate::negotiate::Transport;
use crate::publish::topic;
use crate::query::Query;
use crate::state::AppState;
use crate::subscribe::{Plan, query_topics};
use crate::transport::{Encode, Outbox, long_poll, poll, sse, stream};

pub mod head;
pub mod live;
pub mod lot;
pub mod park;
mod parked_poll;
pub mod socket;

use head::{Framing, Parsed};
use live::Held;
use socket::Rewind;

/// Longest request head read before leaving the connection to hyper (which
/// answers `431`); also the most a client may send while a stream or long
/// poll is open before the connection is closed.
const MAX_HEAD: usize = 16 * 1024;

/// How a connection left the direct path.
#[derive(Debug)]
pub enum Outcome {
    /// It is over; drop it.
    Closed,
    /// hyper serves it from here, starting with the bytes already read.
    Handover(Rewind),
}

/// What the direct path does with a request.
enum Decision {
    /// Answer it here: the topics and plan, or the error to answer with.
    Answer(Result<(Vec<Topic>, Plan), ApiError>),
    /// Leave it (and the rest of the connection) to hyper.
    Hyper,
}

/// Whether the connection can take another request afterwards.
#[derive(Debug, PartialEq, Eq)]
enum After {
    Next,
    Close,
}

/// What one request came to.
enum Step {
    /// The connection goes to hyper, starting with what was read.
    Hyper,
    /// The client left, or the server is shutting down.
    Closed,
    /// Answered whole; says whether the connection goes on.
    Answered { after: After, http10: bool },
    /// A stream to write from here on.
    Stream { stream: Stream, http10: bool },
}

/// A stream's outbox, boxed so that a step stays small in the
/// connection's future.
enum Stream {
    Sse(Box<Outbox<sse::SseEncoder>>),
    Ndjson(Box<Outbox<stream::NdjsonEncoder>>),
}

/// Serves requests on `tcp` for as long as they are ones the direct path
/// answers.
pub async fn serve(state: &AppState, tcp: TcpStream) -> Outcome {
    // Shared: a parked long poll's answer and a caught-up stream's events
    // are written by their topic's lot.
    let tcp = Arc::new(tcp);
    let mut buf = BytesMut::new();
    loop {
        // Boxed: a connection's future is as large as the largest thing it
        // may await, and an idle subscriber should carry room for its
        // stream only, not for reading a head, a long poll or a store read.
        let step = Box::pin(request(state, &tcp, &mut buf)).await;
        let (after, http10) = match step {
            Step::Hyper => {
                // Nothing else holds the socket once a request is over.
                return match Arc::try_unwrap(tcp) {
                    Ok(tcp) => Outcome::Handover(Rewind::new(buf.freeze(), tcp)),
                    Err(_) => Outcome::Closed,
                };
            }
            Step::Closed => return Outcome::Closed,
            Step::Answered { after, http10 } => (after, http10),
            Step::Stream { stream, http10 } => {
                let after = match stream {
                    Stream::Sse(mut outbox) => {
                        let lot = Some(state);
                        stream_out(&tcp, http10, sse::set_headers, &mut outbox, &mut buf, lot).await
                    }
                    Stream::Ndjson(mut outbox) => {
                        let (set, lot) = (stream::set_headers, None);
                        stream_out(&tcp, http10, set, &mut outbox, &mut buf, lot).await
                    }
                };
                (after, http10)
            }
        };
        if after == After::Close || http10 || state.shutdown().is_cancelled() {
            // Let the other answers woken with this one go out before this
            // connection's close takes its turn.
            tokio::task::yield_now().await;
            return Outcome::Closed;
        }
    }
}

/// Reads one request head and does what it asks, up to the point where a
/// stream would start.
async fn request(state: &AppState, tcp: &Arc<TcpStream>, buf: &mut BytesMut) -> Step {
    let head = loop {
        if !buf.is_empty() {
            match head::parse(buf) {
                Parsed::Head(head) => break head,
                Parsed::Partial if buf.len() < MAX_HEAD => {}
                Parsed::Partial | Parsed::Foreign => return Step::Hyper,
            }
        }
        let read = tokio::select! {
            read = socket::read_some(tcp, buf) => read,
            () = state.shutdown().cancelled() => return Step::Closed,
        };
        if !matches!(read, Ok(n) if n > 0) {
            return Step::Closed;
        }
    };
    let job = match decide(&head) {
        Decision::Answer(job) => {
            metrics::counter!("herald_subscribe_requests_total", "stack" => "direct").increment(1);
            job
        }
        Decision::Hyper => return Step::Hyper,
    };
    let http10 = head.http10;
    buf.advance(head.len);
    drop(head);
    if buf.is_empty() {
        // Give the read space back: an idle subscriber holds no buffer.
        *buf = BytesMut::new();
    }
    match prepare(state, tcp, job, buf, http10).await {
        Reply::Whole(response) => Step::Answered {
            after: respond(tcp, http10, response).await,
            http10,
        },
        Reply::Written(mut rest) => Step::Answered {
            after: match socket::write_all(tcp, &mut rest).await {
                Ok(()) => After::Next,
                Err(_) => After::Close,
            },
            http10,
        },
        Reply::Stream(stream) => Step::Stream { stream, http10 },
        Reply::Gone => Step::Closed,
    }
}

/// Routes `head` the way the router would, for the two subscribe routes.
fn decide(head: &head::RequestHead) -> Decision {
    if !head.is_plain_get() {
        return Decision::Hyper;
    }
    let query = Query::parse(head.query.as_deref());
    let topics = if head.path == "/subscribe" {
        query_topics(&query)
    } else if let Some(segment) = head.path.strip_prefix("/topics/")
        && !segment.is_empty()
        && !segment.contains('/')
    {
        // The router's path extractor decodes the segment; a segment that
        // does not decode is its to refuse.
        match percent_encoding::percent_decode_str(segment).decode_utf8() {
            Ok(name) => topic(&name).map(|t| vec![t]),
            Err(_) => return Decision::Hyper,
        }
    } else {
        return Decision::Hyper;
    };
    let job = topics.and_then(|topics| Ok((topics, Plan::new(&head.headers, query)?)));
    match &job {
        Ok((_, plan)) if plan.transport == Transport::WebSocket => Decision::Hyper,
        _ => Decision::Answer(job),
    }
}

/// What a request is answered with.
enum Reply {
    Whole(Response),
    /// The answer went out but for these bytes (a parked long poll's,
    /// written by its topic's lot).
    Written(VecDeque<Bytes>),
    Stream(Stream),
    /// The client left before its answer was ready.
    Gone,
}

/// Does what the request asks — subscribes, or polls — and says how to
/// answer.
async fn prepare(
    state: &AppState,
    tcp: &Arc<TcpStream>,
    job: Result<(Vec<Topic>, Plan), ApiError>,
    buf: &mut BytesMut,
    http10: bool,
) -> Reply {
    let (topics, plan) = match job {
        Ok(job) => job,
        Err(e) => return Reply::Whole(e.into_response()),
    };
    let Plan {
        transport,
        cursor,
        query,
    } = plan;
    let hub = state.hub();
    match transport {
        Transport::Sse => match hub.subscribe(topics, &cursor).await {
            Ok(sub) => Reply::Stream(Stream::Sse(Box::new(sse::outbox(
                state,
                sub,
                sse::SseEncoder::default(),
            )))),
            Err(StoreError::Unavailable(why)) => {
                tracing::warn!(%why, "an SSE client was asked to retry: the store is unavailable");
                Reply::Whole(sse::retry_later(state))
            }
            Err(e) => Reply::Whole(ApiError::from(e).into_response()),
        },
        Transport::Stream => match hub.subscribe(topics, &cursor).await {
            Ok(sub) => Reply::Stream(Stream::Ndjson(Box::new(stream::outbox(sub)))),
            Err(e) => Reply::Whole(ApiError::from(e).into_response()),
        },
        Transport::LongPoll if topics.len() == 1 => {
            let Some(topic) = topics.into_iter().next() else {
                return Reply::Gone;
            };
            parked_poll::respond(state, tcp, buf, topic, &cursor, &query, http10)
                .await
                .unwrap_or_else(|e| Reply::Whole(e.into_response()))
        }
        Transport::LongPoll => tokio::select! {
            answer = long_poll::respond(state, &topics, &cursor, &query) => {
                Reply::Whole(answer.into_response())
            }
            () = client_gone(tcp, buf) => Reply::Gone,
        },
        Transport::Poll => Reply::Whole(
            poll::respond(state, &topics, &cursor, &query)
                .await
                .into_response(),
        ),
        // `decide` leaves upgrades to hyper.
        Transport::WebSocket => Reply::Gone,
    }
}

/// Writes a whole response (status, headers, body) as hyper would.
async fn respond(tcp: &TcpStream, http10: bool, response: Response) -> After {
    let (parts, body) = response.into_parts();
    let Ok(body) = body.collect().await.map(|b| b.to_bytes()) else {
        return After::Close;
    };
    let head = head::response(
        http10,
        parts.status,
        &parts.headers,
        Framing::Length(body.len()),
        &date(),
    );
    let mut out = VecDeque::from([Bytes::from(head)]);
    if head::has_body(parts.status) && !body.is_empty() {
        out.push_back(body);
    }
    match socket::write_all(tcp, &mut out).await {
        Ok(()) => After::Next,
        Err(_) => After::Close,
    }
}

/// Streams `outbox` until it ends or the client goes: close-delimited on
/// HTTP/1.0, chunked on HTTP/1.1. Everything waiting goes out in one write.
/// With `lot` (SSE streams), a stream that has caught up is handed to its
/// topic's lot (see [`live`]) until the lot gives it back.
async fn stream_out<E: Encode>(
    tcp: &Arc<TcpStream>,
    http10: bool,
    set_headers: fn(&mut HeaderMap),
    outbox: &mut Outbox<E>,
    buf: &mut BytesMut,
    lot: Option<&AppState>,
) -> After {
    let framing = if http10 {
        Framing::Close
    } else {
        Framing::Chunked
    };
    let head = stream_head(http10, set_headers, framing);
    let mut out = VecDeque::from([Bytes::from(head)]);
    let mut line = BytesMut::new();
    // The head goes out at once, with whatever the stream opens with (and,
    // later, bytes left to write go out before the next wait).
    let mut opening = true;
    loop {
        if !opening {
            tokio::select! {
                () = outbox.fill() => {}
                () = client_gone(tcp, buf) => return After::Close,
            }
        }
        opening = false;
        if framing == Framing::Chunked {
            // The chunk's size line goes before its data, which is only
            // known once drained: hold a place for it.
            let at = out.len();
            out.push_back(Bytes::new());
            match outbox.drain_into(&mut out) {
                0 => drop(out.remove(at)),
                len => {
                    out[at] = chunk_line(&mut line, len);
                    out.push_back(Bytes::from_static(b"\r\n"));
                }
            }
        } else {
            outbox.drain_into(&mut out);
        }
        let finished = outbox.is_finished();
        if finished && framing == Framing::Chunked {
            out.push_back(Bytes::from_static(head::LAST_CHUNK));
        }
        if socket::write_all(tcp, &mut out).await.is_err() {
            return After::Close;
        }
        if finished {
            return if framing == Framing::Chunked {
                After::Next
            } else {
                After::Close
            };
        }
        if let Some(state) = lot {
            let chunked = framing == Framing::Chunked;
            match live::hold(state, tcp, outbox.subscription(), chunked, buf).await {
                Held::NotNow => {}
                Held::Back { rest } => {
                    // What the lot could not write goes out before anything
                    // the subscription yields from here on.
                    out = rest;
                    opening = true;
                }
                Held::End { rest, next } => {
                    out = rest;
                    outbox.push(next);
                    opening = true;
                }
                Held::Gone => return After::Close,
            }
        }
    }
}

/// The head of a `200` stream with the headers `set_headers` sets.
fn stream_head(http10: bool, set_headers: fn(&mut HeaderMap), framing: Framing) -> Vec<u8> {
    let mut headers = HeaderMap::new();
    set_headers(&mut headers);
    head::response(http10, StatusCode::OK, &headers, framing, &date())
}

/// The size line of a chunk of `len` bytes, written into `line`'s space
/// (reused once the previous line has been written and dropped).
fn chunk_line(line: &mut BytesMut, len: usize) -> Bytes {
    use std::fmt::Write;
    // Writing to a BytesMut cannot fail.
    let _ = write!(line, "{len:x}\r\n");
    line.split().freeze()
}

/// Resolves when the client has gone (end of stream, a read error) or has
/// sent more than [`MAX_HEAD`] while waiting for its answer; what it sends
/// meanwhile is kept in `buf` as its next request.
pub(super) async fn client_gone(tcp: &TcpStream, buf: &mut BytesMut) {
    loop {
        match socket::read_some(tcp, buf).await {
            Ok(n) if n > 0 && buf.len() <= MAX_HEAD => {}
            _ => return,
        }
    }
}

/// The `date` header's value, now.
pub(super) fn date() -> String {
    httpdate::fmt_http_date(std::time::SystemTime::now())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_lines_are_hex_and_reuse_their_space() {
        let mut line = BytesMut::new();
        assert_eq!(chunk_line(&mut line, 22), "16\r\n");
        assert_eq!(chunk_line(&mut line, 65536), "10000\r\n");
        for len in 0..1000 {
            assert_eq!(
                chunk_line(&mut line, len),
                format!("{len:x}\r\n").as_bytes()
            );
        }
    }
}
