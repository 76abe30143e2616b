//! Chunked transfer coding (RFC 9112 § 7.1) for streams on HTTP/1.1: a
//! chunk is its size in hex, CRLF, the bytes, CRLF; the body ends with a
//! chunk of size zero.

use std::collections::VecDeque;
use std::fmt::Write;

use bytes::{Bytes, BytesMut};

/// The last chunk, which ends a chunked body (no trailers).
pub const LAST: &[u8] = b"0\r\n\r\n";

const CRLF: &[u8] = b"\r\n";

/// Frames the buffers of `out` from index `at` on as one chunk, in place:
/// a size line before them and CRLF after; nothing if they are empty. The
/// size line is written into `line`'s space, reused once the previous line
/// has been written and dropped.
pub fn frame_from(out: &mut VecDeque<Bytes>, at: usize, line: &mut BytesMut) {
    let len: usize = out.iter().skip(at).map(Bytes::len).sum();
    if len == 0 {
        // Empty buffers would read as the last chunk.
        out.truncate(at);
        return;
    }
    // Writing to a BytesMut cannot fail.
    let _ = write!(line, "{len:x}\r\n");
    out.insert(at, line.split().freeze());
    out.push_back(Bytes::from_static(CRLF));
}

/// `bytes` as one chunk in one buffer: for bytes encoded once and written
/// to many streams. Nothing for nothing (an empty chunk would end the body).
pub fn framed(bytes: &[u8]) -> Bytes {
    if bytes.is_empty() {
        return Bytes::new();
    }
    let mut out = BytesMut::with_capacity(bytes.len() + 12);
    let _ = write!(out, "{:x}\r\n", bytes.len());
    out.extend_from_slice(bytes);
    out.extend_from_slice(CRLF);
    out.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Decodes a chunked body with httparse's chunk-size parser; `None` if
    /// it is malformed. Returns the data and whether the last chunk came.
    fn decode(mut body: &[u8]) -> Option<(Vec<u8>, bool)> {
        let mut data = Vec::new();
        while !body.is_empty() {
            let (used, size) = match httparse::parse_chunk_size(body) {
                Ok(httparse::Status::Complete(found)) => found,
                _ => return None,
            };
            let size = usize::try_from(size).ok()?;
            body = &body[used..];
            if size == 0 {
                return (body == CRLF).then_some((data, true));
            }
            data.extend_from_slice(body.get(..size)?);
            body = body.get(size..)?.strip_prefix(CRLF)?;
        }
        Some((data, false))
    }

    fn joined(out: &VecDeque<Bytes>) -> Vec<u8> {
        out.iter().flat_map(|b| b.iter().copied()).collect()
    }

    #[test]
    fn frames_a_tail_of_buffers_as_one_chunk_and_skips_empty_ones() {
        let mut line = BytesMut::new();
        let mut out = VecDeque::from([Bytes::from_static(b"HEAD\r\n\r\n")]);
        out.extend([&b"data: a\n\n"[..], b"", b"data: bc\n\n"].map(Bytes::from_static));
        frame_from(&mut out, 1, &mut line);
        let head_len = b"HEAD\r\n\r\n".len();
        let (data, last) = decode(&joined(&out)[head_len..]).unwrap();
        assert_eq!(data, b"data: a\n\ndata: bc\n\n");
        assert!(!last);
        let before = out.len();
        frame_from(&mut out, before, &mut line);
        assert_eq!(out.len(), before, "nothing to frame, nothing added");
        out.push_back(Bytes::from_static(LAST));
        assert!(decode(&joined(&out)[head_len..]).unwrap().1);
    }

    #[test]
    fn size_lines_are_hex_at_every_length_and_reuse_their_space() {
        let mut line = BytesMut::new();
        for len in (0..1000).chain([65_535, 65_536, 1 << 20]) {
            let payload = vec![b'x'; len];
            let mut out = VecDeque::from([Bytes::from(payload.clone())]);
            frame_from(&mut out, 0, &mut line);
            let (data, _) = decode(&joined(&out)).unwrap();
            assert_eq!(data, payload);
            let one = framed(&payload);
            assert_eq!(&one[..], &joined(&out)[..]);
        }
    }
}
