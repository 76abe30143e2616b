//! A stream on the direct path: the outbox's bytes written to the socket,
//! chunked on HTTP/1.1 and delimited by the close on HTTP/1.0; once caught
//! up, handed to its topic's lot ([`super::live`]) until the lot gives it
//! back.

use std::collections::VecDeque;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use tokio::net::TcpStream;

use super::live::{self, Held, Streams};
use super::lot::Lots;
use super::{After, Direct, client_gone, socket};
use crate::http1::chunk;
use crate::transport::{Encode, Outbox};

/// Writes `out` (what is left of earlier writes, or the stream's head)
/// and then what `outbox` has queued, framed: one write. `Ok(true)` once
/// the stream has ended (its last chunk written). A socket that takes
/// nothing for the write timeout cuts the stream off as slow.
pub(super) async fn flush<E: Encode>(
    direct: &Direct,
    tcp: &TcpStream,
    chunked: bool,
    outbox: &mut Outbox<E>,
    out: &mut VecDeque<Bytes>,
    line: &mut BytesMut,
) -> std::io::Result<bool> {
    let at = out.len();
    outbox.drain_into(out);
    if chunked {
        chunk::frame_from(out, at, line);
    }
    let finished = outbox.is_finished();
    if finished && chunked {
        out.push_back(Bytes::from_static(chunk::LAST));
    }
    if let Err(e) = socket::write_all(tcp, out, direct.write_timeout()).await {
        if e.kind() == std::io::ErrorKind::TimedOut {
            // Its client stopped reading: cut off, as SPEC says of a
            // subscriber too slow to keep up.
            outbox.cut_off_as_slow();
        }
        return Err(e);
    }
    Ok(finished)
}

/// Carries on a stream whose head and opening bytes are written, until it
/// ends or the client goes. Everything waiting goes out in one write.
pub(super) async fn run<E: Encode + Default + PartialEq>(
    direct: &Direct,
    lots: &Arc<Lots<Streams<E>>>,
    tcp: &Arc<TcpStream>,
    chunked: bool,
    outbox: &mut Outbox<E>,
    buf: &mut BytesMut,
) -> After {
    let mut out = VecDeque::new();
    let mut line = BytesMut::new();
    loop {
        // Decided before waiting, so that what `hold` returned is not kept
        // across the wait: every byte here is held by every idle stream.
        let wait = match live::hold(lots, tcp, outbox, chunked, buf).await {
            // What the lot could not write goes out before anything the
            // subscription yields from here on.
            Held::Back { rest } => {
                out = rest;
                false
            }
            Held::End { rest, next } => {
                out = rest;
                outbox.push(next);
                false
            }
            Held::Gone => return After::Close,
            Held::NotNow => true,
        };
        if wait {
            tokio::select! {
                () = outbox.fill() => {}
                () = client_gone(tcp, buf) => return After::Close,
            }
        }
        match flush(direct, tcp, chunked, outbox, &mut out, &mut line).await {
            Err(_) => return After::Close,
            Ok(false) => {}
            Ok(true) if chunked => return After::Next,
            Ok(true) => return After::Close,
        }
    }
}
