//! Where a request's token is: `Authorization: Bearer TOKEN`, else the
//! cookie `herald_token`, else the query parameter `access_token` (a
//! browser's EventSource and WebSocket cannot set headers). Which one it
//! came from is kept: a cookie is sent by the browser on its own, so a
//! request it authenticates gets an `Origin` check the others do not need.

use std::borrow::Cow;

use axum::http::{HeaderMap, header};

use crate::request::RequestView;

/// The cookie that may carry the token.
pub const COOKIE_NAME: &str = "herald_token";
/// The query parameter that may carry the token.
pub const QUERY_PARAM: &str = "access_token";

/// Where a token was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Header,
    Cookie,
    Query,
}

/// A token and where it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found<'a> {
    /// Owned only when the query string had to be percent-decoded.
    pub token: Cow<'a, str>,
    pub source: Source,
}

/// The request's token, looked for in order; an empty value counts as
/// none (a browser clears a cookie by emptying it).
pub fn find<'a>(headers: &'a HeaderMap, query: Option<&'a str>) -> Option<Found<'a>> {
    if let Some(token) = bearer(headers) {
        return Some(Found {
            token: Cow::Borrowed(token),
            source: Source::Header,
        });
    }
    if let Some(token) = cookie(headers, COOKIE_NAME) {
        return Some(Found {
            token: Cow::Borrowed(token),
            source: Source::Cookie,
        });
    }
    let token = form_urlencoded::parse(query?.as_bytes())
        .find(|(key, value)| key == QUERY_PARAM && !value.is_empty())?
        .1;
    Some(Found {
        token,
        source: Source::Query,
    })
}

/// [`find`] on a request as the rules see it.
pub fn from_request<'a>(request: &RequestView<'a>) -> Option<Found<'a>> {
    find(request.headers, request.query)
}

/// The token of the first `Authorization: Bearer …` header. The scheme is
/// matched without regard to case (RFC 7235); other schemes are not ours
/// and are passed over.
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers.get_all(header::AUTHORIZATION).iter().find_map(|v| {
        let text = std::str::from_utf8(v.as_bytes()).ok()?;
        let (scheme, token) = text.trim().split_once(' ')?;
        let token = token.trim();
        (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
    })
}

/// The first non-empty value of cookie `name`, across every `Cookie`
/// header (HTTP/2 may split them) and every `name=value` pair in each,
/// separated by `;`. Read as bytes: another site's cookie that is not
/// UTF-8 must not hide ours. A value in double quotes is unquoted.
pub fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b';'))
        .find_map(|pair| {
            let pair = pair.trim_ascii();
            let eq = pair.iter().position(|&b| b == b'=')?;
            if pair[..eq].trim_ascii() != name.as_bytes() {
                return None;
            }
            let value = pair[eq + 1..].trim_ascii();
            let value = value
                .strip_prefix(b"\"")
                .and_then(|v| v.strip_suffix(b"\""))
                .unwrap_or(value);
            let value = std::str::from_utf8(value).ok()?;
            (!value.is_empty()).then_some(value)
        })
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    fn headers(pairs: &[(&str, &[u8])]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            let name =
                header::HeaderName::from_bytes(name.as_bytes()).unwrap_or_else(|e| panic!("{e}"));
            let value = HeaderValue::from_bytes(value).unwrap_or_else(|e| panic!("{e}"));
            map.append(name, value);
        }
        map
    }

    fn found(h: &HeaderMap, q: Option<&str>) -> Option<(String, Source)> {
        find(h, q).map(|f| (f.token.into_owned(), f.source))
    }

    #[test]
    fn header_then_cookie_then_query() {
        let all = headers(&[
            ("authorization", b"Bearer h.h.h"),
            ("cookie", b"herald_token=c.c.c"),
        ]);
        let q = Some("access_token=q.q.q");
        assert_eq!(found(&all, q), Some(("h.h.h".into(), Source::Header)));
        let cookie_only = headers(&[("cookie", b"herald_token=c.c.c")]);
        assert_eq!(
            found(&cookie_only, q),
            Some(("c.c.c".into(), Source::Cookie))
        );
        assert_eq!(
            found(&HeaderMap::new(), q),
            Some(("q.q.q".into(), Source::Query))
        );
        assert_eq!(found(&HeaderMap::new(), None), None);
        assert_eq!(found(&HeaderMap::new(), Some("topic=a")), None);
    }

    #[test]
    fn other_schemes_and_empty_values_are_passed_over() {
        let h = headers(&[
            ("authorization", b"Basic dXNlcjpwYXNz"),
            ("authorization", b"bearer  t.t.t "),
        ]);
        assert_eq!(found(&h, None), Some(("t.t.t".into(), Source::Header)));
        let h = headers(&[("authorization", b"Bearer "), ("cookie", b"herald_token=")]);
        assert_eq!(
            found(&h, Some("access_token=&access_token=x.y.z")),
            Some(("x.y.z".into(), Source::Query))
        );
    }

    #[test]
    fn cookies_are_found_among_others_and_across_headers() {
        let h = headers(&[
            ("cookie", b"theme=dark; lang=en"),
            ("cookie", b"a=1;herald_token=\"c.c.c\" ; b=2"),
        ]);
        assert_eq!(cookie(&h, COOKIE_NAME), Some("c.c.c"));
        assert_eq!(cookie(&h, "lang"), Some("en"));
        // Not a prefix match on the name, and a name alone is no cookie.
        let h = headers(&[(
            "cookie",
            b"herald_token_old=x; herald_token; y=herald_token=z",
        )]);
        assert_eq!(cookie(&h, COOKIE_NAME), None);
        // Another cookie that is not UTF-8 does not hide ours.
        let h = headers(&[("cookie", b"junk=\xff\xfe; herald_token=c.c.c")]);
        assert_eq!(cookie(&h, COOKIE_NAME), Some("c.c.c"));
    }

    #[test]
    fn the_query_parameter_is_percent_decoded() {
        assert_eq!(
            found(&HeaderMap::new(), Some("topic=a&access_token=a%2Eb.c")),
            Some(("a.b.c".into(), Source::Query))
        );
        let none = HeaderMap::new();
        let borrowed = find(&none, Some("access_token=a.b.c"));
        assert!(matches!(
            borrowed.map(|f| f.token),
            Some(Cow::Borrowed("a.b.c"))
        ));
    }
}
