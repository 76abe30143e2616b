//! The dashboard at `GET /`, used in a real Chromium (`tests/node/dashboard.mjs`)
//! as a person would: it follows two topics, publishes with an event type,
//! enqueues a task that a real `herald task work` runs while the page
//! watches its progress, keeps its tail exact across a server restart, and
//! asks for a token on a server with authorization on. Screenshots at
//! desktop and phone width land in `<target>/dashboard/`.
//!
//! Needs what `browser.rs` needs (Node, `tests/node`, Chromium); without
//! them it prints `SKIPPED:` and passes, unless `HERALD_STRICT_TESTS` is set.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

use crate::auth;
use crate::browser::chromium_or_skip;
use crate::harness::{Server, publish, read_all, temp_dir};
use crate::node::node_or_skip;

/// How long one step of the page may take: Chromium starts slowly on a
/// busy machine, and a step waits on several of the page's own refreshes.
const STEP: Duration = Duration::from_secs(60);

/// The worker's command: reports 50 %, waits until the page's script lets
/// it go (the file `$GATE` exists: it polls, for `sh` has no better way to
/// wait on a file), reports 100 % and answers with the payload it was given.
const WORKER: &str = r#"payload=$(cat)
echo "progress 0.5 halfway" >&2
while [ ! -e "$GATE" ]; do sleep 0.05; done
echo "progress 1 finishing" >&2
printf '{"echo":%s}\n' "$payload"
"#;

/// `<target>/dashboard`, where the screenshots go.
fn shots_dir() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .expect("the target dir holds tmp/")
        .join("dashboard")
}

/// `dashboard.mjs` as it runs: JSON lines out, JSON lines in.
struct Page {
    child: Child,
    stdin: ChildStdin,
    lines: Lines<BufReader<ChildStdout>>,
}

impl Page {
    /// The next JSON line the script prints.
    async fn line(&mut self) -> Value {
        let line = tokio::time::timeout(STEP, self.lines.next_line())
            .await
            .expect("dashboard.mjs took over a minute for one step")
            .expect("read dashboard.mjs")
            .expect("dashboard.mjs exited early (its stderr says why)");
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"))
    }

    /// Reads lines until `{"step": step}`; that line.
    async fn step(&mut self, step: &str) -> Value {
        let line = self.line().await;
        assert_eq!(line["step"], step, "{line}");
        line
    }

    async fn send(&mut self, value: &Value) {
        self.stdin
            .write_all(format!("{value}\n").as_bytes())
            .await
            .expect("write to dashboard.mjs");
    }
}

/// Starts `herald task work jobs` on `server` running [`WORKER`] with
/// `GATE=gate`; killed when dropped.
fn worker(server: &Server, dir: &Path, gate: &Path) -> Child {
    let script = dir.join("work.sh");
    std::fs::write(&script, WORKER).expect("write the worker script");
    Command::new(env!("CARGO_BIN_EXE_herald"))
        .arg("--url")
        .arg(server.url(""))
        .args(["task", "work", "jobs", "--", "sh"])
        .arg(&script)
        .env("GATE", gate)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn herald task work")
}

/// The ids of `topic`'s events, oldest first, as the server holds them.
async fn ids_of(server: &Server, topic: &str) -> Vec<String> {
    read_all(server, topic)
        .await
        .iter()
        .map(|e| e["id"].as_str().expect("id").to_owned())
        .collect()
}

#[tokio::test]
async fn dashboard_follows_publishes_enqueues_resumes_and_asks_for_a_token() {
    let test = "dashboard_follows_publishes_enqueues_resumes_and_asks_for_a_token";
    let Some(env) = node_or_skip(test) else {
        return;
    };
    let Some(chromium) = chromium_or_skip(test) else {
        return;
    };
    // A durable store, so that the restart keeps every event.
    let data = temp_dir();
    let mut server = Server::start_in(data.path(), &["--retry", "100ms"]);
    let secure = auth::server(&[]);
    let token = auth::token(json!({
        "publish": ["*"], "subscribe": ["*"], "enqueue": ["*"], "work": ["*"], "admin": true
    }));
    let scratch = temp_dir();
    let gate = scratch.path().join("gate");
    let mut work = worker(&server, scratch.path(), &gate);
    let shots = shots_dir();

    let mut child = Command::new(&env.node)
        .arg(env.dir.join("dashboard.mjs"))
        .arg(&chromium)
        .arg(server.url(""))
        .arg(secure.url(""))
        .arg(&token)
        .arg(&gate)
        .arg(&shots)
        .current_dir(&env.dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn node dashboard.mjs");
    let mut page = Page {
        stdin: child.stdin.take().expect("stdin"),
        lines: BufReader::new(child.stdout.take().expect("stdout")).lines(),
        child,
    };

    // 1–3: the page opens without console errors, publishes with an event
    // type, and shows the events of two followed topics.
    page.step("open").await;
    let alert = page.step("publish").await["id"].clone();
    let stored = read_all(&server, "alpha").await;
    assert_eq!(stored[0]["id"], alert, "{stored:?}");
    assert_eq!(stored[0]["event"], "alert");
    page.step("two topics").await;

    // 4: the task the page enqueued ran on the real worker.
    let task = page.step("task").await;
    assert_eq!(task["halfway"], "50 % · halfway", "{task}");
    assert_eq!(task["outcome"], json!({"echo": {"n": 7}}), "{task}");
    let id = task["id"].as_str().expect("task id");
    let r = server
        .client()
        .get(server.url(&format!("/tasks/{id}")))
        .send()
        .await
        .unwrap();
    let stored: Value = r.json().await.unwrap();
    assert_eq!(stored["status"], "succeeded", "{stored}");
    assert_eq!(stored["result"], task["outcome"], "{stored}");
    // The worker has done its part; it would only retry against the
    // restarting server.
    work.kill().await.expect("stop the worker");

    // 5: events published just before the stop and just after the start,
    // the latter most likely before the page has reconnected.
    assert_eq!(page.line().await, json!({"ask": "restart"}));
    for topic in ["alpha", "beta"] {
        publish(&server, topic, &format!("{topic} before the restart")).await;
    }
    server.restart();
    for i in 0..3 {
        for topic in ["alpha", "beta"] {
            publish(&server, topic, &format!("{topic} after the restart, {i}")).await;
        }
    }
    let want = json!({
        "alpha": ids_of(&server, "alpha").await,
        "beta": ids_of(&server, "beta").await,
    });
    page.send(&want).await;
    let shown = page.line().await;
    assert_eq!(
        shown["shown"]["ids"], want,
        "the page shows every event of each topic once, in order"
    );
    assert_eq!(shown["shown"]["gaps"], 0, "no history was missed");
    for topic in ["alpha", "beta"] {
        let opens = shown["shown"]["opens"][topic].as_u64().expect("opens");
        assert!(opens >= 2, "{topic}'s stream never reconnected: {shown}");
    }

    // Screenshots; no sideways scrolling at phone width.
    let widths = page.step("screenshots").await;
    eprintln!("phone width: {}", widths["widths"]);

    // 6: authorization on — the page asked for the token and then
    // published with it.
    let sealed = page.step("auth").await["id"].clone();
    let r = secure
        .client()
        .get(secure.url("/topics/secure?last-event-id=all"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    let stored: Value = r.json().await.unwrap();
    assert_eq!(stored["events"][0]["id"], sealed, "{stored}");
    assert_eq!(stored["events"][0]["event"], "note", "{stored}");

    let done = page.line().await;
    assert_eq!(done["done"], true, "{done}");
    eprintln!("console errors, all expected: {}", done["console"]);
    assert_eq!(
        done["unexpected"],
        json!([]),
        "the browser logged errors: {done}"
    );
    for shot in done["shots"].as_array().expect("shots") {
        eprintln!("screenshot: {}", shot.as_str().unwrap_or_default());
    }
    let status = tokio::time::timeout(STEP, page.child.wait())
        .await
        .expect("dashboard.mjs to exit")
        .unwrap();
    assert!(status.success(), "dashboard.mjs: {status}");
}
