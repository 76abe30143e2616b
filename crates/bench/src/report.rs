//! How results become numbers and text: rounding, latency histograms and
//! their percentiles, and the printed result (one JSON line, or a markdown
//! table of the columns worth reading for that mode).

use hdrhistogram::Histogram;
use serde_json::{Value, json};

/// `x` rounded to `digits` decimals, so JSON and tables carry no noise.
pub fn round(x: f64, digits: i32) -> f64 {
    let m = 10f64.powi(digits);
    (x * m).round() / m
}

/// A histogram of microseconds from 1 µs to an hour at 3 significant
/// digits: wide enough that no latency of a run is ever out of range.
pub fn new_hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).unwrap()
}

/// Microseconds as milliseconds, to 2 decimals.
pub fn ms(us: u64) -> f64 {
    round(us as f64 / 1000.0, 2)
}

/// p50, p99, p99.9 and max of a histogram of microseconds, in ms; null when
/// nothing was recorded, so an empty run does not report zero latency.
pub fn latency_json(h: &Histogram<u64>) -> Value {
    if h.is_empty() {
        return json!(null);
    }
    json!({
        "p50_ms": ms(h.value_at_quantile(0.5)),
        "p99_ms": ms(h.value_at_quantile(0.99)),
        "p999_ms": ms(h.value_at_quantile(0.999)),
        "max_ms": ms(h.max()),
    })
}

/// Prints a result: one JSON line (every field), or a markdown table of the
/// chosen (flattened, dotted) fields, in that order.
pub fn report(json_out: bool, v: &Value) {
    if json_out {
        println!("{v}");
        return;
    }
    let mut all = Vec::new();
    flatten("", v, &mut all);
    let mode = v["mode"].as_str().unwrap_or_default();
    let cols: Vec<(String, String)> = columns(mode)
        .iter()
        .map(|c| {
            let val = all
                .iter()
                .find(|(k, _)| k == c)
                .map(|(_, v)| v.clone())
                .unwrap_or_else(|| "–".into());
            (c.replace("cpu.", ""), val)
        })
        .collect();
    print_table(&cols);
}

/// The fields a table shows for `mode`, CPU last: the JSON has every field,
/// a table only what fits on a line and answers the mode's question.
fn columns(mode: &str) -> Vec<&'static str> {
    let cpu = [
        "cpu.wall_s",
        "cpu.driver_cores",
        "cpu.server_cores",
        "cpu.driver_cpu_s",
        "cpu.server_cpu_s",
    ];
    let mut chosen: Vec<&str> = match mode {
        "idle" => vec![
            "transport",
            "conns",
            "opened",
            "errors",
            "open_s",
            "conns_per_s",
            "open_ms.p50_ms",
            "open_ms.max_ms",
            "rss_per_conn_bytes",
            "release_s",
        ],
        "publish" => vec![
            "publishers",
            "events",
            "events_per_s",
            "latency.p50_ms",
            "latency.p99_ms",
            "latency.p999_ms",
            "latency.max_ms",
            "errors",
        ],
        "tasks" => vec![
            "workers",
            "tasks",
            "told",
            "tasks_per_s",
            "latency.p50_ms",
            "latency.p99_ms",
            "latency.max_ms",
            "errors",
        ],
        "cycle" => vec![
            "wait",
            "worker",
            "producers",
            "workers",
            "tasks",
            "tasks_per_s",
            "latency.p50_ms",
            "latency.p99_ms",
            "latency.max_ms",
            "server_cpu_us_per_task",
            "exactly_once",
            "errors",
        ],
        "floor" => vec![
            "subs",
            "rounds",
            "received",
            "sweep_us_per_write",
            "latency.p50_ms",
            "latency.p99_ms",
            "latency.max_ms",
            "read_latency.p99_ms",
        ],
        "stuck" => vec![
            "stuck",
            "fast",
            "events",
            "size",
            "published_per_s",
            "publish_latency.p50_ms",
            "publish_latency.p99_ms",
            "publish_latency.max_ms",
            "fast_lost",
            "fast_dups",
            "fast_out_of_order",
            "fast_gaps",
            "fast_reconnects",
            "fast_latency.p50_ms",
            "fast_latency.p99_ms",
            "fast_latency.max_ms",
            "dropped",
            "cut_all_s",
            "rss_before",
            "rss_peak",
            "rss_after",
            "threads_peak",
            "tcp_mem_peak",
        ],
        "storm" => vec![
            "clients",
            "history",
            "size",
            "served",
            "lost",
            "dups",
            "out_of_order",
            "errors",
            "time_to_serve_s",
            "time_to_all.p50_ms",
            "time_to_all.p99_ms",
            "time_to_all.max_ms",
            "rss_before",
            "rss_peak",
            "rss_after",
            "threads_before",
            "threads_peak",
        ],
        "longpoll" => vec![
            "polls",
            "woken",
            "errors",
            "park_s",
            "publish_ms",
            "first_ms",
            "wake.p50_ms",
            "wake.p99_ms",
            "wake.max_ms",
            "read_wake.p50_ms",
            "read_wake.max_ms",
        ],
        _ => vec![
            "mode",
            "subs",
            "topics",
            "events",
            "rate",
            "open_s",
            "published_per_s",
            "delivered_per_s",
            "latency.p50_ms",
            "latency.p99_ms",
            "latency.p999_ms",
            "latency.max_ms",
            "read_latency.p50_ms",
            "read_latency.p99_ms",
            "lost",
            "duplicates",
            "out_of_order",
            "reconnects",
        ],
    };
    chosen.extend(cpu);
    chosen
}

/// A one-row markdown table (header, rule, values), after a blank line.
fn print_table(cols: &[(String, String)]) {
    println!();
    println!(
        "| {} |",
        cols.iter()
            .map(|(k, _)| k.as_str())
            .collect::<Vec<_>>()
            .join(" | ")
    );
    println!("|{}", "---|".repeat(cols.len()));
    println!(
        "| {} |",
        cols.iter()
            .map(|(_, v)| v.as_str())
            .collect::<Vec<_>>()
            .join(" | ")
    );
}

/// Flattens nested objects into (`a.b`, text) pairs, so a table can name a
/// nested field by its dotted path; null reads as "–".
fn flatten(prefix: &str, v: &Value, out: &mut Vec<(String, String)>) {
    match v {
        Value::Object(m) => {
            for (k, v) in m {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                flatten(&key, v, out);
            }
        }
        Value::Null => out.push((prefix.to_owned(), "–".into())),
        Value::String(s) => out.push((prefix.to_owned(), s.clone())),
        other => out.push((prefix.to_owned(), other.to_string())),
    }
}
