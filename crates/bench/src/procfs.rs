//! What /proc says about the two processes of a run: CPU time and resident
//! set of this driver and, with `--server-pid`, of the server; and CPU marks
//! that turn two readings into seconds and cores, so a result shows which
//! side was the bottleneck.

use std::sync::OnceLock;
use std::time::Instant;

use serde_json::{Value, json};

use crate::report::round;

/// Clock ticks per second, the unit of the CPU times in `/proc/PID/stat`.
fn clk_tck() -> f64 {
    static TCK: OnceLock<f64> = OnceLock::new();
    *TCK.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(100.0)
    })
}

/// utime + stime of a process, in seconds (`pid` "self" for this one).
pub fn cpu_secs(pid: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = after.split_whitespace().collect();
    // After the command come fields 3.. ; utime is field 14, stime 15.
    let utime: f64 = f.get(11)?.parse().ok()?;
    let stime: f64 = f.get(12)?.parse().ok()?;
    Some((utime + stime) / clk_tck())
}

/// The number after `field` (e.g. `"VmRSS:"`) in `/proc/PID/status`.
fn status_field(pid: &str, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// VmRSS in bytes.
pub fn rss_bytes(pid: &str) -> Option<u64> {
    Some(status_field(pid, "VmRSS:")? * 1024)
}

/// The process's thread count.
pub fn threads(pid: &str) -> Option<u64> {
    status_field(pid, "Threads:")
}

/// Memory the kernel holds for TCP sockets, system-wide (`mem` on the
/// `TCP:` line of `/proc/net/sockstat`, in pages), in bytes: what the send
/// queues of subscribers that do not read cost, which no RSS shows.
pub fn tcp_mem_bytes() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/net/sockstat").ok()?;
    let line = stat.lines().find(|l| l.starts_with("TCP:"))?;
    let mut it = line.split_whitespace();
    it.find(|w| *w == "mem")?;
    let pages: u64 = it.next()?.parse().ok()?;
    Some(pages * 4096)
}

/// `--server-pid`, set once at start so every mode can read it without
/// passing it down.
static SERVER_PID: OnceLock<Option<String>> = OnceLock::new();

/// Records `--server-pid`; called once, before any mode runs.
pub fn set_server_pid(pid: Option<u32>) {
    SERVER_PID.set(pid.map(|p| p.to_string())).unwrap();
}

/// The server's pid as /proc names it, if `--server-pid` was given.
pub fn server_pid() -> Option<String> {
    SERVER_PID.get().cloned().flatten()
}

/// A point in time with both processes' CPU clocks.
pub struct CpuMark {
    at: Instant,
    own: f64,
    server: Option<f64>,
}

impl CpuMark {
    pub fn now() -> CpuMark {
        CpuMark {
            at: Instant::now(),
            own: cpu_secs("self").unwrap_or(0.0),
            server: server_pid().and_then(|p| cpu_secs(&p)),
        }
    }

    /// CPU used since this mark, as JSON: seconds and cores (CPU s / wall s).
    pub fn since(&self) -> Value {
        let end = CpuMark::now();
        let wall = end.at.duration_since(self.at).as_secs_f64();
        let own = end.own - self.own;
        let server = match (self.server, end.server) {
            (Some(a), Some(b)) => Some(b - a),
            _ => None,
        };
        json!({
            "wall_s": round(wall, 3),
            "driver_cpu_s": round(own, 2),
            "driver_cores": round(own / wall, 2),
            "server_cpu_s": server.map(|s| round(s, 2)),
            "server_cores": server.map(|s| round(s / wall, 2)),
        })
    }
}
