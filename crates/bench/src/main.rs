//! `herald-bench`: a load driver for an already running herald.
//!
//! It opens real sockets (raw TCP with hand-written HTTP requests; WebSocket
//! through tokio-tungstenite), spread over the source addresses
//! 127.0.0.2–127.0.0.250 so the ephemeral port range never runs out, and
//! measures what a client sees: connections opened per second, server memory
//! per connection, fan-out delivery rate and publish→receive latency, and
//! long-poll wake latency. It reads its own CPU time and, with
//! `--server-pid`, the server's CPU time and resident set, so every result
//! shows which side was the bottleneck. See `docs/performance.md`.

// A load generator may panic on what it does not expect (a malformed answer,
// a failed runtime start): failing loudly is the right outcome for a bench.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::{Parser, Subcommand};
use futures_util::StreamExt;
use hdrhistogram::Histogram;
use herald_protocol::sse::{Decoder, Frame};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::{Semaphore, mpsc, watch};

#[derive(Parser)]
#[command(
    name = "herald-bench",
    about = "Load driver for a running herald: idle subscribers, fan-out, many topics, parked long polls",
    after_help = "Publish throughput and the task cycle are not here: they live in \
                  `cargo bench --bench publish` and `cargo bench --bench tasks`, \
                  which start their own server.\n\n\
                  Run the server with a large retention for fan-out at full rate, e.g.\n  \
                  taskset -c 0 herald serve --store memory --retention-events 1000000\n  \
                  taskset -c 1 herald-bench --server-pid $(pgrep -n herald) fanout --subs 1000 --events 20000"
)]
struct Cli {
    /// The herald to drive.
    #[arg(long, global = true, default_value = "http://127.0.0.1:7171")]
    url: String,
    /// The server's process id: its RSS and CPU time are read from /proc.
    #[arg(long, global = true)]
    server_pid: Option<u32>,
    /// One JSON object per result instead of markdown tables.
    #[arg(long, global = true)]
    json: bool,
    /// Connections being opened at the same time (the rest wait their turn).
    /// Keep it under the server's listen backlog (herald's is 128), or a
    /// burst overflows the accept queue and those clients wait 1 s for a SYN
    /// retransmit.
    #[arg(long, global = true, default_value_t = 100)]
    connect_concurrency: usize,
    #[command(subcommand)]
    mode: Mode,
}

#[derive(Subcommand)]
enum Mode {
    /// N idle subscribers on topics idle-{i % 100}: open rate, RSS per
    /// connection, release on close.
    Idle {
        #[arg(long)]
        conns: usize,
        /// WebSocket instead of SSE.
        #[arg(long)]
        ws: bool,
    },
    /// N SSE subscribers on one topic, M published events of 100 bytes.
    Fanout {
        #[arg(long)]
        subs: usize,
        #[arg(long)]
        events: usize,
        #[command(flatten)]
        publish: PublishArgs,
    },
    /// N SSE subscribers each on its own topic t{i}; M events round-robin.
    Topics {
        #[arg(long)]
        subs: usize,
        #[arg(long)]
        events: usize,
        #[command(flatten)]
        publish: PublishArgs,
    },
    /// N parked long polls on one topic, woken by one publish.
    Longpoll {
        #[arg(long)]
        polls: usize,
        /// The topic to poll.
        #[arg(long, default_value = "lp")]
        topic: String,
    },
}

#[derive(clap::Args, Clone, Copy)]
struct PublishArgs {
    /// Events per second in all (paced); without it, as fast as possible.
    #[arg(long)]
    rate: Option<f64>,
    /// Concurrent publishers (each one keep-alive connection).
    #[arg(long, default_value_t = 4)]
    publishers: usize,
    /// How long to wait after the last publish for subscribers to get
    /// everything, in seconds.
    #[arg(long, default_value_t = 30.0)]
    drain_secs: f64,
}

/// Bytes of event data per publish.
const BODY_LEN: usize = 100;

/// Where the server is.
#[derive(Clone)]
struct Target {
    addr: SocketAddr,
    /// `host:port` for the Host header.
    host: String,
    /// `http://host:port`.
    base: String,
}

impl Target {
    async fn resolve(url: &str) -> Target {
        let rest = url
            .strip_prefix("http://")
            .unwrap_or_else(|| panic!("--url must start with http://, got {url}"));
        let host = rest.split('/').next().unwrap().to_owned();
        let addr = tokio::net::lookup_host(&host)
            .await
            .unwrap_or_else(|e| panic!("resolve {host}: {e}"))
            .find(|a| a.is_ipv4())
            .unwrap_or_else(|| panic!("no IPv4 address for {host}"));
        Target {
            addr,
            base: format!("http://{host}"),
            host,
        }
    }
}

static NEXT_SOURCE: AtomicUsize = AtomicUsize::new(0);

/// Opens a TCP connection to the server, from 127.0.0.2–127.0.0.250 in
/// turn when the server is on loopback, with `TCP_NODELAY`.
async fn connect(t: &Target) -> std::io::Result<TcpStream> {
    let mut last = None;
    for attempt in 0..3 {
        if attempt > 0 {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let sock = TcpSocket::new_v4()?;
        if t.addr.ip().is_loopback() {
            let n = NEXT_SOURCE.fetch_add(1, Ordering::Relaxed) % 249;
            let src = Ipv4Addr::new(127, 0, 0, 2 + n as u8);
            sock.bind(SocketAddr::new(IpAddr::V4(src), 0))?;
        }
        match sock.connect(t.addr).await {
            Ok(s) => {
                s.set_nodelay(true)?;
                return Ok(s);
            }
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap())
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn io_err(msg: String) -> std::io::Error {
    std::io::Error::other(msg)
}

/// Opens an SSE subscription over HTTP/1.0 (a close-delimited, unchunked
/// body) and reads up to the `: herald` preamble. Returns the stream and the
/// body bytes read so far (preamble included, and any events after it).
async fn open_sse(
    t: &Target,
    path: &str,
    last_id: Option<&str>,
) -> std::io::Result<(TcpStream, Vec<u8>)> {
    let mut s = connect(t).await?;
    let mut req = format!(
        "GET {path} HTTP/1.0\r\nHost: {}\r\nAccept: text/event-stream\r\n",
        t.host
    );
    if let Some(id) = last_id {
        req.push_str(&format!("Last-Event-ID: {id}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).await?;
    let mut buf = Vec::with_capacity(512);
    let mut chunk = [0u8; 2048];
    let mut body_at = None;
    loop {
        let n = s.read(&mut chunk).await?;
        if n == 0 {
            return Err(io_err(format!(
                "SSE {path}: closed before the preamble: {:?}",
                String::from_utf8_lossy(&buf)
            )));
        }
        buf.extend_from_slice(&chunk[..n]);
        if body_at.is_none()
            && let Some(p) = find(&buf, b"\r\n\r\n")
        {
            let status = buf.split(|&b| b == b' ').nth(1).unwrap_or_default();
            if status != b"200" {
                return Err(io_err(format!(
                    "SSE {path}: {:?}",
                    String::from_utf8_lossy(&buf[..p])
                )));
            }
            body_at = Some(p + 4);
        }
        if let Some(b) = body_at
            && find(&buf[b..], b": herald").is_some()
        {
            return Ok((s, buf.split_off(b)));
        }
    }
}

/// Process CPU time and memory from /proc.
mod procfs {
    use std::sync::OnceLock;

    fn clk_tck() -> f64 {
        static TCK: OnceLock<f64> = OnceLock::new();
        *TCK.get_or_init(|| {
            std::process::Command::new("getconf")
                .arg("CLK_TCK")
                .output()
                .ok()
                .and_then(|o| String::from_utf8(o.stdout).ok())
                .and_then(|s| s.trim().parse().ok())
                .unwrap_or(100.0)
        })
    }

    /// utime + stime of a process, in seconds (`pid` "self" for this one).
    pub fn cpu_secs(pid: &str) -> Option<f64> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        let after = &stat[stat.rfind(')')? + 1..];
        let f: Vec<&str> = after.split_whitespace().collect();
        // After the command come fields 3.. ; utime is field 14, stime 15.
        let utime: f64 = f.get(11)?.parse().ok()?;
        let stime: f64 = f.get(12)?.parse().ok()?;
        Some((utime + stime) / clk_tck())
    }

    /// VmRSS in bytes.
    pub fn rss_bytes(pid: &str) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
        let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kb * 1024)
    }
}

fn server_pid() -> Option<String> {
    SERVER_PID.get().cloned().flatten()
}

static SERVER_PID: OnceLock<Option<String>> = OnceLock::new();

/// A point in time with both processes' CPU clocks.
struct CpuMark {
    at: Instant,
    own: f64,
    server: Option<f64>,
}

impl CpuMark {
    fn now() -> CpuMark {
        CpuMark {
            at: Instant::now(),
            own: procfs::cpu_secs("self").unwrap_or(0.0),
            server: server_pid().and_then(|p| procfs::cpu_secs(&p)),
        }
    }

    /// CPU used since this mark, as JSON: seconds and cores (CPU s / wall s).
    fn since(&self) -> Value {
        let end = CpuMark::now();
        let wall = end.at.duration_since(self.at).as_secs_f64();
        let own = end.own - self.own;
        let server = match (self.server, end.server) {
            (Some(a), Some(b)) => Some(b - a),
            _ => None,
        };
        json!({
            "wall_s": round(wall, 3),
            "driver_cpu_s": round(own, 2),
            "driver_cores": round(own / wall, 2),
            "server_cpu_s": server.map(|s| round(s, 2)),
            "server_cores": server.map(|s| round(s / wall, 2)),
        })
    }
}

fn round(x: f64, digits: i32) -> f64 {
    let m = 10f64.powi(digits);
    (x * m).round() / m
}

fn epoch_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_micros() as u64
}

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(120))
        .build()
        .unwrap()
}

/// The value of one series (`name{labels}`) from `/metrics`, 0 if absent.
async fn metric(client: &reqwest::Client, t: &Target, series: &str) -> f64 {
    let text = client
        .get(format!("{}/metrics", t.base))
        .send()
        .await
        .expect("GET /metrics")
        .text()
        .await
        .expect("metrics body");
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|r| r.strip_prefix(' ')))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

/// Polls `/metrics` until `series` satisfies `ok`, at most `limit`. Returns
/// the time it took, or None if it never did.
async fn wait_metric(
    client: &reqwest::Client,
    t: &Target,
    series: &str,
    limit: Duration,
    ok: impl Fn(f64) -> bool,
) -> Option<Duration> {
    let start = Instant::now();
    loop {
        if ok(metric(client, t, series).await) {
            return Some(start.elapsed());
        }
        if start.elapsed() > limit {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn new_hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).unwrap()
}

fn ms(us: u64) -> f64 {
    round(us as f64 / 1000.0, 2)
}

fn latency_json(h: &Histogram<u64>) -> Value {
    if h.is_empty() {
        return json!(null);
    }
    json!({
        "p50_ms": ms(h.value_at_quantile(0.5)),
        "p99_ms": ms(h.value_at_quantile(0.99)),
        "p999_ms": ms(h.value_at_quantile(0.999)),
        "max_ms": ms(h.max()),
    })
}

/// Prints a result: one JSON line (every field), or a markdown table of the
/// chosen (flattened, dotted) fields, in that order.
fn report(json_out: bool, v: &Value) {
    if json_out {
        println!("{v}");
        return;
    }
    let mut all = Vec::new();
    flatten("", v, &mut all);
    let mode = v["mode"].as_str().unwrap_or_default();
    let cpu = [
        "cpu.wall_s",
        "cpu.driver_cores",
        "cpu.server_cores",
        "cpu.driver_cpu_s",
        "cpu.server_cpu_s",
    ];
    let mut chosen: Vec<&str> = match mode {
        "idle" => vec![
            "transport",
            "conns",
            "opened",
            "errors",
            "open_s",
            "conns_per_s",
            "open_ms.p50_ms",
            "open_ms.max_ms",
            "rss_per_conn_bytes",
            "release_s",
        ],
        "longpoll" => vec![
            "polls",
            "woken",
            "errors",
            "park_s",
            "wake.p50_ms",
            "wake.p99_ms",
            "wake.max_ms",
        ],
        _ => vec![
            "mode",
            "subs",
            "topics",
            "events",
            "rate",
            "open_s",
            "published_per_s",
            "delivered_per_s",
            "latency.p50_ms",
            "latency.p99_ms",
            "latency.p999_ms",
            "latency.max_ms",
            "lost",
            "duplicates",
            "out_of_order",
            "reconnects",
        ],
    };
    chosen.extend(cpu);
    let cols: Vec<(String, String)> = chosen
        .iter()
        .map(|c| {
            let val = all
                .iter()
                .find(|(k, _)| k == c)
                .map(|(_, v)| v.clone())
                .unwrap_or_else(|| "–".into());
            (c.replace("cpu.", ""), val)
        })
        .collect();
    println!();
    println!(
        "| {} |",
        cols.iter()
            .map(|(k, _)| k.as_str())
            .collect::<Vec<_>>()
            .join(" | ")
    );
    println!("|{}", "---|".repeat(cols.len()));
    println!(
        "| {} |",
        cols.iter()
            .map(|(_, v)| v.as_str())
            .collect::<Vec<_>>()
            .join(" | ")
    );
}

fn flatten(prefix: &str, v: &Value, out: &mut Vec<(String, String)>) {
    match v {
        Value::Object(m) => {
            for (k, v) in m {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                flatten(&key, v, out);
            }
        }
        Value::Null => out.push((prefix.to_owned(), "–".into())),
        Value::String(s) => out.push((prefix.to_owned(), s.clone())),
        other => out.push((prefix.to_owned(), other.to_string())),
    }
}

fn main() {
    let cli = Cli::parse();
    // Every connection is a file descriptor: go up to the hard limit.
    let nofile = rlimit::increase_nofile_limit(u64::MAX).unwrap_or(0);
    SERVER_PID
        .set(cli.server_pid.map(|p| p.to_string()))
        .unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let ok = rt.block_on(run(cli, nofile));
    // Leave at once: thousands of sockets close with the process.
    std::process::exit(if ok { 0 } else { 1 });
}

async fn run(cli: Cli, nofile: u64) -> bool {
    let t = Target::resolve(&cli.url).await;
    let need = match &cli.mode {
        Mode::Idle { conns, .. } => *conns,
        Mode::Fanout { subs, .. } | Mode::Topics { subs, .. } => *subs,
        Mode::Longpoll { polls, .. } => *polls,
    } as u64;
    if need + 64 > nofile {
        eprintln!("warning: {need} connections but only {nofile} file descriptors");
    }
    let (v, ok) = match cli.mode {
        Mode::Idle { conns, ws } => idle(&t, conns, ws, cli.connect_concurrency).await,
        Mode::Fanout {
            subs,
            events,
            publish,
        } => {
            let topic = format!("fanout-{}", epoch_us());
            deliver(
                &t,
                "fanout",
                vec![topic],
                subs,
                events,
                publish,
                cli.connect_concurrency,
            )
            .await
        }
        Mode::Topics {
            subs,
            events,
            publish,
        } => {
            let topics = (0..subs).map(|i| format!("t{i}")).collect();
            deliver(
                &t,
                "topics",
                topics,
                subs,
                events,
                publish,
                cli.connect_concurrency,
            )
            .await
        }
        Mode::Longpoll { polls, topic } => {
            longpoll(&t, polls, &topic, cli.connect_concurrency).await
        }
    };
    report(cli.json, &v);
    ok
}

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

async fn idle(t: &Target, n: usize, ws: bool, concurrency: usize) -> (Value, bool) {
    let client = http();
    let transport = if ws { "ws" } else { "sse" };
    let gauge = format!("herald_subscriptions{{transport=\"{transport}\"}}");
    let gauge0 = metric(&client, t, &gauge).await;
    let pid = server_pid();
    let rss0 = pid.as_deref().and_then(procfs::rss_bytes);

    let (tx, mut rx) = mpsc::unbounded_channel::<Result<(Instant, Duration), String>>();
    let (stop_tx, stop_rx) = watch::channel(false);
    let sem = Arc::new(Semaphore::new(concurrency));
    let mut open_hist = new_hist();
    let cpu = CpuMark::now();
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(n);
    for i in 0..n {
        let (t, tx, stop, sem) = (t.clone(), tx.clone(), stop_rx.clone(), sem.clone());
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
    let mut opened = 0usize;
    let mut errors = Vec::new();
    while let Some(r) = rx.recv().await {
        match r {
            Ok((at, took)) => {
                opened += 1;
                last = last.max(at);
                open_hist.saturating_record(took.as_micros() as u64);
            }
            Err(e) => errors.push(e),
        }
        if opened + errors.len() == n {
            break;
        }
    }
    let open_s = last.duration_since(start).as_secs_f64();
    let cpu_open = cpu.since();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss1 = pid.as_deref().and_then(procfs::rss_bytes);
    let gauge_open = metric(&client, t, &gauge).await;

    // Close everything and time how long the server takes to notice.
    let _ = stop_tx.send(true);
    for task in tasks {
        let _ = task.await;
    }
    let release = wait_metric(&client, t, &gauge, Duration::from_secs(30), |v| v <= gauge0).await;

    let per_conn = match (rss0, rss1) {
        (Some(a), Some(b)) if opened > 0 => Some((b as f64 - a as f64) / opened as f64),
        _ => None,
    };
    for e in errors.iter().take(5) {
        eprintln!("open failed: {e}");
    }
    let ok = errors.is_empty() && gauge_open - gauge0 == opened as f64;
    let v = json!({
        "mode": "idle",
        "transport": transport,
        "conns": n,
        "opened": opened,
        "errors": errors.len(),
        "open_s": round(open_s, 3),
        "conns_per_s": round(opened as f64 / open_s.max(1e-9), 0),
        "open_ms": latency_json(&open_hist),
        "server_gauge": gauge_open - gauge0,
        "rss_before_mib": rss0.map(|b| round(b as f64 / 1048576.0, 1)),
        "rss_after_mib": rss1.map(|b| round(b as f64 / 1048576.0, 1)),
        "rss_per_conn_bytes": per_conn.map(|b| b.round()),
        "release_s": release.map(|d| round(d.as_secs_f64(), 3)),
        "cpu": cpu_open,
    });
    (v, ok)
}

/// What one fan-out subscriber saw.
#[derive(Default)]
struct SubStats {
    topic: usize,
    received: u64,
    duplicates: u64,
    out_of_order: u64,
    unexpected: u64,
    gaps: u64,
    reconnects: u64,
    /// Rolling hash of the order of sequence numbers received.
    order: u64,
    last_rx: Option<Instant>,
    error: Option<String>,
}

/// herald's ids are `MS-SEQ`; clients should not parse them, but a bench
/// may, to check order. Anything else is not compared.
fn id_key(id: &str) -> Option<(u64, u64)> {
    let (a, b) = id.split_once('-')?;
    Some((a.parse().ok()?, b.parse().ok()?))
}

/// Parses `"{ts} {seq} xxx…"`.
fn parse_body(data: &str) -> Option<(u64, u64)> {
    let mut it = data.split(' ');
    Some((
        it.next()?.parse().ok()?,
        it.next()?.trim_end().parse().ok()?,
    ))
}

#[allow(clippy::too_many_arguments)]
async fn subscriber(
    t: Target,
    topic_idx: usize,
    topic: String,
    expected: u64,
    hist: Arc<Mutex<Histogram<u64>>>,
    ready: mpsc::UnboundedSender<Result<Instant, String>>,
    sem: Arc<Semaphore>,
    mut stop: watch::Receiver<bool>,
) -> SubStats {
    let path = format!("/topics/{topic}");
    let mut st = SubStats {
        topic: topic_idx,
        ..SubStats::default()
    };
    let permit = sem.acquire_owned().await.unwrap();
    let opened = open_sse(&t, &path, None).await;
    drop(permit);
    let (mut s, first) = match opened {
        Ok(x) => x,
        Err(e) => {
            let _ = ready.send(Err(e.to_string()));
            st.error = Some(e.to_string());
            return st;
        }
    };
    let _ = ready.send(Ok(Instant::now()));
    let mut seen = vec![0u64; (expected as usize).div_ceil(64)];
    let mut dec = Decoder::new();
    let mut last_key: Option<(u64, u64)> = None;
    let mut lats = Vec::with_capacity(64);
    let mut buf = vec![0u8; 16 * 1024];
    let mut pending = first;
    while st.received < expected {
        if pending.is_empty() {
            let n = tokio::select! {
                r = s.read(&mut buf) => r.unwrap_or(0),
                _ = stop.changed() => break,
            };
            if n == 0 {
                // Cut off (too slow) or closed: resume from the cursor.
                st.reconnects += 1;
                if st.reconnects > 100 {
                    st.error = Some("more than 100 reconnects".into());
                    break;
                }
                let cursor = dec.last_event_id().map(str::to_owned);
                match open_sse(&t, &path, cursor.as_deref()).await {
                    Ok((s2, first)) => {
                        s = s2;
                        dec = Decoder::new();
                        pending = first;
                        continue;
                    }
                    Err(e) => {
                        st.error = Some(e.to_string());
                        break;
                    }
                }
            }
            pending.extend_from_slice(&buf[..n]);
        }
        let frames = dec.feed(&pending);
        pending.clear();
        let now_us = epoch_us();
        let now = Instant::now();
        for f in frames {
            let Frame::Event { id, event, data } = f else {
                continue;
            };
            if event == "gap" {
                st.gaps += 1;
                continue;
            }
            let Some((ts, seq)) = parse_body(&data) else {
                st.unexpected += 1;
                continue;
            };
            lats.push(now_us.saturating_sub(ts).max(1));
            if seq >= expected {
                st.unexpected += 1;
                continue;
            }
            let (w, bit) = ((seq / 64) as usize, 1u64 << (seq % 64));
            if seen[w] & bit != 0 {
                st.duplicates += 1;
                continue;
            }
            seen[w] |= bit;
            st.received += 1;
            st.order = st.order.wrapping_mul(1_000_003).wrapping_add(seq + 1);
            if let Some(k) = id.as_deref().and_then(id_key) {
                if last_key.is_some_and(|l| k <= l) {
                    st.out_of_order += 1;
                }
                last_key = Some(k);
            }
            st.last_rx = Some(now);
        }
        if !lats.is_empty() {
            let mut h = hist.lock().unwrap();
            for l in lats.drain(..) {
                h.saturating_record(l);
            }
        }
    }
    st
}

fn publish_body(seq: u64) -> String {
    let mut body = format!("{} {seq} ", epoch_us());
    while body.len() < BODY_LEN {
        body.push('x');
    }
    body
}

/// Fan-out (one topic) and many topics: subscriber i reads topic i % T;
/// event k goes to topic k % T with per-topic sequence number k / T.
async fn deliver(
    t: &Target,
    mode: &str,
    topics: Vec<String>,
    subs: usize,
    events: usize,
    p: PublishArgs,
    concurrency: usize,
) -> (Value, bool) {
    let nt = topics.len();
    let expected_for = |j: usize| (events / nt + usize::from(j < events % nt)) as u64;
    let hist = Arc::new(Mutex::new(new_hist()));
    let (ready_tx, mut ready_rx) = mpsc::unbounded_channel();
    let (stop_tx, stop_rx) = watch::channel(false);
    let sem = Arc::new(Semaphore::new(concurrency));
    let cpu_open = CpuMark::now();
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(subs);
    for i in 0..subs {
        let j = i % nt;
        tasks.push(tokio::spawn(subscriber(
            t.clone(),
            j,
            topics[j].clone(),
            expected_for(j),
            hist.clone(),
            ready_tx.clone(),
            sem.clone(),
            stop_rx.clone(),
        )));
    }
    drop(ready_tx);
    let mut open_errors = 0usize;
    let mut last_open = start;
    for _ in 0..subs {
        match ready_rx.recv().await {
            Some(Ok(at)) => last_open = last_open.max(at),
            Some(Err(e)) => {
                if open_errors < 5 {
                    eprintln!("open failed: {e}");
                }
                open_errors += 1;
            }
            None => break,
        }
    }
    let open_s = last_open.duration_since(start).as_secs_f64();
    let cpu_open = cpu_open.since();

    // Publish.
    let cpu = CpuMark::now();
    let first_publish = Instant::now();
    let next = Arc::new(AtomicUsize::new(0));
    let topics = Arc::new(topics);
    let mut pubs = Vec::new();
    for _ in 0..p.publishers.max(1) {
        let (t, next, topics) = (t.clone(), next.clone(), topics.clone());
        pubs.push(tokio::spawn(async move {
            let client = http();
            let mut errors = 0u64;
            let mut hist = new_hist();
            loop {
                let k = next.fetch_add(1, Ordering::Relaxed);
                if k >= events {
                    break;
                }
                if let Some(rate) = p.rate {
                    let at = first_publish + Duration::from_secs_f64(k as f64 / rate);
                    tokio::time::sleep_until(at.into()).await;
                }
                let (j, seq) = (k % nt, (k / nt) as u64);
                let sent = Instant::now();
                let r = client
                    .post(format!("{}/topics/{}", t.base, topics[j]))
                    .body(publish_body(seq))
                    .send()
                    .await;
                match r {
                    Ok(r) if r.status() == 201 => {
                        let _ = r.bytes().await;
                        hist.saturating_record(sent.elapsed().as_micros() as u64);
                    }
                    Ok(r) => {
                        if errors < 3 {
                            eprintln!("publish: {}", r.status());
                        }
                        errors += 1;
                    }
                    Err(e) => {
                        if errors < 3 {
                            eprintln!("publish: {e}");
                        }
                        errors += 1;
                    }
                }
            }
            (errors, hist)
        }));
    }
    let mut publish_errors = 0;
    let mut publish_hist = new_hist();
    for p in pubs {
        let (e, h) = p.await.unwrap();
        publish_errors += e;
        publish_hist.add(&h).unwrap();
    }
    let publish_s = first_publish.elapsed().as_secs_f64();
    // Give the subscribers until the drain deadline, then stop the rest.
    let drain = Duration::from_secs_f64(p.drain_secs);
    tokio::spawn(async move {
        tokio::time::sleep(drain).await;
        let _ = stop_tx.send(true);
    });
    let mut stats = Vec::with_capacity(subs);
    for task in tasks {
        stats.push(task.await.unwrap());
    }
    let cpu_run = cpu.since();

    let received: u64 = stats.iter().map(|s| s.received).sum();
    let expected: u64 = (0..subs).map(|i| expected_for(i % nt)).sum();
    let sum = |f: fn(&SubStats) -> u64| stats.iter().map(f).sum::<u64>();
    let last_rx = stats.iter().filter_map(|s| s.last_rx).max();
    let deliver_s = last_rx.map(|l| l.duration_since(first_publish).as_secs_f64());
    // Every subscriber of a topic that got everything saw the same order.
    let mut order = vec![None; nt];
    let mut order_mismatch = 0u64;
    for s in &stats {
        if s.received != expected_for(s.topic) {
            continue;
        }
        match order[s.topic] {
            None => order[s.topic] = Some(s.order),
            Some(o) if o != s.order => order_mismatch += 1,
            Some(_) => {}
        }
    }
    let sub_errors: Vec<&String> = stats.iter().filter_map(|s| s.error.as_ref()).collect();
    for e in sub_errors.iter().take(5) {
        eprintln!("subscriber: {e}");
    }
    let lost = expected - received;
    let bad = sum(|s| s.duplicates) + sum(|s| s.out_of_order) + sum(|s| s.unexpected);
    let ok =
        open_errors == 0 && publish_errors == 0 && lost == 0 && bad == 0 && order_mismatch == 0;
    let hist = hist.lock().unwrap();
    let v = json!({
        "mode": mode,
        "subs": subs,
        "topics": nt,
        "events": events,
        "rate": p.rate,
        "publishers": p.publishers,
        "open_s": round(open_s, 3),
        "open_errors": open_errors,
        "publish_s": round(publish_s, 3),
        "published_per_s": round(events as f64 / publish_s.max(1e-9), 0),
        "publish_p50_ms": if publish_hist.is_empty() { json!(null) } else { json!(ms(publish_hist.value_at_quantile(0.5))) },
        "publish_errors": publish_errors,
        "expected": expected,
        "received": received,
        "lost": lost,
        "duplicates": sum(|s| s.duplicates),
        "out_of_order": sum(|s| s.out_of_order),
        "order_mismatch": order_mismatch,
        "unexpected": sum(|s| s.unexpected),
        "gaps": sum(|s| s.gaps),
        "reconnects": sum(|s| s.reconnects),
        "deliver_s": deliver_s.map(|d| round(d, 3)),
        "delivered_per_s": deliver_s.map(|d| round(received as f64 / d.max(1e-9), 0)),
        "latency": latency_json(&hist),
        "cpu": cpu_run,
        "cpu_open": cpu_open,
    });
    (v, ok)
}

/// Reads one HTTP/1.0 answer to the end; returns (time the status line
/// arrived, status, body).
async fn read_answer(s: &mut TcpStream) -> std::io::Result<(Instant, u16, Vec<u8>)> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 2048];
    let mut first = None;
    loop {
        let n = s.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        first.get_or_insert_with(Instant::now);
        buf.extend_from_slice(&chunk[..n]);
    }
    let at = first.ok_or_else(|| io_err("closed without an answer".into()))?;
    let status = buf
        .split(|&b| b == b' ')
        .nth(1)
        .and_then(|s| std::str::from_utf8(s).ok())
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = match find(&buf, b"\r\n\r\n") {
        Some(p) => buf.split_off(p + 4),
        None => Vec::new(),
    };
    Ok((at, status, body))
}

async fn longpoll(t: &Target, n: usize, topic: &str, concurrency: usize) -> (Value, bool) {
    let client = http();
    // The current head: a short poll from `now` answers 204 + Herald-Cursor.
    let r = client
        .get(format!("{}/topics/{topic}?last-event-id=now", t.base))
        .send()
        .await
        .expect("short poll for the head");
    let cursor = r
        .headers()
        .get("herald-cursor")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .expect("Herald-Cursor on the short poll");
    let gauge = "herald_subscriptions{transport=\"long-poll\"}";
    let gauge0 = metric(&client, t, gauge).await;

    let sem = Arc::new(Semaphore::new(concurrency));
    let mut tasks = Vec::with_capacity(n);
    let start = Instant::now();
    for _ in 0..n {
        let (t, sem, cursor, topic) = (t.clone(), sem.clone(), cursor.clone(), topic.to_owned());
        tasks.push(tokio::spawn(async move {
            let permit = sem.acquire_owned().await.unwrap();
            let mut s = connect(&t).await?;
            let req = format!(
                "GET /topics/{topic}?transport=long-poll&timeout=60 HTTP/1.0\r\nHost: {}\r\nLast-Event-ID: {cursor}\r\n\r\n",
                t.host
            );
            s.write_all(req.as_bytes()).await?;
            drop(permit);
            read_answer(&mut s).await
        }));
    }
    let parked = wait_metric(&client, t, gauge, Duration::from_secs(60), |v| {
        v >= gauge0 + n as f64
    })
    .await;
    let park_s = start.elapsed().as_secs_f64();

    let cpu = CpuMark::now();
    let t0 = Instant::now();
    let r = client
        .post(format!("{}/topics/{topic}", t.base))
        .body(publish_body(0))
        .send()
        .await
        .expect("publish");
    let publish_status = r.status().as_u16();
    let mut hist = new_hist();
    let mut errors = 0u64;
    let mut statuses = std::collections::BTreeMap::<u16, u64>::new();
    for task in tasks {
        match task.await.unwrap() {
            Ok((at, status, body)) => {
                *statuses.entry(status).or_default() += 1;
                let has_event = serde_json::from_slice::<Value>(&body)
                    .ok()
                    .and_then(|v| v["events"].as_array().map(|a| !a.is_empty()))
                    .unwrap_or(false);
                if status == 200 && has_event {
                    hist.saturating_record(at.saturating_duration_since(t0).as_micros() as u64);
                } else {
                    errors += 1;
                }
            }
            Err(e) => {
                if errors < 3 {
                    eprintln!("long poll: {e}");
                }
                errors += 1;
            }
        }
    }
    let cpu_run = cpu.since();
    let ok = parked.is_some() && errors == 0 && publish_status == 201;
    let v = json!({
        "mode": "longpoll",
        "polls": n,
        "parked": parked.is_some(),
        "park_s": round(park_s, 3),
        "woken": hist.len(),
        "errors": errors,
        "statuses": format!("{statuses:?}"),
        "wake": latency_json(&hist),
        "cpu": cpu_run,
    });
    (v, ok)
}
