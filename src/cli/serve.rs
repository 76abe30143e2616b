//! `herald serve`'s flags, and their checking into a [`ServeConfig`]
//! before anything starts.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;
use herald_core::{HubConfig, Retention};
use herald_server::ServerConfig;
use herald_server::auth::{Auth, AuthConfig, KeySource, Pattern};

use super::size;

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

impl StoreChoice {
    /// Reads a `--store` value; `max_bytes` is `--max-db-size`, for the
    /// embedded store.
    pub fn parse(text: &str, max_bytes: Option<u64>) -> anyhow::Result<StoreChoice> {
        Ok(match text.trim() {
            "memory" => StoreChoice::Memory,
            uri if uri.starts_with("file:") => {
                let dir = uri.trim_start_matches("file:").trim_start_matches("//");
                if dir.is_empty() {
                    bail!("--store: file: needs a directory, like file:./herald-data");
                }
                StoreChoice::File {
                    dir: PathBuf::from(dir),
                    max_bytes,
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
        })
    }
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
        let store = StoreChoice::parse(&self.store, self.max_db_size)?;
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
