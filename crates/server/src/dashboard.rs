//! The dashboard at `GET /`: one page built into the binary (HTML, CSS and
//! JavaScript from `dashboard/`, joined into one answer), which talks to
//! herald's own API from the browser and needs no network beyond it.

use std::sync::OnceLock;

use axum::extract::State;
use axum::http::{HeaderValue, header};
use axum::response::{Html, IntoResponse, Response};

use crate::state::AppState;

const TEMPLATE: &str = include_str!("dashboard/index.html");
const STYLE: &str = include_str!("dashboard/style.css");
/// One script, in this order: each part uses names the parts before it
/// define, and `start.js` wires the page once all are defined.
const SCRIPT: &str = concat!(
    include_str!("dashboard/api.js"),
    include_str!("dashboard/overview.js"),
    include_str!("dashboard/follow.js"),
    include_str!("dashboard/publish.js"),
    include_str!("dashboard/tasks.js"),
    include_str!("dashboard/start.js"),
);

/// `GET /`: the page, with this build's version and the kind of store.
pub async fn page(State(state): State<AppState>) -> Response {
    // The parts fixed at build time are joined once; the store (one process
    // may serve several states in tests) is filled in per request.
    static PAGE: OnceLock<String> = OnceLock::new();
    let page = PAGE.get_or_init(|| render(env!("CARGO_PKG_VERSION")));
    let describe = state.hub().store().describe();
    let page = page.replace("{{store}}", &escape(store_kind(&describe)));
    let mut response = Html(page).into_response();
    // The page is small and changes with the binary: always ask again.
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

/// The store's kind alone (`sqlite`, `memory`, `redis`): the page is open
/// to anyone, and a path or a Redis URL (with its password) is not theirs
/// to read.
fn store_kind(describe: &str) -> &str {
    describe.split_whitespace().next().unwrap_or("unknown")
}

/// The template with the build's parts filled in (`{{store}}` is left);
/// the version goes in as text.
fn render(version: &str) -> String {
    TEMPLATE
        .replace("{{version}}", &escape(version))
        .replace("{{style}}", STYLE)
        .replace("{{script}}", SCRIPT)
}

/// `s` as HTML text.
fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fills_every_placeholder_but_the_store() {
        let page = render("1.2.3<");
        assert_eq!(page.matches("{{").count(), 1, "only {{store}} is left");
        assert!(page.contains(r#"<dd id="store">{{store}}</dd>"#));
        assert!(page.contains(r#"<dd id="version">1.2.3&lt;</dd>"#));
        assert!(page.contains("function refresh()"));
    }

    #[test]
    fn names_the_store_without_its_address() {
        assert_eq!(store_kind("redis redis://:secret@db:6379 (…)"), "redis");
        assert_eq!(store_kind("sqlite /var/lib/herald/x.db (WAL)"), "sqlite");
        assert_eq!(store_kind(""), "unknown");
    }
}
