//! The `floor` mode: the kernel's own floor for fan-out latency, with no
//! herald involved, so a fan-out result can be read against what a perfect
//! server on this machine could reach.
//!
//! A perfect server still writes once per subscriber. So this mode connects
//! N loopback TCP pairs inside this process; a sender thread pinned to its
//! own core writes one 100-byte record to every server end in turn, round
//! after round, with blocking `write`s; one task per client end reads them
//! with kernel arrival stamps (see [`crate::stamp`]). Latency runs from the
//! round's start, as a publish's would: the last socket of a sweep waits for
//! the whole sweep.

use std::io::{self, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use nix::sched::{CpuSet, sched_setaffinity};
use nix::unistd::Pid;
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::task::JoinSet;

use crate::net::{Target, connect};
use crate::procfs::CpuMark;
use crate::publish::epoch_us;
use crate::report::{latency_json, ms, round};
use crate::stamp;
use crate::subscriber::Latencies;

/// A record's size, that of a fan-out event's body.
const RECORD_LEN: usize = 100;

/// How long the receivers may take to get everything after the last round.
const DRAIN: Duration = Duration::from_secs(30);

/// What a run is asked to do.
pub struct Load {
    pub subs: usize,
    pub rounds: usize,
    /// The pause between two rounds.
    pub gap: Duration,
    /// The core the sender pins itself to.
    pub sender_cpu: usize,
}

/// What every receiver adds to: latencies, and counts read while the run
/// goes on, so a run cut off by [`DRAIN`] still reports what arrived.
struct Tally {
    /// std `Mutex`: locked once per read, never across an `.await`.
    hist: Mutex<Latencies>,
    received: AtomicU64,
    /// Records that were not the next round expected on their socket: the
    /// stream was cut up wrongly.
    bad: AtomicU64,
    errors: AtomicU64,
}

/// Connects `subs` pairs, sends `rounds` sweeps over them and measures
/// when each record arrived and when it was read.
pub async fn floor(load: Load) -> (Value, bool) {
    let (clients, servers) = pairs(load.subs).await;
    let tally = Arc::new(Tally {
        hist: Mutex::new(Latencies::new()),
        received: AtomicU64::new(0),
        bad: AtomicU64::new(0),
        errors: AtomicU64::new(0),
    });
    let mut receivers = JoinSet::new();
    for s in clients {
        receivers.spawn(receive(s, load.rounds, tally.clone()));
    }

    let cpu = CpuMark::now();
    let (done_tx, done_rx) = oneshot::channel();
    let (rounds, gap, cpu_id) = (load.rounds, load.gap, load.sender_cpu);
    thread::Builder::new()
        .name("floor-sender".into())
        .spawn(move || {
            let mut servers = servers;
            let sweeps = send(&mut servers, rounds, gap, cpu_id);
            // The server ends go back with the result: closing them now
            // would compete with the receivers still reading.
            let _ = done_tx.send((servers, sweeps));
        })
        .expect("start the sender thread");
    let (servers, sweeps) = done_rx.await.expect("the sender thread panicked");
    let sweeps = sweeps.unwrap_or_else(|e| panic!("sender: {e}"));
    let drained = tokio::time::timeout(DRAIN, async {
        while receivers.join_next().await.is_some() {}
    })
    .await
    .is_ok();
    receivers.abort_all();
    let cpu_run = cpu.since();
    drop(servers);

    let received = tally.received.load(Ordering::Relaxed);
    let expected = (load.subs * load.rounds) as u64;
    let sweep_total: Duration = sweeps.iter().sum();
    let sweep_max = sweeps.iter().max().copied().unwrap_or_default();
    let hist = tally.hist.lock().unwrap();
    let v = json!({
        "mode": "floor",
        "subs": load.subs,
        "rounds": load.rounds,
        "gap_ms": load.gap.as_millis() as u64,
        "sender_cpu": load.sender_cpu,
        "received": received,
        "expected": expected,
        "bad": tally.bad.load(Ordering::Relaxed),
        "errors": tally.errors.load(Ordering::Relaxed),
        "drained": drained,
        "sweep_us_per_write": round(sweep_total.as_secs_f64() * 1e6 / expected.max(1) as f64, 2),
        "sweep_ms": round(sweep_total.as_secs_f64() * 1e3 / load.rounds.max(1) as f64, 2),
        "sweep_max_ms": ms(sweep_max.as_micros() as u64),
        "latency": latency_json(&hist.arrival),
        "read_latency": latency_json(&hist.read),
        "cpu": cpu_run,
    });
    (v, received == expected)
}

/// Opens `n` loopback connections to a listener of our own: the client
/// ends (tokio, stamped, spread over source addresses like any subscriber's)
/// and the server ends (std, blocking, `TCP_NODELAY`), paired in no
/// particular order, which does not matter here.
async fn pairs(n: usize) -> (Vec<TcpStream>, Vec<std::net::TcpStream>) {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("listen on 127.0.0.1");
    let addr: SocketAddr = listener.local_addr().expect("listener address");
    let t = Target {
        addr,
        host: addr.to_string(),
        base: format!("http://{addr}"),
    };
    // Accepting on a thread of its own while the connects go on: the
    // listen backlog (128) is far below n.
    let accepted = tokio::task::spawn_blocking(move || {
        (0..n)
            .map(|_| {
                let (s, _) = listener.accept()?;
                s.set_nodelay(true)?;
                Ok(s)
            })
            .collect::<io::Result<Vec<_>>>()
    });
    let mut clients = Vec::with_capacity(n);
    for _ in 0..n {
        let s = connect(&t)
            .await
            .unwrap_or_else(|e| panic!("connect to {addr}: {e}"));
        // Before any byte can arrive, or the first ones go unstamped.
        stamp::enable(&s).expect("SO_TIMESTAMPNS");
        clients.push(s);
    }
    let servers = accepted
        .await
        .expect("the accepting thread panicked")
        .unwrap_or_else(|e| panic!("accept: {e}"));
    (clients, servers)
}

/// The sender: pins itself to `cpu`, then sweeps `rounds` times over every
/// socket, writing one record to each, `gap` apart. Returns each sweep's
/// duration.
fn send(
    socks: &mut [std::net::TcpStream],
    rounds: usize,
    gap: Duration,
    cpu: usize,
) -> io::Result<Vec<Duration>> {
    let mut set = CpuSet::new();
    set.set(cpu).map_err(io::Error::from)?;
    // Pid 0: this thread only, not the whole process.
    sched_setaffinity(Pid::from_raw(0), &set).map_err(io::Error::from)?;
    // Let every receiver park on its socket first.
    thread::sleep(Duration::from_millis(200));
    let mut sweeps = Vec::with_capacity(rounds);
    for r in 0..rounds {
        let rec = record(epoch_us(), r as u32);
        let start = Instant::now();
        for s in socks.iter_mut() {
            s.write_all(&rec)?;
        }
        sweeps.push(start.elapsed());
        if r + 1 < rounds {
            thread::sleep(gap);
        }
    }
    Ok(sweeps)
}

/// One receiver: reads its socket until it has `rounds` records (or the
/// stream ends), adding each one's latencies from its round's start.
async fn receive(s: TcpStream, rounds: usize, tally: Arc<Tally>) {
    let mut buf = vec![0u8; 4096];
    let mut records = Records::default();
    let mut got = Vec::new();
    let mut lats = Vec::new();
    let mut seen = 0usize;
    while seen < rounds {
        let (n, arrived) = match stamp::read(&s, &mut buf).await {
            Ok((0, _)) => break,
            Ok(x) => x,
            Err(_) => {
                tally.errors.fetch_add(1, Ordering::Relaxed);
                break;
            }
        };
        let now = epoch_us();
        records.feed(&buf[..n], &mut got);
        let mut bad = 0;
        for (t0, r) in got.drain(..) {
            if r as usize != seen {
                bad += 1;
            } else {
                lats.push(Latencies::pair(t0, arrived, now));
            }
            seen += 1;
        }
        tally.bad.fetch_add(bad, Ordering::Relaxed);
        tally
            .received
            .fetch_add(lats.len() as u64, Ordering::Relaxed);
        tally.hist.lock().unwrap().record(&mut lats);
    }
}

/// Round `r`'s record: its start in µs since the epoch, the round number,
/// then padding to [`RECORD_LEN`].
fn record(t0: u64, r: u32) -> [u8; RECORD_LEN] {
    let mut rec = [b'x'; RECORD_LEN];
    rec[..8].copy_from_slice(&t0.to_le_bytes());
    rec[8..12].copy_from_slice(&r.to_le_bytes());
    rec
}

/// Cuts a byte stream into records, wherever its reads happen to split it.
#[derive(Default)]
struct Records {
    /// The start of a record not yet complete.
    pending: Vec<u8>,
}

impl Records {
    /// Appends to `out` the (start, round) of every record `bytes` completes.
    fn feed(&mut self, bytes: &[u8], out: &mut Vec<(u64, u32)>) {
        self.pending.extend_from_slice(bytes);
        let whole = self.pending.len() / RECORD_LEN * RECORD_LEN;
        for rec in self.pending[..whole].chunks_exact(RECORD_LEN) {
            let t0 = u64::from_le_bytes(rec[..8].try_into().unwrap());
            let r = u32::from_le_bytes(rec[8..12].try_into().unwrap());
            out.push((t0, r));
        }
        self.pending.drain(..whole);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_survive_any_split() {
        let wire: Vec<u8> = (0..3).flat_map(|r| record(1_000 + r as u64, r)).collect();
        let want = vec![(1_000, 0), (1_001, 1), (1_002, 2)];
        for a in 0..=wire.len() {
            for b in a..=wire.len() {
                let mut records = Records::default();
                let mut got = Vec::new();
                for part in [&wire[..a], &wire[a..b], &wire[b..]] {
                    records.feed(part, &mut got);
                }
                assert_eq!(got, want, "split at {a} and {b}");
            }
        }
    }
}
