//! The direct path: subscribe requests answered on the socket without
//! hyper, and everything else handed over to hyper on the same connection.
//! The tests look for the seams — heads in pieces, pipelined requests that
//! cross from one path to the other, a stream ending on a connection that
//! lives on, clients leaving, shutdown with connections that never spoke.

use crate::harness::{PATIENCE, Raw, Server, client, metric, publish, wait_for_metric, within};

const LONG_POLLS: &str = "herald_subscriptions{transport=\"long-poll\"}";

/// Subscribe requests read so far by (the direct path, hyper).
async fn read_by(server: &Server) -> (f64, f64) {
    let direct = "herald_subscribe_requests_total{stack=\"direct\"}";
    let hyper = "herald_subscribe_requests_total{stack=\"hyper\"}";
    (metric(server, direct).await, metric(server, hyper).await)
}

/// The status of every answer in `text`, in order (a body is not followed
/// by a line break, so the next status line can start mid-line).
fn statuses(text: &str) -> Vec<String> {
    text.match_indices("HTTP/1.")
        .filter_map(|(i, _)| text.get(i + 9..i + 12))
        .map(str::to_owned)
        .collect()
}

#[tokio::test]
async fn an_ndjson_stream_answers_before_its_first_event() {
    let server = Server::start(&[]);
    let r = within(
        "ndjson head",
        client()
            .get(server.url("/topics/quiet"))
            .header("accept", "application/x-ndjson")
            .send(),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "application/x-ndjson");
}

#[tokio::test]
async fn pipelined_requests_are_answered_in_order_across_both_paths() {
    let server = Server::start(&[]);
    let get = |path: &str| format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n");
    let pipeline = [
        get("/topics/p?transport=bogus"),
        get("/topics/p?transport=poll"),
        get("/healthz"),
        get("/topics/p?transport=poll"),
        get("/topics/p?transport=long-poll&timeout=0"),
    ]
    .concat();
    let mut raw = Raw::request(&server, &pipeline).await;
    let text = raw.until_n("HTTP/1.1 ", 5).await;
    // The last answer is whole once its head is: a 204 has no body.
    let text = if text.ends_with("\r\n\r\n") {
        text
    } else {
        raw.until_n("\r\n\r\n", 5).await
    };
    let seen = statuses(&text);
    assert_eq!(seen, ["400", "204", "200", "204", "204"]);
    // Once hyper has the connection it keeps it: the two subscribe
    // requests after `/healthz` are its too.
    assert_eq!(read_by(&server).await, (2.0, 2.0));
    let text = String::from_utf8_lossy(&raw.seen).into_owned();
    assert!(text.contains("\"code\":\"bad_query\""), "{text}");
    assert!(text.contains("{\"status\":\"ok\"}"), "{text}");
}

#[tokio::test]
async fn a_head_that_arrives_in_pieces_is_answered() {
    let server = Server::start(&[]);
    let head = "GET /topics/pieces HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n";
    let (first, rest) = head.split_at(5);
    let mut raw = Raw::request(&server, first).await;
    for piece in rest.as_bytes().chunks(7) {
        tokio::task::yield_now().await;
        raw.send(std::str::from_utf8(piece).unwrap()).await;
    }
    raw.until(": herald\n\n").await;
    let id = publish(&server, "pieces", "whole").await;
    let text = raw.until("data: whole\n\n").await;
    assert!(text.contains(&format!("id: {id}\n")), "{text}");
    assert_eq!(read_by(&server).await, (1.0, 0.0));
}

#[tokio::test]
async fn a_stream_that_ends_leaves_its_connection_for_the_next_request() {
    let server = Server::start(&["--max-stream-age", "300ms"]);
    let mut raw = Raw::request(
        &server,
        "GET /topics/age HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n",
    )
    .await;
    raw.until("\r\n0\r\n\r\n").await;
    raw.send("GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await;
    raw.until("{\"status\":\"ok\"}").await;
    let text = String::from_utf8_lossy(&raw.seen).into_owned();
    assert_eq!(statuses(&text), ["200", "200"], "{text}");
}

#[tokio::test]
async fn http10_keep_alive_is_left_to_hyper_and_still_streams() {
    let server = Server::start(&[]);
    let mut raw = Raw::request(
        &server,
        "GET /topics/old HTTP/1.0\r\nConnection: keep-alive\r\nAccept: text/event-stream\r\n\r\n",
    )
    .await;
    raw.until(": herald\n\n").await;
    publish(&server, "old", "still here").await;
    raw.until("data: still here\n\n").await;
    assert_eq!(read_by(&server).await, (0.0, 1.0));
}

#[tokio::test]
async fn a_client_leaving_a_long_poll_is_forgotten() {
    let server = Server::start(&[]);
    let raw = Raw::request(
        &server,
        "GET /topics/left?transport=long-poll&timeout=60 HTTP/1.1\r\nHost: x\r\n\r\n",
    )
    .await;
    wait_for_metric(&server, LONG_POLLS, 1.0).await;
    drop(raw);
    wait_for_metric(&server, LONG_POLLS, 0.0).await;
}

#[tokio::test]
async fn connections_that_never_spoke_do_not_hold_up_shutdown() {
    let server = Server::start(&[]);
    let mut silent = Raw::request(&server, "").await;
    let mut half = Raw::request(&server, "GET /topics/half HTT").await;
    let mut streaming = Raw::request(
        &server,
        "GET /topics/s HTTP/1.0\r\nAccept: text/event-stream\r\n\r\n",
    )
    .await;
    streaming.until(": herald\n\n").await;
    let healthy = client().get(server.url("/healthz")).send().await.unwrap();
    assert_eq!(healthy.status(), 200);
    let exit = within(
        "graceful shutdown",
        tokio::task::spawn_blocking(move || {
            let mut server = server;
            server.stop()
        }),
    )
    .await
    .unwrap();
    assert!(exit.success(), "{exit:?}");
    for raw in [&mut silent, &mut half, &mut streaming] {
        tokio::time::timeout(PATIENCE, raw.read_to_close())
            .await
            .expect("closed by shutdown");
    }
}
