//! `herald serve`: build the store, the hub and the task engine, then serve
//! HTTP (or HTTPS, reloading its files on SIGHUP) until SIGINT or SIGTERM.

use std::sync::Arc;

use anyhow::Context;
use herald_core::Hub;
use herald_core::fanout::Fanout;
use herald_core::heartbeat::Heartbeat;
use herald_core::store::Store;
use herald_core::store::memory::MemoryStore;
use herald_core::store::redis::RedisStore;
use herald_core::store::shared::SharedReads;
use herald_core::store::sqlite::{SqliteConfig, SqliteStore};
use herald_core::task::TaskStore;
use herald_core::task::engine::Tasks;
use herald_server::{AppState, Tls, describe_metrics};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::cli::{ServeConfig, StoreChoice};

/// Bucket bounds, in seconds, of every histogram herald records (all are
/// latencies): 100 µs (a memory-store read) to 30 s (a long claim wait or
/// a slow task). Without them the exporter renders summaries, which cannot
/// be aggregated across nodes.
const LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 30.0,
];

fn install_metrics() -> anyhow::Result<PrometheusHandle> {
    let handle = PrometheusBuilder::new()
        .set_buckets(LATENCY_BUCKETS)
        .context("setting the histogram buckets")?
        .install_recorder()
        .context("installing the metrics recorder")?;
    let upkeep = handle.clone();
    tokio::spawn(async move {
        let mut every = tokio::time::interval(std::time::Duration::from_secs(5));
        loop {
            every.tick().await;
            upkeep.run_upkeep();
        }
    });
    describe_metrics();
    metrics::describe_gauge!(
        "herald_build_info",
        "Always 1; the version label names the running herald."
    );
    metrics::gauge!("herald_build_info", "version" => env!("CARGO_PKG_VERSION")).set(1.0);
    Ok(handle)
}

pub async fn serve(config: ServeConfig) -> anyhow::Result<()> {
    // Every subscriber holds a socket: allow as many as the hard limit does.
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(n) => tracing::debug!(limit = n, "open-file limit"),
        Err(e) => tracing::warn!(error = %e, "could not raise the open-file limit"),
    }
    // Read before anything starts: a file that cannot be used is an error
    // at start-up, naming the file.
    let tls = match &config.tls {
        Some(files) => Some(Tls::load(&files.cert, &files.key)?),
        None => None,
    };
    let metrics = install_metrics()?;
    let shutdown = CancellationToken::new();
    let fanout = Fanout::new(config.subscriber_buffer);
    // Reads that wait on a disk or a network are shared by the callers
    // asking for the same page at once: a reconnect storm reads each page
    // once, not once per client. Not the memory store's: its read answers
    // in the poll that starts it, so no other caller is ever waiting on it
    // (a storm shared none of 8,000), and its pages already hold the
    // store's own events rather than copies.
    let shared = |store: Arc<dyn Store>| -> Arc<dyn Store> {
        Arc::new(SharedReads::new(store, Arc::clone(&fanout)))
    };
    let (store, task_store): (Arc<dyn Store>, Arc<dyn TaskStore>) = match &config.store {
        StoreChoice::Memory => {
            let memory = MemoryStore::new(config.retention, Arc::clone(&fanout));
            (memory.clone(), memory)
        }
        StoreChoice::File { dir, max_bytes } => {
            let sqlite = SqliteConfig {
                dir: dir.clone(),
                retention: config.retention,
                max_bytes: *max_bytes,
            };
            let sqlite = SqliteStore::open(sqlite, Arc::clone(&fanout))
                .context("opening the embedded store")?;
            (shared(sqlite.clone()), sqlite)
        }
        StoreChoice::Redis { url } => {
            let redis = RedisStore::connect(url, config.retention, Arc::clone(&fanout))
                .await
                .context("connecting to Redis")?;
            (shared(redis.clone()), redis)
        }
    };
    tracing::info!(store = %store.describe(), "store ready");
    match &config.server.auth {
        Some(auth) => tracing::info!(keys = %auth.describe(), "authorization on"),
        None => tracing::info!("authorization off: every route is open"),
    }
    let heartbeat = Heartbeat::start(config.hub.keepalive, shutdown.clone());
    let hub = Hub::new(
        Arc::clone(&store) as Arc<dyn Store>,
        config.hub.clone(),
        heartbeat,
    );
    let tasks = Tasks::start(task_store, hub)
        .await
        .context("reading the task queue")?;
    let state = AppState::new(tasks, config.server.clone(), Some(metrics));
    let listener = listen(config.listen).with_context(|| format!("binding {}", config.listen))?;
    let addr = listener.local_addr().context("reading the bound address")?;
    let stop = stop_signal();
    tracing::info!(%addr, "listening");
    let scheme = if tls.is_some() { "https" } else { "http" };
    // One plain line on stdout, for scripts and tests that asked for port 0.
    println!("herald listening on {scheme}://{addr}");
    reload_on_hangup(tls.clone());
    herald_server::serve(listener, state, tls, stop).await?;
    tracing::info!("stopped");
    Ok(())
}

/// Binds with a deep accept queue: thousands of clients reconnect at once
/// after a restart, and the default backlog of 128 makes the rest wait a
/// SYN retransmit (a full second).
fn listen(addr: std::net::SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(4096)
}

/// Reads the TLS files again on each SIGHUP. New handshakes get what was
/// read; open connections keep their sessions. A reload that fails keeps
/// the files in use. Without TLS a SIGHUP is logged and changes nothing:
/// its default action would end the process, and a service manager's
/// `reload` sends it whatever the flags.
fn reload_on_hangup(tls: Option<Tls>) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut hangups = match signal(SignalKind::hangup()) {
            Ok(hangups) => hangups,
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGHUP: TLS files will not be reloaded");
                return;
            }
        };
        tokio::spawn(async move {
            while hangups.recv().await.is_some() {
                let Some(tls) = &tls else {
                    tracing::info!("SIGHUP: nothing to reload (no --tls-cert)");
                    continue;
                };
                let (cert, key) = tls.files();
                match tls.reload() {
                    Ok(()) => {
                        tracing::info!(cert = %cert.display(), key = %key.display(), "SIGHUP: TLS certificate reloaded")
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "SIGHUP: TLS reload failed; still serving the previous certificate")
                    }
                }
            }
        });
    }
    #[cfg(not(unix))]
    drop(tls);
}

/// Resolves on SIGINT or SIGTERM. The handlers are installed when this is
/// called, before the caller says it is listening: a signal sent right
/// after that line is a clean shutdown, not the default death.
fn stop_signal() -> impl std::future::Future<Output = ()> + Send + 'static {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{Signal, SignalKind, signal};
        async fn one(signal: Option<Signal>) {
            match signal {
                Some(mut s) => {
                    s.recv().await;
                }
                None => std::future::pending::<()>().await,
            }
        }
        let int = signal(SignalKind::interrupt()).ok();
        let term = signal(SignalKind::terminate()).ok();
        async move {
            tokio::select! {
                () = one(int) => tracing::info!("SIGINT: shutting down"),
                () = one(term) => tracing::info!("SIGTERM: shutting down"),
            }
        }
    }
    #[cfg(not(unix))]
    async {
        if tokio::signal::ctrl_c().await.is_ok() {
            tracing::info!("Ctrl-C: shutting down");
        } else {
            std::future::pending::<()>().await;
        }
    }
}
