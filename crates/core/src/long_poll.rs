//! Long poll: the one loop that holds a request until at least one event is
//! after its cursor, its deadline passes or the server stops — with the way
//! of waiting plugged in ([`Waiter`]).
//!
//! ```text
//!  resolve `now` to heads ──► read after the positions ──► events? ──► answer
//!                                ▲                          │ none
//!                                └──── Wake::Again ◄── waiter.wait(positions)
//!                                       deadline / shutdown ──► waiter.stop() ──► empty answer
//! ```
//!
//! The waiter is built (and starts watching) before the loop's first read,
//! so nothing stored after that read is missed. [`Watches`] waits on the
//! fan-out; the server's direct path parks its polls in a topic's lot
//! instead, whose task may answer the poll itself ([`Wake::Answered`]).

use std::convert::Infallible;
use std::future::Future;

use futures_util::StreamExt;
use futures_util::future::select_all;
use tokio::time::Instant;

use crate::cursor::{Cursor, CursorInput, Start};
use crate::error::StoreError;
use crate::fanout::Watch;
use crate::hub::{Hub, PollAnswer};
use crate::name::Topic;

/// How a long poll waits for its topics to move past its position.
pub trait Waiter: Send {
    /// What the waiter may answer the poll with by itself (the direct
    /// path's lots write the answer to the socket).
    type Answered: Send;

    /// Nothing is after `at` (a read found nothing; `gap` says whether a
    /// read so far found history missing): waits until something may be.
    /// Cancel-safe: the loop drops it when the deadline passes.
    fn wait(&mut self, at: &Cursor, gap: bool)
    -> impl Future<Output = Wake<Self::Answered>> + Send;

    /// The poll is over (deadline or shutdown): stop waiting. `Some` if the
    /// waiter answered the poll meanwhile, which then stands.
    fn stop(&mut self) -> impl Future<Output = Option<Self::Answered>> + Send;
}

/// What a wait came to.
#[derive(Debug)]
pub enum Wake<A> {
    /// Something may be after the position: read again.
    Again,
    /// The waiter answered the poll itself.
    Answered(A),
}

/// How a long poll ended.
#[derive(Debug)]
pub enum LongPolled<A> {
    /// Events after the cursor, or none (deadline, shutdown): the answer
    /// to give.
    Answer(PollAnswer),
    /// The waiter answered the poll itself.
    Answered(A),
}

impl Hub {
    /// Long poll of `topics` from `cursor`: at most `limit` events, as soon
    /// as there is one; an empty answer at `deadline` or on shutdown.
    pub async fn long_poll<W: Waiter>(
        &self,
        topics: &[Topic],
        cursor: &CursorInput,
        limit: usize,
        deadline: Instant,
        waiter: &mut W,
    ) -> Result<LongPolled<W::Answered>, StoreError> {
        let starts = self.resolve(topics, cursor).await?;
        self.long_poll_from(starts, limit, deadline, waiter).await
    }

    /// Where a long poll of `topics` from `cursor` starts, `now` resolved
    /// to each topic's head: what [`Hub::long_poll_from`] takes. Resolve
    /// after the waiter is built, so nothing after the heads is missed.
    pub async fn resolve(
        &self,
        topics: &[Topic],
        cursor: &CursorInput,
    ) -> Result<Vec<(Topic, Start)>, StoreError> {
        let mut starts = Vec::with_capacity(topics.len());
        for t in topics {
            let start = match cursor.start_for(t) {
                Start::Head => Start::After(self.store().head(t).await?),
                other => other,
            };
            starts.push((t.clone(), start));
        }
        Ok(starts)
    }

    /// [`Hub::long_poll`] from positions already [resolved](Hub::resolve).
    pub async fn long_poll_from<W: Waiter>(
        &self,
        mut starts: Vec<(Topic, Start)>,
        limit: usize,
        deadline: Instant,
        waiter: &mut W,
    ) -> Result<LongPolled<W::Answered>, StoreError> {
        let shutdown = self.heartbeat().shutdown().clone();
        let mut gap = false;
        loop {
            let answer = self.poll_at(&starts, limit).await?;
            gap |= answer.gap;
            if !answer.events.is_empty() {
                return Ok(LongPolled::Answer(PollAnswer { gap, ..answer }));
            }
            let woke = tokio::select! {
                // Deadline first: a waiter that keeps saying "again" cannot
                // hold a poll past it.
                biased;
                () = tokio::time::sleep_until(deadline) => None,
                () = shutdown.cancelled() => None,
                woke = waiter.wait(&answer.next, gap) => Some(woke),
            };
            match woke {
                Some(Wake::Again) => {}
                Some(Wake::Answered(a)) => return Ok(LongPolled::Answered(a)),
                None => {
                    return Ok(match waiter.stop().await {
                        Some(a) => LongPolled::Answered(a),
                        None => LongPolled::Answer(PollAnswer { gap, ..answer }),
                    });
                }
            }
            starts = answer
                .next
                .positions
                .iter()
                .map(|(t, id)| (t.clone(), Start::After(*id)))
                .collect();
        }
    }

    /// A waiter on the fan-out of `topics`, watching from now: build it
    /// before [`Hub::long_poll`] reads.
    pub fn watches(&self, topics: &[Topic]) -> Watches {
        Watches(topics.iter().map(|t| self.store().watch(t)).collect())
    }
}

/// Waits on one fan-out watch per topic: any event wakes the poll, which
/// reads again.
#[derive(Debug)]
pub struct Watches(Vec<Watch>);

impl Waiter for Watches {
    type Answered = Infallible;

    async fn wait(&mut self, _: &Cursor, _: bool) -> Wake<Infallible> {
        // A lagged watch also means "something is there": read again.
        select_all(self.0.iter_mut().map(|w| w.next())).await;
        Wake::Again
    }

    async fn stop(&mut self) -> Option<Infallible> {
        None
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio_util::sync::CancellationToken;

    use super::*;
    use crate::fanout::Fanout;
    use crate::heartbeat::Heartbeat;
    use crate::hub::HubConfig;
    use crate::name::EventType;
    use crate::store::memory::MemoryStore;
    use crate::store::{NewEvent, Retention};

    fn hub() -> (Hub, CancellationToken) {
        let token = CancellationToken::new();
        let retention = Retention {
            max_events: 1000,
            max_age: None,
        };
        let store = MemoryStore::new(retention, Fanout::new(64));
        let hb = Heartbeat::start(Duration::from_secs(3600), token.clone());
        (Hub::new(store, HubConfig::default(), hb), token)
    }

    async fn publish(hub: &Hub, topic: &Topic, data: &str) {
        let new = NewEvent {
            topic: topic.clone(),
            kind: EventType::message(),
            data: data.to_owned(),
            idempotency_key: None,
        };
        hub.publish(vec![new]).await.unwrap();
    }

    /// A waiter that answers by itself on its second wait and records how
    /// it was stopped.
    struct Scripted {
        waits: usize,
        stopped: bool,
    }

    impl Waiter for Scripted {
        type Answered = &'static str;

        async fn wait(&mut self, _: &Cursor, _: bool) -> Wake<&'static str> {
            self.waits += 1;
            if self.waits == 2 {
                Wake::Answered("by the waiter")
            } else {
                Wake::Again
            }
        }

        async fn stop(&mut self) -> Option<&'static str> {
            self.stopped = true;
            None
        }
    }

    #[tokio::test]
    async fn an_event_published_while_waiting_is_answered() {
        let (hub, _token) = hub();
        let topic = Topic::new("t").unwrap();
        let mut watches = hub.watches(std::slice::from_ref(&topic));
        let deadline = Instant::now() + Duration::from_secs(30);
        let poll = hub.long_poll(
            std::slice::from_ref(&topic),
            &CursorInput::Now,
            10,
            deadline,
            &mut watches,
        );
        let (polled, ()) = tokio::join!(poll, async {
            tokio::task::yield_now().await;
            publish(&hub, &topic, "x").await;
        });
        match polled.unwrap() {
            LongPolled::Answer(a) => assert_eq!(a.events[0].data, "x"),
            LongPolled::Answered(never) => match never {},
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_deadline_stops_the_waiter_and_answers_empty() {
        let (hub, _token) = hub();
        let topic = Topic::new("t").unwrap();
        // Again forever would spin without the deadline; the paused clock
        // moves only when everything waits, so use a waiter that waits.
        let mut watches = hub.watches(std::slice::from_ref(&topic));
        let deadline = Instant::now() + Duration::from_secs(5);
        let polled = hub
            .long_poll(&[topic], &CursorInput::Now, 10, deadline, &mut watches)
            .await
            .unwrap();
        match polled {
            LongPolled::Answer(a) => assert!(a.events.is_empty() && !a.gap),
            LongPolled::Answered(never) => match never {},
        }
        assert!(Instant::now() >= deadline);
    }

    #[tokio::test]
    async fn a_waiter_may_answer_by_itself_and_is_stopped_at_shutdown() {
        let (hub, token) = hub();
        let topic = Topic::new("t").unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut w = Scripted {
            waits: 0,
            stopped: false,
        };
        let polled = hub
            .long_poll(
                std::slice::from_ref(&topic),
                &CursorInput::All,
                10,
                deadline,
                &mut w,
            )
            .await
            .unwrap();
        assert!(matches!(polled, LongPolled::Answered("by the waiter")));
        assert!(!w.stopped);
        token.cancel();
        let polled = hub
            .long_poll(&[topic], &CursorInput::All, 10, deadline, &mut w)
            .await
            .unwrap();
        assert!(matches!(polled, LongPolled::Answer(ref a) if a.events.is_empty()));
        assert!(w.stopped);
    }
}
