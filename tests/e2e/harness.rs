//! Starts the real `herald` binary on a free port and talks to it.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How long any single wait in these tests may take before it fails.
pub const PATIENCE: Duration = Duration::from_secs(15);

/// A running `herald serve` process, killed when dropped.
pub struct Server {
    child: Child,
    pub addr: String,
    args: Vec<String>,
    /// `http`, or `https` when started with `--tls-cert`.
    scheme: &'static str,
    /// The certificate [`Server::client`] trusts on `https`.
    root: Option<reqwest::Certificate>,
}

impl Server {
    /// `herald serve --listen 127.0.0.1:0 --store memory` plus `extra` flags.
    pub fn start(extra: &[&str]) -> Server {
        Server::start_with("memory", extra)
    }

    /// The embedded durable store in `dir`, plus `extra` flags.
    pub fn start_in(dir: &std::path::Path, extra: &[&str]) -> Server {
        Server::start_with(&format!("file:{}", dir.display()), extra)
    }

    /// Any `--store` URI, plus `extra` flags.
    pub fn start_with(store: &str, extra: &[&str]) -> Server {
        let mut args: Vec<String> = vec!["--store".into(), store.into()];
        args.extend(extra.iter().map(|s| s.to_string()));
        Server::spawn("127.0.0.1:0", args)
    }

    /// HTTPS with `cert`, on the memory store, plus `extra` flags;
    /// [`Server::client`] trusts `cert`.
    pub fn start_tls(cert: &TestCert, extra: &[&str]) -> Server {
        let mut args: Vec<&str> =
            vec!["--tls-cert", cert.cert_path(), "--tls-key", cert.key_path()];
        args.extend_from_slice(extra);
        let mut server = Server::start(&args);
        assert_eq!(server.scheme, "https", "started with --tls-cert");
        server.trust(&cert.pem);
        server
    }

    /// Makes [`Server::client`] trust only the certificate `pem`.
    pub fn trust(&mut self, pem: &str) {
        self.root =
            Some(reqwest::Certificate::from_pem(pem.as_bytes()).expect("a PEM certificate"));
    }

    /// A fresh client of its own (its own connections) for this server:
    /// HTTP/1.1 or HTTP/2 as the server agrees (ALPN) on `https`.
    pub fn client(&self) -> reqwest::Client {
        self.client_builder().build().expect("reqwest client")
    }

    /// What [`Server::client`] is built from.
    pub fn client_builder(&self) -> reqwest::ClientBuilder {
        let builder = builder().timeout(Duration::from_secs(60));
        match &self.root {
            Some(root) => https_builder(builder, root.clone()),
            None => builder,
        }
    }

    /// The process id, for signals.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends `signal` (a name `kill` knows, like `HUP`) without waiting.
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.pid().to_string())
            .status()
            .expect("kill");
        assert!(status.success(), "kill -{signal}");
    }

    /// Kills the process at once (SIGKILL), as a crash would.
    pub fn crash(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts a fresh process with the same flags on the same address.
    pub fn start_again(&mut self) {
        let mut fresh = Server::spawn(&self.addr.clone(), self.args.clone());
        fresh.root = self.root.take();
        // The old process has exited; dropping its handle is harmless.
        drop(std::mem::replace(self, fresh));
    }

    fn spawn(listen: &str, args: Vec<String>) -> Server {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_herald"));
        cmd.arg("serve").arg("--listen").arg(listen).args(&args);
        cmd.env(
            "RUST_LOG",
            std::env::var("HERALD_TEST_LOG").unwrap_or_else(|_| "warn".into()),
        );
        cmd.stdout(Stdio::piped()).stderr(Stdio::inherit());
        let mut child = cmd.spawn().expect("spawn herald");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            if let Some(Ok(line)) = lines.next() {
                let _ = tx.send(line);
            }
            // Keep draining so the server never blocks on a full pipe.
            for _ in lines {}
        });
        let line = rx
            .recv_timeout(PATIENCE)
            .expect("herald did not report its address");
        let (scheme, addr) = line
            .strip_prefix("herald listening on ")
            .and_then(|url| url.split_once("://"))
            .unwrap_or_else(|| panic!("unexpected first line: {line}"));
        let scheme = match scheme {
            "http" => "http",
            "https" => "https",
            other => panic!("unexpected scheme {other:?} in {line}"),
        };
        Server {
            child,
            addr: addr.to_owned(),
            args,
            scheme,
            root: None,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}://{}{}", self.scheme, self.addr, path)
    }

    /// Sends SIGTERM (graceful shutdown) without waiting.
    pub fn terminate(&self) {
        self.signal("TERM");
    }

    /// Waits for the process to exit.
    pub fn wait(&mut self) -> std::process::ExitStatus {
        self.child.wait().expect("wait for herald")
    }

    /// Stops the server with SIGTERM and waits for it to exit.
    pub fn stop(&mut self) -> std::process::ExitStatus {
        self.terminate();
        self.wait()
    }

    /// Stops the server gracefully and starts it again on the same address.
    pub fn restart(&mut self) {
        assert!(self.stop().success(), "graceful stop exits 0");
        self.start_again();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn client() -> reqwest::Client {
    builder()
        .timeout(Duration::from_secs(60))
        .build()
        .expect("reqwest client")
}

/// A client builder that trusts no certificate until given one
/// ([`https_builder`]). Tests build hundreds of clients, and the system's
/// roots cost each one tens of milliseconds to load.
pub fn builder() -> reqwest::ClientBuilder {
    use_ring();
    reqwest::Client::builder().tls_certs_only(Vec::new())
}

/// `builder` for HTTPS that trusts `root` and nothing else, on rustls with
/// the `ring` provider.
pub fn https_builder(
    builder: reqwest::ClientBuilder,
    root: reqwest::Certificate,
) -> reqwest::ClientBuilder {
    use_ring();
    builder.tls_certs_only([root])
}

/// Makes `ring` the process's rustls provider: reqwest is built without
/// one of its own, and refuses to build any client, even for plain HTTP,
/// until there is one. Call before building a client.
pub fn use_ring() {
    herald_client::use_ring();
}

/// A self-signed certificate for `127.0.0.1` and `localhost`, with its PEM
/// files (`cert.pem`, `key.pem`) in a directory of its own.
pub struct TestCert {
    pub pem: String,
    pub key_pem: String,
    dir: tempfile::TempDir,
    cert: String,
    key: String,
}

impl TestCert {
    pub fn new() -> TestCert {
        let names = vec!["127.0.0.1".to_owned(), "localhost".to_owned()];
        let made = rcgen::generate_simple_self_signed(names).expect("a self-signed certificate");
        let dir = temp_dir();
        let cert = dir
            .path()
            .join("cert.pem")
            .to_str()
            .expect("utf-8 path")
            .to_owned();
        let key = dir
            .path()
            .join("key.pem")
            .to_str()
            .expect("utf-8 path")
            .to_owned();
        let made = TestCert {
            pem: made.cert.pem(),
            key_pem: made.signing_key.serialize_pem(),
            dir,
            cert,
            key,
        };
        made.write_files(&made.cert, &made.key);
        made
    }

    pub fn cert_path(&self) -> &str {
        &self.cert
    }

    pub fn key_path(&self) -> &str {
        &self.key
    }

    /// Writes this certificate and key over the files at `cert` and `key`,
    /// each replaced whole at once (written aside, then renamed).
    pub fn write_files(&self, cert: &str, key: &str) {
        for (path, text) in [(cert, &self.pem), (key, &self.key_pem)] {
            let aside = format!("{path}.new");
            std::fs::write(&aside, text).expect("write PEM");
            std::fs::rename(&aside, path).expect("rename PEM");
        }
    }

    /// The directory the files are in.
    pub fn dir(&self) -> &std::path::Path {
        self.dir.path()
    }
}

/// Publishes `data` to `topic` and returns the event id.
pub async fn publish(server: &Server, topic: &str, data: &str) -> String {
    let r = server
        .client()
        .post(server.url(&format!("/topics/{topic}")))
        .body(data.to_owned())
        .send()
        .await
        .expect("publish");
    assert_eq!(r.status(), 201, "publish {topic}");
    let v: serde_json::Value = r.json().await.expect("publish answer");
    v["id"].as_str().expect("id").to_owned()
}

/// Publishes `0`, `1`, … `n - 1` to `topic` as one NDJSON batch (one
/// commit, one hand-over to the fan-out) and returns what each should read.
pub async fn publish_numbered_batch(server: &Server, topic: &str, n: usize) -> Vec<String> {
    let data: Vec<String> = (0..n).map(|i| i.to_string()).collect();
    publish_batch(server, data.iter().map(|d| (topic, d.as_str()))).await;
    data
}

/// Publishes each `(topic, data)` as one NDJSON batch (one commit).
pub async fn publish_batch<'a>(server: &Server, events: impl Iterator<Item = (&'a str, &'a str)>) {
    let batch: String = events
        .map(|(topic, data)| format!("{{\"topic\":\"{topic}\",\"data\":\"{data}\"}}\n"))
        .collect();
    let r = server
        .client()
        .post(server.url("/publish"))
        .body(batch)
        .send()
        .await
        .expect("publish batch");
    assert_eq!(r.status(), 201, "publish batch");
}

/// The value of one metric line (`name{labels} value`) from `/metrics`.
pub async fn metric(server: &Server, series: &str) -> f64 {
    let text = metrics_text(server).await;
    text.lines()
        .find_map(|l| {
            l.strip_prefix(series)
                .and_then(|rest| rest.strip_prefix(' '))
        })
        .map(|v| v.trim().parse().expect("metric value"))
        .unwrap_or_else(|| panic!("no metric {series} in:\n{text}"))
}

/// The whole of `/metrics`.
pub async fn metrics_text(server: &Server) -> String {
    server
        .client()
        .get(server.url("/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("metrics body")
}

/// Polls `/metrics` until `series` equals `want`, for at most [`PATIENCE`].
/// Waiting on the server's own count is the only way to observe it.
pub async fn wait_for_metric(server: &Server, series: &str, want: f64) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let got = metric(server, series).await;
        if got == want {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{series} stayed {got}, wanted {want}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A fresh empty directory, removed when dropped.
pub fn temp_dir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("herald-test-")
        .tempdir()
        .unwrap()
}

/// Every event of `topic`, read by short poll from the oldest.
pub async fn read_all(server: &Server, topic: &str) -> Vec<serde_json::Value> {
    let mut cursor = "all".to_owned();
    let mut out = Vec::new();
    loop {
        let r = server
            .client()
            .get(server.url(&format!(
                "/topics/{topic}?limit=1000&last-event-id={cursor}"
            )))
            .send()
            .await
            .unwrap();
        if r.status() == 204 {
            return out;
        }
        assert_eq!(r.status(), 200);
        let v: serde_json::Value = r.json().await.unwrap();
        assert_eq!(v["gap"], false, "reading {topic} from the start met a gap");
        out.extend(v["events"].as_array().unwrap().iter().cloned());
        cursor = v["next"].as_str().unwrap().to_owned();
    }
}

/// Awaits `fut` for at most [`PATIENCE`].
pub async fn within<T>(what: &str, fut: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(PATIENCE, fut)
        .await
        .unwrap_or_else(|_| panic!("timed out: {what}"))
}

/// A raw HTTP connection that collects everything the server sends.
pub struct Raw {
    pub stream: TcpStream,
    pub seen: Vec<u8>,
}

impl Raw {
    /// Sends more bytes on the connection.
    pub async fn send(&mut self, bytes: &str) {
        self.stream.write_all(bytes.as_bytes()).await.unwrap();
    }

    pub async fn request(server: &Server, head: &str) -> Raw {
        let mut stream = TcpStream::connect(&server.addr).await.unwrap();
        stream.write_all(head.as_bytes()).await.unwrap();
        Raw {
            stream,
            seen: Vec::new(),
        }
    }

    /// Reads until `needle` has been seen; returns everything so far.
    pub async fn until(&mut self, needle: &str) -> String {
        self.until_n(needle, 1).await
    }

    /// Reads until `needle` has been seen `n` times; returns everything so far.
    pub async fn until_n(&mut self, needle: &str, n: usize) -> String {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        let mut buf = [0u8; 8192];
        while String::from_utf8_lossy(&self.seen).matches(needle).count() < n {
            let n = tokio::time::timeout_at(deadline, self.stream.read(&mut buf))
                .await
                .unwrap_or_else(|_| {
                    panic!(
                        "never saw {needle:?} in {:?}",
                        String::from_utf8_lossy(&self.seen)
                    )
                })
                .unwrap();
            assert!(
                n > 0,
                "closed before {needle:?}: {:?}",
                String::from_utf8_lossy(&self.seen)
            );
            self.seen.extend_from_slice(&buf[..n]);
        }
        String::from_utf8_lossy(&self.seen).into_owned()
    }

    /// Reads until the server closes the connection.
    pub async fn read_to_close(&mut self) -> String {
        tokio::time::timeout(PATIENCE, self.stream.read_to_end(&mut self.seen))
            .await
            .expect("server did not close")
            .unwrap();
        String::from_utf8_lossy(&self.seen).into_owned()
    }
}
