//! `herald sub TOPIC… [--via …] [--since …]`: prints events as they come.

use std::process::ExitCode;
use std::time::Duration;

use futures_util::StreamExt;
use herald_client::{Client, Cursor, Delivery, Transport};

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
    let topics: Vec<&str> = args.topics.iter().map(String::as_str).collect();
    let mut events = client.subscribe(&topics, cursor, transport);
    let mut seen = 0_u64;
    // One listener for the whole run: a fresh `ctrl_c()` per event would
    // miss a Ctrl-C that comes while an event is being printed.
    let interrupted = tokio::signal::ctrl_c();
    tokio::pin!(interrupted);
    loop {
        if args.count.is_some_and(|n| seen >= n) {
            return Ok(ExitCode::SUCCESS);
        }
        let next = tokio::select! {
            next = events.next() => next,
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
