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

/// Writes `head`, then `outbox` until it ends or the client goes.
/// Everything waiting goes out in one write.
pub(super) async fn run<E: Encode + Default + PartialEq>(
    direct: &Direct,
    lots: &Arc<Lots<Streams<E>>>,
    tcp: &Arc<TcpStream>,
    http10: bool,
    head: Bytes,
    outbox: &mut Outbox<E>,
    buf: &mut BytesMut,
) -> After {
    let chunked = !http10;
    let mut out = VecDeque::from([head]);
    let mut line = BytesMut::new();
    // The head goes out at once, with whatever the stream opens with (and,
    // later, bytes left to write go out before the next wait).
    let mut opening = true;
    loop {
        if !opening {
            tokio::select! {
                () = outbox.fill() => {}
                () = client_gone(tcp, buf) => return After::Close,
            }
        }
        opening = false;
        let at = out.len();
        outbox.drain_into(&mut out);
        if chunked {
            chunk::frame_from(&mut out, at, &mut line);
        }
        let finished = outbox.is_finished();
        if finished && chunked {
            out.push_back(Bytes::from_static(chunk::LAST));
        }
        if socket::write_all(tcp, &mut out).await.is_err() {
            return After::Close;
        }
        if finished {
            return if chunked { After::Next } else { After::Close };
        }
        let store = direct.state.hub().store();
        match live::hold(lots, store, tcp, outbox, chunked, buf).await {
            Held::NotNow => {}
            Held::Back { rest } => {
                // What the lot could not write goes out before anything
                // the subscription yields from here on.
                out = rest;
                opening = true;
            }
            Held::End { rest, next } => {
                out = rest;
                outbox.push(next);
                opening = true;
            }
            Held::Gone => return After::Close,
        }
    }
}
