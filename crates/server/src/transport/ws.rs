//! WebSocket: one text frame per event (the event's shared JSON), pings as
//! keep-alive, a close frame saying why when the server ends the stream.

use std::time::Duration;

use axum::extract::FromRequestParts;
use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade, close_code};
use axum::http::request::Parts;
use axum::response::Response;
use bytes::Bytes;
use herald_core::Subscription;
use herald_core::subscription::{EndReason, Next};

use super::{Signal, StreamCounters, SubscriptionGauge};
use crate::error::ApiError;
use crate::negotiate::Transport;
use crate::state::AppState;

/// Small per-socket buffers: an idle subscriber should cost little. Frames
/// from clients are tiny (they only send close and pong), so a small cap
/// also guards against floods.
const READ_BUFFER: usize = 4 * 1024;
const MAX_WRITE_BUFFER: usize = 256 * 1024;
const MAX_MESSAGE: usize = 64 * 1024;
/// How long a closing handshake may take before the socket is dropped.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

/// The upgrade a request asks for, once its handshake checks out: the
/// extractor's own checks, and a `Sec-WebSocket-Key` that is 16 bytes in
/// base64 as RFC 6455 § 4.1 requires (the extractor takes any value).
pub async fn upgrade_request(
    parts: &mut Parts,
    state: &AppState,
) -> Result<WebSocketUpgrade, ApiError> {
    if let Some(key) = parts.headers.get("sec-websocket-key")
        && !valid_key(key.as_bytes())
    {
        return Err(ApiError::BadRequest(
            "Sec-WebSocket-Key must be 16 bytes in base64".into(),
        ));
    }
    WebSocketUpgrade::from_request_parts(parts, state)
        .await
        .map_err(|e| ApiError::BadRequest(e.body_text()))
}

/// 16 bytes in base64: 22 characters, the last of which carries two bits
/// (so it is `A`, `Q`, `g` or `w`), then `==`.
fn valid_key(key: &[u8]) -> bool {
    let b64 = |b: &u8| b.is_ascii_alphanumeric() || *b == b'+' || *b == b'/';
    key.len() == 24
        && key[22..] == *b"=="
        && key[..22].iter().all(b64)
        && matches!(key[21], b'A' | b'Q' | b'g' | b'w')
}

/// Upgrades the connection with herald's socket settings and runs `serve`
/// on it, tracked so graceful shutdown waits for its goodbye. Every
/// WebSocket herald serves (topics, task events) goes through here.
pub fn upgrade<F, Fut>(state: &AppState, upgrade: WebSocketUpgrade, serve: F) -> Response
where
    F: FnOnce(WebSocket) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    upgrade_sized(state, upgrade, MAX_MESSAGE, serve)
}

/// [`upgrade`] for a socket whose client sends more than close and pong (a
/// worker's results): messages up to `max_message` bytes.
pub fn upgrade_sized<F, Fut>(
    state: &AppState,
    upgrade: WebSocketUpgrade,
    max_message: usize,
    serve: F,
) -> Response
where
    F: FnOnce(WebSocket) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let sockets = state.sockets().clone();
    upgrade
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(0)
        .max_write_buffer_size(MAX_WRITE_BUFFER)
        .max_message_size(max_message)
        .max_frame_size(max_message)
        .on_upgrade(move |socket| {
            let token = sockets.token();
            async move {
                serve(socket).await;
                drop(token);
            }
        })
}

/// A client sent what the socket would not read: a message over
/// [`MAX_MESSAGE`] is closed with 1009, a broken frame with 1002, text that
/// is not UTF-8 with 1007, as RFC 6455 § 7.4.1 says; the connection ends.
pub async fn refuse_frame(socket: &mut WebSocket, error: axum::Error) {
    use tungstenite::Error as Ws;
    let inner = error.into_inner();
    let (code, why) = match inner.downcast_ref::<Ws>() {
        Some(Ws::Capacity(_)) => (close_code::SIZE, "message too big"),
        Some(Ws::Protocol(_)) => (close_code::PROTOCOL, "protocol error"),
        Some(Ws::Utf8(_)) => (close_code::INVALID, "text is not UTF-8"),
        // The connection itself failed: nobody to tell.
        _ => return,
    };
    close(socket, code, why).await;
}

/// Sends a close frame, giving a stuck peer at most [`CLOSE_TIMEOUT`].
pub async fn close(socket: &mut WebSocket, code: u16, reason: &'static str) {
    let close = Message::Close(Some(CloseFrame {
        code,
        reason: Utf8Bytes::from_static(reason),
    }));
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, socket.send(close)).await;
}

/// Upgrades the connection and streams `sub` over it.
pub fn respond(
    state: &AppState,
    upgrade: WebSocketUpgrade,
    sub: Subscription,
    slot: Option<crate::limits::Slot>,
) -> Response {
    self::upgrade(state, upgrade, move |socket| run(socket, sub, slot))
}

/// Serves the socket; `_slot` (the client's place under its limit) is
/// held until it closes.
async fn run(mut socket: WebSocket, mut sub: Subscription, _slot: Option<crate::limits::Slot>) {
    let _gauge = SubscriptionGauge::open(Transport::WebSocket);
    let counters = StreamCounters::default();
    loop {
        let next = tokio::select! {
            incoming = socket.recv() => match incoming {
                // Pings are answered by the socket itself; text is ignored.
                Some(Ok(Message::Close(_))) | None => return,
                Some(Err(e)) => return refuse_frame(&mut socket, e).await,
                Some(Ok(_)) => continue,
            },
            next = sub.next() => next,
        };
        let message = match next {
            Next::Event(e) if sub.is_multi() => {
                counters.delivered.increment(1);
                let json = e.json();
                let mut frame = json[..json.len().saturating_sub(1)].to_vec();
                frame.extend_from_slice(&super::cursor_tail(&sub, "}"));
                text(Bytes::from(frame))
            }
            Next::Event(e) => {
                counters.delivered.increment(1);
                text(e.json())
            }
            Next::Gap { topic, cursor } => {
                let data = Signal::gap_data(topic.as_str(), &cursor);
                let gap = Signal {
                    topic: topic.as_str(),
                    kind: "gap",
                    data: &data,
                };
                Message::Text(gap.json().into())
            }
            Next::KeepAlive => Message::Ping(Bytes::new()),
            Next::End(reason) => {
                counters.ended(&reason, Transport::WebSocket);
                let (code, why) = match reason {
                    EndReason::Shutdown => (close_code::AWAY, "server shutting down"),
                    EndReason::Slow => (close_code::AGAIN, "too slow: resume with your cursor"),
                    EndReason::Expired => (close_code::NORMAL, "stream reached its maximum age"),
                    EndReason::TokenExpired => (
                        TOKEN_EXPIRED,
                        "the token expired: reconnect with a fresh one and your cursor",
                    ),
                    EndReason::Store(_) => (close_code::ERROR, "store unavailable"),
                };
                close(&mut socket, code, why).await;
                return;
            }
        };
        if socket.send(message).await.is_err() {
            return;
        }
    }
}

/// The close code of a socket whose token expired (4000–4999 are for
/// applications; 4401 echoes HTTP's 401).
pub const TOKEN_EXPIRED: u16 = 4401;

/// A text frame over the event's shared JSON bytes (validated as UTF-8, not
/// copied).
fn text(json: Bytes) -> Message {
    match Utf8Bytes::try_from(json) {
        Ok(t) => Message::Text(t),
        // Unreachable: the bytes were encoded from Rust strings.
        Err(_) => Message::Text(Utf8Bytes::from_static("{}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_16_bytes_of_base64() {
        // RFC 6455's example, and keys of every shape a client sends.
        for ok in [
            "dGhlIHNhbXBsZSBub25jZQ==",
            "AAAAAAAAAAAAAAAAAAAAAA==",
            "/+/+/+/+/+/+/+/+/+/+/w==",
        ] {
            assert!(valid_key(ok.as_bytes()), "{ok}");
        }
        for bad in [
            "abc",
            "",
            "dGhlIHNhbXBsZSBub25jZQ",
            "dGhlIHNhbXBsZSBub25jZR==",
            "dGhlIHNhbXBsZSBub25jZQ=",
            "dGhlIHNhbXBsZSBub25j*Q==",
            "dGhlIHNhbXBsZSBub25jZQ===",
        ] {
            assert!(!valid_key(bad.as_bytes()), "{bad}");
        }
    }
}
