//! Newline-delimited JSON: one JSON value per line, as HTTP streams and batch
//! publishes carry it.

use bytes::{Bytes, BytesMut};

/// Appends the newline that ends an NDJSON record.
pub fn line(json: &str) -> Bytes {
    let mut buf = BytesMut::with_capacity(json.len() + 1);
    buf.extend_from_slice(json.as_bytes());
    buf.extend_from_slice(b"\n");
    buf.freeze()
}

/// The keep-alive record of a stream: an empty line, which readers skip.
pub const KEEP_ALIVE: &[u8] = b"\n";

/// The last line of a stream whose token expired.
pub const EXPIRED: &[u8] = b"{\"event\":\"expired\"}\n";

/// Splits a whole NDJSON body into its non-blank lines, with 1-based line
/// numbers for error messages. Accepts LF and CRLF line ends.
pub fn lines(body: &str) -> impl Iterator<Item = (usize, &str)> {
    body.split('\n')
        .enumerate()
        .map(|(i, l)| (i + 1, l.strip_suffix('\r').unwrap_or(l)))
        .filter(|(_, l)| !l.trim().is_empty())
}

/// A push splitter for NDJSON streams: feed bytes split anywhere, take out
/// complete non-empty lines.
#[derive(Debug, Default)]
pub struct LineSplitter {
    buf: Vec<u8>,
}

impl LineSplitter {
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds bytes; returns the complete, non-blank lines they finish.
    pub fn feed(&mut self, chunk: &[u8]) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        for &b in chunk {
            if b == b'\n' {
                let mut l = std::mem::take(&mut self.buf);
                if l.last() == Some(&b'\r') {
                    l.pop();
                }
                if !l.iter().all(u8::is_ascii_whitespace) {
                    out.push(l);
                }
            } else {
                self.buf.push(b);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_lines_and_skips_blanks() {
        let got: Vec<_> = lines("{\"a\":1}\r\n\n  \n{\"b\":2}").collect();
        assert_eq!(got, vec![(1, "{\"a\":1}"), (4, "{\"b\":2}")]);
    }

    #[test]
    fn splitter_handles_any_chunking() {
        let wire = b"{\"a\":1}\n\n{\"b\":2}\r\n";
        for cut in 0..=wire.len() {
            let mut s = LineSplitter::new();
            let mut got = s.feed(&wire[..cut]);
            got.extend(s.feed(&wire[cut..]));
            assert_eq!(got, vec![b"{\"a\":1}".to_vec(), b"{\"b\":2}".to_vec()]);
        }
    }
}
