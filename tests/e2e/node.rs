//! A WHATWG EventSource nobody here wrote — Node's `eventsource` npm package,
//! driven by `tests/node/follow.mjs` — against the real server: the server
//! ends every stream after a while (`--max-stream-age`), the client
//! reconnects by itself with `Last-Event-ID`, and still sees every event
//! exactly once, in order.
//!
//! Needs `node` (>= 20) on PATH and `tests/node/node_modules` (installed here
//! with `npm ci` when missing). Without them the test prints `SKIPPED:` and
//! passes, unless `HERALD_STRICT_TESTS` is set (CI sets it): then it fails.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::OnceLock;
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

use crate::harness::{Server, publish, within};

/// `tests/node`: package.json, package-lock.json and the scripts.
fn node_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("node")
}

/// A usable Node with the test package's dependencies installed.
#[derive(Debug)]
struct NodeEnv {
    node: PathBuf,
    dir: PathBuf,
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

/// Whether `node_modules` holds the `eventsource` version package.json pins.
fn installed(dir: &Path) -> bool {
    let read =
        |p: PathBuf| -> Option<Value> { serde_json::from_slice(&std::fs::read(p).ok()?).ok() };
    let (Some(manifest), Some(module)) = (
        read(dir.join("package.json")),
        read(dir.join("node_modules/eventsource/package.json")),
    ) else {
        return false;
    };
    manifest["dependencies"]["eventsource"] == module["version"]
}

/// The Node environment, or `None` after a loud `SKIPPED:` line; with
/// `HERALD_STRICT_TESTS` set, a missing environment fails the test instead.
fn node_or_skip(test: &str) -> Option<&'static NodeEnv> {
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

#[tokio::test]
async fn node_eventsource_resumes_exactly_once_across_server_drops() {
    let Some(env) = node_or_skip("node_eventsource_resumes_exactly_once_across_server_drops")
    else {
        return;
    };
    let server = Server::start(&["--max-stream-age", "700ms", "--retry", "100ms"]);

    let mut follower = Command::new(&env.node)
        .arg(env.dir.join("follow.mjs"))
        .arg(server.url("/topics/feed?transport=sse"))
        .arg(EVENTS.to_string())
        .current_dir(&env.dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn node follow.mjs");
    let mut lines = BufReader::new(follower.stdout.take().expect("stdout")).lines();

    let first = within("the EventSource to open", lines.next_line())
        .await
        .expect("read follow.mjs stdout")
        .expect("follow.mjs exited before it connected");
    assert_eq!(first, "ready");

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

    let line = within("follow.mjs to report", lines.next_line())
        .await
        .expect("read follow.mjs stdout")
        .expect("follow.mjs exited without a report");
    let status = within("follow.mjs to exit", follower.wait())
        .await
        .expect("wait for follow.mjs");
    assert!(status.success(), "follow.mjs: {status}");

    let report: Value = serde_json::from_str(&line).expect("follow.mjs report is JSON");
    let got: Vec<(String, String)> = report["events"]
        .as_array()
        .expect("events")
        .iter()
        .map(|e| {
            let id = e["id"].as_str().expect("id").to_owned();
            (id, e["data"].as_str().expect("data").to_owned())
        })
        .collect();
    let opens = report["opens"].as_u64().expect("opens");
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
        report["gaps"].as_array().is_some_and(|g| g.is_empty()),
        "the server reported a gap to a client that held a retained cursor: {}",
        report["gaps"]
    );
    assert!(
        opens >= 2,
        "the client never reconnected ({opens} connection): the drops were not exercised"
    );
}
