//! The accept loop. A plain connection starts on the direct path
//! ([`crate::direct`]), which answers subscribe requests itself and hands
//! anything else, with the connection, to hyper and the router; a TLS
//! connection goes to hyper once its handshake is done.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::extract::Request;
use bytes::Bytes;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tower::ServiceExt;

use crate::direct::{self, Direct, Outcome, socket::Rewind};
use crate::request::Peer;
use crate::responses::{Responses, Route};
use crate::state::AppState;
use crate::tls::Tls;

/// How long shutdown waits for WebSocket tasks to say goodbye.
const SOCKET_GRACE: Duration = Duration::from_secs(5);

/// Serves `state` on `listener` until `stop` resolves; then cancels the
/// shutdown token (ending every stream, long poll and socket), lets open
/// responses finish and waits a moment for WebSocket tasks. With `tls`,
/// every connection is HTTPS.
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    tls: Option<Tls>,
    stop: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let token = state.shutdown().clone();
    let router = crate::app(state.clone());
    let direct = Direct::new(state.clone());
    // Every connection holds a watcher from accept to close, so shutdown
    // below waits for direct-path and TLS connections as well as hyper's.
    let graceful = GracefulShutdown::new();
    let stop = async move {
        tokio::select! {
            () = stop => {}
            () = token.cancelled() => {}
        }
    };
    tokio::pin!(stop);
    let mut spare = Spare::open();
    loop {
        let tcp = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((tcp, _)) => {
                    spare.recovered();
                    tcp
                }
                Err(e) if is_out_of_files(&e) => {
                    spare.refuse_one(&listener, state.responses()).await;
                    continue;
                }
                Err(e) => {
                    accept_failed(e).await;
                    continue;
                }
            },
            () = &mut stop => break,
        };
        // `--max-connections`: beyond it, refused at once as when out of
        // descriptors.
        let Some(place) = state.limits().connection() else {
            refuse(tcp, state.responses());
            continue;
        };
        let watcher = graceful.watcher();
        match &tls {
            Some(tls) => tokio::spawn(secure(
                state.clone(),
                router.clone(),
                tls.clone(),
                tcp,
                (watcher, place),
            )),
            None => tokio::spawn(connection(
                direct.clone(),
                router.clone(),
                tcp,
                (watcher, place),
            )),
        };
    }
    state.shutdown().cancel();
    drop(listener);
    graceful.shutdown().await;
    let sockets = state.sockets();
    sockets.close();
    if tokio::time::timeout(SOCKET_GRACE, sockets.wait())
        .await
        .is_err()
    {
        tracing::warn!("some WebSocket connections did not close in time");
    }
    Ok(())
}

/// Nagle's algorithm would hold a small event back until the client
/// acknowledges the previous one (up to 40 ms with delayed ACKs): push
/// servers write small frames and want each out at once.
fn no_delay(tcp: &TcpStream) {
    if let Err(e) = tcp.set_nodelay(true) {
        tracing::debug!(error = %e, "could not set TCP_NODELAY");
    }
}

/// What a connection holds from accept to close: shutdown's watcher, and
/// its place under `--max-connections`.
type Held = (Watcher, crate::limits::Connection);

/// One plain connection, from accept to close.
async fn connection(direct: Direct, router: Router, tcp: TcpStream, (watcher, _place): Held) {
    no_delay(&tcp);
    match direct::serve(&direct, tcp).await {
        Outcome::Closed => drop(watcher),
        // Boxed: hyper's connection state is large, and an idle subscriber
        // on the direct path should not carry room for it.
        Outcome::Handover(io) => {
            let state = direct.state().clone();
            let peer = io.peer_addr();
            Box::pin(hyper_connection(state, router, io, peer, watcher)).await;
        }
    }
}

/// One TLS connection: the handshake, then hyper for every request.
///
/// TLS connections skip the direct path, which reads and writes the plain
/// socket itself. That skips no rule: what a subscribe request is and may
/// do is decided by [`crate::subscribe::decide`] for both stacks, and the
/// request checks the direct path makes before handing over (framing) run
/// again as the router's layer, so hyper serving a request whole is a way
/// in like any other.
async fn secure(
    state: AppState,
    router: Router,
    tls: Tls,
    tcp: TcpStream,
    (watcher, _place): Held,
) {
    no_delay(&tcp);
    let config = state.config();
    // Under TLS, on the same write timeout as a plain connection: a client
    // that stops reading is cut off, whichever protocol it speaks.
    let io = Rewind::new(Bytes::new(), tcp, config.write_timeout);
    let peer = io.peer_addr();
    // A client that opens a connection and sends nothing must not hold a
    // descriptor for ever: the handshake and the first bytes after it get
    // the time a plain connection's first head gets. hyper would wait for
    // those bytes untimed (it reads them to tell HTTP/1 from HTTP/2), so
    // they are awaited here, in a buffer no larger than HTTP/2's preface
    // (reads larger than it go past it).
    let deadline = tokio::time::Instant::now() + config.head_timeout;
    let opening = async {
        let io = tls.accept(io).await?;
        let mut io = BufReader::with_capacity(PREFACE, io);
        io.fill_buf().await?;
        io::Result::Ok(io)
    };
    let io = tokio::select! {
        opened = tokio::time::timeout_at(deadline, opening) => match opened {
            Ok(Ok(io)) if !io.buffer().is_empty() => io,
            Ok(Ok(_)) => return,
            Ok(Err(e)) => {
                tracing::debug!(error = %e, ?peer, "TLS connection failed before its first request");
                return;
            }
            Err(_) => {
                tracing::debug!(?peer, "TLS connection sent nothing in time");
                return;
            }
        },
        () = state.shutdown().cancelled() => return,
    };
    Box::pin(hyper_connection(state.clone(), router, io, peer, watcher)).await;
}

/// The length of HTTP/2's connection preface.
const PREFACE: usize = 24;

/// Serves the rest of a connection with hyper (HTTP/1 or HTTP/2, upgrades
/// allowed), ending it gracefully on shutdown. Every request carries the
/// client's address ([`Peer`]), as the direct path's do.
async fn hyper_connection<IO>(
    state: AppState,
    router: Router,
    io: IO,
    peer: Option<SocketAddr>,
    watcher: Watcher,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // HTTP/2 WebSockets (RFC 8441) need the extended CONNECT protocol.
    builder.http2().enable_connect_protocol();
    // hyper times the wait for the next head as one span, idle time
    // included; a connection's first bytes came under the head timeout
    // (on the direct path, or after the TLS handshake).
    let config = state.config();
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(config.idle_timeout + config.head_timeout);
    builder
        .http2()
        .max_header_list_size(u32::try_from(crate::http1::head::MAX_HEAD).unwrap_or(u32::MAX))
        // HTTP/2 has no idle timeout of its own here: a peer that vanished
        // is found by a ping unanswered within the write timeout.
        .timer(TokioTimer::new())
        .keep_alive_interval(Some(config.idle_timeout))
        .keep_alive_timeout(config.write_timeout);
    let service = router.map_request(move |mut request: Request<_>| {
        if let Some(peer) = peer {
            request.extensions_mut().insert(Peer(peer));
        }
        request
    });
    let conn =
        builder.serve_connection_with_upgrades(TokioIo::new(io), TowerToHyperService::new(service));
    if let Err(e) = watcher.watch(conn).await {
        tracing::trace!(error = %e, "connection ended with an error");
    }
}

/// Out of file descriptors: this process's (`EMFILE`) or the system's
/// (`ENFILE`).
fn is_out_of_files(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(23 | 24))
}

/// A descriptor held in reserve for the moment the process runs out: let
/// go of, it makes room to accept one waiting connection and refuse it at
/// once (`503`, `Retry-After`), instead of leaving it to hang in the
/// kernel's queue. Logs when the process runs out and when it recovers,
/// not at every refusal.
struct Spare {
    file: Option<std::fs::File>,
    refused: u64,
}

/// What a connection gets when no descriptor is free to serve it.
const AT_CAPACITY: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\n\
content-type: application/json\r\nretry-after: 5\r\nconnection: close\r\n\
content-length: 95\r\n\r\n\
{\"error\":{\"code\":\"unavailable\",\"message\":\"the server is at its connection limit; retry later\"}}";

impl Spare {
    fn open() -> Spare {
        Spare {
            file: std::fs::File::open("/dev/null").ok(),
            refused: 0,
        }
    }

    /// Accepts one waiting connection with the spare descriptor's room and
    /// refuses it; without a spare (it could not be opened again), waits a
    /// moment so the loop does not spin.
    async fn refuse_one(&mut self, listener: &TcpListener, responses: &Responses) {
        if self.refused == 0 {
            tracing::error!(
                "out of file descriptors: refusing new connections with 503 until some close \
                 (raise the limit: ulimit -n)"
            );
        }
        self.refused += 1;
        if self.file.take().is_none() {
            tokio::time::sleep(Duration::from_millis(100)).await;
            self.file = std::fs::File::open("/dev/null").ok();
            return;
        }
        if let Ok(Ok((tcp, _))) =
            tokio::time::timeout(Duration::from_millis(10), listener.accept()).await
        {
            refuse(tcp, responses);
        }
        self.file = std::fs::File::open("/dev/null").ok();
    }

    /// A connection was accepted normally again.
    fn recovered(&mut self) {
        if self.refused > 0 {
            tracing::warn!(refused = self.refused, "accepting connections again");
            self.refused = 0;
        }
    }
}

/// Answers `503` without reading the request (so its route is `other`),
/// and closes.
fn refuse(tcp: TcpStream, responses: &Responses) {
    responses.count(Route::Other, axum::http::StatusCode::SERVICE_UNAVAILABLE);
    // What the client sent already is read first: closing a socket with
    // unread bytes resets it, and the client might not see the answer.
    let mut sink = [0u8; 4096];
    while matches!(tcp.try_read(&mut sink), Ok(n) if n > 0) {}
    let _ = tcp.try_write(AT_CAPACITY);
    if let Ok(std) = tcp.into_std() {
        let _ = std.shutdown(std::net::Shutdown::Write);
    }
}

/// Accept errors: a connection that failed before it was accepted is not
/// ours to worry about; anything else is logged and waited out, so the
/// loop does not spin.
async fn accept_failed(e: io::Error) {
    if matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    ) {
        return;
    }
    tracing::error!(error = %e, "accept failed");
    tokio::time::sleep(Duration::from_secs(1)).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_refusal_is_a_whole_json_answer() {
        let mut headers = [httparse::EMPTY_HEADER; 8];
        let mut response = httparse::Response::new(&mut headers);
        let len = match response.parse(AT_CAPACITY) {
            Ok(httparse::Status::Complete(len)) => len,
            other => panic!("{other:?}"),
        };
        assert_eq!(response.code, Some(503));
        let body = &AT_CAPACITY[len..];
        let declared = response
            .headers
            .iter()
            .find(|h| h.name == "content-length")
            .map(|h| {
                std::str::from_utf8(h.value)
                    .unwrap()
                    .parse::<usize>()
                    .unwrap()
            });
        assert_eq!(declared, Some(body.len()));
        let v: serde_json::Value = serde_json::from_slice(body).unwrap();
        assert_eq!(v["error"]["code"], "unavailable");
    }
}
