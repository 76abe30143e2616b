//! A subscriber's journey: catching up from the store, then live from the
//! fan-out, until the client leaves, falls behind or the server stops.
//!
//! ```text
//!  Start ──► CatchUp (reads pages from the store) ──► Live (waits on Watch)
//!               ▲                 │ full page: more to read
//!               └─────────────────┘
//! ```
//!
//! A topic's [`Watch`] is opened *before* the store read that may end the
//! catch-up, so an event stored in between arrives by the watch; ids let the
//! subscriber drop the copies it already read from the store. Nothing here
//! spawns a task or a timer: the transport's body stream (or socket task)
//! drives it, and dropping the subscription releases everything.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;

use futures_util::{FutureExt, StreamExt};
use tokio::time::{Instant, Sleep};

use crate::cursor::{Cursor, CursorInput, Start};
use crate::error::StoreError;
use crate::event::{Event, EventId};
use crate::fanout::{Lagged, Watch};
use crate::heartbeat::{Beat, Beats};
use crate::name::Topic;
use crate::store::{ReadFrom, Store};

/// What a subscription yields next.
#[derive(Debug)]
pub enum Next {
    /// An event, in id order within its topic, never twice.
    Event(Arc<Event>),
    /// History was missed in `topic`: the cursor given was unknown or older
    /// than what is retained. Replay continues from the oldest retained event.
    Gap { topic: Topic, cursor: String },
    /// Nothing happened for a keep-alive interval.
    KeepAlive,
    /// The subscription is over; the client resumes with its cursor.
    End(EndReason),
}

/// Why a subscription ended.
#[derive(Debug)]
pub enum EndReason {
    /// The server is shutting down.
    Shutdown,
    /// The subscriber fell a whole buffer behind.
    Slow,
    /// The subscription reached its configured maximum age.
    Expired,
    /// The token that opened the subscription expired: the client opens a
    /// new one with a fresh token and its cursor.
    TokenExpired,
    /// The store failed while reading history.
    Store(StoreError),
}

/// Where one topic of a subscription stands.
#[derive(Debug)]
enum Phase {
    /// Not started; entered on creation, left on the first [`Subscription::next`].
    Start(Start),
    /// Reading history from the store; left for `Live` when a page comes back
    /// short, with the watch already open.
    CatchUp {
        from: ReadFrom,
        /// A gap to report whatever the store says (the cursor was junk).
        forced_gap: Option<String>,
        /// Keep the watch across full pages: the subscriber was live (see
        /// [`Subscription::resume`]), and one that falls a whole ring
        /// behind is cut off as it would have been live.
        keep_watch: bool,
    },
    /// Following the fan-out.
    Live,
}

#[derive(Debug)]
struct TopicState {
    topic: Topic,
    /// The id of the last event delivered (or the position it stands for).
    pos: EventId,
    /// Until `pos` is known, what the cursor says for this topic: `all`, or
    /// the junk the client sent (so a reconnect before any read is told of
    /// the same gap).
    start_text: Option<String>,
    phase: Phase,
    watch: Option<Watch>,
}

/// A live subscription to one or more topics.
pub struct Subscription {
    store: Arc<dyn Store>,
    topics: Vec<TopicState>,
    pending: VecDeque<Next>,
    beats: Beats,
    expires: Option<Pin<Box<Sleep>>>,
    /// `expires` is the token's expiry rather than the maximum age.
    token_expiry: bool,
    page_size: usize,
    /// Which topic to poll first when waiting, so a busy topic cannot starve
    /// the others.
    turn: usize,
    /// Counts this subscription in its topics' subscribers while it lives.
    _present: Option<crate::presence::Present>,
}

impl std::fmt::Debug for Subscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscription")
            .field("topics", &self.topics)
            .finish_non_exhaustive()
    }
}

impl Subscription {
    pub(crate) fn new(
        store: Arc<dyn Store>,
        topics: Vec<Topic>,
        cursor: &CursorInput,
        beats: Beats,
        max_age: Option<std::time::Duration>,
        page_size: usize,
    ) -> Subscription {
        let topics = topics
            .into_iter()
            .map(|topic| {
                let start = cursor.start_for(&topic);
                let (pos, start_text) = match &start {
                    Start::After(id) => (*id, None),
                    Start::Oldest => (EventId::START, Some("all".to_owned())),
                    Start::Unknown(given) => (EventId::START, Some(given.clone())),
                    Start::Head => (EventId::START, Some("now".to_owned())),
                };
                TopicState {
                    phase: Phase::Start(start),
                    topic,
                    pos,
                    start_text,
                    watch: None,
                }
            })
            .collect();
        Subscription {
            store,
            topics,
            pending: VecDeque::new(),
            beats,
            expires: max_age.map(|age| Box::pin(tokio::time::sleep_until(Instant::now() + age))),
            token_expiry: false,
            page_size: page_size.max(1),
            turn: 0,
            _present: None,
        }
    }

    /// Counts this subscription in `present` for as long as it lives.
    pub(crate) fn count_in(&mut self, present: crate::presence::Present) {
        self._present = Some(present);
    }

    /// Ends the subscription at `at` (the expiry of the token that opened
    /// it) with [`EndReason::TokenExpired`], unless its maximum age ends it
    /// first.
    pub fn end_at(&mut self, at: Instant) {
        let sooner = self.expires.as_ref().is_none_or(|s| at < s.deadline());
        if sooner {
            self.expires = Some(Box::pin(tokio::time::sleep_until(at)));
            self.token_expiry = true;
        }
    }

    /// Fixes the position of every topic that starts at `now`, so that the
    /// events published once this returns are delivered even if the first
    /// [`Subscription::next`] comes later.
    pub(crate) async fn pin_heads(&mut self) -> Result<(), StoreError> {
        for i in 0..self.topics.len() {
            if matches!(self.topics[i].phase, Phase::Start(Start::Head)) {
                self.advance(i).await?;
            }
        }
        Ok(())
    }

    /// The cursor that resumes this subscription after the last event it
    /// yielded: an id for one topic, `TOPIC=ID,…` for several.
    pub fn cursor(&self) -> Cursor {
        Cursor {
            positions: self
                .topics
                .iter()
                .map(|t| (t.topic.clone(), t.pos))
                .collect(),
        }
    }

    /// The cursor as text, with `all`, `now` or the client's own value for
    /// topics whose position is not known yet (a composite may hold those).
    pub fn cursor_text(&self) -> String {
        if !self.is_multi() {
            return self.cursor().to_string();
        }
        let parts: Vec<String> = self
            .topics
            .iter()
            .map(|t| match &t.start_text {
                Some(text) => format!("{}={text}", t.topic),
                None => format!("{}={}", t.topic, t.pos),
            })
            .collect();
        parts.join(",")
    }

    /// Whether the next item can come without reading the store (it is
    /// queued, or every topic follows the fan-out): then polling
    /// [`Subscription::next`] once and dropping it wastes nothing.
    pub fn is_live(&self) -> bool {
        !self.pending.is_empty() || self.topics.iter().all(|t| matches!(t.phase, Phase::Live))
    }

    /// Whether the subscription covers more than one topic (its cursor is
    /// then not an event id).
    pub fn is_multi(&self) -> bool {
        self.topics.len() > 1
    }

    /// The next thing to send. Cancel-safe: state changes only after each
    /// await completes, so a dropped call loses nothing.
    pub async fn next(&mut self) -> Next {
        loop {
            if let Some(next) = self.pending.pop_front() {
                // The cursor moves as events are handed out, not as pages are
                // read: a cursor taken mid-page must resume mid-page.
                if let Next::Event(e) = &next
                    && let Some(t) = self.topics.iter_mut().find(|t| t.topic == e.topic)
                {
                    t.pos = e.id;
                    t.start_text = None;
                }
                return next;
            }
            if let Some(i) = self
                .topics
                .iter()
                .position(|t| !matches!(t.phase, Phase::Live))
            {
                if let Err(e) = self.advance(i).await {
                    return Next::End(EndReason::Store(e));
                }
                continue;
            }
            if let Some(next) = self.wait_live().await {
                return next;
            }
        }
    }

    /// Moves topic `i` one step towards `Live`.
    async fn advance(&mut self, i: usize) -> Result<(), StoreError> {
        let store = Arc::clone(&self.store);
        let t = &mut self.topics[i];
        match &t.phase {
            Phase::Start(Start::Head) => {
                // Watch first: anything stored after the head read arrives by
                // the watch; anything before is not wanted.
                t.watch = Some(store.watch(&t.topic));
                t.pos = store.head(&t.topic).await?;
                t.start_text = None;
                t.phase = Phase::Live;
            }
            Phase::Start(start) => {
                let (from, forced_gap) = match start {
                    Start::After(id) => (ReadFrom::After(*id), None),
                    Start::Unknown(given) => (ReadFrom::Oldest, Some(given.clone())),
                    Start::Oldest | Start::Head => (ReadFrom::Oldest, None),
                };
                t.phase = Phase::CatchUp {
                    from,
                    forced_gap,
                    keep_watch: false,
                };
            }
            Phase::CatchUp {
                from,
                forced_gap,
                keep_watch,
            } => {
                let (from, forced_gap, keep_watch) = (*from, forced_gap.clone(), *keep_watch);
                if t.watch.is_none() {
                    t.watch = Some(store.watch(&t.topic));
                }
                if keep_watch
                    && let Some(watch) = t.watch.as_mut()
                    && lagged(watch)
                {
                    // It fell a whole ring behind while catching up: cut off,
                    // as it would have been live.
                    self.pending.push_back(Next::End(EndReason::Slow));
                    return Ok(());
                }
                let page = store.read(&t.topic, from, self.page_size).await?;
                let given = match (forced_gap, from) {
                    (Some(g), _) => Some(g),
                    (None, ReadFrom::After(id)) if page.gap => Some(id.to_string()),
                    _ => None,
                };
                if let Some(cursor) = given {
                    self.pending.push_back(Next::Gap {
                        topic: t.topic.clone(),
                        cursor,
                    });
                }
                let full = page.events.len() >= self.page_size;
                self.pending
                    .extend(page.events.into_iter().map(Next::Event));
                t.pos = page.next;
                if full {
                    // More history to read; a watch held meanwhile would only
                    // fill up and lag — unless lagging is the point.
                    if !keep_watch {
                        t.watch = None;
                    }
                    t.phase = Phase::CatchUp {
                        from: ReadFrom::After(page.next),
                        forced_gap: None,
                        keep_watch,
                    };
                } else {
                    t.phase = Phase::Live;
                }
            }
            Phase::Live => {}
        }
        Ok(())
    }

    /// Waits for a live event, a keep-alive beat, expiry or shutdown. `None`
    /// means an event was a copy of one already delivered.
    async fn wait_live(&mut self) -> Option<Next> {
        let n = self.topics.len();
        let turn = self.turn;
        let topics = &mut self.topics;
        let event = std::future::poll_fn(|cx| {
            for k in 0..n {
                let i = (turn + k) % n;
                if let Some(w) = topics[i].watch.as_mut() {
                    match w.poll_next_unpin(cx) {
                        Poll::Ready(Some(r)) => return Poll::Ready((i, r)),
                        // The fan-out never closes a ring while it is watched.
                        Poll::Ready(None) => return Poll::Ready((i, Err(Lagged(0)))),
                        Poll::Pending => {}
                    }
                }
            }
            Poll::Pending
        });
        // Beats first: a stream busy with events still notices shutdown.
        tokio::select! {
            biased;
            next = quiet(&mut self.beats, &mut self.expires, self.token_expiry) => Some(next),
            (i, r) = event => {
                self.turn = (i + 1) % n;
                self.take_live(i, r)
            }
        }
    }

    /// What a live event from topic `i`'s watch means.
    fn take_live(&mut self, i: usize, r: Result<Arc<Event>, Lagged>) -> Option<Next> {
        match r {
            Ok(e) if e.id <= self.topics[i].pos => None,
            Ok(e) => {
                self.topics[i].pos = e.id;
                self.topics[i].start_text = None;
                Some(Next::Event(e))
            }
            Err(Lagged(_)) => Some(Next::End(EndReason::Slow)),
        }
    }

    /// Whether the subscription can hand its live part to someone else
    /// now ([`Subscription::release`]): it follows one topic, is caught up
    /// and has nothing to deliver first. What already waits in its watch
    /// is moved to its queue on the way, so `None` also means "call
    /// [`Subscription::next`] first". Returns the topic.
    pub fn releasable(&mut self) -> Option<Topic> {
        loop {
            let t = match self.topics.as_mut_slice() {
                [t] if self.pending.is_empty() && matches!(t.phase, Phase::Live) => t,
                _ => return None,
            };
            let Some(watch) = t.watch.as_mut() else {
                return Some(t.topic.clone());
            };
            let item = match watch.next().now_or_never() {
                None => return Some(t.topic.clone()),
                Some(item) => item.unwrap_or(Err(Lagged(0))),
            };
            // `None`: a copy of one already delivered; look again.
            if let Some(next) = self.take_live(0, item) {
                self.pending.push_back(next);
            }
        }
    }

    /// Hands the live part of a one-topic subscription to someone else
    /// who delivers its topic's events from now on (a writer serving many
    /// subscribers at once): if it is [`Subscription::releasable`], drops
    /// the watch (its place in the ring) and returns its position. Until
    /// [`Subscription::resume`] it only keeps time
    /// ([`Subscription::wait_quiet`]).
    pub fn release(&mut self) -> Option<EventId> {
        self.releasable()?;
        let t = self.topics.first_mut()?;
        t.watch = None;
        Some(t.pos)
    }

    /// Takes a released subscription back at `pos` (someone else delivered
    /// everything up to it). It watches the topic again from now and reads
    /// the store from `pos` on its next [`Subscription::next`]; the watch
    /// is kept while it reads, so a subscriber that cannot keep up from
    /// here falls a ring behind and is cut off, as a live one would be.
    pub fn resume(&mut self, pos: EventId) {
        let store = Arc::clone(&self.store);
        for t in &mut self.topics {
            t.pos = pos;
            t.start_text = None;
            t.watch = Some(store.watch(&t.topic));
            t.phase = Phase::CatchUp {
                from: ReadFrom::After(pos),
                forced_gap: None,
                keep_watch: true,
            };
        }
    }

    /// While released: waits for a keep-alive beat, expiry or shutdown.
    pub async fn wait_quiet(&mut self) -> Next {
        quiet(&mut self.beats, &mut self.expires, self.token_expiry).await
    }
}

/// Takes what waits in `watch` (the store read that follows covers it);
/// says whether the ring overflowed it on the way.
fn lagged(watch: &mut Watch) -> bool {
    loop {
        match watch.next().now_or_never() {
            None => return false,
            Some(Some(Ok(_))) => {}
            Some(Some(Err(Lagged(_))) | None) => return true,
        }
    }
}

/// A keep-alive beat, the end of the subscription's age, or shutdown.
async fn quiet(
    beats: &mut Beats,
    expires: &mut Option<Pin<Box<Sleep>>>,
    token_expiry: bool,
) -> Next {
    let expiry = async {
        match expires.as_mut() {
            Some(sleep) => sleep.as_mut().await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        biased;
        beat = beats.wait() => match beat {
            Beat::KeepAlive => Next::KeepAlive,
            Beat::Shutdown => Next::End(EndReason::Shutdown),
        },
        () = expiry => Next::End(if token_expiry {
            EndReason::TokenExpired
        } else {
            EndReason::Expired
        }),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio_util::sync::CancellationToken;

    use super::*;
    use crate::fanout::Fanout;
    use crate::heartbeat::Heartbeat;
    use crate::hub::{Hub, HubConfig};
    use crate::name::EventType;
    use crate::store::memory::MemoryStore;
    use crate::store::{NewEvent, Retention};

    fn hub(page_size: usize) -> (Hub, CancellationToken) {
        let token = CancellationToken::new();
        let retention = Retention {
            max_events: 100_000,
            max_age: None,
        };
        let store = MemoryStore::new(retention, Fanout::new(100_000));
        let config = HubConfig {
            page_size,
            ..HubConfig::default()
        };
        let hb = Heartbeat::start(Duration::from_secs(3600), token.clone());
        (Hub::new(store, config, hb), token)
    }

    async fn publish(hub: &Hub, topic: &str, data: String) -> EventId {
        let new = NewEvent {
            topic: Topic::new(topic).unwrap(),
            kind: EventType::message(),
            data,
            idempotency_key: None,
        };
        hub.publish(vec![new]).await.unwrap()[0].event.id
    }

    async fn next_event(sub: &mut Subscription) -> Arc<Event> {
        match tokio::time::timeout(Duration::from_secs(10), sub.next()).await {
            Ok(Next::Event(e)) => e,
            other => panic!("expected an event, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn history_then_live_without_gap_or_duplicate_under_concurrent_publishing() {
        let (hub, _token) = hub(7);
        for i in 0..50 {
            publish(&hub, "t", i.to_string()).await;
        }
        let mut sub = hub
            .subscribe(vec![Topic::new("t").unwrap()], &CursorInput::All)
            .await
            .unwrap();
        let publisher = {
            let hub = hub.clone();
            tokio::spawn(async move {
                for i in 50..2000 {
                    publish(&hub, "t", i.to_string()).await;
                    if i % 16 == 0 {
                        tokio::task::yield_now().await;
                    }
                }
            })
        };
        for want in 0..2000 {
            assert_eq!(next_event(&mut sub).await.data, want.to_string());
        }
        publisher.await.unwrap();
    }

    #[tokio::test]
    async fn release_waits_for_what_the_watch_holds_and_resume_reads_the_store() {
        let (hub, _token) = hub(4);
        let topic = Topic::new("r").unwrap();
        let mut sub = hub
            .subscribe(vec![topic.clone()], &CursorInput::Now)
            .await
            .unwrap();
        assert_eq!(sub.releasable(), Some(topic.clone()));
        // An event sits in the watch: not released, and it comes next.
        let first = publish(&hub, "r", "first".into()).await;
        assert_eq!(sub.release(), None);
        assert_eq!(next_event(&mut sub).await.id, first);
        // Nothing waits: released at the last event, the watch let go.
        assert_eq!(sub.release(), Some(first));
        assert!(sub.topics[0].watch.is_none());
        // Someone else delivered up to `second`; the subscription resumes
        // after it, reading what came since from the store (more than a
        // page) with its watch kept.
        let second = publish(&hub, "r", "second".into()).await;
        for i in 0..6 {
            publish(&hub, "r", format!("later{i}")).await;
        }
        sub.resume(second);
        for i in 0..6 {
            assert_eq!(next_event(&mut sub).await.data, format!("later{i}"));
            assert!(sub.topics[0].watch.is_some());
        }
        let live = publish(&hub, "r", "live".into()).await;
        assert_eq!(next_event(&mut sub).await.id, live);
    }

    #[tokio::test]
    async fn a_resumed_subscriber_that_falls_a_ring_behind_is_cut_off_before_catching_up() {
        let token = CancellationToken::new();
        let retention = Retention {
            max_events: 100_000,
            max_age: None,
        };
        // A ring of 8 and pages of 4.
        let store = MemoryStore::new(retention, Fanout::new(8));
        let config = HubConfig {
            page_size: 4,
            ..HubConfig::default()
        };
        let hb = Heartbeat::start(Duration::from_secs(3600), token.clone());
        let hub = Hub::new(store, config, hb);
        let mut sub = hub
            .subscribe(vec![Topic::new("s").unwrap()], &CursorInput::Now)
            .await
            .unwrap();
        let pos = sub.release().unwrap();
        sub.resume(pos);
        // More than a ring's worth arrives before it reads again.
        for i in 0..20 {
            publish(&hub, "s", i.to_string()).await;
        }
        match sub.next().await {
            Next::End(EndReason::Slow) => {}
            other => panic!("expected to be cut off as slow, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_cursor_taken_mid_page_resumes_mid_page() {
        let (hub, _token) = hub(4);
        let topics = vec![Topic::new("a").unwrap(), Topic::new("b").unwrap()];
        for i in 0..4 {
            publish(&hub, "a", format!("a{i}")).await;
        }
        publish(&hub, "b", "b0".into()).await;
        let mut sub = hub
            .subscribe(topics.clone(), &CursorInput::All)
            .await
            .unwrap();
        assert_eq!(next_event(&mut sub).await.data, "a0");
        let cursor = sub.cursor().to_string();
        let mut again = hub
            .subscribe(topics, &CursorInput::Given(cursor))
            .await
            .unwrap();
        let mut rest = Vec::new();
        for _ in 0..4 {
            rest.push(next_event(&mut again).await.data.clone());
        }
        assert_eq!(rest, ["a1", "a2", "a3", "b0"]);
    }

    #[tokio::test]
    async fn junk_cursor_reports_a_gap_then_replays() {
        let (hub, _token) = hub(100);
        publish(&hub, "t", "a".into()).await;
        let mut sub = hub
            .subscribe(
                vec![Topic::new("t").unwrap()],
                &CursorInput::Given("junk".into()),
            )
            .await
            .unwrap();
        match sub.next().await {
            Next::Gap { cursor, .. } => assert_eq!(cursor, "junk"),
            other => panic!("expected a gap, got {other:?}"),
        }
        assert_eq!(next_event(&mut sub).await.data, "a");
    }

    #[tokio::test]
    async fn multi_topic_cursor_restores_every_position() {
        let (hub, _token) = hub(100);
        let topics = vec![Topic::new("a").unwrap(), Topic::new("b").unwrap()];
        publish(&hub, "a", "a1".into()).await;
        publish(&hub, "b", "b1".into()).await;
        let mut sub = hub
            .subscribe(topics.clone(), &CursorInput::All)
            .await
            .unwrap();
        let mut seen = vec![next_event(&mut sub).await.data.clone()];
        seen.push(next_event(&mut sub).await.data.clone());
        seen.sort();
        assert_eq!(seen, ["a1", "b1"]);
        let cursor = sub.cursor().to_string();
        drop(sub);
        publish(&hub, "b", "b2".into()).await;
        publish(&hub, "a", "a2".into()).await;
        let mut again = hub
            .subscribe(topics, &CursorInput::Given(cursor))
            .await
            .unwrap();
        let mut seen = vec![next_event(&mut again).await.data.clone()];
        seen.push(next_event(&mut again).await.data.clone());
        seen.sort();
        assert_eq!(seen, ["a2", "b2"]);
    }

    #[tokio::test]
    async fn now_skips_history_and_shutdown_ends_the_stream() {
        let (hub, token) = hub(100);
        publish(&hub, "t", "old".into()).await;
        let mut sub = hub
            .subscribe(vec![Topic::new("t").unwrap()], &CursorInput::Now)
            .await
            .unwrap();
        publish(&hub, "t", "new".into()).await;
        assert_eq!(next_event(&mut sub).await.data, "new");
        token.cancel();
        assert!(matches!(sub.next().await, Next::End(EndReason::Shutdown)));
    }
}
