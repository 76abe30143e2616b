//! Server-Sent Events, as the HTML standard's event-stream rules define them.
//!
//! The encoder lays an event out as `id:` line, `event:` line, `data:` lines,
//! blank line, in one buffer, and remembers where each part starts, so a
//! transport can share the whole buffer, or slices of it, among subscribers
//! without copying. The decoder is a push parser: feed it bytes split
//! anywhere, take out whole events.

use bytes::{Bytes, BytesMut};

/// An event encoded once as SSE, with the offsets of its parts.
///
/// `bytes[..body_start]` is the `id:` line, `bytes[body_start..data_start]`
/// the `event:` line (may be empty) and `bytes[data_start..]` the `data:`
/// lines and the blank line that ends the event.
#[derive(Debug, Clone)]
pub struct SseEncoded {
    pub bytes: Bytes,
    pub body_start: usize,
    pub data_start: usize,
}

impl SseEncoded {
    /// The whole event: id, type, data.
    pub fn full(&self) -> Bytes {
        self.bytes.clone()
    }

    /// The event without its `id:` line, for streams that write their own id
    /// (a cursor over several topics).
    pub fn without_id(&self) -> Bytes {
        self.bytes.slice(self.body_start..)
    }

    /// The `id:` and `event:` lines.
    pub fn head(&self) -> Bytes {
        self.bytes.slice(..self.data_start)
    }

    /// The `data:` lines and the blank line.
    pub fn data(&self) -> Bytes {
        self.bytes.slice(self.data_start..)
    }
}

/// Encodes one event. `event` is left out when it is `message`, the type an
/// EventSource assumes. `id` and `event` must hold no CR or LF (herald's ids
/// and type names cannot).
pub fn encode_event(id: Option<&str>, event: &str, data: &str) -> SseEncoded {
    let mut buf = BytesMut::with_capacity(data.len() + event.len() + 32);
    if let Some(id) = id {
        push_field(&mut buf, "id", id);
    }
    let body_start = buf.len();
    if event != "message" {
        push_field(&mut buf, "event", event);
    }
    let data_start = buf.len();
    push_data(&mut buf, data);
    buf.extend_from_slice(b"\n");
    SseEncoded {
        bytes: buf.freeze(),
        body_start,
        data_start,
    }
}

/// Encodes a single `id:` line, for streams over several topics whose id is
/// the cursor of all of them.
pub fn encode_id_line(id: &str) -> Bytes {
    let mut buf = BytesMut::with_capacity(id.len() + 5);
    push_field(&mut buf, "id", id);
    buf.freeze()
}

/// The first bytes of every stream: the reconnection delay and a comment, so
/// that proxies and clients see the stream open at once.
pub fn preamble(retry_ms: u64, comment: &str) -> Bytes {
    Bytes::from(format!("retry: {retry_ms}\n: {comment}\n\n"))
}

/// The keep-alive of a stream: a comment line, which clients skip.
pub const KEEP_ALIVE: &[u8] = b": keep-alive\n\n";

/// The last event of a stream whose token expired: no id, so the client's
/// cursor stays where it was.
pub const EXPIRED: &[u8] = b"event: expired\ndata: {}\n\n";

/// A comment line ending an (empty) event block.
pub fn comment(text: &str) -> Bytes {
    Bytes::from(format!(": {text}\n\n"))
}

fn push_field(buf: &mut BytesMut, name: &str, value: &str) {
    buf.extend_from_slice(name.as_bytes());
    buf.extend_from_slice(b": ");
    buf.extend_from_slice(value.as_bytes());
    buf.extend_from_slice(b"\n");
}

/// One `data:` line per line of `data`, split on CRLF, LF and CR, empty pieces
/// included, so that a client rebuilds exactly the text (with LF line ends).
fn push_data(buf: &mut BytesMut, data: &str) {
    for piece in split_lines(data) {
        if piece.is_empty() {
            buf.extend_from_slice(b"data:\n");
        } else {
            push_field(buf, "data", piece);
        }
    }
}

/// Splits on CRLF, LF and CR. `""` gives one empty piece, `"x\n"` gives `x`
/// and an empty piece.
pub fn split_lines(text: &str) -> impl Iterator<Item = &str> {
    let mut rest = Some(text);
    std::iter::from_fn(move || {
        let s = rest?;
        match s.find(['\r', '\n']) {
            None => {
                rest = None;
                Some(s)
            }
            Some(i) => {
                let skip = if s[i..].starts_with("\r\n") { 2 } else { 1 };
                rest = Some(&s[i + skip..]);
                Some(&s[..i])
            }
        }
    })
}

/// What the decoder found in the stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// A dispatched event. `id` is the last event id in force when it was
    /// dispatched (an EventSource's `lastEventId`).
    Event {
        id: Option<String>,
        event: String,
        data: String,
    },
    /// A `retry:` field with a valid number of milliseconds.
    Retry(u64),
    /// A block that set the last event id without dispatching an event
    /// (no `data`): an EventSource would resume from it. herald sends one at
    /// the start of a multi-topic stream to hand out its starting cursor.
    Id(String),
}

/// A push parser for `text/event-stream`, following the HTML standard's
/// interpretation rules: a leading BOM is skipped; lines end in CRLF, LF or
/// CR (a CR at the end of one chunk and an LF at the start of the next are
/// one line end); `id` containing NUL is ignored; `retry` must be digits;
/// a blank line dispatches, unless no `data` was seen.
#[derive(Debug, Default)]
pub struct Decoder {
    /// Bytes of the line being read (not yet terminated).
    line: Vec<u8>,
    /// The last byte fed was a CR, so an LF that starts the next chunk
    /// belongs to the same line end.
    after_cr: bool,
    /// Whether the stream's first bytes have been looked at for a BOM.
    started: bool,
    event: String,
    data: String,
    has_data: bool,
    /// The block being read had an `id:` field.
    id_in_block: bool,
    last_id: Option<String>,
}

impl Decoder {
    pub fn new() -> Self {
        Self::default()
    }

    /// The id an EventSource would send as `Last-Event-ID` now.
    pub fn last_event_id(&self) -> Option<&str> {
        self.last_id.as_deref()
    }

    /// Feeds bytes and returns every frame they complete.
    pub fn feed(&mut self, mut chunk: &[u8]) -> Vec<Frame> {
        let out = Vec::new();
        if !self.started {
            // Wait for three bytes (or a non-BOM prefix) before deciding.
            self.line.extend_from_slice(chunk);
            let bom = [0xEF_u8, 0xBB, 0xBF];
            let n = self.line.len().min(3);
            if self.line[..n] != bom[..n] {
                self.started = true;
            } else if self.line.len() >= 3 {
                self.line.drain(..3);
                self.started = true;
            } else {
                return out;
            }
            let pending = std::mem::take(&mut self.line);
            return self.feed_started(&pending, out);
        }
        if self.after_cr && chunk.first() == Some(&b'\n') {
            chunk = &chunk[1..];
        }
        self.after_cr = false;
        self.feed_started(chunk, out)
    }

    fn feed_started(&mut self, chunk: &[u8], mut out: Vec<Frame>) -> Vec<Frame> {
        let mut i = 0;
        while i < chunk.len() {
            match chunk[i..].iter().position(|&b| b == b'\n' || b == b'\r') {
                None => {
                    self.line.extend_from_slice(&chunk[i..]);
                    break;
                }
                Some(p) => {
                    self.line.extend_from_slice(&chunk[i..i + p]);
                    let end = i + p;
                    i = end + 1;
                    if chunk[end] == b'\r' {
                        if i < chunk.len() {
                            if chunk[i] == b'\n' {
                                i += 1;
                            }
                        } else {
                            self.after_cr = true;
                        }
                    }
                    let line = std::mem::take(&mut self.line);
                    if let Some(frame) = self.process_line(&line) {
                        out.push(frame);
                    }
                }
            }
        }
        out
    }

    fn process_line(&mut self, line: &[u8]) -> Option<Frame> {
        if line.is_empty() {
            return self.dispatch();
        }
        if line[0] == b':' {
            return None;
        }
        let (name, value) = match line.iter().position(|&b| b == b':') {
            Some(c) => {
                let value = &line[c + 1..];
                (&line[..c], value.strip_prefix(b" ").unwrap_or(value))
            }
            None => (line, &b""[..]),
        };
        let value = String::from_utf8_lossy(value);
        match name {
            b"event" => self.event = value.into_owned(),
            b"data" => {
                self.data.push_str(&value);
                self.data.push('\n');
                self.has_data = true;
            }
            b"id" if !value.contains('\0') => {
                self.last_id = Some(value.into_owned());
                self.id_in_block = true;
            }
            b"retry" if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) => {
                return value.parse().ok().map(Frame::Retry);
            }
            _ => {}
        }
        None
    }

    fn dispatch(&mut self) -> Option<Frame> {
        let event = std::mem::take(&mut self.event);
        let id_in_block = std::mem::take(&mut self.id_in_block);
        if !self.has_data {
            self.data.clear();
            return id_in_block.then(|| Frame::Id(self.last_id.clone().unwrap_or_default()));
        }
        self.has_data = false;
        let mut data = std::mem::take(&mut self.data);
        data.pop();
        Some(Frame::Event {
            id: self.last_id.clone(),
            event: if event.is_empty() {
                "message".to_owned()
            } else {
                event
            },
            data,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(b: &Bytes) -> &str {
        std::str::from_utf8(b).unwrap()
    }

    #[test]
    fn lays_out_id_event_and_data() {
        let e = encode_event(Some("7-0"), "note", "a\nb");
        assert_eq!(
            text(&e.full()),
            "id: 7-0\nevent: note\ndata: a\ndata: b\n\n"
        );
        assert_eq!(text(&e.without_id()), "event: note\ndata: a\ndata: b\n\n");
        assert_eq!(text(&e.head()), "id: 7-0\nevent: note\n");
        assert_eq!(text(&e.data()), "data: a\ndata: b\n\n");
    }

    #[test]
    fn message_type_is_left_out() {
        assert_eq!(
            text(&encode_event(Some("1-0"), "message", "x").full()),
            "id: 1-0\ndata: x\n\n"
        );
    }

    #[test]
    fn splits_every_newline_style_losslessly() {
        assert_eq!(text(&encode_event(None, "message", "").full()), "data:\n\n");
        assert_eq!(
            text(&encode_event(None, "message", "x\n").full()),
            "data: x\ndata:\n\n"
        );
        assert_eq!(
            text(&encode_event(None, "message", "a\r\nb\rc\nd\n\r\n").full()),
            "data: a\ndata: b\ndata: c\ndata: d\ndata:\ndata:\n\n"
        );
        assert_eq!(
            text(&encode_event(None, "message", " lead").full()),
            "data:  lead\n\n"
        );
    }

    fn decode_all(chunks: &[&[u8]]) -> Vec<Frame> {
        let mut d = Decoder::new();
        chunks.iter().flat_map(|c| d.feed(c)).collect()
    }

    fn ev(id: Option<&str>, event: &str, data: &str) -> Frame {
        Frame::Event {
            id: id.map(str::to_owned),
            event: event.to_owned(),
            data: data.to_owned(),
        }
    }

    #[test]
    fn decodes_what_the_encoder_writes_split_at_every_byte() {
        let cases = [
            "",
            "x",
            "x\n",
            "a\r\nb\rc\nd",
            "\r\n\r\n",
            " spaced ",
            "ünïcödé\r",
        ];
        for data in cases {
            let mut wire = preamble(1500, "hi").to_vec();
            wire.extend_from_slice(&encode_event(Some("3-1"), "note", data).full());
            let want = vec![
                Frame::Retry(1500),
                ev(
                    Some("3-1"),
                    "note",
                    &data.replace("\r\n", "\n").replace('\r', "\n"),
                ),
            ];
            for cut in 0..=wire.len() {
                for cut2 in cut..=wire.len() {
                    let got = decode_all(&[&wire[..cut], &wire[cut..cut2], &wire[cut2..]]);
                    assert_eq!(got, want, "data {data:?} cut at {cut}/{cut2}");
                }
            }
        }
    }

    #[test]
    fn follows_the_standard_on_edge_cases() {
        let got = decode_all(&[
            b"\xEF\xBB\xBFdata: one\r\n\r\n",
            b"id: 5\nevent\ndata\n\n",
            b"id: a\0b\ndata:x\n\n",
            b"retry: 12x\nretry: 40\n: c\nevent: only\n\n",
            b"data: tail",
        ]);
        assert_eq!(
            got,
            vec![
                ev(None, "message", "one"),
                ev(Some("5"), "message", ""),
                ev(Some("5"), "message", "x"),
                Frame::Retry(40),
            ]
        );
        let got = decode_all(&[b"id: a=1-0,b=2-0\n\ndata: x\n\n"]);
        assert_eq!(
            got,
            vec![
                Frame::Id("a=1-0,b=2-0".into()),
                ev(Some("a=1-0,b=2-0"), "message", "x")
            ]
        );
    }

    #[test]
    fn split_crlf_across_chunks_is_one_line_end() {
        let got = decode_all(&[b"data: a\r", b"\ndata: b\r", b"\r"]);
        assert_eq!(got, vec![ev(None, "message", "a\nb")]);
    }
}
