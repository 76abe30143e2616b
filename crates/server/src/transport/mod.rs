//! The five transports, one file each, and what the streaming ones share: a
//! body that pulls from a [`Subscription`] and pushes already-encoded bytes.

use std::collections::VecDeque;
use std::convert::Infallible;

use axum::body::Body;
use bytes::Bytes;
use futures_util::stream::unfold;
use herald_core::Subscription;
use herald_core::subscription::{EndReason, Next};
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
            EndReason::Shutdown | EndReason::Expired => {}
        }
    }
}

/// Turns what a subscription yields into wire bytes for one transport.
pub trait Encode: Send + 'static {
    /// Pushes the bytes for `next` (an event, gap or keep-alive) onto `out`.
    fn encode(&mut self, sub: &Subscription, next: &Next, out: &mut VecDeque<Bytes>);
}

/// A response body that streams a subscription through `encoder`, opening
/// with `first`. Everything the stream holds — the subscription, its watches,
/// the gauge — is dropped when hyper drops the body, i.e. when the client
/// goes away.
pub fn streaming_body<E: Encode>(
    sub: Subscription,
    transport: Transport,
    first: Option<Bytes>,
    encoder: E,
) -> Body {
    struct State<E> {
        sub: Subscription,
        encoder: E,
        queue: VecDeque<Bytes>,
        counters: StreamCounters,
        transport: Transport,
        _gauge: SubscriptionGauge,
    }
    let state = State {
        sub,
        encoder,
        queue: first.into_iter().collect(),
        counters: StreamCounters::default(),
        transport,
        _gauge: SubscriptionGauge::open(transport),
    };
    let body = unfold(state, |mut s| async move {
        loop {
            if let Some(bytes) = s.queue.pop_front() {
                return Some((Ok::<_, Infallible>(bytes), s));
            }
            let next = s.sub.next().await;
            match &next {
                Next::End(reason) => {
                    s.counters.ended(reason, s.transport);
                    return None;
                }
                Next::Event(_) => s.counters.delivered.increment(1),
                Next::Gap { .. } | Next::KeepAlive => {}
            }
            s.encoder.encode(&s.sub, &next, &mut s.queue);
        }
    });
    Body::from_stream(body)
}

/// `,"cursor":"…"` plus `end`: what a multi-topic subscriber's JSON frames
/// carry after the shared event object, so every transport hands out a
/// cursor that restores all its topics.
pub fn cursor_tail(sub: &Subscription, end: &str) -> Bytes {
    let cursor = herald_protocol::json::quote(&sub.cursor_text());
    Bytes::from(format!(",\"cursor\":{cursor}{end}"))
}

/// The data of a `gap` signal: the cursor given, and the topic it was for.
pub fn gap_data(topic: &str, cursor: &str) -> String {
    serde_json::json!({ "cursor": cursor, "topic": topic }).to_string()
}
