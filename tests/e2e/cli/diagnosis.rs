//! Issue 16, point 4: a command line that says what is wrong — the cause of
//! every failed connection in words, a subscriber that gives up instead of
//! retrying in silence, a worker that says what each task did, sizes with
//! units, logs without colour codes in a file.

use std::process::Stdio;

use tokio::io::{AsyncBufReadExt, BufReader};

use super::{Running, gauge, run, run_at, run_input};
use crate::harness::{Server, publish, temp_dir, wait_for_metric, within};

/// A URL on which nothing listens.
fn closed_port() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    format!("http://{}", listener.local_addr().expect("addr"))
}

#[tokio::test]
async fn pub_to_a_closed_port_says_connection_refused() {
    run_at(&closed_port(), &["pub", "news", "hello"], None)
        .await
        .refused(&["connection refused"]);
}

#[tokio::test]
async fn sub_to_a_closed_port_reports_each_try_then_gives_up() {
    let ran = run_at(
        &closed_port(),
        &["sub", "news", "--give-up-after", "1s"],
        None,
    )
    .await;
    assert_eq!(ran.status.code(), Some(1), "{ran:?}");
    assert_eq!(ran.stdout, "", "{ran:?}");
    assert!(
        ran.stderr
            .starts_with("herald: cannot connect: transport: connection refused"),
        "{ran:?}"
    );
    assert!(ran.stderr.contains("; retrying in "), "{ran:?}");
    let last = ran.stderr.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("herald: error: gave up: could not connect in 1")
            && last.contains("connection refused"),
        "{ran:?}"
    );
}

#[tokio::test]
async fn sub_by_https_to_a_plain_server_reports_a_tls_failure() {
    let server = Server::start(&[]);
    let https = format!("https://{}", server.addr);
    for via in ["sse", "ws"] {
        let ran = run_at(
            &https,
            &["sub", "news", "--via", via, "--give-up-after", "1s"],
            None,
        )
        .await;
        assert_eq!(ran.status.code(), Some(1), "{ran:?}");
        assert!(ran.stderr.contains("TLS"), "{ran:?}");
    }
}

#[tokio::test]
async fn sub_reports_a_server_that_stops_and_its_return() {
    let mut server = Server::start(&[]);
    let mut sub = Running::start(&server, &["sub", "news"]);
    wait_for_metric(&server, &gauge("sse"), 1.0).await;

    assert!(server.stop().success(), "graceful stop");
    sub.stderr_says("herald: the server ended the stream; reconnecting in ")
        .await;
    sub.stderr_says("connection refused").await;

    server.start_again();
    sub.stderr_says(&format!("herald: connected to {}", server.url("")))
        .await;
    wait_for_metric(&server, &gauge("sse"), 1.0).await;
    let id = publish(&server, "news", "back").await;
    assert_eq!(sub.line().await, format!("news {id} back"));
    sub.interrupt();
    sub.succeeds().await;
}

#[tokio::test]
async fn a_refusal_names_the_status_and_the_servers_message() {
    let server = Server::start(&[]);
    let ran = run(&server, &["sub", "bad!topic", "--give-up-after", "5s"]).await;
    ran.refused(&["400", "bad_topic"]);
}

#[tokio::test]
async fn max_body_takes_units() {
    let server = Server::start(&["--max-body", "2MiB"]);
    // Over the old 1 MiB default, under 2 MiB: on stdin, as an argument
    // this long would pass the system's limit.
    let big = "x".repeat(3 << 19);
    let id = run_input(&server, &["pub", "big", "-"], &big).await.ok();
    assert!(!id.line().is_empty());
    let too_big = "x".repeat(5 << 19);
    run_input(&server, &["pub", "big", "-"], &too_big)
        .await
        .refused(&["413"]);
}

#[tokio::test]
async fn pub_with_an_idempotency_key_publishes_once() {
    let server = Server::start(&[]);
    let args = ["pub", "news", "once", "--idempotency-key", "run-42"];
    let first = run(&server, &args).await.ok();
    let again = run(&server, &args).await.ok();
    assert_eq!(first.line(), again.line());
    assert!(again.stderr.contains("idempotency key"), "{again:?}");
    let json = run(&server, &[&args[..], &["--json"]].concat())
        .await
        .ok()
        .json();
    assert_eq!(json["replayed"], true, "{json}");
    assert_eq!(crate::harness::read_all(&server, "news").await.len(), 1);
}

#[tokio::test]
async fn a_quiet_worker_prints_nothing_per_task() {
    let server = Server::start(&[]);
    let worker = Running::start(&server, &["task", "work", "q", "--quiet", "--", "cat"]);
    let done = run(&server, &["task", "submit", "q", "hi", "--wait"])
        .await
        .ok();
    assert_eq!(done.line(), "hi");
    worker.interrupt();
    let (status, rest) = worker.finish().await;
    assert!(status.success() && rest.is_empty(), "{status} {rest:?}");
}

#[tokio::test]
async fn logs_to_a_file_have_no_colour_codes() {
    let dir = temp_dir();
    let log = dir.path().join("herald.log");
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_herald"))
        .args(["serve", "--listen", "127.0.0.1:0", "--store", "memory"])
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log).expect("log file"))
        .kill_on_drop(true)
        .spawn()
        .expect("spawn herald serve");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    let first = within("herald serve to start", lines.next_line())
        .await
        .expect("stdout");
    let url = first
        .as_deref()
        .and_then(|l| l.strip_prefix("herald listening on "))
        .unwrap_or_else(|| panic!("did not start: {first:?}"))
        .to_owned();
    // Answered, so serving (and listening for SIGTERM).
    run_at(&url, &["pub", "news", "logged"], None).await.ok();
    let pid = child.id().expect("running").to_string();
    let stopped = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill");
    assert!(stopped.success());
    let status = within("herald serve to stop", child.wait())
        .await
        .expect("wait");
    assert!(status.success(), "{status}");
    let text = std::fs::read_to_string(&log).expect("read log");
    assert!(text.contains("INFO"), "{text}");
    assert!(text.contains("stopped"), "{text}");
    assert!(!text.contains("\x1b["), "colour codes in {text:?}");
}
