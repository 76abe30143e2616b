//! HTTP/1 heads: reading a request head from the bytes that have arrived
//! (and saying whether the direct path may answer it), and writing a
//! response head the way hyper would.

use std::net::SocketAddr;

use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Version};

use crate::request::RequestView;

/// Most headers a request head may carry before it is left to hyper
/// (which answers `431`).
const MAX_HEADERS: usize = 64;

/// The largest head herald reads (`431` above), on either stack.
pub const MAX_HEAD: usize = 16 * 1024;

/// A parsed request head.
#[derive(Debug)]
pub struct RequestHead {
    pub method: Method,
    /// The path as sent, still percent-encoded, without the query.
    pub path: String,
    pub query: Option<String>,
    /// HTTP/1.0: the answer ends with the connection.
    pub http10: bool,
    pub headers: HeaderMap,
    /// Bytes of the buffer the head took, blank line included.
    pub len: usize,
}

/// What the bytes read so far hold.
#[derive(Debug)]
pub enum Parsed {
    Head(RequestHead),
    /// Not a whole head yet.
    Partial,
    /// Not something the direct path reads; hyper will answer it (HTTP/2's
    /// preface, more headers than the direct path reads).
    Foreign,
    /// Not an HTTP/1 request head at all: answered `400` and closed.
    Malformed,
}

/// How an HTTP/2 connection with prior knowledge begins.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n";

/// Parses the request head at the start of `buf`.
pub fn parse(buf: &[u8]) -> Parsed {
    let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut slots);
    let len = match req.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Parsed::Partial,
        Err(httparse::Error::TooManyHeaders) => return Parsed::Foreign,
        // The preface, or as much of it as has come (httparse refuses
        // `HTTP/2` before the rest arrives).
        Err(_)
            if buf[..buf.len().min(H2_PREFACE.len())]
                == H2_PREFACE[..buf.len().min(H2_PREFACE.len())] =>
        {
            return Parsed::Foreign;
        }
        Err(_) => return Parsed::Malformed,
    };
    let (Some(method), Some(target), Some(version)) = (req.method, req.path, req.version) else {
        return Parsed::Foreign;
    };
    let Ok(method) = Method::from_bytes(method.as_bytes()) else {
        return Parsed::Foreign;
    };
    let mut headers = HeaderMap::with_capacity(req.headers.len());
    for h in req.headers.iter() {
        let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(h.name.as_bytes()),
            HeaderValue::from_bytes(h.value),
        ) else {
            return Parsed::Foreign;
        };
        headers.append(name, value);
    }
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p, Some(q.to_owned())),
        None => (target, None),
    };
    Parsed::Head(RequestHead {
        method,
        path: path.to_owned(),
        query,
        http10: version == 0,
        headers,
        len,
    })
}

impl RequestHead {
    /// The request as the rules see it.
    pub fn view(&self, peer: Option<SocketAddr>) -> RequestView<'_> {
        RequestView {
            method: &self.method,
            path: &self.path,
            query: self.query.as_deref(),
            headers: &self.headers,
            version: if self.http10 {
                Version::HTTP_10
            } else {
                Version::HTTP_11
            },
            peer,
            authority: crate::request::host(&self.headers),
            protocol: None,
        }
    }

    /// A `GET` with no body, nothing to negotiate about the connection and
    /// an origin-form target: the only requests the direct path answers.
    /// Anything else — bodies, `Expect`, upgrades, `Connection: close` on
    /// HTTP/1.1 or keep-alive on HTTP/1.0 — is hyper's.
    pub fn is_plain_get(&self) -> bool {
        let h = &self.headers;
        let no_body = h.get("content-length").is_none_or(|v| v.as_bytes() == b"0")
            && !h.contains_key("transfer-encoding")
            && !h.contains_key("expect");
        let connection_ok = match h.get("connection") {
            None => true,
            Some(v) => !self.http10 && v.as_bytes().eq_ignore_ascii_case(b"keep-alive"),
        };
        self.method == Method::GET
            && self.path.starts_with('/')
            && no_body
            && connection_ok
            && h.get_all("connection").iter().count() <= 1
            && !h.contains_key("upgrade")
            && !h.contains_key("http2-settings")
    }
}

/// How a response's body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// `Content-Length` (left out where the status has no body).
    Length(usize),
    /// `Transfer-Encoding: chunked` (HTTP/1.1 streams).
    Chunked,
    /// Ends with the connection (HTTP/1.0 streams).
    Close,
}

/// The status line and headers of a response, blank line included: the
/// given headers in order, then the framing header, then `date`.
pub fn response(
    http10: bool,
    status: StatusCode,
    headers: &HeaderMap,
    framing: Framing,
    date: &str,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(160);
    out.extend_from_slice(if http10 { b"HTTP/1.0 " } else { b"HTTP/1.1 " });
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    for (name, value) in headers {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    match framing {
        Framing::Length(_) if !has_body(status) => {}
        Framing::Length(n) => {
            out.extend_from_slice(b"content-length: ");
            out.extend_from_slice(n.to_string().as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        Framing::Chunked => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
        Framing::Close => {}
    }
    out.extend_from_slice(b"date: ");
    out.extend_from_slice(date.as_bytes());
    out.extend_from_slice(b"\r\n\r\n");
    out
}

/// Whether a response with `status` carries a body at all.
pub fn has_body(status: StatusCode) -> bool {
    !(status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(raw: &str) -> RequestHead {
        match parse(raw.as_bytes()) {
            Parsed::Head(h) => h,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn reads_a_subscribe_request() {
        let raw = "GET /topics/a%20b?transport=sse&x HTTP/1.1\r\nHost: h\r\nAccept: text/event-stream\r\n\r\nrest";
        let h = head(raw);
        assert_eq!(h.method, Method::GET);
        assert_eq!(h.path, "/topics/a%20b");
        assert_eq!(h.query.as_deref(), Some("transport=sse&x"));
        assert!(!h.http10);
        assert_eq!(h.headers["accept"], "text/event-stream");
        assert_eq!(&raw[h.len..], "rest");
        assert!(h.is_plain_get());
    }

    #[test]
    fn waits_for_the_whole_head_at_every_split() {
        let raw = b"GET /subscribe?topic=a HTTP/1.0\r\nHost: h\r\n\r\n";
        for cut in 0..raw.len() {
            assert!(matches!(parse(&raw[..cut]), Parsed::Partial), "cut {cut}");
        }
        assert!(head(std::str::from_utf8(raw).unwrap()).http10);
    }

    /// Pipelined heads and the start of a body, arriving in reads of every
    /// size: each head is found once it is whole, and what follows it is
    /// left for the next.
    #[test]
    fn reads_pipelined_heads_from_reads_of_every_size() {
        let first = "GET /topics/a HTTP/1.1\r\nHost: h\r\n\r\n";
        let second = "GET /subscribe?topic=a&topic=b HTTP/1.0\r\nAccept: text/event-stream\r\n\r\n";
        let after = "POST /topics/a HTTP/1.1\r\nContent-Le";
        let wire = [first, second, after].concat();
        for read in 1..=wire.len() {
            let mut buf = bytes::BytesMut::new();
            let mut heads = Vec::new();
            for piece in wire.as_bytes().chunks(read) {
                buf.extend_from_slice(piece);
                while let Parsed::Head(h) = parse(&buf) {
                    bytes::Buf::advance(&mut buf, h.len);
                    heads.push((h.path, h.query, h.http10));
                }
            }
            assert_eq!(
                heads,
                [
                    ("/topics/a".into(), None, false),
                    ("/subscribe".into(), Some("topic=a&topic=b".into()), true),
                ],
                "reads of {read}"
            );
            assert_eq!(&buf[..], after.as_bytes(), "reads of {read}");
            assert!(matches!(parse(&buf), Parsed::Partial));
        }
    }

    #[test]
    fn leaves_what_it_does_not_answer_to_hyper() {
        let preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
        for cut in 1..=preface.len() {
            let parsed = parse(&preface[..cut]);
            assert!(
                matches!(parsed, Parsed::Foreign | Parsed::Partial),
                "cut {cut}: {parsed:?}"
            );
        }
        assert!(matches!(parse(preface), Parsed::Foreign));
        for malformed in [
            &b"GET /\x01 HTTP/1.1\r\n\r\n"[..],
            b"GARBAGE\r\n\r\n",
            b"GET / HTTP/9.9\r\n\r\n",
            b"GET / HTTP/1.1\r\nbad header\r\n\r\n",
        ] {
            assert!(
                matches!(parse(malformed), Parsed::Malformed),
                "{malformed:?}"
            );
        }
        for raw in [
            "POST /topics/a HTTP/1.1\r\nContent-Length: 2\r\n\r\n",
            "GET /topics/a HTTP/1.1\r\nContent-Length: 2\r\n\r\n",
            "GET /topics/a HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
            "GET /topics/a HTTP/1.1\r\nConnection: close\r\n\r\n",
            "GET /topics/a HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
            "GET /topics/a HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
            "GET /topics/a HTTP/1.1\r\nExpect: 100-continue\r\n\r\n",
            "GET http://h/topics/a HTTP/1.1\r\n\r\n",
            "HEAD /topics/a HTTP/1.1\r\n\r\n",
        ] {
            assert!(!head(raw).is_plain_get(), "{raw:?}");
        }
        for raw in [
            "GET /topics/a HTTP/1.1\r\nConnection: keep-alive\r\n\r\n",
            "GET /topics/a HTTP/1.1\r\nContent-Length: 0\r\n\r\n",
            "GET /topics/a HTTP/1.0\r\n\r\n",
        ] {
            assert!(head(raw).is_plain_get(), "{raw:?}");
        }
        let many: String = (0..=MAX_HEADERS).map(|i| format!("x-{i}: v\r\n")).collect();
        let raw = format!("GET / HTTP/1.1\r\n{many}\r\n");
        assert!(matches!(parse(raw.as_bytes()), Parsed::Foreign));
    }

    #[test]
    fn writes_heads_like_hyper() {
        let mut h = HeaderMap::new();
        h.insert(
            "content-type",
            HeaderValue::from_static("text/event-stream"),
        );
        h.insert("cache-control", HeaderValue::from_static("no-cache"));
        let date = "Sun, 22 Nov 2026 03:26:15 GMT";
        assert_eq!(
            String::from_utf8(response(true, StatusCode::OK, &h, Framing::Close, date)).unwrap(),
            "HTTP/1.0 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\n\
             date: Sun, 22 Nov 2026 03:26:15 GMT\r\n\r\n"
        );
        let chunked = response(false, StatusCode::OK, &h, Framing::Chunked, date);
        assert!(String::from_utf8(chunked).unwrap().contains(
            "no-cache\r\ntransfer-encoding: chunked\r\ndate: Sun, 22 Nov 2026 03:26:15 GMT\r\n\r\n"
        ));
        let empty = response(
            false,
            StatusCode::NO_CONTENT,
            &HeaderMap::new(),
            Framing::Length(0),
            date,
        );
        assert_eq!(
            String::from_utf8(empty).unwrap(),
            "HTTP/1.1 204 No Content\r\ndate: Sun, 22 Nov 2026 03:26:15 GMT\r\n\r\n"
        );
        let full = response(
            false,
            StatusCode::BAD_REQUEST,
            &HeaderMap::new(),
            Framing::Length(12),
            date,
        );
        assert!(
            String::from_utf8(full)
                .unwrap()
                .starts_with("HTTP/1.1 400 Bad Request\r\ncontent-length: 12\r\n")
        );
    }
}
