//! A keep-alive HTTP/1.1 connection with one request in flight, for the
//! modes whose driver must cost little per request (`publish`, `tasks`):
//! requests are bytes built once by the caller, and an answer is read to its
//! end — by `Content-Length`, chunked encoding or, failing both, the end of
//! the connection — so the same socket carries the next request.
//!
//! The answer is parsed from a plain buffer by [`parse`] (no I/O, tested at
//! every split point); [`Conn`] only moves bytes. No client library's pool,
//! timers or per-request tasks sit on the hot path, so with the server on
//! one core and the driver on the other the server is the side that
//! saturates.

use std::io;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::net::{Target, connect, find, io_err};

/// One whole answer.
#[derive(Debug, PartialEq, Eq)]
pub struct Answer {
    pub status: u16,
    pub body: Vec<u8>,
}

/// An answer found at the start of a buffer.
#[derive(Debug, PartialEq, Eq)]
struct Parsed {
    answer: Answer,
    /// Bytes of the buffer it took.
    used: usize,
    /// The server closes the connection after it (`Connection: close`, or
    /// a body that only the end of the connection ends).
    close: bool,
}

/// What the head of an answer says about its body.
struct Head {
    status: u16,
    /// Bytes of status line and headers, the blank line included.
    len: usize,
    content_length: Option<usize>,
    chunked: bool,
    close: bool,
}

/// Builds a request with `Host` and `Content-Length`; `headers` are
/// `Name: value` lines without their CRLF.
pub fn request(method: &str, path: &str, host: &str, headers: &[&str], body: &[u8]) -> Vec<u8> {
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\n");
    for h in headers {
        req.push_str(h);
        req.push_str("\r\n");
    }
    req.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
    let mut req = req.into_bytes();
    req.extend_from_slice(body);
    req
}

/// Parses the status line and headers, once they are all in `buf`.
fn parse_head(buf: &[u8]) -> io::Result<Option<Head>> {
    let Some(end) = find(buf, b"\r\n\r\n") else {
        return Ok(None);
    };
    let text =
        std::str::from_utf8(&buf[..end]).map_err(|_| io_err("answer head not UTF-8".into()))?;
    let mut lines = text.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| io_err(format!("bad status line {status_line:?}")))?;
    let mut head = Head {
        status,
        len: end + 4,
        content_length: None,
        chunked: false,
        close: status_line.starts_with("HTTP/1.0"),
    };
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            head.content_length = Some(
                value
                    .parse()
                    .map_err(|_| io_err(format!("bad Content-Length {value:?}")))?,
            );
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            head.chunked = value.to_ascii_lowercase().contains("chunked");
        } else if name.eq_ignore_ascii_case("connection") {
            head.close = value.eq_ignore_ascii_case("close");
        }
    }
    Ok(Some(head))
}

/// Decodes a chunked body starting at `buf[0]`: the body and the bytes it
/// took (trailers included), once the last chunk is in.
fn parse_chunked(buf: &[u8]) -> io::Result<Option<(Vec<u8>, usize)>> {
    let mut body = Vec::new();
    let mut at = 0;
    loop {
        let Some(eol) = find(&buf[at..], b"\r\n") else {
            return Ok(None);
        };
        let line = std::str::from_utf8(&buf[at..at + eol]).unwrap_or_default();
        let hex = line.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(hex, 16)
            .map_err(|_| io_err(format!("bad chunk size {line:?}")))?;
        at += eol + 2;
        if size == 0 {
            // Trailers (usually none), then a blank line.
            let rest = &buf[at..];
            if rest.starts_with(b"\r\n") {
                return Ok(Some((body, at + 2)));
            }
            return Ok(find(rest, b"\r\n\r\n").map(|p| (body, at + p + 4)));
        }
        if buf.len() < at + size + 2 {
            return Ok(None);
        }
        body.extend_from_slice(&buf[at..at + size]);
        at += size + 2;
    }
}

/// The first answer in `buf`, if it is all there. `eof`: the connection has
/// ended, which completes a body that has neither length nor chunks.
fn parse(buf: &[u8], eof: bool) -> io::Result<Option<Parsed>> {
    let Some(head) = parse_head(buf)? else {
        return Ok(None);
    };
    let rest = &buf[head.len..];
    let done = |body: Vec<u8>, used: usize, close: bool| {
        Some(Parsed {
            answer: Answer {
                status: head.status,
                body,
            },
            used,
            close,
        })
    };
    if head.chunked {
        return Ok(parse_chunked(rest)?.and_then(|(b, n)| done(b, head.len + n, head.close)));
    }
    if let Some(n) = head.content_length {
        return Ok((rest.len() >= n)
            .then(|| done(rest[..n].to_vec(), head.len + n, head.close))
            .flatten());
    }
    // 1xx, 204 and 304 have no body; anything else without a length ends
    // with the connection.
    if head.status < 200 || head.status == 204 || head.status == 304 {
        return Ok(done(Vec::new(), head.len, head.close));
    }
    Ok(eof.then(|| done(rest.to_vec(), buf.len(), true)).flatten())
}

/// A connection to the server that is opened on first use and again after
/// the server closed it.
pub struct Conn {
    t: Target,
    stream: Option<TcpStream>,
    /// Bytes read and not yet part of an answer.
    buf: Vec<u8>,
}

impl Conn {
    pub fn new(t: &Target) -> Conn {
        Conn {
            t: t.clone(),
            stream: None,
            buf: Vec::with_capacity(4096),
        }
    }

    /// Forgets the connection (and anything half read from it), e.g. after
    /// a request was given up on: its late answer must not be taken for the
    /// next one's.
    pub fn reset(&mut self) {
        self.stream = None;
        self.buf.clear();
    }

    /// Sends `req` and reads its whole answer.
    ///
    /// A reused connection that ends before a single byte of the answer
    /// came was closed by the server while idle: the request is sent once
    /// more on a fresh connection, as HTTP clients do. Any other failure
    /// drops the connection, so the next request starts clean.
    pub async fn send(&mut self, req: &[u8]) -> io::Result<Answer> {
        let reused = self.stream.is_some();
        match self.try_send(req).await {
            Err(SendError::Unanswered(_)) if reused => {
                self.try_send(req).await.map_err(SendError::into_io)
            }
            r => r.map_err(SendError::into_io),
        }
    }

    async fn try_send(&mut self, req: &[u8]) -> Result<Answer, SendError> {
        let r = self.exchange(req).await;
        if r.is_err() {
            self.reset();
        }
        r
    }

    async fn exchange(&mut self, req: &[u8]) -> Result<Answer, SendError> {
        let stream = match &mut self.stream {
            Some(s) => s,
            None => self
                .stream
                .insert(connect(&self.t).await.map_err(SendError::Failed)?),
        };
        stream.write_all(req).await.map_err(SendError::Unanswered)?;
        let mut got_any = !self.buf.is_empty();
        loop {
            let eof = match Self::fill(stream, &mut self.buf).await {
                Ok(n) => n == 0,
                // A reset before any answer is an idle close too.
                Err(e) if !got_any => return Err(SendError::Unanswered(e)),
                Err(e) => return Err(SendError::Failed(e)),
            };
            if eof && !got_any {
                return Err(SendError::Unanswered(io_err(
                    "closed before answering".into(),
                )));
            }
            got_any = true;
            if let Some(p) = parse(&self.buf, eof).map_err(SendError::Failed)? {
                self.buf.drain(..p.used);
                if p.close {
                    self.reset();
                }
                return Ok(p.answer);
            }
            if eof {
                return Err(SendError::Failed(io_err(format!(
                    "closed in the middle of an answer: {:?}",
                    String::from_utf8_lossy(&self.buf)
                ))));
            }
        }
    }

    /// Reads what is there into `buf`; 0 at the end of the connection.
    async fn fill(stream: &mut TcpStream, buf: &mut Vec<u8>) -> io::Result<usize> {
        buf.reserve(4096);
        stream.read_buf(buf).await
    }
}

/// Why an exchange failed, which decides whether it may be retried.
enum SendError {
    /// Nothing of an answer arrived: a reused connection the server closed
    /// while idle. Sending again is safe.
    Unanswered(io::Error),
    /// The connect failed, or part of an answer came: not retried.
    Failed(io::Error),
}

impl SendError {
    fn into_io(self) -> io::Error {
        match self {
            SendError::Unanswered(e) | SendError::Failed(e) => e,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Parses `wire` fed in two pieces split at every point: incomplete
    /// until the end, then the same answer.
    fn parse_split(wire: &[u8], eof: bool) -> Parsed {
        for cut in 0..wire.len() {
            assert_eq!(parse(&wire[..cut], false).unwrap(), None, "cut at {cut}");
        }
        parse(wire, eof).unwrap().expect("complete")
    }

    #[test]
    fn content_length_answer() {
        let wire = b"HTTP/1.1 201 Created\r\ncontent-type: application/json\r\ncontent-length: 8\r\n\r\n{\"id\":1}";
        let p = parse_split(wire, false);
        assert_eq!(p.answer.status, 201);
        assert_eq!(p.answer.body, b"{\"id\":1}");
        assert_eq!(p.used, wire.len());
        assert!(!p.close);
    }

    #[test]
    fn chunked_answer_with_trailing_bytes() {
        let mut wire = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3;x=y\r\nabc\r\n2\r\nde\r\n0\r\n\r\n".to_vec();
        let len = wire.len();
        let p = parse_split(&wire, false);
        assert_eq!(p.answer.body, b"abcde");
        assert_eq!(p.used, len);
        wire.extend_from_slice(b"HTTP/1.1 204");
        assert_eq!(parse(&wire, false).unwrap().unwrap().used, len);
    }

    #[test]
    fn no_content_and_close() {
        let wire = b"HTTP/1.1 204 No Content\r\nconnection: close\r\n\r\n";
        let p = parse_split(wire, false);
        assert_eq!((p.answer.status, p.close), (204, true));
        assert!(p.answer.body.is_empty());
    }

    #[test]
    fn close_delimited_answer_ends_with_the_connection() {
        let wire = b"HTTP/1.0 200 OK\r\n\r\nhello";
        assert_eq!(parse(wire, false).unwrap(), None);
        let p = parse(wire, true).unwrap().unwrap();
        assert_eq!((p.answer.body.as_slice(), p.close), (&b"hello"[..], true));
    }

    #[test]
    fn request_carries_host_headers_and_length() {
        let r = request("POST", "/t", "h:1", &["A: b"], b"xy");
        assert_eq!(
            r,
            b"POST /t HTTP/1.1\r\nHost: h:1\r\nA: b\r\nContent-Length: 2\r\n\r\nxy"
        );
    }
}
