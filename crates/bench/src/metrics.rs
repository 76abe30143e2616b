//! The server's own account, read from its Prometheus `/metrics`: the
//! subscription gauges tell the driver when the server has really taken (or
//! released) every connection, which the client side alone cannot see.

use std::time::{Duration, Instant};

use crate::net::Target;

/// The whole `/metrics` page.
async fn metrics_text(client: &reqwest::Client, t: &Target) -> String {
    try_metrics_text(client, t).await.expect("GET /metrics")
}

/// The whole `/metrics` page, or why it could not be had.
async fn try_metrics_text(client: &reqwest::Client, t: &Target) -> reqwest::Result<String> {
    client
        .get(format!("{}/metrics", t.base))
        .send()
        .await?
        .text()
        .await
}

/// The value of one series (`name{labels}`) in a `/metrics` page, 0 if
/// absent.
fn series_value(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|r| r.strip_prefix(' ')))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

/// The value of one series (`name{labels}`) from `/metrics`, 0 if absent.
pub async fn metric(client: &reqwest::Client, t: &Target, series: &str) -> f64 {
    series_value(&metrics_text(client, t).await, series)
}

/// [`metric`] for a driver that polls while the server is under load: a
/// failed fetch is an error to count, not a reason to stop.
pub async fn try_metric(
    client: &reqwest::Client,
    t: &Target,
    series: &str,
) -> reqwest::Result<f64> {
    Ok(series_value(&try_metrics_text(client, t).await?, series))
}

/// Polls `/metrics` until `series` satisfies `ok`, at most `limit`. Returns
/// the time it took, or None if it never did.
pub async fn wait_metric(
    client: &reqwest::Client,
    t: &Target,
    series: &str,
    limit: Duration,
    ok: impl Fn(f64) -> bool,
) -> Option<Duration> {
    let start = Instant::now();
    loop {
        if ok(metric(client, t, series).await) {
            return Some(start.elapsed());
        }
        if start.elapsed() > limit {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The value of a labelled series (`name{k="v",…}`) from `/metrics`, found
/// by its labels in any order; 0 if absent (a gauge never set is not
/// exported).
pub async fn labelled_metric(
    client: &reqwest::Client,
    t: &Target,
    name: &str,
    labels: &[(&str, &str)],
) -> f64 {
    let text = metrics_text(client, t).await;
    let want: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
    text.lines()
        .find_map(|l| {
            let (got, value) = l.strip_prefix(name)?.strip_prefix('{')?.split_once('}')?;
            let got: Vec<&str> = got.split(',').collect();
            want.iter()
                .all(|w| got.contains(&w.as_str()))
                .then(|| value.trim().parse().ok())
                .flatten()
        })
        .unwrap_or(0.0)
}
