//! The story of one task as a stream: `wait` with its live queue position
//! while queued, `progress` while running, then `done` or `error`, then the
//! end.
//!
//! `progress`, `done` and `error` are stored events of the task's topic, so
//! they carry ids and resume with `Last-Event-ID`. `wait` is computed from
//! the queue as it is now, and has no id: a client that reconnects is told
//! its current position, not replayed old ones.

use std::sync::Arc;

use tokio::sync::watch;

use super::engine::Tasks;
use super::{Status, TaskError, TaskId};
use crate::cursor::{CursorInput, Start};
use crate::event::Event;
use crate::subscription::{EndReason, Next, Subscription};

/// What a task stream yields next.
#[derive(Debug)]
pub enum FeedItem {
    /// A stored task event: `progress`, `done` or `error`.
    Event(Arc<Event>),
    /// The task's position in its queue changed (1 = next).
    Wait(u64),
    /// The cursor given was unknown: the story is replayed from its start.
    Gap {
        cursor: String,
    },
    KeepAlive,
    /// The token that opened the stream expired: the stream's last word.
    Expired,
    /// The task finished (after its final event) or the stream was ended.
    End,
}

/// Why a task stream could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum FeedError {
    /// The client already has the task's final event: nothing more will
    /// come (answered `204`, which stops a browser's EventSource).
    #[error("the task is over and the client has its final event")]
    Over,
    #[error(transparent)]
    Task(#[from] TaskError),
}

/// A live stream of one task's events.
pub struct Feed {
    tasks: Tasks,
    id: TaskId,
    sub: Subscription,
    positions: watch::Receiver<u64>,
    last_position: Option<u64>,
    started: bool,
    over: bool,
}

impl std::fmt::Debug for Feed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Feed")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl Tasks {
    /// Opens the event stream of task `id` from `cursor` (normally `all`:
    /// the task's first event).
    pub async fn feed(&self, id: TaskId, cursor: &CursorInput) -> Result<Feed, FeedError> {
        let (task, _) = self.get(id).await?.ok_or(TaskError::NotFound)?;
        let topic = id.topic();
        if task.status.is_finished() {
            match cursor.start_for(&topic) {
                // Nothing new will ever come after the end.
                Start::Head => return Err(FeedError::Over),
                Start::After(at) => {
                    let head = self.hub().store().head(&topic).await;
                    if at == head.map_err(TaskError::from)? {
                        return Err(FeedError::Over);
                    }
                }
                Start::Oldest | Start::Unknown(_) => {}
            }
        }
        let sub = self
            .hub()
            .subscribe(vec![topic], cursor)
            .await
            .map_err(TaskError::from)?;
        Ok(Feed {
            positions: self.positions(&task.queue),
            tasks: self.clone(),
            id,
            sub,
            last_position: None,
            started: false,
            over: false,
        })
    }
}

impl Feed {
    /// The task this feed follows.
    pub fn id(&self) -> TaskId {
        self.id
    }

    /// The cursor after the last stored event yielded.
    pub fn cursor(&self) -> String {
        self.sub.cursor().to_string()
    }

    async fn position(&self) -> Option<u64> {
        match self.tasks.get(self.id).await {
            Ok(Some((t, p))) if t.status == Status::Queued => p,
            _ => None,
        }
    }

    /// The next item. Cancel-safe but for a `wait` that may be recomputed.
    /// Ends the feed at `at` (its token's expiry) with
    /// [`FeedItem::Expired`].
    pub fn end_at(&mut self, at: tokio::time::Instant) {
        self.sub.end_at(at);
    }

    pub async fn next(&mut self) -> FeedItem {
        if self.over {
            return FeedItem::End;
        }
        if !self.started {
            self.started = true;
            if let Some(p) = self.position().await {
                self.last_position = Some(p);
                return FeedItem::Wait(p);
            }
        }
        loop {
            tokio::select! {
                next = self.sub.next() => match next {
                    Next::Event(e) => {
                        if matches!(e.kind.as_str(), "done" | "error") {
                            self.over = true;
                        }
                        return FeedItem::Event(e);
                    }
                    Next::Gap { cursor, .. } => return FeedItem::Gap { cursor },
                    Next::KeepAlive => return FeedItem::KeepAlive,
                    Next::End(EndReason::TokenExpired) => {
                        self.over = true;
                        return FeedItem::Expired;
                    }
                    Next::End(_) => {
                        self.over = true;
                        return FeedItem::End;
                    }
                },
                changed = self.positions.changed() => {
                    if changed.is_err() {
                        // The queue's signals live as long as the engine.
                        self.over = true;
                        return FeedItem::End;
                    }
                    // `None` once the task left the queue, so that coming back
                    // (a retry, a lease that ran out) is told again.
                    let now = self.position().await;
                    let changed = now != self.last_position;
                    self.last_position = now;
                    if let (Some(p), true) = (now, changed) {
                        return FeedItem::Wait(p);
                    }
                }
            }
        }
    }
}
