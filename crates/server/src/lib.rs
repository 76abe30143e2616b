//! herald's HTTP server: [`app`] builds the router over an [`AppState`];
//! [`serve`] runs it, over plain TCP or TLS, until shutdown and then ends
//! every stream cleanly.

use axum::Router;
use axum::routing::{get, post};

pub mod access;
mod answer;
mod api_queue;
pub mod auth;
mod body;
pub mod cors;
mod counter;
mod dashboard;
pub mod direct;
pub mod error;
mod framing;
pub mod http1;
mod inspect;
pub mod limits;
mod listener;
pub mod negotiate;
mod notifications;
mod ops;
mod plan;
mod publish;
pub mod query;
pub mod request;
pub mod responses;
mod seed;
pub mod state;
pub mod subscribe;
mod task_stream;
mod tasks;
pub mod tls;
pub mod transport;
mod work;

pub use error::ApiError;
pub use ops::describe_metrics;
pub use state::{AppState, ServerConfig};
pub use tls::{Tls, TlsError};

/// The whole HTTP surface of herald.
pub fn app(state: AppState) -> Router {
    Router::new()
        .route("/", get(dashboard::page))
        .route("/healthz", get(ops::healthz))
        .route("/metrics", get(ops::metrics))
        // CONNECT: HTTP/2's WebSocket upgrade (RFC 8441), decided with the
        // rest of the request in `subscribe::decide`.
        .route(
            "/topics/{topic}",
            get(subscribe::handle)
                .post(publish::one)
                .connect(subscribe::handle),
        )
        .route(
            "/subscribe",
            get(subscribe::handle).connect(subscribe::handle),
        )
        .route("/topics", get(inspect::topics))
        .route("/publish", post(publish::batch))
        .route(
            "/api/notifications",
            get(subscribe::handle).post(notifications::notify),
        )
        .route("/sse", get(counter::counter))
        .route("/api/queue", get(api_queue::poll).post(api_queue::enqueue))
        .route("/queues", get(inspect::queues))
        .route(
            "/queues/{queue}/tasks",
            get(inspect::tasks).post(tasks::enqueue),
        )
        .route("/queues/{queue}/claim", post(tasks::claim))
        .route(
            "/queues/{queue}/work",
            get(work::handle).connect(work::handle),
        )
        .route("/tasks/{id}", get(tasks::get).delete(tasks::cancel))
        .route(
            "/tasks/{id}/events",
            get(task_stream::events).connect(task_stream::events),
        )
        .route("/tasks/{id}/progress", post(tasks::progress))
        .route("/tasks/{id}/complete", post(tasks::complete))
        .route("/tasks/{id}/fail", post(tasks::fail))
        .fallback(|| async { ApiError::NotFound })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .layer(axum::middleware::from_fn(framing::refuse_ambiguous))
        // Outermost: every request hyper serves passes the gate first.
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            access::layer,
        ))
        .with_state(state)
}

pub use listener::serve;
