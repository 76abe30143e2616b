//! A real browser: Debian's Chromium, driven by `playwright-core`.
//!
//! On HTTPS (`tests/node/browser.mjs`) it opens twenty EventSources from
//! one page. Over HTTP/1.1 a browser holds six connections per origin, so
//! twenty streams open at once are twenty streams on HTTP/2, where all
//! share one connection; each must receive the event published once all
//! are open.
//!
//! From pages of other origins (`tests/node/cors.mjs`) it uses herald with
//! tokens and `--cors-origin`: a listed origin may read, publish and use
//! the cookie; another is refused, by the browser and by herald.
//!
//! Needs what `node.rs` needs, and Chromium (`/usr/bin/chromium`, or the
//! path in `HERALD_CHROMIUM`). Without them the test prints `SKIPPED:` and
//! passes, unless `HERALD_STRICT_TESTS` is set (CI sets it): then it fails.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Stdio;

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::Command;

use crate::auth;
use crate::harness::{Server, TestCert, publish, wait_for_metric, within};
use crate::node::node_or_skip;

const STREAMS: usize = 20;

/// The topic the pages of other origins read and publish to.
const TOPIC: &str = "x";

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

/// Chromium, or `None` after a loud `SKIPPED:` line; with
/// `HERALD_STRICT_TESTS` set, a missing browser fails the test instead.
pub(crate) fn chromium_or_skip(test: &str) -> Option<PathBuf> {
    match chromium() {
        Ok(path) => Some(path),
        Err(why) if std::env::var_os("HERALD_STRICT_TESTS").is_some() => {
            panic!("{test}: {why}, and HERALD_STRICT_TESTS is set")
        }
        Err(why) => {
            eprintln!("SKIPPED: {test}: {why} (set HERALD_STRICT_TESTS to make this a failure)");
            None
        }
    }
}

#[tokio::test]
async fn a_browser_holds_twenty_sse_streams_over_https() {
    let test = "a_browser_holds_twenty_sse_streams_over_https";
    let Some(env) = node_or_skip(test) else {
        return;
    };
    let Some(chromium) = chromium_or_skip(test) else {
        return;
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

/// Pages of two other origins in a real Chromium (`tests/node/cors.mjs`)
/// talk to a server with tokens and `--cors-origin` naming one of them.
/// The listed origin's page reads events by EventSource and WebSocket with
/// the token in the URL, publishes by `fetch` with `Authorization` (a
/// preflight first), reads the answer and the exposed headers, and uses the
/// `herald_token` cookie. The other page, on the same site (so the browser
/// sends it the cookie too), is refused everything, and herald refuses
/// what the browser does send it: its cookie-carrying "simple" `POST`, which
/// no preflight guards, is answered `403` and stores nothing.
#[tokio::test]
async fn pages_of_a_listed_origin_use_herald_and_others_cannot() {
    let test = "pages_of_a_listed_origin_use_herald_and_others_cannot";
    let Some(env) = node_or_skip(test) else {
        return;
    };
    let Some(chromium) = chromium_or_skip(test) else {
        return;
    };
    let mut child = Command::new(&env.node)
        .arg(env.dir.join("cors.mjs"))
        .arg(&chromium)
        .current_dir(&env.dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn node cors.mjs");
    let mut stdin = child.stdin.take().expect("stdin");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let mut line = async || -> Value {
        let line = within("cors.mjs", lines.next_line())
            .await
            .expect("read cors.mjs")
            .expect("cors.mjs exited early");
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"))
    };

    // The pages are served first: herald must know the listed origin.
    let origins = line().await;
    let listed = origins["origins"]["listed"].as_str().expect("listed");
    let other = origins["origins"]["other"].as_str().expect("other");
    let server = auth::server(&["--cors-origin", listed]);
    let token = auth::token(json!({"publish": [TOPIC], "subscribe": [TOPIC]}));
    let settings = json!({"herald": server.url(""), "token": token, "topic": TOPIC});
    stdin
        .write_all(format!("{settings}\n").as_bytes())
        .await
        .expect("write to cors.mjs");
    drop(stdin);
    let mut reports = HashMap::new();
    loop {
        let report = line().await;
        if report["done"] == true {
            break;
        }
        let key = format!("{} from {}", report["check"], report["origin"]);
        reports.insert(key.replace('"', ""), report);
    }
    let status = within("cors.mjs to exit", child.wait()).await.unwrap();
    assert!(status.success(), "cors.mjs: {status}");
    let report = |key: &str| -> &Value {
        reports
            .get(key)
            .unwrap_or_else(|| panic!("no report {key:?}: {reports:#?}"))
    };

    // The listed origin. An EventSource with the token in the URL gets the
    // event the page published by fetch (after a preflight: JSON, and
    // Authorization), as that fetch's answer, which the page could read,
    // named it; a retry with its Idempotency-Key is answered the same,
    // with the exposed Idempotent-Replayed.
    let es = report("es_token from listed");
    let first = &es["then"]["first"];
    assert_eq!(first["status"], 201, "{es:#}");
    let first_id = first["json"]["id"].as_str().expect("the page read the id");
    assert_eq!(first["replayed"], Value::Null, "{es:#}");
    let retry = &es["then"]["retry"];
    assert_eq!(retry["status"], 201, "{es:#}");
    assert_eq!(retry["json"]["id"], first_id, "{es:#}");
    assert_eq!(retry["replayed"], "true", "exposed to the page: {es:#}");
    assert_eq!(received(es), (r#"{"a":1}"#.to_owned(), first_id.to_owned()));
    // A long poll that times out: 204 and the exposed Herald-Cursor.
    let poll = report("long_poll from listed");
    assert_eq!(poll["status"], 204, "{poll:#}");
    assert!(
        poll["cursor"].as_str().is_some_and(|c| !c.is_empty()),
        "Herald-Cursor exposed to the page: {poll:#}"
    );
    // A WebSocket with the token in the URL, then, once the cookie is set,
    // an EventSource (withCredentials) and a WebSocket with nothing but the
    // cookie: each gets the event the page published.
    let mut published = vec![(r#"{"a":1}"#.to_owned(), first_id.to_owned())];
    for (key, data) in [
        (
            "ws_token from listed",
            r#""by the page, for its WebSocket""#,
        ),
        ("es_cookie from listed", r#""for the cookie's EventSource""#),
        ("ws_cookie from listed", r#""for the cookie's WebSocket""#),
    ] {
        let r = report(key);
        assert_eq!(r["then"]["status"], 201, "{key}: {r:#}");
        let id = r["then"]["json"]["id"].as_str().expect("id").to_owned();
        assert_eq!(received(r), (data.to_owned(), id.clone()), "{key}");
        published.push((data.to_owned(), id));
    }
    // A text/plain POST with the cookie: stored, and the answer readable.
    let post = report("post_cookie from listed");
    assert_eq!(post["status"], 201, "{post:#}");
    published.push((
        "from A, with the cookie".to_owned(),
        post["json"]["id"].as_str().expect("id").to_owned(),
    ));

    // The other origin. A fetch with Authorization never leaves the browser:
    // the preflight is answered without Access-Control-Allow-Origin.
    let post = report("post_bearer from other");
    assert_eq!(post["ok"], false, "the page is told it failed: {post:#}");
    // In whichever order the browser reports them.
    let by_method = |method: &str| {
        network(post)
            .iter()
            .find(|r| r["method"] == method)
            .unwrap_or_else(|| panic!("no {method} in the browser's account: {post:#}"))
    };
    assert_eq!(
        network(post).len(),
        2,
        "a preflight and the request it stopped: {post:#}"
    );
    let (preflight, request) = (by_method("OPTIONS"), by_method("POST"));
    assert_eq!(preflight["method"], "OPTIONS", "{post:#}");
    assert_eq!(preflight["origin"], other, "{post:#}");
    assert_eq!(preflight["status"], 204, "{post:#}");
    assert_eq!(request["method"], "POST", "{post:#}");
    assert_eq!(
        request["corsError"], "PreflightMissingAllowOriginHeader",
        "{post:#}"
    );
    assert_eq!(request["status"], Value::Null, "never sent: {post:#}");
    // A "simple" POST (text/plain, no Authorization) is sent without a
    // preflight, with the cookie: herald refuses it, and the page is told
    // it failed.
    let post = report("post_cookie from other");
    assert_eq!(post["ok"], false, "the page is told it failed: {post:#}");
    let [request] = network(post) else {
        panic!("the request alone, no preflight: {post:#}")
    };
    assert_eq!(request["method"], "POST", "{post:#}");
    assert_eq!(request["origin"], other, "{post:#}");
    assert_eq!(
        request["cookie"], true,
        "the browser sent the cookie: {post:#}"
    );
    assert_eq!(request["status"], 403, "herald refused it: {post:#}");
    assert_eq!(request["corsError"], "MissingAllowOriginHeader", "{post:#}");
    // An EventSource with the cookie: refused, and closed for good.
    let es = report("es_cookie from other");
    assert_eq!(es["opened"], false, "{es:#}");
    assert_eq!(es["message"], Value::Null, "{es:#}");
    assert_eq!(es["readyState"], 2, "CLOSED: {es:#}");
    let [request] = network(es) else {
        panic!("one request: {es:#}")
    };
    assert_eq!(request["type"], "EventSource", "{es:#}");
    assert_eq!(
        request["cookie"], true,
        "the browser sent the cookie: {es:#}"
    );
    assert_eq!(request["status"], 403, "herald refused it: {es:#}");
    // WebSockets, with the token in the URL or with the cookie alone: the
    // handshake is refused.
    for key in ["ws_token from other", "ws_cookie from other"] {
        let ws = report(key);
        assert_eq!(ws["opened"], false, "{key}: {ws:#}");
        assert_eq!(ws["message"], Value::Null, "{key}: {ws:#}");
        assert!(ws["closed"].is_object(), "{key}: {ws:#}");
        let [handshake] = network(ws) else {
            panic!("{key}: one handshake: {ws:#}")
        };
        assert_eq!(handshake["origin"], other, "{key}: {ws:#}");
        assert!(
            handshake["ended"]
                .as_str()
                .is_some_and(|e| e.contains("Unexpected response code: 403")),
            "{key}: {ws:#}"
        );
    }

    // What is stored is what the listed origin published, nothing else;
    // and herald refused exactly the four requests of the other page that
    // reached it (the fifth never left the browser).
    let stored: Vec<(String, String)> = auth::events_of(&server, TOPIC)
        .await
        .iter()
        .map(|e| {
            let text = |k: &str| e[k].as_str().expect(k).to_owned();
            (text("data"), text("id"))
        })
        .collect();
    assert_eq!(stored, published);
    assert_eq!(
        auth::metric(&server, "herald_refused_total{reason=\"forbidden\"}").await,
        4.0
    );
}

/// The first message an EventSource or a WebSocket of the page received:
/// its data and its id (an EventSource's `lastEventId`).
fn received(report: &Value) -> (String, String) {
    assert_eq!(report["opened"], true, "{report:#}");
    let message = &report["message"];
    let text = |v: &Value| {
        v.as_str()
            .unwrap_or_else(|| panic!("{report:#}"))
            .to_owned()
    };
    match &message["lastEventId"] {
        Value::Null => (text(&message["data"]), text(&message["id"])),
        id => (text(&message["data"]), text(id)),
    }
}

/// What a check's requests did on the network, as the browser saw it.
fn network(report: &Value) -> &[Value] {
    report["network"]
        .as_array()
        .unwrap_or_else(|| panic!("the browser's account is incomplete: {report:#}"))
}
