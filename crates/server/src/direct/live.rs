//! Live streams: a direct-path SSE stream of one topic that has caught up
//! hands its socket to the topic's lot ([`super::lot`]), and the lot's task
//! writes each event — encoded once, one shared chunk — to every such
//! stream's socket back to back.
//!
//! Meanwhile the stream's own task keeps time (keep-alives, the stream's
//! age, shutdown) and notices the client leaving. It takes the stream back
//! when the lot cannot go on writing to it — the socket is full, the write
//! failed, the ring overflowed — and carries on from where the lot left
//! off: the bytes the lot could not write first, then the store. A stream
//! in a lot holds no place in the ring of its own.

use std::collections::{BTreeMap, VecDeque};
use std::io::{self, IoSlice};
use std::sync::{Arc, Mutex};

use bytes::{Bytes, BytesMut};
use herald_core::subscription::Next;
use herald_core::{Event, EventId, Subscription};
use metrics::Counter;
use tokio::net::TcpStream;
use tokio::sync::Notify;

use super::lot::{Kind, Lot, Lots, Member, lock};
use super::socket;
use crate::state::AppState;
use crate::transport::sse::KEEP_ALIVE;

/// The kind of lot caught-up streams wait in.
#[derive(Debug)]
pub struct Streams;

impl Kind for Streams {
    type Waiter = Live;

    fn lots(state: &AppState) -> &Arc<Lots<Streams>> {
        state.stream_lots()
    }

    async fn serve(lot: &Lot<Streams>, events: &[Arc<Event>], delivered: &Counter) {
        write_all_streams(lot, events, delivered).await;
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
/// until the stream is taken back. `sub` is released while in the lot and
/// resumed at the lot's position afterwards.
pub async fn hold(
    state: &AppState,
    tcp: &Arc<TcpStream>,
    sub: &mut Subscription,
    chunked: bool,
    buf: &mut BytesMut,
) -> Held {
    // Whatever already waits is delivered first; joining is pointless
    // until then.
    sub.take_waiting();
    let Some(topic) = sub.releasable_topic().cloned() else {
        return Held::NotNow;
    };
    // Joined before the subscription lets go of its own place in the ring:
    // see `lot`.
    let member = Lots::<Streams>::join(state, &topic);
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
                Next::KeepAlive if keep_alive(&entered.live) => {}
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
struct Entered {
    live: Arc<Live>,
    member: Member<Streams>,
    key: u64,
}

impl Entered {
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

impl Drop for Entered {
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
fn keep_alive(live: &Live) -> bool {
    let mut slot = lock(&live.slot);
    let Some(tcp) = slot.tcp.clone() else {
        return false;
    };
    let mut parts = VecDeque::from([frame(live.chunked, Bytes::from_static(KEEP_ALIVE))]);
    if write_now(&tcp, &mut parts, &mut slot) {
        return true;
    }
    slot.tcp = None;
    false
}

/// `bytes` as the stream frames them: one chunk on HTTP/1.1, as they are
/// on HTTP/1.0.
fn frame(chunked: bool, bytes: Bytes) -> Bytes {
    if !chunked {
        return bytes;
    }
    let mut out = BytesMut::with_capacity(bytes.len() + 12);
    out.extend_from_slice(format!("{:x}\r\n", bytes.len()).as_bytes());
    out.extend_from_slice(&bytes);
    out.extend_from_slice(b"\r\n");
    out.freeze()
}

/// Writes `parts` without waiting; says whether all went out. Otherwise
/// what is left (or the failure) is put in `slot` for the stream's task.
fn write_now(tcp: &TcpStream, parts: &mut VecDeque<Bytes>, slot: &mut Slot) -> bool {
    while !parts.is_empty() {
        let written = {
            let mut slices = [IoSlice::new(&[]); socket::MAX_SLICES];
            let count = slices.len().min(parts.len());
            for (slice, part) in slices.iter_mut().zip(parts.iter()) {
                *slice = IoSlice::new(part);
            }
            tcp.try_write_vectored(&slices[..count])
        };
        match written {
            Ok(n) if n > 0 => socket::consume(parts, n),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Ok(_) | Err(_) => {
                slot.failed = true;
                parts.clear();
                return false;
            }
        }
    }
    if parts.is_empty() {
        return true;
    }
    slot.rest.extend(parts.drain(..));
    false
}

/// Writes the events after each stream's position to its socket, one
/// stream after another; gives back the streams it could not write to.
///
/// The loop spends the task's scheduling budget like any other task's I/O,
/// so under load the runtime gets to take publishes in the middle of it:
/// they wait for the next pass, which then carries them all to each stream
/// in one write.
async fn write_all_streams(lot: &Lot<Streams>, events: &[Arc<Event>], delivered: &Counter) {
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
    let plain: Vec<Bytes> = events.iter().map(|e| e.sse().full()).collect();
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
                chunked
                    .get_or_insert_with(|| plain.iter().map(|b| frame(true, b.clone())).collect())
            } else {
                &plain
            };
            parts.extend(encoded[from..].iter().cloned());
            delivered.increment((events.len() - from) as u64);
            slot.pos = newest;
            let all_written = write_now(&tcp, &mut parts, &mut slot);
            drop(tcp);
            if !all_written {
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
