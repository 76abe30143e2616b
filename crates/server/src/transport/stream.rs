//! HTTP streaming: one JSON event per line (NDJSON), chunked on HTTP/1.1
//! and delimited by the connection's close on HTTP/1.0, which has no
//! chunked encoding.

use std::collections::VecDeque;

use axum::http::{HeaderMap, HeaderValue, header};
use bytes::Bytes;
use herald_core::subscription::{EndReason, Next};
use herald_core::{Event, Subscription};
use herald_protocol::ndjson;

use super::{Encode, Outbox, Signal};
use crate::negotiate::Transport;

/// One JSON object per line.
#[derive(Debug, Default, PartialEq, Eq)]
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
            Next::Event(e) => out.push_back(self.shared(e)),
            Next::Gap { topic, cursor } => {
                let data = Signal::gap_data(topic.as_str(), cursor);
                let gap = Signal {
                    topic: topic.as_str(),
                    kind: "gap",
                    data: &data,
                };
                out.push_back(gap.ndjson());
            }
            Next::KeepAlive => out.push_back(self.keep_alive()),
            Next::End(EndReason::TokenExpired) => {
                out.push_back(Bytes::from_static(ndjson::EXPIRED));
            }
            Next::End(_) => {}
        }
    }

    fn shared(&self, event: &Event) -> Bytes {
        event.json_line().clone()
    }

    fn keep_alive(&self) -> Bytes {
        Bytes::from_static(ndjson::KEEP_ALIVE)
    }
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
