//! Connections that send too little, too slowly, or nothing are closed on
//! time on both HTTP stacks; streams and long polls are not; and at its
//! file-descriptor limit the server refuses new connections at once.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

use crate::harness::{PATIENCE, Raw, Server, client, publish, within};

/// Short head and idle timeouts; a fresh connection still has a second to
/// send its head, so a busy machine does not fail the test.
const QUICK: [&str; 4] = ["--head-timeout", "1s", "--idle-timeout", "300ms"];

#[tokio::test]
async fn half_a_head_gets_408_and_silence_gets_closed() {
    let server = Server::start(&["--head-timeout", "1s"]);
    let mut half = Raw::request(&server, "GET /topics/a HTT").await;
    let mut silent = Raw::request(&server, "").await;
    let text = half.read_to_close().await;
    assert!(text.starts_with("HTTP/1.1 408 "), "{text}");
    assert!(text.contains("\"code\":\"timeout\""), "{text}");
    assert_eq!(silent.read_to_close().await, "");
}

#[tokio::test]
async fn idle_kept_alive_connections_are_closed_on_both_stacks() {
    let server = Server::start(&QUICK);
    // Read by the direct path.
    let mut direct = Raw::request(
        &server,
        "GET /topics/quiet?transport=poll HTTP/1.1\r\nHost: x\r\n\r\n",
    )
    .await;
    // Held by hyper after a publish.
    let mut hyper = Raw::request(
        &server,
        "POST /topics/idle HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nhi",
    )
    .await;
    let text = direct.read_to_close().await;
    assert!(text.starts_with("HTTP/1.1 204 "), "{text}");
    let text = hyper.read_to_close().await;
    assert!(text.starts_with("HTTP/1.1 201 "), "{text}");
}

#[tokio::test]
async fn a_body_that_stops_coming_gets_408_and_nothing_is_stored() {
    let server = Server::start(&["--body-timeout", "300ms"]);
    let mut slow = Raw::request(
        &server,
        "POST /topics/slow HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nabc",
    )
    .await;
    let text = slow.until("}}").await;
    assert!(text.starts_with("HTTP/1.1 408 "), "{text}");
    assert!(text.contains("\"code\":\"timeout\""), "{text}");
    let r = client()
        .get(server.url("/topics/slow?last-event-id=all"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
}

/// The timeouts are for requests, not for what they open: a stream lives
/// on past them, keep-alives and events and all.
#[tokio::test]
async fn streams_outlive_the_request_timeouts() {
    let mut args = QUICK.to_vec();
    args.extend(["--keepalive", "700ms"]);
    let server = Server::start(&args);
    let mut stream = Raw::request(
        &server,
        "GET /topics/long HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n",
    )
    .await;
    stream.until(": keep-alive").await;
    publish(&server, "long", "still here").await;
    stream.until("data: still here").await;
}

/// A server whose open-file limit is `limit`, on a free port.
struct Limited {
    child: std::process::Child,
    addr: String,
}

impl Limited {
    fn start(limit: u32) -> Limited {
        let bin = env!("CARGO_BIN_EXE_herald");
        let script = format!(
            "ulimit -n {limit} && exec {bin} serve --listen 127.0.0.1:0 --store memory --head-timeout 60s"
        );
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(script)
            .env("RUST_LOG", "error")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn herald under ulimit");
        let stdout = child.stdout.take().expect("stdout");
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).expect("read");
        let addr = line
            .trim()
            .strip_prefix("herald listening on http://")
            .unwrap_or_else(|| panic!("unexpected first line: {line}"))
            .to_owned();
        Limited { child, addr }
    }
}

impl Drop for Limited {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Out of descriptors, the server answers new connections `503` at once
/// instead of leaving them in the kernel's queue, and serves again once
/// some close.
#[tokio::test]
async fn at_the_file_limit_new_connections_are_refused_at_once() {
    let server = Limited::start(64);
    // More silent connections than the process can hold: the ones it
    // cannot take are answered and closed.
    let mut held = Vec::new();
    for _ in 0..100 {
        held.push(TcpStream::connect(&server.addr).await.unwrap());
    }
    let mut last = held.pop().unwrap();
    let mut seen = Vec::new();
    within("a refusal", last.read_to_end(&mut seen))
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&seen);
    assert!(text.starts_with("HTTP/1.1 503 "), "{text}");
    assert!(text.contains("retry-after: 5"), "{text}");
    assert!(text.contains("\"code\":\"unavailable\""), "{text}");
    drop(held);
    // Served again once the held connections are gone.
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let r = client()
            .get(format!("http://{}/healthz", server.addr))
            .send()
            .await;
        if r.is_ok_and(|r| r.status() == 200) {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "never served again");
        tokio::task::yield_now().await;
    }
}
