//! One fan-out subscriber: its SSE receive loop (resuming from its cursor
//! when the server cuts it off) and the checks it makes on every event —
//! loss, duplicates, order, latency — so a run proves delivery, not just
//! speed.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use hdrhistogram::Histogram;
use herald_protocol::sse::{Decoder, Frame};
use tokio::net::TcpStream;
use tokio::sync::{Semaphore, mpsc, watch};

use crate::net::{Target, open_sse};
use crate::publish::{epoch_us, parse_body};
use crate::report::new_hist;
use crate::stamp;

/// What one fan-out subscriber saw.
#[derive(Default)]
pub struct SubStats {
    pub topic: usize,
    pub received: u64,
    pub duplicates: u64,
    pub out_of_order: u64,
    pub unexpected: u64,
    pub gaps: u64,
    pub reconnects: u64,
    /// Rolling hash of the order of sequence numbers received.
    pub order: u64,
    pub last_rx: Option<Instant>,
    pub error: Option<String>,
}

/// Publish→receive latencies of all subscribers, in µs, two ways.
pub struct Latencies {
    /// To the kernel's arrival stamp on the subscriber's socket (see
    /// [`crate::stamp`]): the server's part.
    pub arrival: Histogram<u64>,
    /// To the moment the driver read the event: the server's part plus the
    /// driver's own queue of sockets.
    pub read: Histogram<u64>,
}

impl Latencies {
    pub fn new() -> Latencies {
        Latencies {
            arrival: new_hist(),
            read: new_hist(),
        }
    }

    /// The (arrival, read) latencies of something sent at `sent` that
    /// arrived at `arrived` (the read time when the kernel gave no stamp)
    /// and was read at `now`, all in µs since the epoch.
    pub fn pair(sent: u64, arrived: Option<u64>, now: u64) -> (u64, u64) {
        let arrived = arrived.unwrap_or(now).min(now);
        (
            arrived.saturating_sub(sent).max(1),
            now.saturating_sub(sent).max(1),
        )
    }

    /// Moves `pending` pairs into the histograms.
    pub fn record(&mut self, pending: &mut Vec<(u64, u64)>) {
        for (arrival, read) in pending.drain(..) {
            self.arrival.saturating_record(arrival);
            self.read.saturating_record(read);
        }
    }
}

/// What every subscriber of a run shares with the run.
#[derive(Clone)]
pub struct Shared {
    pub hist: Arc<Mutex<Latencies>>,
    /// Each subscriber says once when it is subscribed (or why it is not),
    /// so publishing starts only when everyone listens.
    pub ready: mpsc::UnboundedSender<Result<Instant, String>>,
    /// Limits the connections being opened at once (`--connect-concurrency`).
    pub sem: Arc<Semaphore>,
    /// Set when the drain time is over: stop waiting for what is missing.
    pub stop: watch::Receiver<bool>,
}

/// herald's ids are `MS-SEQ`; clients should not parse them, but a bench
/// may, to check order. Anything else is not compared.
pub fn id_key(id: &str) -> Option<(u64, u64)> {
    let (a, b) = id.split_once('-')?;
    Some((a.parse().ok()?, b.parse().ok()?))
}

/// Subscribes to `topic` and reads until it has all `expected` events or
/// the run says stop.
pub async fn subscriber(
    t: Target,
    topic_idx: usize,
    topic: String,
    expected: u64,
    shared: Shared,
) -> SubStats {
    let Shared {
        hist,
        ready,
        sem,
        mut stop,
    } = shared;
    let path = format!("/topics/{topic}");
    let mut st = SubStats {
        topic: topic_idx,
        ..SubStats::default()
    };
    let permit = sem.acquire_owned().await.unwrap();
    let opened = open(&t, &path, None).await;
    drop(permit);
    let (mut s, first) = match opened {
        Ok(x) => x,
        Err(e) => {
            let _ = ready.send(Err(e.to_string()));
            st.error = Some(e.to_string());
            return st;
        }
    };
    let _ = ready.send(Ok(Instant::now()));
    let mut check = Check::new(expected);
    let mut dec = Decoder::new();
    let mut buf = vec![0u8; 16 * 1024];
    let mut pending = first;
    while st.received < expected {
        let mut arrived = None;
        if pending.is_empty() {
            let n = tokio::select! {
                r = stamp::read(&s, &mut buf) => match r {
                    Ok((n, at)) => {
                        arrived = at;
                        n
                    }
                    Err(_) => 0,
                },
                _ = stop.changed() => break,
            };
            if n == 0 {
                let Some((s2, first)) = resume(&t, &path, &dec, &mut st).await else {
                    break;
                };
                s = s2;
                dec = Decoder::new();
                pending = first;
                continue;
            }
            pending.extend_from_slice(&buf[..n]);
        }
        let frames = dec.feed(&pending);
        pending.clear();
        check.frames(frames, arrived, &mut st);
        check.record_latencies(&hist);
    }
    st
}

/// Opens the subscription with arrival stamps on.
async fn open(
    t: &Target,
    path: &str,
    last_id: Option<&str>,
) -> std::io::Result<(TcpStream, Vec<u8>)> {
    let (s, first) = open_sse(t, path, last_id).await?;
    stamp::enable(&s)?;
    Ok((s, first))
}

/// Cut off (too slow) or closed: resume from the cursor, so what was missed
/// is replayed rather than lost. None (with the error in `st`) when it
/// cannot, or after more than 100 reconnects.
async fn resume(
    t: &Target,
    path: &str,
    dec: &Decoder,
    st: &mut SubStats,
) -> Option<(TcpStream, Vec<u8>)> {
    st.reconnects += 1;
    if st.reconnects > 100 {
        st.error = Some("more than 100 reconnects".into());
        return None;
    }
    let cursor = dec.last_event_id().map(str::to_owned);
    match open(t, path, cursor.as_deref()).await {
        Ok(x) => Some(x),
        Err(e) => {
            st.error = Some(e.to_string());
            None
        }
    }
}

/// Which of a run's events a subscriber has had: one bit per sequence
/// number, and the id of the last new one (ids only go up).
pub struct Tally {
    expected: u64,
    seen: Vec<u64>,
    last_key: Option<(u64, u64)>,
}

/// What one event was to a [`Tally`].
pub enum Taken {
    /// Its sequence number is not one the run published.
    Unexpected,
    Duplicate,
    /// First seen; `out_of_order` when its id is not above the last one's.
    New {
        out_of_order: bool,
    },
}

impl Tally {
    pub fn new(expected: u64) -> Tally {
        Tally {
            expected,
            seen: vec![0u64; (expected as usize).div_ceil(64)],
            last_key: None,
        }
    }

    /// Notes the event numbered `seq` with `id`.
    pub fn take(&mut self, seq: u64, id: Option<&str>) -> Taken {
        if seq >= self.expected {
            return Taken::Unexpected;
        }
        let (w, bit) = ((seq / 64) as usize, 1u64 << (seq % 64));
        if self.seen[w] & bit != 0 {
            return Taken::Duplicate;
        }
        self.seen[w] |= bit;
        let mut out_of_order = false;
        if let Some(k) = id.and_then(id_key) {
            out_of_order = self.last_key.is_some_and(|l| k <= l);
            self.last_key = Some(k);
        }
        Taken::New { out_of_order }
    }
}

/// The rolling hash of the order of sequence numbers, one more taken.
pub fn next_order(order: u64, seq: u64) -> u64 {
    order.wrapping_mul(1_000_003).wrapping_add(seq + 1)
}

/// What a subscriber remembers to judge each event.
struct Check {
    tally: Tally,
    /// Latencies (arrival, read) not yet in the shared histograms: they are
    /// locked once per read, not once per event.
    lats: Vec<(u64, u64)>,
}

impl Check {
    fn new(expected: u64) -> Check {
        Check {
            tally: Tally::new(expected),
            lats: Vec::with_capacity(64),
        }
    }

    /// Counts the events among `frames` into `st`: new, duplicate, out of
    /// order, unexpected, or a gap notice. `arrived`: the kernel's stamp of
    /// the read they came in, if it gave one.
    fn frames(&mut self, frames: Vec<Frame>, arrived: Option<u64>, st: &mut SubStats) {
        let now_us = epoch_us();
        let now = Instant::now();
        for f in frames {
            let Frame::Event { id, event, data } = f else {
                continue;
            };
            if event == "gap" {
                st.gaps += 1;
                continue;
            }
            let Some((ts, seq)) = parse_body(&data) else {
                st.unexpected += 1;
                continue;
            };
            self.lats.push(Latencies::pair(ts, arrived, now_us));
            match self.tally.take(seq, id.as_deref()) {
                Taken::Unexpected => st.unexpected += 1,
                Taken::Duplicate => st.duplicates += 1,
                Taken::New { out_of_order } => {
                    st.received += 1;
                    st.order = next_order(st.order, seq);
                    st.out_of_order += u64::from(out_of_order);
                    st.last_rx = Some(now);
                }
            }
        }
    }

    /// Moves the latencies gathered so far into the shared histogram.
    fn record_latencies(&mut self, hist: &Mutex<Latencies>) {
        if !self.lats.is_empty() {
            hist.lock().unwrap().record(&mut self.lats);
        }
    }
}
