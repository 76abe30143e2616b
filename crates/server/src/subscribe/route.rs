//! Which subscribe route a path is: the router's table for these routes,
//! as the direct path and the gate read it.

/// Which subscribe route a path is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route<'a> {
    /// `/topics/{topic}`, with the segment as sent (percent-encoded).
    Topic(&'a str),
    /// `/subscribe`: the topics are in the query.
    Subscribe,
    /// `/api/notifications`: SSE of the topic `api.notifications`, each
    /// event with the article's comment line.
    Notifications,
}

/// The subscribe route `path` names, if any (the router's table for these
/// routes: a topic is a segment, never empty, never two).
pub fn route(path: &str) -> Option<Route<'_>> {
    match path {
        "/subscribe" => return Some(Route::Subscribe),
        "/api/notifications" => return Some(Route::Notifications),
        _ => {}
    }
    let segment = path.strip_prefix("/topics/")?;
    (!segment.is_empty() && !segment.contains('/')).then_some(Route::Topic(segment))
}
