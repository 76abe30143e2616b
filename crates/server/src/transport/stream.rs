//! HTTP streaming: one JSON event per line (NDJSON). hyper frames it with
//! chunked encoding on HTTP/1.1 and delimits it by closing the connection
//! on HTTP/1.0, which has no chunked encoding.

use std::collections::VecDeque;

use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use herald_core::Subscription;
use herald_core::subscription::Next;
use herald_protocol::{json, ndjson};

use super::{Encode, Outbox, gap_data, streaming_body};
use crate::negotiate::Transport;

/// One JSON object per line.
pub struct NdjsonEncoder;

impl Encode for NdjsonEncoder {
    fn encode(&mut self, sub: &Subscription, next: &Next, out: &mut VecDeque<Bytes>) {
        match next {
            Next::Event(e) if sub.is_multi() => {
                // The shared object without its `}`, then this subscriber's cursor.
                let json = e.json();
                out.push_back(json.slice(..json.len().saturating_sub(1)));
                out.push_back(super::cursor_tail(sub, "}\n"));
            }
            Next::Event(e) => out.push_back(e.json_line().clone()),
            Next::Gap { topic, cursor } => {
                let data = gap_data(topic.as_str(), cursor);
                out.push_back(ndjson::line(&json::encode_event(
                    None,
                    topic.as_str(),
                    "gap",
                    &data,
                    None,
                )));
            }
            Next::KeepAlive => out.push_back(Bytes::from_static(ndjson::KEEP_ALIVE)),
            Next::End(_) => {}
        }
    }
}

/// Answers with an NDJSON stream of `sub`.
pub fn respond(sub: Subscription) -> Response {
    let mut response = streaming_body(outbox(sub)).into_response();
    set_headers(response.headers_mut());
    response
}

/// The NDJSON stream of `sub`, ready to be written.
pub fn outbox(sub: Subscription) -> Outbox<NdjsonEncoder> {
    Outbox::new(sub, Transport::Stream, None, NdjsonEncoder)
}

/// The headers of every NDJSON stream.
pub fn set_headers(h: &mut HeaderMap) {
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/x-ndjson"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
}
