//! The exact bytes on the wire, read from a raw TCP socket: SSE framing,
//! headers, chunked and close-delimited streams, HTTP/1.0.

use crate::harness::{Raw, Server, publish};

fn sse_get(path: &str, extra: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n{extra}\r\n")
}

#[tokio::test]
async fn sse_opens_at_once_with_retry_and_comment_and_the_right_headers() {
    let server = Server::start(&["--retry", "2500ms"]);
    let mut raw = Raw::request(&server, &sse_get("/topics/w", "")).await;
    let text = raw.until(": herald\n\n").await;
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    let head = head.to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 200"));
    assert!(head.contains("content-type: text/event-stream"));
    assert!(head.contains("cache-control: no-cache"));
    assert!(head.contains("x-accel-buffering: no"));
    assert!(head.contains("transfer-encoding: chunked"));
    assert!(body.contains("retry: 2500\n: herald\n\n"), "{body:?}");
}

#[tokio::test]
async fn data_is_split_on_crlf_lf_and_cr_with_empty_lines_kept() {
    let server = Server::start(&[]);
    let cases: [(&str, &str); 6] = [
        ("one", "data: one\n"),
        ("", "data:\n"),
        ("x\n", "data: x\ndata:\n"),
        ("a\r\nb", "data: a\ndata: b\n"),
        ("a\rb\r", "data: a\ndata: b\ndata:\n"),
        ("a\n\nb", "data: a\ndata:\ndata: b\n"),
    ];
    let mut ids = Vec::new();
    for (data, _) in cases {
        ids.push(publish(&server, "lines", data).await);
    }
    let mut raw = Raw::request(&server, &sse_get("/topics/lines?last-event-id=all", "")).await;
    let all = raw
        .until(&format!("id: {}\ndata: a\ndata:\ndata: b\n\n", ids[5]))
        .await;
    let body = dechunk(all.split_once("\r\n\r\n").unwrap().1);
    for ((_, wire), id) in cases.iter().zip(&ids) {
        let frame = format!("id: {id}\n{wire}\n");
        assert!(body.contains(&frame), "missing {frame:?} in {body:?}");
    }
}

#[tokio::test]
async fn event_types_and_keep_alive_comments() {
    let server = Server::start(&["--keepalive", "100ms"]);
    let mut raw = Raw::request(&server, &sse_get("/topics/typed", "")).await;
    raw.until(": herald\n\n").await;
    let id = {
        let r = crate::harness::client()
            .post(server.url("/topics/typed?event=price.update"))
            .body("42")
            .send()
            .await
            .unwrap();
        r.json::<serde_json::Value>().await.unwrap()["id"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    raw.until(&format!("id: {id}\nevent: price.update\ndata: 42\n\n"))
        .await;
    raw.until(": keep-alive\n\n").await;
}

#[tokio::test]
async fn ndjson_on_http_1_0_is_close_delimited() {
    let server = Server::start(&["--max-stream-age", "300ms"]);
    let id = publish(&server, "old", "v1").await;
    let mut raw = Raw::request(
        &server,
        "GET /topics/old?transport=stream&last-event-id=all HTTP/1.0\r\n\r\n",
    )
    .await;
    let text = raw.read_to_close().await;
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    let head = head.to_ascii_lowercase();
    assert!(head.contains(" 200 "), "{head}");
    assert!(
        !head.contains("transfer-encoding"),
        "no chunked encoding on HTTP/1.0: {head}"
    );
    assert!(!head.contains("content-length"), "{head}");
    let line = body.lines().next().unwrap();
    let v: serde_json::Value = serde_json::from_str(line).unwrap();
    assert_eq!(v["id"], id.as_str());
    assert_eq!(v["data"], "v1");
}

#[tokio::test]
async fn ndjson_on_http_1_1_is_chunked() {
    let server = Server::start(&[]);
    publish(&server, "new", "v1").await;
    let mut raw = Raw::request(
        &server,
        "GET /topics/new?last-event-id=all HTTP/1.1\r\nHost: x\r\nAccept: application/x-ndjson\r\n\r\n",
    )
    .await;
    let text = raw.until("\"data\":\"v1\"").await;
    let head = text.split_once("\r\n\r\n").unwrap().0.to_ascii_lowercase();
    assert!(head.contains("transfer-encoding: chunked"), "{head}");
    assert!(head.contains("content-type: application/x-ndjson"));
}

/// Removes HTTP/1.1 chunk framing.
fn dechunk(body: &str) -> String {
    let mut out = String::new();
    let mut rest = body;
    while let Some((size, after)) = rest.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 || after.len() < n {
            out.push_str(&after[..after.len().min(n)]);
            break;
        }
        out.push_str(&after[..n]);
        rest = &after[n..];
        rest = rest.strip_prefix("\r\n").unwrap_or(rest);
    }
    out
}
