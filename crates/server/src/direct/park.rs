//! Parked long polls: a direct-path long poll on one topic waits in that
//! topic's lot, and one task per lot, woken once per publish, writes the
//! answer to every parked socket back to back.
//!
//! Why: a publish that woke 1,000 long polls used to wake 1,000 tasks, and
//! each read the store, encoded the same answer and wrote it, so the last
//! client waited for 999 rounds of that work before its write. Here the
//! answer comes from the topic's ring, is encoded once per distinct
//! (position, limit, HTTP version) — in practice once — and the only work
//! between two clients' writes is the write. Each poll's own task runs
//! afterwards, to carry on with its connection.
//!
//! Correctness rests on one rule: a poll joins the lot, whose task watches
//! the topic, *before* it reads the store, and parks only if the lot's task
//! has not yet taken an event newer than what the read saw. Every event
//! after the poll's position then either was in its read or reaches the
//! lot's task after the poll parked. A lot whose ring overflowed cannot
//! keep that promise: it closes and sends its polls back to the store.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::io::{self, IoSlice};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use axum::http::StatusCode;
use bytes::Bytes;
use futures_util::{FutureExt, StreamExt};
use herald_core::fanout::Watch;
use herald_core::{Cursor, Event, EventId, PollAnswer, Topic};
use metrics::Counter;
use tokio::net::TcpStream;
use tokio::sync::{Notify, oneshot};

use super::head::{self, Framing};
use crate::state::AppState;
use crate::transport::poll::answer_parts;

/// Most events a lot's task takes from the ring before it answers.
const MAX_BATCH: usize = 1024;

/// The lots of every topic with a parked (or parking) long poll.
#[derive(Debug, Default)]
pub struct Lots {
    lots: Mutex<HashMap<Topic, Arc<Lot>>>,
}

#[derive(Debug)]
struct Lot {
    topic: Topic,
    state: Mutex<LotState>,
    /// Told when the last member leaves, so the lot's task can end.
    idle: Notify,
}

#[derive(Debug, Default)]
struct LotState {
    /// Polls that joined and have not left: reading the store or parked.
    members: usize,
    /// The newest event the lot's task has taken from the ring.
    seen: Option<EventId>,
    /// Parked polls in the order they parked, which is the order they are
    /// answered in.
    parked: BTreeMap<u64, Arc<Parked>>,
    next_key: u64,
    /// The lot's task has ended; nobody may park here any more.
    closed: bool,
}

/// One parked poll, as the lot's task sees it.
#[derive(Debug)]
struct Parked {
    /// The poll's position: it is answered with the events after this.
    after: EventId,
    limit: usize,
    /// Its first read found history missing: the answer says so.
    gap: bool,
    http10: bool,
    /// Taken by whoever answers the poll: the lot's task (an event) or the
    /// poll's own task (timeout, client gone, shutdown). Never both.
    claim: Mutex<Option<Claim>>,
}

#[derive(Debug)]
struct Claim {
    tcp: Arc<TcpStream>,
    done: oneshot::Sender<Delivery>,
}

/// What the lot's task did for a parked poll.
#[derive(Debug)]
pub enum Delivery {
    /// The answer went out, all but these bytes (which the poll's task
    /// writes when the socket has room).
    Written(VecDeque<Bytes>),
    /// The write failed: the connection is lost.
    Failed,
    /// The lot lost track of the topic (its ring overflowed): read the
    /// store again.
    Reread,
}

/// Where and how a poll parks.
#[derive(Debug, Clone, Copy)]
pub struct Place {
    /// The poll's position in the topic (what its read saw last).
    pub after: EventId,
    pub limit: usize,
    /// Its read found history missing.
    pub gap: bool,
    pub http10: bool,
}

/// Why a poll could not park.
#[derive(Debug, PartialEq, Eq)]
pub enum NotParked {
    /// An event newer than the poll's read has already gone by: read again.
    Moved,
    /// The lot closed: join a new one, then read again.
    Closed,
}

impl Lots {
    /// Joins the lot of `topic`, opening it (and its task, watching the
    /// topic from now on) if there is none. The caller reads the store
    /// only after this.
    pub fn join(state: &AppState, topic: &Topic) -> Member {
        let lots = state.lots();
        let mut map = lock(&lots.lots);
        let lot = match map.get(topic) {
            Some(lot) => Arc::clone(lot),
            None => {
                let lot = Arc::new(Lot {
                    topic: topic.clone(),
                    state: Mutex::new(LotState::default()),
                    idle: Notify::new(),
                });
                map.insert(topic.clone(), Arc::clone(&lot));
                let watch = state.hub().store().watch(topic);
                tokio::spawn(run(Arc::clone(lots), Arc::clone(&lot), watch));
                lot
            }
        };
        lot.lock().members += 1;
        drop(map);
        Member { lot }
    }

    /// Ends `lot` if nobody is in it; says whether it did.
    fn retire_if_idle(&self, lot: &Arc<Lot>) -> bool {
        let mut map = lock(&self.lots);
        let mut state = lot.lock();
        if state.members > 0 {
            return false;
        }
        unlist(&mut map, lot, &mut state);
        true
    }

    /// Ends `lot` at once: new polls go to a new lot and the parked ones
    /// back to the store.
    fn close(&self, lot: &Arc<Lot>) {
        let parked = {
            let mut map = lock(&self.lots);
            let mut state = lot.lock();
            unlist(&mut map, lot, &mut state);
            std::mem::take(&mut state.parked)
        };
        for p in parked.into_values() {
            if let Some(claim) = p.take_claim() {
                let _ = claim.done.send(Delivery::Reread);
            }
        }
    }
}

/// Closes `lot` and takes it off the map (both locks held by the caller),
/// so the next poll of its topic opens a new one.
fn unlist(map: &mut HashMap<Topic, Arc<Lot>>, lot: &Arc<Lot>, state: &mut LotState) {
    state.closed = true;
    if map.get(&lot.topic).is_some_and(|l| Arc::ptr_eq(l, lot)) {
        map.remove(&lot.topic);
    }
}

impl Lot {
    fn lock(&self) -> MutexGuard<'_, LotState> {
        lock(&self.state)
    }
}

/// Every critical section here is a few map operations with no `.await`
/// inside; a panic inside one cannot leave a half-done change behind that
/// matters more than the server staying up.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Parked {
    fn take_claim(&self) -> Option<Claim> {
        lock(&self.claim).take()
    }
}

/// A poll's place in a lot, from joining until it leaves (dropped).
#[derive(Debug)]
pub struct Member {
    lot: Arc<Lot>,
}

impl Member {
    /// Parks the poll at `after`: the lot's task writes its answer to `tcp`
    /// when an event after `after` arrives.
    pub fn park(&self, at: Place, tcp: &Arc<TcpStream>) -> Result<Ticket, NotParked> {
        let Place {
            after,
            limit,
            gap,
            http10,
        } = at;
        let mut state = self.lot.lock();
        if state.closed {
            return Err(NotParked::Closed);
        }
        if state.seen.is_some_and(|seen| seen > after) {
            return Err(NotParked::Moved);
        }
        let (done, answer) = oneshot::channel();
        let parked = Arc::new(Parked {
            after,
            limit,
            gap,
            http10,
            claim: Mutex::new(Some(Claim {
                tcp: Arc::clone(tcp),
                done,
            })),
        });
        let key = state.next_key;
        state.next_key += 1;
        state.parked.insert(key, Arc::clone(&parked));
        Ok(Ticket {
            lot: Arc::clone(&self.lot),
            key,
            parked,
            answer,
        })
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        let mut state = self.lot.lock();
        state.members -= 1;
        if state.members == 0 {
            drop(state);
            self.lot.idle.notify_one();
        }
    }
}

/// A parked poll, as its own task holds it.
#[derive(Debug)]
pub struct Ticket {
    lot: Arc<Lot>,
    key: u64,
    parked: Arc<Parked>,
    answer: oneshot::Receiver<Delivery>,
}

impl Ticket {
    /// Waits for the lot's task to deliver.
    pub async fn delivered(&mut self) -> Delivery {
        (&mut self.answer).await.unwrap_or(Delivery::Reread)
    }

    /// Takes the poll out of the lot so that its own task answers it:
    /// `None` if that worked, or what the lot's task did if it had already
    /// claimed the poll (it is writing, or has written, the answer).
    pub async fn leave(mut self) -> Option<Delivery> {
        if self.unpark() {
            return None;
        }
        Some(self.delivered().await)
    }

    /// Takes the poll out of the lot unless the lot's task claimed it
    /// first; says whether it did.
    fn unpark(&self) -> bool {
        if self.parked.take_claim().is_none() {
            return false;
        }
        self.lot.lock().parked.remove(&self.key);
        true
    }
}

/// A ticket dropped while parked (its connection's future dropped) leaves
/// the lot, so the lot holds no socket for a poll nobody waits on.
impl Drop for Ticket {
    fn drop(&mut self) {
        self.unpark();
    }
}

/// A lot's task: takes the topic's events from the ring and answers the
/// polls parked before them; ends when the lot is empty.
async fn run(lots: Arc<Lots>, lot: Arc<Lot>, mut watch: Watch) {
    let delivered = metrics::counter!("herald_events_delivered_total");
    let mut batch = Vec::new();
    loop {
        tokio::select! {
            item = watch.next() => {
                let mut lagged = !matches!(item, Some(Ok(_)));
                batch.extend(item.and_then(Result::ok));
                while !lagged && batch.len() < MAX_BATCH {
                    match watch.next().now_or_never() {
                        Some(Some(Ok(event))) => batch.push(event),
                        Some(_) => lagged = true,
                        None => break,
                    }
                }
                if lagged {
                    // The ring overflowed (or ended): what was missed is
                    // unknown, so nobody may be answered from here.
                    lots.close(&lot);
                    return;
                }
                answer(&lot, &batch, &delivered);
                batch.clear();
            }
            () = lot.idle.notified() => {}
        }
        if lots.retire_if_idle(&lot) {
            return;
        }
    }
}

/// Answers every poll parked before the newest of `events` (which are in
/// id order): the events after its position, up to its limit.
fn answer(lot: &Lot, events: &[Arc<Event>], delivered: &Counter) {
    let Some(newest) = events.last().map(|e| e.id) else {
        return;
    };
    let due = {
        let mut state = lot.lock();
        state.seen = Some(newest);
        let (due, waiting): (BTreeMap<_, _>, BTreeMap<_, _>) = std::mem::take(&mut state.parked)
            .into_iter()
            .partition(|(_, p)| p.after < newest);
        state.parked = waiting;
        due
    };
    if due.is_empty() {
        return;
    }
    let date = super::date();
    // Parked polls almost all share one position, limit and version: one
    // encoding serves them all.
    let mut encoded: Vec<(Shape, [Bytes; 2])> = Vec::new();
    for p in due.into_values() {
        let Some(claim) = p.take_claim() else {
            // Its own task took it first (timeout, gone, shutdown).
            continue;
        };
        let shape = Shape {
            after: p.after,
            limit: p.limit,
            gap: p.gap,
            http10: p.http10,
        };
        let bytes = match encoded.iter().find(|(s, _)| *s == shape) {
            Some((_, bytes)) => bytes.clone(),
            None => {
                let bytes = encode(&lot.topic, events, shape, &date);
                encoded.push((shape, bytes.clone()));
                bytes
            }
        };
        let count = events
            .iter()
            .filter(|e| e.id > shape.after)
            .take(shape.limit)
            .count();
        delivered.increment(count as u64);
        let delivery = write_now(&claim.tcp, bytes);
        drop(claim.tcp);
        let _ = claim.done.send(delivery);
    }
}

/// What makes two parked polls' answers the same bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Shape {
    after: EventId,
    limit: usize,
    gap: bool,
    http10: bool,
}

/// The whole `200` (head, body) for a poll of `shape`.
fn encode(topic: &Topic, events: &[Arc<Event>], shape: Shape, date: &str) -> [Bytes; 2] {
    let mine: Vec<Arc<Event>> = events
        .iter()
        .filter(|e| e.id > shape.after)
        .take(shape.limit)
        .cloned()
        .collect();
    let last = mine.last().map_or(shape.after, |e| e.id);
    let answer = PollAnswer {
        events: mine,
        gap: shape.gap,
        next: Cursor {
            positions: vec![(topic.clone(), last)],
        },
    };
    let (status, headers, body) = answer_parts(&answer);
    debug_assert_eq!(status, StatusCode::OK);
    let head = head::response(
        shape.http10,
        status,
        &headers,
        Framing::Length(body.len()),
        date,
    );
    [Bytes::from(head), body]
}

/// Writes what the socket takes now, without waiting; the rest is left to
/// the poll's own task.
fn write_now(tcp: &TcpStream, [head, body]: [Bytes; 2]) -> Delivery {
    let written = tcp.try_write_vectored(&[IoSlice::new(&head), IoSlice::new(&body)]);
    let mut rest = VecDeque::from([head, body]);
    match written {
        Ok(n) => {
            super::socket::consume(&mut rest, n);
            Delivery::Written(rest)
        }
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Delivery::Written(rest),
        Err(_) => Delivery::Failed,
    }
}
