//! The five transports, one file each, and what the streaming ones share:
//! an [`Outbox`] that pulls from a [`Subscription`] and holds the encoded
//! bytes until a writer — hyper's body ([`streaming_body`]) or the direct
//! path — takes them. Every byte of an event on the wire comes from the
//! protocol crate's encoders, through an [`Encode`] here.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::future::Future;

use axum::body::Body;
use bytes::{Bytes, BytesMut};
use futures_util::FutureExt;
use futures_util::stream::unfold;
use herald_core::subscription::{EndReason, Next};
use herald_core::{Event, Subscription};
use herald_protocol::{json, ndjson};
use metrics::{Counter, Gauge};

use crate::negotiate::Transport;

pub mod long_poll;
pub mod poll;
pub mod sse;
pub mod stream;
pub mod ws;

/// Counts one open subscription in `herald_subscriptions{transport}` for as
/// long as it lives; dropping it (the client went away) uncounts it.
#[derive(Debug)]
pub struct SubscriptionGauge(Gauge);

impl SubscriptionGauge {
    pub fn open(transport: Transport) -> SubscriptionGauge {
        let gauge = metrics::gauge!("herald_subscriptions", "transport" => transport.label());
        gauge.increment(1.0);
        SubscriptionGauge(gauge)
    }
}

impl Drop for SubscriptionGauge {
    fn drop(&mut self) {
        self.0.decrement(1.0);
    }
}

/// The counters a stream touches per event, looked up once per stream.
#[derive(Debug)]
pub struct StreamCounters {
    pub delivered: Counter,
    pub dropped: Counter,
}

impl Default for StreamCounters {
    fn default() -> StreamCounters {
        StreamCounters {
            delivered: metrics::counter!("herald_events_delivered_total"),
            dropped: metrics::counter!("herald_subscribers_dropped_total"),
        }
    }
}

impl StreamCounters {
    /// Notes how a stream ended.
    pub fn ended(&self, reason: &EndReason, transport: Transport) {
        match reason {
            EndReason::Slow => {
                self.dropped.increment(1);
                tracing::debug!(transport = transport.label(), "subscriber cut off as slow");
            }
            EndReason::Store(e) => tracing::warn!(error = %e, "stream ended by a store error"),
            EndReason::Shutdown | EndReason::Expired | EndReason::TokenExpired => {}
        }
    }
}

/// Turns what a subscription yields into wire bytes for one transport.
pub trait Encode: Send + 'static {
    /// Pushes the bytes for `next` (an event, gap or keep-alive) onto `out`.
    fn encode(&mut self, sub: &Subscription, next: &Next, out: &mut VecDeque<Bytes>);

    /// The bytes of `event` for a caught-up subscriber of its topic alone
    /// whose encoder is this type's default: the same for every such
    /// subscriber, so one writer serving many streams at once (the direct
    /// path's lots) encodes it once and writes it to each. An encoder that
    /// differs from the default (an SSE comment line per event) may encode
    /// otherwise; its streams stay out of the lots.
    fn shared(&self, event: &Event) -> Bytes;

    /// The keep-alive, as `encode` gives it.
    fn keep_alive(&self) -> Bytes;
}

/// An event herald sends that is not stored and moves no cursor (no id):
/// `gap` on every stream, `wait` on task streams.
#[derive(Debug, Clone, Copy)]
pub struct Signal<'a> {
    pub topic: &'a str,
    pub kind: &'a str,
    pub data: &'a str,
}

impl Signal<'_> {
    /// The `gap` signal's data for `cursor` (see `docs/design.md` § Gaps).
    pub fn gap_data(topic: &str, cursor: &str) -> String {
        json::gap_data(topic, cursor)
    }

    pub fn sse(&self) -> Bytes {
        herald_protocol::sse::encode_event(None, self.kind, self.data).full()
    }

    /// The JSON object of WebSocket frames (no newline).
    pub fn json(&self) -> String {
        json::encode_event(None, self.topic, self.kind, self.data, None)
    }

    pub fn ndjson(&self) -> Bytes {
        ndjson::line(&self.json())
    }
}

/// What a stream has to send next: the subscription, its encoder and the
/// bytes encoded but not yet written. Both ways a stream reaches a socket —
/// hyper's body ([`streaming_body`]) and the direct path — drain one of
/// these, so coalescing and accounting live in one place.
pub struct Outbox<E> {
    sub: Subscription,
    encoder: E,
    queue: VecDeque<Bytes>,
    counters: StreamCounters,
    transport: Transport,
    /// Bytes in `queue`, kept as items come and go.
    queued: usize,
    /// The subscription ended; what is queued is the last to send.
    ended: bool,
    _gauge: SubscriptionGauge,
    /// The client's place under its limit, given back with the stream
    /// (boxed: most streams have none, and every idle one holds this).
    _slot: Option<Box<crate::limits::Slot>>,
}

impl<E: Encode> Outbox<E> {
    /// An outbox for `sub` that opens with `first`; counts the subscription
    /// in `herald_subscriptions` for as long as it lives.
    pub fn new(sub: Subscription, transport: Transport, first: Option<Bytes>, encoder: E) -> Self {
        let queue: VecDeque<Bytes> = first.into_iter().collect();
        Outbox {
            sub,
            encoder,
            queued: queue.iter().map(Bytes::len).sum(),
            queue,
            counters: StreamCounters::default(),
            transport,
            ended: false,
            _gauge: SubscriptionGauge::open(transport),
            _slot: None,
        }
    }

    /// Holds the client's place under its limit for as long as the stream.
    pub fn hold(&mut self, slot: Option<crate::limits::Slot>) {
        self._slot = slot.map(Box::new);
    }

    /// Waits until there is something to send, then takes whatever else is
    /// already waiting too (up to [`COALESCE_BYTES`]), so a subscriber that
    /// is behind gets one write, not one per event. Returns at once if
    /// bytes are queued or the subscription has ended. Cancel-safe: if
    /// dropped while waiting, nothing is lost.
    pub async fn fill(&mut self) {
        if !self.queue.is_empty() || self.ended {
            return;
        }
        let next = self.sub.next().await;
        if self.take(next) {
            while self.sub.is_live() && self.queued < COALESCE_BYTES {
                let Some(next) = self.sub.next().now_or_never() else {
                    break;
                };
                if !self.take(next) {
                    break;
                }
            }
        }
    }

    /// The subscription, for a writer that hands its live part elsewhere
    /// for a while (the direct path's lots).
    pub fn subscription(&mut self) -> &mut Subscription {
        &mut self.sub
    }

    pub fn encoder(&self) -> &E {
        &self.encoder
    }

    /// Queues `next` as if the subscription had yielded it.
    pub fn push(&mut self, next: Next) {
        self.take(next);
    }

    /// The writer gave up on the client (it stopped reading): counted as a
    /// subscriber cut off for being slow.
    pub fn cut_off_as_slow(&mut self) {
        // Once: a stream that already ended (cut off by its ring, say) is
        // not counted again when its last write fails too.
        if !self.ended {
            self.ended = true;
            self.counters.ended(&EndReason::Slow, self.transport);
        }
    }

    /// Nothing queued and nothing more to come.
    pub fn is_finished(&self) -> bool {
        self.ended && self.queue.is_empty()
    }

    /// Moves the queued bytes, in order, to the end of `out`; returns how
    /// many bytes that was.
    pub fn drain_into(&mut self, out: &mut VecDeque<Bytes>) -> usize {
        out.extend(self.queue.drain(..));
        std::mem::take(&mut self.queued)
    }

    /// The queued bytes as one buffer (copied only if there are several).
    pub fn drain_joined(&mut self) -> Option<Bytes> {
        let bytes = match self.queue.len() {
            0 => return None,
            1 => self.queue.pop_front().unwrap_or_default(),
            _ => {
                let mut joined = BytesMut::with_capacity(self.queued);
                for part in self.queue.drain(..) {
                    joined.extend_from_slice(&part);
                }
                joined.freeze()
            }
        };
        self.queued = 0;
        Some(bytes)
    }

    /// Queues the bytes for `next`; `false` once the subscription ended.
    fn take(&mut self, next: Next) -> bool {
        let more = match &next {
            Next::End(reason) => {
                self.counters.ended(reason, self.transport);
                self.ended = true;
                false
            }
            Next::Event(_) => {
                self.counters.delivered.increment(1);
                true
            }
            Next::Gap { .. } | Next::KeepAlive => true,
        };
        // An end may have last words (`expired`).
        let before = self.queue.len();
        self.encoder.encode(&self.sub, &next, &mut self.queue);
        self.queued += self
            .queue
            .iter()
            .skip(before)
            .map(Bytes::len)
            .sum::<usize>();
        more
    }
}

/// What a streaming response body pulls its bytes from.
pub trait Fill: Send + 'static {
    /// Waits for the next bytes to send; `None` once the stream is over.
    fn next_bytes(&mut self) -> impl Future<Output = Option<Bytes>> + Send;
}

impl<E: Encode> Fill for Outbox<E> {
    async fn next_bytes(&mut self) -> Option<Bytes> {
        self.fill().await;
        self.drain_joined()
    }
}

/// A response body that streams `source` through hyper. Everything the
/// stream holds — a subscription, its watches, the gauge — is dropped when
/// hyper drops the body, i.e. when the client goes away.
pub fn streaming_body<F: Fill>(source: F) -> Body {
    let body = unfold(source, |mut source| async move {
        let bytes = source.next_bytes().await?;
        Some((Ok::<_, Infallible>(bytes), source))
    });
    Body::from_stream(body)
}

/// How much a stream gathers into one write when events are waiting.
const COALESCE_BYTES: usize = 64 * 1024;

/// `,"cursor":"…"` plus `end`: what a multi-topic subscriber's JSON frames
/// carry after the shared event object, so every transport hands out a
/// cursor that restores all its topics.
pub fn cursor_tail(sub: &Subscription, end: &str) -> Bytes {
    let cursor = herald_protocol::json::quote(&sub.cursor_text());
    Bytes::from(format!(",\"cursor\":{cursor}{end}"))
}
