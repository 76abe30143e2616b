//! Bad input gets a JSON error with a fitting status, and the server stays
//! healthy with its data intact.

use serde_json::Value;

use crate::harness::{Raw, Server, client, publish};

async fn expect_error(r: reqwest::Response, status: u16, code: &str) {
    assert_eq!(r.status(), status);
    assert!(
        r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/json"),
        "errors are JSON"
    );
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], code, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty())
    );
}

#[tokio::test]
async fn every_kind_of_bad_input_is_refused_cleanly() {
    let server = Server::start(&["--max-body", "64"]);
    let c = client();
    let kept = publish(&server, "safe", "precious").await;

    let long = "x".repeat(129);
    for topic in ["bad%20topic", "a%2Fb", "caf%C3%A9", "%FF", long.as_str()] {
        let url = server.url(&format!("/topics/{topic}"));
        expect_error(
            c.post(&url).body("x").send().await.unwrap(),
            400,
            "bad_topic",
        )
        .await;
        expect_error(c.get(&url).send().await.unwrap(), 400, "bad_topic").await;
    }
    expect_error(
        c.get(server.url("/subscribe?topic=ok&topic=no%20way"))
            .send()
            .await
            .unwrap(),
        400,
        "bad_topic",
    )
    .await;
    expect_error(
        c.get(server.url("/subscribe")).send().await.unwrap(),
        400,
        "bad_query",
    )
    .await;
    expect_error(
        c.post(server.url("/topics/t?event=bad%20type"))
            .body("x")
            .send()
            .await
            .unwrap(),
        400,
        "bad_event_type",
    )
    .await;

    let latin1 = vec![b'c', b'a', b'f', 0xE9];
    expect_error(
        c.post(server.url("/topics/t"))
            .body(latin1.clone())
            .send()
            .await
            .unwrap(),
        415,
        "not_utf8",
    )
    .await;
    expect_error(
        c.post(server.url("/publish"))
            .body(latin1)
            .send()
            .await
            .unwrap(),
        415,
        "not_utf8",
    )
    .await;

    let big = "y".repeat(65);
    expect_error(
        c.post(server.url("/topics/t"))
            .body(big.clone())
            .send()
            .await
            .unwrap(),
        413,
        "too_large",
    )
    .await;
    // Without a Content-Length, the limit holds while streaming the body.
    let chunks = futures_util::stream::iter(vec![Ok::<_, std::io::Error>(big.clone())]);
    let streamed = c
        .post(server.url("/topics/t"))
        .body(reqwest::Body::wrap_stream(chunks))
        .send()
        .await
        .unwrap();
    expect_error(streamed, 413, "too_large").await;
    expect_error(
        c.post(server.url("/publish"))
            .body(big)
            .send()
            .await
            .unwrap(),
        413,
        "too_large",
    )
    .await;

    for q in ["limit=abc", "limit=0", "limit=100000", "limit=-1"] {
        let url = server.url(&format!("/topics/t?{q}"));
        expect_error(c.get(&url).send().await.unwrap(), 400, "bad_query").await;
    }
    for q in ["timeout=soon", "timeout=-1", "timeout=NaN"] {
        let url = server.url(&format!("/topics/t?transport=long-poll&{q}"));
        expect_error(c.get(&url).send().await.unwrap(), 400, "bad_query").await;
    }
    expect_error(
        c.get(server.url("/topics/t?transport=pigeon"))
            .send()
            .await
            .unwrap(),
        400,
        "bad_query",
    )
    .await;
    expect_error(
        c.post(server.url("/topics/t"))
            .header("Idempotency-Key", "")
            .body("x")
            .send()
            .await
            .unwrap(),
        400,
        "bad_request",
    )
    .await;
    expect_error(
        c.get(server.url("/nowhere")).send().await.unwrap(),
        404,
        "not_found",
    )
    .await;
    expect_error(
        c.delete(server.url("/topics/t")).send().await.unwrap(),
        405,
        "method_not_allowed",
    )
    .await;

    // A junk cursor is never an error: it is an unknown cursor (a gap).
    for cursor in ["junk", "1-", "%00", "a=b,c"] {
        let r = c
            .get(server.url(&format!("/topics/safe?last-event-id={cursor}")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "cursor {cursor:?}");
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["gap"], true);
        assert_eq!(v["events"][0]["data"], "precious");
    }

    // Still healthy, nothing lost, nothing extra.
    assert_eq!(
        c.get(server.url("/healthz")).send().await.unwrap().status(),
        200
    );
    let page: Value = c
        .get(server.url("/topics/safe"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(page["events"].as_array().unwrap().len(), 1);
    assert_eq!(page["events"][0]["id"], kept.as_str());
    assert_eq!(
        c.get(server.url("/topics/t"))
            .send()
            .await
            .unwrap()
            .status(),
        204
    );
}

/// Bodies must be what a route reads: JSON objects of their shape (serde
/// would read a struct from an array), JSON no deeper than the parser
/// reads back; nothing changes on a refusal.
#[tokio::test]
async fn json_bodies_must_be_objects_of_their_shape_and_not_too_deep() {
    let server = Server::start(&[]);
    let c = client();
    let json = |body: String| {
        c.post(server.url("/queues/strict/tasks"))
            .header("content-type", "application/json")
            .body(body)
    };
    let deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
    expect_error(json(deep).send().await.unwrap(), 400, "bad_request").await;
    let r = json("{\"n\":1}".into()).send().await.unwrap();
    assert_eq!(r.status(), 201);
    let claim: Value = c
        .post(server.url("/queues/strict/claim?wait=5"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = claim["task"]["id"].as_str().unwrap().to_owned();
    let token = claim["lease"]["token"].as_str().unwrap().to_owned();
    let call = |what: &str, body: &str| {
        c.post(server.url(&format!("/tasks/{id}/{what}")))
            .header("Herald-Lease", &token)
            .header("content-type", "application/json")
            .body(body.to_owned())
    };
    for (what, body) in [
        ("progress", "[]"),
        ("progress", "[0.5,\"m\"]"),
        ("fail", "[\"boom\",true]"),
        ("fail", "\"boom\""),
    ] {
        expect_error(call(what, body).send().await.unwrap(), 400, "bad_request").await;
    }
    let task: Value = c
        .get(server.url(&format!("/tasks/{id}")))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(task["status"], "running", "{task}");
    assert!(task["progress"].is_null(), "{task}");
    let r = c
        .post(server.url("/api/notifications"))
        .body("[\"info\",\"hello\"]")
        .send()
        .await
        .unwrap();
    expect_error(r, 400, "bad_request").await;
}

/// The shapes that let two parsers disagree about where a request ends
/// are refused, and nothing is published.
#[tokio::test]
async fn ambiguous_request_framing_is_refused() {
    let server = Server::start(&[]);
    for framing in [
        "Content-Length: 5\r\nTransfer-Encoding: chunked",
        "Transfer-Encoding: gzip, chunked",
    ] {
        let mut raw = Raw::request(
            &server,
            &format!(
                "POST /topics/smuggled HTTP/1.1\r\nHost: x\r\n{framing}\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
            ),
        )
        .await;
        let text = raw.until("}}").await;
        assert!(text.starts_with("HTTP/1.1 400 "), "{framing}: {text}");
        assert!(text.contains("\"code\":\"bad_request\""), "{text}");
    }
    // On a connection hyper holds already (after a publish), the router's
    // layer refuses what hyper lets through.
    let mut raw = Raw::request(
        &server,
        "POST /topics/fine HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nhi\
         POST /topics/smuggled HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n\
         5\r\nhello\r\n0\r\n\r\n",
    )
    .await;
    let text = raw.until("\"code\":\"bad_request\"").await;
    assert!(text.starts_with("HTTP/1.1 201 "), "{text}");
    assert!(text.contains("HTTP/1.1 400 "), "{text}");
    let r = client()
        .get(server.url("/topics/smuggled?last-event-id=all"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204, "nothing was published");
}

#[tokio::test]
async fn a_websocket_key_that_is_not_16_bytes_of_base64_is_refused() {
    let server = Server::start(&[]);
    for path in ["/topics/ws", "/subscribe?topic=ws"] {
        let mut raw = Raw::request(
            &server,
            &format!(
                "GET {path} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                 Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: abc\r\n\r\n"
            ),
        )
        .await;
        let text = raw.until("}}").await;
        assert!(text.starts_with("HTTP/1.1 400 "), "{text}");
    }
}

/// What hyper would answer with an empty body — a head that is not HTTP/1,
/// a head over 16 KiB — is answered in the same JSON as every other error,
/// and the connection closed.
#[tokio::test]
async fn heads_the_server_cannot_read_get_json_errors() {
    let server = Server::start(&[]);
    let big = format!(
        "GET /topics/a HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "y".repeat(17 * 1024)
    );
    for (head, status, code) in [
        ("GARBAGE\r\n\r\n".to_owned(), "400", "bad_request"),
        (
            "GET /topics/a HTTP/1.1\r\nbad header\r\n\r\n".to_owned(),
            "400",
            "bad_request",
        ),
        (big, "431", "head_too_large"),
    ] {
        let mut raw = Raw::request(&server, &head).await;
        let text = raw.read_to_close().await;
        assert!(text.starts_with(&format!("HTTP/1.1 {status} ")), "{text}");
        assert!(text.contains("content-type: application/json"), "{text}");
        assert!(text.contains(&format!("\"code\":\"{code}\"")), "{text}");
    }
    let healthy = client().get(server.url("/healthz")).send().await.unwrap();
    assert_eq!(healthy.status(), 200);
}

/// Opens a WebSocket on a raw socket, sends `frame`, and returns the close
/// code of the first frame the server sends back.
async fn close_code_for(server: &Server, frame: &[u8]) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut raw = Raw::request(
        server,
        "GET /topics/frames HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
    )
    .await;
    let head = raw.until("\r\n\r\n").await;
    assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
    raw.stream.write_all(frame).await.unwrap();
    let mut seen = raw.seen.split_off(head.find("\r\n\r\n").unwrap() + 4);
    let mut buf = [0u8; 512];
    while seen.len() < 4 {
        let n = tokio::time::timeout(crate::harness::PATIENCE, raw.stream.read(&mut buf))
            .await
            .expect("a close frame")
            .unwrap();
        assert!(n > 0, "closed without a close frame");
        seen.extend_from_slice(&buf[..n]);
    }
    assert_eq!(seen[0], 0x88, "a close frame: {seen:?}");
    u16::from_be_bytes([seen[2], seen[3]])
}

#[tokio::test]
async fn websocket_frames_the_server_will_not_read_get_their_close_codes() {
    let server = Server::start(&[]);
    // A masked text frame announcing 1 MiB: over the 64 KiB message cap.
    let mut big = vec![0x81, 0xFF];
    big.extend_from_slice(&(1u64 << 20).to_be_bytes());
    big.extend_from_slice(&[1, 2, 3, 4]);
    assert_eq!(close_code_for(&server, &big).await, 1009);
    // RSV1 set with no extension agreed: a protocol error.
    let broken = [0xC1, 0x80, 1, 2, 3, 4];
    assert_eq!(close_code_for(&server, &broken).await, 1002);
}
