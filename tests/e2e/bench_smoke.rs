//! `herald-bench` against a real server, at small sizes: every mode runs,
//! exits 0 and reports nothing lost.

use std::process::Command;
use std::sync::OnceLock;

use crate::harness::Server;

/// Builds `herald-bench` once (debug profile, this workspace's target dir)
/// and returns its path.
fn bench_bin() -> std::path::PathBuf {
    static BUILT: OnceLock<std::path::PathBuf> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
            let status = Command::new(env!("CARGO"))
                .args(["build", "-q", "-p", "herald-bench"])
                .current_dir(root)
                .status()
                .expect("cargo build -p herald-bench");
            assert!(status.success(), "building herald-bench failed");
            let target = std::env::var_os("CARGO_TARGET_DIR")
                .map(std::path::PathBuf::from)
                .unwrap_or_else(|| root.join("target"));
            target.join("debug").join("herald-bench")
        })
        .clone()
}

/// Runs one mode with `--json` and returns its result object.
fn run(server: &Server, args: &[&str]) -> serde_json::Value {
    run_args(&["--url", &server.url("")], args)
}

/// Runs one mode with `--json` and the global `flags`, and returns its
/// result object.
fn run_args(flags: &[&str], args: &[&str]) -> serde_json::Value {
    let out = Command::new(bench_bin())
        .arg("--json")
        .args(flags)
        .args(args)
        .output()
        .expect("run herald-bench");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "herald-bench {args:?} failed: {}\nstdout: {stdout}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(stdout.trim()).expect("one JSON object")
}

#[test]
fn the_load_driver_runs_every_mode_and_loses_nothing() {
    let server = Server::start(&["--retention-events", "100000"]);

    let idle = run(&server, &["idle", "--conns", "50"]);
    assert_eq!(idle["opened"], 50, "{idle}");
    assert_eq!(idle["errors"], 0, "{idle}");

    let ws = run(&server, &["idle", "--conns", "20", "--ws"]);
    assert_eq!(ws["opened"], 20, "{ws}");

    let fanout = run(&server, &["fanout", "--subs", "20", "--events", "50"]);
    assert_eq!(fanout["expected"], 1000, "{fanout}");
    assert_eq!(fanout["received"], 1000, "{fanout}");
    assert_eq!(fanout["lost"], 0, "{fanout}");
    assert_eq!(fanout["duplicates"], 0, "{fanout}");
    assert_eq!(fanout["out_of_order"], 0, "{fanout}");

    let topics = run(&server, &["topics", "--subs", "20", "--events", "40"]);
    assert_eq!(topics["expected"], 40, "{topics}");
    assert_eq!(topics["lost"], 0, "{topics}");

    let lp = run(&server, &["longpoll", "--polls", "50"]);
    assert_eq!(lp["woken"], 50, "{lp}");
    assert_eq!(lp["errors"], 0, "{lp}");
}

/// Many clients catching up on one topic's history at once: each gets it
/// all, once and in order.
#[test]
fn the_load_driver_runs_a_reconnect_storm() {
    let server = Server::start(&[]);
    let storm = run(
        &server,
        &[
            "storm",
            "--clients",
            "20",
            "--history",
            "50",
            "--size",
            "256",
        ],
    );
    assert_eq!(storm["served"], 20, "{storm}");
    assert_eq!(storm["lost"], 0, "{storm}");
    assert_eq!(storm["dups"], 0, "{storm}");
    assert_eq!(storm["out_of_order"], 0, "{storm}");
}

/// Subscribers that stop reading beside ones that read everything: the
/// mode runs, and the readers lose nothing.
#[test]
fn the_load_driver_runs_stuck_subscribers_beside_fast_ones() {
    let server = Server::start(&["--write-timeout", "200ms"]);
    let stuck = run(
        &server,
        &[
            "stuck", "--stuck", "20", "--fast", "2", "--events", "400", "--size", "16384",
            "--settle", "10",
        ],
    );
    assert_eq!(stuck["fast_lost"], 0, "{stuck}");
    assert_eq!(stuck["fast_dups"], 0, "{stuck}");
    assert_eq!(stuck["fast_out_of_order"], 0, "{stuck}");
}

#[test]
fn the_load_driver_measures_publish_throughput() {
    let server = Server::start(&[]);
    let p = run(
        &server,
        &[
            "publish",
            "--publishers",
            "4",
            "--secs",
            "1",
            "--topic",
            "smoke",
        ],
    );
    assert_eq!(p["publishers"], 4, "{p}");
    assert_eq!(p["errors"], 0, "{p}");
    assert!(p["events"].as_u64().unwrap() > 0, "{p}");
    assert!(p["events_per_s"].as_u64().unwrap() > 0, "{p}");
    // The server stored exactly one event per 201, warm-up included.
    assert_eq!(p["server_counted"], p["all_201"], "{p}");
    assert!(p["latency"]["p50_ms"].as_f64().is_some(), "{p}");
    assert!(p["latency"]["max_ms"].as_f64().unwrap() > 0.0, "{p}");
}

#[test]
fn the_load_driver_runs_the_task_cycle() {
    let server = Server::start(&[]);
    let t = run(&server, &["tasks", "--workers", "2", "--tasks", "50"]);
    assert_eq!(t["told"], 50, "{t}");
    assert_eq!(t["errors"], 0, "{t}");
    assert_eq!(t["server_succeeded"], 50, "{t}");
    assert!(t["tasks_per_s"].as_u64().unwrap() > 0, "{t}");
    assert!(t["latency"]["p50_ms"].as_f64().is_some(), "{t}");
    assert!(t["latency"]["max_ms"].as_f64().unwrap() > 0.0, "{t}");
}

/// Producers waiting for their own results beside workers: the mode
/// reports a rate and latency, and every task was told exactly once (its
/// own result, the workers' and the server's counts agreeing).
#[test]
fn the_load_driver_runs_producers_beside_workers() {
    let server = Server::start(&[]);
    let c = run(
        &server,
        &[
            "cycle",
            "--producers",
            "4",
            "--workers",
            "2",
            "--secs",
            "1",
            "--warmup",
            "0.2",
        ],
    );
    assert_eq!(c["exactly_once"], true, "{c}");
    assert_eq!(c["errors"], 0, "{c}");
    assert!(c["tasks"].as_u64().unwrap() > 0, "{c}");
    assert!(c["tasks_per_s"].as_u64().unwrap() > 0, "{c}");
    assert_eq!(c["told"], c["sent"], "{c}");
    assert_eq!(c["server"]["succeeded"], c["told"], "{c}");
    assert!(c["latency"]["p99_ms"].as_f64().is_some(), "{c}");
}

#[test]
fn the_load_driver_measures_the_kernel_floor_without_a_server() {
    let f = run_args(
        &[],
        &["floor", "--subs", "20", "--rounds", "5", "--gap-ms", "1"],
    );
    assert_eq!(f["expected"], 100, "{f}");
    assert_eq!(f["received"], 100, "{f}");
    assert_eq!(f["bad"], 0, "{f}");
    assert!(f["sweep_us_per_write"].as_f64().unwrap() > 0.0, "{f}");
    assert!(f["latency"]["max_ms"].as_f64().unwrap() > 0.0, "{f}");
    assert!(f["read_latency"]["max_ms"].as_f64().unwrap() > 0.0, "{f}");
}
