//! What every handler shares: the hub, the validated settings, the
//! shutdown signal and the tracker of socket tasks.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use herald_core::Hub;
use herald_core::task::engine::Tasks;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::Auth;

/// Settings of the HTTP layer, validated by the binary before start-up.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Largest request body accepted, in bytes (one event or a whole batch).
    pub max_body: usize,
    /// Reconnection delay sent to SSE clients in the `retry:` field.
    pub retry: Duration,
    /// Long-poll timeout when the client names none.
    pub long_poll_default: Duration,
    /// Longest long-poll timeout a client may ask for; larger asks are capped.
    pub long_poll_max: Duration,
    /// How long a request head may take to arrive whole, from when the
    /// server starts waiting for it on a new connection, or from its first
    /// byte on a kept-alive one.
    pub head_timeout: Duration,
    /// How long a kept-alive connection may sit between requests.
    pub idle_timeout: Duration,
    /// How long a request body may take to arrive whole.
    pub body_timeout: Duration,
    /// How long a socket may take nothing of what the server writes to it
    /// before the connection is closed (a stream cut off as slow).
    pub write_timeout: Duration,
    /// Who may do what (`--auth-jwt-secret` / `--auth-jwt-key`); `None`
    /// leaves every route open. Shared: every request reads it.
    pub auth: Option<Arc<Auth>>,
    /// Origins whose pages may read answers (`--cors-origin`).
    pub cors: crate::cors::Origins,
    /// How much one client, and all of them, may take.
    pub limits: crate::limits::LimitConfig,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            max_body: 1024 * 1024,
            retry: Duration::from_secs(3),
            long_poll_default: Duration::from_secs(30),
            long_poll_max: Duration::from_secs(300),
            head_timeout: Duration::from_secs(20),
            idle_timeout: Duration::from_secs(75),
            body_timeout: Duration::from_secs(60),
            write_timeout: Duration::from_secs(10),
            auth: None,
            cors: crate::cors::Origins::default(),
            limits: crate::limits::LimitConfig::default(),
        }
    }
}

/// A cheap, clonable handle on the server's shared state.
#[derive(Clone, Debug)]
pub struct AppState {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    hub: Hub,
    tasks: Tasks,
    config: ServerConfig,
    metrics: Option<PrometheusHandle>,
    shutdown: CancellationToken,
    sockets: TaskTracker,
    limits: Arc<crate::limits::Limits>,
    /// `herald_http_responses_total`, counted by both stacks.
    responses: crate::responses::Responses,
    /// The `retry:` line and comment every SSE stream opens with, encoded once.
    sse_preamble: Bytes,
}

impl AppState {
    /// The shutdown token is the one the hub's heartbeat watches.
    pub fn new(tasks: Tasks, config: ServerConfig, metrics: Option<PrometheusHandle>) -> AppState {
        let retry_ms = u64::try_from(config.retry.as_millis()).unwrap_or(u64::MAX);
        let hub = tasks.hub().clone();
        let shutdown = hub.heartbeat().shutdown().clone();
        AppState {
            inner: Arc::new(Inner {
                sse_preamble: herald_protocol::sse::preamble(retry_ms, "herald"),
                limits: crate::limits::Limits::new(config.limits),
                responses: crate::responses::Responses::default(),
                hub,
                tasks,
                config,
                metrics,
                shutdown,
                sockets: TaskTracker::new(),
            }),
        }
    }

    pub fn hub(&self) -> &Hub {
        &self.inner.hub
    }

    pub fn tasks(&self) -> &Tasks {
        &self.inner.tasks
    }

    pub fn config(&self) -> &ServerConfig {
        &self.inner.config
    }

    pub fn metrics(&self) -> Option<&PrometheusHandle> {
        self.inner.metrics.as_ref()
    }

    pub fn shutdown(&self) -> &CancellationToken {
        &self.inner.shutdown
    }

    /// Tracks WebSocket tasks, which the HTTP server does not wait for.
    pub fn sockets(&self) -> &TaskTracker {
        &self.inner.sockets
    }

    /// The live counts the limits are checked against.
    pub fn limits(&self) -> &Arc<crate::limits::Limits> {
        &self.inner.limits
    }

    /// Every answer sent, by route and status.
    pub fn responses(&self) -> &crate::responses::Responses {
        &self.inner.responses
    }

    pub fn sse_preamble(&self) -> Bytes {
        self.inner.sse_preamble.clone()
    }
}
