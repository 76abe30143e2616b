//! Connections to the server: where it is, raw TCP sockets from many
//! loopback source addresses, the hand-written HTTP/1.0 requests read byte by
//! byte (SSE subscriptions, long-poll answers), and the reqwest client for
//! everything that needs no such control.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

use crate::publish::epoch_us;
use crate::stamp;

/// Where the server is.
#[derive(Clone)]
pub struct Target {
    pub addr: SocketAddr,
    /// `host:port` for the Host header.
    pub host: String,
    /// `http://host:port`.
    pub base: String,
}

impl Target {
    /// Resolves `--url` once, to an IPv4 address: the sockets are IPv4 (their
    /// source addresses are 127.0.0.x), so an IPv6 address would not do.
    pub async fn resolve(url: &str) -> Target {
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

/// The next source address to use, counted across every connection of the
/// run so they spread evenly over the 249 addresses.
static NEXT_SOURCE: AtomicUsize = AtomicUsize::new(0);

/// Opens a TCP connection to the server, from 127.0.0.2–127.0.0.250 in
/// turn when the server is on loopback, with `TCP_NODELAY`.
///
/// One source address has only the ephemeral port range (about 28 000 by
/// default) towards one server port; 249 of them multiply that. A failed
/// connect is retried twice, 100 ms apart, before it counts as an error.
pub async fn connect(t: &Target) -> std::io::Result<TcpStream> {
    connect_with(t, None).await
}

/// [`connect`], with `SO_RCVBUF` set to `rcvbuf` bytes before the connect
/// when given, so the window the server sees is small from the handshake on.
pub async fn connect_with(t: &Target, rcvbuf: Option<u32>) -> std::io::Result<TcpStream> {
    let mut last = None;
    for attempt in 0..3 {
        if attempt > 0 {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let sock = TcpSocket::new_v4()?;
        if let Some(bytes) = rcvbuf {
            sock.set_recv_buffer_size(bytes)?;
        }
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

/// Where `needle` first occurs in `hay`.
pub fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// An I/O error carrying what went wrong, so a subscriber's failure reads
/// like the answer that caused it.
pub fn io_err(msg: String) -> std::io::Error {
    std::io::Error::other(msg)
}

/// Opens an SSE subscription over HTTP/1.0 (a close-delimited, unchunked
/// body) and reads up to the `: herald` preamble. Returns the stream and the
/// body bytes read so far (preamble included, and any events after it).
///
/// HTTP/1.0 keeps the parsing trivial: the body is the raw event stream, so
/// a subscriber can feed it straight to the SSE decoder.
pub async fn open_sse(
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
    let body = read_preamble(&mut s, path).await?;
    Ok((s, body))
}

/// Reads an SSE answer's head (it must be a `200`) and its body up to the
/// `: herald` preamble. Returns the body bytes read so far (preamble
/// included, and whatever came after it in the same reads): the raw event
/// stream over HTTP/1.0, its chunks over HTTP/1.1.
pub async fn read_preamble(s: &mut TcpStream, path: &str) -> std::io::Result<Vec<u8>> {
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
            return Ok(buf.split_off(b));
        }
    }
}

/// Reads one answer: to the end of its `Content-Length` when it has one
/// (the connection stays open for the caller to drop when it likes), to the
/// close otherwise.
///
/// Times are those of the first byte, not of the end: a long poll's wake
/// latency is when the server answered, however long the body takes. With
/// [`stamp::enable`] on `s`, `arrived` is the kernel's stamp of that first
/// segment; `read` is when the driver read it (µs since the Unix epoch).
pub async fn read_answer(s: &TcpStream) -> std::io::Result<Answer> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 2048];
    let mut first = None;
    let mut body_at = None;
    let mut length = None;
    loop {
        if let (Some(b), Some(len)) = (body_at, length)
            && buf.len() >= b + len
        {
            break;
        }
        let (n, arrived) = stamp::read(s, &mut chunk).await?;
        if n == 0 {
            break;
        }
        first.get_or_insert_with(|| (arrived, epoch_us()));
        buf.extend_from_slice(&chunk[..n]);
        if body_at.is_none()
            && let Some(p) = find(&buf, b"\r\n\r\n")
        {
            body_at = Some(p + 4);
            length = content_length(&buf[..p]);
        }
    }
    let (arrived, read) = first.ok_or_else(|| io_err("closed without an answer".into()))?;
    let status = buf
        .split(|&b| b == b' ')
        .nth(1)
        .and_then(|s| std::str::from_utf8(s).ok())
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = match body_at {
        Some(p) => buf.split_off(p),
        None => Vec::new(),
    };
    Ok(Answer {
        arrived,
        read,
        status,
        body,
    })
}

/// One HTTP answer as [`read_answer`] read it.
pub struct Answer {
    /// The kernel's arrival stamp of its first byte, µs since the epoch.
    pub arrived: Option<u64>,
    /// When the driver read its first byte, µs since the epoch.
    pub read: u64,
    pub status: u16,
    pub body: Vec<u8>,
}

/// How long the body after a response head is: none for a `204`, its
/// `Content-Length` when it names one, unknown (to the close) otherwise.
fn content_length(head: &[u8]) -> Option<usize> {
    let head = std::str::from_utf8(head).ok()?;
    if head.split(' ').nth(1) == Some("204") {
        return Some(0);
    }
    head.split("\r\n").skip(1).find_map(|line| {
        let (name, value) = line.split_once(':')?;
        if name.trim().eq_ignore_ascii_case("content-length") {
            value.trim().parse().ok()
        } else {
            None
        }
    })
}

/// A reqwest client for publishes and `/metrics`, with a timeout long
/// enough for a server busy with a large run.
pub fn http() -> reqwest::Client {
    // reqwest has rustls but no provider of its own: give it `ring`, once
    // (an error says one is installed already).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut headers = reqwest::header::HeaderMap::new();
    if let Some(auth) = authorization()
        && let Ok(value) = reqwest::header::HeaderValue::try_from(auth)
    {
        headers.insert(reqwest::header::AUTHORIZATION, value);
    }
    reqwest::Client::builder()
        .default_headers(headers)
        // The server under test is plain HTTP: no trusted roots to load
        // (the system's cost tens of milliseconds, and fail where there
        // are none).
        .tls_certs_only(Vec::new())
        .timeout(Duration::from_secs(120))
        .build()
        .unwrap()
}

/// `Authorization: Bearer …` from `HERALD_TOKEN`, for a server run with
/// authorization on (the token needs `admin` for `/metrics`, and the
/// scopes of what the mode does).
pub fn authorization() -> Option<String> {
    std::env::var("HERALD_TOKEN")
        .ok()
        .filter(|t| !t.is_empty())
        .map(|t| format!("Bearer {t}"))
}
