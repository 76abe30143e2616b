//! An async client for herald.
//!
//! - [`Client::publish`] and [`Client::publish_batch`] retry transient
//!   failures with the same automatic idempotency key, so a retry never
//!   publishes twice.
//! - [`Client::subscribe`] returns a [`Stream`](futures_util::Stream) of
//!   events over any transport that reconnects by itself, honours the
//!   server's `retry:`, resumes from the last event it yielded, reports gaps
//!   and never yields an event twice.
//! - [`Client::enqueue`], [`Client::wait`] and [`Client::cancel`] for tasks,
//!   and [`Worker`] to process them.
//!
//! ```no_run
//! # async fn demo() -> Result<(), herald_client::Error> {
//! use futures_util::StreamExt;
//! use herald_client::{Client, Cursor, Delivery, Transport};
//!
//! let client = Client::new("http://127.0.0.1:7171")?;
//! let mut events = client.subscribe(&["news"], Cursor::Now, Transport::Sse);
//! client.publish("news", "hello").await?;
//! if let Some(Ok(Delivery::Event(e))) = events.next().await {
//!     println!("{} {}", e.id, e.data);
//! }
//! # Ok(())
//! # }
//! ```

use std::time::Duration;

use reqwest::header::HeaderValue;
use serde::Deserialize;

mod error;
mod subscribe;
mod tasks;
mod worker;
mod worker_socket;

pub use error::Error;
pub use subscribe::{Connection, Cursor, Delivery, Subscription, Transport};
pub use tasks::{Backoff, Payload, Task, Update, Wait, WaitOutcome};
pub use worker::{Claimed, Failure, Progress, Worker};

/// An event as subscribers receive it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Event {
    pub id: String,
    pub topic: String,
    pub event: String,
    pub data: String,
    #[serde(default)]
    pub time: String,
}

/// The server's answer to a publish.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Receipt {
    pub id: String,
    pub topic: String,
    pub event: String,
    pub time: String,
    /// The publish was a retry the server had already stored.
    #[serde(skip)]
    pub replayed: bool,
}

/// One event of a batch publish.
#[derive(Debug, Clone, serde::Serialize)]
pub struct BatchEvent {
    pub topic: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub event: Option<String>,
    pub data: String,
}

/// How often and how patiently a request is retried.
const ATTEMPTS: u32 = 5;
const FIRST_BACKOFF: Duration = Duration::from_millis(100);

/// A handle on one herald server; cheap to clone.
#[derive(Debug, Clone)]
pub struct Client {
    http: reqwest::Client,
    base: String,
    /// `Bearer TOKEN`, sent on every request: reqwest's requests get it as
    /// a default header, WebSocket handshakes from [`Client::ws_request`].
    authorization: Option<HeaderValue>,
}

/// Makes `ring` the process's rustls provider, unless the program chose
/// one already: reqwest is built without a provider of its own, and
/// refuses to build a client until there is one.
pub fn use_ring() {
    // An error only says a provider is installed already.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

impl Client {
    /// A client for the server at `base` (`http://host:port`).
    pub fn new(base: impl Into<String>) -> Result<Client, Error> {
        let base = base.into().trim_end_matches('/').to_owned();
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(Error::Url(format!(
                "{base:?} must start with http:// or https://"
            )));
        }
        // Checked now: a URL that does not parse fails every request, and a
        // subscription would retry it for ever.
        reqwest::Url::parse(&base).map_err(|e| Error::Url(format!("{base:?}: {e}")))?;
        use_ring();
        Ok(Client {
            http: http_client(&base, None)?,
            base,
            authorization: None,
        })
    }

    /// The same client, sending `Authorization: Bearer TOKEN` with every
    /// request (publish, subscribe by any transport, tasks, workers).
    ///
    /// ```no_run
    /// # fn demo() -> Result<(), herald_client::Error> {
    /// let client = herald_client::Client::new("http://127.0.0.1:7171")?
    ///     .with_token("eyJhbGciOi…")?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn with_token(self, token: &str) -> Result<Client, Error> {
        let mut value = HeaderValue::try_from(format!("Bearer {}", token.trim()))
            .map_err(|_| Error::Token("it has characters a header cannot carry".into()))?;
        // Kept out of reqwest's and tungstenite's debug output.
        value.set_sensitive(true);
        Ok(Client {
            http: http_client(&self.base, Some(&value))?,
            authorization: Some(value),
            ..self
        })
    }

    /// A WebSocket handshake request for `url` (`ws://…`), with the token.
    pub(crate) fn ws_request(
        &self,
        url: &str,
    ) -> Result<tokio_tungstenite::tungstenite::handshake::client::Request, Error> {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        let mut request = url
            .into_client_request()
            .map_err(|e| Error::Url(e.to_string()))?;
        if let Some(value) = &self.authorization {
            request
                .headers_mut()
                .insert(reqwest::header::AUTHORIZATION, value.clone());
        }
        Ok(request)
    }

    pub(crate) fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    pub(crate) fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// The server's base URL.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// Publishes `data` to `topic` with the type `message`.
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), herald_client::Error> {
    /// let client = herald_client::Client::new("http://127.0.0.1:7171")?;
    /// let receipt = client.publish("news", "hello").await?;
    /// println!("stored as {}", receipt.id);
    /// # Ok(())
    /// # }
    /// ```
    pub async fn publish(&self, topic: &str, data: impl Into<String>) -> Result<Receipt, Error> {
        self.publish_as(topic, None, data).await
    }

    /// Publishes with an event type. Transient failures are retried with the
    /// same idempotency key, so the event is stored at most once.
    pub async fn publish_as(
        &self,
        topic: &str,
        event: Option<&str>,
        data: impl Into<String>,
    ) -> Result<Receipt, Error> {
        let key = uuid::Uuid::new_v4().to_string();
        self.publish_with_key(topic, event, data, &key).await
    }

    /// [`Client::publish_as`] under the caller's idempotency key: the
    /// server stores one event per key, so publishing again with the same
    /// key (a script run twice, say) returns the first receipt with
    /// [`Receipt::replayed`] set instead of storing a second event.
    pub async fn publish_with_key(
        &self,
        topic: &str,
        event: Option<&str>,
        data: impl Into<String>,
        key: &str,
    ) -> Result<Receipt, Error> {
        let data = data.into();
        let mut url = self.url(&format!("/topics/{}", encode(topic)));
        if let Some(event) = event {
            url.push_str(&format!("?event={}", encode(event)));
        }
        retry(|| async {
            let response = self
                .http
                .post(&url)
                .header("idempotency-key", key)
                .body(data.clone())
                .send()
                .await?;
            receipt(response).await
        })
        .await
    }

    /// Publishes several events at once, all or nothing, retried like
    /// [`Client::publish_as`].
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), herald_client::Error> {
    /// use herald_client::{BatchEvent, Client};
    /// let client = Client::new("http://127.0.0.1:7171")?;
    /// let events = [
    ///     BatchEvent { topic: "a".into(), event: None, data: "1".into() },
    ///     BatchEvent { topic: "b".into(), event: Some("note".into()), data: "2".into() },
    /// ];
    /// let receipts = client.publish_batch(&events).await?;
    /// assert_eq!(receipts.len(), 2);
    /// # Ok(())
    /// # }
    /// ```
    pub async fn publish_batch(&self, events: &[BatchEvent]) -> Result<Vec<Receipt>, Error> {
        let mut body = String::new();
        for e in events {
            body.push_str(&serde_json::to_string(e).map_err(|e| Error::Decode(e.to_string()))?);
            body.push('\n');
        }
        let key = uuid::Uuid::new_v4().to_string();
        retry(|| async {
            let response = self
                .http
                .post(self.url("/publish"))
                .header("idempotency-key", &key)
                .header("content-type", "application/x-ndjson")
                .body(body.clone())
                .send()
                .await?;
            if response.status().as_u16() != 201 {
                return Err(error::from_response(response).await);
            }
            #[derive(Deserialize)]
            struct Batch {
                events: Vec<Receipt>,
            }
            Ok(response.json::<Batch>().await?.events)
        })
        .await
    }
}

/// The HTTP client, with `authorization` as a header of every request.
fn http_client(base: &str, authorization: Option<&HeaderValue>) -> Result<reqwest::Client, Error> {
    let mut headers = reqwest::header::HeaderMap::new();
    if let Some(value) = authorization {
        headers.insert(reqwest::header::AUTHORIZATION, value.clone());
    }
    let mut http = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        .default_headers(headers);
    if base.starts_with("http://") {
        // Plain HTTP needs no trusted roots: loading the system's costs
        // tens of milliseconds, and fails where there are none.
        http = http.tls_certs_only(Vec::new());
    }
    http.build().map_err(|e| Error::Transport(e.to_string()))
}

async fn receipt(response: reqwest::Response) -> Result<Receipt, Error> {
    if response.status().as_u16() != 201 {
        return Err(error::from_response(response).await);
    }
    let replayed = response.headers().contains_key("idempotent-replayed");
    let mut r: Receipt = response.json().await?;
    r.replayed = replayed;
    Ok(r)
}

/// `text` as one URL path segment or query value: all but `A–Z a–z 0–9 - . _
/// ~ :` percent-encoded, so a `?`, `#`, `/` or `&` in a name reaches the
/// server (which refuses it) instead of silently changing the request.
pub(crate) fn encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b':') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Runs `attempt` until it succeeds, fails for good, or the attempts are
/// spent, backing off between transient failures.
pub(crate) async fn retry<T, F, Fut>(mut attempt: F) -> Result<T, Error>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, Error>>,
{
    let mut delay = FIRST_BACKOFF;
    let mut tries = 0;
    loop {
        tries += 1;
        match attempt().await {
            Err(e) if e.is_transient() && tries < ATTEMPTS => {
                tracing::debug!(error = %e, "retrying");
                tokio::time::sleep(delay).await;
                delay *= 2;
            }
            other => return other,
        }
    }
}
