//! The `herald` command line end to end, as people and scripts run it:
//! `pub`, `sub` by every transport, `task submit|status|cancel|work`, exit
//! codes, `--help` and Ctrl-C — real processes against a real server.
//!
//! Every wait is bounded by [`within`]. A streaming subscriber is known to
//! be connected when the server's own gauge counts it; a worker is known to
//! be busy when its task's first progress event is stored. The only sleeps
//! are in a task script polling for a file, and in the harness's metric poll.

use std::path::Path;
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, Instant};

use futures_util::future::join_all;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};
use tokio::sync::watch;

use crate::harness::{Server, read_all, temp_dir, wait_for_metric, within};

/// What the command line says when something is wrong: the cause of a
/// failed connection, giving up, per-task lines of a worker, logs.
mod diagnosis;

/// The exit code of a wait that ran out of time.
const TIMED_OUT: i32 = 124;

/// `herald --url URL ARGS…` with its output piped; killed if dropped.
fn herald(url: &str, args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_herald"));
    cmd.arg("--url")
        .arg(url)
        .args(args)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    cmd
}

/// What a command that ran to its end said.
struct Ran {
    what: String,
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

impl std::fmt::Debug for Ran {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "`{}` exited {}\n--- stdout:\n{}--- stderr:\n{}",
            self.what, self.status, self.stdout, self.stderr
        )
    }
}

impl Ran {
    /// Asserts it exited 0.
    #[track_caller]
    fn ok(self) -> Ran {
        assert!(self.status.success(), "{self:?}");
        self
    }

    /// Asserts it exited with `code`.
    #[track_caller]
    fn exited(self, code: i32) -> Ran {
        assert_eq!(self.status.code(), Some(code), "{self:?}");
        self
    }

    /// Asserts a non-zero exit with nothing on stdout and one clear error
    /// line (no panic) on stderr that mentions every one of `words`.
    #[track_caller]
    fn refused(self, words: &[&str]) -> Ran {
        assert_eq!(self.status.code(), Some(1), "{self:?}");
        assert_eq!(self.stdout, "", "{self:?}");
        assert!(self.stderr.starts_with("herald: error: "), "{self:?}");
        assert!(!self.stderr.contains("panicked"), "{self:?}");
        for w in words {
            assert!(self.stderr.contains(w), "no {w:?} in {self:?}");
        }
        self
    }

    /// Stdout, which must be exactly one line.
    #[track_caller]
    fn line(&self) -> &str {
        let line = self
            .stdout
            .strip_suffix('\n')
            .unwrap_or_else(|| panic!("no line in {self:?}"));
        assert!(!line.contains('\n'), "more than one line in {self:?}");
        line
    }

    /// Stdout, which must be exactly one line of JSON.
    #[track_caller]
    fn json(&self) -> Value {
        serde_json::from_str(self.line()).unwrap_or_else(|e| panic!("{e}: {self:?}"))
    }
}

/// Runs `herald ARGS…` against `url` to its end, `input` on its stdin.
async fn run_at(url: &str, args: &[&str], input: Option<&str>) -> Ran {
    let what = format!("herald {}", args.join(" "));
    let mut cmd = herald(url, args);
    if input.is_some() {
        cmd.stdin(Stdio::piped());
    }
    let mut child = cmd.spawn().expect("spawn herald");
    if let Some(text) = input {
        let mut stdin = child.stdin.take().expect("stdin");
        stdin.write_all(text.as_bytes()).await.expect("write stdin");
        // Dropped here: the command sees the end of its input.
    }
    let out = within(&what, child.wait_with_output())
        .await
        .expect("herald's output");
    Ran {
        what,
        status: out.status,
        stdout: String::from_utf8(out.stdout).expect("utf-8 stdout"),
        stderr: String::from_utf8(out.stderr).expect("utf-8 stderr"),
    }
}

async fn run(server: &Server, args: &[&str]) -> Ran {
    run_at(&server.url(""), args, None).await
}

async fn run_input(server: &Server, args: &[&str], input: &str) -> Ran {
    run_at(&server.url(""), args, Some(input)).await
}

/// A long-running `herald` (`sub`, `task work`): stdout read line by line,
/// stderr gathered as it comes.
struct Running {
    what: String,
    child: Child,
    stdout: Lines<BufReader<ChildStdout>>,
    stderr: watch::Receiver<String>,
}

impl Running {
    fn start(server: &Server, args: &[&str]) -> Running {
        let what = format!("herald {}", args.join(" "));
        let mut child = herald(&server.url(""), args).spawn().expect("spawn herald");
        let stdout = BufReader::new(child.stdout.take().expect("stdout")).lines();
        let mut errors = BufReader::new(child.stderr.take().expect("stderr")).lines();
        let (tx, stderr) = watch::channel(String::new());
        tokio::spawn(async move {
            while let Ok(Some(line)) = errors.next_line().await {
                tx.send_modify(|all| {
                    all.push_str(&line);
                    all.push('\n');
                });
            }
        });
        Running {
            what,
            child,
            stdout,
            stderr,
        }
    }

    /// The next line of its stdout.
    async fn line(&mut self) -> String {
        let what = format!("a line from {}", self.what);
        match within(&what, self.stdout.next_line()).await {
            Ok(Some(line)) => line,
            other => panic!(
                "{} ended its output ({other:?}); stderr:\n{}",
                self.what,
                self.stderr.borrow().as_str()
            ),
        }
    }

    /// Waits until its stderr has said `needle`.
    async fn stderr_says(&self, needle: &str) {
        let mut rx = self.stderr.clone();
        let what = format!("{} to say {needle:?}", self.what);
        let said = within(&what, async {
            rx.wait_for(|s| s.contains(needle)).await.is_ok()
        })
        .await;
        assert!(
            said,
            "{} ended without saying {needle:?}; stderr:\n{}",
            self.what,
            self.stderr.borrow().as_str()
        );
    }

    /// Sends SIGINT, as Ctrl-C in a terminal does.
    fn interrupt(&self) {
        let pid = self.child.id().expect("still running").to_string();
        let sent = std::process::Command::new("kill")
            .args(["-INT", &pid])
            .status()
            .expect("kill -INT");
        assert!(sent.success(), "kill -INT {pid}");
    }

    /// Waits for it to exit; its exit status and the rest of its stdout.
    async fn finish(mut self) -> (ExitStatus, Vec<String>) {
        let mut rest = Vec::new();
        let what = format!("{} to close its output", self.what);
        while let Some(line) = within(&what, self.stdout.next_line())
            .await
            .expect("read stdout")
        {
            rest.push(line);
        }
        let what = format!("{} to exit", self.what);
        let status = within(&what, self.child.wait()).await.expect("wait");
        (status, rest)
    }

    /// Waits for it to exit 0 having printed nothing more.
    async fn succeeds(self) {
        let what = self.what.clone();
        let stderr = self.stderr.clone();
        let (status, rest) = self.finish().await;
        assert!(
            status.success() && rest.is_empty(),
            "{what}: {status}, then printed {rest:?}; stderr:\n{}",
            stderr.borrow().as_str()
        );
    }
}

/// Writes a `/bin/sh` script into `dir`; the path to run it by.
///
/// It is run as `sh PATH` rather than executed directly: executing a file
/// just written can fail with "text file busy" while another test thread
/// forks.
fn script(dir: &Path, name: &str, body: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, format!("#!/bin/sh\n{body}")).expect("write script");
    path.to_str().expect("utf-8 path").to_owned()
}

/// A task command: reads the payload, reports progress on stderr, prints a
/// result naming its task.
const ECHO: &str = r#"payload=$(cat)
echo "progress 0.5 halfway" >&2
echo "$HERALD_TASK_ID got: $payload"
"#;

fn gauge(transport: &str) -> String {
    format!("herald_subscriptions{{transport=\"{transport}\"}}")
}

// ---------------------------------------------------------------- pub/sub

/// `herald sub --via VIA --count 3 --json` prints exactly the three events
/// `herald pub` published (given as an argument, on stdin, and with an
/// event type), with the ids `pub` printed, and exits 0.
async fn pub_then_sub(via: &str) {
    let server = Server::start(&[]);
    let topic = format!("cli.{via}");
    let streaming = matches!(via, "sse" | "ws" | "stream");
    let mut sub = None;
    if streaming {
        let running = Running::start(
            &server,
            &["sub", &topic, "--via", via, "--count", "3", "--json"],
        );
        wait_for_metric(&server, &gauge(via), 1.0).await;
        sub = Some(running);
    }

    let first = run(&server, &["pub", &topic, "plain words"]).await.ok();
    let second = run_input(&server, &["pub", &topic, "-"], "from stdin\n")
        .await
        .ok();
    let third = run(
        &server,
        &["pub", &topic, r#"{"n":3}"#, "--event", "update", "--json"],
    )
    .await
    .ok();
    let receipt = third.json();
    assert_eq!(receipt["topic"], topic.as_str());
    assert_eq!(receipt["event"], "update");
    let published = [
        (first.line(), "message", "plain words"),
        (second.line(), "message", "from stdin"),
        (
            receipt["id"].as_str().expect("receipt id"),
            "update",
            r#"{"n":3}"#,
        ),
    ];

    let mut sub = match sub {
        Some(s) => s,
        None => Running::start(
            &server,
            &[
                "sub", &topic, "--via", via, "--since", "all", "--count", "3", "--json",
            ],
        ),
    };
    for (id, event, data) in published {
        let line = sub.line().await;
        let got: Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert_eq!(got["id"], id, "{line}");
        assert_eq!(got["topic"], topic.as_str(), "{line}");
        assert_eq!(got["event"], event, "{line}");
        assert_eq!(got["data"], data, "{line}");
        if via != "sse" {
            // SSE frames carry no time; every other transport does.
            let time = got["time"].as_str().expect("time");
            assert!(time.ends_with('Z'), "{line}");
            if event == "update" {
                assert_eq!(got["time"], receipt["time"], "{line}");
            }
        }
    }
    sub.succeeds().await;
}

#[tokio::test]
async fn sub_by_sse_prints_what_pub_published() {
    pub_then_sub("sse").await;
}

#[tokio::test]
async fn sub_by_websocket_prints_what_pub_published() {
    pub_then_sub("ws").await;
}

#[tokio::test]
async fn sub_by_ndjson_stream_prints_what_pub_published() {
    pub_then_sub("stream").await;
}

#[tokio::test]
async fn sub_by_long_poll_prints_what_pub_published() {
    pub_then_sub("long-poll").await;
}

#[tokio::test]
async fn sub_by_short_poll_prints_what_pub_published() {
    pub_then_sub("poll").await;
}

#[tokio::test]
async fn pub_prints_the_id_or_the_receipt_and_refuses_bad_names_clearly() {
    let server = Server::start(&[]);

    let id = run(&server, &["pub", "news", "hello"]).await.ok();
    let id = id.line();
    let receipt = run(&server, &["pub", "news", "again", "--json"])
        .await
        .ok()
        .json();
    let fields: Vec<&String> = receipt.as_object().expect("receipt").keys().collect();
    assert_eq!(fields, ["event", "id", "time", "topic"], "{receipt}");
    assert_eq!(receipt["topic"], "news");
    assert_eq!(receipt["event"], "message");
    assert!(receipt["time"].as_str().is_some_and(|t| t.ends_with('Z')));
    let stored = read_all(&server, "news").await;
    assert_eq!(stored.len(), 2);
    assert_eq!(stored[0]["id"], id);
    assert_eq!(stored[0]["data"], "hello");
    assert_eq!(stored[1]["id"], receipt["id"]);

    // Names the server refuses are refused, never turned into another
    // request: `news?x` must not publish to `news`.
    for topic in ["bad!topic", "news?x", "news#x", "a/b", "a b"] {
        run(&server, &["pub", topic, "data"])
            .await
            .refused(&["400", "bad_topic"]);
    }
    run(&server, &["pub", "news", "data", "--event", "a&b"])
        .await
        .refused(&["400", "bad_event_type"]);
    run(&server, &["sub", "news?x", "--via", "poll"])
        .await
        .refused(&["400", "bad_topic"]);
    run(&server, &["task", "submit", "q?x", "data"])
        .await
        .refused(&["400"]);
    assert_eq!(
        read_all(&server, "news").await.len(),
        2,
        "nothing more published"
    );
}

#[tokio::test]
async fn an_unreachable_or_unusable_server_is_an_error_not_a_panic() {
    // A port nobody listens on.
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        format!("http://{}", listener.local_addr().expect("addr"))
    };
    let (publish, submit, status) = tokio::join!(
        run_at(&closed, &["pub", "news", "hello"], None),
        run_at(&closed, &["task", "submit", "q", "x", "--wait"], None),
        run_at(&closed, &["task", "status", "some-id"], None),
    );
    for ran in [publish, submit, status] {
        ran.refused(&["transport", "connection refused"]);
    }
    run_at("ftp://127.0.0.1:1", &["pub", "news", "hello"], None)
        .await
        .refused(&["bad URL"]);
}

// ------------------------------------------------------------------ tasks

/// `herald task submit --wait --via VIA` with a `herald task work` worker
/// running a script: the script's stdout is printed and the exit is 0; the
/// task keeps the script's progress message, and its stored events show the
/// report as the script made it.
async fn submit_and_wait(via: &str, payload: &str, from_stdin: bool) {
    let server = Server::start(&[]);
    let dir = temp_dir();
    let echo = script(dir.path(), "echo.sh", ECHO);
    let queue = format!("cli.{via}");
    let mut worker = Running::start(&server, &["task", "work", &queue, "--", "sh", &echo]);

    let wait = [
        "task",
        "submit",
        &queue,
        "-",
        "--wait",
        "--via",
        via,
        "--timeout",
        "15s",
    ];
    let done = if from_stdin {
        run_input(&server, &wait, &format!("{payload}\n")).await
    } else {
        let mut args = wait;
        args[3] = payload;
        run(&server, &args).await
    };
    let result = done.ok().line().to_owned();
    let (id, said) = result.split_once(' ').expect("`ID got: PAYLOAD`");
    assert_eq!(said, format!("got: {payload}"));
    // The worker said what it did, on a line of its own.
    let ran = worker.line().await;
    assert!(ran.starts_with(&format!("{id} succeeded in ")), "{ran}");

    let task = run(&server, &["task", "status", id, "--json"])
        .await
        .ok()
        .json();
    assert_eq!(task["status"], "succeeded", "{task}");
    assert_eq!(task["result"], result.as_str(), "{task}");
    assert_eq!(task["message"], "halfway", "{task}");
    assert_eq!(task["progress"], 1.0, "finished: {task}");
    assert_eq!(task["attempts"], 1, "{task}");
    let human = run(&server, &["task", "status", id]).await.ok();
    assert!(
        human
            .stdout
            .starts_with(&format!("{id} succeeded 100% halfway\n")),
        "{human:?}"
    );

    // The report itself, as stored on the task's topic.
    let mut events = Running::start(
        &server,
        &[
            "sub",
            &format!("tasks.{id}"),
            "--via",
            "poll",
            "--since",
            "all",
            "--count",
            "2",
            "--json",
        ],
    );
    let progress: Value = serde_json::from_str(&events.line().await).expect("json");
    let last: Value = serde_json::from_str(&events.line().await).expect("json");
    events.succeeds().await;
    assert_eq!(progress["event"], "progress", "{progress}");
    let report: Value =
        serde_json::from_str(progress["data"].as_str().expect("data")).expect("json");
    assert_eq!(report, json!({ "progress": 0.5, "message": "halfway" }));
    assert_eq!(last["event"], "done", "{last}");
}

#[tokio::test]
async fn task_submit_waits_by_sse_and_prints_the_result() {
    submit_and_wait("sse", "a plain payload", false).await;
}

#[tokio::test]
async fn task_submit_waits_by_websocket_and_prints_the_result() {
    submit_and_wait("ws", "read from stdin", true).await;
}

#[tokio::test]
async fn task_submit_waits_by_long_poll_and_prints_the_result() {
    submit_and_wait("long-poll", r#"{"n":1}"#, false).await;
}

#[tokio::test]
async fn task_submit_waits_by_short_poll_and_prints_the_result() {
    submit_and_wait("poll", "polled for", false).await;
}

#[tokio::test]
async fn a_failing_command_is_retried_then_submit_exits_1() {
    let server = Server::start(&[]);
    let dir = temp_dir();
    let runs = dir.path().join("runs");
    let runs_arg = runs.to_str().expect("utf-8 path");
    let failing = script(
        dir.path(),
        "fail.sh",
        r#"cat > /dev/null
echo "attempt $HERALD_TASK_ATTEMPT" >> "$1"
echo "it broke" >&2
exit 1
"#,
    );
    let mut worker = Running::start(
        &server,
        &["task", "work", "flaky", "--", "sh", &failing, runs_arg],
    );

    let human = run(
        &server,
        &[
            "task",
            "submit",
            "flaky",
            "x",
            "--wait",
            "--via",
            "long-poll",
            "--backoff",
            "none",
        ],
    )
    .await
    .exited(1);
    assert_eq!(human.stdout, "");
    assert!(
        human.stderr.contains(" failed ") && human.stderr.contains("it broke"),
        "{human:?}"
    );
    // The server's default is 3 attempts: the command ran 3 times.
    let ran = std::fs::read_to_string(&runs).expect("runs file");
    assert_eq!(ran, "attempt 1\nattempt 2\nattempt 3\n");
    // One line per attempt from the worker; the last one is not retried.
    for (n, next) in [(1, "; to be retried"), (2, "; to be retried"), (3, "")] {
        let line = worker.line().await;
        let want = format!(" failed (attempt {n} of 3{next}): exit status: 1: it broke in ");
        assert!(line.contains(&want), "{line}");
    }

    // With --json the failed task is printed, still exit 1.
    std::fs::remove_file(&runs).expect("rm runs");
    let task = run(
        &server,
        &[
            "task",
            "submit",
            "flaky",
            "y",
            "--wait",
            "--via",
            "sse",
            "--json",
            "--backoff",
            "1ms",
        ],
    )
    .await
    .exited(1)
    .json();
    assert_eq!(task["status"], "failed", "{task}");
    assert_eq!(task["attempts"], 3, "{task}");
    assert_eq!(task["max_attempts"], 3, "{task}");
    let error = task["error"].as_str().expect("error");
    assert!(error.contains("it broke"), "{task}");
    let ran = std::fs::read_to_string(&runs).expect("runs file");
    assert_eq!(ran.lines().count(), 3, "{ran}");
}

#[tokio::test]
async fn task_submit_wait_times_out_with_124_by_every_transport() {
    let server = Server::start(&[]);
    let waits = ["sse", "ws", "long-poll", "poll"].map(|via| {
        let server = &server;
        async move {
            let started = Instant::now();
            let ran = run(
                server,
                &[
                    "task",
                    "submit",
                    "nobody-works-here",
                    via,
                    "--wait",
                    "--via",
                    via,
                    "--timeout",
                    "1s",
                ],
            )
            .await;
            (ran, started.elapsed())
        }
    });
    for (ran, took) in join_all(waits).await {
        assert!(
            took >= Duration::from_secs(1),
            "gave up after {took:?}: {ran:?}"
        );
        let ran = ran.exited(TIMED_OUT);
        assert_eq!(ran.stdout, "", "{ran:?}");
        assert!(ran.stderr.contains("did not finish in time"), "{ran:?}");
    }
}

#[tokio::test]
async fn task_status_and_cancel() {
    let server = Server::start(&[]);
    let queued = run(&server, &["task", "submit", "idle", "to be cancelled"])
        .await
        .ok();
    let id = queued.line();
    let other = run(&server, &["task", "submit", "idle", "{\"k\":1}", "--json"])
        .await
        .ok()
        .json();
    assert_eq!(other["status"], "queued", "{other}");
    assert_eq!(other["payload"], json!({ "k": 1 }), "{other}");
    assert_eq!(other["position"], 2, "{other}");

    let status = run(&server, &["task", "status", id]).await.ok();
    assert_eq!(status.line(), format!("{id} queued (position 1)"));
    let task = run(&server, &["task", "status", id, "--json"])
        .await
        .ok()
        .json();
    assert_eq!(task["status"], "queued", "{task}");
    assert_eq!(task["payload"], "to be cancelled", "{task}");
    assert_eq!(task["queue"], "idle", "{task}");

    let cancelled = run(&server, &["task", "cancel", id]).await.ok();
    assert_eq!(cancelled.line(), format!("{id} cancelled"));
    let task = run(&server, &["task", "status", id, "--json"])
        .await
        .ok()
        .json();
    assert_eq!(task["status"], "cancelled", "{task}");

    run(&server, &["task", "cancel", id])
        .await
        .refused(&["409", "already cancelled"]);
    let other_id = other["id"].as_str().expect("id");
    let cancelled = run(&server, &["task", "cancel", other_id, "--json"])
        .await
        .ok()
        .json();
    assert_eq!(cancelled["status"], "cancelled", "{cancelled}");

    run(
        &server,
        &["task", "status", "01890000-0000-7000-8000-000000000000"],
    )
    .await
    .refused(&["404"]);
}

// ----------------------------------------------------------------- tokens

/// The claims of `token`, checked with `secret` as a server would check
/// them (HS256 only, `iss` and `aud` when asked).
fn claims_of(token: &str, secret: &str, iss: Option<&str>, aud: Option<&str>) -> Value {
    use jsonwebtoken::{Algorithm, DecodingKey, Validation, decode, decode_header};
    let header = decode_header(token).unwrap_or_else(|e| panic!("{e}: {token}"));
    assert_eq!(header.alg, Algorithm::HS256);
    let mut validation = Validation::new(Algorithm::HS256);
    validation.required_spec_claims.clear();
    if let Some(iss) = iss {
        validation.set_issuer(&[iss]);
    }
    match aud {
        Some(aud) => validation.set_audience(&[aud]),
        None => validation.validate_aud = false,
    }
    let key = DecodingKey::from_secret(secret.as_bytes()).expect("a secret");
    decode::<Value>(token, &key, &validation)
        .unwrap_or_else(|e| panic!("{e}: {token}"))
        .claims
}

fn unix_now() -> i64 {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_secs();
    i64::try_from(secs).expect("seconds fit")
}

#[tokio::test]
async fn token_prints_an_hs256_jwt_with_the_asked_claims() {
    let nowhere = "http://127.0.0.1:1";
    let ran = run_at(
        nowhere,
        &[
            "token",
            "--secret",
            "e2e-secret",
            "--publish",
            "news",
            "--publish",
            "chat.*",
            "--subscribe",
            "*",
            "--enqueue",
            "images",
            "--work",
            "images",
            "--admin",
            "--sub",
            "alice",
            "--ttl",
            "2h",
            "--issuer",
            "me",
            "--audience",
            "herald",
        ],
        None,
    )
    .await
    .ok();
    let token = ran.line();
    let claims = claims_of(token, "e2e-secret", Some("me"), Some("herald"));
    assert_eq!(
        claims["herald"],
        json!({"publish": ["news", "chat.*"], "subscribe": ["*"], "enqueue": ["images"],
               "work": ["images"], "admin": true}),
        "{claims}"
    );
    assert_eq!(claims["sub"], "alice");
    let iat = claims["iat"].as_i64().expect("iat");
    assert!((iat - unix_now()).abs() < 60, "{claims}");
    assert_eq!(claims["exp"].as_i64(), Some(iat + 7200), "{claims}");

    // Another secret does not verify it.
    let other = jsonwebtoken::DecodingKey::from_secret(b"other").expect("a secret");
    let mut lax = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256);
    lax.validate_aud = false;
    assert!(jsonwebtoken::decode::<Value>(token, &other, &lax).is_err());

    // The secret from the environment; --ttl off: no exp; only what was asked.
    let out = herald(nowhere, &["token", "--subscribe", "news", "--ttl", "off"])
        .env("HERALD_AUTH_JWT_SECRET", "from-env")
        .output()
        .await
        .expect("herald token");
    assert!(out.status.success(), "{out:?}");
    let token = String::from_utf8(out.stdout).expect("utf-8");
    let claims = claims_of(token.trim(), "from-env", None, None);
    assert_eq!(claims["herald"], json!({"subscribe": ["news"]}), "{claims}");
    assert!(
        claims.get("exp").is_none() && claims.get("sub").is_none(),
        "{claims}"
    );

    run_at(
        nowhere,
        &["token", "--secret", "s", "--publish", "a*b"],
        None,
    )
    .await
    .refused(&["--publish", "a*b"]);
    run_at(nowhere, &["token", "--secret", "s", "--ttl", "soon"], None)
        .await
        .refused(&["--ttl"]);
}

/// A server that answers every request `401` and hands over each request
/// head it read.
async fn refusing_server() -> (String, tokio::sync::mpsc::UnboundedReceiver<String>) {
    use tokio::io::AsyncReadExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0_u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match socket.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = tx.send(String::from_utf8_lossy(&head).into_owned());
                let body = r#"{"error":{"code":"unauthorized","message":"no"}}"#;
                let answer = format!(
                    "HTTP/1.1 401 Unauthorized\r\ncontent-type: application/json\r\nwww-authenticate: Bearer\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = socket.write_all(answer.as_bytes()).await;
            });
        }
    });
    (url, rx)
}

#[tokio::test]
async fn client_commands_send_the_token_by_flag_or_environment() {
    let (url, mut heads) = refusing_server().await;
    let mut next_head = async || {
        within("a request head", heads.recv())
            .await
            .expect("a request")
            .to_ascii_lowercase()
    };
    run_at(&url, &["pub", "news", "hi", "--token", "flag.t.t"], None)
        .await
        .refused(&["401", "unauthorized"]);
    let head = next_head().await;
    assert!(
        head.contains("authorization: bearer flag.t.t\r\n"),
        "{head}"
    );

    // The environment, and a WebSocket handshake.
    // `--since all`: no poll first to learn where `now` is.
    let out = herald(&url, &["sub", "news", "--via", "ws", "--since", "all"])
        .env("HERALD_TOKEN", "env.t.t")
        .output();
    let out = within("herald sub", out).await.expect("herald sub");
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let head = next_head().await;
    assert!(head.starts_with("get /topics/news"), "{head}");
    assert!(head.contains("upgrade: websocket"), "{head}");
    assert!(head.contains("authorization: bearer env.t.t\r\n"), "{head}");
}

// ------------------------------------------------------------ help, Ctrl-C

#[tokio::test]
async fn every_command_has_help_with_an_example() {
    let commands: [&[&str]; 10] = [
        &[],
        &["serve"],
        &["token"],
        &["pub"],
        &["sub"],
        &["task"],
        &["task", "submit"],
        &["task", "status"],
        &["task", "cancel"],
        &["task", "work"],
    ];
    let helps = commands.map(|command| async move {
        let mut args = command.to_vec();
        args.push("--help");
        run_at("http://127.0.0.1:1", &args, None).await
    });
    for help in join_all(helps).await {
        let help = help.ok();
        assert!(help.stdout.contains("Usage: herald"), "{help:?}");
        assert!(help.stdout.contains("Example"), "{help:?}");
    }
}

#[tokio::test]
async fn ctrl_c_stops_a_subscriber_cleanly_on_every_streaming_transport() {
    let server = Server::start(&[]);
    let vias = ["sse", "ws", "stream", "long-poll"];
    let subs: Vec<Running> = vias
        .iter()
        .map(|via| Running::start(&server, &["sub", "quiet", "--via", via]))
        .collect();
    for via in vias {
        wait_for_metric(&server, &gauge(via), 1.0).await;
    }
    for sub in &subs {
        sub.interrupt();
    }
    for sub in subs {
        sub.succeeds().await;
    }
    for via in vias {
        wait_for_metric(&server, &gauge(via), 0.0).await;
    }
}

#[tokio::test]
async fn ctrl_c_lets_a_worker_finish_its_running_task_then_exit_cleanly() {
    let server = Server::start(&[]);
    let dir = temp_dir();
    let go = dir.path().join("go");
    let slow = script(
        dir.path(),
        "slow.sh",
        r#"cat > /dev/null
echo "progress 0.1 started" >&2
i=0
while [ ! -e "$1" ]; do
  i=$((i + 1))
  if [ "$i" -gt 300 ]; then echo "no go-ahead within 15s" >&2; exit 1; fi
  sleep 0.05
done
echo finished
"#,
    );
    let worker = Running::start(
        &server,
        &[
            "task",
            "work",
            "slow",
            "--",
            "sh",
            &slow,
            go.to_str().expect("utf-8 path"),
        ],
    );
    let submitted = run(&server, &["task", "submit", "slow", "job"]).await.ok();
    let id = submitted.line();

    // The task's first stored event is the script's report: it is running.
    let started = run(
        &server,
        &[
            "sub",
            &format!("tasks.{id}"),
            "--via",
            "long-poll",
            "--since",
            "all",
            "--count",
            "1",
            "--json",
        ],
    )
    .await
    .ok()
    .json();
    assert_eq!(started["event"], "progress", "{started}");

    worker.interrupt();
    worker.stderr_says("stopping after the running tasks").await;
    std::fs::write(&go, "").expect("touch go");
    // It exits 0, having said how the task it finished went.
    let (status, rest) = worker.finish().await;
    assert!(status.success(), "{status}");
    assert!(
        rest.len() == 1 && rest[0].starts_with(&format!("{id} succeeded in ")),
        "{rest:?}"
    );

    let task = run(&server, &["task", "status", id, "--json"])
        .await
        .ok()
        .json();
    assert_eq!(task["status"], "succeeded", "{task}");
    assert_eq!(task["result"], "finished", "{task}");
}
