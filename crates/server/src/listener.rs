//! The accept loop. Every connection starts on the direct path
//! ([`crate::direct`]), which answers subscribe requests itself and hands
//! anything else, with the connection, to hyper and the router.

use std::future::Future;
use std::io;
use std::time::Duration;

use axum::Router;
use axum::extract::Request;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};
use tower::ServiceExt;

use crate::direct::{self, Direct, Outcome, socket::Rewind};
use crate::request::Peer;
use crate::state::AppState;

/// How long shutdown waits for WebSocket tasks to say goodbye.
const SOCKET_GRACE: Duration = Duration::from_secs(5);

/// Serves `state` on `listener` until `stop` resolves; then cancels the
/// shutdown token (ending every stream, long poll and socket), lets open
/// responses finish and waits a moment for WebSocket tasks.
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    stop: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let token = state.shutdown().clone();
    let router = crate::app(state.clone());
    let direct = Direct::new(state.clone());
    // Every connection holds a watcher from accept to close, so shutdown
    // below waits for direct-path connections as well as hyper's.
    let graceful = GracefulShutdown::new();
    let stop = async move {
        tokio::select! {
            () = stop => {}
            () = token.cancelled() => {}
        }
    };
    tokio::pin!(stop);
    loop {
        let tcp = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((tcp, _)) => tcp,
                Err(e) => {
                    accept_failed(e).await;
                    continue;
                }
            },
            () = &mut stop => break,
        };
        tokio::spawn(connection(
            direct.clone(),
            router.clone(),
            tcp,
            graceful.watcher(),
        ));
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

/// One connection, from accept to close.
async fn connection(direct: Direct, router: Router, tcp: TcpStream, watcher: Watcher) {
    // Nagle's algorithm would hold a small event back until the client
    // acknowledges the previous one (up to 40 ms with delayed ACKs): push
    // servers write small frames and want each out at once.
    if let Err(e) = tcp.set_nodelay(true) {
        tracing::debug!(error = %e, "could not set TCP_NODELAY");
    }
    match direct::serve(&direct, tcp).await {
        Outcome::Closed => drop(watcher),
        // Boxed: hyper's connection state is large, and an idle subscriber
        // on the direct path should not carry room for it.
        Outcome::Handover(io) => Box::pin(hyper_connection(router, io, watcher)).await,
    }
}

/// Serves the rest of a connection with hyper (HTTP/1 or HTTP/2, upgrades
/// allowed), ending it gracefully on shutdown. Every request carries the
/// client's address ([`Peer`]), as the direct path's do.
async fn hyper_connection(router: Router, io: Rewind, watcher: Watcher) {
    let peer = io.peer_addr();
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // HTTP/2 WebSockets (RFC 8441) need the extended CONNECT protocol.
    builder.http2().enable_connect_protocol();
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

/// Accept errors: a connection that failed before it was accepted is not
/// ours to worry about; anything else (out of file descriptors, mostly)
/// is logged and waited out, so the loop does not spin.
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
