//! `herald sub TOPIC… [--via …] [--since …]`: prints events as they come,
//! and on stderr each connection lost or refused, with its cause.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::bail;
use futures_util::StreamExt;
use herald_client::{Client, Connection, Cursor, Delivery, Transport};
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::Output;
use crate::cli::{SubscribeArgs, Via};

pub async fn run(client: &Client, out: Output, args: SubscribeArgs) -> anyhow::Result<ExitCode> {
    let transport = match args.via {
        Via::Sse => Transport::Sse,
        Via::Ws => Transport::WebSocket,
        Via::Stream => Transport::Stream,
        Via::LongPoll => Transport::LongPoll,
        Via::Poll => Transport::Poll {
            interval: Duration::from_secs(1),
        },
    };
    let cursor = match args.since.as_str() {
        "now" => Cursor::Now,
        "all" => Cursor::All,
        other => Cursor::After(other.to_owned()),
    };
    let give_up_after = args
        .give_up_after
        .as_deref()
        .map(|d| crate::cli::duration("give-up-after", d))
        .transpose()?;
    let topics: Vec<&str> = args.topics.iter().map(String::as_str).collect();
    let (tx, mut connections) = mpsc::unbounded_channel();
    let mut events = client.subscribe_watched(&topics, cursor, transport, move |c| {
        // The receiver outlives the stream: a send cannot fail while it matters.
        let _ = tx.send(c);
    });
    let mut link = Link::new(give_up_after);
    let mut seen = 0_u64;
    // One listener for the whole run: a fresh `ctrl_c()` per event would
    // miss a Ctrl-C that comes while an event is being printed.
    let interrupted = tokio::signal::ctrl_c();
    tokio::pin!(interrupted);
    loop {
        if args.count.is_some_and(|n| seen >= n) {
            return Ok(ExitCode::SUCCESS);
        }
        let deadline = link.deadline();
        let next = tokio::select! {
            next = events.next() => next,
            Some(c) = connections.recv() => {
                link.saw(client.base(), c);
                continue;
            }
            () = sleep_until(deadline) => return link.give_up(),
            _ = &mut interrupted => return Ok(ExitCode::SUCCESS),
        };
        match next {
            None => return Ok(ExitCode::SUCCESS),
            Some(Err(e)) => return Err(e.into()),
            Some(Ok(Delivery::Gap { topic, cursor })) => {
                if out.json {
                    println!(
                        "{}",
                        serde_json::json!({ "gap": true, "topic": topic, "cursor": cursor })
                    );
                } else {
                    eprintln!(
                        "herald: some events of {topic} were missed (cursor {cursor:?} is older than its history)"
                    );
                }
            }
            Some(Ok(Delivery::Event(e))) => {
                seen += 1;
                if out.json {
                    let v = serde_json::json!({
                        "id": e.id, "topic": e.topic, "event": e.event, "data": e.data,
                        // SSE frames carry no time.
                        "time": (!e.time.is_empty()).then_some(&e.time),
                    });
                    println!("{v}");
                } else if e.event == "message" {
                    println!("{} {} {}", e.topic, e.id, e.data);
                } else {
                    println!("{} {} [{}] {}", e.topic, e.id, e.event, e.data);
                }
            }
        }
    }
}

/// Sleeps until `deadline`, or for ever without one.
async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// The state of the connection as the user sees it: reported on stderr,
/// and given up on after too long without one.
struct Link {
    /// `--give-up-after`, if given.
    give_up_after: Option<Duration>,
    /// A connection was open at least once.
    ever_up: bool,
    /// Since when there has been no connection; `None` while one is open.
    down_since: Option<Instant>,
    /// Why the last try failed, for the message that gives up.
    last_error: Option<String>,
}

/// How long a subscription that never connected keeps trying by default.
const FIRST_CONNECTION_PATIENCE: Duration = Duration::from_secs(30);

impl Link {
    fn new(give_up_after: Option<Duration>) -> Link {
        Link {
            give_up_after,
            ever_up: false,
            down_since: Some(Instant::now()),
            last_error: None,
        }
    }

    /// When to give up, if the connection stays down.
    fn deadline(&self) -> Option<Instant> {
        let patience = match (self.give_up_after, self.ever_up) {
            (Some(d), _) => d,
            (None, false) => FIRST_CONNECTION_PATIENCE,
            (None, true) => return None,
        };
        self.down_since.map(|since| since + patience)
    }

    /// Reports what happened to the connection on stderr.
    fn saw(&mut self, url: &str, what: Connection) {
        match what {
            Connection::Up => {
                if self.ever_up || self.last_error.is_some() {
                    eprintln!("herald: connected to {url}");
                }
                self.ever_up = true;
                self.down_since = None;
                self.last_error = None;
            }
            Connection::Failed { error, retry_in } => {
                let doing = if self.down_since.is_none() {
                    "connection lost"
                } else {
                    "cannot connect"
                };
                eprintln!(
                    "herald: {doing}: {error}; retrying in {}",
                    humantime::format_duration(retry_in)
                );
                self.down_since.get_or_insert_with(Instant::now);
                self.last_error = Some(error.to_string());
            }
            Connection::Ended { retry_in } => {
                eprintln!(
                    "herald: the server ended the stream; reconnecting in {}",
                    humantime::format_duration(retry_in)
                );
                self.down_since.get_or_insert_with(Instant::now);
            }
        }
    }

    /// The error that ends the run when the deadline passed.
    fn give_up(&self) -> anyhow::Result<ExitCode> {
        let waited = self
            .down_since
            .map(|since| humantime::format_duration(round(since.elapsed())).to_string())
            .unwrap_or_default();
        let why = self.last_error.as_deref().unwrap_or("no answer");
        if self.ever_up {
            bail!("gave up after {waited} without a connection; last: {why}");
        }
        bail!("gave up: could not connect in {waited}; last: {why}")
    }
}

/// A duration to the tenth of a second, for messages.
fn round(d: Duration) -> Duration {
    Duration::from_millis(u64::try_from(d.as_millis() / 100 * 100).unwrap_or(u64::MAX))
}
