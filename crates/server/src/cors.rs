//! Requests from pages on other origins: which origins may read answers
//! (`--cors-origin`), the preflight, and the two refusals that keep another
//! site from acting with a browser's credentials — a cookie-authenticated
//! request from an origin not allowed, and (with `--cors-origin` set) a
//! WebSocket opened from one. Pure functions of the settings and the
//! request, applied by the gate ([`crate::access`]) on both stacks.

use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};

use crate::answer::Whole;
use crate::error::ApiError;
use crate::request::RequestView;

/// The origins whose pages may read herald's answers.
#[derive(Debug, Clone, Default)]
pub struct Origins {
    /// `*`: any origin may read (never with credentials).
    pub any: bool,
    /// Exact origins (`https://app.example`), credentials allowed.
    pub list: Vec<String>,
}

impl Origins {
    /// Parses `--cors-origin` values: `*`, or `scheme://host[:port]`.
    pub fn parse(values: &[String]) -> Result<Origins, String> {
        let mut origins = Origins::default();
        for v in values {
            let v = v.trim().trim_end_matches('/');
            if v == "*" {
                origins.any = true;
            } else if (v.starts_with("http://") || v.starts_with("https://"))
                && !v["https://".len().min(v.len())..].contains('/')
            {
                origins.list.push(v.to_ascii_lowercase());
            } else {
                return Err(format!(
                    "--cors-origin {v:?}: give `*` or an origin such as https://app.example"
                ));
            }
        }
        Ok(origins)
    }

    pub fn is_on(&self) -> bool {
        self.any || !self.list.is_empty()
    }

    /// Named explicitly (`*` does not count: it never carries credentials).
    fn listed(&self, origin: &str) -> bool {
        self.list.iter().any(|o| o.eq_ignore_ascii_case(origin))
    }
}

/// What an answer exposes to a page's script.
const EXPOSED: &str = "Herald-Cursor, Idempotent-Replayed, Retry-After";
const METHODS: &str = "GET, POST, DELETE, OPTIONS";
const ALLOWED_HEADERS: &str =
    "Authorization, Content-Type, Last-Event-ID, Idempotency-Key, Herald-Lease";

fn origin<'a>(request: &RequestView<'a>) -> Option<&'a str> {
    request
        .headers
        .get(header::ORIGIN)
        .and_then(|o| o.to_str().ok())
}

/// The CORS headers for an answer to `request`; `None` without
/// `--cors-origin`, or for an origin not allowed (the browser then keeps
/// the answer from the page).
pub fn headers(origins: &Origins, request: &RequestView<'_>) -> Option<HeaderMap> {
    if !origins.is_on() {
        return None;
    }
    let origin = origin(request)?;
    let mut headers = HeaderMap::new();
    if origins.listed(origin) {
        headers.insert(
            header::ACCESS_CONTROL_ALLOW_ORIGIN,
            HeaderValue::from_str(origin).ok()?,
        );
        headers.insert(
            header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
            HeaderValue::from_static("true"),
        );
    } else if origins.any {
        headers.insert(
            header::ACCESS_CONTROL_ALLOW_ORIGIN,
            HeaderValue::from_static("*"),
        );
    } else {
        return None;
    }
    headers.insert(
        header::ACCESS_CONTROL_EXPOSE_HEADERS,
        HeaderValue::from_static(EXPOSED),
    );
    headers.insert(header::VARY, HeaderValue::from_static("Origin"));
    Some(headers)
}

/// The answer to a preflight (`OPTIONS` with
/// `Access-Control-Request-Method`) when `--cors-origin` is set: `204`,
/// with the CORS headers if the origin is allowed.
pub fn preflight(origins: &Origins, request: &RequestView<'_>) -> Option<Whole> {
    if request.method != Method::OPTIONS
        || !origins.is_on()
        || !request
            .headers
            .contains_key(header::ACCESS_CONTROL_REQUEST_METHOD)
    {
        return None;
    }
    let mut headers = headers(origins, request).unwrap_or_default();
    if headers.contains_key(header::ACCESS_CONTROL_ALLOW_ORIGIN) {
        headers.insert(
            header::ACCESS_CONTROL_ALLOW_METHODS,
            HeaderValue::from_static(METHODS),
        );
        headers.insert(
            header::ACCESS_CONTROL_ALLOW_HEADERS,
            HeaderValue::from_static(ALLOWED_HEADERS),
        );
        headers.insert(
            header::ACCESS_CONTROL_MAX_AGE,
            HeaderValue::from_static("600"),
        );
    }
    Some(Whole {
        status: StatusCode::NO_CONTENT,
        headers,
        body: bytes::Bytes::new(),
    })
}

/// Whether `origin` is this server's own: its host is the one the request
/// was addressed to.
fn same_origin(origin: &str, request: &RequestView<'_>) -> bool {
    let host = origin
        .strip_prefix("https://")
        .or_else(|| origin.strip_prefix("http://"));
    matches!((host, request.authority), (Some(h), Some(a)) if h.eq_ignore_ascii_case(a))
}

/// A request carrying the `herald_token` cookie from a page of another
/// origin is refused unless that origin is listed: the cookie must not let
/// another site publish or cancel for its holder. A request without
/// `Origin` is not a cross-site one a browser made.
pub fn check_cookie_origin(origins: &Origins, request: &RequestView<'_>) -> Result<(), ApiError> {
    match origin(request) {
        Some(o) if !same_origin(o, request) && !origins.listed(o) => {
            Err(ApiError::Forbidden(format!(
                "the herald_token cookie is not accepted from {o}: send the token in Authorization"
            )))
        }
        _ => Ok(()),
    }
}

/// With `--cors-origin` set, a WebSocket opened by a page of an origin not
/// allowed is refused (browsers apply no CORS to WebSockets).
pub fn check_upgrade(origins: &Origins, request: &RequestView<'_>) -> Result<(), ApiError> {
    let upgrade = request.method == Method::CONNECT
        || request
            .headers
            .get(header::UPGRADE)
            .is_some_and(|u| u.as_bytes().eq_ignore_ascii_case(b"websocket"));
    if !upgrade || !origins.is_on() || origins.any {
        return Ok(());
    }
    match origin(request) {
        Some(o) if !same_origin(o, request) && !origins.listed(o) => Err(ApiError::Forbidden(
            format!("WebSocket connections from {o} are not allowed"),
        )),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_parse() {
        let o = Origins::parse(&["https://a.example/".into(), "*".into()]).unwrap();
        assert!(o.any && o.listed("https://a.example") && !o.listed("https://b.example"));
        for bad in ["a.example", "https://a.example/path", "ftp://x"] {
            assert!(Origins::parse(&[bad.into()]).is_err(), "{bad}");
        }
        assert!(!Origins::default().is_on());
    }
}
