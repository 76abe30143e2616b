//! Writes whose answer was lost.
//!
//! A script sent to Redis that times out, or whose connection drops before
//! the answer, may have run or not: Redis may have been paused with the
//! command in its socket buffer (it runs it when it wakes), or the answer
//! may have been lost on the way back. Reporting "unavailable" then would
//! lie half the time. So every write script carries a write id, and leaves
//! a short-lived mark under it (`herald:write:{id}`) holding its answer in
//! the same atomic step as its effects; a second arrival of the same write
//! finds the mark and answers from it without doing anything again. The
//! store can therefore send the write again until some attempt is answered,
//! and only if none is within [`RESOLVE_FOR`] says the outcome is unknown.

use std::time::{Duration, Instant};

use redis::{FromRedisValue, ScriptInvocation};

use super::RedisStore;
use crate::error::StoreError;

/// How long a write whose outcome is unknown is sent again before the store
/// gives up and says so. Long enough to ride out a failover or a short
/// pause; short enough that the client is not left waiting much past its
/// own timeouts.
pub(crate) const RESOLVE_FOR: Duration = Duration::from_secs(10);

/// The pause between two sendings, so a dead Redis is not hammered.
const PAUSE: Duration = Duration::from_millis(250);

/// How long the mark of a write lives in Redis: longer than
/// [`RESOLVE_FOR`] with room to spare, so a write and its resending always
/// meet it. Marks named by a client's own key live longer (see
/// [`CLIENT_MARK_TTL`]).
pub(crate) const MARK_TTL: Duration = Duration::from_secs(120);

/// How long the mark of a task change named by the client's
/// `Idempotency-Key` lives: the window in which a client may retry a call
/// it was told had an unknown outcome.
pub(crate) const CLIENT_MARK_TTL: Duration = Duration::from_secs(3600);

/// A fresh write id, unique across nodes.
pub(crate) fn write_id() -> String {
    uuid::Uuid::now_v7().simple().to_string()
}

/// Whether a failed call may nonetheless have been applied: a timeout, a
/// connection lost mid-call, an answer that could not be read. Redis
/// answering with an error means the script did not run (herald's scripts
/// check everything before their first write); a refused connection means
/// nothing was sent.
pub(crate) fn ambiguous(e: &redis::RedisError) -> bool {
    match e.kind() {
        redis::ErrorKind::Io => !e.is_connection_refusal(),
        redis::ErrorKind::Parse => true,
        _ => false,
    }
}

impl RedisStore {
    /// Runs a write script (one that honours its write id) until Redis
    /// answers it. An error before any ambiguity is final and means nothing
    /// was written; after one, only an answer settles it.
    pub(crate) async fn write<T: FromRedisValue>(
        &self,
        context: &str,
        invocation: &ScriptInvocation<'_>,
    ) -> Result<T, StoreError> {
        let deadline = Instant::now() + RESOLVE_FOR;
        let mut unknown = false;
        loop {
            let mut conn = self.conn();
            let e = match invocation.invoke_async(&mut conn).await {
                Ok(answer) => {
                    if unknown {
                        tracing::info!(context, "a write whose answer was lost is settled");
                    }
                    return Ok(answer);
                }
                Err(e) => e,
            };
            unknown = unknown || ambiguous(&e);
            if !unknown {
                return Err(super::unavailable(context, e));
            }
            if Instant::now() + PAUSE >= deadline {
                metrics::counter!("herald_store_outcome_unknown_total").increment(1);
                tracing::warn!(context, error = %e, "redis did not answer a write; its outcome is unknown");
                return Err(StoreError::OutcomeUnknown(format!("redis {context}: {e}")));
            }
            metrics::counter!("herald_store_writes_resent_total").increment(1);
            tracing::debug!(context, error = %e, "sending a write again: its answer was lost");
            tokio::time::sleep(PAUSE).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn io(kind: std::io::ErrorKind) -> redis::RedisError {
        std::io::Error::new(kind, "test").into()
    }

    #[test]
    fn an_answer_from_redis_or_a_refused_connection_is_final() {
        let unknown_code = redis::make_extension_error("NOTHERALD".into(), None);
        assert!(!ambiguous(&unknown_code));
        let script_error: redis::RedisError = (
            redis::ErrorKind::Server(redis::ServerErrorKind::ResponseError),
            "script",
        )
            .into();
        assert!(!ambiguous(&script_error));
        assert!(!ambiguous(&io(std::io::ErrorKind::ConnectionRefused)));
    }

    #[test]
    fn a_lost_answer_is_ambiguous() {
        assert!(ambiguous(&io(std::io::ErrorKind::TimedOut)));
        assert!(ambiguous(&io(std::io::ErrorKind::ConnectionReset)));
        assert!(ambiguous(&io(std::io::ErrorKind::UnexpectedEof)));
        assert!(ambiguous(&io(std::io::ErrorKind::BrokenPipe)));
    }

    #[test]
    fn marks_outlive_the_resending() {
        assert!(MARK_TTL > RESOLVE_FOR * 2);
        assert!(CLIENT_MARK_TTL >= MARK_TTL);
    }
}
