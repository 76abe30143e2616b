//! The one decision about a subscribe request — `GET /topics/{topic}`,
//! `GET /subscribe?topic=…`, or the seed article's `GET /api/notifications`
//! (the topic `api.notifications`) — whichever HTTP stack read it.
//!
//! [`decide`] takes what the request is ([`RequestView`]) and returns either
//! a finished answer (an error, a short poll's page or its `204`) or a
//! [`Plan`] for a stream or a long poll, which the stack then carries out
//! by moving bytes. Nothing else reads a subscribe request: a rule about
//! who may subscribe, from where, or how often goes here, and holds on
//! every transport and every way in.

use axum::http::HeaderMap;
use bytes::Bytes;
use herald_core::{CursorInput, Topic};
use tokio::time::Instant;

pub use super::route::{Route, route};
use crate::access::Caller;
use crate::answer::Whole;
use crate::error::ApiError;
use crate::negotiate::{Transport, negotiate};
pub use crate::plan::{Mode, Plan, StreamKind};
use crate::publish::topic;
use crate::query::Query;
use crate::request::RequestView;
use crate::seed::{NOTIFICATION_COMMENT, NOTIFICATIONS_TOPIC};
use crate::state::AppState;
use crate::transport::{poll, sse, stream};

/// Most topics one `/subscribe` request may name, unless configured
/// otherwise (`--max-topics-per-subscription`).
pub const MAX_TOPICS: usize = 64;

/// What a subscribe request comes to.
#[derive(Debug)]
pub enum Decision {
    /// Answered: an error, or a short poll.
    Answer(Whole),
    /// A stream or a long poll to carry out.
    Plan(Plan),
}

/// Decides a request for `route`: reads its topics, transport, cursor and
/// limits; answers short polls and errors at once.
pub async fn decide(
    state: &AppState,
    caller: &Caller,
    route: Route<'_>,
    request: &RequestView<'_>,
) -> Decision {
    match read(state, caller, route, request) {
        Err(e) => Decision::Answer(e.whole()),
        Ok(Read::ShortPoll {
            topics,
            cursor,
            limit,
        }) => Decision::Answer(poll::page(state, &topics, &cursor, limit).await),
        Ok(Read::Plan(plan)) => Decision::Plan(plan),
    }
}

/// What reading a request gives: a short poll to answer now, or a plan.
enum Read {
    ShortPoll {
        topics: Vec<Topic>,
        cursor: CursorInput,
        limit: usize,
    },
    Plan(Plan),
}

fn read(
    state: &AppState,
    caller: &Caller,
    route: Route<'_>,
    request: &RequestView<'_>,
) -> Result<Read, ApiError> {
    let query = Query::parse(request.query);
    let topics = match route {
        Route::Topic(segment) => vec![path_topic(segment)?],
        Route::Subscribe => {
            query_topics(&query, state.config().limits.max_topics_per_subscription)?
        }
        Route::Notifications => vec![topic(NOTIFICATIONS_TOPIC)?],
    };
    // The article's client is an EventSource: SSE whatever it asks.
    let (transport, comment) = match route {
        Route::Notifications => (
            Transport::Sse,
            Some(Bytes::from_static(NOTIFICATION_COMMENT)),
        ),
        _ => (negotiate(request, &query)?, None),
    };
    // From the beginning for a short poll, from now for everything else.
    let default = if transport == Transport::Poll {
        CursorInput::All
    } else {
        CursorInput::Now
    };
    let cursor = cursor(request.headers, &query, default);
    let mut headers = HeaderMap::new();
    let mode = match transport {
        Transport::Poll => {
            let limit = poll::limit(&query)?;
            return Ok(Read::ShortPoll {
                topics,
                cursor,
                limit,
            });
        }
        Transport::LongPoll => Mode::LongPoll {
            limit: poll::limit(&query)?,
            deadline: Instant::now() + long_poll_timeout(state, &query)?,
        },
        Transport::Sse => {
            sse::set_headers(&mut headers);
            Mode::Stream(StreamKind::Sse { comment })
        }
        Transport::Stream => {
            stream::set_headers(&mut headers);
            Mode::Stream(StreamKind::Ndjson)
        }
        Transport::WebSocket => Mode::WebSocket,
    };
    Ok(Read::Plan(Plan {
        topics,
        cursor,
        mode,
        headers,
        until: caller.until(),
        slot: state.limits().subscription(&caller.client)?,
    }))
}

/// The cursor a request carries: the `Last-Event-ID` header wins over the
/// `last-event-id` query parameter (which browsers' EventSource needs).
pub fn cursor(headers: &HeaderMap, query: &Query, default: CursorInput) -> CursorInput {
    let header = headers
        .get("last-event-id")
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
    let raw = header.as_deref().or_else(|| query.get("last-event-id"));
    CursorInput::parse(raw, default)
}

/// The topic of `/topics/{segment}`, percent-decoded.
fn path_topic(segment: &str) -> Result<Topic, ApiError> {
    match percent_encoding::percent_decode_str(segment).decode_utf8() {
        Ok(name) => topic(&name),
        // Worded as the router's path extractor words it.
        Err(_) => Err(ApiError::BadTopic {
            name: String::new(),
            reason: "Invalid URL: Invalid UTF-8 in `topic`".into(),
        }),
    }
}

/// The topics of `/subscribe?topic=…&topic=…`, each once, in order.
fn query_topics(query: &Query, max: usize) -> Result<Vec<Topic>, ApiError> {
    let mut topics: Vec<Topic> = Vec::new();
    for name in query.all("topic") {
        let t = topic(name)?;
        if !topics.contains(&t) {
            topics.push(t);
        }
    }
    if topics.is_empty() {
        return Err(ApiError::bad_query("topic", "name at least one topic"));
    }
    if topics.len() > max {
        crate::limits::refused("topics_per_subscription");
        return Err(ApiError::bad_query(
            "topic",
            format!("at most {max} topics"),
        ));
    }
    Ok(topics)
}

/// Reads `?timeout=SECONDS`: the configured default when absent, capped at
/// the configured maximum; negative or non-numbers are a `400`.
fn long_poll_timeout(state: &AppState, query: &Query) -> Result<std::time::Duration, ApiError> {
    let config = state.config();
    let secs = query.seconds("timeout", config.long_poll_default.as_secs_f64(), 1e9)?;
    Ok(std::time::Duration::from_secs_f64(secs).min(config.long_poll_max))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_the_two_subscribe_paths_only() {
        assert_eq!(route("/subscribe"), Some(Route::Subscribe));
        assert_eq!(route("/topics/a%20b"), Some(Route::Topic("a%20b")));
        assert_eq!(route("/api/notifications"), Some(Route::Notifications));
        for other in [
            "/topics/",
            "/topics/a/b",
            "/topics",
            "/subscribe/",
            "/",
            "/tasks/x",
        ] {
            assert_eq!(route(other), None, "{other}");
        }
    }

    #[test]
    fn a_segment_is_percent_decoded_and_checked() {
        assert_eq!(path_topic("a%3Ab").unwrap().as_str(), "a:b");
        assert!(matches!(
            path_topic("a%2Fb"),
            Err(ApiError::BadTopic { .. })
        ));
        assert!(matches!(path_topic("%FF"), Err(ApiError::BadTopic { .. })));
    }

    #[test]
    fn repeated_topics_count_once_and_at_most_64() {
        let q = Query::parse(Some("topic=a&topic=b&topic=a"));
        let names: Vec<String> = query_topics(&q, MAX_TOPICS)
            .unwrap()
            .iter()
            .map(|t| t.as_str().to_owned())
            .collect();
        assert_eq!(names, ["a", "b"]);
        let many: Vec<String> = (0..=MAX_TOPICS).map(|i| format!("topic=t{i}")).collect();
        assert!(query_topics(&Query::parse(Some(&many.join("&"))), MAX_TOPICS).is_err());
        assert!(query_topics(&Query::parse(Some("x=1")), MAX_TOPICS).is_err());
    }
}
