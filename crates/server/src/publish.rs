//! Publishing: one event (`POST /topics/{topic}`) or an NDJSON batch
//! (`POST /publish`), answered `201` once stored.

use axum::body::Body;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use herald_core::store::{Appended, NewEvent};
use herald_core::{EventType, Topic};
use herald_protocol::ndjson;
use serde::{Deserialize, Serialize};

use crate::body::read_text;
use crate::error::ApiError;
use crate::query::Query;
use crate::state::AppState;

/// The longest idempotency key accepted.
const MAX_KEY_LEN: usize = 256;

/// Topics whose events only herald writes: a task's story (`tasks.{id}`)
/// must not be faked by a publisher.
pub const RESERVED_PREFIX: &str = "tasks.";

/// A topic a client may publish to.
pub fn publishable(topic: Topic) -> Result<Topic, ApiError> {
    if topic.as_str().starts_with(RESERVED_PREFIX) {
        return Err(ApiError::Reserved(topic.as_str().to_owned()));
    }
    Ok(topic)
}

pub fn topic(name: &str) -> Result<Topic, ApiError> {
    Topic::new(name).map_err(|e| ApiError::BadTopic {
        name: name.to_owned(),
        reason: e.to_string(),
    })
}

pub fn event_type(name: Option<&str>) -> Result<EventType, ApiError> {
    match name {
        None => Ok(EventType::message()),
        Some(n) => EventType::new(n).map_err(|e| ApiError::BadEventType {
            name: n.to_owned(),
            reason: e.to_string(),
        }),
    }
}

/// A topic from the path; a path that is not even UTF-8 is a bad topic too.
pub fn path_topic(path: Result<Path<String>, PathRejection>) -> Result<Topic, ApiError> {
    match path {
        Ok(Path(name)) => topic(&name),
        Err(e) => Err(ApiError::BadTopic {
            name: String::new(),
            reason: e.body_text(),
        }),
    }
}

pub fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(value) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    let key = value
        .to_str()
        .ok()
        .filter(|k| {
            !k.is_empty() && k.len() <= MAX_KEY_LEN && k.bytes().all(|b| b.is_ascii_graphic())
        })
        .ok_or_else(|| {
            ApiError::BadRequest(format!(
                "Idempotency-Key must be 1 to {MAX_KEY_LEN} visible ASCII characters"
            ))
        })?;
    Ok(Some(key.to_owned()))
}

/// `{"id","topic","event","time"}` of a stored event: a struct of borrowed
/// strings, written straight into the body (a `serde_json::Value` would
/// allocate a map and a string per field on every publish).
#[derive(Serialize)]
struct Receipt<'a> {
    id: &'a str,
    topic: &'a str,
    event: &'a str,
    time: &'a str,
}

/// Appends `a`'s receipt to `body`.
fn receipt(body: &mut Vec<u8>, a: &Appended) {
    let (id, time) = (a.event.id.to_string(), a.event.time());
    let r = Receipt {
        id: &id,
        topic: a.event.topic.as_str(),
        event: a.event.kind.as_str(),
        time: &time,
    };
    // Writing a struct of strings into a Vec cannot fail.
    let _ = serde_json::to_writer(body, &r);
}

/// `201` with a JSON body.
fn created(body: Vec<u8>, replayed: bool) -> Response {
    let mut response = (
        StatusCode::CREATED,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        body,
    )
        .into_response();
    if replayed {
        response
            .headers_mut()
            .insert("idempotent-replayed", HeaderValue::from_static("true"));
    }
    response
}

/// `POST /topics/{topic}[?event=TYPE]`: the body is the event's data.
pub async fn one(
    State(state): State<AppState>,
    caller: crate::access::Caller,
    path: Result<Path<String>, PathRejection>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let topic = publishable(path_topic(path)?)?;
    let query = Query::parse(raw.as_deref());
    let kind = event_type(query.get("event"))?;
    let idempotency_key = idempotency_key(&headers)?;
    let data = read_text(&headers, body, state.config()).await?;
    let new = NewEvent {
        topic,
        kind,
        data,
        idempotency_key: idempotency_key.clone(),
    };
    state.limits().publish(&caller.client, 1)?;
    let out = state
        .hub()
        .publish(vec![new])
        .await
        .map_err(|e| ApiError::from(e).keyed(idempotency_key.as_deref()))?;
    let appended = out.first().ok_or_else(|| {
        ApiError::Internal("the store answered an append of one event with none".into())
    })?;
    let mut body = Vec::with_capacity(128);
    receipt(&mut body, appended);
    Ok(created(body, appended.replayed))
}

/// One line of a batch.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BatchLine {
    topic: String,
    #[serde(default)]
    event: Option<String>,
    data: String,
    #[serde(default)]
    idempotency_key: Option<String>,
}

/// `POST /publish`: NDJSON, one `{"topic","event"?,"data"}` a line, stored all
/// or nothing. An `Idempotency-Key` header keys line *i* as `KEY:i` (a line's
/// own `idempotency_key` wins), so a retried batch publishes nothing twice.
pub async fn batch(
    State(state): State<AppState>,
    caller: crate::access::Caller,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let batch_key = idempotency_key(&headers)?;
    let text = read_text(&headers, body, state.config()).await?;
    let mut batch = Vec::new();
    for (line, raw) in ndjson::lines(&text) {
        let bad = |reason: String| ApiError::BadBatch { line, reason };
        let parsed: BatchLine = serde_json::from_str(raw).map_err(|e| bad(e.to_string()))?;
        let topic = topic(&parsed.topic)
            .and_then(publishable)
            .map_err(|e| bad(e.to_string()))?;
        let kind = event_type(parsed.event.as_deref()).map_err(|e| bad(e.to_string()))?;
        let idempotency_key = parsed
            .idempotency_key
            .or_else(|| batch_key.as_ref().map(|k| format!("{k}:{}", batch.len())));
        batch.push(NewEvent {
            topic,
            kind,
            data: parsed.data,
            idempotency_key,
        });
    }
    if batch.is_empty() {
        return Err(ApiError::BadRequest("the batch holds no events".into()));
    }
    // All or nothing: one line outside the token's scope refuses the batch.
    let actions: Vec<_> = batch
        .iter()
        .map(|e| crate::auth::Action::Publish(e.topic.as_str()))
        .collect();
    caller.allow(&actions)?;
    state.limits().publish(&caller.client, batch.len())?;
    let out = state
        .hub()
        .publish(batch)
        .await
        .map_err(|e| ApiError::from(e).keyed(batch_key.as_deref()))?;
    let replayed = out.iter().all(|a| a.replayed);
    let mut body = Vec::with_capacity(16 + 128 * out.len());
    body.extend_from_slice(b"{\"events\":[");
    for (i, a) in out.iter().enumerate() {
        if i > 0 {
            body.push(b',');
        }
        receipt(&mut body, a);
    }
    body.extend_from_slice(b"]}");
    Ok(created(body, replayed))
}
