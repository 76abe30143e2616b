//! Reading request bodies under the configured size limit, as UTF-8, and
//! as JSON when a route takes JSON.

use axum::body::Body;
use axum::http::{HeaderMap, header};
use http_body_util::{BodyExt, LengthLimitError, Limited};

use crate::error::ApiError;
use crate::state::ServerConfig;

/// Reads the whole body as text: `413` past the configured size (before
/// reading, when `Content-Length` already says so), `408` if it does not
/// arrive within the body timeout, `415` if it is not UTF-8.
pub async fn read_text(
    headers: &HeaderMap,
    body: Body,
    config: &ServerConfig,
) -> Result<String, ApiError> {
    let limit = config.max_body;
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(ApiError::TooLarge { limit });
    }
    let collected = tokio::time::timeout(config.body_timeout, Limited::new(body, limit).collect())
        .await
        .map_err(|_| ApiError::Timeout("the request body did not arrive in time".into()))?;
    let bytes = match collected {
        Ok(collected) => collected.to_bytes(),
        Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => {
            return Err(ApiError::TooLarge { limit });
        }
        Err(e) => {
            return Err(ApiError::BadRequest(format!(
                "could not read the body: {e}"
            )));
        }
    };
    String::from_utf8(bytes.into()).map_err(|_| ApiError::NotUtf8)
}

/// A JSON body as a task payload, in its canonical form
/// ([`Payload::json`]): parsed once, as every later read parses it, so JSON
/// that would not read back (invalid, or nested deeper than `serde_json`'s
/// limit of 128) is refused here (`400`) rather than read back as `null`.
pub fn json_payload(text: String) -> Result<herald_core::task::Payload, ApiError> {
    herald_core::task::Payload::json(text)
        .map_err(|e| ApiError::BadRequest(format!("the body is not valid JSON: {e}")))
}

/// `text` as the JSON object `T` (`shape` names it in the error). Only an
/// object will do: serde would otherwise read a struct from an array.
pub fn json_object<T: serde::de::DeserializeOwned>(text: &str, shape: &str) -> Result<T, ApiError> {
    let bad = |why: String| ApiError::BadRequest(format!("expected {shape}: {why}"));
    let value: serde_json::Value = serde_json::from_str(text).map_err(|e| bad(e.to_string()))?;
    if !value.is_object() {
        return Err(bad("a JSON object".into()));
    }
    serde_json::from_value(value).map_err(|e| bad(e.to_string()))
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    use super::*;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)] // read by serde
    struct Shape {
        error: String,
        #[serde(default)]
        retry: bool,
    }

    #[test]
    fn only_objects_of_the_shape_are_read() {
        assert!(json_object::<Shape>(r#"{"error":"boom","retry":true}"#, "x").is_ok());
        for bad in [
            r#"["boom",true]"#,
            "[]",
            r#""boom""#,
            "{}",
            r#"{"error":1}"#,
            "{",
        ] {
            assert!(json_object::<Shape>(bad, "x").is_err(), "{bad}");
        }
    }

    #[test]
    fn json_is_refused_exactly_when_it_would_not_read_back() {
        let nested =
            |n: usize, open: &str, close: &str| format!("{}1{}", open.repeat(n), close.repeat(n));
        for n in [1, 100, 127, 128, 129, 200, 5000] {
            for (open, close) in [("[", "]"), ("{\"k\":", "}")] {
                let text = nested(n, open, close);
                let reads_back = serde_json::from_str::<serde_json::Value>(&text).is_ok();
                assert_eq!(json_payload(text).is_ok(), reads_back, "{n} deep {open}");
            }
        }
        for text in [
            "{\"a\":[1,{\"b\":null}],\"c\":\"\\u00e9\"}",
            "true",
            "-1.5e3",
            "\"s\"",
        ] {
            assert!(json_payload(text.into()).is_ok(), "{text}");
        }
        for text in ["", "1 2", "{\"a\":}", "[1,]", "nul"] {
            assert!(json_payload(text.into()).is_err(), "{text}");
        }
    }
}
