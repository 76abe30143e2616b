//! The gate every request passes, whichever HTTP stack read it: who the
//! caller is ([`admit`]) and what the request's head says it will do
//! ([`need`]). hyper's requests pass it in a router layer ([`layer`]),
//! the direct path's before it decides anything; the subscribe decision
//! and the handlers take the [`Caller`] it gives, so none of them can run
//! without it.
//!
//! What a request acts on is mostly in its head (the topic of a publish,
//! the queue of a claim) and is checked here. Two kinds of request name it
//! only later: each line of a batch publish, and a task by its id (whose
//! queue is known once the task is read). Their handlers ask the same
//! [`Caller`] ([`Caller::allow`]) before changing anything.

use std::sync::Arc;
use std::time::SystemTime;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::auth::{Action, Auth, Grant, Source, extract};
use crate::cors;
use crate::error::ApiError;
pub use crate::limits::ClientId;
use crate::request::RequestView;
use crate::responses::Route;
use crate::seed::{ARTICLE_QUEUE, NOTIFICATIONS_TOPIC as NOTIFICATIONS};
use crate::state::AppState;

/// Who sent a request, as far as the rules care.
#[derive(Debug, Clone)]
pub struct Caller {
    /// `None`: authorization is off, and everything is allowed.
    auth: Option<Arc<Auth>>,
    /// The verified token, if one was sent.
    grant: Option<Arc<Grant>>,
    /// Who counts against the per-client limits.
    pub client: ClientId,
}

impl Caller {
    /// Whether the caller may do each of `actions`: `403` naming the first
    /// it may not, or `401` if it sent no token and one is needed.
    pub fn allow(&self, actions: &[Action<'_>]) -> Result<(), ApiError> {
        let Some(auth) = &self.auth else {
            return Ok(());
        };
        let refused = actions
            .iter()
            .find(|a| !auth.public_allows(a) && !self.grant.as_ref().is_some_and(|g| g.allows(a)));
        match (refused, &self.grant) {
            (None, _) => Ok(()),
            (Some(_), None) => Err(crate::auth::AuthError::Missing.into()),
            (Some(a), Some(_)) => Err(ApiError::Forbidden(format!("this token may not {a}"))),
        }
    }

    /// When the caller's token expires: a stream it opens ends then.
    pub fn expires(&self) -> Option<SystemTime> {
        self.grant.as_ref().and_then(|g| g.exp)
    }

    /// The token's expiry on the runtime's clock (now, if past).
    pub fn until(&self) -> Option<tokio::time::Instant> {
        let at = self.expires()?;
        let left = at.duration_since(SystemTime::now()).unwrap_or_default();
        Some(tokio::time::Instant::now() + left)
    }

    /// Whether authorization is on (handlers skip reading a task's queue
    /// when it is not).
    pub fn checks(&self) -> bool {
        self.auth.is_some()
    }
}

/// What a request's head says it will do.
#[derive(Debug, PartialEq, Eq)]
pub enum Need {
    /// Nothing to check: `/healthz`, the dashboard page, a preflight.
    Open,
    /// Each of these: (action, name).
    Actions(Vec<(Kind, String)>),
    /// A valid token; what it acts on is checked by the handler.
    Token,
}

/// An [`Action`] without its borrowed name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Publish,
    Subscribe,
    Enqueue,
    Work,
    Admin,
}

impl Kind {
    fn action(self, name: &str) -> Action<'_> {
        match self {
            Kind::Publish => Action::Publish(name),
            Kind::Subscribe => Action::Subscribe(name),
            Kind::Enqueue => Action::Enqueue(name),
            Kind::Work => Action::Work(name),
            Kind::Admin => Action::Admin,
        }
    }
}

/// The table of what each route does (the router's, seen by the rules).
pub fn need(method: &Method, path: &str, query: Option<&str>) -> Need {
    if method == Method::OPTIONS {
        return Need::Open;
    }
    let one = |kind, name: &str| Need::Actions(vec![(kind, name.to_owned())]);
    // HTTP/2 opens a WebSocket with CONNECT: it reads as a GET does.
    let get = method == Method::GET || method == Method::HEAD || method == Method::CONNECT;
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    match (get, segments.as_slice()) {
        (true, [""]) | (_, ["healthz"]) => Need::Open,
        (_, ["metrics"]) => Need::Actions(vec![(Kind::Admin, String::new())]),
        (_, ["sse"]) => Need::Token,
        (true, ["topics", t]) => one(Kind::Subscribe, &decoded(t)),
        (false, ["topics", t]) => one(Kind::Publish, &decoded(t)),
        (true, ["subscribe"]) => {
            let query = crate::query::Query::parse(query);
            let topics: Vec<(Kind, String)> = query
                .all("topic")
                .map(|t| (Kind::Subscribe, t.to_owned()))
                .collect();
            if topics.is_empty() {
                Need::Token
            } else {
                Need::Actions(topics)
            }
        }
        (true, ["api", "notifications"]) => one(Kind::Subscribe, NOTIFICATIONS),
        (false, ["api", "notifications"]) => one(Kind::Publish, NOTIFICATIONS),
        (_, ["api", "queue"]) => one(Kind::Enqueue, ARTICLE_QUEUE),
        (_, ["queues", q, "tasks"]) if !get => one(Kind::Enqueue, &decoded(q)),
        (_, ["queues", q, "claim"]) => one(Kind::Work, &decoded(q)),
        // The worker socket claims from the queue as `claim` does.
        (_, ["queues", q, "work"]) => one(Kind::Work, &decoded(q)),
        // The listings of issue 16: `GET /topics`, `/queues`,
        // `/queues/{q}/tasks`.
        (true, ["topics"] | ["queues"] | ["queues", _, "tasks"]) => {
            Need::Actions(vec![(Kind::Admin, String::new())])
        }
        // `/publish` (each line) and `/tasks/{id}…` (the task's queue) are
        // checked by their handlers; anything else needs a valid token
        // before it is told it does not exist.
        _ => Need::Token,
    }
}

fn decoded(segment: &str) -> String {
    percent_encoding::percent_decode_str(segment)
        .decode_utf8_lossy()
        .into_owned()
}

/// Who the caller is, and whether its request's head is allowed: `401`,
/// `403`, or the [`Caller`] the rest of the request is served for.
pub fn admit(state: &AppState, request: &RequestView<'_>) -> Result<Caller, ApiError> {
    let client = client_of(request);
    cors::check_upgrade(&state.config().cors, request)?;
    let Some(auth) = &state.config().auth else {
        return Ok(Caller {
            auth: None,
            grant: None,
            client,
        });
    };
    let found = extract::from_request(request);
    let token = found.as_ref().map(|f| f.token.as_ref());
    let grant = match need(request.method, request.path, request.query) {
        Need::Open => None,
        Need::Token => Some(auth.check(
            token.ok_or(crate::auth::AuthError::Missing)?,
            SystemTime::now(),
        )?),
        Need::Actions(actions) => {
            let actions: Vec<Action<'_>> = actions.iter().map(|(k, n)| k.action(n)).collect();
            auth.authorize(token, &actions, SystemTime::now())?
        }
    };
    if grant.is_some() && found.as_ref().is_some_and(|f| f.source == Source::Cookie) {
        // A browser sends the cookie whichever site made the request: only
        // this server's own pages and the allowed origins may use it. An
        // open route reads no token, so the cookie authenticates nothing.
        cors::check_cookie_origin(&state.config().cors, request)?;
    }
    let client = match grant.as_ref().and_then(|g| g.sub.clone()) {
        Some(sub) => ClientId::Subject(sub),
        None => client,
    };
    Ok(Caller {
        auth: Some(Arc::clone(auth)),
        grant,
        client,
    })
}

fn client_of(request: &RequestView<'_>) -> ClientId {
    request
        .peer
        .map_or(ClientId::Unknown, |p| ClientId::Address(p.ip()))
}

/// The router layer: every request hyper serves is admitted here, and its
/// [`Caller`] handed to the handler; every answer gets the CORS headers and
/// is counted by its route (`herald_http_responses_total`).
pub async fn layer(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let route = Route::of(request.uri().path());
    let response = answer(&state, request, next).await;
    // Here, outermost, every answer the router gives passes; a stream's
    // status is its head's, sent as the stream opens.
    state.responses().count(route, response.status());
    response
}

/// The gate and the handler: what [`layer`] counts.
async fn answer(state: &AppState, mut request: Request, next: Next) -> Response {
    let (cors, admitted) = {
        let view = RequestView::of_request(&request);
        if let Some(preflight) = cors::preflight(&state.config().cors, &view) {
            return preflight.into_response();
        }
        // Counted before the gate, as the direct path counts what it reads:
        // a refused subscribe request was read by this stack too.
        let reads = [Method::GET, Method::HEAD, Method::CONNECT].contains(view.method);
        if reads && crate::subscribe::route::route(view.path).is_some() {
            metrics::counter!("herald_subscribe_requests_total", "stack" => "hyper").increment(1);
        }
        (
            cors::headers(&state.config().cors, &view),
            admit(state, &view),
        )
    };
    let mut response = match admitted {
        Ok(caller) => {
            request.extensions_mut().insert(caller);
            next.run(request).await
        }
        Err(refused) => refused.into_response(),
    };
    extend(response.headers_mut(), cors);
    response
}

/// Adds `extra` to `headers`, replacing what was there.
pub fn extend(headers: &mut HeaderMap, extra: Option<HeaderMap>) {
    if let Some(extra) = extra {
        for (name, value) in extra {
            if let Some(name) = name {
                headers.insert(name, value);
            }
        }
    }
}

/// The [`Caller`] the layer admitted, for a handler.
impl<S: Send + Sync> axum::extract::FromRequestParts<S> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _: &S,
    ) -> Result<Caller, ApiError> {
        // Taken, not cloned: a handler has one caller, and a token's grant
        // holds its patterns.
        parts.extensions.remove::<Caller>().ok_or_else(|| {
            ApiError::Internal("a request reached its handler without passing the gate".into())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn actions(n: &Need) -> Vec<(Kind, &str)> {
        match n {
            Need::Actions(a) => a.iter().map(|(k, s)| (*k, s.as_str())).collect(),
            _ => vec![],
        }
    }

    #[test]
    fn every_route_names_what_it_acts_on() {
        let get = Method::GET;
        let post = Method::POST;
        assert_eq!(need(&get, "/healthz", None), Need::Open);
        assert_eq!(need(&get, "/", None), Need::Open);
        assert_eq!(need(&Method::OPTIONS, "/topics/a", None), Need::Open);
        assert_eq!(
            actions(&need(&get, "/topics/a%2Eb", None)),
            [(Kind::Subscribe, "a.b")]
        );
        assert_eq!(
            actions(&need(&post, "/topics/a", None)),
            [(Kind::Publish, "a")]
        );
        assert_eq!(
            actions(&need(&get, "/subscribe", Some("topic=a&topic=b"))),
            [(Kind::Subscribe, "a"), (Kind::Subscribe, "b")]
        );
        assert_eq!(
            actions(&need(&get, "/api/notifications", None)),
            [(Kind::Subscribe, "api.notifications")]
        );
        assert_eq!(
            actions(&need(&post, "/api/notifications", None)),
            [(Kind::Publish, "api.notifications")]
        );
        assert_eq!(
            actions(&need(&post, "/api/queue", None)),
            [(Kind::Enqueue, "default")]
        );
        assert_eq!(
            actions(&need(&get, "/api/queue", Some("id=x"))),
            [(Kind::Enqueue, "default")]
        );
        assert_eq!(
            actions(&need(&post, "/queues/q/tasks", None)),
            [(Kind::Enqueue, "q")]
        );
        assert_eq!(
            actions(&need(&post, "/queues/q/claim", None)),
            [(Kind::Work, "q")]
        );
        for m in [&get, &Method::CONNECT] {
            assert_eq!(
                actions(&need(m, "/queues/q/work", Some("count=4"))),
                [(Kind::Work, "q")]
            );
        }
        assert_eq!(actions(&need(&get, "/metrics", None)), [(Kind::Admin, "")]);
        for token_only in [
            "/sse",
            "/publish",
            "/tasks/x",
            "/tasks/x/complete",
            "/nowhere",
        ] {
            let m = if token_only == "/publish" || token_only.ends_with("complete") {
                &post
            } else {
                &get
            };
            assert_eq!(need(m, token_only, None), Need::Token, "{token_only}");
        }
    }
}
