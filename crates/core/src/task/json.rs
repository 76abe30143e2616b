//! The task documents clients and workers read, written straight to bytes.
//!
//! Every answer about a task and every `done` / `error` event carries the
//! task as JSON, several times per task. Building a `serde_json::Value` for
//! each (a map, a string per timestamp, the payload parsed again) was a
//! visible share of a task's server time, so the documents are written here
//! field by field instead. The text is what the `Value` gave: keys in byte
//! order (serde_json's map without `preserve_order` is sorted), compact,
//! and a JSON payload as its canonical text ([`Payload::json`] makes it so
//! on the way in).

use herald_protocol::time::push_rfc3339_ms;

use super::{Payload, Status, Task};

/// Appends `s` as a JSON string.
fn push_str(out: &mut Vec<u8>, s: &str) {
    // Writing a string to a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, s);
}

/// Appends a number as serde_json writes it (a float that is not finite as
/// `null`, as `Value` had it).
fn push_num<N: serde::Serialize>(out: &mut Vec<u8>, n: N) {
    // Writing a number to a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, &n);
}

fn push_time(out: &mut Vec<u8>, ms: Option<u64>) {
    match ms {
        Some(ms) => {
            out.push(b'"');
            push_rfc3339_ms(out, ms);
            out.push(b'"');
        }
        None => out.extend_from_slice(b"null"),
    }
}

fn push_opt_str(out: &mut Vec<u8>, s: Option<&str>) {
    match s {
        Some(s) => push_str(out, s),
        None => out.extend_from_slice(b"null"),
    }
}

fn push_payload(out: &mut Vec<u8>, payload: Option<&Payload>) {
    match payload {
        Some(Payload::Json(text)) => out.extend_from_slice(text.as_bytes()),
        Some(Payload::Text(text)) => push_str(out, text),
        None => out.extend_from_slice(b"null"),
    }
}

/// Appends `"key":` (keys are constants that need no escaping).
fn key(out: &mut Vec<u8>, first: bool, name: &str) {
    if !first {
        out.push(b',');
    }
    out.push(b'"');
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b"\":");
}

/// Appends the task as clients see it at `now` (ms since 1970): `position`
/// shows only while queued, `lease_expires_at` only while running,
/// `available_at` only while it waits out a backoff.
pub(super) fn write_task(out: &mut Vec<u8>, task: &Task, position: Option<u64>, now: u64) {
    // Keys in byte order, as the sorted map wrote them.
    out.push(b'{');
    key(out, true, "attempts");
    push_num(out, task.attempts);
    if let Some(at) = task.waiting_until(now) {
        key(out, false, "available_at");
        push_time(out, Some(at));
    }
    key(out, false, "created_at");
    push_time(out, Some(task.created_ms));
    key(out, false, "error");
    push_opt_str(out, task.error.as_deref());
    key(out, false, "finished_at");
    push_time(out, task.finished_ms);
    key(out, false, "id");
    let mut id = [0u8; uuid::fmt::Hyphenated::LENGTH];
    out.push(b'"');
    out.extend_from_slice(task.id.0.hyphenated().encode_lower(&mut id).as_bytes());
    out.push(b'"');
    key(out, false, "lease_expires_at");
    let lease = task
        .lease
        .as_ref()
        .filter(|_| task.status == Status::Running);
    push_time(out, lease.map(|l| l.expires_ms));
    key(out, false, "max_attempts");
    push_num(out, task.max_attempts);
    key(out, false, "message");
    push_opt_str(out, task.message.as_deref());
    key(out, false, "payload");
    push_payload(out, Some(&task.payload));
    key(out, false, "position");
    match position.filter(|_| task.status == Status::Queued) {
        Some(p) => push_num(out, p),
        None => out.extend_from_slice(b"null"),
    }
    key(out, false, "progress");
    match task.progress {
        Some(p) => push_num(out, p),
        None => out.extend_from_slice(b"null"),
    }
    key(out, false, "queue");
    push_str(out, &task.queue);
    key(out, false, "result");
    push_payload(out, task.result.as_ref());
    key(out, false, "started_at");
    push_time(out, task.started_ms);
    key(out, false, "status");
    push_str(out, task.status.as_str());
    key(out, false, "updated_at");
    push_time(out, Some(task.updated_ms));
    out.push(b'}');
}

/// A claim's answer: `{"lease":{"expires","token"},"task"}` (`lease` is
/// `null` only for a task that is somehow not leased).
pub fn claim_json(task: &Task) -> Vec<u8> {
    let mut out = Vec::with_capacity(640);
    out.extend_from_slice(b"{\"lease\":");
    match &task.lease {
        Some(lease) => {
            out.extend_from_slice(b"{\"expires\":");
            push_time(&mut out, Some(lease.expires_ms));
            out.extend_from_slice(b",\"token\":");
            push_str(&mut out, &lease.token);
            out.push(b'}');
        }
        None => out.extend_from_slice(b"null"),
    }
    out.extend_from_slice(b",\"task\":");
    write_task(&mut out, task, None, crate::event::now_ms());
    out.push(b'}');
    out
}

/// The data of a `progress` event: `{"message","progress"}`.
pub(super) fn progress_json(progress: Option<f64>, message: Option<&str>) -> String {
    let mut out = Vec::with_capacity(48);
    out.push(b'{');
    key(&mut out, true, "message");
    push_opt_str(&mut out, message);
    key(&mut out, false, "progress");
    match progress {
        Some(p) => push_num(&mut out, p),
        None => out.extend_from_slice(b"null"),
    }
    out.push(b'}');
    into_string(out)
}

/// The bytes as text: they are JSON, written from `&str`s and ASCII.
pub(super) fn into_string(bytes: Vec<u8>) -> String {
    String::from_utf8(bytes).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}
