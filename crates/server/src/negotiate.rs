//! Which transport a subscribe request gets, decided in SPEC's order:
//! WebSocket upgrade, SSE, NDJSON stream, long poll, short poll.

use axum::http::{HeaderMap, Method, header};

use crate::error::ApiError;
use crate::query::Query;
use crate::request::RequestView;

/// The five ways a subscriber can receive events; also the `transport`
/// label of the metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    WebSocket,
    Sse,
    Stream,
    LongPoll,
    Poll,
}

impl Transport {
    pub const ALL: [Transport; 5] = [
        Transport::WebSocket,
        Transport::Sse,
        Transport::Stream,
        Transport::LongPoll,
        Transport::Poll,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Transport::WebSocket => "ws",
            Transport::Sse => "sse",
            Transport::Stream => "stream",
            Transport::LongPoll => "long-poll",
            Transport::Poll => "poll",
        }
    }
}

fn header_has(headers: &HeaderMap, name: header::HeaderName, needle: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.to_ascii_lowercase().contains(needle))
}

/// Picks the transport. An unknown `?transport=` value, or `ws` without the
/// upgrade headers, is a `400`; a `CONNECT` for anything but a WebSocket,
/// a `405`.
pub fn negotiate(request: &RequestView<'_>, query: &Query) -> Result<Transport, ApiError> {
    let headers = request.headers;
    let asked = query.get("transport").map(str::to_ascii_lowercase);
    let asked = asked.as_deref();
    // HTTP/2 asks for a WebSocket by an extended CONNECT whose `:protocol`
    // is `websocket` (RFC 8441), as HTTP/1.1 does by `Upgrade`: one
    // transport, whichever version asks.
    if request.method == Method::CONNECT {
        return match request.protocol {
            Some(p) if p.eq_ignore_ascii_case("websocket") => Ok(Transport::WebSocket),
            _ => Err(ApiError::MethodNotAllowed),
        };
    }
    if header_has(headers, header::UPGRADE, "websocket") {
        return Ok(Transport::WebSocket);
    }
    if header_has(headers, header::ACCEPT, "text/event-stream") || asked == Some("sse") {
        return Ok(Transport::Sse);
    }
    if header_has(headers, header::ACCEPT, "application/x-ndjson") || asked == Some("stream") {
        return Ok(Transport::Stream);
    }
    match asked {
        Some("long-poll") => Ok(Transport::LongPoll),
        None | Some("poll") => Ok(Transport::Poll),
        Some("ws" | "websocket") => Err(ApiError::BadRequest(
            "transport=ws needs a WebSocket upgrade request".into(),
        )),
        Some(other) => Err(ApiError::bad_query(
            "transport",
            format!("{other:?} is not one of sse, stream, long-poll, poll, ws"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::{HeaderValue, Version};

    fn view<'a>(method: &'a Method, headers: &'a HeaderMap) -> RequestView<'a> {
        RequestView {
            method,
            path: "/topics/t",
            query: None,
            headers,
            version: Version::HTTP_11,
            peer: None,
            authority: None,
            protocol: None,
        }
    }

    fn pick(headers: &[(&'static str, &'static str)], query: &str) -> Result<Transport, ApiError> {
        let mut map = HeaderMap::new();
        for (k, v) in headers {
            map.append(*k, HeaderValue::from_static(v));
        }
        negotiate(&view(&Method::GET, &map), &Query::parse(Some(query)))
    }

    #[test]
    fn an_extended_connect_for_websocket_is_the_http2_upgrade() {
        let headers = HeaderMap::new();
        let connect = |protocol| {
            let view = RequestView {
                version: Version::HTTP_2,
                protocol,
                ..view(&Method::CONNECT, &headers)
            };
            negotiate(&view, &Query::parse(Some("transport=sse"))).ok()
        };
        assert_eq!(connect(Some("websocket")), Some(Transport::WebSocket));
        assert_eq!(connect(Some("WebSocket")), Some(Transport::WebSocket));
        assert_eq!(connect(Some("webtransport")), None);
        assert_eq!(connect(None), None);
    }

    #[test]
    fn follows_the_spec_table_in_order() {
        use Transport::*;
        let ws = ("upgrade", "websocket");
        let sse = ("accept", "text/event-stream");
        let nd = ("accept", "application/x-ndjson");
        assert_eq!(pick(&[ws, sse], "transport=poll").ok(), Some(WebSocket));
        assert_eq!(pick(&[sse], "transport=long-poll").ok(), Some(Sse));
        assert_eq!(pick(&[nd], "transport=sse").ok(), Some(Sse));
        assert_eq!(pick(&[nd], "transport=long-poll").ok(), Some(Stream));
        assert_eq!(pick(&[], "transport=stream").ok(), Some(Stream));
        assert_eq!(pick(&[], "transport=long-poll").ok(), Some(LongPoll));
        assert_eq!(pick(&[], "transport=poll").ok(), Some(Poll));
        assert_eq!(pick(&[("accept", "application/json")], "").ok(), Some(Poll));
        assert!(pick(&[], "transport=carrier-pigeon").is_err());
    }
}
