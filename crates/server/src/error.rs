//! The one error type of the HTTP layer: each case knows its status and its
//! stable `code`; internals are logged, never sent.

use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use herald_core::StoreError;

use crate::answer::Whole;

/// An error answered as `{"error":{"code","message"}}`.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("invalid topic {name:?}: {reason}")]
    BadTopic { name: String, reason: String },
    #[error("invalid event type {name:?}: {reason}")]
    BadEventType { name: String, reason: String },
    #[error("invalid value for {param}: {reason}")]
    BadQuery { param: &'static str, reason: String },
    #[error("{0}")]
    BadRequest(String),
    #[error("the body must be UTF-8 text")]
    NotUtf8,
    #[error("the body is larger than the limit of {limit} bytes")]
    TooLarge { limit: usize },
    #[error("batch line {line}: {reason}")]
    BadBatch { line: usize, reason: String },
    #[error("not found")]
    NotFound,
    #[error("{0:?} is not a task id")]
    BadTaskId(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Timeout(String),
    #[error("the request head is larger than 16 KiB")]
    HeadTooLarge,
    #[error("topic {0:?} is written by herald itself (tasks.* carry task events)")]
    Reserved(String),
    #[error("method not allowed")]
    MethodNotAllowed,
    #[error("{0}")]
    Unavailable(String),
    /// The store cannot be reached; the detail is for the log.
    #[error("the store is unavailable; nothing was changed; retry later")]
    StoreDown(String),
    /// A write was sent and never confirmed (see
    /// [`StoreError::OutcomeUnknown`]); `key` is the `Idempotency-Key` the
    /// client can retry with, when the call had one.
    #[error("{}", outcome_unknown_message(.key.as_deref()))]
    OutcomeUnknown { key: Option<String>, detail: String },
    #[error("internal error")]
    Internal(String),
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadTopic { .. }
            | ApiError::BadEventType { .. }
            | ApiError::BadQuery { .. }
            | ApiError::BadRequest(_)
            | ApiError::BadBatch { .. }
            | ApiError::BadTaskId(_) => StatusCode::BAD_REQUEST,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::Timeout(_) => StatusCode::REQUEST_TIMEOUT,
            ApiError::HeadTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            ApiError::Reserved(_) => StatusCode::FORBIDDEN,
            ApiError::NotUtf8 => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::NotFound => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::Unavailable(_) | ApiError::StoreDown(_) | ApiError::OutcomeUnknown { .. } => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The stable, snake_case code clients may match on.
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::BadTopic { .. } => "bad_topic",
            ApiError::BadEventType { .. } => "bad_event_type",
            ApiError::BadQuery { .. } => "bad_query",
            ApiError::BadRequest(_) => "bad_request",
            ApiError::NotUtf8 => "not_utf8",
            ApiError::TooLarge { .. } => "too_large",
            ApiError::BadBatch { .. } => "bad_batch",
            ApiError::NotFound => "not_found",
            ApiError::BadTaskId(_) => "bad_task_id",
            ApiError::Conflict(_) => "conflict",
            ApiError::Timeout(_) => "timeout",
            ApiError::HeadTooLarge => "head_too_large",
            ApiError::Reserved(_) => "reserved_topic",
            ApiError::MethodNotAllowed => "method_not_allowed",
            ApiError::Unavailable(_) | ApiError::StoreDown(_) => "unavailable",
            ApiError::OutcomeUnknown { .. } => "outcome_unknown",
            ApiError::Internal(_) => "internal",
        }
    }

    /// Names the `Idempotency-Key` a write was made with, so an unknown
    /// outcome tells the client what to retry with.
    pub fn keyed(self, key: Option<&str>) -> ApiError {
        match self {
            ApiError::OutcomeUnknown { detail, .. } => ApiError::OutcomeUnknown {
                key: key.map(str::to_owned),
                detail,
            },
            other => other,
        }
    }

    pub fn bad_query(param: &'static str, reason: impl Into<String>) -> ApiError {
        ApiError::BadQuery {
            param,
            reason: reason.into(),
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Unavailable(m) => ApiError::StoreDown(m),
            StoreError::OutcomeUnknown(detail) => ApiError::OutcomeUnknown { key: None, detail },
            StoreError::Internal(m) => ApiError::Internal(m),
        }
    }
}

impl From<herald_core::task::TaskError> for ApiError {
    fn from(e: herald_core::task::TaskError) -> Self {
        use herald_core::task::TaskError;
        match e {
            TaskError::NotFound => ApiError::NotFound,
            TaskError::Conflict(why) => ApiError::Conflict(why),
            TaskError::Store(e) => e.into(),
        }
    }
}

fn outcome_unknown_message(key: Option<&str>) -> String {
    let what = "the store did not confirm the write: it may or may not have happened";
    match key {
        Some(_) => format!("{what}; retrying with the same Idempotency-Key is safe"),
        None => format!("{what}; send an Idempotency-Key to make a retry safe"),
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        self.whole().into_response()
    }
}

impl ApiError {
    /// The answer: `{"error":{"code","message"}}` with the status. Logs
    /// what a server error was about; internals never reach the client.
    pub fn whole(self) -> Whole {
        let status = self.status();
        if status == StatusCode::SERVICE_UNAVAILABLE {
            // Expected while a store is down: one line per refusal, no alarm.
            tracing::warn!(error = %self, detail = ?self, "request refused");
        } else if status.is_server_error() {
            tracing::error!(error = %self, detail = ?self, "request failed");
        }
        let message = match &self {
            ApiError::Internal(_) => "internal error".to_owned(),
            other => other.to_string(),
        };
        let mut error = serde_json::json!({ "code": self.code(), "message": message });
        if let ApiError::OutcomeUnknown { key: Some(key), .. } = &self {
            error["idempotency_key"] = key.as_str().into();
        }
        let body = serde_json::json!({ "error": error });
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        if matches!(
            self,
            ApiError::StoreDown(_) | ApiError::OutcomeUnknown { .. }
        ) {
            headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        Whole {
            status,
            headers,
            body: Bytes::from(body.to_string()),
        }
    }
}
