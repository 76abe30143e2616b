//! The `publish` mode: N publishers, each on its own keep-alive HTTP/1.1
//! connection with one request in flight, POST 100-byte events to one topic
//! as fast as the server answers. Events/s and publish latency then say what
//! the server's store takes (memory or durable: whatever it was started
//! with), and the server's own count of published events checks that every
//! `201` was one event, no more, no less.
//!
//! Each request is the same bytes, built once per run; an answer is read by
//! [`crate::http1`], so the driver spends a few µs per publish and the server
//! is the side that saturates.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde_json::{Value, json};

use crate::http1::{Conn, request};
use crate::metrics::metric;
use crate::net::{Target, http};
use crate::procfs::CpuMark;
use crate::report::{latency_json, new_hist, round};

/// Bytes of event data per publish, as in the other modes.
const BODY_LEN: usize = 100;
/// Load run before measuring: connections open, caches and WAL warm.
const WARMUP: Duration = Duration::from_secs(1);
/// The longest a publish may take before it counts as an error.
const PATIENCE: Duration = Duration::from_secs(30);
/// The server's count of stored events, to check against the `201`s.
const PUBLISHED: &str = "herald_events_published_total";

/// What a run is asked to do.
pub struct Load {
    pub publishers: usize,
    /// Measured seconds, after the warm-up.
    pub secs: f64,
    pub topic: String,
}

/// What one publisher saw.
struct Tally {
    /// Publish latency of the requests started inside the window, in µs.
    hist: Histogram<u64>,
    /// `201`s to requests started inside the window.
    ok: u64,
    /// Every `201`, warm-up included (to check the server's count).
    all_ok: u64,
    /// Non-201 answers and transport errors, by description, warm-up
    /// included.
    errors: BTreeMap<String, u64>,
}

impl Tally {
    fn new() -> Tally {
        Tally {
            hist: new_hist(),
            ok: 0,
            all_ok: 0,
            errors: BTreeMap::new(),
        }
    }

    fn merge(&mut self, other: Tally) {
        self.hist.add(&other.hist).unwrap();
        self.ok += other.ok;
        self.all_ok += other.all_ok;
        for (k, n) in other.errors {
            *self.errors.entry(k).or_default() += n;
        }
    }
}

/// Runs `load.publishers` publishers for the warm-up plus `load.secs`, and
/// reports the measured window.
pub async fn publish(t: &Target, load: Load) -> (Value, bool) {
    let client = http();
    let counted0 = metric(&client, t, PUBLISHED).await;
    let auth = crate::net::authorization().map(|a| format!("Authorization: {a}"));
    let mut headers = vec!["Content-Type: text/plain"];
    headers.extend(auth.as_deref());
    let req = request(
        "POST",
        &format!("/topics/{}", load.topic),
        &t.host,
        &headers,
        &[b'x'; BODY_LEN],
    );
    let measure_from = Instant::now() + WARMUP;
    let stop = measure_from + Duration::from_secs_f64(load.secs);
    let tasks: Vec<_> = (0..load.publishers)
        .map(|_| tokio::spawn(publisher(t.clone(), req.clone(), measure_from, stop)))
        .collect();
    tokio::time::sleep_until(measure_from.into()).await;
    let cpu = CpuMark::now();
    let mut tally = Tally::new();
    for task in tasks {
        tally.merge(task.await.unwrap());
    }
    // Requests started before `stop` end a little after it: that tail counts
    // in the time, so events/s is not flattered.
    let measured = measure_from.elapsed().as_secs_f64();
    let cpu_run = cpu.since();
    let counted = metric(&client, t, PUBLISHED).await - counted0;
    if counted as u64 != tally.all_ok {
        *tally
            .errors
            .entry(format!(
                "server counted {counted} published events, the driver got {} × 201",
                tally.all_ok
            ))
            .or_default() += 1;
    }
    let errors: u64 = tally.errors.values().sum();
    for (what, n) in &tally.errors {
        eprintln!("publish: {n} × {what}");
    }
    let v = json!({
        "mode": "publish",
        "publishers": load.publishers,
        "topic": load.topic,
        "body_bytes": BODY_LEN,
        "warmup_s": WARMUP.as_secs_f64(),
        "measured_s": round(measured, 3),
        "events": tally.ok,
        "events_per_s": (tally.ok as f64 / measured.max(1e-9)).round() as u64,
        "all_201": tally.all_ok,
        "server_counted": counted as u64,
        "errors": errors,
        "error_kinds": format!("{:?}", tally.errors),
        "latency": latency_json(&tally.hist),
        "cpu": cpu_run,
    });
    (v, errors == 0 && tally.ok > 0)
}

/// One publisher: sends `req` on its connection until `stop`, one request
/// at a time, recording the requests that start at or after `measure_from`.
async fn publisher(t: Target, req: Vec<u8>, measure_from: Instant, stop: Instant) -> Tally {
    let mut conn = Conn::new(&t);
    let mut tally = Tally::new();
    loop {
        let sent = Instant::now();
        if sent >= stop {
            return tally;
        }
        let outcome = match tokio::time::timeout(PATIENCE, conn.send(&req)).await {
            Ok(Ok(a)) if a.status == 201 => Ok(()),
            Ok(Ok(a)) => Err(format!(
                "HTTP {}: {}",
                a.status,
                String::from_utf8_lossy(&a.body)
            )),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => {
                // The answer may still come: this connection is done.
                conn.reset();
                Err(format!("no answer within {} s", PATIENCE.as_secs()))
            }
        };
        let warming = sent < measure_from;
        match outcome {
            Ok(()) => {
                tally.all_ok += 1;
                if !warming {
                    tally.ok += 1;
                    tally
                        .hist
                        .saturating_record(sent.elapsed().as_micros() as u64);
                }
            }
            Err(what) => {
                *tally.errors.entry(what).or_default() += 1;
                // Do not spin on a server that refuses connections.
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}
