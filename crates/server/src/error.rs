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
    /// `/api/queue?id=` answers an id nobody knows with `400` (SPEC), under
    /// the same code as a malformed one, but says which it was.
    #[error("no task has the id {0:?}")]
    UnknownTaskId(String),
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
    /// No token where one is needed: `401` with `WWW-Authenticate: Bearer`.
    #[error("{0}")]
    Unauthorized(String),
    /// A token was given but is not accepted (malformed, badly signed,
    /// expired, another issuer…): `401` with `WWW-Authenticate: Bearer
    /// error="invalid_token"` (RFC 6750 §3.1). Same code as
    /// [`ApiError::Unauthorized`]; only the header tells them apart.
    #[error("{0}")]
    InvalidToken(String),
    /// A valid token whose scopes do not cover the request: `403`.
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    Unavailable(String),
    /// The store cannot be reached; the detail is for the log.
    #[error("the store is unavailable; nothing was changed; retry later")]
    StoreDown(String),
    /// `/healthz`: the store does not answer (Redis down, the database
    /// cannot be read); the detail is for the log.
    #[error("the store cannot be reached")]
    StoreUnreachable(String),
    /// `/healthz`: the store's last write found no room (a full disk, or
    /// `--max-db-size` reached); the detail is for the log.
    #[error("the store has no room to write")]
    DiskFull(String),
    /// A write was sent and never confirmed (see
    /// [`StoreError::OutcomeUnknown`]); `key` is the `Idempotency-Key` the
    /// client can retry with, when the call had one.
    #[error("{}", outcome_unknown_message(.key.as_deref()))]
    OutcomeUnknown { key: Option<String>, detail: String },
    /// A limit was reached (`429`): try again after `retry_after` seconds.
    #[error("{message}")]
    TooMany { message: String, retry_after: u64 },
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
            | ApiError::BadTaskId(_)
            | ApiError::UnknownTaskId(_) => StatusCode::BAD_REQUEST,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::Timeout(_) => StatusCode::REQUEST_TIMEOUT,
            ApiError::HeadTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            ApiError::Reserved(_) | ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::Unauthorized(_) | ApiError::InvalidToken(_) => StatusCode::UNAUTHORIZED,
            ApiError::NotUtf8 => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::NotFound => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::Unavailable(_)
            | ApiError::StoreDown(_)
            | ApiError::StoreUnreachable(_)
            | ApiError::DiskFull(_)
            | ApiError::OutcomeUnknown { .. } => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::TooMany { .. } => StatusCode::TOO_MANY_REQUESTS,
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
            ApiError::BadTaskId(_) | ApiError::UnknownTaskId(_) => "bad_task_id",
            ApiError::Conflict(_) => "conflict",
            ApiError::Timeout(_) => "timeout",
            ApiError::HeadTooLarge => "head_too_large",
            ApiError::Reserved(_) => "reserved_topic",
            ApiError::MethodNotAllowed => "method_not_allowed",
            ApiError::Unauthorized(_) | ApiError::InvalidToken(_) => "unauthorized",
            ApiError::Forbidden(_) => "forbidden",
            ApiError::Unavailable(_) | ApiError::StoreDown(_) => "unavailable",
            ApiError::StoreUnreachable(_) => "store_unreachable",
            ApiError::DiskFull(_) => "disk_full",
            ApiError::OutcomeUnknown { .. } => "outcome_unknown",
            ApiError::TooMany { .. } => "too_many_requests",
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

impl From<crate::auth::AuthError> for ApiError {
    fn from(e: crate::auth::AuthError) -> Self {
        if e.token_presented() {
            ApiError::InvalidToken(e.to_string())
        } else {
            ApiError::Unauthorized(e.to_string())
        }
    }
}

impl From<crate::auth::Denied> for ApiError {
    fn from(d: crate::auth::Denied) -> Self {
        match d {
            crate::auth::Denied::Unauthorized(e) => e.into(),
            crate::auth::Denied::Forbidden(why) => ApiError::Forbidden(why),
        }
    }
}

/// Counts a refusal (a limit, a missing or bad token, a scope) by its
/// reason in `herald_refused_total`.
pub fn refused(reason: &'static str) {
    metrics::counter!("herald_refused_total", "reason" => reason).increment(1);
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            // A write refused for want of room is, to its client, one more
            // write the store could not take now.
            StoreError::Unavailable(m) | StoreError::Full(m) => ApiError::StoreDown(m),
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
        // Limits count their own refusals where they are made.
        match &self {
            ApiError::Unauthorized(_) | ApiError::InvalidToken(_) => {
                refused("unauthorized");
            }
            ApiError::Forbidden(_) => refused("forbidden"),
            _ => {}
        }
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
        if let ApiError::TooMany { retry_after, .. } = &self {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(*retry_after));
        }
        // RFC 6750 §3: a 401 says which scheme would do; `error` only when
        // a token was given and refused.
        match &self {
            ApiError::Unauthorized(_) => {
                headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            ApiError::InvalidToken(_) => {
                headers.insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer error=\"invalid_token\""),
                );
            }
            _ => {}
        }
        Whole {
            status,
            headers,
            body: Bytes::from(body.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::{AuthError, Denied};

    fn challenge(e: ApiError) -> (StatusCode, Option<String>, String) {
        let whole = e.whole();
        let header = whole
            .headers
            .get(header::WWW_AUTHENTICATE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let body = String::from_utf8_lossy(&whole.body).into_owned();
        (whole.status, header, body)
    }

    #[test]
    fn refusals_by_auth_are_401_with_a_challenge_or_403() {
        let (status, header, body) = challenge(AuthError::Missing.into());
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert_eq!(header.as_deref(), Some("Bearer"));
        assert!(body.contains(r#""code":"unauthorized""#), "{body}");
        let (status, header, _) = challenge(AuthError::Expired.into());
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert_eq!(header.as_deref(), Some(r#"Bearer error="invalid_token""#));
        let (status, header, body) = challenge(Denied::Forbidden("no".into()).into());
        assert_eq!(status, StatusCode::FORBIDDEN);
        assert_eq!(header, None);
        assert!(body.contains(r#""code":"forbidden""#), "{body}");
    }
}
