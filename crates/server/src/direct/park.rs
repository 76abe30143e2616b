//! Parked long polls: a direct-path long poll of one topic that finds
//! nothing waits in the topic's lot ([`super::lot`]); when events arrive,
//! the lot's task encodes the answer once per distinct (position, limit,
//! gap, HTTP version, headers) — in practice once — and writes it to every
//! parked socket back to back. Each poll's own task runs afterwards, to
//! carry on with its connection.
//!
//! [`Parking`] is how such a poll waits in the hub's one long-poll loop
//! ([`herald_core::long_poll`]): where the fan-out's watch would wake the
//! poll to read again, the lot answers it.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};

use axum::http::{HeaderMap, StatusCode};
use bytes::Bytes;
use herald_core::long_poll::{Waiter, Wake};
use herald_core::{Cursor, Event, EventId, PollAnswer, Topic};
use metrics::Counter;
use tokio::net::TcpStream;
use tokio::sync::oneshot;

use super::lot::{Kind, Lot, Lots, Member, Refused, lock};
use crate::http1::head::{self, Framing};
use crate::http1::write::write_now;
use crate::plan::Plan;
use crate::transport::poll;

/// The kind of lot parked long polls wait in.
#[derive(Debug)]
pub struct Polls;

impl Kind for Polls {
    type Waiter = Parked;

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
    /// A read of this poll found history missing: the answer says so.
    gap: bool,
    http10: bool,
    /// Headers its answer carries besides the poll's own.
    headers: HeaderMap,
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

impl Parked {
    fn take_claim(&self) -> Option<Claim> {
        lock(&self.claim).take()
    }
}

/// Parks a poll: the lot's task writes its answer to the poll's socket
/// when an event after `parked.after` arrives.
fn park(member: &Member<Polls>, parked: Parked) -> Result<Ticket, Refused> {
    let after = parked.after;
    let parked = Arc::new(parked);
    let key = member.enter(after, Arc::clone(&parked))?;
    Ok(Ticket {
        lot: Arc::clone(member.lot()),
        key,
        parked,
    })
}

/// A parked poll, as its own task holds it.
#[derive(Debug)]
pub struct Ticket {
    lot: Arc<Lot<Polls>>,
    key: u64,
    parked: Arc<Parked>,
}

impl Ticket {
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
    let mut encoded: Vec<(Shape<'_>, [Bytes; 2])> = Vec::new();
    for p in due.values() {
        let Some(claim) = p.take_claim() else {
            // Its own task took it first (timeout, gone, shutdown).
            continue;
        };
        let shape = Shape {
            after: p.after,
            limit: p.limit,
            gap: p.gap,
            http10: p.http10,
            headers: &p.headers,
        };
        let bytes = match encoded.iter().find(|(s, _)| *s == shape) {
            Some((_, bytes)) => bytes.clone(),
            None => {
                let bytes = encode(lot.topic(), events, &shape, &date);
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
        let delivery = write_answer(&claim.tcp, bytes);
        drop(claim.tcp);
        let _ = claim.done.send(delivery);
    }
}

/// What makes two parked polls' answers the same bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Shape<'a> {
    after: EventId,
    limit: usize,
    gap: bool,
    http10: bool,
    headers: &'a HeaderMap,
}

/// The whole `200` (head, body) for a poll of `shape`.
fn encode(topic: &Topic, events: &[Arc<Event>], shape: &Shape<'_>, date: &str) -> [Bytes; 2] {
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
    let whole = poll::whole(&answer, shape.headers);
    debug_assert_eq!(whole.status, StatusCode::OK);
    let head = head::response(
        shape.http10,
        whole.status,
        &whole.headers,
        Framing::Length(whole.body.len()),
        date,
    );
    [Bytes::from(head), whole.body]
}

/// Writes what the socket takes now, without waiting; the rest is left to
/// the poll's own task.
fn write_answer(mut tcp: &TcpStream, answer: [Bytes; 2]) -> Delivery {
    let mut rest = VecDeque::from(answer);
    match write_now(&mut tcp, &mut rest) {
        Ok(_) => Delivery::Written(rest),
        Err(_) => Delivery::Failed,
    }
}

/// A long poll of one topic as it waits in its topic's lot: joined before
/// the loop's first read, parked after each read that found nothing.
pub struct Parking {
    /// While parked: the ticket, and where the lot's task says what it did.
    /// Declared first, so a dropped poll leaves the lot before its
    /// membership ends.
    parked: Option<(Ticket, oneshot::Receiver<Delivery>)>,
    lots: Arc<Lots<Polls>>,
    /// Its lot's membership; the lot knows the topic.
    member: Member<Polls>,
    tcp: Arc<TcpStream>,
    http10: bool,
    limit: usize,
    /// The plan's headers: a parked poll's answer carries them too.
    headers: HeaderMap,
}

/// The lot's write failed: the connection is lost.
#[derive(Debug)]
pub struct Lost;

impl Parking {
    /// Joins the lot of the plan's one topic.
    pub fn join(
        lots: &Arc<Lots<Polls>>,
        topic: &Topic,
        tcp: &Arc<TcpStream>,
        http10: bool,
        plan: &Plan,
        limit: usize,
    ) -> Parking {
        Parking {
            parked: None,
            member: lots.join(topic),
            lots: Arc::clone(lots),
            tcp: Arc::clone(tcp),
            http10,
            limit,
            headers: plan.headers.clone(),
        }
    }

    fn rejoin(&mut self) {
        self.parked = None;
        let topic = self.member.lot().topic().clone();
        self.member = self.lots.join(&topic);
    }

    fn answered(delivery: Delivery) -> Option<Result<VecDeque<Bytes>, Lost>> {
        match delivery {
            Delivery::Written(rest) => Some(Ok(rest)),
            Delivery::Failed => Some(Err(Lost)),
            Delivery::Reread => None,
        }
    }
}

impl Waiter for Parking {
    /// The lot wrote the answer but for these bytes, or lost the socket.
    type Answered = Result<VecDeque<Bytes>, Lost>;

    async fn wait(&mut self, at: &Cursor, gap: bool) -> Wake<Self::Answered> {
        if self.parked.is_none() {
            let (done, answer) = oneshot::channel();
            let parked = Parked {
                after: at.get(self.member.lot().topic()).unwrap_or(EventId::START),
                limit: self.limit,
                gap,
                http10: self.http10,
                headers: self.headers.clone(),
                claim: Mutex::new(Some(Claim {
                    tcp: Arc::clone(&self.tcp),
                    done,
                })),
            };
            match park(&self.member, parked) {
                Ok(ticket) => self.parked = Some((ticket, answer)),
                Err(Refused::Moved) => {
                    // Read again, but let the store catch up with the ring
                    // first.
                    tokio::task::yield_now().await;
                    return Wake::Again;
                }
                Err(Refused::Closed) => {
                    self.rejoin();
                    return Wake::Again;
                }
            }
        }
        let Some((_, answer)) = self.parked.as_mut() else {
            return Wake::Again;
        };
        let delivery = answer.await.unwrap_or(Delivery::Reread);
        match Self::answered(delivery) {
            Some(a) => Wake::Answered(a),
            None => {
                self.rejoin();
                Wake::Again
            }
        }
    }

    /// Takes the poll out of the lot so that its own task answers it,
    /// unless the lot's task claimed it first (it is writing, or has
    /// written, the answer).
    async fn stop(&mut self) -> Option<Self::Answered> {
        let (ticket, answer) = self.parked.take()?;
        if ticket.unpark() {
            return None;
        }
        Self::answered(answer.await.unwrap_or(Delivery::Reread))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use futures_util::FutureExt;
    use herald_core::fanout::Fanout;
    use herald_core::store::NewEvent;
    use herald_core::store::memory::MemoryStore;
    use herald_core::{CursorInput, EventType, Retention, Store};
    use tokio::io::AsyncReadExt;
    use tokio::net::{TcpListener, TcpStream};

    use super::*;
    use crate::plan::Mode;

    struct Setup {
        store: Arc<dyn Store>,
        lots: Arc<Lots<Polls>>,
        topic: Topic,
        server_end: Arc<TcpStream>,
        client_end: TcpStream,
        plan: Plan,
    }

    async fn setup() -> Setup {
        let retention = Retention {
            max_events: 100,
            max_age: None,
        };
        let store: Arc<dyn Store> = MemoryStore::new(retention, Fanout::new(64));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client_end = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server_end, _) = listener.accept().await.unwrap();
        let topic = Topic::new("p").unwrap();
        let plan = Plan {
            topics: vec![topic.clone()],
            cursor: CursorInput::Now,
            mode: Mode::LongPoll {
                limit: 10,
                deadline: tokio::time::Instant::now() + Duration::from_secs(60),
            },
            headers: HeaderMap::new(),
            until: None,
            slot: None,
        };
        Setup {
            lots: Lots::new(&store),
            store,
            topic,
            server_end: Arc::new(server_end),
            client_end,
            plan,
        }
    }

    async fn publish(store: &Arc<dyn Store>, topic: &Topic) -> EventId {
        let new = NewEvent {
            topic: topic.clone(),
            kind: EventType::message(),
            data: "x".into(),
            idempotency_key: None,
        };
        store.append(vec![new]).await.unwrap()[0].event.id
    }

    /// Reads from `client` until a whole answer (head and `content-length`
    /// body) is in.
    async fn read_answer(client: &mut TcpStream) -> String {
        let mut seen = Vec::new();
        loop {
            let text = String::from_utf8_lossy(&seen).into_owned();
            if let Some((head, body)) = text.split_once("\r\n\r\n") {
                let len: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length: "))
                    .and_then(|n| n.parse().ok())
                    .unwrap_or(0);
                if body.len() >= len {
                    return text;
                }
            }
            let mut chunk = [0u8; 4096];
            let n = client.read(&mut chunk).await.unwrap();
            assert!(n > 0, "closed before a whole answer: {text}");
            seen.extend_from_slice(&chunk[..n]);
        }
    }

    fn at(topic: &Topic) -> Cursor {
        Cursor {
            positions: vec![(topic.clone(), EventId::START)],
        }
    }

    /// The deadline passes just as the lot's task answers: the lot's answer
    /// stands, and the poll's own task does not answer again.
    #[tokio::test]
    async fn a_poll_stopped_after_the_lot_answered_keeps_that_answer() {
        let mut s = setup().await;
        let mut parking = Parking::join(&s.lots, &s.topic, &s.server_end, false, &s.plan, 10);
        // Parks, and the wait is dropped as the deadline would drop it.
        assert!(parking.wait(&at(&s.topic), false).now_or_never().is_none());
        let id = publish(&s.store, &s.topic).await;
        let answer = read_answer(&mut s.client_end).await;
        assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
        assert!(answer.contains(&format!("\"id\":\"{id}\"")), "{answer}");
        match parking.stop().await {
            Some(Ok(rest)) => assert!(rest.is_empty()),
            other => panic!("expected the lot's answer to stand, got {other:?}"),
        }
    }

    /// Stopped before any event: the poll leaves the lot, which then
    /// writes nothing to its socket.
    #[tokio::test]
    async fn a_poll_stopped_before_any_event_leaves_the_lot() {
        let s = setup().await;
        let mut parking = Parking::join(&s.lots, &s.topic, &s.server_end, false, &s.plan, 10);
        assert!(parking.wait(&at(&s.topic), false).now_or_never().is_none());
        assert_eq!(parking.member.lot().lock().waiters.len(), 1);
        assert!(parking.stop().await.is_none());
        assert!(parking.member.lot().lock().waiters.is_empty());
    }
}
