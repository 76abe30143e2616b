//! Looking inside (issue 16): `GET /topics`, a page of topics by name with
//! what the store keeps of each and this node's subscribers; `GET /queues`,
//! each queue's counts; `GET /queues/{queue}/tasks`, a queue's tasks oldest
//! first. The gate lets only callers with the `admin` scope in
//! ([`crate::access::need`]).

use std::collections::BTreeMap;

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, RawQuery, State};
use axum::response::{IntoResponse, Response};
use herald_core::event::now_ms;
use herald_core::task::{Status, TaskError};
use herald_protocol::time::rfc3339_ms;
use serde_json::{Value, json};

use crate::error::ApiError;
use crate::query::Query;
use crate::state::AppState;

/// Topics per page when the client names no `limit`.
pub const DEFAULT_LIMIT: u64 = 100;
/// The largest page a client may ask for.
pub const MAX_LIMIT: u64 = 1000;

/// `limit` of a listing: [`DEFAULT_LIMIT`] when absent, `1..=MAX_LIMIT`.
fn limit(query: &Query) -> Result<usize, ApiError> {
    let n = query.integer("limit", DEFAULT_LIMIT, 1, MAX_LIMIT)?;
    Ok(usize::try_from(n).unwrap_or(usize::MAX))
}

/// `GET /topics?prefix=&limit=&after=`: `{"topics":[…],"next"}`; `next` is
/// the `after` of the following page, absent on the last one.
pub async fn topics(
    State(state): State<AppState>,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let query = Query::parse(raw.as_deref());
    let limit = limit(&query)?;
    let prefix = query.get("prefix").unwrap_or("");
    let after = query.get("after");
    // One more than asked tells whether another page follows.
    let mut found = state.hub().store().topics(prefix, after, limit + 1).await?;
    let more = found.len() > limit;
    found.truncate(limit);
    let topics: Vec<Value> = found
        .iter()
        .map(|t| {
            json!({
                "topic": t.topic.as_str(),
                "events": t.events,
                "first_id": t.first.map(|id| id.to_string()),
                "last_id": t.last.to_string(),
                "last_time": rfc3339_ms(t.last.ms),
                "subscribers": state.hub().subscribers(&t.topic),
            })
        })
        .collect();
    let mut body = json!({ "topics": topics });
    if more && let Some(last) = found.last() {
        body["next"] = json!(last.topic.as_str());
    }
    Ok(axum::Json(body).into_response())
}

/// `GET /queues`: `{"queues":[{"queue","queued","running","succeeded",
/// "failed","cancelled","oldest_queued_ms"}…]}`, by name.
pub async fn queues(State(state): State<AppState>) -> Result<Response, ApiError> {
    let store = state.tasks().store();
    let mut counts: BTreeMap<String, [u64; 5]> = BTreeMap::new();
    for (queue, status, n) in store.counts().await? {
        let at = Status::ALL.iter().position(|s| *s == status).unwrap_or(0);
        counts.entry(queue).or_default()[at] += n;
    }
    let now = now_ms();
    let mut queues = Vec::with_capacity(counts.len());
    for (queue, n) in counts {
        if n.iter().all(|&c| c == 0) {
            continue;
        }
        let oldest = if n[0] > 0 {
            store.oldest_queued(&queue).await?
        } else {
            None
        };
        let mut q = json!({
            "queue": queue,
            "oldest_queued_ms": oldest.map(|ms| now.saturating_sub(ms)),
        });
        for (status, count) in Status::ALL.iter().zip(n) {
            q[status.as_str()] = json!(count);
        }
        queues.push(q);
    }
    Ok(axum::Json(json!({ "queues": queues })).into_response())
}

/// `GET /queues/{queue}/tasks?status=&limit=&after=`: `{"tasks":[…],"next"}`,
/// oldest first; `after` is a task id of this queue.
pub async fn tasks(
    State(state): State<AppState>,
    path: Result<Path<String>, PathRejection>,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let queue = crate::publish::path_topic(path)?;
    let queue = queue.as_str();
    let query = Query::parse(raw.as_deref());
    let limit = limit(&query)?;
    let status = match query.get("status") {
        None => None,
        Some(raw) => Some(
            Status::ALL
                .into_iter()
                .find(|s| s.as_str() == raw)
                .ok_or_else(|| ApiError::bad_query("status", format!("{raw:?} is not a status")))?,
        ),
    };
    let store = state.tasks().store();
    let after = match query.get("after") {
        None => None,
        Some(raw) => {
            let unknown = || ApiError::bad_query("after", format!("{raw:?} is no task of {queue}"));
            let id = crate::tasks::task_id(raw).map_err(|_| unknown())?;
            match store.get(id).await? {
                Some((t, _)) if t.queue == queue => Some(t.seq),
                _ => return Err(unknown()),
            }
        }
    };
    let mut found = store.list(queue, status, after, limit + 1).await?;
    let more = found.len() > limit;
    found.truncate(limit);
    // Queued tasks in a page are consecutive in their queue: the first one's
    // position, counted by the store, gives the others'.
    let mut position = None;
    let mut tasks = Vec::with_capacity(found.len());
    for task in &found {
        let here = if task.status == Status::Queued {
            let p = match position {
                Some(p) => p + 1,
                None => match store.get(task.id).await {
                    Ok(got) => got.and_then(|(_, p)| p).unwrap_or(1),
                    Err(TaskError::NotFound) => 1,
                    Err(e) => return Err(e.into()),
                },
            };
            position = Some(p);
            Some(p)
        } else {
            None
        };
        tasks.push(task.to_json(here));
    }
    let mut body = json!({ "tasks": tasks });
    if more && let Some(last) = found.last() {
        body["next"] = json!(last.id.to_string());
    }
    Ok(axum::Json(body).into_response())
}
