//! Publishing: the event body every publish carries (send time and sequence
//! number, padded to 100 bytes) and its parsing on the receiving side, and
//! the publisher tasks that POST a run's events, paced or flat out.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hdrhistogram::Histogram;

use crate::PublishArgs;
use crate::net::{Target, http};
use crate::report::new_hist;

/// Bytes of event data per publish, unless a mode asks for another size.
pub const BODY_LEN: usize = 100;

/// Wall-clock microseconds: the send time in a body, compared by a receiver
/// on the same host (an `Instant` cannot travel through the server).
pub fn epoch_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_micros() as u64
}

/// `"{ts} {seq} xxx…"`, 100 bytes: a receiver gets latency from `ts` and
/// checks loss, duplicates and order from `seq` without asking the server.
pub fn publish_body(seq: u64) -> String {
    sized_body(seq, BODY_LEN)
}

/// The same body padded to `len` bytes (or just the stamp and sequence
/// number, if `len` is shorter than they are).
pub fn sized_body(seq: u64, len: usize) -> String {
    let mut body = format!("{} {seq} ", epoch_us());
    if body.len() < len {
        body.extend(std::iter::repeat_n('x', len - body.len()));
    }
    body
}

/// Parses `"{ts} {seq} xxx…"`.
pub fn parse_body(data: &str) -> Option<(u64, u64)> {
    let mut it = data.split(' ');
    Some((
        it.next()?.parse().ok()?,
        it.next()?.trim_end().parse().ok()?,
    ))
}

/// What the publishers of a run got back.
pub struct Published {
    /// Publishes not answered 201.
    pub errors: u64,
    /// Time from send to the 201, in µs.
    pub hist: Histogram<u64>,
}

/// Publishes `events` events from `--publishers` tasks: event k goes to
/// topic k % T with per-topic sequence number k / T. With `--rate`, event k
/// is due at `first_publish` + k / rate.
pub async fn publish_all(
    t: &Target,
    topics: Vec<String>,
    events: usize,
    p: PublishArgs,
    first_publish: Instant,
) -> Published {
    publish_sized(t, topics, events, p, first_publish, BODY_LEN).await
}

/// [`publish_all`] with bodies of `body_len` bytes.
pub async fn publish_sized(
    t: &Target,
    topics: Vec<String>,
    events: usize,
    p: PublishArgs,
    first_publish: Instant,
    body_len: usize,
) -> Published {
    let next = Arc::new(AtomicUsize::new(0));
    let topics = Arc::new(topics);
    let mut pubs = Vec::new();
    for _ in 0..p.publishers.max(1) {
        let (t, next, topics) = (t.clone(), next.clone(), topics.clone());
        pubs.push(tokio::spawn(publisher(
            t,
            next,
            topics,
            events,
            p.rate,
            first_publish,
            body_len,
        )));
    }
    let mut errors = 0;
    let mut hist = new_hist();
    for p in pubs {
        let (e, h) = p.await.unwrap();
        errors += e;
        hist.add(&h).unwrap();
    }
    Published { errors, hist }
}

/// One publisher: takes the next event number until all are taken, over one
/// keep-alive client. Returns its errors and publish latencies.
async fn publisher(
    t: Target,
    next: Arc<AtomicUsize>,
    topics: Arc<Vec<String>>,
    events: usize,
    rate: Option<f64>,
    first_publish: Instant,
    body_len: usize,
) -> (u64, Histogram<u64>) {
    let nt = topics.len();
    let client = http();
    let mut errors = 0u64;
    let mut hist = new_hist();
    loop {
        let k = next.fetch_add(1, Ordering::Relaxed);
        if k >= events {
            break;
        }
        if let Some(rate) = rate {
            let at = first_publish + Duration::from_secs_f64(k as f64 / rate);
            tokio::time::sleep_until(at.into()).await;
        }
        let (j, seq) = (k % nt, (k / nt) as u64);
        let sent = Instant::now();
        let r = client
            .post(format!("{}/topics/{}", t.base, topics[j]))
            .body(sized_body(seq, body_len))
            .send()
            .await;
        match r {
            Ok(r) if r.status() == 201 => {
                let _ = r.bytes().await;
                hist.saturating_record(sent.elapsed().as_micros() as u64);
            }
            Ok(r) => {
                if errors < 3 {
                    eprintln!("publish: {}", r.status());
                }
                errors += 1;
            }
            Err(e) => {
                if errors < 3 {
                    eprintln!("publish: {e}");
                }
                errors += 1;
            }
        }
    }
    (errors, hist)
}
