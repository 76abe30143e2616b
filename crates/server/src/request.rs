//! What a request is, whichever HTTP stack read it: hyper's parts or the
//! direct path's own head. Decisions about a request take this view, so a
//! rule written once holds on every way in.

use std::net::SocketAddr;

use axum::http::request::Parts;
use axum::http::{HeaderMap, Method, Version};

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
    /// The `:protocol` of an HTTP/2 extended `CONNECT` (RFC 8441):
    /// `websocket` is HTTP/2's WebSocket upgrade. None on HTTP/1.
    pub protocol: Option<&'a str>,
}

impl<'a> RequestView<'a> {
    /// A request as hyper read it.
    pub fn of(parts: &'a Parts) -> RequestView<'a> {
        RequestView {
            method: &parts.method,
            path: parts.uri.path(),
            query: parts.uri.query(),
            headers: &parts.headers,
            version: parts.version,
            peer: parts.extensions.get::<Peer>().map(|p| p.0),
            protocol: parts
                .extensions
                .get::<hyper::ext::Protocol>()
                .map(hyper::ext::Protocol::as_str),
        }
    }
}

/// The client's address, put on every request hyper reads (as an
/// extension) by the accept loop.
#[derive(Debug, Clone, Copy)]
pub struct Peer(pub SocketAddr);
