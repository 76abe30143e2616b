//! Subscriptions that survive disconnects.
//!
//! A background task holds the connection and feeds a bounded channel; the
//! [`Subscription`] stream reads it. When the connection ends — the server
//! restarted, cut a slow subscriber off, or a network blip — the task waits
//! (the server's `retry:` after a clean end, a growing backoff after errors)
//! and reconnects with the cursor of the last event it handed out. Dropping
//! the stream stops the task.

use std::collections::HashMap;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::{Stream, StreamExt};
use herald_protocol::ndjson::LineSplitter;
use herald_protocol::sse::{Decoder, Frame};
use serde::Deserialize;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;

use crate::error::{self, Error};
use crate::{Client, Event, encode};

/// How to receive events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Sse,
    WebSocket,
    /// NDJSON over one long HTTP response.
    Stream,
    LongPoll,
    /// Short polls, `interval` apart while nothing is new.
    Poll {
        interval: Duration,
    },
}

/// Where a subscription starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cursor {
    /// Only events published from now on.
    Now,
    /// Everything retained.
    All,
    /// After this cursor (an event id, or a cursor over several topics).
    After(String),
}

impl Cursor {
    fn as_str(&self) -> &str {
        match self {
            Cursor::Now => "now",
            Cursor::All => "all",
            Cursor::After(c) => c,
        }
    }
}

/// What a subscription yields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivery {
    Event(Event),
    /// History was missed in `topic` (the cursor was unknown or too old);
    /// events continue from the oldest retained one.
    Gap {
        topic: String,
        cursor: String,
    },
}

/// What happened to a subscription's connection, told to the callback of
/// [`Client::subscribe_watched`]: the stream itself yields only deliveries
/// and the error that ends it.
#[derive(Debug)]
pub enum Connection {
    /// A connection is open: the first, or one after a reconnect.
    Up,
    /// Connecting failed, or an open connection broke; the next try is in
    /// `retry_in`.
    Failed { error: Error, retry_in: Duration },
    /// The server ended the stream cleanly; the next try is in `retry_in`.
    Ended { retry_in: Duration },
}

/// The callback of [`Client::subscribe_watched`]. In a `Mutex` only to be
/// `Sync` (the task's futures borrow their state across `.await`s): it is
/// reached by `get_mut`, never locked.
type Watcher = std::sync::Mutex<Box<dyn FnMut(Connection) + Send>>;

/// A stream of deliveries; reconnects by itself until dropped.
#[derive(Debug)]
pub struct Subscription {
    rx: mpsc::Receiver<Result<Delivery, Error>>,
    task: tokio::task::JoinHandle<()>,
}

impl Stream for Subscription {
    type Item = Result<Delivery, Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.rx.poll_recv(cx)
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Client {
    /// Follows `topics` from `cursor` by `transport`. The stream ends only
    /// when the server refuses the subscription for good (a `4xx`), after
    /// yielding that error.
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), herald_client::Error> {
    /// use futures_util::StreamExt;
    /// use herald_client::{Client, Cursor, Delivery, Transport};
    /// let client = Client::new("http://127.0.0.1:7171")?;
    /// let mut events = client.subscribe(&["news", "sport"], Cursor::All, Transport::WebSocket);
    /// while let Some(item) = events.next().await {
    ///     match item? {
    ///         Delivery::Event(e) => println!("{} {}: {}", e.topic, e.id, e.data),
    ///         Delivery::Gap { topic, .. } => eprintln!("missed some of {topic}"),
    ///     }
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub fn subscribe(&self, topics: &[&str], cursor: Cursor, transport: Transport) -> Subscription {
        self.follow(topics, cursor, transport, None)
    }

    /// [`Client::subscribe`], telling `watch` of every connection made, lost
    /// or refused — for a caller that shows why no events come (the stream
    /// alone retries quietly).
    ///
    /// ```no_run
    /// # fn demo() -> Result<(), herald_client::Error> {
    /// use herald_client::{Client, Connection, Cursor, Transport};
    /// let client = Client::new("http://127.0.0.1:7171")?;
    /// let events = client.subscribe_watched(&["news"], Cursor::Now, Transport::Sse, |c| {
    ///     if let Connection::Failed { error, retry_in } = c {
    ///         eprintln!("{error}; retrying in {retry_in:?}");
    ///     }
    /// });
    /// # Ok(())
    /// # }
    /// ```
    pub fn subscribe_watched(
        &self,
        topics: &[&str],
        cursor: Cursor,
        transport: Transport,
        watch: impl FnMut(Connection) + Send + 'static,
    ) -> Subscription {
        let watcher = std::sync::Mutex::new(Box::new(watch) as Box<dyn FnMut(Connection) + Send>);
        self.follow(topics, cursor, transport, Some(watcher))
    }

    fn follow(
        &self,
        topics: &[&str],
        cursor: Cursor,
        transport: Transport,
        watcher: Option<Watcher>,
    ) -> Subscription {
        let (tx, rx) = mpsc::channel(256);
        let state = Follow {
            client: self.clone(),
            topics: topics.iter().map(|t| (*t).to_owned()).collect(),
            cursor: cursor.as_str().to_owned(),
            last: HashMap::new(),
            retry: Duration::from_secs(3),
            tx,
            watcher,
            up: false,
        };
        let task = tokio::spawn(state.run(transport));
        Subscription { rx, task }
    }
}

/// Why one connection ended.
enum Ended {
    /// Cleanly: reconnect after the server's `retry`.
    Clean,
    /// By a failure: back off.
    Failed(Error),
    /// The caller is gone, or the server refused for good.
    Stop,
}

struct Follow {
    client: Client,
    topics: Vec<String>,
    /// The cursor to resume from: what the server handed out last.
    cursor: String,
    /// Last id yielded per topic: a repeat is dropped.
    last: HashMap<String, String>,
    retry: Duration,
    tx: mpsc::Sender<Result<Delivery, Error>>,
    /// Told of connections made and lost, if the caller asked.
    watcher: Option<Watcher>,
    /// A connection is open (the watcher was told [`Connection::Up`]).
    up: bool,
}

const MAX_BACKOFF: Duration = Duration::from_secs(10);

impl Follow {
    async fn run(mut self, transport: Transport) {
        let mut backoff = Duration::from_millis(100);
        loop {
            let ended = match self.resolve_now().await {
                Some(ended) => ended,
                None => match transport {
                    Transport::Sse => self.sse().await,
                    Transport::WebSocket => self.websocket().await,
                    Transport::Stream => self.ndjson().await,
                    Transport::LongPoll => self.poll(true, Duration::ZERO).await,
                    Transport::Poll { interval } => self.poll(false, interval).await,
                },
            };
            let wait = match ended {
                Ended::Stop => return,
                Ended::Clean => {
                    backoff = Duration::from_millis(100);
                    self.tell(Connection::Ended {
                        retry_in: self.retry,
                    });
                    self.retry
                }
                Ended::Failed(error) => {
                    tracing::debug!(%error, "subscription connection failed; reconnecting");
                    // A failed attempt backs off from 100 ms, doubling: a
                    // restart is picked up fast, an outage is not hammered.
                    // The server's `retry` governs reconnects after a clean end.
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    self.tell(Connection::Failed {
                        error,
                        retry_in: backoff,
                    });
                    backoff
                }
            };
            self.up = false;
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                () = self.tx.closed() => return,
            }
        }
    }

    /// Tells the watcher, if there is one.
    fn tell(&mut self, what: Connection) {
        if let Some(watcher) = self.watcher.as_mut() {
            // A callback that panicked poisoned it; calling it again is fine.
            let watch = watcher.get_mut().unwrap_or_else(|p| p.into_inner());
            watch(what);
        }
    }

    /// A connection is open: tells the watcher once per connection.
    fn connected(&mut self) {
        if !self.up {
            self.up = true;
            self.tell(Connection::Up);
        }
    }

    /// Turns a `now` cursor into the position it stands for (a short poll
    /// from `now` answers it in `Herald-Cursor`) before connecting, so that
    /// a connection lost before the first event resumes from there, not
    /// from a later `now` that would skip what was published in between.
    /// `Some` when that did not work out.
    async fn resolve_now(&mut self) -> Option<Ended> {
        if self.cursor != "now" {
            return None;
        }
        let response = match self.open("application/json", Some("poll")).await {
            Ok(r) => r,
            Err(e) => return Some(Ended::Failed(e)),
        };
        if !matches!(response.status().as_u16(), 200 | 204) {
            return Some(self.refused(response).await);
        }
        if let Some(c) = response
            .headers()
            .get("herald-cursor")
            .and_then(|v| v.to_str().ok())
        {
            self.cursor = c.to_owned();
        }
        None
    }

    fn path(&self) -> String {
        match self.topics.as_slice() {
            [one] => format!("/topics/{}", encode(one)),
            many => {
                let q: Vec<String> = many
                    .iter()
                    .map(|t| format!("topic={}", encode(t)))
                    .collect();
                format!("/subscribe?{}", q.join("&"))
            }
        }
    }

    fn multi(&self) -> bool {
        self.topics.len() > 1
    }

    /// Hands an event to the caller unless it is a repeat. `false`: the
    /// caller is gone.
    async fn deliver(&mut self, event: Event, cursor: Option<String>) -> bool {
        if self.last.get(&event.topic) == Some(&event.id) {
            return true;
        }
        self.last.insert(event.topic.clone(), event.id.clone());
        self.cursor = cursor.unwrap_or_else(|| event.id.clone());
        self.tx.send(Ok(Delivery::Event(event))).await.is_ok()
    }

    async fn gap(&mut self, data: &str) -> bool {
        #[derive(Deserialize)]
        struct Gap {
            #[serde(default)]
            topic: String,
            #[serde(default)]
            cursor: String,
        }
        let gap: Gap = serde_json::from_str(data).unwrap_or(Gap {
            topic: String::new(),
            cursor: String::new(),
        });
        self.tx
            .send(Ok(Delivery::Gap {
                topic: gap.topic,
                cursor: gap.cursor,
            }))
            .await
            .is_ok()
    }

    /// A poll answer's gap: it names no topic, so the gap names one only
    /// when there is just one.
    async fn poll_gap(&mut self) -> bool {
        let topic = match self.topics.as_slice() {
            [one] => one.clone(),
            _ => String::new(),
        };
        let cursor = self.cursor.clone();
        self.tx
            .send(Ok(Delivery::Gap { topic, cursor }))
            .await
            .is_ok()
    }

    /// A refusal for good ends the subscription after telling the caller.
    async fn refused(&mut self, response: reqwest::Response) -> Ended {
        let status = response.status().as_u16();
        let e = error::from_response(response).await;
        if for_good(status) {
            let _ = self.tx.send(Err(e)).await;
            Ended::Stop
        } else {
            Ended::Failed(e)
        }
    }

    async fn open(
        &self,
        accept: &str,
        transport: Option<&str>,
    ) -> Result<reqwest::Response, Error> {
        let mut url = self.client.url(&self.path());
        if let Some(t) = transport {
            url.push(if url.contains('?') { '&' } else { '?' });
            url.push_str("transport=");
            url.push_str(t);
        }
        Ok(self
            .client
            .http()
            .get(url)
            .header("accept", accept)
            .header("last-event-id", &self.cursor)
            .send()
            .await?)
    }

    async fn sse(&mut self) -> Ended {
        let response = match self.open("text/event-stream", None).await {
            Ok(r) => r,
            Err(e) => return Ended::Failed(e),
        };
        if response.status().as_u16() != 200 {
            return self.refused(response).await;
        }
        self.connected();
        let mut body = response.bytes_stream();
        let mut decoder = Decoder::new();
        while let Some(chunk) = body.next().await {
            let chunk = match chunk {
                Ok(c) => c,
                Err(e) => return Ended::Failed(e.into()),
            };
            for frame in decoder.feed(&chunk) {
                let alive = match frame {
                    Frame::Retry(ms) => {
                        self.retry = Duration::from_millis(ms);
                        true
                    }
                    Frame::Id(cursor) => {
                        self.cursor = cursor;
                        true
                    }
                    Frame::Event { event, data, .. } if event == "gap" => self.gap(&data).await,
                    Frame::Event { id, event, data } => {
                        let id = id.unwrap_or_default();
                        let (topic, own_id) = self.which(&id);
                        let e = Event {
                            id: own_id,
                            topic,
                            event,
                            data,
                            time: String::new(),
                        };
                        self.deliver(e, Some(id)).await
                    }
                };
                if !alive {
                    return Ended::Stop;
                }
            }
        }
        Ended::Clean
    }

    /// An SSE id names the event's topic and id: directly for one topic; for
    /// several, the topic whose position moved in the composite cursor.
    fn which(&self, id: &str) -> (String, String) {
        if !self.multi() {
            return (self.topics[0].clone(), id.to_owned());
        }
        let before = positions(&self.cursor);
        positions(id)
            .into_iter()
            .find(|(t, v)| before.get(t) != Some(v))
            .unwrap_or_default()
    }

    async fn websocket(&mut self) -> Ended {
        let url = self.client.url(&self.path()).replacen("http", "ws", 1);
        // A URL that cannot be made now never will be: that ends it.
        let mut request = match self.client.ws_request(&url) {
            Ok(r) => r,
            Err(e) => {
                let _ = self.tx.send(Err(e)).await;
                return Ended::Stop;
            }
        };
        if let Ok(v) = self.cursor.parse() {
            request.headers_mut().insert("last-event-id", v);
        }
        let (mut socket, _) = match tokio_tungstenite::connect_async(request).await {
            Ok(s) => s,
            Err(tokio_tungstenite::tungstenite::Error::Http(r))
                if for_good(r.status().as_u16()) =>
            {
                let status = r.status().as_u16();
                let body =
                    String::from_utf8_lossy(r.body().as_deref().unwrap_or_default()).into_owned();
                let _ = self.tx.send(Err(error::from_body(status, body))).await;
                return Ended::Stop;
            }
            // A URL the WebSocket client cannot use (`wss://` without its
            // TLS) never will be: that ends it too.
            Err(tokio_tungstenite::tungstenite::Error::Url(e)) => {
                let _ = self.tx.send(Err(Error::Url(e.to_string()))).await;
                return Ended::Stop;
            }
            Err(e) => return Ended::Failed(error::transport(&e)),
        };
        self.connected();
        while let Some(message) = socket.next().await {
            let alive = match message {
                Ok(Message::Text(text)) => self.json_frame(text.as_bytes()).await,
                Ok(Message::Close(_)) => break,
                Ok(_) => true,
                Err(e) => return Ended::Failed(error::transport(&e)),
            };
            if !alive {
                let _ = socket.close(None).await;
                return Ended::Stop;
            }
        }
        Ended::Clean
    }

    async fn ndjson(&mut self) -> Ended {
        let response = match self.open("application/x-ndjson", None).await {
            Ok(r) => r,
            Err(e) => return Ended::Failed(e),
        };
        if response.status().as_u16() != 200 {
            return self.refused(response).await;
        }
        self.connected();
        let mut body = response.bytes_stream();
        let mut lines = LineSplitter::new();
        while let Some(chunk) = body.next().await {
            let chunk = match chunk {
                Ok(c) => c,
                Err(e) => return Ended::Failed(e.into()),
            };
            for line in lines.feed(&chunk) {
                if !self.json_frame(&line).await {
                    return Ended::Stop;
                }
            }
        }
        Ended::Clean
    }

    /// One JSON frame of WebSocket or NDJSON.
    async fn json_frame(&mut self, bytes: &[u8]) -> bool {
        #[derive(Deserialize)]
        struct Frame {
            #[serde(default)]
            id: Option<String>,
            topic: String,
            event: String,
            data: String,
            #[serde(default)]
            time: Option<String>,
            #[serde(default)]
            cursor: Option<String>,
        }
        let Ok(f) = serde_json::from_slice::<Frame>(bytes) else {
            tracing::warn!("skipping a frame that is not an event");
            return true;
        };
        match f.id {
            None if f.event == "gap" => self.gap(&f.data).await,
            None => true,
            Some(id) => {
                let e = Event {
                    id,
                    topic: f.topic,
                    event: f.event,
                    data: f.data,
                    time: f.time.unwrap_or_default(),
                };
                self.deliver(e, f.cursor).await
            }
        }
    }

    async fn poll(&mut self, long: bool, interval: Duration) -> Ended {
        loop {
            let transport = if long { "long-poll" } else { "poll" };
            let response = match self.open("application/json", Some(transport)).await {
                Ok(r) => r,
                Err(e) => return Ended::Failed(e),
            };
            if matches!(response.status().as_u16(), 200 | 204) {
                self.connected();
            }
            match response.status().as_u16() {
                200 => {
                    #[derive(Deserialize)]
                    struct Answer {
                        events: Vec<Event>,
                        next: String,
                        #[serde(default)]
                        gap: bool,
                    }
                    let answer: Answer = match response.json().await {
                        Ok(a) => a,
                        Err(e) => return Ended::Failed(e.into()),
                    };
                    if answer.gap && !self.poll_gap().await {
                        return Ended::Stop;
                    }
                    for e in answer.events {
                        if !self.deliver(e, None).await {
                            return Ended::Stop;
                        }
                    }
                    self.cursor = answer.next;
                }
                204 => {
                    // History was missed even though nothing is left of it.
                    let gap = response
                        .headers()
                        .get("herald-gap")
                        .is_some_and(|v| v == "true");
                    if gap && !self.poll_gap().await {
                        return Ended::Stop;
                    }
                    if let Some(c) = response
                        .headers()
                        .get("herald-cursor")
                        .and_then(|v| v.to_str().ok())
                    {
                        self.cursor = c.to_owned();
                    }
                    if !long {
                        tokio::select! {
                            () = tokio::time::sleep(interval) => {}
                            () = self.tx.closed() => return Ended::Stop,
                        }
                    }
                }
                _ => return self.refused(response).await,
            }
        }
    }
}

/// Whether a status refuses a subscription for good: a `4xx` other than
/// `408` and `429`.
fn for_good(status: u16) -> bool {
    (400..500).contains(&status) && status != 408 && status != 429
}

/// The positions of a composite cursor (`topic=id,…`).
fn positions(cursor: &str) -> HashMap<String, String> {
    cursor
        .split(',')
        .filter_map(|pair| pair.split_once('='))
        .map(|(t, id)| (t.to_owned(), id.to_owned()))
        .collect()
}
