//! Several herald nodes sharing one Redis (`--store redis://…`): what one
//! node stores, every node serves, by every transport, with the same ids in
//! the same order; cursors, idempotency keys, tasks and leases work across
//! nodes (task gauges included); a client survives the death of its node by
//! resuming on another; the nodes ride out a Redis restart, a frozen Redis
//! and a cut live feed (Pub/Sub connection) on their own.
//!
//! Each test runs its own `redis-server` (a free port, nothing saved) and
//! its own herald processes. Without `redis-server` on PATH each test prints
//! `SKIPPED:` and passes, unless `HERALD_STRICT_TESTS` is set (CI sets it):
//! then it fails.
//!
//! Every wait is bounded; the only sleeps are a short poll's interval, a
//! publisher's pace and the interval of polls that wait for an observable.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use eventsource_stream::{Event, EventStreamError, Eventsource};
use futures_util::StreamExt;
use futures_util::stream::BoxStream;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

use crate::harness::{PATIENCE, Server, client, read_all, wait_for_metric, within};

// ---------------------------------------------------------------------------
// A redis-server of the test's own, and herald nodes on it.

/// A `redis-server` on a free port, killed when dropped.
pub(crate) struct Redis {
    child: Child,
    port: u16,
}

impl Redis {
    /// Starts one, or says loudly why it cannot (and fails under
    /// `HERALD_STRICT_TESTS`).
    pub(crate) fn start() -> Option<Redis> {
        for _ in 0..5 {
            let port = TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .expect("a free port")
                .port();
            match Redis::spawn(port) {
                Ok(Some(redis)) => return Some(redis),
                // Someone took the port meanwhile: try another.
                Ok(None) => continue,
                Err(e) => {
                    assert!(
                        std::env::var_os("HERALD_STRICT_TESTS").is_none(),
                        "redis-server is required here: {e}"
                    );
                    eprintln!(
                        "SKIPPED: redis-server is not installed ({e}); the herald cluster was not tested"
                    );
                    return None;
                }
            }
        }
        panic!("redis-server did not start on any of 5 free ports");
    }

    /// A fresh, empty server on `port` (the one a killed server had).
    fn start_on(port: u16) -> Redis {
        Redis::spawn(port)
            .expect("spawn redis-server")
            .unwrap_or_else(|| panic!("redis-server could not listen on {port} again"))
    }

    /// `Ok(None)`: it exited before answering (the port was taken).
    fn spawn(port: u16) -> std::io::Result<Option<Redis>> {
        let mut child = Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        let deadline = Instant::now() + PATIENCE;
        loop {
            if child.try_wait()?.is_some() {
                return Ok(None);
            }
            if pong(port) {
                return Ok(Some(Redis { child, port }));
            }
            assert!(
                Instant::now() < deadline,
                "redis-server on {port} did not answer"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends `kill -SIG` to the server (`STOP` freezes it with its
    /// connections open, `CONT` thaws it).
    fn signal(&self, sig: &str) {
        let status = Command::new("kill")
            .args([&format!("-{sig}"), &self.child.id().to_string()])
            .status()
            .expect("kill");
        assert!(status.success(), "kill -{sig}");
    }

    pub(crate) fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// SIGKILL, as a crash would.
    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Whether something on `port` answers `PING` like Redis.
fn pong(port: u16) -> bool {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
    let mut buf = [0u8; 7];
    s.write_all(b"PING\r\n").is_ok() && s.read_exact(&mut buf).is_ok() && &buf == b"+PONG\r\n"
}

/// `N` herald nodes on `redis`, each with `extra` flags.
fn nodes<const N: usize>(redis: &Redis, extra: &[&str]) -> [Server; N] {
    let mut flags = vec!["--retry", "100ms"];
    flags.extend_from_slice(extra);
    std::array::from_fn(|_| Server::start_with(&redis.url(), &flags))
}

/// A plain RESP connection to the test's Redis, for admin commands.
struct RedisCli {
    reader: std::io::BufReader<TcpStream>,
    writer: TcpStream,
    /// `maxclients` before [`RedisCli::cut_live_feeds`] lowered it.
    maxclients: usize,
}

impl RedisCli {
    fn connect(redis: &Redis) -> RedisCli {
        let writer = TcpStream::connect(("127.0.0.1", redis.port)).expect("connect to redis");
        writer.set_read_timeout(Some(PATIENCE)).unwrap();
        RedisCli {
            reader: std::io::BufReader::new(writer.try_clone().unwrap()),
            writer,
            maxclients: 0,
        }
    }

    /// Sends one command; returns its reply (a status, number or bulk
    /// string) as text. Panics on an error reply.
    fn cmd(&mut self, args: &[&str]) -> String {
        use std::io::BufRead;
        let mut out = format!("*{}\r\n", args.len());
        for a in args {
            out.push_str(&format!("${}\r\n{a}\r\n", a.len()));
        }
        self.writer.write_all(out.as_bytes()).unwrap();
        let mut line = String::new();
        self.reader.read_line(&mut line).unwrap();
        let line = line.trim_end();
        match line.split_at(1) {
            ("+" | ":", rest) => rest.to_owned(),
            ("$", len) => {
                let len: usize = len.parse().unwrap();
                let mut buf = vec![0u8; len + 2];
                self.reader.read_exact(&mut buf).unwrap();
                String::from_utf8_lossy(&buf[..len]).into_owned()
            }
            _ => panic!("redis answered {args:?} with {line}"),
        }
    }

    fn info(&mut self, section: &str, field: &str) -> usize {
        let info = self.cmd(&["INFO", section]);
        info.lines()
            .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
            .unwrap_or_else(|| panic!("no {field} in {info}"))
            .trim()
            .parse()
            .unwrap()
    }

    /// Cuts the live feed (the Pub/Sub connection) of each of `nodes` nodes
    /// and refuses new connections until [`RedisCli::heal`]; returns once
    /// every node has tried to reconnect and been refused.
    async fn cut_live_feeds(&mut self, nodes: usize) {
        let rejected = self.info("stats", "rejected_connections");
        let connected = self.info("clients", "connected_clients");
        self.maxclients = self.info("clients", "maxclients");
        self.cmd(&[
            "CONFIG",
            "SET",
            "maxclients",
            &(connected - nodes).to_string(),
        ]);
        let killed: usize = self
            .cmd(&["CLIENT", "KILL", "TYPE", "pubsub"])
            .parse()
            .unwrap();
        assert_eq!(killed, nodes, "one live feed per node");
        let deadline = Instant::now() + PATIENCE;
        while self.info("stats", "rejected_connections") < rejected + nodes {
            assert!(
                Instant::now() < deadline,
                "the nodes never tried to reconnect"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Lets the live feeds back in.
    fn heal(&mut self) {
        let feeds = self.cmd(&["CLIENT", "LIST", "TYPE", "pubsub"]);
        assert!(feeds.is_empty(), "no live feed came back yet: {feeds}");
        let maxclients = self.maxclients.to_string();
        self.cmd(&["CONFIG", "SET", "maxclients", &maxclients]);
    }
}

// ---------------------------------------------------------------------------
// Clients.

/// What a client saw of one event.
#[derive(Debug, Clone, PartialEq)]
struct Seen {
    id: String,
    event: String,
    data: String,
}

fn from_json(v: &Value) -> Seen {
    Seen {
        id: v["id"].as_str().unwrap_or_default().to_owned(),
        event: v["event"].as_str().unwrap_or_default().to_owned(),
        data: v["data"].as_str().unwrap_or_default().to_owned(),
    }
}

fn from_sse(e: Event) -> Seen {
    Seen {
        id: e.id,
        event: e.event,
        data: e.data,
    }
}

/// Publishes `data` as `event` and returns what subscribers should see.
async fn publish_seen(server: &Server, topic: &str, event: &str, data: &str) -> Seen {
    let r = client()
        .post(server.url(&format!("/topics/{topic}?event={event}")))
        .body(data.to_owned())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201, "publish to {topic} on {}", server.addr);
    let v: Value = r.json().await.unwrap();
    Seen {
        id: v["id"].as_str().unwrap().to_owned(),
        event: event.to_owned(),
        data: data.to_owned(),
    }
}

type Sse = BoxStream<'static, Result<Event, EventStreamError<reqwest::Error>>>;

/// Opens an SSE stream; asserts `200 text/event-stream`.
async fn sse(url: String, last_event_id: Option<&str>) -> Sse {
    let mut req = client().get(&url).header("accept", "text/event-stream");
    if let Some(id) = last_event_id {
        req = req.header("last-event-id", id);
    }
    let r = within("sse response", req.send()).await.unwrap();
    assert_eq!(r.status(), 200, "SSE {url}");
    assert_eq!(r.headers()["content-type"], "text/event-stream");
    r.bytes_stream().eventsource().boxed()
}

async fn sse_next(events: &mut Sse, what: &str) -> Event {
    within(what, events.next())
        .await
        .unwrap_or_else(|| panic!("{what}: the stream ended"))
        .unwrap()
}

async fn sse_take(events: &mut Sse, n: usize, what: &str) -> Vec<Seen> {
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        out.push(from_sse(sse_next(events, what).await));
    }
    out
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn ws_connect(url: String) -> Ws {
    within(
        "websocket handshake",
        tokio_tungstenite::connect_async(url.replacen("http", "ws", 1)),
    )
    .await
    .unwrap()
    .0
}

/// The next text frame as JSON, or the close code.
async fn ws_next(ws: &mut Ws) -> Result<Value, Option<u16>> {
    loop {
        match within("ws frame", ws.next()).await {
            Some(Ok(Message::Text(t))) => return Ok(serde_json::from_str(&t).unwrap()),
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
            Some(Ok(Message::Close(frame))) => return Err(frame.map(|f| u16::from(f.code))),
            other => panic!("unexpected websocket item {other:?}"),
        }
    }
}

async fn ws_take(ws: &mut Ws, n: usize) -> Vec<Seen> {
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        out.push(from_json(&ws_next(ws).await.expect("a frame, not a close")));
    }
    out
}

/// An NDJSON stream's lines as JSON.
struct Ndjson {
    body: BoxStream<'static, reqwest::Result<bytes::Bytes>>,
    lines: herald_protocol::ndjson::LineSplitter,
    ready: std::collections::VecDeque<Value>,
}

impl Ndjson {
    async fn open(url: String) -> Ndjson {
        let r = within(
            "ndjson response",
            client()
                .get(&url)
                .header("accept", "application/x-ndjson")
                .send(),
        )
        .await
        .unwrap();
        assert_eq!(r.status(), 200, "NDJSON {url}");
        assert_eq!(r.headers()["content-type"], "application/x-ndjson");
        Ndjson {
            body: r.bytes_stream().boxed(),
            lines: herald_protocol::ndjson::LineSplitter::new(),
            ready: Default::default(),
        }
    }

    async fn take(&mut self, n: usize) -> Vec<Seen> {
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            if let Some(v) = self.ready.pop_front() {
                out.push(from_json(&v));
                continue;
            }
            let chunk = within("ndjson chunk", self.body.next())
                .await
                .expect("the NDJSON stream ended")
                .unwrap();
            for line in self.lines.feed(&chunk) {
                self.ready.push_back(serde_json::from_slice(&line).unwrap());
            }
        }
        out
    }
}

/// Reads `n` events by long poll of `topic` on the node at `base` from
/// `cursor`, following `next`.
async fn long_poll_take(base: String, topic: &str, cursor: &str, n: usize) -> Vec<Seen> {
    let mut cursor = urlencode(cursor);
    let mut out = Vec::new();
    while out.len() < n {
        let r = within(
            "long poll",
            client()
                .get(format!(
                    "{base}/topics/{topic}?transport=long-poll&timeout=30&last-event-id={cursor}"
                ))
                .send(),
        )
        .await
        .unwrap();
        assert_eq!(r.status(), 200, "long poll on {base}");
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["gap"], false);
        out.extend(v["events"].as_array().unwrap().iter().map(from_json));
        cursor = urlencode(v["next"].as_str().unwrap());
    }
    out
}

/// One short poll after `cursor`: the events, or none on `204`.
async fn short_poll(server: &Server, path: &str, cursor: &str) -> Vec<Seen> {
    let sep = if path.contains('?') { '&' } else { '?' };
    let r = client()
        .get(server.url(&format!(
            "{path}{sep}transport=poll&last-event-id={}",
            urlencode(cursor)
        )))
        .send()
        .await
        .unwrap();
    if r.status() == 204 {
        return Vec::new();
    }
    assert_eq!(r.status(), 200, "short poll {path} on {}", server.addr);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["gap"], false, "{v}");
    v["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(from_json)
        .collect()
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn gauge(transport: &str) -> String {
    format!("herald_subscriptions{{transport=\"{transport}\"}}")
}

// ---------------------------------------------------------------------------
// Events across nodes.

/// Published on A, received on B and C by SSE, WebSocket, NDJSON stream,
/// long poll and short poll: the same ids, types and data, in order.
#[tokio::test]
async fn every_transport_on_every_node_delivers_what_another_node_published() {
    let Some(redis) = Redis::start() else { return };
    let [a, b, c] = nodes(&redis, &[]);
    let topic = "fan";

    // Streaming subscribers from `now`, and a long poll from the start of
    // the (empty) topic, on B and on C; each counted before anything is
    // published.
    let mut subscribers = Vec::new();
    let mut long_polls = Vec::new();
    for node in [&b, &c] {
        let url = node.url(&format!("/topics/{topic}"));
        let events = sse(url.clone(), None).await;
        let ws = ws_connect(url.clone()).await;
        let nd = Ndjson::open(url).await;
        subscribers.push((events, ws, nd));
        let base = node.url("");
        long_polls.push(tokio::spawn(async move {
            long_poll_take(base, topic, "all", 4).await
        }));
        for transport in ["sse", "ws", "stream", "long-poll"] {
            wait_for_metric(node, &gauge(transport), 1.0).await;
        }
    }

    let mut published = Vec::new();
    for (event, data) in [
        ("message", "plain"),
        ("note", "two\nlines"),
        ("message", "trailing\n"),
        ("note", "{\"json\": [1, 2]}"),
    ] {
        published.push(publish_seen(&a, topic, event, data).await);
    }
    let n = published.len();

    for ((mut events, mut ws, mut nd), (node, long_poll)) in subscribers
        .into_iter()
        .zip([&b, &c].into_iter().zip(long_polls))
    {
        let on = &node.addr;
        assert_eq!(
            sse_take(&mut events, n, "sse").await,
            published,
            "SSE on {on}"
        );
        assert_eq!(ws_take(&mut ws, n).await, published, "WebSocket on {on}");
        assert_eq!(nd.take(n).await, published, "NDJSON on {on}");
        assert_eq!(
            within("long polls", long_poll).await.unwrap(),
            published,
            "long poll on {on}"
        );
        assert_eq!(
            short_poll(node, &format!("/topics/{topic}"), "all").await,
            published,
            "short poll on {on}"
        );
        ws.close(None).await.ok();
    }
}

/// A subscriber's cursor from node B resumes on node C with exactly what it
/// missed: single-topic ids and multi-topic cursors alike.
#[tokio::test]
async fn a_cursor_from_one_node_resumes_on_another() {
    let Some(redis) = Redis::start() else { return };
    let [a, b, c] = nodes(&redis, &[]);

    // One topic.
    let mut on_b = sse(b.url("/topics/resume?last-event-id=all"), None).await;
    let mut published = Vec::new();
    for i in 0..3 {
        published.push(publish_seen(&a, "resume", "message", &format!("r{i}")).await);
    }
    let had = sse_take(&mut on_b, 3, "events on B").await;
    assert_eq!(had, published);
    drop(on_b);
    let last = had.last().unwrap().id.clone();
    let mut missed = Vec::new();
    for i in 3..6 {
        missed.push(publish_seen(&a, "resume", "message", &format!("r{i}")).await);
    }
    let mut on_c = sse(c.url("/topics/resume"), Some(&last)).await;
    assert_eq!(
        sse_take(&mut on_c, 3, "resumed on C").await,
        missed,
        "exactly the missing events"
    );
    // Nothing more was pending: the next event is a fresh one.
    let marker = publish_seen(&a, "resume", "message", "marker").await;
    assert_eq!(
        sse_take(&mut on_c, 1, "marker on C").await,
        std::slice::from_ref(&marker)
    );
    // The same cursor by short poll and long poll on C.
    let mut want = missed.clone();
    want.push(marker);
    assert_eq!(short_poll(&c, "/topics/resume", &last).await, want);
    assert_eq!(long_poll_take(c.url(""), "resume", &last, 4).await, want);

    // Several topics: the composite SSE id from B restores both on C.
    let mut on_b = sse(
        b.url("/subscribe?topic=ma&topic=mb&last-event-id=all"),
        None,
    )
    .await;
    publish_seen(&a, "ma", "message", "a1").await;
    publish_seen(&a, "mb", "message", "b1").await;
    let had = sse_take(&mut on_b, 2, "multi-topic events on B").await;
    let mut data: Vec<_> = had.iter().map(|e| e.data.as_str()).collect();
    data.sort_unstable();
    assert_eq!(data, ["a1", "b1"]);
    drop(on_b);
    let cursor = had.last().unwrap().id.clone();
    assert!(
        cursor.contains("ma=") && cursor.contains("mb="),
        "a multi-topic SSE id names every topic: {cursor}"
    );
    let b2 = publish_seen(&a, "mb", "message", "b2").await;
    let a2 = publish_seen(&a, "ma", "message", "a2").await;
    let b3 = publish_seen(&a, "mb", "message", "b3").await;
    let mut on_c = sse(c.url("/subscribe?topic=ma&topic=mb"), Some(&cursor)).await;
    let got = sse_take(&mut on_c, 3, "multi-topic resumed on C").await;
    // Each topic's events in order, with the ids A handed out (the SSE id
    // of a multi-topic stream is the composite cursor, so compare data).
    let of = |prefix: char| -> Vec<&str> {
        got.iter()
            .filter(|e| e.data.starts_with(prefix))
            .map(|e| e.data.as_str())
            .collect()
    };
    assert_eq!(
        of('b'),
        [b2.data.as_str(), b3.data.as_str()],
        "order within a topic is kept"
    );
    assert_eq!(of('a'), [a2.data.as_str()]);
    let marker = publish_seen(&a, "ma", "message", "a-marker").await;
    let next = sse_take(&mut on_c, 1, "multi-topic marker on C").await;
    assert_eq!(next[0].data, marker.data, "nothing repeated, nothing extra");
    // The composite cursor also works for a short poll on C.
    let mut polled: Vec<_> = short_poll(&c, "/subscribe?topic=ma&topic=mb", &cursor)
        .await
        .into_iter()
        .map(|e| e.data)
        .collect();
    polled.sort_unstable();
    assert_eq!(polled, ["a-marker", "a2", "b2", "b3"]);
}

/// Parses herald's `MS-SEQ` id. Clients never need to; this test does, to
/// check the order itself rather than trusting one node's listing.
fn id_order(id: &str) -> (u64, u64) {
    let (ms, seq) = id
        .split_once('-')
        .unwrap_or_else(|| panic!("{id} is not MS-SEQ"));
    (ms.parse().unwrap(), seq.parse().unwrap())
}

/// Publishes racing on A and B: every node lists the same events with the
/// same ids in the same order, ids strictly increasing, none missing; live
/// subscribers on every node receive that same sequence.
#[tokio::test]
async fn every_node_sees_the_same_ids_in_the_same_order() {
    let Some(redis) = Redis::start() else { return };
    let [a, b, c] = nodes(&redis, &[]);
    let topic = "order";
    const PUBLISHERS_PER_NODE: usize = 4;
    const EACH: usize = 25;
    const TOTAL: usize = 2 * PUBLISHERS_PER_NODE * EACH;

    let mut live = Vec::new();
    for node in [&a, &b, &c] {
        live.push(sse(node.url(&format!("/topics/{topic}")), None).await);
        wait_for_metric(node, &gauge("sse"), 1.0).await;
    }

    let mut publishers = Vec::new();
    for (n, node) in [&a, &b].into_iter().enumerate() {
        for p in 0..PUBLISHERS_PER_NODE {
            let url = node.url(&format!("/topics/{topic}"));
            publishers.push(tokio::spawn(async move {
                let http = client();
                let mut mine = Vec::with_capacity(EACH);
                for i in 0..EACH {
                    let data = format!("n{n}-p{p}-{i}");
                    let r = http.post(&url).body(data.clone()).send().await.unwrap();
                    assert_eq!(r.status(), 201);
                    let v: Value = r.json().await.unwrap();
                    mine.push((v["id"].as_str().unwrap().to_owned(), data));
                }
                mine
            }));
        }
    }
    let mut by_publisher = Vec::new();
    for p in publishers {
        by_publisher.push(within("publishers", p).await.unwrap());
    }

    let listing: Vec<Seen> = read_all(&a, topic).await.iter().map(from_json).collect();
    assert_eq!(listing.len(), TOTAL, "nothing missing, nothing extra");
    for node in [&b, &c] {
        let other: Vec<Seen> = read_all(node, topic).await.iter().map(from_json).collect();
        assert_eq!(other, listing, "node {} lists the same", node.addr);
    }
    for pair in listing.windows(2) {
        assert!(
            id_order(&pair[0].id) < id_order(&pair[1].id),
            "ids strictly increase: {} then {}",
            pair[0].id,
            pair[1].id
        );
    }
    // Every publish answer's id is in the listing with its data, and each
    // publisher's events keep the order it published them in.
    let position: std::collections::HashMap<&str, (usize, &str)> = listing
        .iter()
        .enumerate()
        .map(|(i, e)| (e.id.as_str(), (i, e.data.as_str())))
        .collect();
    assert_eq!(position.len(), TOTAL, "ids are unique");
    for mine in &by_publisher {
        let mut before = None;
        for (id, data) in mine {
            let (at, listed) = position[id.as_str()];
            assert_eq!(listed, data, "event {id}");
            assert!(before < Some(at), "one publisher's events stay in order");
            before = Some(at);
        }
    }
    for (mut events, node) in live.into_iter().zip([&a, &b, &c]) {
        assert_eq!(
            sse_take(&mut events, TOTAL, "live events").await,
            listing,
            "live on {} in the stored order",
            node.addr
        );
    }
}

/// The same `Idempotency-Key` on A then on B publishes once; B replays A's
/// answer. Racing on both nodes at once also publishes once.
#[tokio::test]
async fn an_idempotency_key_holds_across_nodes() {
    let Some(redis) = Redis::start() else { return };
    let [a, b, c] = nodes(&redis, &[]);

    let send = |node: &Server, key: &str, data: &str| {
        client()
            .post(node.url("/topics/idem?event=note"))
            .header("Idempotency-Key", key)
            .body(data.to_owned())
            .send()
    };
    let first = send(&a, "k1", "first").await.unwrap();
    assert_eq!(first.status(), 201);
    assert!(first.headers().get("idempotent-replayed").is_none());
    let first: Value = first.json().await.unwrap();
    let again = send(&b, "k1", "retry").await.unwrap();
    assert_eq!(again.status(), 201);
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    let again: Value = again.json().await.unwrap();
    assert_eq!(again, first, "B replays A's answer");

    // Both nodes at once with a new key.
    let (x, y) = within(
        "racing publishes",
        futures_util::future::join(send(&a, "k2", "race-a"), send(&b, "k2", "race-b")),
    )
    .await;
    let (x, y) = (x.unwrap(), y.unwrap());
    assert_eq!((x.status().as_u16(), y.status().as_u16()), (201, 201));
    let replayed = [&x, &y]
        .iter()
        .filter(|r| r.headers().get("idempotent-replayed").is_some())
        .count();
    assert_eq!(replayed, 1, "exactly one of the two was the first");
    let (x, y): (Value, Value) = (x.json().await.unwrap(), y.json().await.unwrap());
    assert_eq!(x["id"], y["id"]);

    let events = read_all(&c, "idem").await;
    assert_eq!(events.len(), 2, "one event per key: {events:?}");
    assert_eq!(events[0]["id"], first["id"]);
    assert_eq!(events[0]["data"], "first");
    assert_eq!(events[0]["event"], "note");
    assert_eq!(events[1]["id"], x["id"]);
    assert!(["race-a", "race-b"].contains(&events[1]["data"].as_str().unwrap()));
}

// ---------------------------------------------------------------------------
// Tasks across nodes.

/// Enqueues with `backoff=none`: only `backoff` tests here wait out a retry
/// backoff.
async fn enqueue(node: &Server, queue: &str, payload: &str) -> Value {
    let r = client()
        .post(node.url(&format!("/queues/{queue}/tasks?backoff=none")))
        .body(payload.to_owned())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201, "enqueue into {queue}");
    r.json().await.unwrap()
}

async fn try_claim(node: &Server, queue: &str, query: &str) -> reqwest::Response {
    within(
        "claim",
        client()
            .post(node.url(&format!("/queues/{queue}/claim?{query}")))
            .send(),
    )
    .await
    .unwrap()
}

/// A claim that must get a task: `(task, lease token)`.
async fn claim(node: &Server, queue: &str, query: &str) -> (Value, String) {
    let r = try_claim(node, queue, query).await;
    assert_eq!(r.status(), 200, "claim {queue}?{query} on {}", node.addr);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["task"]["status"], "running");
    let token = v["lease"]["token"]
        .as_str()
        .expect("lease token")
        .to_owned();
    (v["task"].clone(), token)
}

fn id_of(task: &Value) -> String {
    task["id"].as_str().expect("task id").to_owned()
}

/// `herald_tasks{queue,status}` on one node: the series' value, 0 when the
/// node does not show it.
async fn task_gauge(node: &Server, queue: &str, status: &str) -> f64 {
    let series = format!("herald_tasks{{queue=\"{queue}\",status=\"{status}\"}}");
    let text = crate::harness::metrics_text(node).await;
    text.lines()
        .find_map(|l| l.strip_prefix(&series)?.strip_prefix(' '))
        .map_or(0.0, |v| v.trim().parse().unwrap())
}

/// Enqueued on A, claimed on B, waited for on C by every wait mode; a claim
/// waiting on C is woken by an enqueue on A; two workers on two nodes race
/// for one task and exactly one wins.
#[tokio::test]
async fn tasks_move_between_nodes() {
    let Some(redis) = Redis::start() else { return };
    let [a, b, c] = nodes(&redis, &[]);

    let task = enqueue(&a, "q", "job").await;
    let id = id_of(&task);
    let path = format!("/tasks/{id}/events");

    // On C: SSE and WebSocket are waiting once they have their `wait`.
    let mut events = sse(c.url(&path), None).await;
    let first = sse_next(&mut events, "sse wait").await;
    assert_eq!(first.event, "wait");
    assert_eq!(
        serde_json::from_str::<Value>(&first.data).unwrap(),
        json!({"position": 1})
    );
    let mut ws = ws_connect(c.url(&path)).await;
    let frame = ws_next(&mut ws).await.unwrap();
    assert_eq!(frame["event"], "wait");
    // Long poll and a short poll loop on C.
    let url = c.url(&format!("/tasks/{id}?wait=30"));
    let long_poll = tokio::spawn(async move { client().get(url).send().await.unwrap() });
    let url = c.url(&format!("/tasks/{id}"));
    let short_poll = tokio::spawn(async move {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let r = client().get(&url).send().await.unwrap();
            match r.status().as_u16() {
                200 => return r.json::<Value>().await.unwrap(),
                202 => {}
                other => panic!("short poll answered {other}"),
            }
            assert!(Instant::now() < deadline, "the short poll never saw it end");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });

    // The worker on B.
    let (claimed, token) = claim(&b, "q", "wait=5").await;
    assert_eq!(claimed["id"], id.as_str());
    let r = client()
        .post(b.url(&format!("/tasks/{id}/progress")))
        .header("Herald-Lease", &token)
        .json(&json!({"progress": 0.5, "message": "half"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = client()
        .post(b.url(&format!("/tasks/{id}/complete")))
        .header("Herald-Lease", &token)
        .json(&json!({"ok": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let done: Value = r.json().await.unwrap();
    assert_eq!(done["status"], "succeeded");

    // SSE on C: progress, then done, then the end.
    let mut e = sse_next(&mut events, "sse progress").await;
    while e.event == "wait" {
        e = sse_next(&mut events, "sse progress").await;
    }
    assert_eq!(e.event, "progress", "{e:?}");
    let p: Value = serde_json::from_str(&e.data).unwrap();
    assert_eq!(
        (&p["progress"], &p["message"]),
        (&json!(0.5), &json!("half"))
    );
    let e = sse_next(&mut events, "sse done").await;
    assert_eq!(e.event, "done");
    let v: Value = serde_json::from_str(&e.data).unwrap();
    assert_eq!(
        (&v["status"], &v["result"]),
        (&json!("succeeded"), &json!({"ok": true}))
    );
    if let Some(item) = within("sse end", events.next()).await {
        panic!("expected the end of the task's stream, got {item:?}");
    }
    // WebSocket on C: the same done, then a normal close.
    let mut frame = ws_next(&mut ws).await.unwrap();
    while frame["event"] != "done" {
        assert!(
            ["wait", "progress"].contains(&frame["event"].as_str().unwrap()),
            "{frame}"
        );
        frame = ws_next(&mut ws).await.unwrap();
    }
    assert_eq!(frame["id"], e.id.as_str());
    assert_eq!(ws_next(&mut ws).await.unwrap_err(), Some(1000));
    // Long poll and short poll on C: the finished task.
    let r = within("long poll", long_poll).await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.unwrap(), done);
    assert_eq!(within("short poll", short_poll).await.unwrap(), done);

    // A claim waiting on C is woken by an enqueue on A. (Nothing shows that
    // the claim is waiting yet; a round trip to C makes it very likely, and
    // the claim must get the task either way.)
    let url = c.url("/queues/wake/claim?wait=5");
    let started = Instant::now();
    let waiting = tokio::spawn(async move { client().post(url).send().await.unwrap() });
    let r = client().get(c.url("/healthz")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let task = enqueue(&a, "wake", "wake up").await;
    let r = within("the woken claim", waiting).await.unwrap();
    assert_eq!(r.status(), 200, "the waiting claim on C got the task");
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["task"]["id"], task["id"]);
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "woken, not timed out: {:?}",
        started.elapsed()
    );

    // Two workers on two nodes, one task: exactly one 200.
    let task = enqueue(&a, "race", "only one").await;
    let (x, y) = within(
        "both claims",
        futures_util::future::join(
            try_claim(&b, "race", "wait=1"),
            try_claim(&c, "race", "wait=1"),
        ),
    )
    .await;
    let mut statuses = [x.status().as_u16(), y.status().as_u16()];
    statuses.sort_unstable();
    assert_eq!(statuses, [200, 204]);
    let winner = if x.status() == 200 { x } else { y };
    let v: Value = winner.json().await.unwrap();
    assert_eq!(v["task"]["id"], task["id"]);
    assert_eq!(v["task"]["attempts"], 1);
}

/// Queue positions, cancels and idempotency keys of tasks hold across
/// nodes: a follower on C sees its position move when B claims the task
/// ahead; a cancel on C ends a queued task at once and stops the worker on
/// B at its next call; the same key on A and on B (even at once) enqueues
/// one task.
#[tokio::test]
async fn task_positions_cancels_and_keys_hold_across_nodes() {
    let Some(redis) = Redis::start() else { return };
    let [a, b, c] = nodes(&redis, &[]);

    let one = enqueue(&a, "pos", "one").await;
    let two = enqueue(&a, "pos", "two").await;
    assert_eq!(two["position"], 2);
    let two_id = id_of(&two);
    let mut follow = sse(c.url(&format!("/tasks/{two_id}/events")), None).await;
    let position = |e: &Event| -> Value {
        assert_eq!(e.event, "wait", "{e:?}");
        serde_json::from_str::<Value>(&e.data).unwrap()["position"].clone()
    };
    assert_eq!(position(&sse_next(&mut follow, "wait 2").await), 2);
    let (claimed, token) = claim(&b, "pos", "wait=0").await;
    assert_eq!(claimed["id"], one["id"]);
    assert_eq!(
        position(&sse_next(&mut follow, "wait 1").await),
        1,
        "the claim on B moved it up on C"
    );

    // Cancelled on C while queued: ended at once, everywhere.
    let r = client()
        .delete(c.url(&format!("/tasks/{two_id}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let e = sse_next(&mut follow, "cancelled").await;
    assert_eq!(e.event, "error");
    assert_eq!(
        serde_json::from_str::<Value>(&e.data).unwrap()["status"],
        "cancelled"
    );
    if let Some(item) = within("the end", follow.next()).await {
        panic!("expected the end of the stream, got {item:?}");
    }
    let r = client()
        .get(a.url(&format!("/tasks/{two_id}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.unwrap()["status"], "cancelled");

    // Cancelled on C while running on B: B's worker is told at its next call.
    let one_id = id_of(&one);
    let r = client()
        .delete(c.url(&format!("/tasks/{one_id}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let r = client()
        .post(b.url(&format!("/tasks/{one_id}/progress")))
        .header("Herald-Lease", &token)
        .json(&json!({"progress": 0.9}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 409, "the worker on B learns of the cancel");
    let r = client()
        .get(a.url(&format!("/tasks/{one_id}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.json::<Value>().await.unwrap()["status"], "cancelled");
    assert_eq!(try_claim(&c, "pos", "wait=0").await.status(), 204);

    // One key, one task: on A then B, then racing on both.
    let keyed = |node: &Server, key: &str| {
        client()
            .post(node.url("/queues/keyed/tasks"))
            .header("Idempotency-Key", key)
            .body("once")
            .send()
    };
    let first = keyed(&a, "t1").await.unwrap();
    assert_eq!(first.status(), 201);
    let first: Value = first.json().await.unwrap();
    let again = keyed(&b, "t1").await.unwrap();
    assert_eq!(again.status(), 201);
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    assert_eq!(again.json::<Value>().await.unwrap()["id"], first["id"]);
    let (x, y) = within(
        "racing enqueues",
        futures_util::future::join(keyed(&a, "t2"), keyed(&b, "t2")),
    )
    .await;
    let (x, y) = (x.unwrap(), y.unwrap());
    assert_eq!((x.status().as_u16(), y.status().as_u16()), (201, 201));
    let (x, y): (Value, Value) = (x.json().await.unwrap(), y.json().await.unwrap());
    assert_eq!(x["id"], y["id"], "racing enqueues with one key: one task");
    for want in [&first, &x] {
        let (got, _) = claim(&c, "keyed", "wait=0").await;
        assert_eq!(got["id"], want["id"]);
    }
    assert_eq!(
        try_claim(&c, "keyed", "wait=0").await.status(),
        204,
        "nothing else was enqueued"
    );
}

/// The node that handed a task out dies with the lease: the lease still
/// runs out, and another node hands the task out again.
#[tokio::test]
async fn a_lease_runs_out_even_when_its_node_is_dead() {
    let Some(redis) = Redis::start() else { return };
    let [a, mut b] = nodes(&redis, &[]);
    let task = enqueue(&a, "lease", "work").await;
    let (claimed, _) = claim(&b, "lease", "wait=0&lease=1").await;
    assert_eq!(claimed["id"], task["id"]);
    assert_eq!(claimed["attempts"], 1);
    b.crash();
    let (again, _) = claim(&a, "lease", "wait=5&lease=30").await;
    assert_eq!(again["id"], task["id"], "the same task, again");
    assert_eq!(again["attempts"], 2);
}

/// The task gauge counts the queue the nodes share, so every node reports
/// the same numbers whichever node enqueued, claimed or finished a task.
#[tokio::test]
async fn every_node_reports_the_shared_task_counts() {
    let Some(redis) = Redis::start() else { return };
    let [a, b, c] = nodes(&redis, &[]);
    enqueue(&a, "g", "one").await;
    enqueue(&a, "g", "two").await;
    let (task, token) = claim(&b, "g", "wait=0").await;
    let r = client()
        .post(b.url(&format!("/tasks/{}/complete", id_of(&task))))
        .header("Herald-Lease", &token)
        .body("ok")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    let want = [("queued", 1.0), ("running", 0.0), ("succeeded", 1.0)];
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let mut seen = Vec::new();
        for node in [&a, &b, &c] {
            for (status, _) in want {
                seen.push(task_gauge(node, "g", status).await);
            }
        }
        let expected: Vec<f64> = (0..3).flat_map(|_| want.map(|(_, n)| n)).collect();
        if seen == expected {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "herald_tasks{{queue=\"g\"}} queued/running/succeeded on A, B, C: \
             got {seen:?}, want {expected:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

// ---------------------------------------------------------------------------
// Failures.

/// An SSE client on node B; B is killed mid-stream while A keeps
/// publishing; the client resumes on node C with its last id and sees every
/// event exactly once, in order.
#[tokio::test]
async fn a_client_survives_its_node_dying_by_resuming_on_another() {
    let Some(redis) = Redis::start() else { return };
    let [a, mut b, c] = nodes(&redis, &[]);
    let topic = "survive";

    let mut events = sse(b.url(&format!("/topics/{topic}?last-event-id=all")), None).await;

    // A steady publisher on A, until told to stop.
    let stop = Arc::new(AtomicBool::new(false));
    let publisher = {
        let stop = Arc::clone(&stop);
        let url = a.url(&format!("/topics/{topic}"));
        tokio::spawn(async move {
            let http = client();
            let mut pace = tokio::time::interval(Duration::from_millis(5));
            let mut out = Vec::new();
            while !stop.load(Ordering::SeqCst) {
                pace.tick().await;
                let data = format!("e{}", out.len());
                let r = http.post(&url).body(data.clone()).send().await.unwrap();
                assert_eq!(r.status(), 201);
                let v: Value = r.json().await.unwrap();
                out.push(Seen {
                    id: v["id"].as_str().unwrap().to_owned(),
                    event: "message".into(),
                    data,
                });
            }
            out
        })
    };

    let mut got = sse_take(&mut events, 20, "events on B").await;
    b.crash();
    // Whatever B had fully sent still counts; then its stream breaks (an
    // error or a clean end: either means "reconnect").
    while let Some(Ok(e)) = within("B's stream to break", events.next()).await {
        got.push(from_sse(e));
    }
    let before = got.len();
    let last = got.last().unwrap().id.clone();
    let mut events = sse(c.url(&format!("/topics/{topic}")), Some(&last)).await;
    got.extend(sse_take(&mut events, 20, "events on C").await);
    stop.store(true, Ordering::SeqCst);
    let published = within("the publisher", publisher).await.unwrap();
    let want = published.len();
    assert!(want >= got.len());
    let rest = want - got.len();
    got.extend(sse_take(&mut events, rest, "the rest on C").await);
    assert_eq!(
        got, published,
        "every event exactly once, in order ({before} from B)"
    );
}

/// Redis dies: publishes answer 503 `unavailable` (never 201) and health
/// checks 503, promptly; Redis comes back on the same port: the nodes
/// recover by themselves, and a subscriber that stayed connected on B
/// receives what A publishes afterwards.
#[tokio::test]
async fn the_nodes_ride_out_a_redis_restart() {
    let Some(mut redis) = Redis::start() else {
        return;
    };
    let [a, b] = nodes(&redis, &[]);
    let topic = "outage";

    let mut events = sse(b.url(&format!("/topics/{topic}")), None).await;
    wait_for_metric(&b, &gauge("sse"), 1.0).await;
    let before = publish_seen(&a, topic, "message", "before").await;
    assert_eq!(sse_take(&mut events, 1, "before").await, [before]);

    let port = redis.port;
    redis.kill();

    // Bounded: the store's timeouts are a few seconds, and a write whose
    // answer was lost is sent again for 10 s at most.
    let bound = Duration::from_secs(20);
    for node in [&a, &b] {
        for attempt in 0..2 {
            let r = tokio::time::timeout(
                bound,
                client()
                    .post(node.url(&format!("/topics/{topic}")))
                    .body("lost")
                    .send(),
            )
            .await
            .unwrap_or_else(|_| panic!("a publish on {} hung without Redis", node.addr))
            .unwrap();
            assert_eq!(r.status(), 503, "publish without Redis on {}", node.addr);
            let v: Value = r.json().await.unwrap();
            // The first publish may have been on its way when Redis died
            // (whether it ran cannot be known); once the node knows Redis
            // is gone, a publish is refused before it is sent.
            let code = v["error"]["code"].as_str().unwrap_or_default();
            if attempt == 0 {
                assert!(["unavailable", "outcome_unknown"].contains(&code), "{v}");
            } else {
                assert_eq!(code, "unavailable", "{v}");
            }
            let message = v["error"]["message"].as_str().unwrap_or_default();
            assert!(!message.is_empty());
            // Redis's own words, and its address, are for the log only.
            for internal in ["redis", "os error", "refused", "127.0.0.1"] {
                assert!(!message.contains(internal), "{internal:?} in {message:?}");
            }
        }
        let r = tokio::time::timeout(bound, client().get(node.url("/healthz")).send())
            .await
            .unwrap_or_else(|_| panic!("/healthz on {} hung without Redis", node.addr))
            .unwrap();
        assert_eq!(r.status(), 503, "/healthz without Redis on {}", node.addr);
    }

    let _redis = Redis::start_on(port);
    // A publishes again once it has reconnected: 503 until then, never
    // anything else.
    let deadline = Instant::now() + PATIENCE;
    let recovered = loop {
        let r = client()
            .post(a.url(&format!("/topics/{topic}")))
            .body("recovered")
            .send()
            .await
            .unwrap();
        match r.status().as_u16() {
            201 => {
                let v: Value = r.json().await.unwrap();
                break Seen {
                    id: v["id"].as_str().unwrap().to_owned(),
                    event: "message".into(),
                    data: "recovered".into(),
                };
            }
            503 => {}
            other => panic!("publish while Redis comes back answered {other}"),
        }
        assert!(Instant::now() < deadline, "A never recovered");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    for node in [&a, &b] {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let r = client().get(node.url("/healthz")).send().await.unwrap();
            if r.status() == 200 {
                break;
            }
            assert_eq!(r.status(), 503);
            assert!(Instant::now() < deadline, "{} stays unhealthy", node.addr);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let mut after = vec![recovered];
    for i in 0..3 {
        after.push(publish_seen(&a, topic, "message", &format!("after-{i}")).await);
    }
    assert_eq!(
        sse_take(&mut events, after.len(), "events after the outage on B").await,
        after,
        "the subscriber that stayed on B gets what A published after the outage"
    );
    // And B itself publishes again, to its own subscriber too.
    let from_b = publish_seen(&b, topic, "message", "from B").await;
    assert_eq!(sse_take(&mut events, 1, "from B").await, [from_b]);
}

/// Polls `/metrics` until `series` is at least `want`, for at most
/// [`PATIENCE`]: the count is the only sign of what the node is doing.
async fn wait_for_metric_at_least(server: &Server, series: &str, want: f64) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let got = crate::harness::metric(server, series).await;
        if got >= want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{series} stayed {got}, wanted {want}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// How many stored events of `topic` carry `data`.
async fn stored_count(node: &Server, topic: &str, data: &str) -> usize {
    read_all(node, topic)
        .await
        .iter()
        .filter(|e| e["data"] == data)
        .count()
}

/// Redis stops answering (SIGSTOP: its connections stay open and silent)
/// for longer than the store's response timeout, then wakes. The publish
/// sent meanwhile is not answered 503: the node sends it again (it carries
/// its own write id) until Redis answers, so the client gets 201 and the
/// event exists once — though Redis ran both the first sending, which sat
/// in its socket buffer, and the ones after it. `/healthz`, a read, says
/// 503 while Redis is frozen.
#[tokio::test]
async fn a_write_whose_answer_was_lost_is_sent_again_and_applied_once() {
    let Some(redis) = Redis::start() else { return };
    let [a, b] = nodes(&redis, &[]);
    let topic = "frozen";
    let mut events = sse(b.url(&format!("/topics/{topic}")), None).await;
    wait_for_metric(&b, &gauge("sse"), 1.0).await;
    // Warm: the publish script is loaded, so the stalled publish runs late.
    let warm = publish_seen(&a, topic, "message", "warm").await;
    assert_eq!(
        sse_take(&mut events, 1, "warm").await,
        std::slice::from_ref(&warm)
    );

    redis.signal("STOP");
    let publish = tokio::spawn(
        client()
            .post(a.url(&format!("/topics/{topic}")))
            .body("during")
            .send(),
    );
    let health = within("/healthz", client().get(b.url("/healthz")).send())
        .await
        .unwrap();
    assert_eq!(health.status(), 503, "/healthz with a frozen Redis");
    // The first sending timed out and the node is sending it again.
    wait_for_metric_at_least(&a, "herald_store_writes_resent_total", 1.0).await;
    redis.signal("CONT");

    let r = within("the publish", publish).await.unwrap().unwrap();
    assert_eq!(r.status(), 201, "a publish Redis answered late");
    let during: Value = r.json().await.unwrap();
    let during = Seen {
        id: during["id"].as_str().unwrap().to_owned(),
        event: "message".into(),
        data: "during".into(),
    };
    let after = publish_seen(&a, topic, "message", "after").await;
    let want = [during, after];
    assert_eq!(
        sse_take(&mut events, 2, "events after the thaw").await,
        want,
        "once each, in order"
    );
    let stored: Vec<Seen> = read_all(&b, topic).await.iter().map(from_json).collect();
    assert_eq!(stored, [&[warm][..], &want[..]].concat());
    assert_eq!(
        crate::harness::metric(&a, "herald_store_outcome_unknown_total").await,
        0.0
    );
}

/// Redis stops running writes (`CLIENT PAUSE … WRITE`: reads still
/// answer, so a task change gets as far as its compare-and-set) for longer
/// than a node keeps sending a write again: the answer is 503
/// `outcome_unknown` — never plain `unavailable`, which
/// means nothing was stored — naming the `Idempotency-Key` to retry with
/// when the call had one. Once Redis wakes, retries with the same key are
/// answered as the first call would have been: the event exists once, the
/// task was completed once and its worker is told so.
#[tokio::test]
async fn a_write_redis_never_answers_is_outcome_unknown_and_a_keyed_retry_is_safe() {
    let Some(redis) = Redis::start() else { return };
    let [a] = nodes(&redis, &[]);
    let topic = "frozen";
    publish_seen(&a, topic, "message", "warm").await;
    enqueue(&a, "jobs", "{}").await;
    let (task, lease) = claim(&a, "jobs", "wait=5").await;
    let id = id_of(&task);

    let keyed = |data: &str| {
        client()
            .post(a.url(&format!("/topics/{topic}")))
            .header("Idempotency-Key", "frozen-1")
            .body(data.to_owned())
            .send()
    };
    let complete = |key: Option<&str>, lease: Option<&str>| {
        let mut r = client()
            .post(a.url(&format!("/tasks/{id}/complete")))
            .header("content-type", "application/json")
            .body(r#"{"ok":true}"#);
        if let Some(key) = key {
            r = r.header("Idempotency-Key", key);
        }
        if let Some(lease) = lease {
            r = r.header("Herald-Lease", lease);
        }
        r.send()
    };
    let mut cli = RedisCli::connect(&redis);
    cli.cmd(&["CLIENT", "PAUSE", "60000", "WRITE"]);
    let bound = Duration::from_secs(30);
    // The completion first: the node's one connection to Redis runs its
    // calls in order, so it must have read the task before the publishes
    // queue up behind the paused writes.
    let completed = tokio::spawn(tokio::time::timeout(
        bound,
        complete(Some("done-1"), Some(&lease)),
    ));
    wait_for_metric_at_least(&a, "herald_store_writes_resent_total", 1.0).await;
    let (published, unkeyed) = futures_util::future::join(
        tokio::time::timeout(bound, keyed("during")),
        tokio::time::timeout(
            bound,
            client()
                .post(a.url(&format!("/topics/{topic}")))
                .body("unkeyed")
                .send(),
        ),
    )
    .await;
    let completed = completed.await.unwrap();
    let mut bodies = Vec::new();
    for (what, r) in [
        ("keyed publish", published),
        ("unkeyed publish", unkeyed),
        ("complete", completed),
    ] {
        let r = r
            .unwrap_or_else(|_| panic!("the {what} hung on a frozen Redis"))
            .unwrap();
        assert_eq!(r.status(), 503, "the {what}");
        assert_eq!(r.headers()["retry-after"], "1", "the {what}");
        bodies.push(r.json::<Value>().await.unwrap());
    }
    cli.cmd(&["CLIENT", "UNPAUSE"]);
    for body in &bodies {
        assert_eq!(body["error"]["code"], "outcome_unknown", "{body}");
        let message = body["error"]["message"].as_str().unwrap();
        assert!(!message.contains("redis"), "no internals: {message}");
    }
    assert_eq!(bodies[0]["error"]["idempotency_key"], "frozen-1");
    assert!(bodies[1]["error"].get("idempotency_key").is_none());
    assert!(
        bodies[1]["error"]["message"]
            .as_str()
            .unwrap()
            .contains("Idempotency-Key")
    );
    assert_eq!(bodies[2]["error"]["idempotency_key"], "done-1");
    assert!(crate::harness::metric(&a, "herald_store_outcome_unknown_total").await >= 3.0);

    // Redis answers again: the retries with their keys are answered as the
    // first calls would have been.
    let r = within("the publish retry", keyed("during")).await.unwrap();
    assert_eq!(r.status(), 201, "the retry once Redis answers");
    let r = within("the complete retry", complete(Some("done-1"), Some(&lease)))
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "the keyed complete retry");
    let done: Value = r.json().await.unwrap();
    assert_eq!(done["status"], "succeeded");
    assert_eq!(done["result"], json!({"ok": true}));
    let r = within("a complete without the lease", complete(None, None))
        .await
        .unwrap();
    assert_eq!(r.status(), 409, "only the claim's holder moves the task");

    assert_eq!(stored_count(&a, topic, "during").await, 1);
    // The unkeyed publish was held by the pause: it ran when Redis let
    // writes through again, once, however often the node sent it.
    let deadline = Instant::now() + PATIENCE;
    while stored_count(&a, topic, "unkeyed").await == 0 {
        assert!(Instant::now() < deadline, "the first sending never ran");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(stored_count(&a, topic, "unkeyed").await, 1);
}

/// Every node's live feed (its Pub/Sub connection) is cut and kept from
/// coming back for a while, as a network blip would; whatever was stored
/// meanwhile still reaches the node's subscribers, long polls, waiting
/// claims and task waiters once the feed is back — exactly once, in order.
#[tokio::test]
async fn a_node_whose_live_feed_drops_catches_up() {
    let Some(redis) = Redis::start() else { return };
    let [a, b] = nodes(&redis, &[]);
    let mut cli = RedisCli::connect(&redis);

    // On B: a subscriber to a topic with history but nothing live yet, and
    // one that has already had a live event.
    let mut old = Vec::new();
    for i in 0..3 {
        old.push(publish_seen(&a, "quiet", "message", &format!("old{i}")).await);
    }
    let mut quiet = sse(b.url("/topics/quiet"), None).await;
    let mut busy = sse(b.url("/topics/busy"), None).await;
    wait_for_metric(&b, &gauge("sse"), 2.0).await;
    let first = publish_seen(&a, "busy", "message", "live").await;
    assert_eq!(sse_take(&mut busy, 1, "live on B").await, [first]);
    // A long poll, a claim and a task waiter, all waiting on B.
    let base = b.url("");
    let long_poll = tokio::spawn(async move { long_poll_take(base, "lp", "all", 1).await });
    let url = b.url("/queues/gap/claim?wait=10");
    let claim_on_b = tokio::spawn(async move { client().post(url).send().await.unwrap() });
    let task = enqueue(&a, "work", "job").await;
    let id = id_of(&task);
    let (_, token) = claim(&a, "work", "wait=0").await;
    let url = b.url(&format!("/tasks/{id}?wait=30"));
    let task_wait = tokio::spawn(async move { client().get(url).send().await.unwrap() });
    // The topic's long poll and the task's (`?wait=` counts as a long poll).
    wait_for_metric(&b, &gauge("long-poll"), 2.0).await;

    cli.cut_live_feeds(2).await;

    // Stored while B hears nothing.
    let mut missed_quiet = Vec::new();
    let mut missed_busy = Vec::new();
    for i in 0..3 {
        missed_quiet.push(publish_seen(&a, "quiet", "message", &format!("new{i}")).await);
        missed_busy.push(publish_seen(&a, "busy", "message", &format!("b{i}")).await);
    }
    let lp = publish_seen(&a, "lp", "message", "for the long poll").await;
    let queued = enqueue(&a, "gap", "for the claim").await;
    let r = client()
        .post(a.url(&format!("/tasks/{id}/complete")))
        .header("Herald-Lease", &token)
        .body("done")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    cli.heal();

    assert_eq!(
        sse_take(&mut quiet, 3, "quiet after the blip").await,
        missed_quiet,
        "exactly what was missed, no history replayed (history was {old:?})"
    );
    assert_eq!(
        sse_take(&mut busy, 3, "busy after the blip").await,
        missed_busy
    );
    assert_eq!(within("long poll", long_poll).await.unwrap(), [lp]);
    let r = within("claim", claim_on_b).await.unwrap();
    assert_eq!(r.status(), 200, "the claim waiting on B got the task");
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["task"]["id"], queued["id"]);
    let r = within("task wait", task_wait).await.unwrap();
    assert_eq!(r.status(), 200, "the task waiter on B saw it finish");
    assert_eq!(r.json::<Value>().await.unwrap()["status"], "succeeded");
    // And live again: the next events come once each.
    let next = publish_seen(&a, "quiet", "message", "next").await;
    assert_eq!(sse_take(&mut quiet, 1, "next").await, [next]);
}

/// After a feed blip a node re-reads the topics it serves; for a topic that
/// had no live event since its subscribers came, that re-read starts at the
/// oldest retained event. Those old events must not cut the subscribers off
/// as "too slow" (here with an 8-event buffer and 20 events of history):
/// they get only the event they missed, on the same connection.
#[tokio::test]
async fn a_feed_blip_does_not_cut_off_subscribers_of_a_quiet_topic() {
    let Some(redis) = Redis::start() else { return };
    let [a, b] = nodes(&redis, &["--subscriber-buffer", "8"]);
    let mut cli = RedisCli::connect(&redis);
    for i in 0..20 {
        publish_seen(&a, "history", "message", &format!("old{i}")).await;
    }
    let mut events = sse(b.url("/topics/history"), None).await;
    let mut ws = ws_connect(b.url("/topics/history")).await;
    wait_for_metric(&b, &gauge("sse"), 1.0).await;
    wait_for_metric(&b, &gauge("ws"), 1.0).await;

    cli.cut_live_feeds(2).await;
    let missed = publish_seen(&a, "history", "message", "missed").await;
    cli.heal();

    assert_eq!(
        sse_take(&mut events, 1, "SSE after the blip").await,
        std::slice::from_ref(&missed),
        "SSE on B"
    );
    assert_eq!(ws_take(&mut ws, 1).await, [missed], "WebSocket on B");
    assert_eq!(
        crate::harness::metric(&b, "herald_subscribers_dropped_total").await,
        0.0,
        "nobody was cut off"
    );
}

/// `herald-client` meets an unknown outcome the way the answer says to: it
/// retries with the same `Idempotency-Key`, and its publish and its
/// worker's completion are each applied once, the caller told of success.
#[tokio::test]
async fn the_client_retries_an_unknown_outcome_with_its_key() {
    let Some(redis) = Redis::start() else { return };
    let [a] = nodes(&redis, &[]);
    let client = herald_client::Client::new(a.url("")).unwrap();
    client.publish("kept", "warm").await.unwrap();
    client
        .enqueue("jobs", herald_client::Payload::Text("x".into()))
        .await
        .unwrap();
    let claimed = client
        .claim("jobs", Duration::from_secs(5), Duration::from_secs(60))
        .await
        .unwrap()
        .expect("a task to claim");
    let id = claimed.task.id.clone();

    let mut cli = RedisCli::connect(&redis);
    cli.cmd(&["CLIENT", "PAUSE", "60000", "WRITE"]);
    let completing = {
        let client = client.clone();
        tokio::spawn(async move {
            client
                .complete(&claimed, &herald_client::Payload::Text("done".into()))
                .await
        })
    };
    // The completion has read its task and its write is held; the publish
    // queues behind it.
    wait_for_metric_at_least(&a, "herald_store_writes_resent_total", 1.0).await;
    let publishing = {
        let client = client.clone();
        tokio::spawn(async move { client.publish("kept", "during").await })
    };
    // Both were answered outcome_unknown at least once before Redis
    // lets writes through again.
    wait_for_metric_at_least(&a, "herald_store_outcome_unknown_total", 1.0).await;
    cli.cmd(&["CLIENT", "UNPAUSE"]);

    let done = within("the completion", completing).await.unwrap().unwrap();
    assert_eq!(done.status, "succeeded");
    let receipt = within("the publish", publishing).await.unwrap().unwrap();
    let stored = read_all(&a, "kept").await;
    let during: Vec<_> = stored.iter().filter(|e| e["data"] == "during").collect();
    assert_eq!(during.len(), 1, "stored once: {stored:?}");
    assert_eq!(during[0]["id"], receipt.id.as_str());
    let task = client.task(&id).await.unwrap();
    assert_eq!(task.status, "succeeded");
}

/// An enqueue that waits on node A is answered when a worker on node B
/// completes the task, with the bytes a `GET` answers after; a second
/// enqueue that waits past its `wait` gets 408 with the task, still queued.
#[tokio::test]
async fn an_enqueue_that_waits_on_one_node_hears_a_worker_on_another() {
    let Some(redis) = Redis::start() else { return };
    let [a, b] = nodes(&redis, &[]);

    let url = a.url("/queues/waits/tasks?wait=30");
    let waiting = tokio::spawn(async move {
        client()
            .post(url)
            .header("content-type", "application/json")
            .body(r#"{"n":1}"#)
            .send()
            .await
            .unwrap()
    });
    let (task, token) = claim(&b, "waits", "wait=30").await;
    let id = id_of(&task);
    let done = client()
        .post(b.url(&format!("/tasks/{id}/complete")))
        .header("herald-lease", &token)
        .header("content-type", "application/json")
        .body(r#"{"ok":true}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(done.status(), 200);
    let answer = within("the waiting enqueue", waiting).await.unwrap();
    assert_eq!(answer.status(), 200);
    assert_eq!(
        answer.headers()["location"],
        format!("/tasks/{id}").as_str()
    );
    let body = answer.text().await.unwrap();
    let after = client()
        .get(a.url(&format!("/tasks/{id}")))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(body, after);
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap()["result"],
        json!({"ok": true})
    );

    let r = client()
        .post(a.url("/queues/waits/tasks?wait=0.2"))
        .body("nobody works on it")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 408);
    let v: Value = r.json().await.unwrap();
    assert_eq!(
        (v["status"].clone(), v["position"].clone()),
        (json!("queued"), json!(1))
    );
}
