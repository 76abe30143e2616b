//! Operations: liveness and Prometheus metrics.

use std::fmt::Write;
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};

use herald_core::StoreError;
use herald_core::store::Footprint;

use crate::error::ApiError;
use crate::negotiate::Transport;
use crate::state::AppState;

/// `GET /healthz`: `200 {"status":"ok"}` when the store answers and can
/// write; `503` with the error code `store_unreachable` or `disk_full`
/// otherwise (what the store said goes to the log, not the client).
pub async fn healthz(State(state): State<AppState>) -> Result<Response, ApiError> {
    match state.hub().store().health().await {
        Ok(()) => Ok(axum::Json(serde_json::json!({ "status": "ok" })).into_response()),
        Err(StoreError::Full(why)) => Err(ApiError::DiskFull(why)),
        Err(StoreError::Unavailable(why) | StoreError::OutcomeUnknown(why)) => {
            Err(ApiError::StoreUnreachable(why))
        }
        Err(StoreError::Internal(why)) => Err(ApiError::Internal(why)),
    }
}

/// How long a scrape waits for the store's footprint: a store that does
/// not answer must not hold `/metrics` (the rest of it is still worth
/// having); its gauges are left out of that scrape instead.
const FOOTPRINT_WAIT: Duration = Duration::from_secs(1);

/// `GET /metrics`: Prometheus text format. What the recorder holds, then
/// the families computed here at scrape time: the store's footprint and
/// the answers table.
pub async fn metrics(State(state): State<AppState>) -> Result<Response, ApiError> {
    let handle = state
        .metrics()
        .ok_or_else(|| ApiError::Unavailable("metrics are not enabled in this process".into()))?;
    let mut text = handle.render();
    let footprint = tokio::time::timeout(FOOTPRINT_WAIT, state.hub().store().footprint()).await;
    match footprint {
        Ok(Ok(footprint)) => render_footprint(&mut text, footprint),
        Ok(Err(e)) => tracing::warn!(error = %e, "the store's footprint is left out of /metrics"),
        Err(_) => tracing::warn!("the store's footprint took too long; left out of /metrics"),
    }
    state.responses().render(&mut text);
    let mut response = text.into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    Ok(response)
}

/// `herald_topics` and (when the store can say) `herald_store_bytes`.
fn render_footprint(out: &mut String, footprint: Footprint) {
    let _ = write!(
        out,
        "# HELP herald_topics Topics the store keeps.\n\
         # TYPE herald_topics gauge\n\
         herald_topics {}\n",
        footprint.topics
    );
    if let Some(bytes) = footprint.bytes {
        let _ = write!(
            out,
            "# HELP herald_store_bytes Size of the store: the database file and its WAL (durable), \
             Redis's used_memory (redis); not exported for the memory store.\n\
             # TYPE herald_store_bytes gauge\n\
             herald_store_bytes {bytes}\n"
        );
    }
}

/// Makes every metric SPEC names appear from the start, at zero.
pub fn describe_metrics() {
    for t in Transport::ALL {
        metrics::gauge!("herald_subscriptions", "transport" => t.label()).increment(0.0);
    }
    for stack in ["direct", "hyper"] {
        metrics::counter!("herald_subscribe_requests_total", "stack" => stack).increment(0);
    }
    for name in [
        "herald_events_published_total",
        "herald_events_delivered_total",
        "herald_subscribers_dropped_total",
        "herald_store_writes_resent_total",
        "herald_store_outcome_unknown_total",
        "herald_store_reads_shared_total",
    ] {
        metrics::counter!(name).increment(0);
    }
    metrics::describe_gauge!("herald_subscriptions", "Open subscriptions by transport.");
    metrics::describe_counter!(
        "herald_events_published_total",
        "Events stored by publishes."
    );
    metrics::describe_counter!(
        "herald_events_delivered_total",
        "Events written to subscribers, counted once per subscriber."
    );
    metrics::describe_counter!(
        "herald_subscribers_dropped_total",
        "Subscribers cut off because they could not keep up."
    );
    metrics::describe_counter!(
        "herald_subscribe_requests_total",
        "Subscribe requests read (admitted or refused), by the HTTP stack that read them (direct: herald's own HTTP/1; hyper: HTTP/2, WebSocket, and what the direct path leaves)."
    );
    metrics::describe_counter!(
        "herald_store_writes_resent_total",
        "Writes sent to the store again because the answer to an earlier sending was lost (each carries its own id, so it is applied once)."
    );
    metrics::describe_counter!(
        "herald_store_outcome_unknown_total",
        "Writes answered 503 outcome_unknown: the store never confirmed or denied them."
    );
    metrics::describe_histogram!(
        "herald_store_seconds",
        "Time taken by store calls, by operation."
    );
    metrics::describe_counter!(
        "herald_store_reads_shared_total",
        "Store reads answered by another caller's identical read already in flight (the store read once for both)."
    );
    metrics::describe_counter!(
        "herald_refused_total",
        "Requests refused by a limit or a rule, by reason (connections, subscriptions, publish_rate, topics_per_subscription, unauthorized, forbidden)."
    );
    metrics::describe_gauge!("herald_tasks", "Tasks by queue and status.");
    metrics::gauge!("herald_worker_sockets").increment(0.0);
    metrics::describe_gauge!(
        "herald_worker_sockets",
        "Open worker sockets (GET /queues/{queue}/work)."
    );
    metrics::describe_histogram!(
        "herald_task_run_seconds",
        "Time from a task's start to its end, by queue."
    );
    metrics::describe_histogram!(
        "herald_task_claim_wait_seconds",
        "Time a claim waited for a task, by queue."
    );
}
