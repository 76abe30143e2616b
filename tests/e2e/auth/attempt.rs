//! One request of a table, sent on a given way in, and what it got:
//! plain HTTP through reqwest (a stream's head only), or a WebSocket
//! handshake through tokio-tungstenite.

use reqwest::Method;
use reqwest::header::HeaderMap;
use tokio_tungstenite::tungstenite;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use super::{Refusal, Way, assert_refused, bearer};
use crate::harness::{Server, within};

/// How a row's request is sent.
#[derive(Debug)]
pub(super) enum Send {
    Http {
        method: Method,
        path: String,
        headers: Vec<(&'static str, String)>,
        body: Option<String>,
    },
    /// A WebSocket handshake (HTTP/1.1 upgrade: hyper's, on every way).
    Ws { path: String },
}

/// The normal answer, given the right token.
#[derive(Debug, Clone, Copy)]
pub(super) enum Expect {
    Status(u16),
    /// `200` with this content type, a stream (not read).
    Stream(&'static str),
    /// `101 Switching Protocols`.
    Upgraded,
}

pub(super) const SSE: &str = "text/event-stream";
pub(super) const NDJSON: &str = "application/x-ndjson";

pub(super) fn http(method: Method, path: &str) -> Send {
    Send::Http {
        method,
        path: path.to_owned(),
        headers: Vec::new(),
        body: None,
    }
}

pub(super) fn with_body(method: Method, path: &str, body: &str) -> Send {
    Send::Http {
        method,
        path: path.to_owned(),
        headers: Vec::new(),
        body: Some(body.to_owned()),
    }
}

pub(super) fn with_header(method: Method, path: &str, name: &'static str, value: &str) -> Send {
    Send::Http {
        method,
        path: path.to_owned(),
        headers: vec![(name, value.to_owned())],
        body: None,
    }
}

/// What one attempt got: the head and, unless it is a stream, the body.
pub(super) struct Got {
    pub(super) status: u16,
    pub(super) headers: HeaderMap,
    pub(super) body: String,
}

/// Sends `send` on `way` with `token` (as `Authorization: Bearer`).
pub(super) async fn attempt(server: &Server, way: Way, send: &Send, token: Option<&str>) -> Got {
    match send {
        Send::Http {
            method,
            path,
            headers,
            body,
        } => {
            let mut r = way
                .client()
                .request(method.clone(), server.url(path))
                .version(way.version());
            for (name, value) in headers {
                r = r.header(*name, value);
            }
            if let Some(token) = token {
                r = r.header("authorization", bearer(token));
            }
            if let Some(body) = body {
                r = r.body(body.clone());
            }
            let r = within(path, r.send()).await.expect("a request");
            assert_eq!(
                r.version(),
                way.version(),
                "{path}: answered in its version"
            );
            let (status, headers) = (r.status().as_u16(), r.headers().clone());
            let streaming = headers
                .get("content-type")
                .is_some_and(|v| v == SSE || v == NDJSON);
            // A stream is not read: its head says what it is.
            let body = if streaming && status == 200 {
                String::new()
            } else {
                within(path, r.text()).await.expect("a body")
            };
            Got {
                status,
                headers,
                body,
            }
        }
        Send::Ws { path } => {
            let headers = token.map(|t| ("authorization", bearer(t)));
            ws_attempt(server, path, headers.as_slice()).await
        }
    }
}

/// A WebSocket handshake on `path` with `headers`: `101`, or the refusal.
pub(super) async fn ws_attempt(server: &Server, path: &str, headers: &[(&str, String)]) -> Got {
    let url = server.url(path).replacen("http", "ws", 1);
    let mut request = url.into_client_request().expect("a ws request");
    for (name, value) in headers {
        let name: reqwest::header::HeaderName = name.parse().expect("a header name");
        request
            .headers_mut()
            .insert(name, value.parse().expect("a header value"));
    }
    match within(path, tokio_tungstenite::connect_async(request)).await {
        Ok((mut ws, response)) => {
            let _ = ws.close(None).await;
            Got {
                status: response.status().as_u16(),
                headers: response.headers().clone(),
                body: String::new(),
            }
        }
        Err(tungstenite::Error::Http(response)) => Got {
            status: response.status().as_u16(),
            headers: response.headers().clone(),
            body: String::from_utf8_lossy(response.body().as_deref().unwrap_or_default())
                .into_owned(),
        },
        Err(e) => panic!("{path}: the handshake failed: {e}"),
    }
}

impl Got {
    pub(super) fn assert_refused(&self, what: &str, want: Refusal) {
        assert_refused(what, self.status, &self.headers, &self.body, want);
    }

    /// The route's normal answer.
    pub(super) fn assert_ok(&self, what: &str, expect: Expect) {
        match expect {
            Expect::Status(status) => assert_eq!(self.status, status, "{what}: {}", self.body),
            Expect::Stream(content_type) => {
                assert_eq!(self.status, 200, "{what}: {}", self.body);
                let got = self
                    .headers
                    .get("content-type")
                    .map(|v| v.to_str().unwrap());
                assert_eq!(got, Some(content_type), "{what}");
            }
            Expect::Upgraded => assert_eq!(self.status, 101, "{what}: {}", self.body),
        }
    }
}
