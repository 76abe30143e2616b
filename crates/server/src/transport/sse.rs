//! Server-Sent Events: `text/event-stream`, one encoded event after another.

use std::collections::VecDeque;

use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use bytes::Bytes;
use herald_core::subscription::{EndReason, Next};
use herald_core::{Event, Subscription};
use herald_protocol::sse;

use super::{Encode, Outbox, Signal};
use crate::answer::Whole;
use crate::negotiate::Transport;
use crate::state::AppState;

/// How events are laid out on an SSE stream.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SseEncoder {
    /// A comment line written inside every event, after its `event:` line
    /// (the notification route of the seed article has one).
    pub comment: Option<Bytes>,
}

impl Encode for SseEncoder {
    fn encode(&mut self, sub: &Subscription, next: &Next, out: &mut VecDeque<Bytes>) {
        match next {
            Next::Event(e) => {
                let encoded = e.sse();
                if sub.is_multi() {
                    // The id a client keeps must restore every topic.
                    out.push_back(sse::encode_id_line(&sub.cursor_text()));
                    out.push_back(encoded.without_id());
                } else if let Some(comment) = &self.comment {
                    out.push_back(encoded.head());
                    out.push_back(comment.clone());
                    out.push_back(encoded.data());
                } else {
                    out.push_back(self.shared(e));
                }
            }
            Next::Gap { topic, cursor } => {
                let data = Signal::gap_data(topic.as_str(), cursor);
                out.push_back(gap(topic.as_str(), &data).sse());
            }
            Next::KeepAlive => out.push_back(self.keep_alive()),
            Next::End(EndReason::TokenExpired) => {
                out.push_back(Bytes::from_static(sse::EXPIRED));
            }
            Next::End(_) => {}
        }
    }

    fn shared(&self, event: &Event) -> Bytes {
        event.sse().full()
    }

    fn keep_alive(&self) -> Bytes {
        Bytes::from_static(sse::KEEP_ALIVE)
    }
}

fn gap<'a>(topic: &'a str, data: &'a str) -> Signal<'a> {
    Signal {
        topic,
        kind: "gap",
        data,
    }
}

/// The response headers SPEC requires of every event stream.
pub fn set_headers(h: &mut HeaderMap) {
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
}

/// Answers an SSE request the store cannot serve right now: `200`, the
/// `retry:` preamble, and the end of the stream. A browser's EventSource
/// gives up for good on an error status, but reconnects after this — by
/// when the store may be back.
pub fn retry_later(state: &AppState) -> Whole {
    let mut headers = HeaderMap::new();
    set_headers(&mut headers);
    Whole {
        status: StatusCode::OK,
        headers,
        body: state.sse_preamble(),
    }
}

/// The stream of `sub`, ready to be written. A stream over several topics
/// starts by setting the client's last event id to its starting cursor, so
/// even a reconnect before the first event resumes every topic exactly.
pub fn outbox(state: &AppState, sub: Subscription, encoder: SseEncoder) -> Outbox<SseEncoder> {
    let first = if sub.is_multi() {
        let mut first = state.sse_preamble().to_vec();
        first.extend_from_slice(&sse::encode_id_line(&sub.cursor_text()));
        first.push(b'\n');
        Bytes::from(first)
    } else {
        state.sse_preamble()
    };
    Outbox::new(sub, Transport::Sse, Some(first), encoder)
}
