//! `herald-bench`: a load driver for an already running herald.
//!
//! It opens real sockets (raw TCP with hand-written HTTP requests; WebSocket
//! through tokio-tungstenite), spread over the source addresses
//! 127.0.0.2–127.0.0.250 so the ephemeral port range never runs out, and
//! measures what a client sees: connections opened per second, server memory
//! per connection, fan-out delivery rate and publish→receive latency,
//! long-poll wake latency, publish throughput and the task cycle's rate. It reads its own CPU time and, with
//! `--server-pid`, the server's CPU time and resident set, so every result
//! shows which side was the bottleneck. See `docs/performance.md`.
//!
//! This file owns the command line and the dispatch to one mode; each mode
//! lives in its own module.

// A load generator may panic on what it does not expect (a malformed answer,
// a failed runtime start): failing loudly is the right outcome for a bench.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod cycle;
mod fanout;
mod floor;
mod http1;
mod idle;
mod longpoll;
mod metrics;
mod net;
mod procfs;
mod publish;
mod publish_rate;
mod report;
mod stamp;
mod storm;
mod stuck;
mod subscriber;
mod tasks;

use clap::{Parser, Subcommand};

use crate::net::Target;

// The doc comments on `Cli`, `Mode` and `PublishArgs` are the `--help`
// text: change them only to change what users read.
#[derive(Parser)]
#[command(
    name = "herald-bench",
    about = "Load driver for a running herald: idle subscribers, fan-out, many topics, \
             parked long polls, publish throughput, the task cycle, producers and workers \
             side by side, subscribers that stop reading, a reconnect storm replaying a topic's history; and the kernel's own \
             fan-out floor, with no server",
    after_help = "The store is whatever the server was started with: start a memory-store \
                  or a file-store server to measure either. Pin the server and the driver \
                  to different cores, e.g.\n  \
                  taskset -c 0 herald serve --store memory --retention-events 1000000\n  \
                  taskset -c 1 herald-bench --server-pid $(pgrep -n herald) fanout --subs 1000 --events 20000\n  \
                  taskset -c 1 herald-bench --server-pid $(pgrep -n herald) publish --publishers 64\n  \
                  taskset -c 1 herald-bench --server-pid $(pgrep -n herald) tasks --workers 16\n  \
                  taskset -c 1 herald-bench --server-pid $(pgrep -n herald) cycle --producers 16 --workers 16 --wait long-poll\n  \
                  taskset -c 1 herald-bench --server-pid $(pgrep -n herald) stuck --stuck 2000 --events 50000\n  \
                  taskset -c 1 herald-bench --server-pid $(pgrep -n herald) storm --clients 2000 --history 1000\n  \
                  taskset -c 1 herald-bench floor --subs 1000   (no server: the sender on core 0)\n\n\
                  `cargo bench --bench publish` and `cargo bench --bench tasks` measure the \
                  same with a server of their own, over every store; \
                  benches/tasks-vs-bullmq.sh sets `cycle`'s shape beside BullMQ's.\n\n\
                  Against a server with authorization on, set HERALD_TOKEN to a token with \
                  `admin` (for /metrics) and the scopes the mode uses (`publish` supports it)."
)]
struct Cli {
    /// The herald to drive.
    #[arg(long, global = true, default_value = "http://127.0.0.1:7171")]
    url: String,
    /// The server's process id: its RSS and CPU time are read from /proc.
    #[arg(long, global = true)]
    server_pid: Option<u32>,
    /// One JSON object per result instead of markdown tables.
    #[arg(long, global = true)]
    json: bool,
    /// Connections being opened at the same time (the rest wait their turn).
    /// Keep it under the server's listen backlog (herald's is 4096), or a
    /// burst overflows the accept queue and those clients wait 1 s for a SYN
    /// retransmit. Default 100; `storm`'s is every client at once, since
    /// the burst is what it measures.
    #[arg(long, global = true)]
    connect_concurrency: Option<usize>,
    #[command(subcommand)]
    mode: Mode,
}

#[derive(Subcommand)]
enum Mode {
    /// N idle subscribers on topics idle-{i % 100}: open rate, RSS per
    /// connection, release on close.
    Idle {
        #[arg(long)]
        conns: usize,
        /// WebSocket instead of SSE.
        #[arg(long)]
        ws: bool,
    },
    /// N SSE subscribers on one topic, M published events of 100 bytes.
    Fanout {
        #[arg(long)]
        subs: usize,
        #[arg(long)]
        events: usize,
        #[command(flatten)]
        publish: PublishArgs,
    },
    /// N SSE subscribers each on its own topic t{i}; M events round-robin.
    Topics {
        #[arg(long)]
        subs: usize,
        #[arg(long)]
        events: usize,
        #[command(flatten)]
        publish: PublishArgs,
    },
    /// N parked long polls on one topic, woken by one publish.
    Longpoll {
        #[arg(long)]
        polls: usize,
        /// The topic to poll.
        #[arg(long, default_value = "lp")]
        topic: String,
    },
    /// N publishers, each on its own keep-alive connection with one request
    /// in flight, POST 100-byte events to one topic flat out: events/s and
    /// publish latency after a 1 s warm-up.
    Publish {
        /// Concurrent publishers, each on its own connection.
        #[arg(long)]
        publishers: usize,
        /// Measured seconds (after the warm-up).
        #[arg(long, default_value_t = 5.0)]
        secs: f64,
        /// The topic to publish to.
        #[arg(long, default_value = "bench")]
        topic: String,
    },
    /// The task cycle: N tasks enqueued, W workers claim (long poll) and
    /// complete them, a waiting client long polls each result: tasks/s and
    /// enqueue → waiting client told latency.
    Tasks {
        /// Concurrent workers, each looping claim → complete on its own
        /// connection.
        #[arg(long)]
        workers: usize,
        /// Tasks to enqueue.
        #[arg(long, default_value_t = 2000)]
        tasks: usize,
        /// The queue; by default a fresh one per run, so no task left
        /// over from an earlier run is claimed.
        #[arg(long)]
        queue: Option<String>,
        /// Waiting clients outstanding at most: the submitter enqueues only
        /// while fewer wait, so this also bounds the tasks in flight.
        #[arg(long, default_value_t = 256)]
        waiters: usize,
    },
    /// Producers and workers side by side, as an application uses a queue:
    /// P producers each enqueue a small JSON task and wait for its result,
    /// over and over; W workers complete each at once. Tasks/s, enqueue →
    /// result latency and the server's CPU per task over `--secs` after a
    /// warm-up; checks that every task was told exactly once, with its own
    /// result, and that the server's `herald_tasks` counts agree.
    Cycle {
        /// Producers, each one task in flight on its own connection.
        #[arg(long, default_value_t = 16)]
        producers: usize,
        /// Workers, each on its own connection (`http`) or socket (`ws`).
        #[arg(long, default_value_t = 16)]
        workers: usize,
        /// How a producer waits for its result.
        #[arg(long, value_enum, default_value_t = cycle::Wait::LongPoll)]
        wait: cycle::Wait,
        /// How a worker takes and completes tasks.
        #[arg(long, value_enum, default_value_t = cycle::Work::Http)]
        worker: cycle::Work,
        /// Tasks a `--worker ws` socket holds at once (its `count=`).
        #[arg(long, default_value_t = 1)]
        count: usize,
        /// Measured seconds (after the warm-up).
        #[arg(long, default_value_t = 5.0)]
        secs: f64,
        /// Seconds run before measuring.
        #[arg(long, default_value_t = 1.0)]
        warmup: f64,
        /// The queue; by default a fresh one per run, so the server's
        /// counts are the run's own.
        #[arg(long)]
        queue: Option<String>,
    },
    /// Issue 14: S subscribers that stop reading (4 KiB receive buffer)
    /// beside F that read everything, on one topic, and M events of
    /// `--size` bytes: what the stuck ones cost the others and the
    /// server's memory, and when the server cuts them off.
    Stuck {
        /// Subscribers that read the head and the preamble, then never
        /// again (HTTP/1.1, `SO_RCVBUF` 4 KiB).
        #[arg(long)]
        stuck: usize,
        /// Subscribers that read everything and check it, as fan-out's do.
        #[arg(long, default_value_t = 4)]
        fast: usize,
        #[arg(long)]
        events: usize,
        /// Bytes of data per event.
        #[arg(long, default_value_t = 1024)]
        size: usize,
        /// Events per second in all (paced); without it, as fast as possible.
        #[arg(long)]
        rate: Option<f64>,
        /// Concurrent publishers (each one keep-alive connection).
        #[arg(long, default_value_t = 4)]
        publishers: usize,
        /// How long to wait after the last publish for the fast subscribers
        /// to get everything, in seconds.
        #[arg(long, default_value_t = 30.0)]
        settle: f64,
        /// The topic.
        #[arg(long, default_value = "stuck")]
        topic: String,
    },
    /// Issue 14: a topic holding H events of `--size` bytes, then N SSE
    /// subscribers at once (HTTP/1.1, `Last-Event-ID: all`), each reading
    /// the whole history: time to serve them all, every event once and in
    /// order, and the server's peak and remaining memory and its threads.
    Storm {
        /// Subscribers arriving together (`--connect-concurrency` limits
        /// how many connect at a time; by default all of them).
        #[arg(long)]
        clients: usize,
        /// Events published before the storm; every client reads them
        /// all. Keep it within the server's `--retention-events` (1000 by
        /// default), and the topic empty before the run.
        #[arg(long)]
        history: usize,
        /// Bytes of data per event.
        #[arg(long, default_value_t = 1024)]
        size: usize,
        /// Concurrent publishers of the history (each one keep-alive
        /// connection), as fast as they go.
        #[arg(long, default_value_t = 4)]
        publishers: usize,
        /// Seconds from the first connect after which the clients still
        /// missing events give up (and count as not served).
        #[arg(long, default_value_t = 120.0)]
        timeout: f64,
        /// The topic.
        #[arg(long, default_value = "storm")]
        topic: String,
    },
    /// The kernel's fan-out floor, no herald involved: µs per write and
    /// round start → arrival latency over N loopback TCP pairs.
    ///
    /// Both ends live in this process: a sender thread pinned to its own
    /// core writes 100 bytes to each server end (blocking, TCP_NODELAY)
    /// round after round; a task per client end reads them. `--url` is
    /// ignored. Start it under `taskset -c 1` with the sender on core 0.
    Floor {
        /// Socket pairs (2 file descriptors each).
        #[arg(long)]
        subs: usize,
        /// Sweeps over every socket.
        #[arg(long, default_value_t = 50)]
        rounds: usize,
        /// Milliseconds between two sweeps.
        #[arg(long, default_value_t = 20)]
        gap_ms: u64,
        /// The core the sender thread pins itself to.
        #[arg(long, default_value_t = 0)]
        sender_cpu: usize,
    },
}

impl Mode {
    /// Connections this mode holds open at once: each is a file descriptor.
    fn connections(&self) -> usize {
        match self {
            Mode::Idle { conns, .. } => *conns,
            Mode::Fanout { subs, .. } | Mode::Topics { subs, .. } => *subs,
            Mode::Longpoll { polls, .. } => *polls,
            // One each, and one for /metrics.
            Mode::Publish { publishers, .. } => publishers + 1,
            // The workers', the waiting clients', the submitter's and
            // /metrics'.
            Mode::Tasks {
                workers, waiters, ..
            } => workers + waiters + 2,
            // The producers' (one more each, briefly, for a WebSocket
            // wait), the workers' and /metrics'.
            Mode::Cycle {
                producers, workers, ..
            } => 2 * producers + workers + 1,
            // The subscribers', the publishers' and two for /metrics.
            Mode::Stuck {
                stuck,
                fast,
                publishers,
                ..
            } => stuck + fast + publishers + 2,
            // The clients', the publishers' and two for /metrics.
            Mode::Storm {
                clients,
                publishers,
                ..
            } => clients + publishers + 2,
            // Both ends of every pair live in this process.
            Mode::Floor { subs, .. } => 2 * subs,
        }
    }
}

#[derive(clap::Args, Clone, Copy)]
struct PublishArgs {
    /// Events per second in all (paced); without it, as fast as possible.
    #[arg(long)]
    rate: Option<f64>,
    /// Concurrent publishers (each one keep-alive connection).
    #[arg(long, default_value_t = 4)]
    publishers: usize,
    /// How long to wait after the last publish for subscribers to get
    /// everything, in seconds.
    #[arg(long, default_value_t = 30.0)]
    drain_secs: f64,
}

fn main() {
    let cli = Cli::parse();
    // Every connection is a file descriptor: go up to the hard limit.
    let nofile = rlimit::increase_nofile_limit(u64::MAX).unwrap_or(0);
    procfs::set_server_pid(cli.server_pid);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let ok = rt.block_on(run(cli, nofile));
    // Leave at once: thousands of sockets close with the process.
    std::process::exit(if ok { 0 } else { 1 });
}

/// Runs the chosen mode, prints its result and says whether it passed (the
/// exit status: CI fails a run that lost or duplicated anything).
async fn run(cli: Cli, nofile: u64) -> bool {
    let need = cli.mode.connections() as u64;
    if need + 64 > nofile {
        eprintln!("warning: {need} connections but only {nofile} file descriptors");
    }
    // The floor drives no server: there is no `--url` to resolve.
    if let Mode::Floor {
        subs,
        rounds,
        gap_ms,
        sender_cpu,
    } = cli.mode
    {
        let load = floor::Load {
            subs,
            rounds,
            gap: std::time::Duration::from_millis(gap_ms),
            sender_cpu,
        };
        let (v, ok) = floor::floor(load).await;
        report::report(cli.json, &v);
        return ok;
    }
    let t = Target::resolve(&cli.url).await;
    let concurrency = cli.connect_concurrency.unwrap_or(100);
    let (v, ok) = match cli.mode {
        Mode::Idle { conns, ws } => idle::idle(&t, conns, ws, concurrency).await,
        Mode::Fanout {
            subs,
            events,
            publish,
        } => {
            let topic = format!("fanout-{}", publish::epoch_us());
            let load = fanout::Load {
                mode: "fanout",
                subs,
                events,
                publish,
            };
            fanout::deliver(&t, load, vec![topic], concurrency).await
        }
        Mode::Topics {
            subs,
            events,
            publish,
        } => {
            let topics = (0..subs).map(|i| format!("t{i}")).collect();
            let load = fanout::Load {
                mode: "topics",
                subs,
                events,
                publish,
            };
            fanout::deliver(&t, load, topics, concurrency).await
        }
        Mode::Longpoll { polls, topic } => longpoll::longpoll(&t, polls, &topic, concurrency).await,
        Mode::Publish {
            publishers,
            secs,
            topic,
        } => {
            let load = publish_rate::Load {
                publishers,
                secs,
                topic,
            };
            publish_rate::publish(&t, load).await
        }
        Mode::Tasks {
            workers,
            tasks,
            queue,
            waiters,
        } => {
            let queue = queue.unwrap_or_else(|| format!("bench-{}", publish::epoch_us()));
            let load = tasks::Load {
                workers,
                tasks,
                waiters,
                queue,
            };
            tasks::tasks(&t, load).await
        }
        Mode::Cycle {
            producers,
            workers,
            wait,
            worker,
            count,
            secs,
            warmup,
            queue,
        } => {
            let queue = queue.unwrap_or_else(|| format!("cycle-{}", publish::epoch_us()));
            let load = cycle::Load {
                producers,
                workers,
                count,
                secs,
                warmup,
                wait,
                work: worker,
                queue,
            };
            cycle::cycle(&t, load).await
        }
        Mode::Stuck {
            stuck,
            fast,
            events,
            size,
            rate,
            publishers,
            settle,
            topic,
        } => {
            let load = stuck::Load {
                topic,
                stuck,
                fast,
                events,
                size,
                publish: PublishArgs {
                    rate,
                    publishers,
                    drain_secs: settle,
                },
            };
            stuck::stuck(&t, load, concurrency).await
        }
        Mode::Storm {
            clients,
            history,
            size,
            publishers,
            timeout,
            topic,
        } => {
            let load = storm::Load {
                topic,
                clients,
                history,
                size,
                publishers,
                timeout: std::time::Duration::from_secs_f64(timeout),
            };
            let concurrency = cli.connect_concurrency.unwrap_or(clients);
            storm::storm(&t, load, concurrency).await
        }
        Mode::Floor { .. } => unreachable!("the floor returned above"),
    };
    report::report(cli.json, &v);
    ok
}
