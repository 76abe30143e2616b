//! What a request is, whichever HTTP stack read it: hyper's parts or the
//! direct path's own head. Decisions about a request take this view, so a
//! rule written once holds on every way in.

use std::net::SocketAddr;

use axum::http::request::Parts;
use axum::http::{HeaderMap, Method, Version, header};

/// A request as the rules see it: no body (a subscribe request has none).
#[derive(Debug, Clone, Copy)]
pub struct RequestView<'a> {
    pub method: &'a Method,
    /// The path as sent, still percent-encoded, without the query.
    pub path: &'a str,
    pub query: Option<&'a str>,
    pub headers: &'a HeaderMap,
    pub version: Version,
    /// The client's address, when the stack knows it.
    pub peer: Option<SocketAddr>,
    /// The host the client addressed (`Host`, or HTTP/2's `:authority`).
    pub authority: Option<&'a str>,
    /// The `:protocol` of an HTTP/2 extended `CONNECT` (RFC 8441):
    /// `websocket` is HTTP/2's WebSocket upgrade. None on HTTP/1.
    pub protocol: Option<&'a str>,
}

impl<'a> RequestView<'a> {
    /// A request as hyper read it.
    pub fn of(parts: &'a Parts) -> RequestView<'a> {
        Self::from_pieces(
            &parts.method,
            &parts.uri,
            &parts.headers,
            parts.version,
            &parts.extensions,
        )
    }

    /// A whole request as hyper read it (its body not yet taken).
    pub fn of_request<B>(request: &'a axum::http::Request<B>) -> RequestView<'a> {
        Self::from_pieces(
            request.method(),
            request.uri(),
            request.headers(),
            request.version(),
            request.extensions(),
        )
    }

    fn from_pieces(
        method: &'a Method,
        uri: &'a axum::http::Uri,
        headers: &'a HeaderMap,
        version: Version,
        extensions: &'a axum::http::Extensions,
    ) -> RequestView<'a> {
        RequestView {
            method,
            path: uri.path(),
            query: uri.query(),
            headers,
            version,
            peer: extensions.get::<Peer>().map(|p| p.0),
            authority: uri
                .authority()
                .map(|a| a.as_str())
                .or_else(|| host(headers)),
            protocol: extensions
                .get::<hyper::ext::Protocol>()
                .map(hyper::ext::Protocol::as_str),
        }
    }
}

/// The `Host` header, when it is text.
pub fn host(headers: &HeaderMap) -> Option<&str> {
    headers.get(header::HOST).and_then(|h| h.to_str().ok())
}

/// The client's address, put on every request hyper reads (as an
/// extension) by the accept loop.
#[derive(Debug, Clone, Copy)]
pub struct Peer(pub SocketAddr);
