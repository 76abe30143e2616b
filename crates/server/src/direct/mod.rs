//! The direct path: subscribe requests over HTTP/1 — SSE, NDJSON streams,
//! long and short polls of `GET /topics/{topic}` and `GET /subscribe`, and
//! the SSE of `GET /api/notifications` —
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
//! What a request asks for is decided by [`crate::subscribe::decide`], the
//! same function hyper's handler calls; this path differs only in how it
//! moves bytes: HTTP/1 from [`crate::http1`], and per topic a lot
//! ([`lot`]) that writes one encoding to many sockets. It reads a request
//! only if it is a plain `GET` (see [`head::RequestHead::is_plain_get`]);
//! WebSocket upgrades, bodies, HTTP/2 and every other route are hyper's,
//! and once hyper has a connection it keeps it.

use std::collections::VecDeque;
use std::sync::Arc;

use axum::http::StatusCode;
use bytes::{Buf, Bytes, BytesMut};
use herald_core::long_poll::Waiter;
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::answer::Whole;
use crate::error::ApiError;
use crate::http1::head::{self, Framing, Parsed};
use crate::responses::Route;
use crate::state::AppState;
use crate::subscribe::{self, Decision, Mode, Plan, Stream, StreamKind};
use crate::transport::long_poll::{self, Polled};
use crate::transport::sse::SseEncoder;
use crate::transport::stream::NdjsonEncoder;

pub mod live;
pub mod lot;
pub mod park;
pub mod socket;
mod write_stream;

use live::Streams;
use lot::Lots;
use park::{Parking, Polls};
use socket::Rewind;

/// Longest request head read before leaving the connection to hyper (which
/// answers `431`); also the most a client may send while a stream or long
/// poll is open before the connection is closed.
use crate::http1::head::MAX_HEAD;

/// The direct path of one server: its state and its lots. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Direct {
    state: AppState,
    lots: Arc<AllLots>,
}

/// Where this path's clients wait, per topic and kind.
#[derive(Debug)]
struct AllLots {
    polls: Arc<Lots<Polls>>,
    sse: Arc<Lots<Streams<SseEncoder>>>,
    ndjson: Arc<Lots<Streams<NdjsonEncoder>>>,
}

impl Direct {
    pub fn new(state: AppState) -> Direct {
        let store = state.hub().store();
        let lots = AllLots {
            polls: Lots::new(store),
            sse: Lots::new(store),
            ndjson: Lots::new(store),
        };
        Direct {
            state,
            lots: Arc::new(lots),
        }
    }

    pub fn state(&self) -> &AppState {
        &self.state
    }

    fn write_timeout(&self) -> std::time::Duration {
        self.state.config().write_timeout
    }
}

/// How a connection left the direct path.
#[derive(Debug)]
pub enum Outcome {
    /// It is over; drop it.
    Closed,
    /// hyper serves it from here, starting with the bytes already read.
    Handover(Rewind),
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
    /// A stream to carry on writing: its head and opening bytes are out.
    Stream { stream: Stream, http10: bool },
}

/// Serves requests on `tcp` for as long as they are ones the direct path
/// answers.
pub async fn serve(direct: &Direct, tcp: TcpStream) -> Outcome {
    // Shared: a parked long poll's answer and a caught-up stream's events
    // are written by their topic's lot.
    let tcp = Arc::new(tcp);
    let mut buf = BytesMut::new();
    let mut fresh = true;
    loop {
        // Boxed: a connection's future is as large as the largest thing it
        // may await, and an idle subscriber should carry room for its
        // stream only, not for reading a head, a long poll or a store read.
        let step = Box::pin(request(direct, &tcp, &mut buf, fresh)).await;
        fresh = false;
        let (after, http10) = match step {
            Step::Hyper => {
                // Nothing else holds the socket once a request is over.
                return match Arc::try_unwrap(tcp) {
                    Ok(tcp) => {
                        let timeout = direct.state.config().write_timeout;
                        Outcome::Handover(Rewind::new(buf.freeze(), tcp, timeout))
                    }
                    Err(_) => Outcome::Closed,
                };
            }
            Step::Closed => return Outcome::Closed,
            Step::Answered { after, http10 } => (after, http10),
            Step::Stream { stream, http10 } => {
                let (lots, chunked) = (&direct.lots, !http10);
                let after = match stream {
                    Stream::Sse(mut outbox) => {
                        write_stream::run(direct, &lots.sse, &tcp, chunked, &mut outbox, &mut buf)
                            .await
                    }
                    Stream::Ndjson(mut outbox) => {
                        write_stream::run(
                            direct,
                            &lots.ndjson,
                            &tcp,
                            chunked,
                            &mut outbox,
                            &mut buf,
                        )
                        .await
                    }
                };
                (after, http10)
            }
        };
        if after == After::Close || http10 || direct.state.shutdown().is_cancelled() {
            // Let the other answers woken with this one go out before this
            // connection's close takes its turn.
            tokio::task::yield_now().await;
            return Outcome::Closed;
        }
    }
}

/// Reads one request head and does what it asks, up to the point where a
/// stream would start.
async fn request(direct: &Direct, tcp: &Arc<TcpStream>, buf: &mut BytesMut, fresh: bool) -> Step {
    let state = &direct.state;
    let head = match read_head(direct, tcp, buf, fresh).await {
        Ok(head) => head,
        Err(step) => return step,
    };
    if let Err(refused) = crate::framing::check(&head.headers) {
        return refuse(direct, tcp, Route::of(&head.path), refused).await;
    }
    if !head.is_plain_get() {
        return Step::Hyper;
    }
    let Some(route) = subscribe::route(&head.path) else {
        return Step::Hyper;
    };
    let counted = Route::from(route);
    metrics::counter!("herald_subscribe_requests_total", "stack" => "direct").increment(1);
    let http10 = head.http10;
    buf.advance(head.len);
    if buf.is_empty() {
        // Give the read space back: an idle subscriber holds no buffer.
        *buf = BytesMut::new();
    }
    // Asked of the socket here, not kept: an idle subscriber's connection
    // should not carry it.
    let peer = tcp.peer_addr().ok();
    let view = head.view(peer);
    // The gate every request passes, as hyper's do in `access::layer`.
    let cors = crate::cors::headers(&state.config().cors, &view);
    let decision = match crate::access::admit(state, &view) {
        Ok(caller) => subscribe::decide(state, &caller, route, &view).await,
        Err(refused) => Decision::Answer(refused.whole()),
    };
    drop(head);
    let decision = with_cors(decision, cors);
    let plan = match decision {
        Decision::Answer(whole) => return answered(direct, tcp, counted, http10, whole).await,
        Decision::Plan(plan) => plan,
    };
    match &plan.mode {
        &Mode::LongPoll { limit, deadline } => {
            let at = (counted, http10);
            serve_long_poll(direct, tcp, buf, &plan, limit, deadline, at).await
        }
        Mode::Stream(kind) => {
            let kind = kind.clone();
            open_stream(direct, tcp, plan, kind, (counted, http10)).await
        }
        // `is_plain_get` leaves every upgrade to hyper.
        Mode::WebSocket => {
            let bug = ApiError::Internal("a WebSocket plan reached the direct path".into());
            answered(direct, tcp, counted, http10, bug.whole()).await
        }
    }
}

/// Adds the CORS headers (if any) to whatever was decided.
fn with_cors(decision: Decision, cors: Option<axum::http::HeaderMap>) -> Decision {
    match decision {
        Decision::Answer(mut whole) => {
            crate::access::extend(&mut whole.headers, cors);
            Decision::Answer(whole)
        }
        Decision::Plan(mut plan) => {
            crate::access::extend(&mut plan.headers, cors);
            Decision::Plan(plan)
        }
    }
}

/// Opens a stream and writes its head at once, with whatever the stream
/// opens with; done here, so that an idle stream carries neither.
async fn open_stream(
    direct: &Direct,
    tcp: &Arc<TcpStream>,
    plan: Plan,
    kind: StreamKind,
    (route, http10): (Route, bool),
) -> Step {
    let chunked = !http10;
    let framing = if chunked {
        Framing::Chunked
    } else {
        Framing::Close
    };
    let head = head::response(http10, StatusCode::OK, &plan.headers, framing, &date());
    let mut stream = match subscribe::open(
        &direct.state,
        plan.topics,
        &plan.cursor,
        kind,
        plan.until,
        plan.slot,
    )
    .await
    {
        Ok(stream) => stream,
        Err(whole) => return answered(direct, tcp, route, http10, whole).await,
    };
    direct.state.responses().count(route, StatusCode::OK);
    let mut out = VecDeque::from([Bytes::from(head)]);
    let mut line = BytesMut::new();
    let written = match &mut stream {
        Stream::Sse(outbox) => {
            write_stream::flush(direct, tcp, chunked, outbox, &mut out, &mut line).await
        }
        Stream::Ndjson(outbox) => {
            write_stream::flush(direct, tcp, chunked, outbox, &mut out, &mut line).await
        }
    };
    match written {
        Ok(false) => Step::Stream { stream, http10 },
        Ok(true) => Step::Answered {
            after: if chunked { After::Next } else { After::Close },
            http10,
        },
        Err(_) => Step::Closed,
    }
}

/// Reads until a whole request head is in `buf`; or says what became of
/// the connection instead (hyper's to serve, refused, timed out, closed).
async fn read_head(
    direct: &Direct,
    tcp: &TcpStream,
    buf: &mut BytesMut,
    fresh: bool,
) -> Result<head::RequestHead, Step> {
    let config = direct.state.config();
    // A kept-alive connection may sit idle for a while; once a head has
    // begun (or on a new connection, which is opened to send one), it must
    // arrive whole within the head timeout.
    let mut idle = !fresh && buf.is_empty();
    let mut deadline = Instant::now()
        + if idle {
            config.idle_timeout
        } else {
            config.head_timeout
        };
    loop {
        if !buf.is_empty() {
            match head::parse(buf) {
                Parsed::Head(head) => return Ok(head),
                Parsed::Partial if buf.len() < MAX_HEAD => {}
                // Answered in herald's JSON, which hyper's own answers to
                // these lack.
                // No path read whole, so no route.
                Parsed::Partial => {
                    return Err(refuse(direct, tcp, Route::Other, ApiError::HeadTooLarge).await);
                }
                Parsed::Malformed => {
                    let bad = ApiError::BadRequest("this is not an HTTP/1 request head".into());
                    return Err(refuse(direct, tcp, Route::Other, bad).await);
                }
                Parsed::Foreign => return Err(Step::Hyper),
            }
        }
        let read = tokio::select! {
            read = socket::read_some(tcp, buf) => read,
            () = tokio::time::sleep_until(deadline) => return Err(too_slow(direct, tcp, buf).await),
            () = direct.state.shutdown().cancelled() => return Err(Step::Closed),
        };
        if !matches!(read, Ok(n) if n > 0) {
            return Err(Step::Closed);
        }
        if idle {
            idle = false;
            deadline = Instant::now() + config.head_timeout;
        }
    }
}

/// A long poll, parked in its topic's lot when it has one topic (the lot's
/// task may write its answer), waiting on the fan-out otherwise.
async fn serve_long_poll(
    direct: &Direct,
    tcp: &Arc<TcpStream>,
    buf: &mut BytesMut,
    plan: &Plan,
    limit: usize,
    deadline: Instant,
    (route, http10): (Route, bool),
) -> Step {
    let state = &direct.state;
    let polled = if let [topic] = plan.topics.as_slice() {
        let mut parking = Parking::join(&direct.lots.polls, topic, tcp, http10, plan, limit);
        let polled = tokio::select! {
            polled = long_poll::run(state, plan, limit, deadline, &mut parking) => Some(polled),
            () = client_gone(tcp, buf) => None,
        };
        match polled {
            Some(polled) => polled,
            // Gone, or sent too much: unless the lot is answering already
            // (then the answer is finished, as the client may still read).
            None => match parking.stop().await {
                Some(answered) => Polled::Answered(answered),
                None => return Step::Closed,
            },
        }
    } else {
        let mut watches = state.hub().watches(&plan.topics);
        tokio::select! {
            polled = long_poll::run(state, plan, limit, deadline, &mut watches) => match polled {
                Polled::Answer(whole) => Polled::Answer(whole),
                Polled::Answered(never) => match never {},
            },
            () = client_gone(tcp, buf) => return Step::Closed,
        }
    };
    match polled {
        Polled::Answer(whole) => answered(direct, tcp, route, http10, whole).await,
        // The lot wrote the answer (always a `200`) but for these bytes.
        Polled::Answered(Ok(mut rest)) => {
            state.responses().count(route, StatusCode::OK);
            Step::Answered {
                after: after(socket::write_all(tcp, &mut rest, direct.write_timeout()).await),
                http10,
            }
        }
        Polled::Answered(Err(park::Lost)) => {
            state.responses().count(route, StatusCode::OK);
            Step::Closed
        }
    }
}

/// The head timeout passed: a connection that sent part of a head is told
/// (`408`, as hyper would say it, in herald's JSON); one that sent nothing
/// is closed.
async fn too_slow(direct: &Direct, tcp: &TcpStream, buf: &BytesMut) -> Step {
    if buf.is_empty() {
        return Step::Closed;
    }
    let late = ApiError::Timeout("the request head did not arrive in time".into());
    refuse(direct, tcp, Route::Other, late).await
}

/// Answers a head the server will not read on, and closes the connection:
/// where that request ends, and so where the next begins, is unknown.
async fn refuse(direct: &Direct, tcp: &TcpStream, route: Route, why: ApiError) -> Step {
    let _ = answered(direct, tcp, route, false, closing(why.whole())).await;
    socket::linger(tcp).await;
    Step::Closed
}

/// `whole` with `Connection: close`: the last answer on its connection.
fn closing(mut whole: Whole) -> Whole {
    whole.headers.insert(
        axum::http::header::CONNECTION,
        axum::http::HeaderValue::from_static("close"),
    );
    whole
}

/// Writes a whole answer (status, headers, body) as hyper would, and
/// counts it.
async fn answered(
    direct: &Direct,
    tcp: &TcpStream,
    route: Route,
    http10: bool,
    whole: Whole,
) -> Step {
    let Whole {
        status,
        headers,
        body,
    } = whole;
    direct.state.responses().count(route, status);
    let head = head::response(
        http10,
        status,
        &headers,
        Framing::Length(body.len()),
        &date(),
    );
    let mut out = VecDeque::from([Bytes::from(head)]);
    if head::has_body(status) && !body.is_empty() {
        out.push_back(body);
    }
    Step::Answered {
        after: after(socket::write_all(tcp, &mut out, direct.write_timeout()).await),
        http10,
    }
}

fn after(written: std::io::Result<()>) -> After {
    match written {
        Ok(()) => After::Next,
        Err(_) => After::Close,
    }
}

/// Resolves when the client has gone (end of stream, a read error) or has
/// sent more than [`MAX_HEAD`] while waiting for its answer; what it sends
/// meanwhile is kept in `buf` as its next request.
async fn client_gone(tcp: &TcpStream, buf: &mut BytesMut) {
    loop {
        match socket::read_some(tcp, buf).await {
            Ok(n) if n > 0 && buf.len() <= MAX_HEAD => {}
            _ => return,
        }
    }
}

/// The `date` header's value, now.
fn date() -> String {
    httpdate::fmt_http_date(std::time::SystemTime::now())
}
