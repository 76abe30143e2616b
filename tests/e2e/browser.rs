//! A real browser on HTTPS: Debian's Chromium, driven by `playwright-core`
//! (`tests/node/browser.mjs`), opens twenty EventSources from one page.
//! Over HTTP/1.1 a browser holds six connections per origin, so twenty
//! streams open at once are twenty streams on HTTP/2, where all share one
//! connection; each must receive the event published once all are open.
//!
//! Needs what `node.rs` needs, and Chromium (`/usr/bin/chromium`, or the
//! path in `HERALD_CHROMIUM`). Without them the test prints `SKIPPED:` and
//! passes, unless `HERALD_STRICT_TESTS` is set (CI sets it): then it fails.

use std::path::PathBuf;
use std::process::Stdio;

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

use crate::harness::{Server, TestCert, publish, wait_for_metric, within};
use crate::node::node_or_skip;

const STREAMS: usize = 20;

/// Chromium's path, or why there is none.
fn chromium() -> Result<PathBuf, String> {
    let path = std::env::var_os("HERALD_CHROMIUM")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"));
    if path.is_file() {
        Ok(path)
    } else {
        Err(format!(
            "no Chromium at {} (apt-get install chromium, or set HERALD_CHROMIUM)",
            path.display()
        ))
    }
}

#[tokio::test]
async fn a_browser_holds_twenty_sse_streams_over_https() {
    let test = "a_browser_holds_twenty_sse_streams_over_https";
    let Some(env) = node_or_skip(test) else {
        return;
    };
    let chromium = match chromium() {
        Ok(path) => path,
        Err(why) if std::env::var_os("HERALD_STRICT_TESTS").is_some() => {
            panic!("{test}: {why}, and HERALD_STRICT_TESTS is set")
        }
        Err(why) => {
            eprintln!("SKIPPED: {test}: {why} (set HERALD_STRICT_TESTS to make this a failure)");
            return;
        }
    };
    let cert = TestCert::new();
    let server = Server::start_tls(&cert, &[]);
    let mut child = Command::new(&env.node)
        .arg(env.dir.join("browser.mjs"))
        .arg(&chromium)
        .arg(server.url(""))
        .arg("browser")
        .arg(STREAMS.to_string())
        .current_dir(&env.dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn node browser.mjs");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let mut line = async || {
        within("browser.mjs", lines.next_line())
            .await
            .expect("read browser.mjs")
            .expect("browser.mjs exited early")
    };
    assert_eq!(line().await, "ready h2", "the page came over HTTP/2");
    wait_for_metric(
        &server,
        "herald_subscriptions{transport=\"sse\"}",
        STREAMS as f64,
    )
    .await;
    publish(&server, "browser", "to every tab's stream").await;
    let report: Value = serde_json::from_str(&line().await).expect("JSON report");
    let data = report["data"].as_array().expect("data");
    assert_eq!(data.len(), STREAMS);
    assert!(
        data.iter().all(|d| d == "to every tab's stream"),
        "{report}"
    );
    let status = within("browser.mjs to exit", child.wait()).await.unwrap();
    assert!(status.success(), "browser.mjs: {status}");
}
