//! The `storm` mode (issue 14, "a reconnect storm costs a gigabyte"): a
//! topic holding `--history` events, then `--clients` SSE subscribers that
//! all arrive at once with `Last-Event-ID: all`, as browsers do when a
//! server comes back, and each read the whole history. It measures how long
//! the server takes to serve them all, whether each got every event once
//! and in order, and what the catch-up cost the server: peak memory and
//! threads, and the memory it still holds once they are gone.

use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant};

use herald_protocol::sse::{Decoder, Frame};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinHandle;

use crate::PublishArgs;
use crate::metrics::try_metric;
use crate::net::{Target, connect, find, http, io_err};
use crate::procfs::{self, CpuMark, server_pid};
use crate::publish::{Published, parse_body, publish_sized};
use crate::report::{latency_json, new_hist, round};
use crate::stuck::{SSE_GAUGE, Samples, proc_peaks, wait_released};
use crate::subscriber::{Taken, Tally, next_order};

/// Times a client reconnects (the server closed its stream early) before
/// it gives up.
const MAX_RECONNECTS: u64 = 100;

/// What a run is asked to do.
pub struct Load {
    pub topic: String,
    pub clients: usize,
    /// Events published before the storm, and read by every client.
    pub history: usize,
    /// Bytes of event data per publish.
    pub size: usize,
    pub publishers: usize,
    /// First connect → the clients that do not have everything give up.
    pub timeout: Duration,
}

/// Publishes the history, then lets every client in at once (at most
/// `concurrency` connecting at a time) and samples the server until the
/// last one is done; then reads what memory the server kept.
pub async fn storm(t: &Target, load: Load, concurrency: usize) -> (Value, bool) {
    let client = http();
    let pid = server_pid();
    let mut metric_errors = 0u64;

    let p = PublishArgs {
        rate: None,
        publishers: load.publishers,
        drain_secs: 0.0,
    };
    let topics = vec![load.topic.clone()];
    let publish_start = Instant::now();
    let published = publish_sized(t, topics, load.history, p, publish_start, load.size).await;
    let publish_s = publish_start.elapsed().as_secs_f64();

    let gauge0 = match try_metric(&client, t, SSE_GAUGE).await {
        Ok(v) => v,
        Err(e) => {
            eprintln!("GET /metrics: {e}");
            metric_errors += 1;
            0.0
        }
    };
    let rss_before = pid.as_deref().and_then(procfs::rss_bytes);
    let threads_before = pid.as_deref().and_then(procfs::threads);

    let (sampled_tx, sampled_rx) = watch::channel(false);
    let sampler = tokio::spawn(proc_peaks(pid.clone(), sampled_rx));
    let cpu = CpuMark::now();
    let first_connect = Instant::now();
    let deadline = tokio::time::Instant::from_std(first_connect + load.timeout);
    let sem = Arc::new(Semaphore::new(concurrency.max(1)));
    let path = format!("/topics/{}", load.topic);
    let tasks: Vec<JoinHandle<ClientStats>> = (0..load.clients)
        .map(|_| {
            let (t, path, sem) = (t.clone(), path.clone(), sem.clone());
            let expected = load.history as u64;
            tokio::spawn(async move { storm_client(&t, &path, expected, &sem, deadline).await })
        })
        .collect();
    let mut stats = Vec::with_capacity(load.clients);
    for task in tasks {
        stats.push(task.await.unwrap_or_else(|e| ClientStats {
            error: Some(e.to_string()),
            ended: Some(Instant::now()),
            ..ClientStats::default()
        }));
    }
    let cpu_run = cpu.since();
    let _ = sampled_tx.send(true);
    let mut samples = sampler.await.unwrap_or_default();

    // Every client closed its socket as it finished.
    let released = wait_released(&client, t, gauge0).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_after = pid.as_deref().and_then(procfs::rss_bytes);

    samples.rss_peak = samples.rss_peak.max(rss_before).max(rss_after);
    samples.threads_peak = samples.threads_peak.max(threads_before);
    let outcome = Outcome {
        load,
        concurrency,
        publish_s,
        published,
        first_connect,
        stats,
        samples,
        rss_before,
        threads_before,
        rss_after,
        released,
        metric_errors: metric_errors + samples.metric_errors,
        cpu_run,
    };
    outcome.verdict()
}

/// What one storm client saw.
#[derive(Default)]
struct ClientStats {
    received: u64,
    duplicates: u64,
    out_of_order: u64,
    unexpected: u64,
    gaps: u64,
    reconnects: u64,
    /// Rolling hash of the order of sequence numbers received: every client
    /// reads the same history, so every served client should have the same.
    order: u64,
    /// It began to connect (its turn among `--connect-concurrency`).
    started: Option<Instant>,
    /// Connect → the `200` head.
    connect: Option<Duration>,
    /// It had every event.
    served: Option<Instant>,
    /// It stopped, served or not.
    ended: Option<Instant>,
    error: Option<String>,
}

/// One client of the storm: waits for its turn to connect, subscribes
/// from the oldest event, reads until it has `expected` events (resuming
/// from its cursor if the server closes the stream early) or the deadline,
/// then closes.
async fn storm_client(
    t: &Target,
    path: &str,
    expected: u64,
    sem: &Semaphore,
    deadline: tokio::time::Instant,
) -> ClientStats {
    let mut st = ClientStats::default();
    st.error = read_all(t, path, expected, sem, deadline, &mut st)
        .await
        .err()
        .map(|e| e.to_string());
    st.ended = Some(Instant::now());
    st
}

/// [`storm_client`]'s work; an error is why it stopped short.
async fn read_all(
    t: &Target,
    path: &str,
    expected: u64,
    sem: &Semaphore,
    deadline: tokio::time::Instant,
    st: &mut ClientStats,
) -> io::Result<()> {
    let timed_out = |what: &str| io_err(format!("timed out {what}"));
    let permit = tokio::time::timeout_at(deadline, sem.acquire())
        .await
        .map_err(|_| timed_out("waiting to connect"))?
        .map_err(io::Error::other)?;
    let start = Instant::now();
    st.started = Some(start);
    let mut sse = tokio::time::timeout_at(deadline, Sse::open(t, path, "all"))
        .await
        .map_err(|_| timed_out("connecting"))??;
    drop(permit);
    st.connect = Some(start.elapsed());
    let mut check = Check::new(expected);
    while st.received < expected {
        let next = tokio::time::timeout_at(deadline, sse.frames())
            .await
            .map_err(|_| timed_out("reading"))?;
        match next {
            Ok(Some(frames)) => check.frames(frames, st),
            // Closed, reset or cut off: resume from the cursor, as
            // EventSource does.
            Ok(None) | Err(_) => {
                st.reconnects += 1;
                if st.reconnects > MAX_RECONNECTS {
                    return Err(io_err(format!("more than {MAX_RECONNECTS} reconnects")));
                }
                let cursor = sse.dec.last_event_id().unwrap_or("all").to_owned();
                sse = tokio::time::timeout_at(deadline, Sse::open(t, path, &cursor))
                    .await
                    .map_err(|_| timed_out("reconnecting"))??;
            }
        }
    }
    st.served = Some(Instant::now());
    Ok(())
}

/// An SSE subscription over HTTP/1.1, as a browser's: the body chunked
/// (or close-delimited, if the server does not chunk it) and decoded.
struct Sse {
    s: TcpStream,
    body: Body,
    dec: Decoder,
    /// Body bytes read with the head, not yet decoded.
    first: Vec<u8>,
    buf: Vec<u8>,
    /// A chunked body's data, de-chunked.
    scratch: Vec<u8>,
}

enum Body {
    Chunked(Dechunk),
    Raw,
}

impl Sse {
    /// Subscribes to `path` from `last_id` and reads the head, which must
    /// be a `200`.
    async fn open(t: &Target, path: &str, last_id: &str) -> io::Result<Sse> {
        let mut s = connect(t).await?;
        let req = format!(
            "GET {path} HTTP/1.1\r\nHost: {}\r\nAccept: text/event-stream\r\n\
             Last-Event-ID: {last_id}\r\n\r\n",
            t.host
        );
        s.write_all(req.as_bytes()).await?;
        let mut buf = vec![0u8; 16 * 1024];
        let mut got = Vec::with_capacity(1024);
        let end = loop {
            let n = s.read(&mut buf).await?;
            if n == 0 {
                return Err(io_err(format!(
                    "SSE {path}: closed before the head: {:?}",
                    String::from_utf8_lossy(&got)
                )));
            }
            got.extend_from_slice(&buf[..n]);
            if let Some(p) = find(&got, b"\r\n\r\n") {
                break p;
            }
            if got.len() > 64 * 1024 {
                return Err(io_err(format!("SSE {path}: head over 64 KiB")));
            }
        };
        let head = String::from_utf8_lossy(&got[..end]).into_owned();
        if head.split(' ').nth(1) != Some("200") {
            return Err(io_err(format!("SSE {path}: {head:?}")));
        }
        let chunked = head.split("\r\n").skip(1).any(|line| {
            line.split_once(':').is_some_and(|(name, value)| {
                name.trim().eq_ignore_ascii_case("transfer-encoding")
                    && value.to_ascii_lowercase().contains("chunked")
            })
        });
        Ok(Sse {
            s,
            body: if chunked {
                Body::Chunked(Dechunk::default())
            } else {
                Body::Raw
            },
            dec: Decoder::new(),
            first: got.split_off(end + 4),
            buf,
            scratch: Vec::new(),
        })
    }

    /// The frames of the next read that completes any; None once the
    /// stream has ended.
    async fn frames(&mut self) -> io::Result<Option<Vec<Frame>>> {
        loop {
            if let Body::Chunked(d) = &self.body
                && d.done()
            {
                return Ok(None);
            }
            let taken;
            let input: &[u8] = if self.first.is_empty() {
                let n = self.s.read(&mut self.buf).await?;
                if n == 0 {
                    return Ok(None);
                }
                &self.buf[..n]
            } else {
                taken = std::mem::take(&mut self.first);
                &taken
            };
            let frames = match &mut self.body {
                Body::Raw => self.dec.feed(input),
                Body::Chunked(d) => {
                    self.scratch.clear();
                    d.feed(input, &mut self.scratch)?;
                    self.dec.feed(&self.scratch)
                }
            };
            if !frames.is_empty() {
                return Ok(Some(frames));
            }
        }
    }
}

/// Where a chunked body is between two reads.
#[derive(Default, Debug, PartialEq, Eq)]
enum ChunkState {
    /// Reading a chunk-size line.
    #[default]
    Size,
    /// This many bytes of chunk data left.
    Data(usize),
    /// This many bytes of the CRLF after a chunk's data left.
    DataEnd(usize),
    /// The last (zero) chunk was read: the stream is over.
    Done,
}

/// Incremental `Transfer-Encoding: chunked` decoding: bytes in as they
/// are read, whatever their split; the chunks' data out.
#[derive(Default)]
struct Dechunk {
    state: ChunkState,
    /// The chunk-size line so far.
    line: Vec<u8>,
}

impl Dechunk {
    fn done(&self) -> bool {
        self.state == ChunkState::Done
    }

    /// Decodes `input`, appending the data to `out`.
    fn feed(&mut self, mut input: &[u8], out: &mut Vec<u8>) -> io::Result<()> {
        while !input.is_empty() {
            match self.state {
                ChunkState::Size => {
                    let Some(i) = input.iter().position(|&b| b == b'\n') else {
                        self.line.extend_from_slice(input);
                        if self.line.len() > 1024 {
                            return Err(io_err("chunk-size line over 1 KiB".into()));
                        }
                        return Ok(());
                    };
                    self.line.extend_from_slice(&input[..i]);
                    input = &input[i + 1..];
                    let line = String::from_utf8_lossy(&self.line).into_owned();
                    let hex = line.trim_end_matches('\r').split(';').next().unwrap_or("");
                    let size = usize::from_str_radix(hex.trim(), 16)
                        .map_err(|_| io_err(format!("bad chunk size {line:?}")))?;
                    self.line.clear();
                    self.state = if size == 0 {
                        ChunkState::Done
                    } else {
                        ChunkState::Data(size)
                    };
                }
                ChunkState::Data(left) => {
                    let k = left.min(input.len());
                    out.extend_from_slice(&input[..k]);
                    input = &input[k..];
                    self.state = if k == left {
                        ChunkState::DataEnd(2)
                    } else {
                        ChunkState::Data(left - k)
                    };
                }
                ChunkState::DataEnd(left) => {
                    let want = &b"\r\n"[2 - left..];
                    let k = left.min(input.len());
                    if input[..k] != want[..k] {
                        return Err(io_err("chunk data not followed by CRLF".into()));
                    }
                    input = &input[k..];
                    self.state = if k == left {
                        ChunkState::Size
                    } else {
                        ChunkState::DataEnd(left - k)
                    };
                }
                // Trailers, if any, are of no interest.
                ChunkState::Done => return Ok(()),
            }
        }
        Ok(())
    }
}

/// What a client remembers to judge each event.
struct Check {
    tally: Tally,
}

impl Check {
    fn new(expected: u64) -> Check {
        Check {
            tally: Tally::new(expected),
        }
    }

    /// Counts the events among `frames` into `st`: new, duplicate, out of
    /// order (its id not above the last one's), unexpected, or a gap.
    fn frames(&mut self, frames: Vec<Frame>, st: &mut ClientStats) {
        for f in frames {
            let Frame::Event { id, event, data } = f else {
                continue;
            };
            if event == "gap" {
                st.gaps += 1;
                continue;
            }
            let Some((_, seq)) = parse_body(&data) else {
                st.unexpected += 1;
                continue;
            };
            match self.tally.take(seq, id.as_deref()) {
                Taken::Unexpected => st.unexpected += 1,
                Taken::Duplicate => st.duplicates += 1,
                Taken::New { out_of_order } => {
                    st.received += 1;
                    st.order = next_order(st.order, seq);
                    st.out_of_order += u64::from(out_of_order);
                }
            }
        }
    }
}

/// Everything a run measured, to be judged and reported.
struct Outcome {
    load: Load,
    concurrency: usize,
    publish_s: f64,
    published: Published,
    first_connect: Instant,
    stats: Vec<ClientStats>,
    samples: Samples,
    rss_before: Option<u64>,
    threads_before: Option<u64>,
    rss_after: Option<u64>,
    /// The last client gone → the SSE gauge back where it was.
    released: Option<Duration>,
    metric_errors: u64,
    cpu_run: Value,
}

impl Outcome {
    /// The result as JSON, and whether it passed: the history published,
    /// and every client served every event exactly once, in order.
    fn verdict(self) -> (Value, bool) {
        let (load, stats, s) = (&self.load, &self.stats, self.samples);
        let sum = |f: fn(&ClientStats) -> u64| stats.iter().map(f).sum::<u64>();
        for e in stats.iter().filter_map(|s| s.error.as_ref()).take(5) {
            eprintln!("storm client: {e}");
        }
        let served: Vec<&ClientStats> = stats.iter().filter(|s| s.served.is_some()).collect();
        let mut time_to_all = new_hist();
        let mut connect = new_hist();
        for st in stats {
            if let (Some(start), Some(done)) = (st.started, st.served) {
                let us = done.duration_since(start).as_micros() as u64;
                time_to_all.saturating_record(us.max(1));
            }
            if let Some(c) = st.connect {
                connect.saturating_record((c.as_micros() as u64).max(1));
            }
        }
        // Served clients whose order differs from the first served one's.
        let order_differs = served
            .first()
            .map_or(0, |f| served.iter().filter(|s| s.order != f.order).count());
        let last_end = stats.iter().filter_map(|s| s.ended).max();
        let serve_s =
            last_end.map(|l| round(l.duration_since(self.first_connect).as_secs_f64(), 3));
        let expected = (load.clients * load.history) as u64;
        let received = sum(|s| s.received);
        let lost = expected.saturating_sub(received);
        let errors = stats.iter().filter(|s| s.error.is_some()).count();
        let (dups, ooo, unexpected) = (
            sum(|s| s.duplicates),
            sum(|s| s.out_of_order),
            sum(|s| s.unexpected),
        );
        let ok = self.published.errors == 0
            && served.len() == load.clients
            && errors == 0
            && dups + ooo + unexpected == 0
            && order_differs == 0;
        let v = json!({
            "mode": "storm",
            "topic": load.topic,
            "clients": load.clients,
            "history": load.history,
            "size": load.size,
            "publishers": load.publishers,
            "connect_concurrency": self.concurrency,
            "publish_s": round(self.publish_s, 3),
            "publish_errors": self.published.errors,
            "served": served.len(),
            "received": received,
            "lost": lost,
            "dups": dups,
            "out_of_order": ooo,
            "unexpected": unexpected,
            "order_differs": order_differs,
            "gaps": sum(|s| s.gaps),
            "reconnects": sum(|s| s.reconnects),
            "errors": errors,
            "time_to_serve_s": serve_s,
            "time_to_all": latency_json(&time_to_all),
            "connect": latency_json(&connect),
            "rss_before": self.rss_before,
            "rss_peak": s.rss_peak,
            "rss_after": self.rss_after,
            "threads_before": self.threads_before,
            "threads_peak": s.threads_peak,
            "tcp_mem_peak": s.tcp_mem_peak,
            "release_s": self.released.map(|d| round(d.as_secs_f64(), 3)),
            "metric_errors": self.metric_errors,
            "cpu": self.cpu_run,
        });
        (v, ok)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WIRE: &[u8] =
        b"16\r\nretry: 3000\n: herald\n\n\r\n4;ext=1\r\nid: \r\n3\r\n1-0\r\n0\r\n\r\n";

    #[test]
    fn dechunks_at_every_split_point() {
        for at in 0..=WIRE.len() {
            for second in at..=WIRE.len() {
                let mut d = Dechunk::default();
                let mut out = Vec::new();
                d.feed(&WIRE[..at], &mut out).unwrap();
                d.feed(&WIRE[at..second], &mut out).unwrap();
                d.feed(&WIRE[second..], &mut out).unwrap();
                assert_eq!(
                    out, b"retry: 3000\n: herald\n\nid: 1-0",
                    "split {at}/{second}"
                );
                assert!(d.done());
            }
        }
    }

    #[test]
    fn a_chunk_without_its_crlf_is_an_error() {
        let mut d = Dechunk::default();
        let mut out = Vec::new();
        assert!(d.feed(b"2\r\nabXY", &mut out).is_err());
        let mut d = Dechunk::default();
        assert!(d.feed(b"zz\r\n", &mut out).is_err());
    }

    #[test]
    fn counts_duplicates_and_ids_going_back() {
        let ev = |id: &str, seq: u64| Frame::Event {
            id: Some(id.to_owned()),
            event: "message".into(),
            data: format!("1 {seq} xx"),
        };
        let mut c = Check::new(3);
        let mut st = ClientStats::default();
        c.frames(vec![ev("5-0", 0), ev("5-1", 1), ev("5-1", 1)], &mut st);
        c.frames(vec![ev("4-0", 2), ev("6-0", 7)], &mut st);
        assert_eq!(
            (st.received, st.duplicates, st.out_of_order, st.unexpected),
            (3, 1, 1, 1)
        );
    }
}
