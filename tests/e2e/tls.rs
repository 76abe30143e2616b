//! HTTPS (`--tls-cert`, `--tls-key`): every transport over HTTP/1.1 and
//! HTTP/2 (ALPN), many streams on one HTTP/2 connection, WebSocket by
//! HTTP/2's extended CONNECT (over TLS and over h2c), a certificate
//! reloaded on SIGHUP under open streams, and the connections that must be
//! closed: a silent one, and plain HTTP sent to the TLS port. Clients are
//! reqwest, the `h2` crate, tokio-tungstenite and tokio-rustls.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use bytes::Bytes;
use eventsource_stream::Eventsource;
use futures_util::StreamExt;
use futures_util::future::join_all;
use reqwest::Version;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::Role;

use crate::harness::{
    Raw, Server, TestCert, https_builder, publish, use_ring, wait_for_metric, within,
};

fn gauge(transport: &str) -> String {
    format!("herald_subscriptions{{transport=\"{transport}\"}}")
}

/// A TLS connection to `server` that trusts `cert` and offers `alpn`.
async fn tls_connect(
    server: &Server,
    cert: &TestCert,
    alpn: &[&[u8]],
) -> tokio_rustls::client::TlsStream<TcpStream> {
    use_ring();
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(cert.pem.as_bytes()).expect("PEM"))
        .expect("a root");
    let mut config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let tcp = TcpStream::connect(&server.addr).await.expect("connect");
    let name = ServerName::try_from("127.0.0.1").expect("a name");
    within(
        "TLS handshake",
        tokio_rustls::TlsConnector::from(Arc::new(config)).connect(name, tcp),
    )
    .await
    .expect("TLS handshake")
}

/// An HTTP/2 client connection over `io`, driven in the background.
async fn h2_client<IO>(io: IO) -> h2::client::SendRequest<Bytes>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (send, connection) = within("HTTP/2 handshake", h2::client::handshake(io))
        .await
        .expect("HTTP/2 handshake");
    tokio::spawn(async move {
        let _ = connection.await;
    });
    send
}

/// One HTTP/2 connection over TLS with ALPN `h2`.
async fn h2_over_tls(server: &Server, cert: &TestCert) -> h2::client::SendRequest<Bytes> {
    let tls = tls_connect(server, cert, &[b"h2"]).await;
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]), "ALPN");
    h2_client(tls).await
}

/// `GET path` on an HTTP/2 connection; its answer, status checked.
async fn h2_get(
    send: &mut h2::client::SendRequest<Bytes>,
    server: &Server,
    path: &str,
    accept: &str,
) -> http::Response<h2::RecvStream> {
    let request = http::Request::get(server.url(path))
        .header("accept", accept)
        .body(())
        .unwrap();
    let (response, _) = send.send_request(request, true).expect("send");
    let response = within("HTTP/2 answer", response).await.expect("answer");
    assert_eq!(response.status(), 200, "{path}");
    response
}

/// Reads `body` until what came contains `needle`.
async fn h2_read_until(body: &mut h2::RecvStream, needle: &str) -> String {
    let mut seen = Vec::new();
    while !String::from_utf8_lossy(&seen).contains(needle) {
        let chunk = within("HTTP/2 data", body.data())
            .await
            .unwrap_or_else(|| panic!("ended before {needle:?}"))
            .expect("data");
        body.flow_control()
            .release_capacity(chunk.len())
            .expect("release");
        seen.extend_from_slice(&chunk);
    }
    String::from_utf8_lossy(&seen).into_owned()
}

// ------------------------------------------- every transport, both versions

/// The dashboard, publish, short poll, SSE, NDJSON stream and long poll
/// over HTTPS, each answered in `version`.
async fn every_transport_over(version: Version) {
    let cert = TestCert::new();
    let server = Server::start_tls(&cert, &[]);
    let client = match version {
        Version::HTTP_11 => server.client_builder().http1_only().build().unwrap(),
        _ => server.client(),
    };
    let url = |path: &str| server.url(path);
    let r = client.get(url("/")).send().await.unwrap();
    assert_eq!(
        (r.status().as_u16(), r.version()),
        (200, version),
        "dashboard"
    );
    let r = client
        .post(url("/topics/t"))
        .body("p0")
        .send()
        .await
        .unwrap();
    assert_eq!(
        (r.status().as_u16(), r.version()),
        (201, version),
        "publish"
    );

    let r = client.get(url("/topics/t")).send().await.unwrap();
    assert_eq!((r.status().as_u16(), r.version()), (200, version), "poll");
    let page: Value = r.json().await.unwrap();
    assert_eq!(page["events"][0]["data"], "p0");

    let open = |accept: &'static str| client.get(url("/topics/t")).header("accept", accept).send();
    let sse = open("text/event-stream").await.unwrap();
    assert_eq!(
        (sse.status().as_u16(), sse.version()),
        (200, version),
        "SSE"
    );
    assert_eq!(sse.headers()["content-type"], "text/event-stream");
    let mut sse = sse.bytes_stream().eventsource();
    let ndjson = open("application/x-ndjson").await.unwrap();
    assert_eq!(
        (ndjson.status().as_u16(), ndjson.version()),
        (200, version),
        "NDJSON"
    );
    let mut ndjson = ndjson.bytes_stream();
    let long_poll = tokio::spawn(
        client
            .get(url("/topics/t?transport=long-poll&timeout=30"))
            .send(),
    );
    for transport in ["sse", "stream", "long-poll"] {
        wait_for_metric(&server, &gauge(transport), 1.0).await;
    }

    let r = client
        .post(url("/topics/t"))
        .body("p1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);

    let event = within("SSE event", sse.next()).await.unwrap().unwrap();
    assert_eq!(event.data, "p1");
    let mut lines = Vec::new();
    let line = loop {
        let chunk = within("NDJSON line", ndjson.next()).await.unwrap().unwrap();
        lines.extend_from_slice(&chunk);
        let text = String::from_utf8_lossy(&lines).into_owned();
        if let Some(line) = text.lines().find(|l| !l.trim().is_empty()) {
            break line.to_owned();
        }
    };
    let line: Value = serde_json::from_str(&line).unwrap();
    assert_eq!(line["data"], "p1");
    let r = within("long poll", long_poll).await.unwrap().unwrap();
    assert_eq!(
        (r.status().as_u16(), r.version()),
        (200, version),
        "long poll"
    );
    let answer: Value = r.json().await.unwrap();
    assert_eq!(answer["events"][0]["data"], "p1");
}

#[tokio::test]
async fn every_transport_over_https_http11() {
    every_transport_over(Version::HTTP_11).await;
}

#[tokio::test]
async fn every_transport_over_https_http2() {
    every_transport_over(Version::HTTP_2).await;
}

// ------------------------------------------- many streams, one connection

/// What a browser does with HTTP/2: thirty SSE streams on one connection
/// (a client of HTTP/1.1 gets six per origin), each given the event
/// published once all are open.
#[tokio::test]
async fn thirty_sse_streams_share_one_http2_connection() {
    const STREAMS: usize = 30;
    let cert = TestCert::new();
    let server = Server::start_tls(&cert, &[]);
    // One `SendRequest` is one TCP connection.
    let mut send = h2_over_tls(&server, &cert).await;
    let mut bodies = Vec::new();
    for _ in 0..STREAMS {
        let response = h2_get(&mut send, &server, "/topics/many", "text/event-stream").await;
        assert_eq!(response.version(), Version::HTTP_2);
        assert_eq!(response.headers()["content-type"], "text/event-stream");
        bodies.push(response.into_body());
    }
    wait_for_metric(&server, &gauge("sse"), STREAMS as f64).await;
    let id = publish(&server, "many", "to all").await;
    let got = join_all(
        bodies
            .iter_mut()
            .map(|body| h2_read_until(body, "data: to all\n")),
    )
    .await;
    for seen in got {
        assert!(seen.contains(&format!("id: {id}\n")), "{seen:?}");
    }
}

// --------------------------------------- WebSocket over HTTP/2 (RFC 8441)

/// An HTTP/2 stream as a byte stream, for a WebSocket to run on.
struct H2Stream {
    send: h2::SendStream<Bytes>,
    recv: h2::RecvStream,
    unread: Bytes,
}

impl AsyncRead for H2Stream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        while self.unread.is_empty() {
            match ready!(self.recv.poll_data(cx)) {
                Some(Ok(chunk)) => {
                    let _ = self.recv.flow_control().release_capacity(chunk.len());
                    self.unread = chunk;
                }
                Some(Err(e)) => return Poll::Ready(Err(io::Error::other(e))),
                None => return Poll::Ready(Ok(())),
            }
        }
        let n = self.unread.len().min(buf.remaining());
        buf.put_slice(&self.unread.split_to(n));
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for H2Stream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.send.reserve_capacity(buf.len());
        while self.send.capacity() == 0 {
            match ready!(self.send.poll_capacity(cx)) {
                Some(Ok(_)) => {}
                Some(Err(e)) => return Poll::Ready(Err(io::Error::other(e))),
                None => return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into())),
            }
        }
        let n = self.send.capacity().min(buf.len());
        let data = Bytes::copy_from_slice(&buf[..n]);
        self.send.send_data(data, false).map_err(io::Error::other)?;
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        let _ = self.send.send_data(Bytes::new(), true);
        Poll::Ready(Ok(()))
    }
}

/// Subscribes to a topic by an extended CONNECT on `send`, then checks that
/// an event published arrives as a WebSocket text message.
async fn websocket_by_extended_connect(
    mut send: h2::client::SendRequest<Bytes>,
    server: &Server,
    topic: &str,
) {
    // Any answer comes after the server's SETTINGS, which must allow an
    // extended CONNECT (SETTINGS_ENABLE_CONNECT_PROTOCOL).
    h2_get(&mut send, server, "/healthz", "*/*").await;
    assert!(send.is_extended_connect_protocol_enabled());
    let request = http::Request::builder()
        .method(http::Method::CONNECT)
        .uri(server.url(&format!("/topics/{topic}")))
        .header("sec-websocket-version", "13")
        .extension(h2::ext::Protocol::from_static("websocket"))
        .body(())
        .unwrap();
    let (response, stream) = send.send_request(request, false).expect("CONNECT");
    let response = within("CONNECT answer", response).await.expect("answer");
    assert_eq!(response.status(), 200, "{response:?}");
    let io = H2Stream {
        send: stream,
        recv: response.into_body(),
        unread: Bytes::new(),
    };
    let mut ws = WebSocketStream::from_raw_socket(io, Role::Client, None).await;
    wait_for_metric(server, &gauge("ws"), 1.0).await;
    let id = publish(server, topic, "over h2").await;
    let message = loop {
        match within("a WebSocket message", ws.next()).await {
            Some(Ok(Message::Text(text))) => break text,
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            other => panic!("{other:?}"),
        }
    };
    let event: Value = serde_json::from_str(&message).unwrap();
    assert_eq!(
        (&event["id"], &event["topic"], &event["data"]),
        (
            &Value::from(id),
            &Value::from(topic),
            &Value::from("over h2")
        )
    );
    ws.close(None).await.expect("close");
    wait_for_metric(server, &gauge("ws"), 0.0).await;
}

#[tokio::test]
async fn websocket_over_http2_with_tls() {
    let cert = TestCert::new();
    let server = Server::start_tls(&cert, &[]);
    let send = h2_over_tls(&server, &cert).await;
    websocket_by_extended_connect(send, &server, "ws-h2").await;
}

#[tokio::test]
async fn websocket_over_h2c() {
    let server = Server::start(&[]);
    let tcp = TcpStream::connect(&server.addr).await.unwrap();
    let send = h2_client(tcp).await;
    websocket_by_extended_connect(send, &server, "ws-h2c").await;
}

#[tokio::test]
async fn a_connect_for_another_protocol_is_refused() {
    let server = Server::start(&[]);
    let tcp = TcpStream::connect(&server.addr).await.unwrap();
    let mut send = h2_client(tcp).await;
    h2_get(&mut send, &server, "/healthz", "*/*").await;
    let request = http::Request::builder()
        .method(http::Method::CONNECT)
        .uri(server.url("/topics/t"))
        .extension(h2::ext::Protocol::from_static("webtransport"))
        .body(())
        .unwrap();
    let (response, _stream) = send.send_request(request, false).expect("CONNECT");
    let response = within("CONNECT answer", response).await.expect("answer");
    assert_eq!(response.status(), 405);
}

// ---------------------------------------------------------- SIGHUP reload

/// SIGHUP swaps the certificate for new handshakes; streams opened before
/// go on, on HTTP/2 and HTTP/1.1.
#[tokio::test]
async fn sighup_reloads_the_certificate_under_open_streams() {
    let (a, b) = (TestCert::new(), TestCert::new());
    let mut server = Server::start_tls(&a, &[]);
    let mut streams = Vec::new();
    for client in [
        server.client(),
        server.client_builder().http1_only().build().unwrap(),
    ] {
        let r = client
            .get(server.url("/topics/reload"))
            .header("accept", "text/event-stream")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        streams.push(r.bytes_stream().eventsource());
    }
    let versions = ["HTTP/2", "HTTP/1.1"];
    wait_for_metric(&server, &gauge("sse"), 2.0).await;

    b.write_files(a.cert_path(), a.key_path());
    server.signal("HUP");
    // Nothing tells a client that the reload is done but a new handshake
    // that presents B: one is tried every 50 ms, for at most 10 s.
    server.trust(&b.pem);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match server.client().get(server.url("/healthz")).send().await {
            Ok(r) if r.status() == 200 => break,
            other => {
                assert!(Instant::now() < deadline, "still not B: {other:?}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    let trusts_a = https_builder(
        reqwest::Client::builder(),
        reqwest::Certificate::from_pem(a.pem.as_bytes()).unwrap(),
    )
    .build()
    .unwrap();
    let refused = trusts_a.get(server.url("/healthz")).send().await;
    assert!(refused.is_err(), "A is no longer presented: {refused:?}");

    publish(&server, "reload", "after").await;
    for (stream, version) in streams.iter_mut().zip(versions) {
        let event = within("an event after the reload", stream.next())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(event.data, "after", "{version}");
    }
}

/// Without TLS there is nothing to reload, and a SIGHUP (a service
/// manager's `reload`) must not end the server as its default action
/// would: a stream opened before goes on, and SIGTERM after it (delivered
/// after the SIGHUP, which is pending first) still stops it cleanly.
#[tokio::test]
async fn sighup_without_tls_changes_nothing() {
    let mut server = Server::start(&[]);
    let r = server
        .client()
        .get(server.url("/topics/hup"))
        .header("accept", "text/event-stream")
        .send()
        .await
        .unwrap();
    let mut stream = r.bytes_stream().eventsource();
    wait_for_metric(&server, &gauge("sse"), 1.0).await;
    server.signal("HUP");
    publish(&server, "hup", "after").await;
    let event = within("an event after SIGHUP", stream.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(event.data, "after");
    assert!(server.stop().success(), "SIGHUP then SIGTERM exits 0");
}

// ------------------------------------------ connections that must close

/// Reads until the server closes (or resets) the connection; how long it
/// took.
async fn closed_after<R: AsyncRead + Unpin>(mut io: R) -> Duration {
    let start = Instant::now();
    let mut sink = [0u8; 1024];
    loop {
        match within("the server to close", io.read(&mut sink)).await {
            Ok(0) | Err(_) => return start.elapsed(),
            Ok(_) => {}
        }
    }
}

/// The issue-14 rule over TLS: a client that connects and sends nothing,
/// or completes the handshake and then sends nothing, is closed at the
/// head timeout.
#[tokio::test]
async fn a_silent_tls_client_is_closed_at_the_head_timeout() {
    let cert = TestCert::new();
    let server = Server::start_tls(&cert, &["--head-timeout", "1s"]);
    let tcp = TcpStream::connect(&server.addr).await.unwrap();
    let before_handshake = closed_after(tcp).await;
    let tls = tls_connect(&server, &cert, &[b"h2", b"http/1.1"]).await;
    let after_handshake = closed_after(tls).await;
    for waited in [before_handshake, after_handshake] {
        assert!(
            waited >= Duration::from_millis(900) && waited < Duration::from_secs(5),
            "closed after {waited:?}"
        );
    }
    let r = server.client().get(server.url("/healthz")).send().await;
    assert_eq!(r.unwrap().status(), 200, "still serving");
}

/// Plain HTTP sent to the TLS port gets no answer, only a closed
/// connection, and the server goes on serving.
#[tokio::test]
async fn plain_http_to_the_tls_port_is_closed() {
    let cert = TestCert::new();
    let server = Server::start_tls(&cert, &[]);
    let raw = Raw::request(
        &server,
        "GET /topics/t?transport=poll HTTP/1.1\r\nHost: x\r\n\r\n",
    )
    .await;
    let mut stream = raw.stream;
    let mut seen = Vec::new();
    let _ = within("the server to close", stream.read_to_end(&mut seen)).await;
    assert!(
        !String::from_utf8_lossy(&seen).contains("HTTP/1"),
        "{seen:?}"
    );
    let r = server.client().get(server.url("/healthz")).send().await;
    assert_eq!(r.unwrap().status(), 200, "still serving");
}

// ---------------------------------------------------------------- start-up

/// `herald serve` with `args`: it must refuse to start, and say `words`.
fn refuses_to_start(args: &[&str], words: &[&str]) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_herald"))
        .args(["serve", "--listen", "127.0.0.1:0", "--store", "memory"])
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run herald");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{args:?} started");
    assert!(out.stdout.is_empty(), "{args:?}: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    for w in words {
        assert!(stderr.contains(w), "no {w:?} in {stderr}");
    }
}

#[test]
fn tls_files_that_cannot_be_used_stop_the_start_naming_them() {
    let (a, b) = (TestCert::new(), TestCert::new());
    let missing = a.dir().join("missing.pem");
    let missing = missing.to_str().unwrap();
    refuses_to_start(
        &["--tls-cert", missing, "--tls-key", a.key_path()],
        &[missing],
    );
    refuses_to_start(
        &["--tls-cert", a.cert_path(), "--tls-key", missing],
        &[missing],
    );
    let empty = a.dir().join("empty.pem");
    std::fs::write(&empty, "").unwrap();
    let empty = empty.to_str().unwrap();
    refuses_to_start(&["--tls-cert", empty, "--tls-key", a.key_path()], &[empty]);
    // A's certificate with B's key.
    refuses_to_start(
        &["--tls-cert", a.cert_path(), "--tls-key", b.key_path()],
        &[a.cert_path(), b.key_path()],
    );
    refuses_to_start(&["--tls-cert", a.cert_path()], &["--tls-key"]);
}
