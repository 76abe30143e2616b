//! The socket as the direct path uses it: vectored writes of shared
//! `Bytes` ([`crate::http1::write`] over the socket), reads that keep
//! nothing allocated while the peer is quiet, and
//! [`Rewind`], which gives hyper a connection along with the bytes already
//! read from it.

use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use std::future::Future;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Sleep;

use crate::http1::write::{TryWrite, write_now};

/// Most bytes taken by one read.
const READ_CHUNK: usize = 2048;

/// A socket takes what it has room for now.
impl TryWrite for &TcpStream {
    fn try_write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        TcpStream::try_write_vectored(self, bufs)
    }
}

/// Writes every buffer of `parts`, in order, with as few syscalls as the
/// socket allows, waiting for room; `parts` is empty afterwards unless an
/// error came first. A socket that takes nothing for `timeout` is an error
/// (`TimedOut`): its client stopped reading.
pub async fn write_all(
    mut tcp: &TcpStream,
    parts: &mut VecDeque<Bytes>,
    timeout: Duration,
) -> io::Result<()> {
    while !write_now(&mut tcp, parts)? {
        match tokio::time::timeout(timeout, tcp.writable()).await {
            Ok(ready) => ready?,
            Err(_) => return Err(io::ErrorKind::TimedOut.into()),
        }
    }
    Ok(())
}

/// How long, and how much, a connection closed on a refusal is read and
/// thrown away before it is closed.
const LINGER: Duration = Duration::from_secs(2);
const LINGER_BYTES: usize = 1 << 20;

/// Ends the server's side of a connection it refused, then reads and drops
/// what the client still sends, for a moment: closing a socket with unread
/// bytes resets it, and the client might lose the answer it was sent.
pub async fn linger(tcp: &TcpStream) {
    let _ = socket2::SockRef::from(tcp).shutdown(std::net::Shutdown::Write);
    let deadline = tokio::time::Instant::now() + LINGER;
    let mut drained = 0;
    let mut sink = [0u8; 4096];
    while drained < LINGER_BYTES {
        match tokio::time::timeout_at(deadline, tcp.readable()).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) | Err(_) => return,
        }
        match tcp.try_read(&mut sink) {
            Ok(0) => return,
            Ok(n) => drained += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(_) => return,
        }
    }
}

/// Waits until the peer sends something, then appends what is there (up to
/// [`READ_CHUNK`]) to `buf`. `Ok(0)` is the end of the stream. The read
/// goes through the stack, so `buf` grows by what arrived and a quiet
/// connection holds no buffer at all.
pub async fn read_some(tcp: &TcpStream, buf: &mut BytesMut) -> io::Result<usize> {
    loop {
        tcp.readable().await?;
        let mut chunk = [0u8; READ_CHUNK];
        match tcp.try_read(&mut chunk) {
            Ok(n) => {
                buf.extend_from_slice(&chunk[..n]);
                return Ok(n);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
}

/// A connection with bytes already read from it in front, for hyper to
/// read first; its writes fail (`TimedOut`) once the socket has taken
/// nothing for the write timeout, so hyper closes a connection whose
/// client stopped reading (hyper has no such timeout of its own).
/// With nothing in front, it is the timed socket a TLS session runs on.
#[derive(Debug)]
pub struct Rewind {
    prefix: Bytes,
    inner: TcpStream,
    write_timeout: Duration,
    /// Running while a write waits for room.
    stalled: Option<Pin<Box<Sleep>>>,
}

impl Rewind {
    pub fn new(prefix: Bytes, inner: TcpStream, write_timeout: Duration) -> Rewind {
        Rewind {
            prefix,
            inner,
            write_timeout,
            stalled: None,
        }
    }

    /// What a write came to, minding the timeout: a pending write starts
    /// (or goes on waiting on) the timer, any progress stops it.
    fn timed<T>(
        &mut self,
        cx: &mut Context<'_>,
        polled: Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        if polled.is_ready() {
            self.stalled = None;
            return polled;
        }
        let timeout = self.write_timeout;
        let stalled = self
            .stalled
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        match stalled.as_mut().poll(cx) {
            Poll::Ready(()) => {
                self.stalled = None;
                Poll::Ready(Err(io::ErrorKind::TimedOut.into()))
            }
            Poll::Pending => Poll::Pending,
        }
    }

    /// The client's address, if the socket still knows it.
    pub fn peer_addr(&self) -> Option<std::net::SocketAddr> {
        self.inner.peer_addr().ok()
    }
}

impl AsyncRead for Rewind {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix[..n]);
            self.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Rewind {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.timed(cx, polled)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.timed(cx, polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
