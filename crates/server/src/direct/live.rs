//! Live streams: a direct-path stream (SSE or NDJSON) of one topic that
//! has caught up hands its socket to the topic's lot ([`super::lot`]), and
//! the lot's task writes each event — encoded once by the stream's
//! encoder, one shared chunk — to every such stream's socket back to back.
//!
//! Meanwhile the stream's own task keeps time (keep-alives, the stream's
//! age, shutdown) and notices the client leaving. It takes the stream back
//! when the lot cannot go on writing to it — the socket is full, the write
//! failed, the ring overflowed — and carries on from where the lot left
//! off: the bytes the lot could not write first, then the store. A stream
//! in a lot holds no place in the ring of its own.

use std::collections::{BTreeMap, VecDeque};
use std::marker::PhantomData;
use std::sync::{Arc, Mutex};

use bytes::{Bytes, BytesMut};
use herald_core::subscription::Next;
use herald_core::{Event, EventId};
use metrics::Counter;
use tokio::net::TcpStream;
use tokio::sync::Notify;

use super::lot::{Kind, Lot, Lots, Member, lock};
use crate::http1::chunk;
use crate::http1::write::write_now;
use crate::transport::{Encode, Outbox};

/// The kind of lot caught-up streams encoded by `E` wait in: every stream
/// in it gets the same bytes for an event, [`Encode::shared`] of `E`'s
/// default (streams with another encoder stay out).
#[derive(Debug)]
pub struct Streams<E>(PhantomData<fn() -> E>);

impl<E: Encode + Default> Kind for Streams<E> {
    type Waiter = Live;

    async fn serve(lot: &Lot<Self>, events: &[Arc<Event>], delivered: &Counter) {
        let encoder = E::default();
        let plain: Vec<Bytes> = events.iter().map(|e| encoder.shared(e)).collect();
        write_all_streams(lot, events, &plain, delivered).await;
    }

    fn lost(waiters: BTreeMap<u64, Arc<Live>>) {
        for live in waiters.into_values() {
            let mut slot = lock(&live.slot);
            slot.tcp = None;
            drop(slot);
            live.back.notify_one();
        }
    }
}

/// One stream in a lot.
#[derive(Debug)]
pub struct Live {
    /// HTTP/1.1 (chunked) rather than HTTP/1.0 (ends with the close).
    chunked: bool,
    /// Locked by whoever writes to the socket: the lot's task (events) or
    /// the stream's task (a keep-alive, or taking the stream back).
    slot: Mutex<Slot>,
    /// Wakes the stream's task when the lot gives the stream back.
    back: Notify,
}

#[derive(Debug)]
struct Slot {
    /// The socket while the lot writes to it; `None` once given back.
    tcp: Option<Arc<TcpStream>>,
    /// The last event written (or left in `rest`).
    pos: EventId,
    /// Bytes the lot could not write; the stream's task writes them first.
    rest: VecDeque<Bytes>,
    /// A write failed: the connection is lost.
    failed: bool,
}

/// How a stream's time in a lot ended.
pub enum Held {
    /// It could not enter (something to deliver first, or the lot moved
    /// on): carry on as before.
    NotNow,
    /// Taken back: write `rest`, then carry on (the subscription resumes
    /// from where the lot left off).
    Back { rest: VecDeque<Bytes> },
    /// The subscription ended (its age, shutdown): write `rest`, then end
    /// the stream with `next`.
    End { rest: VecDeque<Bytes>, next: Next },
    /// The client left, or a write failed.
    Gone,
}

/// Puts a caught-up stream of one topic in its topic's lot and keeps time
/// until the stream is taken back. Its subscription is released while in
/// the lot and resumed at the lot's position afterwards.
pub async fn hold<E: Encode + Default + PartialEq>(
    lots: &Arc<Lots<Streams<E>>>,
    tcp: &Arc<TcpStream>,
    outbox: &mut Outbox<E>,
    chunked: bool,
    buf: &mut BytesMut,
) -> Held {
    if *outbox.encoder() != E::default() {
        return Held::NotNow;
    }
    let sub = outbox.subscription();
    // Whatever already waits is delivered first; joining is pointless
    // until then.
    let Some(topic) = sub.releasable() else {
        return Held::NotNow;
    };
    // Joined before the subscription lets go of its own place in the ring:
    // see `lot`.
    let member = lots.join(&topic);
    let Some(pos) = sub.release() else {
        return Held::NotNow;
    };
    let live = Arc::new(Live {
        chunked,
        slot: Mutex::new(Slot {
            tcp: Some(Arc::clone(tcp)),
            pos,
            rest: VecDeque::new(),
            failed: false,
        }),
        back: Notify::new(),
    });
    let Ok(key) = member.enter(pos, Arc::clone(&live)) else {
        sub.resume(pos);
        return Held::NotNow;
    };
    let entered = Entered { live, member, key };
    let ended = loop {
        tokio::select! {
            () = entered.live.back.notified() => break Ended::Back,
            next = sub.wait_quiet() => match next {
                // The stream's encoder is `E`'s default (checked above).
                Next::KeepAlive if keep_alive(&entered.live, E::default().keep_alive()) => {}
                Next::KeepAlive => break Ended::Back,
                next => break Ended::Next(next),
            },
            () = super::client_gone(tcp, buf) => break Ended::Gone,
        }
    };
    let (pos, rest, failed) = entered.leave();
    sub.resume(pos);
    match ended {
        _ if failed => Held::Gone,
        Ended::Gone => Held::Gone,
        Ended::Back => Held::Back { rest },
        Ended::Next(next) => Held::End { rest, next },
    }
}

/// A stream in a lot, as its own task holds it. Leaving (or being dropped)
/// takes the socket back from the lot, so the lot never writes to a stream
/// nobody manages.
struct Entered<E: Encode + Default> {
    live: Arc<Live>,
    member: Member<Streams<E>>,
    key: u64,
}

impl<E: Encode + Default> Entered<E> {
    /// Takes the stream out of the lot: its position, the bytes the lot
    /// could not write, and whether a write failed.
    fn leave(&self) -> (EventId, VecDeque<Bytes>, bool) {
        let taken = {
            let mut slot = lock(&self.live.slot);
            slot.tcp = None;
            (slot.pos, std::mem::take(&mut slot.rest), slot.failed)
        };
        self.member.lot().remove(self.key);
        taken
    }
}

impl<E: Encode + Default> Drop for Entered<E> {
    fn drop(&mut self) {
        self.leave();
    }
}

/// Why a stream's task stopped waiting in the lot.
enum Ended {
    /// The lot gave the stream back (or a keep-alive did not fit).
    Back,
    /// The subscription ended.
    Next(Next),
    Gone,
}

/// Writes a keep-alive while the stream is in the lot; `false` if the lot
/// gave the stream back meanwhile or the socket did not take it all (then
/// the rest is the stream's task's to write).
fn keep_alive(live: &Live, idle: Bytes) -> bool {
    let mut slot = lock(&live.slot);
    let Some(tcp) = slot.tcp.clone() else {
        return false;
    };
    let mut parts = VecDeque::from([framed(live.chunked, idle)]);
    if write_or_keep(&tcp, &mut parts, &mut slot) {
        return true;
    }
    slot.tcp = None;
    false
}

/// `bytes` as the stream frames them: one chunk on HTTP/1.1, as they are
/// on HTTP/1.0.
fn framed(chunked: bool, bytes: Bytes) -> Bytes {
    if chunked {
        chunk::framed(&bytes)
    } else {
        bytes
    }
}

/// Most bytes of a batch the lot leaves a stream it hands back: enough
/// that a reader whose socket was full for a moment carries on from them,
/// little enough that thousands of clients that stopped reading hold
/// little between them (the bytes are shared with every other stream).
const REST_CAP: usize = 64 * 1024;

/// After a short write of `mine` (one buffer per event), what is left in
/// `parts`: an event cut mid-frame is always finished by the stream's task
/// (a frame cannot be left half-written), and whole events after it up to
/// [`REST_CAP`]; the rest are dropped, and the stream reads them again
/// from the store once its socket drains. A stream whose client stopped
/// reading holds its position and a bounded remainder, not the batch.
/// Returns how many events went out or are left to the stream's task.
fn keep_partial(parts: &mut VecDeque<Bytes>, mine: &[Bytes], slot: &mut Slot) -> usize {
    let begun = mine.len() - parts.len();
    let mut kept = 0;
    let mut bytes = 0;
    for (i, part) in parts.drain(..).enumerate() {
        let cut = i == 0
            && mine
                .get(begun)
                .is_some_and(|whole| part.len() < whole.len());
        if !cut && bytes + part.len() > REST_CAP {
            break;
        }
        bytes += part.len();
        slot.rest.push_back(part);
        kept += 1;
    }
    begun + kept
}

/// Writes `parts` without waiting; says whether all went out. Otherwise
/// what is left (or the failure) is put in `slot` for the stream's task.
fn write_or_keep(mut tcp: &TcpStream, parts: &mut VecDeque<Bytes>, slot: &mut Slot) -> bool {
    match write_now(&mut tcp, parts) {
        Ok(true) => true,
        Ok(false) => {
            slot.rest.extend(parts.drain(..));
            false
        }
        Err(_) => {
            slot.failed = true;
            parts.clear();
            false
        }
    }
}

/// Writes the events after each stream's position to its socket, one
/// stream after another; gives back the streams it could not write to.
///
/// The loop spends the task's scheduling budget like any other task's I/O,
/// so under load the runtime gets to take publishes in the middle of it:
/// they wait for the next pass, which then carries them all to each stream
/// in one write.
async fn write_all_streams<K: Kind<Waiter = Live>>(
    lot: &Lot<K>,
    events: &[Arc<Event>],
    plain: &[Bytes],
    delivered: &Counter,
) {
    let Some(newest) = events.last().map(|e| e.id) else {
        return;
    };
    let streams: Vec<(u64, Arc<Live>)> = {
        let state = lot.lock();
        state
            .waiters
            .iter()
            .map(|(key, live)| (*key, Arc::clone(live)))
            .collect()
    };
    // Each event encoded once per framing, shared by every stream.
    let mut chunked: Option<Vec<Bytes>> = None;
    let mut parts = VecDeque::new();
    let mut given_back = Vec::new();
    for (key, live) in streams {
        {
            let mut slot = lock(&live.slot);
            let Some(tcp) = slot.tcp.clone() else {
                continue;
            };
            let from = events.partition_point(|e| e.id <= slot.pos);
            if from == events.len() {
                continue;
            }
            let encoded = if live.chunked {
                chunked.get_or_insert_with(|| plain.iter().map(|b| chunk::framed(b)).collect())
            } else {
                plain
            };
            let mine = &encoded[from..];
            parts.extend(mine.iter().cloned());
            let written = write_now(&mut &*tcp, &mut parts);
            drop(tcp);
            let all = match written {
                Ok(true) => {
                    slot.pos = newest;
                    delivered.increment(mine.len() as u64);
                    true
                }
                Ok(false) => {
                    let done = keep_partial(&mut parts, mine, &mut slot);
                    if done > 0 {
                        slot.pos = events[from + done - 1].id;
                    }
                    delivered.increment(done as u64);
                    false
                }
                Err(_) => {
                    slot.failed = true;
                    false
                }
            };
            parts.clear();
            if !all {
                // The socket is the stream's alone again before it hears.
                slot.tcp = None;
                drop(slot);
                live.back.notify_one();
                given_back.push(key);
            }
        }
        tokio::task::coop::consume_budget().await;
    }
    if !given_back.is_empty() {
        let mut state = lot.lock();
        for key in given_back {
            state.waiters.remove(&key);
        }
    }
}
