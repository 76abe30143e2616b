//! Command-line flags (and their `HERALD_*` environment twins), checked once
//! into a [`ServeConfig`] before anything starts.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand};
use herald_core::{HubConfig, Retention};
use herald_server::ServerConfig;
use herald_server::auth::{Auth, AuthConfig, KeySource, Pattern};

pub mod size;

/// herald: a server-push hub — short poll, long poll, HTTP streaming,
/// Server-Sent Events and WebSocket over one event model.
#[derive(Debug, Parser)]
#[command(
    name = "herald",
    version,
    about,
    long_about = None,
    after_help = "Examples:\n  herald serve\n  herald sub news\n  herald pub news 'hello'\n  herald task submit images '{\"url\":\"cat.png\"}' --wait"
)]
pub struct Cli {
    /// The server to talk to (client commands).
    #[arg(
        long,
        global = true,
        env = "HERALD_URL",
        default_value = "http://127.0.0.1:7171"
    )]
    pub url: String,
    /// Print JSON, one object per line, instead of human output.
    #[arg(long, global = true)]
    pub json: bool,
    /// A token to send as `Authorization: Bearer` (client commands), for a
    /// server run with authorization on; `herald token` makes one.
    #[arg(long, global = true, env = "HERALD_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the server.
    #[command(
        after_help = "Example:\n  herald serve --listen 0.0.0.0:7171 --retention-events 10000 --keepalive 20s"
    )]
    Serve(Box<ServeArgs>),
    /// Publish one event to a topic; prints its id.
    #[command(
        name = "pub",
        after_help = "Examples:\n  herald pub news 'hello, world'\n  echo '{\"price\":42}' | herald pub prices - --event update\n  herald pub news hi --json"
    )]
    Publish(PublishArgs),
    /// Follow topics and print their events as they come (Ctrl-C stops).
    #[command(
        name = "sub",
        after_help = "Examples:\n  herald sub news\n  herald sub news sport --via ws --since all\n  herald sub news --json --count 10"
    )]
    Subscribe(SubscribeArgs),
    /// Tasks: submit, look, cancel, and run workers.
    #[command(
        subcommand,
        after_help = "Examples:\n  herald task submit images '{\"url\":\"cat.png\"}' --wait\n  herald task status 01a2f3c4-5d6e-7f80-9a1b-2c3d4e5f6a7b\n  herald task work images -- ./resize.sh"
    )]
    Task(TaskCommand),
    /// Print a token (HS256) for a server run with `--auth-jwt-secret`.
    #[command(
        after_help = "Examples:\n  herald token --secret \"$SECRET\" --subscribe 'chat.*' --publish chat.room1 --sub alice\n  HERALD_AUTH_JWT_SECRET=... herald token --enqueue images --work images --ttl 30m\n  export HERALD_TOKEN=$(herald token --admin --ttl 10m)"
    )]
    Token(TokenArgs),
}

/// `herald token`.
#[derive(Debug, Args)]
pub struct TokenArgs {
    /// The server's HS256 secret (better from the environment: a flag is
    /// visible to other users of the machine).
    #[arg(long, env = "HERALD_AUTH_JWT_SECRET", hide_env_values = true)]
    pub secret: String,
    /// Topics it may publish to: a name, `*`, or a prefix like `chat.*` (repeatable).
    #[arg(long, value_name = "PATTERN")]
    pub publish: Vec<String>,
    /// Topics it may read (repeatable).
    #[arg(long, value_name = "PATTERN")]
    pub subscribe: Vec<String>,
    /// Queues it may enqueue to and whose tasks it may read and cancel (repeatable).
    #[arg(long, value_name = "PATTERN")]
    pub enqueue: Vec<String>,
    /// Queues it may work on: claim, progress, complete, fail (repeatable).
    #[arg(long, value_name = "PATTERN")]
    pub work: Vec<String>,
    /// The listings (`GET /topics`, `GET /queues`, …) and `/metrics`.
    #[arg(long)]
    pub admin: bool,
    /// Its subject: who the holder is (per-client limits count by it).
    #[arg(long, value_name = "NAME")]
    pub sub: Option<String>,
    /// How long it is valid (`30m`, `12h`, `7d`); `off` for no expiry.
    #[arg(long, default_value = "1h")]
    pub ttl: String,
    /// Its `iss`, for a server run with `--auth-issuer`.
    #[arg(long)]
    pub issuer: Option<String>,
    /// Its `aud`, for a server run with `--auth-audience`.
    #[arg(long)]
    pub audience: Option<String>,
}

/// `herald pub`.
#[derive(Debug, Args)]
pub struct PublishArgs {
    /// The topic.
    pub topic: String,
    /// The event's data; `-` or nothing reads it from standard input.
    pub data: Option<String>,
    /// The event type (default `message`).
    #[arg(long)]
    pub event: Option<String>,
    /// The publish's idempotency key: the server stores one event per key,
    /// so running the same command again does not publish twice. Default:
    /// a fresh key (retries within one run still share it).
    #[arg(long, value_name = "KEY")]
    pub idempotency_key: Option<String>,
}

/// How to receive events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Via {
    Sse,
    Ws,
    Stream,
    LongPoll,
    Poll,
}

/// `herald sub`.
#[derive(Debug, Args)]
pub struct SubscribeArgs {
    /// One or more topics.
    #[arg(required = true)]
    pub topics: Vec<String>,
    /// The transport.
    #[arg(long, value_enum, default_value = "sse")]
    pub via: Via,
    /// Where to start: `now`, `all`, or a cursor (an event id).
    #[arg(long, default_value = "now")]
    pub since: String,
    /// Exit after this many events.
    #[arg(long)]
    pub count: Option<u64>,
    /// Exit non-zero after this long without a connection (`30s`, `5m`).
    /// Default: 30s until the first connection, then never (reconnect for
    /// ever).
    #[arg(long, value_name = "DURATION")]
    pub give_up_after: Option<String>,
}

/// `herald task …`.
#[derive(Debug, Subcommand)]
pub enum TaskCommand {
    /// Enqueue a task; with --wait, wait for it and print its result.
    ///
    /// Exit codes with --wait: 0 succeeded, 1 failed or cancelled, 124 timed out.
    #[command(
        after_help = "Examples:\n  herald task submit images '{\"url\":\"cat.png\"}'\n  herald task submit images '{\"url\":\"cat.png\"}' --wait --via long-poll --timeout 2m\n  cat job.json | herald task submit reports - --wait"
    )]
    Submit(SubmitArgs),
    /// Show a task.
    #[command(
        after_help = "Example:\n  herald task status 01a2f3c4-5d6e-7f80-9a1b-2c3d4e5f6a7b --json"
    )]
    Status {
        /// The task id.
        id: String,
    },
    /// Cancel a task (at once if queued, at its worker's next call if running).
    #[command(after_help = "Example:\n  herald task cancel 01a2f3c4-5d6e-7f80-9a1b-2c3d4e5f6a7b")]
    Cancel {
        /// The task id.
        id: String,
    },
    /// Run COMMAND once per task of QUEUE: the payload on its stdin, its
    /// stdout is the result, `progress 0.4 message` lines on its stderr are
    /// progress reports, a non-zero exit fails the task (retried while
    /// attempts are left). Ctrl-C stops after the running tasks.
    #[command(
        after_help = "Example:\n  herald task work images --concurrency 4 -- ./resize.sh --width 200"
    )]
    Work(WorkArgs),
}

/// How to wait for a task.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum WaitVia {
    Sse,
    Ws,
    LongPoll,
    Poll,
}

/// `herald task submit`.
#[derive(Debug, Args)]
pub struct SubmitArgs {
    /// The queue.
    pub queue: String,
    /// The payload (sent as JSON when it parses as JSON); `-` or nothing
    /// reads it from standard input.
    pub payload: Option<String>,
    /// Wait for the task to finish and print its result.
    #[arg(long)]
    pub wait: bool,
    /// How to wait.
    #[arg(long, value_enum, default_value = "sse")]
    pub via: WaitVia,
    /// Give up waiting after this long (e.g. 30s, 5m).
    #[arg(long)]
    pub timeout: Option<String>,
}

/// `herald task work`.
#[derive(Debug, Args)]
pub struct WorkArgs {
    /// The queue to take tasks from.
    pub queue: String,
    /// Tasks run at once.
    #[arg(long, default_value_t = 1)]
    pub concurrency: usize,
    /// The lease asked for with each claim; a progress line extends it.
    #[arg(long, default_value = "60s")]
    pub lease: String,
    /// Print nothing per task (by default one line per task on stdout: its
    /// id, how it ended, how long it took).
    #[arg(long, short)]
    pub quiet: bool,
    /// The command and its arguments (after `--`).
    #[arg(last = true, required = true)]
    pub command: Vec<String>,
}

/// Flags of `herald serve`. Durations are written like `500ms`, `15s`, `2h`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to listen on (port 0 picks a free port).
    #[arg(long, env = "HERALD_LISTEN", default_value = "127.0.0.1:7171")]
    pub listen: SocketAddr,
    /// Where events are kept: `file:DIR` (embedded, durable; the database is
    /// DIR/herald.db), `memory` (nothing survives a restart) or
    /// `redis://HOST:PORT[/DB]` (shared by several herald nodes).
    #[arg(long, env = "HERALD_STORE", default_value = "file:./herald-data")]
    pub store: String,
    /// Refuse publishes (503) once the embedded database would grow past
    /// this size (`500MiB`, `2GB`, or bytes).
    #[arg(long, env = "HERALD_MAX_DB_SIZE", value_name = "SIZE", value_parser = size::parse)]
    pub max_db_size: Option<u64>,
    /// Newest events kept per topic.
    #[arg(long, env = "HERALD_RETENTION_EVENTS", default_value_t = 1000)]
    pub retention_events: usize,
    /// Events older than this are dropped (`off` keeps them by count only).
    #[arg(long, env = "HERALD_RETENTION_AGE", default_value = "24h")]
    pub retention_age: String,
    /// Largest request body (one event, or a whole batch): `2MiB`, `512KiB`,
    /// `2MB`, or bytes.
    #[arg(
        long,
        env = "HERALD_MAX_BODY",
        value_name = "SIZE",
        default_value = "1MiB",
        value_parser = size::parse_usize
    )]
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
    /// How long a client may take to send a request head: from connecting,
    /// or from the head's first byte on a kept-alive connection. Past it, the
    /// connection is closed (`408` first if part of a head came). On a
    /// connection hyper serves (after a publish, say) the wait for the next
    /// head is timed as idle + head, and closed without a `408`.
    #[arg(long, env = "HERALD_HEAD_TIMEOUT", default_value = "20s")]
    pub head_timeout: String,
    /// How long a kept-alive connection may sit idle between requests.
    #[arg(long, env = "HERALD_IDLE_TIMEOUT", default_value = "75s")]
    pub idle_timeout: String,
    /// How long a request body may take to arrive (`408` past it).
    #[arg(long, env = "HERALD_BODY_TIMEOUT", default_value = "60s")]
    pub body_timeout: String,
    /// How long a client's socket may take nothing of what the server
    /// writes before the connection is closed: a subscriber that stopped
    /// reading is cut off after this long (it resumes with its cursor).
    #[arg(long, env = "HERALD_WRITE_TIMEOUT", default_value = "10s")]
    pub write_timeout: String,
    /// Turn authorization on with this HS256 secret: every route but
    /// `/healthz` then wants a token (see docs/auth.md). Better given by the
    /// environment than as a flag, which other users of the machine can see.
    #[arg(long, env = "HERALD_AUTH_JWT_SECRET", hide_env_values = true)]
    pub auth_jwt_secret: Option<String>,
    /// Turn authorization on with this key file: a PEM public key (RS256,
    /// ES256 or EdDSA, told from the key) or a JWKS (`{"keys":[…]}`, a
    /// token's `kid` picks the key).
    #[arg(long, env = "HERALD_AUTH_JWT_KEY", value_name = "FILE")]
    pub auth_jwt_key: Option<PathBuf>,
    /// With authorization on: a token's `iss` must be this.
    #[arg(long, env = "HERALD_AUTH_ISSUER")]
    pub auth_issuer: Option<String>,
    /// With authorization on: a token's `aud` must be or contain this.
    #[arg(long, env = "HERALD_AUTH_AUDIENCE")]
    pub auth_audience: Option<String>,
    /// With authorization on: topics requests without a token may read — a
    /// name, `*` or a prefix like `public.*` (repeatable; comma-separated in
    /// the environment).
    #[arg(
        long,
        env = "HERALD_PUBLIC_SUBSCRIBE",
        value_name = "PATTERN",
        value_delimiter = ','
    )]
    pub public_subscribe: Vec<String>,
    /// An origin whose pages may read herald's answers (repeatable, or `*`;
    /// comma-separated in the environment): preflights are answered, and
    /// listed origins may send the `herald_token` cookie. With it set,
    /// WebSockets from other origins are refused.
    #[arg(
        long,
        env = "HERALD_CORS_ORIGIN",
        value_name = "ORIGIN",
        value_delimiter = ','
    )]
    pub cors_origin: Vec<String>,
    /// Most open connections; beyond it new ones get `503` and are closed.
    #[arg(long, env = "HERALD_MAX_CONNECTIONS", value_name = "N")]
    pub max_connections: Option<usize>,
    /// Most open subscriptions (streams, WebSockets, long polls) per
    /// client — its token's subject, else its address; beyond it `429`.
    #[arg(long, env = "HERALD_MAX_SUBSCRIPTIONS_PER_CLIENT", value_name = "N")]
    pub max_subscriptions_per_client: Option<usize>,
    /// Events per second each client may publish (bursts of twice as
    /// many); beyond it `429` with `Retry-After`.
    #[arg(long, env = "HERALD_PUBLISH_RATE", value_name = "R")]
    pub publish_rate: Option<f64>,
    /// Most topics one `/subscribe` request may name; beyond it `400`.
    #[arg(
        long,
        env = "HERALD_MAX_TOPICS_PER_SUBSCRIPTION",
        value_name = "N",
        default_value_t = 64
    )]
    pub max_topics_per_subscription: usize,
    /// Log format: `text` or `json`.
    #[arg(long, env = "HERALD_LOG_FORMAT", default_value = "text")]
    pub log_format: String,
    /// Serve HTTPS (ALPN h2 and http/1.1) with this certificate chain (PEM,
    /// leaf first); needs --tls-key. SIGHUP reads both files again.
    #[arg(long, env = "HERALD_TLS_CERT", value_name = "FILE")]
    pub tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM: PKCS#8, PKCS#1 or SEC1).
    #[arg(long, env = "HERALD_TLS_KEY", value_name = "FILE")]
    pub tls_key: Option<PathBuf>,
}

/// Which store to run on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreChoice {
    Memory,
    File {
        dir: PathBuf,
        max_bytes: Option<u64>,
    },
    Redis {
        url: String,
    },
}

/// The files TLS is read from (and read again on SIGHUP).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
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
    /// Settings that work but are probably not what was meant, logged once
    /// logging is up.
    pub warnings: Vec<String>,
    /// HTTPS when set; plain HTTP otherwise.
    pub tls: Option<TlsFiles>,
}

/// Parses `500ms`, `15s`, `2h`…
pub fn duration(flag: &str, text: &str) -> anyhow::Result<Duration> {
    humantime::parse_duration(text.trim())
        .with_context(|| format!("--{flag}: {text:?} is not a duration like 500ms, 15s or 2h"))
}

/// A duration of at least a millisecond.
fn positive(flag: &str, text: &str) -> anyhow::Result<Duration> {
    let d = duration(flag, text)?;
    if d < Duration::from_millis(1) {
        bail!("--{flag} must be at least 1ms");
    }
    Ok(d)
}

/// A duration, or `None` for `off` / `0`.
pub fn optional_duration(flag: &str, text: &str) -> anyhow::Result<Option<Duration>> {
    match text.trim() {
        "off" | "none" | "0" => Ok(None),
        other => duration(flag, other).map(|d| (!d.is_zero()).then_some(d)),
    }
}

impl ServeArgs {
    /// The limits flags, checked.
    fn limits(&self) -> anyhow::Result<herald_server::limits::LimitConfig> {
        let at_least_one = |name: &str, v: Option<usize>| match v {
            Some(0) => anyhow::bail!("--{name} must be at least 1"),
            v => Ok(v),
        };
        if self
            .publish_rate
            .is_some_and(|r| !(r.is_finite() && r > 0.0))
        {
            anyhow::bail!("--publish-rate must be a positive number of events per second");
        }
        Ok(herald_server::limits::LimitConfig {
            max_connections: at_least_one("max-connections", self.max_connections)?,
            max_subscriptions_per_client: at_least_one(
                "max-subscriptions-per-client",
                self.max_subscriptions_per_client,
            )?,
            publish_rate: self.publish_rate,
            max_topics_per_subscription: at_least_one(
                "max-topics-per-subscription",
                Some(self.max_topics_per_subscription),
            )?
            .unwrap_or(64),
        })
    }

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
            uri if uri.starts_with("redis://") || uri.starts_with("rediss://") => {
                StoreChoice::Redis {
                    url: uri.to_owned(),
                }
            }
            other => bail!(
                "--store: {other:?} is not a store this build knows (memory, file:DIR, redis://HOST:PORT)"
            ),
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
        let mut warnings = Vec::new();
        let auth = self.auth(&mut warnings)?;
        let log_format = self.log_format.trim();
        if !matches!(log_format, "text" | "json") {
            bail!("--log-format must be text or json");
        }
        let tls = match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => Some(TlsFiles {
                cert: cert.clone(),
                key: key.clone(),
            }),
            (None, None) => None,
            (Some(_), None) => bail!("--tls-cert needs --tls-key"),
            (None, Some(_)) => bail!("--tls-key needs --tls-cert"),
        };
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
                head_timeout: positive("head-timeout", &self.head_timeout)?,
                idle_timeout: positive("idle-timeout", &self.idle_timeout)?,
                body_timeout: positive("body-timeout", &self.body_timeout)?,
                write_timeout: positive("write-timeout", &self.write_timeout)?,
                auth,
                cors: herald_server::cors::Origins::parse(&self.cors_origin)
                    .map_err(anyhow::Error::msg)?,
                limits: self.limits()?,
            },
            subscriber_buffer: self.subscriber_buffer,
            json_logs: log_format == "json",
            warnings,
            tls,
        })
    }

    /// The authorization flags, checked, with the key read: `None` when
    /// authorization is off.
    ///
    /// `--public-subscribe`, `--auth-issuer` and `--auth-audience` without a
    /// key are refused rather than ignored: with authorization off every
    /// topic is public, and an operator who wrote `--public-subscribe news`
    /// believes the others are not.
    fn auth(&self, warnings: &mut Vec<String>) -> anyhow::Result<Option<Arc<Auth>>> {
        if self.auth_jwt_secret.as_deref() == Some("") {
            // Refused, not taken as absent: an empty variable in a
            // deployment that meant to set it would otherwise start a
            // server open to all.
            bail!("--auth-jwt-secret is empty (is HERALD_AUTH_JWT_SECRET set to nothing?)");
        }
        let key = match (&self.auth_jwt_secret, &self.auth_jwt_key) {
            (Some(_), Some(_)) => bail!(
                "--auth-jwt-secret and --auth-jwt-key are exclusive: give a secret (HS256) or a public key file, not both"
            ),
            (Some(secret), None) => {
                if secret.len() < 32 {
                    warnings.push(
                        "--auth-jwt-secret is shorter than 32 bytes: HS256 wants at least 256 bits of secret (openssl rand -base64 32)".into(),
                    );
                }
                KeySource::Secret(secret.clone())
            }
            (None, Some(path)) => KeySource::File(path.clone()),
            (None, None) => {
                for (flag, given) in [
                    (
                        "--public-subscribe",
                        self.public_patterns().next().is_some(),
                    ),
                    ("--auth-issuer", self.auth_issuer.is_some()),
                    ("--auth-audience", self.auth_audience.is_some()),
                ] {
                    if given {
                        bail!(
                            "{flag} needs --auth-jwt-secret or --auth-jwt-key: without either, authorization is off and every route is open to all"
                        );
                    }
                }
                return Ok(None);
            }
        };
        let public_subscribe = self
            .public_patterns()
            .map(Pattern::parse)
            .collect::<Result<Vec<_>, _>>()
            .context("--public-subscribe")?;
        let config = AuthConfig {
            issuer: non_empty("auth-issuer", &self.auth_issuer)?,
            audience: non_empty("auth-audience", &self.auth_audience)?,
            key,
            public_subscribe,
        };
        let flag = match config.key {
            KeySource::Secret(_) => "--auth-jwt-secret",
            KeySource::File(_) => "--auth-jwt-key",
        };
        let auth = Auth::new(config).with_context(|| flag.to_owned())?;
        warnings.extend(auth.warnings());
        Ok(Some(Arc::new(auth)))
    }
}

impl ServeArgs {
    /// The `--public-subscribe` values; blank ones (an empty variable) are
    /// none.
    fn public_patterns(&self) -> impl Iterator<Item = &str> {
        self.public_subscribe
            .iter()
            .map(|p| p.trim())
            .filter(|p| !p.is_empty())
    }
}

/// An optional text flag, which must not be blank when given.
fn non_empty(flag: &str, value: &Option<String>) -> anyhow::Result<Option<String>> {
    match value.as_deref().map(str::trim) {
        Some("") => bail!("--{flag} must not be empty"),
        other => Ok(other.map(str::to_owned)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> anyhow::Result<ServeConfig> {
        let mut argv = vec!["herald", "serve"];
        argv.extend_from_slice(args);
        match Cli::try_parse_from(argv)?.command {
            Command::Serve(serve) => serve.validate(),
            other => panic!("parsed as {other:?}"),
        }
    }

    #[test]
    fn client_commands_parse() {
        let cli = Cli::try_parse_from([
            "herald",
            "task",
            "work",
            "q",
            "--concurrency",
            "2",
            "--",
            "sh",
            "-c",
            "cat",
        ])
        .unwrap();
        match cli.command {
            Command::Task(TaskCommand::Work(w)) => {
                assert_eq!(w.command, ["sh", "-c", "cat"]);
                assert_eq!(w.concurrency, 2);
            }
            other => panic!("{other:?}"),
        }
        let cli = Cli::try_parse_from(["herald", "sub", "a", "b", "--via", "long-poll", "--json"])
            .unwrap();
        assert!(cli.json);
        assert!(
            matches!(cli.command, Command::Subscribe(ref s) if s.via == Via::LongPoll && s.topics.len() == 2)
        );
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
    fn sizes_take_units() {
        assert_eq!(parse(&[]).unwrap().server.max_body, 1 << 20);
        let max_body = |text: &str| parse(&["--max-body", text]).map(|c| c.server.max_body);
        assert_eq!(max_body("2MiB").unwrap(), 2 << 20);
        assert_eq!(max_body("2MB").unwrap(), 2_000_000);
        assert_eq!(max_body("512KiB").unwrap(), 512 << 10);
        assert_eq!(max_body("1048576").unwrap(), 1 << 20);
        assert!(max_body("lots").is_err());
        assert!(max_body("0").is_err());
        let c = parse(&["--store", "file:d", "--max-db-size", "1GiB"]).unwrap();
        assert_eq!(
            c.store,
            StoreChoice::File {
                dir: PathBuf::from("d"),
                max_bytes: Some(1 << 30)
            }
        );
    }

    #[test]
    fn auth_flags_build_the_verifier_or_say_what_is_wrong() {
        use herald_server::auth::Action;
        assert!(parse(&[]).unwrap().server.auth.is_none());
        let secret = "k".repeat(32);
        let c = parse(&[
            "--auth-jwt-secret",
            &secret,
            "--public-subscribe",
            "public.*",
            "--public-subscribe",
            "news",
        ])
        .unwrap();
        assert!(c.warnings.is_empty(), "{:?}", c.warnings);
        let auth = c.server.auth.unwrap();
        assert!(auth.public_allows(&Action::Subscribe("public.a")));
        assert!(auth.public_allows(&Action::Subscribe("news")));
        assert!(!auth.public_allows(&Action::Subscribe("sport")));
        assert_eq!(
            parse(&["--auth-jwt-secret", "short"])
                .unwrap()
                .warnings
                .len(),
            1
        );
        let key = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/crates/server/tests/keys/ec.pub"
        );
        let c = parse(&["--auth-jwt-key", key, "--auth-issuer", "me"]).unwrap();
        assert_eq!(c.server.auth.unwrap().describe(), "ES256; issuer \"me\"");

        let refusal = |args: &[&str]| match parse(args) {
            Ok(_) => panic!("{args:?} was accepted"),
            Err(e) => format!("{e:#}"),
        };
        let both = refusal(&["--auth-jwt-secret", &secret, "--auth-jwt-key", key]);
        assert!(both.contains("exclusive"), "{both}");
        let open = refusal(&["--public-subscribe", "news"]);
        assert!(open.contains("--public-subscribe needs"), "{open}");
        assert!(refusal(&["--auth-audience", "x"]).contains("--auth-audience needs"));
        assert!(refusal(&["--auth-jwt-secret", ""]).contains("empty"));
        let missing = refusal(&["--auth-jwt-key", "/no/such/key.pem"]);
        assert!(
            missing.contains("--auth-jwt-key") && missing.contains("/no/such/key.pem"),
            "{missing}"
        );
        let pattern = refusal(&["--auth-jwt-secret", &secret, "--public-subscribe", "a*b"]);
        assert!(pattern.contains("--public-subscribe"), "{pattern}");
    }

    #[test]
    fn token_and_client_token_flags_parse() {
        let cli = Cli::try_parse_from([
            "herald",
            "token",
            "--secret",
            "s",
            "--publish",
            "a",
            "--publish",
            "b.*",
            "--admin",
            "--ttl",
            "30m",
        ])
        .unwrap();
        match cli.command {
            Command::Token(t) => {
                assert_eq!(t.publish, ["a", "b.*"]);
                assert!(t.admin && t.subscribe.is_empty());
                assert_eq!(t.ttl, "30m");
            }
            other => panic!("{other:?}"),
        }
        let cli = Cli::try_parse_from(["herald", "pub", "news", "hi", "--token", "t.t.t"]).unwrap();
        assert_eq!(cli.token.as_deref(), Some("t.t.t"));
    }

    #[test]
    fn refuses_bad_values() {
        assert!(parse(&["--keepalive", "soon"]).is_err());
        assert!(parse(&["--store", "floppy:"]).is_err());
        assert!(parse(&["--store", "file:"]).is_err());
        assert!(parse(&["--retention-events", "0"]).is_err());
        assert!(parse(&["--listen", "nowhere"]).is_err());
    }

    #[test]
    fn tls_takes_both_files_or_neither() {
        assert_eq!(parse(&[]).unwrap().tls, None);
        let c = parse(&["--tls-cert", "c.pem", "--tls-key", "k.pem"]).unwrap();
        assert_eq!(
            c.tls,
            Some(TlsFiles {
                cert: PathBuf::from("c.pem"),
                key: PathBuf::from("k.pem"),
            })
        );
        assert!(parse(&["--tls-cert", "c.pem"]).is_err());
        assert!(parse(&["--tls-key", "k.pem"]).is_err());
    }
}
