//! A real nginx in front of a real herald, configured with exactly the
//! snippets `docs/deploy.md` gives (read out of the page between its
//! `herald-nginx-…: begin` and `end` markers, so page and test cannot
//! drift): every transport passes through, and each event arrives while
//! its stream is still open — nothing waits in a proxy buffer.
//!
//! Needs nginx (`/usr/sbin/nginx`, or the path in `HERALD_NGINX`), started
//! unprivileged with a configuration, logs, pid file and temporary
//! directories of its own. Without it the test prints `SKIPPED:` and
//! passes, unless `HERALD_STRICT_TESTS` is set (CI sets it): then it fails.

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use eventsource_stream::Eventsource;
use futures_util::StreamExt;
use serde_json::Value;
use tokio_tungstenite::tungstenite::Message;

use crate::harness::{PATIENCE, Server, client, temp_dir, wait_for_metric, within};

/// The page the snippets come from.
const DEPLOY_MD: &str = include_str!("../../docs/deploy.md");

/// The address the page's upstream names; the test's server replaces it.
const DOC_UPSTREAM: &str = "127.0.0.1:7171";

/// The text between `# NAME: begin` and `# NAME: end` in docs/deploy.md.
fn snippet(name: &str) -> String {
    let begin = format!("# {name}: begin");
    let end = format!("# {name}: end");
    let after = DEPLOY_MD
        .split_once(&begin)
        .unwrap_or_else(|| panic!("docs/deploy.md has no {begin:?}"))
        .1;
    let (inside, _) = after
        .split_once(&end)
        .unwrap_or_else(|| panic!("docs/deploy.md has no {end:?}"));
    assert!(!inside.trim().is_empty(), "{name} is empty");
    inside.to_owned()
}

/// nginx's path, or why there is none.
fn nginx_path() -> Result<PathBuf, String> {
    let path = std::env::var_os("HERALD_NGINX")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/sbin/nginx"));
    if path.is_file() {
        Ok(path)
    } else {
        Err(format!(
            "no nginx at {} (apt-get install nginx, or set HERALD_NGINX)",
            path.display()
        ))
    }
}

/// An nginx master process of the test's own, stopped when dropped.
struct Nginx {
    child: Child,
    port: u16,
    /// Its configuration, logs and temporary files.
    dir: tempfile::TempDir,
}

impl Nginx {
    /// nginx proxying to `upstream` with the page's configuration, or
    /// `None` after a loud `SKIPPED:` line (a failure under
    /// `HERALD_STRICT_TESTS`).
    fn start(test: &str, upstream: &str) -> Option<Nginx> {
        let nginx = match nginx_path() {
            Ok(path) => path,
            Err(why) if std::env::var_os("HERALD_STRICT_TESTS").is_some() => {
                panic!("{test}: {why}, and HERALD_STRICT_TESTS is set")
            }
            Err(why) => {
                eprintln!(
                    "SKIPPED: {test}: {why} (set HERALD_STRICT_TESTS to make this a failure)"
                );
                return None;
            }
        };
        for _ in 0..5 {
            // A free port, released for nginx to bind: another process may
            // take it meanwhile, and then the next one is tried.
            let port = TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .expect("a free port")
                .port();
            if let Some(started) = Nginx::spawn(&nginx, upstream, port) {
                return Some(started);
            }
        }
        panic!("nginx did not start on any of 5 free ports");
    }

    /// `None`: the port was taken before nginx bound it.
    fn spawn(nginx: &Path, upstream: &str, port: u16) -> Option<Nginx> {
        let dir = temp_dir();
        // nginx started by root runs its workers as `nobody`, who must be
        // able to reach the temporary directories inside.
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
                .expect("chmod the nginx directory");
        }
        let conf = dir.path().join("nginx.conf");
        std::fs::write(&conf, config(dir.path(), upstream, port)).expect("write nginx.conf");
        let child = Command::new(nginx)
            .arg("-p")
            .arg(dir.path())
            .arg("-c")
            .arg(&conf)
            .arg("-e")
            .arg(dir.path().join("error.log"))
            .args(["-g", "daemon off;"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn nginx");
        let mut started = Nginx { child, port, dir };
        let deadline = Instant::now() + PATIENCE;
        loop {
            if started.child.try_wait().expect("nginx status").is_some() {
                let log = started.error_log();
                assert!(
                    log.contains("Address already in use"),
                    "nginx exited at start:\n{log}"
                );
                return None;
            }
            if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Some(started);
            }
            assert!(
                Instant::now() < deadline,
                "nginx did not listen on {port}:\n{}",
                started.error_log()
            );
            // Polling for the port to open: nginx says nothing when it does.
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn error_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("error.log")).unwrap_or_default()
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }
}

impl Drop for Nginx {
    /// SIGTERM, which makes the master stop its workers (a SIGKILL would
    /// leave them running); SIGKILL if it is still there after a while.
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A whole nginx.conf around the page's two snippets: everything nginx
/// writes stays in `dir`, and it listens on `port` only.
fn config(dir: &Path, upstream: &str, port: u16) -> String {
    let http = snippet("herald-nginx-http");
    assert_eq!(
        http.matches(DOC_UPSTREAM).count(),
        1,
        "the page's upstream should name {DOC_UPSTREAM} once:\n{http}"
    );
    let http = http.replace(DOC_UPSTREAM, upstream);
    let location = snippet("herald-nginx-location");
    let d = dir.display();
    format!(
        "worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 256; }}
http {{
    access_log {d}/access.log;
    client_body_temp_path {d}/client_body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
{http}
    server {{
        listen 127.0.0.1:{port};
{location}
    }}
}}
"
    )
}

fn gauge(transport: &str) -> String {
    format!("herald_subscriptions{{transport=\"{transport}\"}}")
}

/// Publishes `data` to `topic` through nginx; the event's id.
async fn publish_via(nginx: &Nginx, topic: &str, data: &str) -> String {
    let r = client()
        .post(nginx.url(&format!("/topics/{topic}")))
        .body(data.to_owned())
        .send()
        .await
        .expect("publish through nginx");
    assert_eq!(r.status(), 201, "publish through nginx");
    let v: Value = r.json().await.expect("publish answer");
    v["id"].as_str().expect("id").to_owned()
}

#[tokio::test]
async fn every_transport_passes_through_nginx_as_deploy_md_configures_it() {
    let test = "every_transport_passes_through_nginx_as_deploy_md_configures_it";
    // Keep-alives far apart: no keep-alive write may push a buffered event
    // out within the wait, so an event that arrives was not held back.
    let server = Server::start(&["--keepalive", "60s"]);
    let Some(nginx) = Nginx::start(test, &server.addr) else {
        return;
    };

    // SSE: the stream opens, is counted by herald, and an event published
    // after that arrives while the stream stays open.
    // Bounded: a buffering proxy holds the head back with the first bytes.
    let r = within(
        "the SSE answer's head through nginx",
        client()
            .get(nginx.url("/topics/via-sse"))
            .header("accept", "text/event-stream")
            .send(),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "text/event-stream");
    let mut sse = r.bytes_stream().eventsource();
    wait_for_metric(&server, &gauge("sse"), 1.0).await;
    let id = publish_via(&nginx, "via-sse", "one\ntwo").await;
    let event = within("an SSE event through nginx", sse.next())
        .await
        .expect("the stream stays open")
        .unwrap();
    assert_eq!(
        (event.id.as_str(), event.data.as_str()),
        (id.as_str(), "one\ntwo")
    );
    // And the next one too, on the same open stream.
    let id = publish_via(&nginx, "via-sse", "three").await;
    let event = within("a second SSE event", sse.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!((event.id, event.data), (id, "three".to_owned()));

    // NDJSON streaming, chunked through nginx.
    let r = within(
        "the NDJSON answer's head through nginx",
        client()
            .get(nginx.url("/topics/via-stream"))
            .header("accept", "application/x-ndjson")
            .send(),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 200);
    let mut body = r.bytes_stream();
    wait_for_metric(&server, &gauge("stream"), 1.0).await;
    let id = publish_via(&nginx, "via-stream", "line").await;
    let mut lines = herald_protocol::ndjson::LineSplitter::new();
    let event: Value = loop {
        let chunk = within("an NDJSON chunk through nginx", body.next())
            .await
            .expect("the stream stays open")
            .unwrap();
        // Keep-alive lines are empty; the event is the first line with JSON.
        if let Some(line) = lines.feed(&chunk).into_iter().find(|l| !l.is_empty()) {
            break serde_json::from_slice(&line).unwrap();
        }
    };
    assert_eq!(
        (event["id"].as_str(), event["data"].as_str()),
        (Some(id.as_str()), Some("line"))
    );

    // Long poll: parked in herald, answered when the event comes.
    let poll = tokio::spawn({
        let url = nginx.url("/topics/via-poll?transport=long-poll&timeout=30");
        async move { client().get(url).send().await.unwrap() }
    });
    wait_for_metric(&server, &gauge("long-poll"), 1.0).await;
    let id = publish_via(&nginx, "via-poll", "polled").await;
    let r = within("the long poll's answer", poll).await.unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["events"][0]["id"], id.as_str());
    assert_eq!(v["events"][0]["data"], "polled");

    // WebSocket: the upgrade passes through.
    let (mut ws, _) = within(
        "a WebSocket handshake through nginx",
        tokio_tungstenite::connect_async(nginx.url("/topics/via-ws").replacen("http", "ws", 1)),
    )
    .await
    .unwrap();
    wait_for_metric(&server, &gauge("ws"), 1.0).await;
    let id = publish_via(&nginx, "via-ws", "framed").await;
    let v: Value = loop {
        match within("a WebSocket frame through nginx", ws.next())
            .await
            .expect("the socket stays open")
            .unwrap()
        {
            Message::Text(t) => break serde_json::from_str(&t).unwrap(),
            Message::Ping(_) | Message::Pong(_) => {}
            other => panic!("unexpected frame {other:?}"),
        }
    };
    assert_eq!(
        (v["id"].as_str(), v["data"].as_str()),
        (Some(id.as_str()), Some("framed"))
    );
    ws.close(None).await.ok();

    // The proxy said nothing worse than a notice about any of it.
    let log = nginx.error_log();
    assert!(
        !log.contains("[error]") && !log.contains("[crit]"),
        "nginx reported errors:\n{log}"
    );
}
