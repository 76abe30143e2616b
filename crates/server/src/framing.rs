//! How a request's body is delimited, checked before any route reads it:
//! the shapes that let two HTTP parsers disagree about where a request
//! ends (request smuggling) are refused with `400`, nothing read, nothing
//! stored. The direct path checks every head it reads — the first of every
//! connection — before it hands anything to hyper; hyper drops a
//! `Content-Length` sent with `Transfer-Encoding` before the router sees
//! it (and closes the connection after), so on a connection hyper already
//! holds, this layer over the router refuses the codings it can still see.

use axum::extract::Request;
use axum::http::{HeaderMap, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::error::ApiError;

/// Refuses a request whose framing is ambiguous or not ours to decode, or
/// whose head is larger than the direct path reads (`431`): hyper's own
/// limit is its read buffer, which a head arriving in one read can exceed.
pub async fn refuse_ambiguous(request: Request, next: Next) -> Response {
    if head_size(&request) > crate::http1::head::MAX_HEAD {
        return ApiError::HeadTooLarge.into_response();
    }
    match check(request.headers()) {
        Ok(()) => next.run(request).await,
        Err(e) => e.into_response(),
    }
}

/// About how many bytes the head took on the wire: the request line and
/// each header line.
fn head_size(request: &Request) -> usize {
    let line = request.method().as_str().len() + request.uri().to_string().len() + 12;
    request
        .headers()
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + 4)
        .sum::<usize>()
        + line
}

/// `Content-Length` together with `Transfer-Encoding`, or any transfer
/// coding but a lone `chunked` (herald decodes no others: a `gzip` body
/// would be stored still compressed).
pub fn check(headers: &HeaderMap) -> Result<(), ApiError> {
    let mut codings = headers.get_all(header::TRANSFER_ENCODING).iter().peekable();
    if codings.peek().is_none() {
        return Ok(());
    }
    if headers.contains_key(header::CONTENT_LENGTH) {
        return Err(ApiError::BadRequest(
            "a request may carry Content-Length or Transfer-Encoding, not both".into(),
        ));
    }
    let mut chunked = 0;
    for value in codings {
        for coding in value.as_bytes().split(|&b| b == b',') {
            let coding = coding.trim_ascii();
            if !coding.eq_ignore_ascii_case(b"chunked") {
                return Err(ApiError::BadRequest(
                    "the only transfer coding accepted is chunked".into(),
                ));
            }
            chunked += 1;
        }
    }
    if chunked != 1 {
        return Err(ApiError::BadRequest(
            "Transfer-Encoding must say chunked once".into(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn refuses_the_smuggling_shapes_only() {
        for ok in [
            headers(&[]),
            headers(&[("content-length", "5")]),
            headers(&[("transfer-encoding", "chunked")]),
            headers(&[("transfer-encoding", " Chunked ")]),
        ] {
            assert!(check(&ok).is_ok(), "{ok:?}");
        }
        for bad in [
            headers(&[("content-length", "5"), ("transfer-encoding", "chunked")]),
            headers(&[("transfer-encoding", "gzip, chunked")]),
            headers(&[
                ("transfer-encoding", "gzip"),
                ("transfer-encoding", "chunked"),
            ]),
            headers(&[("transfer-encoding", "chunked, chunked")]),
            headers(&[("transfer-encoding", "identity")]),
            headers(&[("transfer-encoding", "")]),
        ] {
            assert!(check(&bad).is_err(), "{bad:?}");
        }
    }
}
