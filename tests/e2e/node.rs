//! A WHATWG EventSource nobody here wrote — Node's `eventsource` npm package,
//! driven by `tests/node/follow.mjs` — against the real server: the server
//! ends every stream after a while (`--max-stream-age`), the client
//! reconnects by itself with `Last-Event-ID`, and still sees every event
//! exactly once, in order. A second test does the same across graceful
//! restarts of a server with a durable store.
//!
//! The founding article's task-queue client (`tests/node/queue.mjs`: plain
//! `fetch` and the same EventSource) waits on `/api/queue` by long poll,
//! short poll and SSE while a worker, played here with reqwest, claims the
//! task and completes or fails it.
//!
//! Needs `node` (>= 20) on PATH and `tests/node/node_modules` (installed here
//! with `npm ci` when missing). Without them each test prints `SKIPPED:` and
//! passes, unless `HERALD_STRICT_TESTS` is set (CI sets it): then it fails.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};

use crate::harness::{Server, metric, publish, temp_dir, within};

/// `tests/node`: package.json, package-lock.json and the scripts.
fn node_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("node")
}

/// A usable Node with the test package's dependencies installed.
#[derive(Debug)]
pub struct NodeEnv {
    pub node: PathBuf,
    pub dir: PathBuf,
}

/// Checks for Node and installs `tests/node` once per test process; every
/// test that needs Node shares the outcome (`OnceLock` runs the check once
/// and makes concurrent callers wait for it).
fn node_env() -> &'static Result<NodeEnv, String> {
    static ENV: OnceLock<Result<NodeEnv, String>> = OnceLock::new();
    ENV.get_or_init(prepare_node)
}

fn prepare_node() -> Result<NodeEnv, String> {
    let node = PathBuf::from("node");
    let out = std::process::Command::new(&node)
        .arg("--version")
        .output()
        .map_err(|e| format!("`node` not found on PATH ({e})"))?;
    if !out.status.success() {
        return Err(format!("`node --version` failed: {}", out.status));
    }
    let version = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let major: u32 = version
        .trim_start_matches('v')
        .split('.')
        .next()
        .and_then(|m| m.parse().ok())
        .ok_or_else(|| format!("cannot read node version {version:?}"))?;
    if major < 20 {
        return Err(format!(
            "node {version} is too old (the `eventsource` package needs >= 20)"
        ));
    }

    let dir = node_dir();
    if !installed(&dir) {
        let out = std::process::Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund", "--prefix"])
            .arg(&dir)
            .output()
            .map_err(|e| {
                format!("tests/node/node_modules is missing and `npm` was not found ({e})")
            })?;
        if !out.status.success() {
            return Err(format!(
                "`npm ci --prefix tests/node` failed ({}):\n{}{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        if !installed(&dir) {
            return Err("`npm ci --prefix tests/node` left no usable node_modules".into());
        }
    }
    Ok(NodeEnv { node, dir })
}

/// Whether `node_modules` holds every dependency at the version
/// package.json pins.
fn installed(dir: &Path) -> bool {
    let read =
        |p: PathBuf| -> Option<Value> { serde_json::from_slice(&std::fs::read(p).ok()?).ok() };
    let Some(manifest) = read(dir.join("package.json")) else {
        return false;
    };
    let Some(dependencies) = manifest["dependencies"].as_object() else {
        return false;
    };
    dependencies.iter().all(|(name, pinned)| {
        read(dir.join("node_modules").join(name).join("package.json"))
            .is_some_and(|module| module["version"] == *pinned)
    })
}

/// The Node environment, or `None` after a loud `SKIPPED:` line; with
/// `HERALD_STRICT_TESTS` set, a missing environment fails the test instead.
pub fn node_or_skip(test: &str) -> Option<&'static NodeEnv> {
    match node_env() {
        Ok(env) => Some(env),
        Err(why) if std::env::var_os("HERALD_STRICT_TESTS").is_some() => {
            panic!(
                "{test}: Node test environment unavailable and HERALD_STRICT_TESTS is set: {why}"
            )
        }
        Err(why) => {
            eprintln!("SKIPPED: {test}: {why} (set HERALD_STRICT_TESTS to make this a failure)");
            None
        }
    }
}

const EVENTS: usize = 60;

/// What test event `i` publishes: `e{i}`, some with multi-line data.
fn payload(i: usize) -> String {
    match i {
        7 => "e7\nline2".into(),
        15 => "e15 ünïcødé ✓ \"quoted\"".into(),
        23 => "e23\r\nline2\rline3".into(),
        41 => "e41\n".into(),
        50 => "e50\n\nline3".into(),
        _ => format!("e{i}"),
    }
}

/// What an EventSource hands back for `payload(i)`: the same text with every
/// line end (CR LF, CR, LF) turned into LF.
fn expected_data(i: usize) -> String {
    payload(i).replace("\r\n", "\n").replace('\r', "\n")
}

/// A running `follow.mjs`: its stdout is `ready`, then progress lines (`got
/// ID` per message, `error [MESSAGE]` per lost stream or failed connect), then
/// the JSON report.
struct Follower {
    child: Child,
    lines: Lines<BufReader<ChildStdout>>,
}

/// What `follow.mjs` reports once it has every message it waited for.
struct Report {
    events: Vec<(String, String)>,
    opens: u64,
    gaps: Value,
}

impl Follower {
    /// Starts `follow.mjs` on `url` for `count` messages and waits until its
    /// EventSource is connected.
    async fn start(env: &NodeEnv, url: &str, count: usize) -> Follower {
        let mut child = Command::new(&env.node)
            .arg(env.dir.join("follow.mjs"))
            .arg(url)
            .arg(count.to_string())
            .current_dir(&env.dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn node follow.mjs");
        let lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        let mut follower = Follower { child, lines };
        let first = within("the EventSource to open", follower.next_line())
            .await
            .expect("follow.mjs exited before it connected");
        assert_eq!(first, "ready");
        follower
    }

    /// The next line of stdout; `None` once follow.mjs has closed it.
    async fn next_line(&mut self) -> Option<String> {
        self.lines
            .next_line()
            .await
            .expect("read follow.mjs stdout")
    }

    /// Reads progress lines until follow.mjs says it received `id`.
    async fn received(&mut self, id: &str) {
        within(&format!("follow.mjs to receive {id}"), async {
            loop {
                let line = self
                    .next_line()
                    .await
                    .unwrap_or_else(|| panic!("follow.mjs exited before it received {id}"));
                match line.strip_prefix("got ") {
                    Some(got) if got == id => return,
                    Some(_) => {}
                    None if is_error(&line) => {}
                    None => panic!("follow.mjs printed {line:?} before it received {id}"),
                }
            }
        })
        .await;
    }

    /// Reads progress lines until follow.mjs reports a refused connection
    /// attempt; returns the `error` lines up to and including that one. No
    /// message may arrive meanwhile.
    async fn refused(&mut self) -> Vec<String> {
        within("the EventSource to be refused", async {
            let mut errors = Vec::new();
            loop {
                let line = self
                    .next_line()
                    .await
                    .expect("follow.mjs exited while waiting to be refused");
                assert!(
                    is_error(&line),
                    "follow.mjs printed {line:?} while the server was down"
                );
                let refused = line.contains("ECONNREFUSED");
                errors.push(line);
                if refused {
                    return errors;
                }
            }
        })
        .await
    }

    /// Skips the remaining progress lines, reads the report and waits for
    /// follow.mjs to exit successfully.
    async fn report(mut self) -> Report {
        let line = within("follow.mjs to report", async {
            loop {
                match self.next_line().await {
                    Some(line) if line.starts_with("got ") || is_error(&line) => {}
                    Some(line) => return line,
                    None => panic!("follow.mjs exited without a report"),
                }
            }
        })
        .await;
        let status = within("follow.mjs to exit", self.child.wait())
            .await
            .expect("wait for follow.mjs");
        assert!(status.success(), "follow.mjs: {status}");

        let report: Value = serde_json::from_str(&line).expect("follow.mjs report is JSON");
        let events = report["events"]
            .as_array()
            .expect("events")
            .iter()
            .map(|e| {
                let id = e["id"].as_str().expect("id").to_owned();
                (id, e["data"].as_str().expect("data").to_owned())
            })
            .collect();
        Report {
            events,
            opens: report["opens"].as_u64().expect("opens"),
            gaps: report["gaps"].clone(),
        }
    }
}

/// Whether `line` is follow.mjs's `error` progress line.
fn is_error(line: &str) -> bool {
    line == "error" || line.starts_with("error ")
}

impl Report {
    /// Asserts that the client saw exactly `want` (id, data), in order and
    /// once each, no gap, over at least `min_opens` connections.
    fn check(&self, want: &[(String, String)], min_opens: u64, why_opens: &str) {
        let got = &self.events;
        let opens = self.opens;
        eprintln!(
            "node eventsource: {} events over {opens} connections",
            got.len()
        );
        let missing: Vec<&String> = want
            .iter()
            .filter(|w| !got.contains(w))
            .map(|(_, d)| d)
            .collect();
        let mut repeated: Vec<&String> = got
            .iter()
            .filter(|g| got.iter().filter(|o| o == g).count() > 1)
            .map(|(_, d)| d)
            .collect();
        repeated.dedup();
        assert_eq!(
            got,
            want,
            "events differ: {} received for {} published; missing {missing:?}; duplicated {repeated:?}",
            got.len(),
            want.len()
        );
        assert!(
            self.gaps.as_array().is_some_and(|g| g.is_empty()),
            "the server reported a gap to a client that held a retained cursor: {}",
            self.gaps
        );
        assert!(
            opens >= min_opens,
            "only {opens} connection(s), wanted at least {min_opens}: {why_opens}"
        );
    }
}

#[tokio::test]
async fn node_eventsource_resumes_exactly_once_across_server_drops() {
    let Some(env) = node_or_skip("node_eventsource_resumes_exactly_once_across_server_drops")
    else {
        return;
    };
    let server = Server::start(&["--max-stream-age", "700ms", "--retry", "100ms"]);
    let follower = Follower::start(env, &server.url("/topics/feed?transport=sse"), EVENTS).await;

    // Publish in 6 groups of 10 with different spacing, so that events land
    // both on live streams and while the client is between connections. The
    // sleeps only pace the publisher; no assertion depends on timing.
    let mut want = Vec::with_capacity(EVENTS);
    for i in 0..EVENTS {
        let id = publish(&server, "feed", &payload(i)).await;
        want.push((id, expected_data(i)));
        let group = i / 10;
        let pause = if i % 10 == 9 { 250 } else { 30 * group as u64 };
        tokio::time::sleep(Duration::from_millis(pause)).await;
    }

    follower.report().await.check(
        &want,
        2,
        "the client never reconnected, so the drops were not exercised",
    );
}

/// Events published per round of the restart test; a graceful restart
/// separates the rounds.
const PER_ROUND: usize = 10;
const ROUNDS: usize = 3;

const SSE_GAUGE: &str = "herald_subscriptions{transport=\"sse\"}";

/// Sends SIGTERM and waits, at most [`PATIENCE`](crate::harness::PATIENCE),
/// for `server` to exit 0. `Child::wait` blocks, so the wait runs on a thread
/// of its own: a server that never exits fails the test (and is left
/// running) instead of hanging it.
async fn stop_gracefully(mut server: Server) -> Server {
    server.terminate();
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let status = server.wait();
        let _ = tx.send((server, status));
    });
    let (server, status) = within("herald to exit after SIGTERM", rx)
        .await
        .expect("the waiting thread answers");
    assert!(status.success(), "graceful shutdown exits 0, not {status}");
    server
}

#[tokio::test]
async fn node_eventsource_resumes_across_a_server_restart() {
    let Some(env) = node_or_skip("node_eventsource_resumes_across_a_server_restart") else {
        return;
    };
    let dir = temp_dir();
    let mut server = Server::start_in(dir.path(), &["--retry", "100ms"]);
    let mut follower = Follower::start(
        env,
        &server.url("/topics/restart?transport=sse"),
        ROUNDS * PER_ROUND,
    )
    .await;

    // Round 0 goes to a connected client. Before each later round the server
    // stops gracefully, which ends the stream cleanly; the test waits until
    // the client's reconnect has been refused, then starts the server again
    // on the same address and data directory and publishes the round at once,
    // most likely before the client's next attempt. After each round the test
    // waits until the client has it, so that every restart leaves the client
    // holding a cursor to resume from.
    let mut want = Vec::with_capacity(ROUNDS * PER_ROUND);
    for round in 0..ROUNDS {
        let started = Instant::now();
        if round > 0 {
            server = stop_gracefully(server).await;
            let errors = follower.refused().await;
            assert_eq!(
                errors[0], "error",
                "the first thing the client saw of the shutdown was not a clean end of stream: {errors:?}"
            );
            server.start_again();
            eprintln!(
                "restart {round}: server down for {:?}; the client saw {errors:?}",
                started.elapsed()
            );
        }
        // Publishes acknowledged while no SSE subscription was open in this
        // process, i.e. while the client was surely away.
        let mut away = 0;
        for i in round * PER_ROUND..(round + 1) * PER_ROUND {
            let id = publish(&server, "restart", &payload(i)).await;
            want.push((id, expected_data(i)));
            if round > 0 && metric(&server, SSE_GAUGE).await == 0.0 {
                away += 1;
            }
        }
        follower.received(&want.last().expect("published").0).await;
        eprintln!(
            "round {round}: {away}/{PER_ROUND} published while the client was away; \
             the client had the round {:?} after the round began",
            started.elapsed()
        );
    }

    follower.report().await.check(
        &want,
        ROUNDS as u64,
        "the client did not reconnect after every restart",
    );
}

/// Worker and client calls for the `/api/queue` tests.
mod queue {
    use serde_json::{Value, json};

    use crate::harness::{Server, client};

    /// `POST /api/queue` with a JSON payload; the new task's id.
    pub async fn enqueue(server: &Server, payload: &Value) -> String {
        let r = client()
            .post(server.url("/api/queue"))
            .header("content-type", "application/json")
            .body(payload.to_string())
            .send()
            .await
            .expect("POST /api/queue");
        assert_eq!(r.status(), 200, "POST /api/queue");
        let v: Value = r.json().await.expect("POST /api/queue answer");
        v["id"]
            .as_str()
            .unwrap_or_else(|| panic!("POST /api/queue answered {v} without an id"))
            .to_owned()
    }

    /// A claimed task: its id and lease token.
    pub struct Claimed {
        pub id: String,
        token: Option<String>,
    }

    /// Claims the next task of queue `default`, which must be `want`.
    pub async fn claim(server: &Server, want: &str) -> Claimed {
        let r = client()
            .post(server.url("/queues/default/claim?wait=5&lease=30"))
            .send()
            .await
            .expect("claim");
        assert_eq!(r.status(), 200, "claim on queue default (wanted {want})");
        let v: Value = r.json().await.expect("claim answer");
        let id = v["task"]["id"]
            .as_str()
            .expect("claimed task id")
            .to_owned();
        assert_eq!(id, want, "claimed the wrong task: {v}");
        assert_eq!(v["task"]["status"], "running", "claimed task: {v}");
        Claimed {
            id,
            token: v["lease"]["token"].as_str().map(str::to_owned),
        }
    }

    /// `POST /tasks/{id}/{action}` as the lease holder, with a JSON body.
    async fn call(server: &Server, task: &Claimed, action: &str, body: &Value) {
        let mut req = client()
            .post(server.url(&format!("/tasks/{}/{action}", task.id)))
            .header("content-type", "application/json")
            .body(body.to_string());
        if let Some(token) = &task.token {
            req = req.header("herald-lease", token);
        }
        let r = req.send().await.expect(action);
        let status = r.status();
        let text = r.text().await.unwrap_or_default();
        assert_eq!(status, 200, "POST /tasks/{}/{action}: {text}", task.id);
    }

    pub async fn progress(server: &Server, task: &Claimed) {
        call(
            server,
            task,
            "progress",
            &json!({"progress": 0.5, "message": "half"}),
        )
        .await;
    }

    pub async fn complete(server: &Server, task: &Claimed, result: &Value) {
        call(server, task, "complete", result).await;
    }

    pub async fn fail(server: &Server, task: &Claimed) {
        call(
            server,
            task,
            "fail",
            &json!({"error": "boom", "retry": false}),
        )
        .await;
    }
}

/// A running `queue.mjs` — the founding article's task-queue client. Its
/// stdout is `ready`, then progress lines (`request STATUS` per poll
/// response, `wait N` per SSE `wait` event), then the JSON report.
struct QueueClient {
    child: Child,
    lines: Lines<BufReader<ChildStdout>>,
    /// Every progress line read so far.
    seen: Vec<String>,
}

impl QueueClient {
    /// Starts `node queue.mjs BASE MODE ID` and waits until it is waiting.
    async fn start(env: &NodeEnv, server: &Server, mode: &str, id: &str) -> QueueClient {
        let mut child = Command::new(&env.node)
            .arg(env.dir.join("queue.mjs"))
            .arg(server.url(""))
            .arg(mode)
            .arg(id)
            .current_dir(&env.dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn node queue.mjs");
        let lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        let mut client = QueueClient {
            child,
            lines,
            seen: Vec::new(),
        };
        let first = within(&format!("queue.mjs {mode} to start waiting"), async {
            client
                .lines
                .next_line()
                .await
                .expect("read queue.mjs stdout")
        })
        .await
        .expect("queue.mjs exited before it started waiting");
        assert_eq!(first, "ready");
        client
    }

    /// Reads progress lines until queue.mjs prints `want`.
    async fn until(&mut self, want: &str) {
        within(&format!("queue.mjs to print {want:?}"), async {
            loop {
                let line = self
                    .lines
                    .next_line()
                    .await
                    .expect("read queue.mjs stdout")
                    .unwrap_or_else(|| {
                        panic!(
                            "queue.mjs exited before {want:?}; it printed {:?}",
                            self.seen
                        )
                    });
                assert!(
                    !line.starts_with('{'),
                    "queue.mjs finished before {want:?}: {line}; progress {:?}",
                    self.seen
                );
                let done = line == want;
                self.seen.push(line);
                if done {
                    return;
                }
            }
        })
        .await;
    }

    /// Reads the remaining progress lines and the report, waits for
    /// queue.mjs to exit 0; the report and every progress line.
    async fn report(mut self) -> (Value, Vec<String>) {
        let line = within("queue.mjs to report", async {
            loop {
                match self.lines.next_line().await.expect("read queue.mjs stdout") {
                    Some(line) if line.starts_with('{') => return line,
                    Some(line) => self.seen.push(line),
                    None => panic!(
                        "queue.mjs exited without a report; it printed {:?}",
                        self.seen
                    ),
                }
            }
        })
        .await;
        let status = within("queue.mjs to exit", self.child.wait())
            .await
            .expect("wait for queue.mjs");
        assert!(status.success(), "queue.mjs: {status}");
        let report = serde_json::from_str(&line).expect("queue.mjs report is JSON");
        (report, self.seen)
    }
}

/// The `request STATUS` progress lines as statuses.
fn statuses(seen: &[String]) -> Vec<u16> {
    seen.iter()
        .filter_map(|l| l.strip_prefix("request "))
        .map(|s| s.parse().expect("status"))
        .collect()
}

/// Asserts that a poll client made `≥ 2` requests, each answered `pending`
/// but the last, which was `200`.
fn check_polls(mode: &str, report: &Value, seen: &[String], pending: u16) {
    let got = statuses(seen);
    assert_eq!(
        report["requests"].as_u64(),
        Some(got.len() as u64),
        "{mode}: report {report} disagrees with progress {seen:?}"
    );
    assert!(got.len() >= 2, "{mode}: the client never waited: {got:?}");
    let (last, before) = got.split_last().expect("requests");
    assert_eq!(*last, 200, "{mode}: last answer: {got:?}");
    assert!(
        before.iter().all(|&s| s == pending),
        "{mode}: every answer before the result is {pending}: {got:?}"
    );
}

/// Asserts that `task` is `id`, succeeded with `result`.
fn check_succeeded(mode: &str, task: &Value, id: &str, result: &Value) {
    assert_eq!(
        task["id"], id,
        "{mode}: the client got another task: {task}"
    );
    assert_eq!(task["status"], "succeeded", "{mode}: {task}");
    assert_eq!(&task["result"], result, "{mode}: {task}");
}

#[tokio::test]
async fn article_client_waits_by_long_poll_short_poll_and_sse() {
    let Some(env) = node_or_skip("article_client_waits_by_long_poll_short_poll_and_sse") else {
        return;
    };
    let server = Server::start(&[]);

    // Long poll, `ttl=300`: at least one `408` comes before the worker
    // finishes, and the client asks again.
    let started = Instant::now();
    let id = queue::enqueue(&server, &json!({"n": 1})).await;
    let mut waiter = QueueClient::start(env, &server, "long", &id).await;
    waiter.until("request 408").await;
    let task = queue::claim(&server, &id).await;
    let result = json!({"mode": "long", "answer": 42});
    queue::complete(&server, &task, &result).await;
    let (report, seen) = waiter.report().await;
    check_succeeded("long", &report["task"], &id, &result);
    check_polls("long", &report, &seen, 408);
    eprintln!("long poll: {seen:?} in {:?}", started.elapsed());

    // Short poll: `204` while pending, then `200` with the task.
    let started = Instant::now();
    let id = queue::enqueue(&server, &json!({"n": 1})).await;
    let mut waiter = QueueClient::start(env, &server, "short", &id).await;
    waiter.until("request 204").await;
    let task = queue::claim(&server, &id).await;
    queue::progress(&server, &task).await;
    let result = json!({"mode": "short", "answer": 43});
    queue::complete(&server, &task, &result).await;
    let (report, seen) = waiter.report().await;
    check_succeeded("short", &report["task"], &id, &result);
    check_polls("short", &report, &seen, 204);
    eprintln!(
        "short poll: {} requests in {:?}",
        seen.len(),
        started.elapsed()
    );

    // SSE: a blocker ahead puts the task at position 2; claiming the
    // blocker moves it to 1; then it runs and succeeds.
    let started = Instant::now();
    let blocker = queue::enqueue(&server, &json!({"n": 0})).await;
    let id = queue::enqueue(&server, &json!({"n": 1})).await;
    let mut waiter = QueueClient::start(env, &server, "sse", &id).await;
    waiter.until("wait 2").await;
    let first = queue::claim(&server, &blocker).await;
    waiter.until("wait 1").await;
    let task = queue::claim(&server, &id).await;
    queue::progress(&server, &task).await;
    let result = json!({"mode": "sse", "answer": 44});
    queue::complete(&server, &task, &result).await;
    let (report, seen) = waiter.report().await;
    check_succeeded("sse", &report["task"], &id, &result);
    assert_eq!(
        report["waits"],
        json!([2, 1]),
        "sse: the queue positions the client saw"
    );
    assert_eq!(report["requests"], Value::Null);
    queue::complete(&server, &first, &json!("blocker done")).await;
    eprintln!("sse: {seen:?} in {:?}", started.elapsed());
}

#[tokio::test]
async fn article_sse_client_sees_error_for_a_failed_task() {
    let Some(env) = node_or_skip("article_sse_client_sees_error_for_a_failed_task") else {
        return;
    };
    let server = Server::start(&[]);
    let started = Instant::now();
    let id = queue::enqueue(&server, &json!({"n": 1})).await;
    let mut waiter = QueueClient::start(env, &server, "sse", &id).await;
    waiter.until("wait 1").await;
    let task = queue::claim(&server, &id).await;
    queue::fail(&server, &task).await;
    let (report, seen) = waiter.report().await;
    let task = &report["task"];
    assert_eq!(task["id"], id, "the client got another task: {task}");
    assert_eq!(task["status"], "failed", "{task}");
    assert_eq!(task["error"], "boom", "{task}");
    assert_eq!(
        report["waits"],
        json!([1]),
        "the queue positions the client saw"
    );
    eprintln!("sse failed: {seen:?} in {:?}", started.elapsed());
}
