//! The `stuck` mode (issue 14, "clients that stop reading hurt everyone
//! else"): subscribers that stop reading, with a 4 KiB receive buffer,
//! beside a few that read everything, on one topic. It measures what the
//! stuck ones cost the others (loss, gaps, latency, publish latency) and
//! the server (peak memory and threads, memory after they are gone), and
//! how long the server takes to cut them off
//! (`herald_subscribers_dropped_total`).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::task::JoinHandle;

use crate::PublishArgs;
use crate::metrics::try_metric;
use crate::net::{Target, connect_with, http, read_preamble};
use crate::procfs::{self, CpuMark, server_pid};
use crate::publish::{Published, publish_sized};
use crate::report::{latency_json, round};
use crate::subscriber::{Latencies, Shared, SubStats, subscriber};

/// `SO_RCVBUF` of a stuck subscriber, set before it connects (the kernel
/// doubles it for its own bookkeeping).
const STUCK_RCVBUF: u32 = 4096;

/// How often the server's memory, threads and dropped counter are read.
const SAMPLE_EVERY: Duration = Duration::from_millis(100);

/// How long the server gets to let go of every subscription at the end.
const RELEASE_LIMIT: Duration = Duration::from_secs(30);

/// Subscribers the server cut off as too slow, since it started.
const DROPPED: &str = "herald_subscribers_dropped_total";

/// Open SSE subscriptions.
pub(crate) const SSE_GAUGE: &str = "herald_subscriptions{transport=\"sse\"}";

/// What a run is asked to do.
pub struct Load {
    pub topic: String,
    /// Subscribers that stop reading after the preamble.
    pub stuck: usize,
    /// Subscribers that read and check everything.
    pub fast: usize,
    pub events: usize,
    /// Bytes of event data per publish.
    pub size: usize,
    /// Pacing and publishers; `drain_secs` is `--settle`.
    pub publish: PublishArgs,
}

/// Opens the stuck subscribers, then the fast ones, publishes, and watches
/// the server until the fast ones have everything or `--settle` is over;
/// then closes everything and reads what memory the server kept.
pub async fn stuck(t: &Target, load: Load, concurrency: usize) -> (Value, bool) {
    let client = http();
    let pid = server_pid();
    let mut metric_errors = 0u64;
    let mut read = async |series| match try_metric(&client, t, series).await {
        Ok(v) => Some(v),
        Err(e) => {
            eprintln!("GET /metrics: {e}");
            metric_errors += 1;
            None
        }
    };
    let dropped0 = read(DROPPED).await.unwrap_or(0.0);
    let gauge0 = read(SSE_GAUGE).await.unwrap_or(0.0);
    let path = format!("/topics/{}", load.topic);

    let held = open_stuck_all(t, &path, load.stuck, concurrency).await;
    let hist = Arc::new(Mutex::new(Latencies::new()));
    let (stop_tx, stop_rx) = watch::channel(false);
    let fast = open_fast_all(t, &load, &hist, stop_rx, concurrency).await;
    let subscribed = read(SSE_GAUGE).await.map(|g| g - gauge0);
    let rss_before = pid.as_deref().and_then(procfs::rss_bytes);
    let threads_before = pid.as_deref().and_then(procfs::threads);

    let (sampled_tx, sampled_rx) = watch::channel(false);
    let cpu = CpuMark::now();
    let first_publish = Instant::now();
    let watch = Watch {
        t: t.clone(),
        pid: pid.clone(),
        dropped0,
        stuck: load.stuck as u64,
        first_publish,
    };
    let sampler = tokio::spawn(watch.run(sampled_rx));
    let topics = vec![load.topic.clone()];
    let (events, p) = (load.events, load.publish);
    let published = publish_sized(t, topics, events, p, first_publish, load.size).await;
    let publish_s = first_publish.elapsed().as_secs_f64();
    // Give the fast subscribers until the settle deadline, then stop them.
    let settle = Duration::from_secs_f64(p.drain_secs);
    tokio::spawn(async move {
        tokio::time::sleep(settle).await;
        let _ = stop_tx.send(true);
    });
    let mut stats = Vec::with_capacity(load.fast);
    for task in fast.tasks {
        stats.push(task.await.unwrap_or_else(|e| SubStats {
            error: Some(e.to_string()),
            ..SubStats::default()
        }));
    }
    let cpu_run = cpu.since();
    let _ = sampled_tx.send(true);
    let mut samples = sampler.await.unwrap_or_default();

    // Close every stuck socket (the fast ones closed as they finished).
    drop(held.streams);
    let released = wait_released(&client, t, gauge0).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_after = pid.as_deref().and_then(procfs::rss_bytes);

    // The peaks are of every reading, the ones before and after included.
    samples.rss_peak = samples.rss_peak.max(rss_before).max(rss_after);
    samples.threads_peak = samples.threads_peak.max(threads_before);
    let latency = hist.lock().unwrap_or_else(|e| e.into_inner());
    let outcome = Outcome {
        load,
        stuck_errors: held.errors,
        fast_errors: fast.errors,
        subscribed,
        first_publish,
        publish_s,
        published,
        stats,
        latency: &latency,
        samples,
        rss_before,
        threads_before,
        rss_after,
        released,
        metric_errors: metric_errors + samples.metric_errors,
        cpu_run,
    };
    outcome.verdict()
}

/// Subscribes to `path` over HTTP/1.1, as a browser would, with a small
/// receive buffer, and reads the head and the `: herald` preamble: never
/// anything more.
async fn open_stuck(t: &Target, path: &str) -> std::io::Result<TcpStream> {
    let mut s = connect_with(t, Some(STUCK_RCVBUF)).await?;
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: {}\r\nAccept: text/event-stream\r\n\r\n",
        t.host
    );
    s.write_all(req.as_bytes()).await?;
    read_preamble(&mut s, path).await?;
    Ok(s)
}

/// The stuck subscribers, held open (and unread) until dropped.
struct Held {
    streams: Vec<TcpStream>,
    /// Subscriptions that failed.
    errors: usize,
}

/// Opens `n` stuck subscribers, `concurrency` at a time, and waits until
/// each has its preamble or has failed.
async fn open_stuck_all(t: &Target, path: &str, n: usize, concurrency: usize) -> Held {
    let sem = Arc::new(Semaphore::new(concurrency));
    let tasks: Vec<JoinHandle<std::io::Result<TcpStream>>> = (0..n)
        .map(|_| {
            let (t, path, sem) = (t.clone(), path.to_owned(), sem.clone());
            tokio::spawn(async move {
                let _permit = sem.acquire_owned().await.map_err(std::io::Error::other)?;
                open_stuck(&t, &path).await
            })
        })
        .collect();
    let mut held = Held {
        streams: Vec::with_capacity(n),
        errors: 0,
    };
    for task in tasks {
        match task.await.map_err(std::io::Error::other).and_then(|r| r) {
            Ok(s) => held.streams.push(s),
            Err(e) => {
                if held.errors < 5 {
                    eprintln!("stuck subscriber: {e}");
                }
                held.errors += 1;
            }
        }
    }
    held
}

/// The fast subscribers, once all have tried to subscribe.
struct Fast {
    tasks: Vec<JoinHandle<SubStats>>,
    /// Subscriptions that failed.
    errors: usize,
}

/// Starts the fast subscribers (the fan-out mode's, which check every
/// event and resume from their cursor when cut off) and waits until each
/// has subscribed or failed to.
async fn open_fast_all(
    t: &Target,
    load: &Load,
    hist: &Arc<Mutex<Latencies>>,
    stop: watch::Receiver<bool>,
    concurrency: usize,
) -> Fast {
    let (ready_tx, mut ready_rx) = mpsc::unbounded_channel();
    let shared = Shared {
        hist: hist.clone(),
        ready: ready_tx,
        sem: Arc::new(Semaphore::new(concurrency)),
        stop,
    };
    let expected = load.events as u64;
    let tasks = (0..load.fast)
        .map(|_| {
            let sub = subscriber(t.clone(), 0, load.topic.clone(), expected, shared.clone());
            tokio::spawn(sub)
        })
        .collect();
    drop(shared);
    let mut errors = 0usize;
    for _ in 0..load.fast {
        match ready_rx.recv().await {
            Some(Ok(_)) => {}
            Some(Err(e)) => {
                if errors < 5 {
                    eprintln!("fast subscriber: {e}");
                }
                errors += 1;
            }
            None => break,
        }
    }
    Fast { tasks, errors }
}

/// What the run watches on the server while it publishes and the fast
/// subscribers catch up.
struct Watch {
    t: Target,
    pid: Option<String>,
    /// The dropped counter before the run.
    dropped0: f64,
    stuck: u64,
    first_publish: Instant,
}

/// What the watch saw.
#[derive(Default, Clone, Copy)]
pub(crate) struct Samples {
    pub(crate) rss_peak: Option<u64>,
    pub(crate) threads_peak: Option<u64>,
    /// System-wide TCP socket memory (see [`procfs::tcp_mem_bytes`]).
    pub(crate) tcp_mem_peak: Option<u64>,
    /// Subscribers cut off during the run (fast ones that were cut too
    /// count here; their reconnects say how many).
    dropped: u64,
    /// First publish → the first cut.
    first_cut: Option<Duration>,
    /// First publish → `dropped` reached the number of stuck subscribers.
    cut_all: Option<Duration>,
    pub(crate) metric_errors: u64,
}

impl Watch {
    /// Samples every [`SAMPLE_EVERY`] until `stop`: the server's RSS and
    /// threads from /proc, its dropped counter from `/metrics` (in a loop
    /// of its own, so a slow `/metrics` does not hold up the /proc samples).
    async fn run(self, stop: watch::Receiver<bool>) -> Samples {
        let (procs, cuts) =
            tokio::join!(proc_peaks(self.pid.clone(), stop.clone()), self.cuts(stop));
        Samples {
            rss_peak: procs.rss_peak,
            threads_peak: procs.threads_peak,
            tcp_mem_peak: procs.tcp_mem_peak,
            ..cuts
        }
    }

    /// Polls the dropped counter: how many were cut, and when.
    async fn cuts(&self, mut stop: watch::Receiver<bool>) -> Samples {
        let client = http();
        let mut s = Samples::default();
        loop {
            match try_metric(&client, &self.t, DROPPED).await {
                Ok(v) => self.note_dropped(&mut s, v),
                Err(e) => {
                    if s.metric_errors < 3 {
                        eprintln!("GET /metrics: {e}");
                    }
                    s.metric_errors += 1;
                }
            }
            if stopped(&mut stop).await {
                return s;
            }
        }
    }

    /// Takes one reading of the dropped counter into `s`.
    fn note_dropped(&self, s: &mut Samples, counter: f64) {
        let n = (counter - self.dropped0).max(0.0) as u64;
        s.dropped = s.dropped.max(n);
        let at = self.first_publish.elapsed();
        if n > 0 {
            s.first_cut.get_or_insert(at);
        }
        if n >= self.stuck {
            s.cut_all.get_or_insert(at);
        }
    }
}

/// Samples the server's RSS and threads (with `--server-pid`) and the
/// kernel's TCP memory until `stop`.
pub(crate) async fn proc_peaks(pid: Option<String>, mut stop: watch::Receiver<bool>) -> Samples {
    let mut s = Samples::default();
    loop {
        if let Some(pid) = pid.as_deref() {
            s.rss_peak = s.rss_peak.max(procfs::rss_bytes(pid));
            s.threads_peak = s.threads_peak.max(procfs::threads(pid));
        }
        s.tcp_mem_peak = s.tcp_mem_peak.max(procfs::tcp_mem_bytes());
        if stopped(&mut stop).await {
            return s;
        }
    }
}

/// Waits [`SAMPLE_EVERY`]; true if the run said stop meanwhile (or before).
async fn stopped(stop: &mut watch::Receiver<bool>) -> bool {
    if *stop.borrow() {
        return true;
    }
    tokio::select! {
        _ = tokio::time::sleep(SAMPLE_EVERY) => false,
        _ = stop.changed() => true,
    }
}

/// Polls the SSE gauge until it is back to `gauge0`: the time it took, or
/// None if it did not within [`RELEASE_LIMIT`] (or `/metrics` failed).
pub(crate) async fn wait_released(
    client: &reqwest::Client,
    t: &Target,
    gauge0: f64,
) -> Option<Duration> {
    let start = Instant::now();
    while start.elapsed() <= RELEASE_LIMIT {
        if try_metric(client, t, SSE_GAUGE).await.ok()? <= gauge0 {
            return Some(start.elapsed());
        }
        tokio::time::sleep(SAMPLE_EVERY).await;
    }
    None
}

/// Everything a run measured, to be judged and reported.
struct Outcome<'a> {
    load: Load,
    stuck_errors: usize,
    fast_errors: usize,
    /// The SSE gauge's rise once everyone had subscribed.
    subscribed: Option<f64>,
    first_publish: Instant,
    publish_s: f64,
    published: Published,
    stats: Vec<SubStats>,
    latency: &'a Latencies,
    samples: Samples,
    rss_before: Option<u64>,
    threads_before: Option<u64>,
    rss_after: Option<u64>,
    /// Closing everything → the SSE gauge back where it was.
    released: Option<Duration>,
    metric_errors: u64,
    cpu_run: Value,
}

impl Outcome<'_> {
    /// The result as JSON, and whether it passed: everything opened and
    /// published, and every fast subscriber got every event exactly once,
    /// in order. Whether the stuck ones were cut is reported, not judged.
    fn verdict(self) -> (Value, bool) {
        let (load, stats, s) = (&self.load, &self.stats, self.samples);
        let sum = |f: fn(&SubStats) -> u64| stats.iter().map(f).sum::<u64>();
        for e in stats.iter().filter_map(|s| s.error.as_ref()).take(5) {
            eprintln!("fast subscriber: {e}");
        }
        let expected = (load.fast * load.events) as u64;
        let received = sum(|s| s.received);
        let lost = expected.saturating_sub(received);
        let bad = sum(|s| s.duplicates) + sum(|s| s.out_of_order) + sum(|s| s.unexpected);
        let last_rx = stats.iter().filter_map(|s| s.last_rx).max();
        let deliver_s = last_rx.map(|l| l.duration_since(self.first_publish).as_secs_f64());
        let secs = |d: Option<Duration>| d.map(|d| round(d.as_secs_f64(), 2));
        let p = load.publish;
        let ok = self.stuck_errors == 0
            && self.fast_errors == 0
            && self.published.errors == 0
            && lost == 0
            && bad == 0;
        let v = json!({
            "mode": "stuck",
            "topic": load.topic,
            "stuck": load.stuck,
            "fast": load.fast,
            "events": load.events,
            "size": load.size,
            "rate": p.rate,
            "publishers": p.publishers,
            "stuck_open_errors": self.stuck_errors,
            "fast_open_errors": self.fast_errors,
            "subscribed": self.subscribed,
            "publish_s": round(self.publish_s, 3),
            "published_per_s": round(load.events as f64 / self.publish_s.max(1e-9), 0),
            "publish_errors": self.published.errors,
            "publish_latency": latency_json(&self.published.hist),
            "fast_received": received,
            "fast_lost": lost,
            "fast_dups": sum(|s| s.duplicates),
            "fast_out_of_order": sum(|s| s.out_of_order),
            "fast_unexpected": sum(|s| s.unexpected),
            "fast_gaps": sum(|s| s.gaps),
            "fast_reconnects": sum(|s| s.reconnects),
            "fast_latency": latency_json(&self.latency.arrival),
            "fast_read_latency": latency_json(&self.latency.read),
            "deliver_s": deliver_s.map(|d| round(d, 3)),
            "dropped": s.dropped,
            "first_cut_s": secs(s.first_cut),
            "cut_all_s": secs(s.cut_all),
            "rss_before": self.rss_before,
            "rss_peak": s.rss_peak,
            "rss_after": self.rss_after,
            "threads_before": self.threads_before,
            "threads_peak": s.threads_peak,
            "tcp_mem_peak": s.tcp_mem_peak,
            "release_s": self.released.map(|d| round(d.as_secs_f64(), 3)),
            "metric_errors": self.metric_errors,
            "cpu": self.cpu_run,
        });
        (v, ok)
    }
}
