//! The workers of the `cycle` mode: each completes every task it gets at
//! once, with the task's payload as the result (so its producer can tell
//! the result is its own).
//!
//! `http` workers loop claim → complete on one keep-alive connection each;
//! `ws` workers hold one WebSocket each on `/queues/{q}/work`, where the
//! server pushes `{"type":"task",…}` frames (up to `count` held at once)
//! and the worker answers each with a `complete` op. Workers run until the
//! run aborts them, once every producer has its last result.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::{self, Message};

use super::{Failure, Shared, Work};
use crate::http1::{Conn, request};
use crate::net::connect;
use crate::tasks::{LEASE_HEADER, send, unexpected};

/// How long a claim waits for a task, and how long a lease lasts, in s.
const CLAIM_WAIT: u32 = 30;
const LEASE: u32 = 30;

/// Starts `n` workers of kind `work`; each adds its completions to
/// `completed`.
pub fn start(
    shared: &Shared,
    work: Work,
    n: usize,
    count: usize,
    completed: &Arc<AtomicU64>,
) -> Vec<JoinHandle<()>> {
    (0..n)
        .map(|_| {
            let (shared, completed) = (shared.clone(), completed.clone());
            match work {
                Work::Http => tokio::spawn(http_worker(shared, completed)),
                Work::Ws => tokio::spawn(ws_worker(shared, count, completed)),
            }
        })
        .collect()
}

/// Claims (waiting up to [`CLAIM_WAIT`] s) and completes with the lease
/// token, on its own connection, until aborted.
async fn http_worker(shared: Shared, completed: Arc<AtomicU64>) {
    let path = format!(
        "/queues/{}/claim?wait={CLAIM_WAIT}&lease={LEASE}",
        shared.queue
    );
    let claim = request("POST", &path, &shared.t.host, &shared.headers(&[]), b"");
    let mut conn = Conn::new(&shared.t);
    loop {
        let failed = match send(&mut conn, &claim, "claim").await {
            Ok(a) if a.status == 204 => continue,
            Ok(a) if a.status == 200 => match claimed(&a.body) {
                Some((id, token, result)) => {
                    complete(&shared, &mut conn, &id, &token, &result, &completed).await;
                    continue;
                }
                None => "claim: 200 without task.id and lease.token".to_owned(),
            },
            Ok(a) => unexpected("claim", &a),
            Err(e) => e,
        };
        shared.errors.add(failed);
        // Do not spin on a failing server.
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// `POST /tasks/{id}/complete` with the lease and the payload as result.
async fn complete(
    shared: &Shared,
    conn: &mut Conn,
    id: &str,
    token: &str,
    result: &str,
    completed: &AtomicU64,
) {
    let lease = format!("{LEASE_HEADER}: {token}");
    let headers = shared.headers(&[&lease, "Content-Type: application/json"]);
    let path = format!("/tasks/{id}/complete");
    let req = request("POST", &path, &shared.t.host, &headers, result.as_bytes());
    match send(conn, &req, "complete").await {
        Ok(a) if a.status == 200 => {
            completed.fetch_add(1, Ordering::Relaxed);
        }
        Ok(a) => shared.errors.add(unexpected("complete", &a)),
        Err(e) => shared.errors.add(e),
    }
}

/// The task id, lease token and payload (as JSON text) of a claim's answer.
fn claimed(body: &[u8]) -> Option<(String, String, String)> {
    let v: Value = serde_json::from_slice(body).ok()?;
    Some((
        v["task"]["id"].as_str()?.to_owned(),
        v["lease"]["token"].as_str()?.to_owned(),
        v["task"]["payload"].to_string(),
    ))
}

/// One work socket: completes every task frame at once, counts the `ok`
/// answers, until aborted (or the socket ends, which is an error).
async fn ws_worker(shared: Shared, count: usize, completed: Arc<AtomicU64>) {
    let path = format!("/queues/{}/work?lease={LEASE}&count={count}", shared.queue);
    let mut ws = match open_ws(&shared, &path).await {
        Ok(ws) => ws,
        Err((Some(status @ (400 | 404)), _)) => {
            return shared.fail(Failure::unsupported(format!(
                "--worker ws: the server answered {status} to the WebSocket GET {path}; it \
                 has no work socket (a herald with /queues/{{q}}/work is needed)"
            )));
        }
        Err((_, e)) => return shared.fail(Failure::once(format!("work socket: {e}"))),
    };
    let mut next_ref = 0u64;
    while let Some(m) = ws.next().await {
        let text = match m {
            Ok(Message::Text(t)) => t,
            Ok(Message::Close(c)) => {
                let why = c.map(|c| format!("{} {}", c.code, c.reason));
                return shared.errors.add(format!("work socket closed: {why:?}"));
            }
            Ok(_) => continue,
            Err(e) => return shared.errors.add(format!("work socket: {e}")),
        };
        let Ok(v) = serde_json::from_str::<Value>(text.as_str()) else {
            shared.errors.add("work socket: a frame that is not JSON");
            continue;
        };
        match v["type"].as_str() {
            Some("task") => {
                let (Some(id), Some(lease)) =
                    (v["task"]["id"].as_str(), v["lease"]["token"].as_str())
                else {
                    shared
                        .errors
                        .add("work socket: a task frame without task.id and lease.token");
                    continue;
                };
                next_ref += 1;
                let op = json!({
                    "op": "complete",
                    "id": id,
                    "lease": lease,
                    "result": v["task"]["payload"],
                    "ref": next_ref,
                });
                if let Err(e) = ws.send(Message::text(op.to_string())).await {
                    return shared.errors.add(format!("work socket: send: {e}"));
                }
            }
            Some("ok") if v["status"] == "succeeded" => {
                completed.fetch_add(1, Ordering::Relaxed);
            }
            Some("ok") => shared
                .errors
                .add(format!("work socket: ok with status {}", v["status"])),
            // The error's code and message, without the ref and id that
            // would make every one a kind of its own.
            Some("error") => shared
                .errors
                .add(format!("work socket: error {}", without_ids(v))),
            _ => shared.errors.add("work socket: a frame of no known type"),
        }
    }
    shared.errors.add("work socket: ended by the server");
}

/// A frame without its `ref` and `id`, so errors group by what they say.
fn without_ids(mut v: Value) -> Value {
    if let Some(m) = v.as_object_mut() {
        m.remove("ref");
        m.remove("id");
    }
    v
}

/// Opens a WebSocket to `path` (with `Authorization` when `HERALD_TOKEN` is
/// set). `Err` carries the HTTP status when the server refused the upgrade,
/// so a caller can tell a route the server lacks from a network failure.
pub async fn open_ws(
    shared: &Shared,
    path: &str,
) -> Result<WebSocketStream<TcpStream>, (Option<u16>, String)> {
    let s = connect(&shared.t)
        .await
        .map_err(|e| (None, format!("connect: {e}")))?;
    let mut req = format!("ws://{}{path}", shared.t.host)
        .into_client_request()
        .map_err(|e| (None, e.to_string()))?;
    if let Some(auth) = crate::net::authorization()
        && let Ok(v) = auth.parse()
    {
        req.headers_mut().insert("authorization", v);
    }
    match tokio_tungstenite::client_async(req, s).await {
        Ok((ws, _)) => Ok(ws),
        Err(tungstenite::Error::Http(resp)) => {
            let status = resp.status().as_u16();
            Err((Some(status), format!("{path}: HTTP {status}")))
        }
        Err(e) => Err((None, format!("{path}: {e}"))),
    }
}
