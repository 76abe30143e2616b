//! One table of subscribe scenarios, run over every way into the server:
//! HTTP/1.1 and HTTP/1.0 (read by herald's own direct path) and HTTP/2 with
//! prior knowledge on the plain port (read by hyper). Whatever stack reads a
//! request, the client must see the same wire behaviour; each case also
//! checks, by `herald_subscribe_requests_total{stack}`, that the stack it
//! meant to exercise is the one that read every subscribe request it made.
//!
//! Test names read `ways_in::SCENARIO::TRANSPORT::WAY_STORE`.

use std::future::Future;

use eventsource_stream::Eventsource;
use futures_util::StreamExt;
use futures_util::stream::BoxStream;
use herald_protocol::ndjson::LineSplitter;
use reqwest::{Client, RequestBuilder, Response, Version};
use serde_json::Value;

use crate::harness::{Server, metric, publish, temp_dir, wait_for_metric, within};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Way {
    /// HTTP/1.1: chunked streams, read by the direct path.
    Http11,
    /// HTTP/1.0 without `Connection`: close-delimited streams, direct path.
    Http10,
    /// HTTP/2 with prior knowledge (h2c) on the plain port: hyper.
    H2c,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Transport {
    Sse,
    Ndjson,
    LongPoll,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Store {
    Memory,
    File,
}

impl Way {
    /// The stack that must read this way's subscribe requests.
    fn stack(self) -> &'static str {
        match self {
            Way::Http11 | Way::Http10 => "direct",
            Way::H2c => "hyper",
        }
    }

    fn version(self) -> Version {
        match self {
            Way::Http11 => Version::HTTP_11,
            Way::Http10 => Version::HTTP_10,
            Way::H2c => Version::HTTP_2,
        }
    }

    /// A client of its own (its own connections). On HTTP/2, `small_window`
    /// makes a client that stops reading stall the server at once.
    fn client(self, small_window: bool) -> Client {
        let builder = crate::harness::builder();
        let builder = match self {
            Way::Http11 | Way::Http10 => builder.http1_only(),
            Way::H2c if small_window => builder
                .http2_prior_knowledge()
                .http2_initial_stream_window_size(65_535)
                .http2_initial_connection_window_size(65_535),
            Way::H2c => builder.http2_prior_knowledge(),
        };
        builder.build().expect("reqwest client")
    }
}

impl Transport {
    fn gauge(self) -> String {
        let label = match self {
            Transport::Sse => "sse",
            Transport::Ndjson => "stream",
            Transport::LongPoll => "long-poll",
        };
        format!("herald_subscriptions{{transport=\"{label}\"}}")
    }
}

/// One event as a client sees it. `cursor` is what it would resume with:
/// the SSE `id:`, an NDJSON frame's `cursor` (several topics) or `id`.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Item {
    id: String,
    cursor: String,
    event: String,
    data: String,
}

impl Item {
    fn from_json(v: &Value) -> Item {
        let text = |field: &str| v[field].as_str().unwrap_or_default().to_owned();
        let id = text("id");
        Item {
            cursor: v["cursor"].as_str().unwrap_or(&id).to_owned(),
            id,
            event: text("event"),
            data: text("data"),
        }
    }
}

/// Publishes `data` to `topic`; returns the event a subscriber should see.
async fn send(server: &Server, topic: &str, data: &str) -> Item {
    let id = publish(server, topic, data).await;
    let (cursor, event, data) = (id.clone(), "message".into(), data.into());
    Item {
        id,
        cursor,
        event,
        data,
    }
}

/// Publishes each of `data` to `topic` in turn.
async fn send_all(server: &Server, topic: &str, data: &[&str]) -> Vec<Item> {
    let mut sent = Vec::with_capacity(data.len());
    for d in data {
        sent.push(send(server, topic, d).await);
    }
    sent
}

fn data(items: &[Item]) -> Vec<&str> {
    items.iter().map(|i| i.data.as_str()).collect()
}

/// A stream's events, parsed by third-party code (eventsource-stream for
/// SSE) or line by line (NDJSON); keep-alives are skipped.
struct Feed(BoxStream<'static, Item>);

impl Feed {
    fn new(transport: Transport, response: Response) -> Feed {
        let body = response.bytes_stream();
        Feed(match transport {
            Transport::Sse => body
                .eventsource()
                .map(|e| {
                    let e = e.expect("an SSE event");
                    Item {
                        cursor: e.id.clone(),
                        id: e.id,
                        event: e.event,
                        data: e.data,
                    }
                })
                .boxed(),
            Transport::Ndjson => {
                let mut lines = LineSplitter::new();
                body.flat_map(move |chunk| {
                    futures_util::stream::iter(lines.feed(&chunk.expect("an NDJSON chunk")))
                })
                .map(|line| Item::from_json(&serde_json::from_slice(&line).expect("JSON line")))
                .boxed()
            }
            Transport::LongPoll => unreachable!("a long poll is no stream"),
        })
    }

    async fn next(&mut self, what: &str) -> Item {
        within(what, self.0.next())
            .await
            .unwrap_or_else(|| panic!("the stream ended before {what}"))
    }

    async fn take(&mut self, n: usize, what: &str) -> Vec<Item> {
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            out.push(self.next(what).await);
        }
        out
    }

    /// Everything up to the end of the stream.
    async fn rest(self, what: &str) -> Vec<Item> {
        within(what, self.0.collect()).await
    }
}

/// A long poll's `200` answer.
#[derive(Debug)]
struct Answer {
    gap: bool,
    events: Vec<Item>,
    next: String,
}

/// A subscription as a client holds it: a stream it reads on, or (without
/// a feed) long polls, each from the cursor the previous answer gave.
struct Sub {
    feed: Option<Feed>,
    path: String,
    cursor: Option<String>,
}

/// Subscribe requests read so far by each stack.
async fn stacks(server: &Server) -> [f64; 2] {
    let direct = "herald_subscribe_requests_total{stack=\"direct\"}";
    let hyper = "herald_subscribe_requests_total{stack=\"hyper\"}";
    [metric(server, direct).await, metric(server, hyper).await]
}

/// One combination: a server, a client for the way in, and the count of
/// subscribe requests made, checked against the stacks by [`Case::done`].
struct Case {
    way: Way,
    transport: Transport,
    server: Server,
    client: reqwest::Client,
    before: [f64; 2],
    requests: usize,
    _dir: Option<tempfile::TempDir>,
}

impl Case {
    async fn start(way: Way, transport: Transport, store: Store, flags: &[&str]) -> Case {
        let (server, dir) = match store {
            Store::Memory => (Server::start(flags), None),
            Store::File => {
                let dir = temp_dir();
                (Server::start_in(dir.path(), flags), Some(dir))
            }
        };
        Case {
            way,
            transport,
            before: stacks(&server).await,
            server,
            client: way.client(false),
            requests: 0,
            _dir: dir,
        }
    }

    /// A subscribe request of this case's way and transport; `path` may
    /// carry a query, `cursor` goes in `Last-Event-ID`.
    fn request(&mut self, on: &Client, path: &str, cursor: Option<&str>) -> RequestBuilder {
        self.requests += 1;
        let sep = if path.contains('?') { '&' } else { '?' };
        let (path, accept) = match self.transport {
            Transport::Sse => (path.to_owned(), "text/event-stream"),
            Transport::Ndjson => (path.to_owned(), "application/x-ndjson"),
            Transport::LongPoll => (format!("{path}{sep}transport=long-poll&timeout=30"), "*/*"),
        };
        let r = on
            .get(self.server.url(&path))
            .version(self.way.version())
            .header("accept", accept);
        match cursor {
            Some(cursor) => r.header("last-event-id", cursor),
            None => r,
        }
    }

    /// Opens a stream on `on`; checks its head and framing.
    async fn open_on(&mut self, on: &Client, path: &str, cursor: Option<&str>) -> Response {
        let (way, transport) = (self.way, self.transport);
        let r = within("stream head", self.request(on, path, cursor).send())
            .await
            .expect("stream request");
        assert_eq!(r.status(), 200, "{way:?} {transport:?} {path}");
        assert_eq!(r.version(), way.version(), "answered in its version");
        let header = |name: &str| r.headers().get(name).map(|v| v.to_str().unwrap());
        if transport == Transport::Sse {
            assert_eq!(header("content-type"), Some("text/event-stream"));
            assert_eq!(header("cache-control"), Some("no-cache"));
            assert_eq!(header("x-accel-buffering"), Some("no"));
        } else {
            assert_eq!(header("content-type"), Some("application/x-ndjson"));
        }
        assert_eq!(header("content-length"), None, "a stream has no length");
        let framing = match way {
            Way::Http11 => Some("chunked"),
            Way::Http10 | Way::H2c => None, // close-delimited; HTTP/2 frames
        };
        assert_eq!(header("transfer-encoding"), framing, "{way:?} framing");
        r
    }

    async fn open(&mut self, path: &str, cursor: Option<&str>) -> Response {
        let client = self.client.clone();
        self.open_on(&client, path, cursor).await
    }

    /// A long poll, to await or to spawn.
    fn long_poll(
        &mut self,
        path: &str,
        cursor: Option<&str>,
    ) -> impl Future<Output = Answer> + use<> {
        let client = self.client.clone();
        let (request, way) = (self.request(&client, path, cursor), self.way);
        async move {
            let r = request.send().await.expect("long poll");
            assert_eq!(r.version(), way.version(), "answered in its version");
            assert_eq!(r.status(), 200, "long poll answer");
            assert!(r.headers().contains_key("content-length"), "a whole answer");
            let v: Value = r.json().await.expect("long poll JSON");
            let events = v["events"].as_array().expect("events");
            Answer {
                gap: v["gap"].as_bool().expect("gap"),
                events: events.iter().map(Item::from_json).collect(),
                next: v["next"].as_str().expect("next").to_owned(),
            }
        }
    }

    /// Subscribes from `cursor` (the default, `now`, when `None`). A stream
    /// is open on return; long polls are made as events are taken.
    async fn subscribe(&mut self, path: &str, cursor: Option<&str>) -> Sub {
        let (path, cursor) = (path.to_owned(), cursor.map(str::to_owned));
        let feed = match self.transport {
            Transport::LongPoll => None,
            t => Some(Feed::new(t, self.open(&path, cursor.as_deref()).await)),
        };
        Sub { feed, path, cursor }
    }

    /// The next `n` events: read on the stream, or one long poll's answer.
    async fn take(&mut self, sub: &mut Sub, n: usize) -> Vec<Item> {
        if let Some(feed) = &mut sub.feed {
            let got = feed.take(n, "events").await;
            sub.cursor = Some(got[n - 1].cursor.clone());
            return got;
        }
        let answer = self.long_poll(&sub.path, sub.cursor.as_deref()).await;
        assert!(!answer.gap, "{answer:?}");
        assert_eq!(answer.events.len(), n, "{answer:?}");
        sub.cursor = Some(answer.next);
        answer.events
    }

    /// Publishes `data` to `topic`; the subscription's next event is that
    /// one, alone (a long poll waits in the server for it).
    async fn next_published(&mut self, sub: &mut Sub, topic: &str, data: &str) -> Item {
        let (sent, got) = if sub.feed.is_none() {
            let poll = tokio::spawn(self.long_poll(&sub.path, sub.cursor.as_deref()));
            wait_for_metric(&self.server, &self.transport.gauge(), 1.0).await;
            let sent = send(&self.server, topic, data).await;
            let answer = within("a waiting long poll", poll).await.unwrap();
            assert!(!answer.gap);
            assert_eq!(answer.events.len(), 1, "{answer:?}");
            wait_for_metric(&self.server, &self.transport.gauge(), 0.0).await;
            sub.cursor = Some(answer.next);
            (sent, answer.events[0].clone())
        } else {
            let sent = send(&self.server, topic, data).await;
            (sent, self.take(sub, 1).await.remove(0))
        };
        assert_eq!((got.event.as_str(), got.data.as_str()), ("message", data));
        // On several topics an SSE id is the composite cursor.
        let composite = got
            .id
            .split(',')
            .any(|c| c == format!("{topic}={}", sent.id));
        assert!(got.id == sent.id || composite, "{got:?} is {sent:?}");
        got
    }

    /// The way in: every subscribe request of the case was read by the
    /// way's stack, and none by the other.
    async fn done(self) {
        let after = stacks(&self.server).await;
        let (way, requests) = (self.way, self.requests as f64);
        for (i, stack) in ["direct", "hyper"].into_iter().enumerate() {
            let want = if stack == way.stack() { requests } else { 0.0 };
            assert_eq!(
                after[i] - self.before[i],
                want,
                "{way:?}: subscribe requests read by the {stack} stack"
            );
        }
    }
}

/// Events published after the subscription started arrive in order, once.
async fn live(way: Way, transport: Transport, store: Store) {
    let mut case = Case::start(way, transport, store, &[]).await;
    send(&case.server, "live", "before").await;
    let mut sub = case.subscribe("/topics/live", None).await;
    case.next_published(&mut sub, "live", "e0").await;
    let sent = send_all(&case.server, "live", &["e1", "e2"]).await;
    assert_eq!(case.take(&mut sub, 2).await, sent);
    assert_eq!(sub.cursor.clone().unwrap(), sent[1].id);
    case.next_published(&mut sub, "live", "e3").await;
    case.done().await;
}

/// A client that reconnects with its cursor gets exactly what it missed.
async fn resume(way: Way, transport: Transport, store: Store) {
    let mut case = Case::start(way, transport, store, &[]).await;
    let path = "/topics/resume";
    let mut sub = case.subscribe(path, None).await;
    case.next_published(&mut sub, "resume", "e0").await;
    let e1 = case.next_published(&mut sub, "resume", "e1").await;
    let cursor = sub.cursor.clone().unwrap();
    assert_eq!(cursor, e1.id);
    drop(sub);
    let missed = send_all(&case.server, "resume", &["e2", "e3"]).await;
    let mut sub = case.subscribe(path, Some(&cursor)).await;
    assert_eq!(case.take(&mut sub, 2).await, missed);
    case.next_published(&mut sub, "resume", "e4").await;
    case.done().await;
}

/// A cursor too old or unknown: a gap signal, then the oldest retained on.
async fn gap(way: Way, transport: Transport, store: Store) {
    let mut case = Case::start(way, transport, store, &["--retention-events", "3"]).await;
    let sent = send_all(&case.server, "short", &["s0", "s1", "s2", "s3", "s4"]).await;
    let retained = &sent[2..];
    for cursor in [sent[0].id.as_str(), "junk"] {
        let path = format!("/topics/short?last-event-id={cursor}");
        if transport == Transport::LongPoll {
            let answer = case.long_poll(&path, None).await;
            assert!(answer.gap, "cursor {cursor}");
            assert_eq!(answer.events, retained);
            assert_eq!(answer.next, retained[2].id);
            continue;
        }
        let mut feed = Feed::new(transport, case.open(&path, None).await);
        let signal = feed.next("the gap signal").await;
        let gap = (
            signal.event.as_str(),
            signal.id.as_str(),
            signal.cursor.as_str(),
        );
        assert_eq!(gap, ("gap", "", ""), "a gap has no id: {signal:?}");
        let said: Value = serde_json::from_str(&signal.data).expect("gap data is JSON");
        assert_eq!(said["cursor"], cursor);
        assert_eq!(said["topic"], "short");
        assert_eq!(feed.take(3, "replay from the oldest").await, retained);
    }
    case.done().await;
}

/// `/subscribe` over two topics: one cursor restores both.
async fn multi_topic(way: Way, transport: Transport, store: Store) {
    let mut case = Case::start(way, transport, store, &[]).await;
    let path = "/subscribe?topic=ma&topic=mb";
    send(&case.server, "ma", "a1").await;
    send(&case.server, "mb", "b1").await;
    let mut sub = case.subscribe(path, Some("all")).await;
    let first = case.take(&mut sub, 2).await;
    let mut first = data(&first);
    first.sort();
    assert_eq!(first, ["a1", "b1"]);
    let cursor = sub.cursor.clone().unwrap();
    assert!(cursor.contains("ma=") && cursor.contains("mb="), "{cursor}");
    drop(sub);

    for (topic, d) in [("mb", "b2"), ("ma", "a2"), ("mb", "b3")] {
        send(&case.server, topic, d).await;
    }
    // This time the cursor comes in the query, as from a browser.
    let mut query = reqwest::Url::parse("http://x/").unwrap();
    query
        .query_pairs_mut()
        .append_pair("last-event-id", &cursor);
    let resumed = format!("{path}&{}", query.query().unwrap());
    // (Later long polls send the cursor of each answer as the header,
    // which wins over the query.)
    let mut sub = case.subscribe(&resumed, None).await;
    let missed = case.take(&mut sub, 3).await;
    let of_b: Vec<&str> = data(&missed)
        .into_iter()
        .filter(|d| d.starts_with('b'))
        .collect();
    assert_eq!(of_b, ["b2", "b3"], "order within a topic is kept");
    let mut missed = data(&missed);
    missed.sort();
    assert_eq!(
        missed,
        ["a2", "b2", "b3"],
        "nothing missed, nothing repeated"
    );
    case.next_published(&mut sub, "ma", "a3").await;
    case.done().await;
}

/// An idle stream carries keep-alives, and events after them.
async fn keep_alive(way: Way, transport: Transport, store: Store) {
    let mut case = Case::start(way, transport, store, &["--keepalive", "50ms"]).await;
    let mut body = case.open("/topics/idle", None).await.bytes_stream();
    let mut text = String::new();
    let mut read_until = async |done: &dyn Fn(&str) -> bool| {
        while !done(&text) {
            let chunk = within("the stream", body.next()).await.unwrap().unwrap();
            text.push_str(std::str::from_utf8(&chunk).unwrap());
        }
        text.clone()
    };
    if transport == Transport::Sse {
        let idle = read_until(&|t| t.matches(": keep-alive\n\n").count() >= 2).await;
        let comment = |l: &str| l.is_empty() || l.starts_with(':') || l.starts_with("retry:");
        assert!(
            idle.lines().all(comment),
            "only comments while idle: {idle:?}"
        );
        publish(&case.server, "idle", "wake").await;
        read_until(&|t| t.contains("\ndata: wake\n\n")).await;
    } else {
        let idle = read_until(&|t| t.len() >= 2).await;
        assert!(
            idle.bytes().all(|b| b == b'\n'),
            "only empty lines while idle: {idle:?}"
        );
        publish(&case.server, "idle", "wake").await;
        read_until(&|t| t.contains("\"data\":\"wake\"")).await;
    }
    case.done().await;
}

/// Large events, a small subscriber buffer: a client that stops reading is
/// cut off (its stream ends, with a prefix of the events, in order), and a
/// reader of the same topic that keeps up gets every event.
async fn slow_cut_off(way: Way, transport: Transport, store: Store) {
    // Many short lines: an SSE parser's work stays linear in the size.
    let payload = format!("{}\n", "x".repeat(4095)).repeat(64);
    // Enough events to fill what the kernel buffers for a socket nobody
    // reads (HTTP/2 flow control stops far sooner) and the client's own
    // read buffer, then to overflow the subscriber buffer, with room to spare.
    let events = (socket_buffers() + (1 << 20)) / payload.len() + 12;
    let retention = (2 * events).to_string();
    let flags = ["--subscriber-buffer", "4", "--retention-events", &retention];
    let mut case = Case::start(way, transport, store, &flags).await;
    let slow = case.open_on(&way.client(true), "/topics/flood", None).await;
    let mut fast = case.subscribe("/topics/flood", None).await;
    wait_for_metric(&case.server, &transport.gauge(), 2.0).await;
    let dropped = metric(&case.server, "herald_subscribers_dropped_total").await;

    let mut sent = Vec::with_capacity(events);
    for i in 0..events {
        let data = format!("{i}:{payload}");
        sent.push(case.next_published(&mut fast, "flood", &data).await.id);
    }

    let got = Feed::new(transport, slow)
        .rest("the slow stream's end")
        .await;
    let got: Vec<String> = got.into_iter().map(|i| i.id).collect();
    assert!(
        got.len() < events,
        "the slow one was cut off: {}",
        got.len()
    );
    assert_eq!(got, sent[..got.len()], "what it got is a prefix, in order");
    let dropped_now = metric(&case.server, "herald_subscribers_dropped_total").await;
    assert_eq!(dropped_now, dropped + 1.0, "the slow one alone was cut off");
    case.done().await;
}

/// What Linux may buffer for a loopback connection whose reader stopped:
/// the sender's socket grows up to `tcp_wmem`'s maximum, the receiver's
/// stays at `tcp_rmem`'s default while nothing reads it.
fn socket_buffers() -> usize {
    let field = |file: &str, n: usize| {
        std::fs::read_to_string(file)
            .ok()
            .and_then(|s| s.split_whitespace().nth(n)?.parse().ok())
            .unwrap_or(4 << 20)
    };
    field("/proc/sys/net/ipv4/tcp_wmem", 2) + field("/proc/sys/net/ipv4/tcp_rmem", 1)
}

/// A client that goes away takes its subscription with it.
async fn client_leaves(way: Way, transport: Transport, store: Store) {
    let mut case = Case::start(way, transport, store, &[]).await;
    let gauge = transport.gauge();
    if transport == Transport::LongPoll {
        let poll = tokio::spawn(case.long_poll("/topics/leave", None));
        wait_for_metric(&case.server, &gauge, 1.0).await;
        poll.abort();
    } else {
        let sub = case.subscribe("/topics/leave", None).await;
        wait_for_metric(&case.server, &gauge, 1.0).await;
        drop(sub);
    }
    wait_for_metric(&case.server, &gauge, 0.0).await;
    case.done().await;
}

/// Six tests for one scenario and transport: each way in, on each store.
macro_rules! every_way_and_store {
    ($scenario:ident, $transport:expr) => {
        every_way_and_store!(@one $scenario, $transport, http11_memory, Http11, Memory);
        every_way_and_store!(@one $scenario, $transport, http11_file, Http11, File);
        every_way_and_store!(@one $scenario, $transport, http10_memory, Http10, Memory);
        every_way_and_store!(@one $scenario, $transport, http10_file, Http10, File);
        every_way_and_store!(@one $scenario, $transport, h2c_memory, H2c, Memory);
        every_way_and_store!(@one $scenario, $transport, h2c_file, H2c, File);
    };
    (@one $scenario:ident, $transport:expr, $name:ident, $way:ident, $store:ident) => {
        #[tokio::test]
        async fn $name() {
            use crate::ways_in::{Store, Way, $scenario};
            $scenario(Way::$way, $transport, Store::$store).await;
        }
    };
}

/// The table: each scenario with the transports it applies to.
macro_rules! table {
    ($($scenario:ident: $($transport:ident = $variant:ident),+;)+) => {
        $(mod $scenario {
            $(mod $transport {
                every_way_and_store!($scenario, crate::ways_in::Transport::$variant);
            })+
        })+
    };
}

table! {
    live: sse = Sse, ndjson = Ndjson, long_poll = LongPoll;
    resume: sse = Sse, ndjson = Ndjson, long_poll = LongPoll;
    gap: sse = Sse, ndjson = Ndjson, long_poll = LongPoll;
    multi_topic: sse = Sse, ndjson = Ndjson, long_poll = LongPoll;
    keep_alive: sse = Sse, ndjson = Ndjson;
    slow_cut_off: sse = Sse, ndjson = Ndjson;
    client_leaves: sse = Sse, ndjson = Ndjson, long_poll = LongPoll;
}
