//! What a request is, whichever HTTP stack read it: hyper's parts or the
//! direct path's own head. Decisions about a request take this view, so a
//! rule written once holds on every way in.

use std::net::SocketAddr;

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
}

impl<'a> RequestView<'a> {
    /// The view of a request hyper read.
    pub fn of<B>(request: &'a axum::http::Request<B>) -> RequestView<'a> {
        let headers = request.headers();
        RequestView {
            method: request.method(),
            path: request.uri().path(),
            query: request.uri().query(),
            headers,
            version: request.version(),
            peer: request.extensions().get::<Peer>().map(|p| p.0),
            authority: request
                .uri()
                .authority()
                .map(|a| a.as_str())
                .or_else(|| host(headers)),
        }
    }

    /// The view of a request from its parts (once the body is taken).
    pub fn of_parts(parts: &'a axum::http::request::Parts) -> RequestView<'a> {
        let headers = &parts.headers;
        RequestView {
            method: &parts.method,
            path: parts.uri.path(),
            query: parts.uri.query(),
            headers,
            version: parts.version,
            peer: parts.extensions.get::<Peer>().map(|p| p.0),
            authority: parts
                .uri
                .authority()
                .map(|a| a.as_str())
                .or_else(|| host(headers)),
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
