//! herald's HTTP server: [`app`] builds the router over an [`AppState`];
//! [`serve`] runs it until shutdown and then ends every stream cleanly.

use std::future::Future;
use std::time::Duration;

use axum::Router;
use axum::routing::{get, post};
use axum::serve::ListenerExt;
use tokio::net::TcpListener;

mod articles;
mod body;
pub mod error;
pub mod negotiate;
mod ops;
mod publish;
pub mod query;
pub mod state;
mod subscribe;
mod task_stream;
mod tasks;
pub mod transport;

pub use error::ApiError;
pub use ops::describe_metrics;
pub use state::{AppState, ServerConfig};

/// How long shutdown waits for WebSocket tasks to say goodbye.
const SOCKET_GRACE: Duration = Duration::from_secs(5);

/// The whole HTTP surface of herald.
pub fn app(state: AppState) -> Router {
    Router::new()
        .route("/", get(ops::dashboard))
        .route("/healthz", get(ops::healthz))
        .route("/metrics", get(ops::metrics))
        .route("/topics/{topic}", get(subscribe::one).post(publish::one))
        .route("/subscribe", get(subscribe::many))
        .route("/publish", post(publish::batch))
        .route(
            "/api/notifications",
            get(articles::follow).post(articles::notify),
        )
        .route("/sse", get(articles::counter))
        .route("/api/queue", get(articles::poll).post(articles::enqueue))
        .route("/queues/{queue}/tasks", post(tasks::enqueue))
        .route("/queues/{queue}/claim", post(tasks::claim))
        .route("/tasks/{id}", get(tasks::get).delete(tasks::cancel))
        .route("/tasks/{id}/events", get(task_stream::events))
        .route("/tasks/{id}/progress", post(tasks::progress))
        .route("/tasks/{id}/complete", post(tasks::complete))
        .route("/tasks/{id}/fail", post(tasks::fail))
        .fallback(|| async { ApiError::NotFound })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .with_state(state)
}

/// Serves `state` on `listener` until `stop` resolves; then cancels the
/// shutdown token (ending every stream, long poll and socket), lets open
/// responses finish and waits a moment for WebSocket tasks.
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    stop: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let token = state.shutdown().clone();
    let sockets = state.sockets().clone();
    let signal = {
        let token = token.clone();
        async move {
            tokio::select! {
                () = stop => {}
                () = token.cancelled() => {}
            }
            token.cancel();
        }
    };
    // Nagle's algorithm would hold a small event back until the client
    // acknowledges the previous one (up to 40 ms with delayed ACKs): push
    // servers write small frames and want each out at once.
    let listener = listener.tap_io(|tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "could not set TCP_NODELAY");
        }
    });
    axum::serve(listener, app(state))
        .with_graceful_shutdown(signal)
        .await?;
    sockets.close();
    if tokio::time::timeout(SOCKET_GRACE, sockets.wait())
        .await
        .is_err()
    {
        tracing::warn!("some WebSocket connections did not close in time");
    }
    Ok(())
}
