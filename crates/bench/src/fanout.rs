//! The `fanout` and `topics` modes: subscribers spread over topics, events
//! published to them, and the verdict — every subscriber got every event of
//! its topic exactly once, in the same order as the others on that topic.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::task::JoinHandle;

use crate::PublishArgs;
use crate::net::Target;
use crate::procfs::CpuMark;
use crate::publish::{Published, publish_all};
use crate::report::{latency_json, ms, round};
use crate::subscriber::{Latencies, Shared, SubStats, subscriber};

/// What a run is asked to do.
pub struct Load {
    /// "fanout" or "topics", as reported.
    pub mode: &'static str,
    pub subs: usize,
    pub events: usize,
    pub publish: PublishArgs,
}

/// How events spread over topics: event k goes to topic k % T.
#[derive(Clone, Copy)]
struct Spread {
    topics: usize,
    events: usize,
}

impl Spread {
    /// Events topic `j` gets: one in T, the first `events % T` topics one
    /// more.
    fn expected_for(self, j: usize) -> u64 {
        (self.events / self.topics + usize::from(j < self.events % self.topics)) as u64
    }
}

/// Fan-out (one topic) and many topics: subscriber i reads topic i % T;
/// event k goes to topic k % T with per-topic sequence number k / T.
pub async fn deliver(
    t: &Target,
    load: Load,
    topics: Vec<String>,
    concurrency: usize,
) -> (Value, bool) {
    let spread = Spread {
        topics: topics.len(),
        events: load.events,
    };
    let hist = Arc::new(Mutex::new(Latencies::new()));
    let (stop_tx, stop_rx) = watch::channel(false);
    let cpu_open = CpuMark::now();
    let opened = open_all(t, &topics, load.subs, spread, &hist, stop_rx, concurrency).await;
    let cpu_open = cpu_open.since();

    let cpu = CpuMark::now();
    let first_publish = Instant::now();
    let published = publish_all(t, topics, load.events, load.publish, first_publish).await;
    let publish_s = first_publish.elapsed().as_secs_f64();
    // Give the subscribers until the drain deadline, then stop the rest.
    let drain = Duration::from_secs_f64(load.publish.drain_secs);
    tokio::spawn(async move {
        tokio::time::sleep(drain).await;
        let _ = stop_tx.send(true);
    });
    let mut stats = Vec::with_capacity(load.subs);
    for task in opened.tasks {
        stats.push(task.await.unwrap());
    }
    let cpu_run = cpu.since();

    let hist = hist.lock().unwrap();
    let outcome = Outcome {
        load,
        spread,
        open_s: opened.open_s,
        open_errors: opened.errors,
        cpu_open,
        first_publish,
        publish_s,
        published,
        stats,
        latency: &hist,
        cpu_run,
    };
    outcome.verdict()
}

/// The subscribers, once all have tried to subscribe.
struct Opened {
    tasks: Vec<JoinHandle<SubStats>>,
    /// Subscriptions that failed.
    errors: usize,
    /// Seconds until the last subscription was open.
    open_s: f64,
}

/// Starts the subscribers (subscriber i on topic i % T) and waits until
/// each has subscribed or failed to, so no event is published before
/// everyone listens.
async fn open_all(
    t: &Target,
    topics: &[String],
    subs: usize,
    spread: Spread,
    hist: &Arc<Mutex<Latencies>>,
    stop: watch::Receiver<bool>,
    concurrency: usize,
) -> Opened {
    let (ready_tx, mut ready_rx) = mpsc::unbounded_channel();
    let shared = Shared {
        hist: hist.clone(),
        ready: ready_tx,
        sem: Arc::new(Semaphore::new(concurrency)),
        stop,
    };
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(subs);
    for i in 0..subs {
        let j = i % spread.topics;
        tasks.push(tokio::spawn(subscriber(
            t.clone(),
            j,
            topics[j].clone(),
            spread.expected_for(j),
            shared.clone(),
        )));
    }
    drop(shared);
    let mut errors = 0usize;
    let mut last_open = start;
    for _ in 0..subs {
        match ready_rx.recv().await {
            Some(Ok(at)) => last_open = last_open.max(at),
            Some(Err(e)) => {
                if errors < 5 {
                    eprintln!("open failed: {e}");
                }
                errors += 1;
            }
            None => break,
        }
    }
    let open_s = last_open.duration_since(start).as_secs_f64();
    Opened {
        tasks,
        errors,
        open_s,
    }
}

/// Everything a run measured, to be judged and reported.
struct Outcome<'a> {
    load: Load,
    spread: Spread,
    open_s: f64,
    open_errors: usize,
    cpu_open: Value,
    first_publish: Instant,
    publish_s: f64,
    published: Published,
    stats: Vec<SubStats>,
    latency: &'a Latencies,
    cpu_run: Value,
}

impl Outcome<'_> {
    /// Subscribers that got everything but in another order than the first
    /// complete subscriber of their topic.
    fn order_mismatches(&self) -> u64 {
        let mut order = vec![None; self.spread.topics];
        let mut mismatch = 0u64;
        for s in &self.stats {
            if s.received != self.spread.expected_for(s.topic) {
                continue;
            }
            match order[s.topic] {
                None => order[s.topic] = Some(s.order),
                Some(o) if o != s.order => mismatch += 1,
                Some(_) => {}
            }
        }
        mismatch
    }

    /// The result as JSON, and whether it passed: nothing failed, lost,
    /// duplicated, reordered or unexpected.
    fn verdict(self) -> (Value, bool) {
        let (stats, spread, p) = (&self.stats, self.spread, self.load.publish);
        let received: u64 = stats.iter().map(|s| s.received).sum();
        let expected: u64 = (0..self.load.subs)
            .map(|i| spread.expected_for(i % spread.topics))
            .sum();
        let sum = |f: fn(&SubStats) -> u64| stats.iter().map(f).sum::<u64>();
        let last_rx = stats.iter().filter_map(|s| s.last_rx).max();
        let deliver_s = last_rx.map(|l| l.duration_since(self.first_publish).as_secs_f64());
        // Every subscriber of a topic that got everything saw the same order.
        let order_mismatch = self.order_mismatches();
        let sub_errors: Vec<&String> = stats.iter().filter_map(|s| s.error.as_ref()).collect();
        for e in sub_errors.iter().take(5) {
            eprintln!("subscriber: {e}");
        }
        let lost = expected - received;
        let bad = sum(|s| s.duplicates) + sum(|s| s.out_of_order) + sum(|s| s.unexpected);
        let (publish_errors, publish_hist) = (self.published.errors, &self.published.hist);
        let ok = self.open_errors == 0
            && publish_errors == 0
            && lost == 0
            && bad == 0
            && order_mismatch == 0;
        let v = json!({
            "mode": self.load.mode,
            "subs": self.load.subs,
            "topics": spread.topics,
            "events": spread.events,
            "rate": p.rate,
            "publishers": p.publishers,
            "open_s": round(self.open_s, 3),
            "open_errors": self.open_errors,
            "publish_s": round(self.publish_s, 3),
            "published_per_s": round(spread.events as f64 / self.publish_s.max(1e-9), 0),
            "publish_p50_ms": if publish_hist.is_empty() { json!(null) } else { json!(ms(publish_hist.value_at_quantile(0.5))) },
            "publish_errors": publish_errors,
            "expected": expected,
            "received": received,
            "lost": lost,
            "duplicates": sum(|s| s.duplicates),
            "out_of_order": sum(|s| s.out_of_order),
            "order_mismatch": order_mismatch,
            "unexpected": sum(|s| s.unexpected),
            "gaps": sum(|s| s.gaps),
            "reconnects": sum(|s| s.reconnects),
            "deliver_s": deliver_s.map(|d| round(d, 3)),
            "delivered_per_s": deliver_s.map(|d| round(received as f64 / d.max(1e-9), 0)),
            "latency": latency_json(&self.latency.arrival),
            "read_latency": latency_json(&self.latency.read),
            "cpu": self.cpu_run,
            "cpu_open": self.cpu_open,
        });
        (v, ok)
    }
}
