//! Parked long polls: a direct-path long poll of one topic that finds
//! nothing waits in the topic's lot ([`super::lot`]); when events arrive,
//! the lot's task encodes the answer once per distinct (position, limit,
//! HTTP version) — in practice once — and writes it to every parked
//! socket back to back. Each poll's own task runs afterwards, to carry on
//! with its connection.

use std::collections::{BTreeMap, VecDeque};
use std::io::{self, IoSlice};
use std::sync::{Arc, Mutex};

use axum::http::StatusCode;
use bytes::Bytes;
use herald_core::{Cursor, Event, EventId, PollAnswer, Topic};
use metrics::Counter;
use tokio::net::TcpStream;
use tokio::sync::oneshot;

use super::head::{self, Framing};
use super::lot::{Kind, Lot, Lots, Member, Refused, lock};
use crate::state::AppState;
use crate::transport::poll::answer_parts;

/// The kind of lot parked long polls wait in.
#[derive(Debug)]
pub struct Polls;

impl Kind for Polls {
    type Waiter = Parked;

    fn lots(state: &AppState) -> &Arc<Lots<Polls>> {
        state.poll_lots()
    }

    async fn serve(lot: &Lot<Polls>, events: &[Arc<Event>], delivered: &Counter) {
        // No yield inside: every parked poll is answered once, and the
        // sooner the last one is, the better.
        answer(lot, events, delivered);
    }

    fn lost(waiters: BTreeMap<u64, Arc<Parked>>) {
        for p in waiters.into_values() {
            if let Some(Claim { tcp, done }) = p.take_claim() {
                // The socket is the poll's alone again before it hears.
                drop(tcp);
                let _ = done.send(Delivery::Reread);
            }
        }
    }
}

/// One parked poll, as the lot's task sees it.
#[derive(Debug)]
pub struct Parked {
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

impl Parked {
    fn take_claim(&self) -> Option<Claim> {
        lock(&self.claim).take()
    }
}

/// Parks a poll at `at`: the lot's task writes its answer to `tcp` when an
/// event after `at.after` arrives.
pub fn park(member: &Member<Polls>, at: Place, tcp: &Arc<TcpStream>) -> Result<Ticket, Refused> {
    let (done, answer) = oneshot::channel();
    let parked = Arc::new(Parked {
        after: at.after,
        limit: at.limit,
        gap: at.gap,
        http10: at.http10,
        claim: Mutex::new(Some(Claim {
            tcp: Arc::clone(tcp),
            done,
        })),
    });
    let key = member.enter(at.after, Arc::clone(&parked))?;
    Ok(Ticket {
        lot: Arc::clone(member.lot()),
        key,
        parked,
        answer,
    })
}

/// A parked poll, as its own task holds it.
#[derive(Debug)]
pub struct Ticket {
    lot: Arc<Lot<Polls>>,
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
        self.lot.remove(self.key);
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

/// Answers every poll parked before the newest of `events` (which are in
/// id order): the events after its position, up to its limit.
fn answer(lot: &Lot<Polls>, events: &[Arc<Event>], delivered: &Counter) {
    let Some(newest) = events.last().map(|e| e.id) else {
        return;
    };
    let due = {
        let mut state = lot.lock();
        let (due, waiting): (BTreeMap<_, _>, BTreeMap<_, _>) = std::mem::take(&mut state.waiters)
            .into_iter()
            .partition(|(_, p)| p.after < newest);
        state.waiters = waiting;
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
                let bytes = encode(lot.topic(), events, shape, &date);
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
