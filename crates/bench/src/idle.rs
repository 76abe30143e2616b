//! The `idle` mode: many subscribers that only wait (SSE or WebSocket), to
//! measure how fast the server accepts them, what each costs it in memory,
//! and how fast it lets go of them when they close.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use hdrhistogram::Histogram;
use serde_json::{Value, json};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::task::JoinHandle;

use crate::metrics::{metric, wait_metric};
use crate::net::{Target, connect, http, io_err, open_sse};
use crate::procfs::{self, CpuMark, server_pid};
use crate::report::{latency_json, new_hist, round};

/// An open idle subscriber, held until the run closes it.
enum Held {
    Sse(TcpStream),
    Ws(Box<tokio_tungstenite::WebSocketStream<TcpStream>>),
}

async fn open_idle(t: &Target, topic: &str, ws: bool) -> std::io::Result<Held> {
    if ws {
        let s = connect(t).await?;
        let url = format!("ws://{}/topics/{topic}", t.host);
        let (ws, _) = tokio_tungstenite::client_async(url, s)
            .await
            .map_err(|e| io_err(format!("WebSocket {topic}: {e}")))?;
        Ok(Held::Ws(Box::new(ws)))
    } else {
        let (s, _) = open_sse(t, &format!("/topics/{topic}"), None).await?;
        Ok(Held::Sse(s))
    }
}

/// Reads (and discards: keep-alives) until the run says stop.
async fn hold(conn: Held, mut stop: watch::Receiver<bool>) {
    match conn {
        Held::Sse(mut s) => {
            let mut buf = [0u8; 256];
            loop {
                tokio::select! {
                    r = s.read(&mut buf) => if !matches!(r, Ok(n) if n > 0) { break },
                    _ = stop.changed() => break,
                }
            }
        }
        Held::Ws(mut ws) => loop {
            tokio::select! {
                m = ws.next() => if !matches!(m, Some(Ok(_))) { break },
                _ = stop.changed() => break,
            }
        },
    }
}

/// The idle subscribers, once all have tried to open.
struct Opened {
    /// Each holds its connection until stopped.
    tasks: Vec<JoinHandle<()>>,
    count: usize,
    errors: Vec<String>,
    /// Time to open each connection, in µs.
    hist: Histogram<u64>,
    /// Seconds until the last connection was open.
    open_s: f64,
}

/// Opens `n` idle subscribers on topics idle-{i % 100}, each held by its
/// own task until `stop`, and waits until each has opened or failed to.
async fn open_all(
    t: &Target,
    n: usize,
    ws: bool,
    concurrency: usize,
    stop: watch::Receiver<bool>,
) -> Opened {
    let (tx, mut rx) = mpsc::unbounded_channel::<Result<(Instant, Duration), String>>();
    let sem = Arc::new(Semaphore::new(concurrency));
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(n);
    for i in 0..n {
        let (t, tx, stop, sem) = (t.clone(), tx.clone(), stop.clone(), sem.clone());
        tasks.push(tokio::spawn(async move {
            let permit = sem.acquire_owned().await.unwrap();
            let began = Instant::now();
            let opened = open_idle(&t, &format!("idle-{}", i % 100), ws).await;
            drop(permit);
            match opened {
                Ok(conn) => {
                    let _ = tx.send(Ok((Instant::now(), began.elapsed())));
                    hold(conn, stop).await;
                }
                Err(e) => {
                    let _ = tx.send(Err(e.to_string()));
                }
            }
        }));
    }
    drop(tx);
    let mut last = start;
    let mut opened = Opened {
        tasks,
        count: 0,
        errors: Vec::new(),
        hist: new_hist(),
        open_s: 0.0,
    };
    while let Some(r) = rx.recv().await {
        match r {
            Ok((at, took)) => {
                opened.count += 1;
                last = last.max(at);
                opened.hist.saturating_record(took.as_micros() as u64);
            }
            Err(e) => opened.errors.push(e),
        }
        if opened.count + opened.errors.len() == n {
            break;
        }
    }
    opened.open_s = last.duration_since(start).as_secs_f64();
    opened
}

/// Opens `n` idle subscribers, waits a second before reading the server's
/// RSS and subscription gauge, then closes them all and times how long the
/// gauge takes to fall back.
pub async fn idle(t: &Target, n: usize, ws: bool, concurrency: usize) -> (Value, bool) {
    let client = http();
    let transport = if ws { "ws" } else { "sse" };
    let gauge = format!("herald_subscriptions{{transport=\"{transport}\"}}");
    let gauge0 = metric(&client, t, &gauge).await;
    let pid = server_pid();
    let rss0 = pid.as_deref().and_then(procfs::rss_bytes);

    let (stop_tx, stop_rx) = watch::channel(false);
    let cpu = CpuMark::now();
    let opened = open_all(t, n, ws, concurrency, stop_rx).await;
    let cpu_open = cpu.since();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss1 = pid.as_deref().and_then(procfs::rss_bytes);
    let gauge_open = metric(&client, t, &gauge).await;

    // Close everything and time how long the server takes to notice.
    let _ = stop_tx.send(true);
    for task in opened.tasks {
        let _ = task.await;
    }
    let release = wait_metric(&client, t, &gauge, Duration::from_secs(30), |v| v <= gauge0).await;

    let count = opened.count;
    let per_conn = match (rss0, rss1) {
        (Some(a), Some(b)) if count > 0 => Some((b as f64 - a as f64) / count as f64),
        _ => None,
    };
    for e in opened.errors.iter().take(5) {
        eprintln!("open failed: {e}");
    }
    let ok = opened.errors.is_empty() && gauge_open - gauge0 == count as f64;
    let v = json!({
        "mode": "idle",
        "transport": transport,
        "conns": n,
        "opened": count,
        "errors": opened.errors.len(),
        "open_s": round(opened.open_s, 3),
        "conns_per_s": round(count as f64 / opened.open_s.max(1e-9), 0),
        "open_ms": latency_json(&opened.hist),
        "server_gauge": gauge_open - gauge0,
        "rss_before_mib": rss0.map(|b| round(b as f64 / 1048576.0, 1)),
        "rss_after_mib": rss1.map(|b| round(b as f64 / 1048576.0, 1)),
        "rss_per_conn_bytes": per_conn.map(|b| b.round()),
        "release_s": release.map(|d| round(d.as_secs_f64(), 3)),
        "cpu": cpu_open,
    });
    (v, ok)
}
