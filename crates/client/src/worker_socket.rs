//! The worker's WebSocket (`GET /queues/{queue}/work`): the server hands
//! out up to `count` tasks and takes progress, complete and fail as frames,
//! answering each by its `ref`. One socket serves every slot of a
//! [`Worker`](crate::Worker); a report whose socket died goes by HTTP.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use futures_util::{SinkExt, StreamExt};
use serde::Deserialize;
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::tungstenite::{self, Message};

use crate::error::{self, Error};
use crate::tasks::{Payload, Task};
use crate::worker::{Claimed, Failure};
use crate::{Client, encode};

/// Frames waiting to be written; small, since each op waits for its answer.
const OUTBOX: usize = 64;

/// What one op's answer says: the task's status, or the refusal.
type Answer = Result<String, Error>;

/// The sending half of a connected socket, shared by the handlers.
#[derive(Debug)]
pub(crate) struct Link {
    out: mpsc::Sender<Message>,
    /// Ops waiting for their answer, by ref; `None` once the socket is gone
    /// (so an op started then goes by HTTP rather than wait for ever).
    pending: Mutex<Option<HashMap<u64, oneshot::Sender<Answer>>>>,
    next: AtomicU64,
}

impl Link {
    /// Sends an op and waits for its answer; `None` when the socket went
    /// away first (the op may or may not have been applied: retrying it by
    /// HTTP with the same lease is answered like the first).
    pub(crate) async fn op(&self, mut op: serde_json::Value) -> Option<Answer> {
        let reference = self.next.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        lock(&self.pending).as_mut()?.insert(reference, tx);
        op["ref"] = reference.into();
        if self
            .out
            .send(Message::Text(op.to_string().into()))
            .await
            .is_err()
        {
            lock(&self.pending).as_mut()?.remove(&reference);
            return None;
        }
        rx.await.ok()
    }

    /// Reports progress on a task.
    pub(crate) async fn progress(
        &self,
        claimed: (&str, &str),
        progress: Option<f64>,
        message: Option<&str>,
    ) -> Option<Answer> {
        let (id, lease) = claimed;
        self.op(serde_json::json!({
            "op": "progress", "id": id, "lease": lease, "progress": progress, "message": message,
        }))
        .await
    }

    /// Completes or fails a task.
    pub(crate) async fn finish(
        &self,
        claimed: &Claimed,
        outcome: &Result<Payload, Failure>,
    ) -> Option<Answer> {
        let (id, lease) = (&claimed.task.id, &claimed.token);
        let op = match outcome {
            Ok(Payload::Json(result)) => {
                serde_json::json!({"op": "complete", "id": id, "lease": lease, "result": result})
            }
            Ok(Payload::Text(text)) => {
                serde_json::json!({"op": "complete", "id": id, "lease": lease, "text": text})
            }
            Err(f) => serde_json::json!({
                "op": "fail", "id": id, "lease": lease, "error": f.error, "retry": f.retry,
            }),
        };
        self.op(op).await
    }

    /// The socket is gone: every op waiting is told so (its sender dropped).
    fn gone(&self) {
        lock(&self.pending).take();
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A frame from the server.
#[derive(Deserialize)]
struct Incoming {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    task: Option<Task>,
    #[serde(default)]
    lease: Option<LeaseFrame>,
    #[serde(rename = "ref", default)]
    reference: Option<u64>,
    #[serde(default)]
    status: Option<serde_json::Value>,
    #[serde(default)]
    error: Option<ErrorFrame>,
}

#[derive(Deserialize)]
struct LeaseFrame {
    expires: String,
    token: String,
}

#[derive(Deserialize)]
struct ErrorFrame {
    code: String,
    message: String,
}

/// Why no socket was opened.
pub(crate) enum Refused {
    /// The server has no worker socket (`404`, `405`), or this client
    /// cannot open one (`wss://` without TLS for WebSocket): use HTTP.
    Unsupported,
    /// Try again later.
    Failed(Error),
}

/// A connected worker socket: its link, and its frames.
pub(crate) struct Socket {
    pub link: Arc<Link>,
    incoming: futures_util::stream::SplitStream<
        tokio_tungstenite::WebSocketStream<
            tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
        >,
    >,
}

/// Opens the worker socket of `queue`.
pub(crate) async fn connect(
    client: &Client,
    queue: &str,
    lease: std::time::Duration,
    count: usize,
) -> Result<Socket, Refused> {
    let path = format!(
        "/queues/{}/work?lease={:.3}&count={}",
        encode(queue),
        lease.as_secs_f64().max(0.001),
        count.clamp(1, 256)
    );
    let url = client.url(&path).replacen("http", "ws", 1);
    let request = client.ws_request(&url).map_err(Refused::Failed)?;
    let (socket, _) = match tokio_tungstenite::connect_async(request).await {
        Ok(s) => s,
        Err(tungstenite::Error::Http(r)) if matches!(r.status().as_u16(), 404 | 405) => {
            return Err(Refused::Unsupported);
        }
        Err(tungstenite::Error::Http(r)) => {
            let status = r.status().as_u16();
            let body =
                String::from_utf8_lossy(r.body().as_deref().unwrap_or_default()).into_owned();
            return Err(Refused::Failed(error::from_body(status, body)));
        }
        Err(tungstenite::Error::Url(_)) => return Err(Refused::Unsupported),
        Err(e) => return Err(Refused::Failed(error::transport(&e))),
    };
    let (mut sink, incoming) = socket.split();
    let (out, mut outbox) = mpsc::channel::<Message>(OUTBOX);
    // The writer: one task owns the sink, so handlers never wait on each
    // other's writes more than the channel's order.
    tokio::spawn(async move {
        while let Some(m) = outbox.recv().await {
            let closing = matches!(m, Message::Close(_));
            if sink.send(m).await.is_err() || closing {
                break;
            }
        }
    });
    Ok(Socket {
        link: Arc::new(Link {
            out,
            pending: Mutex::new(Some(HashMap::new())),
            next: AtomicU64::new(1),
        }),
        incoming,
    })
}

impl Socket {
    /// The next task handed out, answering ops on the way; `None` once the
    /// socket has ended.
    pub(crate) async fn next_task(&mut self) -> Option<Claimed> {
        while let Some(message) = self.incoming.next().await {
            let text = match message {
                Ok(Message::Text(t)) => t,
                Ok(Message::Close(_)) | Err(_) => break,
                Ok(_) => continue,
            };
            let Ok(frame) = serde_json::from_str::<Incoming>(&text) else {
                tracing::warn!(frame = %text, "the worker socket sent a frame this client does not know");
                continue;
            };
            match (frame.kind.as_str(), frame.task, frame.lease) {
                ("task", Some(task), Some(lease)) => {
                    return Some(Claimed {
                        task,
                        token: lease.token,
                        expires: lease.expires,
                    });
                }
                ("ok" | "error", _, _) => self.answered(frame.reference, frame.status, frame.error),
                _ => {}
            }
        }
        self.link.gone();
        None
    }

    fn answered(
        &self,
        reference: Option<u64>,
        status: Option<serde_json::Value>,
        error: Option<ErrorFrame>,
    ) {
        let Some(reference) = reference else { return };
        let Some(tx) = lock(&self.link.pending)
            .as_mut()
            .and_then(|p| p.remove(&reference))
        else {
            return;
        };
        let answer = match (error, status) {
            (Some(e), status) => Err(Error::Api {
                status: status
                    .and_then(|s| s.as_u64())
                    .and_then(|s| u16::try_from(s).ok())
                    .unwrap_or(0),
                code: e.code,
                message: e.message,
            }),
            (None, status) => Ok(status
                .and_then(|s| s.as_str().map(str::to_owned))
                .unwrap_or_default()),
        };
        let _ = tx.send(answer);
    }

    /// Asks the server to stop handing out tasks; [`Socket::next_task`]
    /// still yields those already on their way, then `None`.
    pub(crate) async fn close(&self) {
        let _ = self.link.out.send(Message::Close(None)).await;
    }
}
