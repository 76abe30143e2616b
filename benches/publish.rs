//! Publish throughput and latency: memory store vs durable (file) store, with
//! 1 and 64 concurrent publishers.
//!
//! Run with `cargo bench --bench publish`. Each case starts a fresh `herald
//! serve` (the release binary cargo builds for benches), warms up, then lets
//! every publisher POST a 100-byte body to the shared topic `bench` in a loop
//! for `HERALD_BENCH_SECS` seconds (default 5). Every request's latency goes
//! into an HDR histogram; every answer must be `201`, and anything else is
//! counted and reported as an error. Prints one markdown table row per case.
//! See `docs/performance.md` for the numbers and what they mean.

// A benchmark, not library code: a failure to start the server or build a
// client should abort the run loudly, which is what unwrap/expect do.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use support::{RedisServer, Server};

use std::collections::BTreeMap;
use std::process::Command;
use std::time::{Duration, Instant};

use bytes::Bytes;
use hdrhistogram::Histogram;

/// Concurrent publishers per case.
const CONCURRENCY: [usize; 2] = [1, 64];
/// Bytes of event data per publish.
const BODY_LEN: usize = 100;
/// Load run before measuring (connections opened, caches and WAL warm).
const WARMUP: Duration = Duration::from_secs(1);
/// The shared topic every publisher writes to (the contended case).
const TOPIC: &str = "bench";

/// What one publisher saw during the measured window.
struct Tally {
    latency_us: Histogram<u64>,
    ok: u64,
    /// Every `201`, warm-up included (to cross-check the server's count).
    all_ok: u64,
    /// Non-201 statuses and transport errors, by description.
    errors: BTreeMap<String, u64>,
}

impl Tally {
    fn new() -> Tally {
        Tally {
            // 1 µs .. 60 s, 3 significant digits.
            latency_us: Histogram::new_with_bounds(1, 60_000_000, 3).unwrap(),
            ok: 0,
            all_ok: 0,
            errors: BTreeMap::new(),
        }
    }

    fn merge(&mut self, other: Tally) {
        self.latency_us.add(&other.latency_us).unwrap();
        self.ok += other.ok;
        self.all_ok += other.all_ok;
        for (k, n) in other.errors {
            *self.errors.entry(k).or_default() += n;
        }
    }

    fn error_count(&self) -> u64 {
        self.errors.values().sum()
    }
}

/// One publisher: POSTs in a loop until `stop`, recording requests that
/// start at or after `measure_from`.
async fn publisher(url: String, body: Bytes, measure_from: Instant, stop: Instant) -> Tally {
    herald_client::use_ring();
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let mut tally = Tally::new();
    loop {
        let start = Instant::now();
        if start >= stop {
            return tally;
        }
        let outcome = match client.post(&url).body(body.clone()).send().await {
            Ok(resp) => {
                let status = resp.status();
                // Read the whole answer: it is part of the publish, and the
                // connection is only reused once the body is consumed.
                match resp.bytes().await {
                    Ok(_) if status == reqwest::StatusCode::CREATED => Ok(()),
                    Ok(_) => Err(format!("HTTP {status}")),
                    Err(e) => Err(format!("reading answer: {e}")),
                }
            }
            Err(e) => Err(format!("request: {e}")),
        };
        let elapsed = start.elapsed();
        let warming = start < measure_from;
        match outcome {
            Ok(()) if warming => tally.all_ok += 1,
            Ok(()) => {
                tally.ok += 1;
                tally.all_ok += 1;
                let us = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
                tally.latency_us.saturating_record(us.max(1));
            }
            // Errors count whenever they happen, warm-up included.
            Err(what) => {
                let what = if warming {
                    format!("(warm-up) {what}")
                } else {
                    what
                };
                *tally.errors.entry(what).or_default() += 1;
            }
        }
    }
}

struct CaseResult {
    tally: Tally,
    measured: Duration,
}

async fn run_case(addr: &str, publishers: usize, secs: Duration) -> CaseResult {
    let url = format!("http://{addr}/topics/{TOPIC}");
    let body = Bytes::from(vec![b'x'; BODY_LEN]);
    let measure_from = Instant::now() + WARMUP;
    let stop = measure_from + secs;
    let tasks: Vec<_> = (0..publishers)
        .map(|_| tokio::spawn(publisher(url.clone(), body.clone(), measure_from, stop)))
        .collect();
    let mut tally = Tally::new();
    for t in tasks {
        tally.merge(t.await.expect("publisher task panicked"));
    }
    // Requests started before `stop` finish a little after it; count that
    // tail in the elapsed time so events/s is not flattered.
    let measured = Instant::now().saturating_duration_since(measure_from);
    CaseResult { tally, measured }
}

/// `herald_events_published_total` from the server's `/metrics`.
async fn published_total(addr: &str) -> Option<u64> {
    herald_client::use_ring();
    let text = reqwest::get(format!("http://{addr}/metrics"))
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    text.lines().find_map(|l| {
        l.strip_prefix("herald_events_published_total ")
            .and_then(|v| v.trim().parse::<f64>().ok())
            .map(|v| v as u64)
    })
}

fn ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

fn machine() -> String {
    let run = |cmd: &str, args: &[&str]| {
        Command::new(cmd)
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .map(|s| s.trim().to_owned())
            .unwrap_or_else(|| "?".into())
    };
    format!(
        "nproc {}, kernel {}",
        run("nproc", &[]),
        run("uname", &["-r"])
    )
}

fn main() {
    let secs = std::env::var("HERALD_BENCH_SECS")
        .ok()
        .map(|s| {
            s.trim()
                .parse::<f64>()
                .expect("HERALD_BENCH_SECS must be a number of seconds")
        })
        .unwrap_or(5.0);
    let secs = Duration::from_secs_f64(secs);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();

    println!("machine: {}", machine());
    println!(
        "publish to one shared topic, {BODY_LEN}-byte body, {:.0} ms warm-up, {:.1} s measured per case",
        WARMUP.as_secs_f64() * 1000.0,
        secs.as_secs_f64()
    );
    println!();
    println!("| store | publishers | events/s | p50 ms | p90 ms | p99 ms | max ms | errors |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");

    let mut all_errors = BTreeMap::<String, u64>::new();
    let started = Instant::now();
    let mut stores = vec!["memory", "file"];
    if std::process::Command::new("redis-server")
        .arg("--version")
        .output()
        .is_ok()
    {
        stores.push("redis");
    } else {
        println!("(redis-server not found: the redis rows are skipped)");
    }
    for store_name in stores {
        for publishers in CONCURRENCY {
            // A fresh server (and for `file`, a fresh database) per case.
            let dir = tempfile::Builder::new()
                .prefix("herald-bench-")
                .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
                .unwrap();
            let redis = (store_name == "redis").then(RedisServer::start);
            let store = match (store_name, &redis) {
                ("memory", _) => "memory".to_owned(),
                (_, Some(r)) => r.url.clone(),
                _ => format!("file:{}", dir.path().display()),
            };
            let server = Server::start(&store);
            let (result, published) = runtime.block_on(async {
                let result = run_case(&server.addr, publishers, secs).await;
                (result, published_total(&server.addr).await)
            });
            drop(server);
            drop(redis);
            drop(dir);

            let mut t = result.tally;
            // The server must have stored exactly the publishes it answered
            // 201 to (nothing timed out half-way, nothing stored twice).
            match published {
                Some(n) if n == t.all_ok => {}
                Some(n) => {
                    *t.errors
                        .entry(format!(
                            "server counted {n} published events, client got {} × 201",
                            t.all_ok
                        ))
                        .or_default() += 1;
                }
                None => {
                    *t.errors
                        .entry("could not read herald_events_published_total".into())
                        .or_default() += 1;
                }
            }
            let h = &t.latency_us;
            let rate = t.ok as f64 / result.measured.as_secs_f64();
            println!(
                "| {store_name} | {publishers} | {rate:.0} | {:.2} | {:.2} | {:.2} | {:.2} | {} |",
                ms(h.value_at_quantile(0.50)),
                ms(h.value_at_quantile(0.90)),
                ms(h.value_at_quantile(0.99)),
                ms(h.max()),
                t.error_count(),
            );
            for (what, n) in &t.errors {
                *all_errors
                    .entry(format!("{store_name}/{publishers}: {what}"))
                    .or_default() += n;
            }
        }
    }
    println!();
    println!("total wall time: {:.1} s", started.elapsed().as_secs_f64());
    if all_errors.is_empty() {
        println!("every publish answered 201, and each server counted exactly as many events");
    } else {
        println!("ERRORS (not 201):");
        for (what, n) in &all_errors {
            println!("  {n} × {what}");
        }
        std::process::exit(1);
    }
}
