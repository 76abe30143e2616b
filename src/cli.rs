//! Command-line flags (and their `HERALD_*` environment twins), checked once
//! into a [`ServeConfig`] before anything starts.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand};
use herald_core::{HubConfig, Retention};
use herald_server::ServerConfig;

/// herald: a server-push hub — short poll, long poll, HTTP streaming,
/// Server-Sent Events and WebSocket over one event model.
#[derive(Debug, Parser)]
#[command(name = "herald", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the server.
    ///
    /// Example: herald serve --listen 0.0.0.0:7171 --retention-events 10000 --keepalive 20s
    Serve(ServeArgs),
}

/// Flags of `herald serve`. Durations are written like `500ms`, `15s`, `2h`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to listen on (port 0 picks a free port).
    #[arg(long, env = "HERALD_LISTEN", default_value = "127.0.0.1:7171")]
    pub listen: SocketAddr,
    /// Where events are kept: `file:DIR` (embedded, durable; the database is
    /// DIR/herald.db) or `memory` (nothing survives a restart).
    #[arg(long, env = "HERALD_STORE", default_value = "file:./herald-data")]
    pub store: String,
    /// Refuse publishes (503) once the embedded database would grow past
    /// this many bytes.
    #[arg(long, env = "HERALD_MAX_DB_SIZE")]
    pub max_db_size: Option<u64>,
    /// Newest events kept per topic.
    #[arg(long, env = "HERALD_RETENTION_EVENTS", default_value_t = 1000)]
    pub retention_events: usize,
    /// Events older than this are dropped (`off` keeps them by count only).
    #[arg(long, env = "HERALD_RETENTION_AGE", default_value = "24h")]
    pub retention_age: String,
    /// Largest request body, in bytes (one event, or a whole batch).
    #[arg(long, env = "HERALD_MAX_BODY", default_value_t = 1024 * 1024)]
    pub max_body: usize,
    /// Keep-alive interval of every stream (SSE comment, NDJSON empty line, WebSocket ping).
    #[arg(long, env = "HERALD_KEEPALIVE", default_value = "15s")]
    pub keepalive: String,
    /// Reconnection delay sent to SSE clients (`retry:`).
    #[arg(long, env = "HERALD_RETRY", default_value = "3s")]
    pub retry: String,
    /// Longest long-poll timeout a client may ask for.
    #[arg(long, env = "HERALD_LONG_POLL_MAX", default_value = "5m")]
    pub long_poll_max: String,
    /// End every stream after this long, so clients reconnect (and resume);
    /// spreads clients over nodes. `off`: streams last as long as clients stay.
    #[arg(long, env = "HERALD_MAX_STREAM_AGE", default_value = "off")]
    pub max_stream_age: String,
    /// Events a subscriber may fall behind before it is cut off (it resumes
    /// with its cursor).
    #[arg(long, env = "HERALD_SUBSCRIBER_BUFFER", default_value_t = 1024)]
    pub subscriber_buffer: usize,
    /// Log format: `text` or `json`.
    #[arg(long, env = "HERALD_LOG_FORMAT", default_value = "text")]
    pub log_format: String,
}

/// Which store to run on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreChoice {
    Memory,
    File {
        dir: PathBuf,
        max_bytes: Option<u64>,
    },
}

/// Everything `serve` needs, checked.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    pub listen: SocketAddr,
    pub store: StoreChoice,
    pub retention: Retention,
    pub hub: HubConfig,
    pub server: ServerConfig,
    pub subscriber_buffer: usize,
    pub json_logs: bool,
}

/// Parses `500ms`, `15s`, `2h`…
pub fn duration(flag: &str, text: &str) -> anyhow::Result<Duration> {
    humantime::parse_duration(text.trim())
        .with_context(|| format!("--{flag}: {text:?} is not a duration like 500ms, 15s or 2h"))
}

/// A duration, or `None` for `off` / `0`.
fn optional_duration(flag: &str, text: &str) -> anyhow::Result<Option<Duration>> {
    match text.trim() {
        "off" | "none" | "0" => Ok(None),
        other => duration(flag, other).map(|d| (!d.is_zero()).then_some(d)),
    }
}

impl ServeArgs {
    pub fn validate(&self) -> anyhow::Result<ServeConfig> {
        let store = match self.store.trim() {
            "memory" => StoreChoice::Memory,
            uri if uri.starts_with("file:") => {
                let dir = uri.trim_start_matches("file:").trim_start_matches("//");
                if dir.is_empty() {
                    bail!("--store: file: needs a directory, like file:./herald-data");
                }
                StoreChoice::File {
                    dir: PathBuf::from(dir),
                    max_bytes: self.max_db_size,
                }
            }
            other => bail!("--store: {other:?} is not a store this build knows (memory, file:DIR)"),
        };
        if self.retention_events == 0 {
            bail!("--retention-events must be at least 1");
        }
        if self.max_body == 0 {
            bail!("--max-body must be at least 1");
        }
        if self.subscriber_buffer == 0 {
            bail!("--subscriber-buffer must be at least 1");
        }
        let keepalive = duration("keepalive", &self.keepalive)?;
        if keepalive < Duration::from_millis(10) {
            bail!("--keepalive must be at least 10ms");
        }
        let long_poll_max = duration("long-poll-max", &self.long_poll_max)?;
        let log_format = self.log_format.trim();
        if !matches!(log_format, "text" | "json") {
            bail!("--log-format must be text or json");
        }
        Ok(ServeConfig {
            listen: self.listen,
            store,
            retention: Retention {
                max_events: self.retention_events,
                max_age: optional_duration("retention-age", &self.retention_age)?,
            },
            hub: HubConfig {
                keepalive,
                max_stream_age: optional_duration("max-stream-age", &self.max_stream_age)?,
                ..HubConfig::default()
            },
            server: ServerConfig {
                max_body: self.max_body,
                retry: duration("retry", &self.retry)?,
                long_poll_default: Duration::from_secs(30).min(long_poll_max),
                long_poll_max,
            },
            subscriber_buffer: self.subscriber_buffer,
            json_logs: log_format == "json",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> anyhow::Result<ServeConfig> {
        let mut argv = vec!["herald", "serve"];
        argv.extend_from_slice(args);
        let Command::Serve(serve) = Cli::try_parse_from(argv)?.command;
        serve.validate()
    }

    #[test]
    fn defaults_and_durations() {
        let c = parse(&[]).unwrap();
        assert_eq!(c.listen.to_string(), "127.0.0.1:7171");
        assert_eq!(
            c.store,
            StoreChoice::File {
                dir: PathBuf::from("./herald-data"),
                max_bytes: None
            }
        );
        assert_eq!(
            parse(&["--store", "memory"]).unwrap().store,
            StoreChoice::Memory
        );
        assert_eq!(c.hub.keepalive, Duration::from_secs(15));
        assert_eq!(c.retention.max_age, Some(Duration::from_secs(7200 * 12)));
        let c = parse(&[
            "--keepalive",
            "500ms",
            "--retry",
            "2s",
            "--retention-age",
            "off",
        ])
        .unwrap();
        assert_eq!(c.hub.keepalive, Duration::from_millis(500));
        assert_eq!(c.server.retry, Duration::from_secs(2));
        assert_eq!(c.retention.max_age, None);
    }

    #[test]
    fn refuses_bad_values() {
        assert!(parse(&["--keepalive", "soon"]).is_err());
        assert!(parse(&["--store", "floppy:"]).is_err());
        assert!(parse(&["--store", "file:"]).is_err());
        assert!(parse(&["--retention-events", "0"]).is_err());
        assert!(parse(&["--listen", "nowhere"]).is_err());
    }
}
