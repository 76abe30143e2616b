//! Command-line flags (and their `HERALD_*` environment twins), checked once
//! into a [`ServeConfig`] before anything starts.

use clap::{Args, Parser, Subcommand};

mod serve;
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
    /// Copy the embedded database to FILE while the server runs (a
    /// consistent snapshot; publishing goes on). To restore: stop the
    /// server, put the copy in the data directory as herald.db (with no
    /// herald.db-wal or herald.db-shm beside it), start the server.
    #[command(
        after_help = "Examples:\n  herald backup /var/backups/herald-$(date +%F).db\n  herald backup --store file:/var/lib/herald herald.db.bak"
    )]
    Backup(BackupArgs),
}

/// `herald backup`.
#[derive(Debug, Args)]
pub struct BackupArgs {
    /// The server's store: `file:DIR` (or just DIR), as `herald serve
    /// --store` was given; the database is DIR/herald.db.
    #[arg(long, env = "HERALD_STORE", default_value = "file:./herald-data")]
    pub store: String,
    /// Where to write the copy; must not exist yet.
    pub file: std::path::PathBuf,
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
    /// The wait before a failed attempt is retried, doubling after each (up
    /// to 5m): `none`, or a base such as 200ms or 2s. The server's default
    /// is 1s.
    #[arg(long)]
    pub backoff: Option<String>,
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

pub use serve::*;

#[cfg(test)]
mod tests {
    use std::path::PathBuf;
    use std::time::Duration;

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
