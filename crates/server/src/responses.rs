//! `herald_http_responses_total{route,status}`: every answer either HTTP
//! stack sends, by the route pattern it was for and its status.
//!
//! Counted on every request's path, so the count is one atomic add into a
//! fixed table (route × status) and nothing else: no label strings built,
//! no map looked up. The table is rendered by [`Responses::render`] when
//! `/metrics` is scraped; labels are bounded by construction (19 routes,
//! statuses 100–599).

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::http::StatusCode;

/// The route patterns of the router (`lib.rs`), and `other` for paths that
/// match none. A route is named whatever the method: a `PUT` on a topic is
/// a `405` of `/topics/{topic}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    Dashboard,
    Healthz,
    Metrics,
    Topic,
    Subscribe,
    Topics,
    Publish,
    Notifications,
    Sse,
    ApiQueue,
    Queues,
    QueueTasks,
    QueueClaim,
    QueueWork,
    Task,
    TaskEvents,
    TaskProgress,
    TaskComplete,
    TaskFail,
    Other,
}

impl Route {
    /// Every route, in the order of the table.
    pub const ALL: [Route; 20] = [
        Route::Dashboard,
        Route::Healthz,
        Route::Metrics,
        Route::Topic,
        Route::Subscribe,
        Route::Topics,
        Route::Publish,
        Route::Notifications,
        Route::Sse,
        Route::ApiQueue,
        Route::Queues,
        Route::QueueTasks,
        Route::QueueClaim,
        Route::QueueWork,
        Route::Task,
        Route::TaskEvents,
        Route::TaskProgress,
        Route::TaskComplete,
        Route::TaskFail,
        Route::Other,
    ];

    /// The `route` label: the router's pattern.
    pub fn pattern(self) -> &'static str {
        match self {
            Route::Dashboard => "/",
            Route::Healthz => "/healthz",
            Route::Metrics => "/metrics",
            Route::Topic => "/topics/{topic}",
            Route::Subscribe => "/subscribe",
            Route::Topics => "/topics",
            Route::Publish => "/publish",
            Route::Notifications => "/api/notifications",
            Route::Sse => "/sse",
            Route::ApiQueue => "/api/queue",
            Route::Queues => "/queues",
            Route::QueueTasks => "/queues/{queue}/tasks",
            Route::QueueClaim => "/queues/{queue}/claim",
            Route::QueueWork => "/queues/{queue}/work",
            Route::Task => "/tasks/{id}",
            Route::TaskEvents => "/tasks/{id}/events",
            Route::TaskProgress => "/tasks/{id}/progress",
            Route::TaskComplete => "/tasks/{id}/complete",
            Route::TaskFail => "/tasks/{id}/fail",
            Route::Other => "other",
        }
    }

    /// The route `path` matches, as the router matches it: a `{name}` is
    /// one segment, never empty; anything else is [`Route::Other`].
    pub fn of(path: &str) -> Route {
        let Some(rest) = path.strip_prefix('/') else {
            return Route::Other;
        };
        // Four segments at most are looked at: no route has more, and a
        // fourth that is there makes the path `other`.
        let mut parts = rest.split('/');
        let mut next = || parts.next();
        let segments = [next(), next(), next(), next()];
        let named = |s: &str| !s.is_empty();
        match segments {
            [Some(""), None, ..] => Route::Dashboard,
            [Some("healthz"), None, ..] => Route::Healthz,
            [Some("metrics"), None, ..] => Route::Metrics,
            [Some("subscribe"), None, ..] => Route::Subscribe,
            [Some("topics"), None, ..] => Route::Topics,
            [Some("topics"), Some(t), None, _] if named(t) => Route::Topic,
            [Some("publish"), None, ..] => Route::Publish,
            [Some("sse"), None, ..] => Route::Sse,
            [Some("api"), Some("notifications"), None, _] => Route::Notifications,
            [Some("api"), Some("queue"), None, _] => Route::ApiQueue,
            [Some("queues"), None, ..] => Route::Queues,
            [Some("queues"), Some(q), Some("tasks"), None] if named(q) => Route::QueueTasks,
            [Some("queues"), Some(q), Some("claim"), None] if named(q) => Route::QueueClaim,
            [Some("queues"), Some(q), Some("work"), None] if named(q) => Route::QueueWork,
            [Some("tasks"), Some(id), None, _] if named(id) => Route::Task,
            [Some("tasks"), Some(id), Some(what), None] if named(id) => match what {
                "events" => Route::TaskEvents,
                "progress" => Route::TaskProgress,
                "complete" => Route::TaskComplete,
                "fail" => Route::TaskFail,
                _ => Route::Other,
            },
            _ => Route::Other,
        }
    }
}

impl From<crate::subscribe::Route<'_>> for Route {
    fn from(route: crate::subscribe::Route<'_>) -> Route {
        match route {
            crate::subscribe::Route::Topic(_) => Route::Topic,
            crate::subscribe::Route::Subscribe => Route::Subscribe,
            crate::subscribe::Route::Notifications => Route::Notifications,
        }
    }
}

/// The lowest status counted; the table has a slot for each up to 599.
const FIRST_STATUS: u16 = 100;
const STATUSES: usize = 500;

/// The counts, one per (route, status). 19 × 500 × 8 bytes, allocated
/// zeroed once per server; pages never written to stay untouched.
#[derive(Debug)]
pub struct Responses {
    counts: Box<[AtomicU64]>,
}

impl Default for Responses {
    fn default() -> Self {
        Responses {
            counts: (0..Route::ALL.len() * STATUSES)
                .map(|_| AtomicU64::new(0))
                .collect(),
        }
    }
}

impl Responses {
    /// Counts one answer. `StatusCode` is always 100–999; 600 and above are
    /// counted as 599 so that nothing is lost or out of the table.
    pub fn count(&self, route: Route, status: StatusCode) {
        let status = status.as_u16().clamp(FIRST_STATUS, 599);
        let at = route as usize * STATUSES + usize::from(status - FIRST_STATUS);
        if let Some(n) = self.counts.get(at) {
            // Relaxed: a count, read whole only at scrape time.
            n.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Appends the family in Prometheus text format: its `# HELP` and
    /// `# TYPE` always, a series for each (route, status) answered at least
    /// once.
    pub fn render(&self, out: &mut String) {
        out.push_str(
            "# HELP herald_http_responses_total HTTP answers sent, by route pattern and status \
             (both stacks; a stream counts once, with the status it opened with).\n\
             # TYPE herald_http_responses_total counter\n",
        );
        for (at, n) in self.counts.iter().enumerate() {
            let n = n.load(Ordering::Relaxed);
            if n == 0 {
                continue;
            }
            let route = Route::ALL[at / STATUSES].pattern();
            let status = FIRST_STATUS as usize + at % STATUSES;
            let _ = writeln!(
                out,
                "herald_http_responses_total{{route=\"{route}\",status=\"{status}\"}} {n}"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_named_by_their_route_pattern() {
        let cases = [
            ("/", Route::Dashboard),
            ("/healthz", Route::Healthz),
            ("/metrics", Route::Metrics),
            ("/topics/a.b", Route::Topic),
            ("/topics/", Route::Other),
            ("/topics/a/b", Route::Other),
            ("/topics", Route::Topics),
            ("/subscribe", Route::Subscribe),
            ("/publish", Route::Publish),
            ("/api/notifications", Route::Notifications),
            ("/api/queue", Route::ApiQueue),
            ("/api", Route::Other),
            ("/sse", Route::Sse),
            ("/queues", Route::Queues),
            ("/queues/q/tasks", Route::QueueTasks),
            ("/queues/q/claim", Route::QueueClaim),
            ("/queues/q/work", Route::QueueWork),
            ("/queues/q", Route::Other),
            ("/tasks/x", Route::Task),
            ("/tasks/x/events", Route::TaskEvents),
            ("/tasks/x/progress", Route::TaskProgress),
            ("/tasks/x/complete", Route::TaskComplete),
            ("/tasks/x/fail", Route::TaskFail),
            ("/tasks/x/other", Route::Other),
            ("/tasks//events", Route::Other),
            ("/nowhere", Route::Other),
            ("*", Route::Other),
        ];
        for (path, route) in cases {
            assert_eq!(Route::of(path), route, "{path}");
        }
    }

    #[test]
    fn every_route_has_its_slot_in_the_table() {
        for (i, route) in Route::ALL.iter().enumerate() {
            assert_eq!(*route as usize, i);
        }
    }

    #[test]
    fn renders_what_was_counted_and_nothing_else() {
        let responses = Responses::default();
        responses.count(Route::Topic, StatusCode::CREATED);
        responses.count(Route::Topic, StatusCode::CREATED);
        responses.count(Route::Other, StatusCode::NOT_FOUND);
        let mut out = String::new();
        responses.render(&mut out);
        assert!(
            out.starts_with("# HELP herald_http_responses_total "),
            "{out}"
        );
        assert!(out.contains("# TYPE herald_http_responses_total counter\n"));
        assert!(
            out.contains(
                "herald_http_responses_total{route=\"/topics/{topic}\",status=\"201\"} 2\n"
            )
        );
        assert!(out.contains("herald_http_responses_total{route=\"other\",status=\"404\"} 1\n"));
        assert_eq!(out.lines().count(), 4, "{out}");
    }
}
