//! Every route of the router, one row each, tried four ways: with no
//! token (`401`, `WWW-Authenticate: Bearer`), with tokens that do not
//! verify (`401 invalid_token`), with valid tokens outside the route's
//! scope (`403`), and with a token holding exactly the scope it needs (the
//! route's normal answer). What a refused request could have changed is
//! read before and after: nothing may have. The whole table runs on both
//! ways in, and the subscribe rows check which stack read each request.

use reqwest::Method;
use serde_json::{Value, json};

use super::attempt::{Expect, NDJSON, SSE, Send, attempt, http, with_body, with_header};
use super::{
    Answer, Refusal, SECRET, Way, assert_read_by, bad_tokens, bearer, claims, events_of, get_root,
    publish, root, sign_with, stacks, token, unix_now,
};
use crate::harness::Server;

/// A scope of the `herald` claim.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Publish,
    Subscribe,
    Enqueue,
    Work,
    Admin,
}

impl Kind {
    fn field(self) -> &'static str {
        match self {
            Kind::Publish => "publish",
            Kind::Subscribe => "subscribe",
            Kind::Enqueue => "enqueue",
            Kind::Work => "work",
            Kind::Admin => "admin",
        }
    }
}

/// What a route asks of its caller.
#[derive(Debug)]
enum Need {
    /// Nothing: `/healthz`, `/`.
    Open,
    /// Any valid token: `/sse`.
    AnyToken,
    /// Each of these scopes for these names (the name of `Admin` unused).
    Scopes(Vec<(Kind, String)>),
}

/// A `herald` claim allowing exactly `items`.
fn scopes(items: &[(Kind, String)]) -> Value {
    let mut herald = serde_json::Map::new();
    for (kind, name) in items {
        if *kind == Kind::Admin {
            herald.insert("admin".into(), true.into());
            continue;
        }
        let list = herald.entry(kind.field()).or_insert_with(|| json!([]));
        list.as_array_mut()
            .expect("a list")
            .push(name.as_str().into());
    }
    Value::Object(herald)
}

/// Valid tokens that must not do what `need` asks: one holding every
/// other scope for every name, and the needed scope only for other names;
/// and, when several things are needed, one short of each.
fn outside(need: &[(Kind, String)]) -> Vec<(String, Value)> {
    let kinds: Vec<Kind> = need.iter().map(|(k, _)| *k).collect();
    let mut herald = json!({ "admin": !kinds.contains(&Kind::Admin) });
    for kind in [Kind::Publish, Kind::Subscribe, Kind::Enqueue, Kind::Work] {
        herald[kind.field()] = if kinds.contains(&kind) {
            json!(["zz.other", "zz.*"])
        } else {
            json!(["*"])
        };
    }
    let mut tokens = vec![("every other scope".to_owned(), herald)];
    if need.len() > 1 {
        for (i, (kind, name)) in need.iter().enumerate() {
            let rest: Vec<(Kind, String)> = need
                .iter()
                .enumerate()
                .filter(|(j, _)| *j != i)
                .map(|(_, item)| item.clone())
                .collect();
            tokens.push((format!("all but {} {name}", kind.field()), scopes(&rest)));
        }
    }
    tokens
}

/// What a refused request must leave as it was.
#[derive(Debug)]
enum Watch {
    /// The events of a topic.
    Topic(String),
    /// A task, as `GET /tasks/{id}` shows it.
    Task(String),
    /// Whether a queue holds a task to claim (a claim with `wait=0`).
    Queue(String),
}

/// One route, ready to be tried.
#[derive(Debug)]
struct Row {
    what: String,
    need: Need,
    send: Send,
    expect: Expect,
    watch: Vec<Watch>,
    /// The in-scope request changes what is watched.
    writes: bool,
    /// A subscribe request (`herald_subscribe_requests_total` counts it).
    subscribe: bool,
    /// The in-scope request may or may not have changed what is watched
    /// by the time it is read (a worker socket closed at once may not
    /// have claimed yet); refused ones still must not.
    maybe_writes: bool,
}

/// The subscribe transports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Transport {
    Poll,
    LongPoll,
    Sse,
    Ndjson,
    Ws,
}

/// Every route of `herald_server::app`'s router, with its transports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Route {
    PublishOne,
    PublishBatch,
    NotifyPost,
    Counter,
    ApiQueuePost,
    ApiQueueGet,
    Enqueue,
    EnqueueWait,
    Claim,
    Work,
    TaskGet,
    TaskWait,
    TaskCancel,
    TaskEvents(Transport),
    Progress,
    Complete,
    Fail,
    Metrics,
    Healthz,
    Dashboard,
    Topic(Transport),
    Subscribe(Transport),
    SubscribeTwo,
    NotifyGet,
}

const ROUTES: &[Route] = &[
    Route::PublishOne,
    Route::PublishBatch,
    Route::NotifyPost,
    Route::Counter,
    Route::ApiQueuePost,
    // After the POST: its fixture is a task in the same queue, `default`.
    Route::ApiQueueGet,
    Route::Enqueue,
    Route::EnqueueWait,
    Route::Claim,
    Route::Work,
    Route::TaskGet,
    Route::TaskWait,
    Route::TaskCancel,
    Route::TaskEvents(Transport::Sse),
    Route::TaskEvents(Transport::Ndjson),
    Route::TaskEvents(Transport::Ws),
    Route::Progress,
    Route::Complete,
    Route::Fail,
    Route::Metrics,
    Route::Healthz,
    Route::Dashboard,
    Route::Topic(Transport::Poll),
    Route::Topic(Transport::LongPoll),
    Route::Topic(Transport::Sse),
    Route::Topic(Transport::Ndjson),
    Route::Topic(Transport::Ws),
    Route::Subscribe(Transport::Poll),
    Route::Subscribe(Transport::LongPoll),
    Route::Subscribe(Transport::Sse),
    Route::Subscribe(Transport::Ndjson),
    Route::Subscribe(Transport::Ws),
    Route::SubscribeTwo,
    Route::NotifyGet,
];

impl Route {
    fn is_ws(self) -> bool {
        matches!(
            self,
            Route::TaskEvents(Transport::Ws)
                | Route::Work
                | Route::Topic(Transport::Ws)
                | Route::Subscribe(Transport::Ws)
        )
    }
}

/// A subscribe request on `path` (which may hold a query) by `transport`.
fn subscribe_send(path: &str, transport: Transport) -> (Send, Expect) {
    let sep = if path.contains('?') { '&' } else { '?' };
    match transport {
        Transport::Poll => (http(Method::GET, path), Expect::Status(200)),
        Transport::LongPoll => (
            http(
                Method::GET,
                &format!("{path}{sep}transport=long-poll&timeout=10&last-event-id=all"),
            ),
            Expect::Status(200),
        ),
        Transport::Sse => (
            with_header(Method::GET, path, "accept", SSE),
            Expect::Stream(SSE),
        ),
        Transport::Ndjson => (
            with_header(Method::GET, path, "accept", NDJSON),
            Expect::Stream(NDJSON),
        ),
        Transport::Ws => (
            Send::Ws {
                path: path.to_owned(),
            },
            Expect::Upgraded,
        ),
    }
}

/// Sends `method path` with the root token; the answer must be `status`.
async fn root_call(server: &Server, method: Method, path: &str, body: &str, status: u16) -> Value {
    let r = Way::Http11
        .client()
        .request(method, server.url(path))
        .header("authorization", bearer(&root()))
        .body(body.to_owned())
        .send()
        .await
        .expect("a setup request");
    let a = Answer::of(r).await;
    assert_eq!(a.status, status, "{path}: {}", a.body);
    if a.body.is_empty() {
        Value::Null
    } else {
        a.json()
    }
}

/// A task queued in `queue`; its id.
async fn enqueued(server: &Server, queue: &str) -> String {
    let task = root_call(
        server,
        Method::POST,
        &format!("/queues/{queue}/tasks"),
        "job",
        201,
    )
    .await;
    task["id"].as_str().expect("task id").to_owned()
}

/// A task queued in `queue` and claimed: its id and lease token.
async fn running(server: &Server, queue: &str) -> (String, String) {
    let id = enqueued(server, queue).await;
    let claimed = root_call(
        server,
        Method::POST,
        &format!("/queues/{queue}/claim?wait=0&lease=600"),
        "",
        200,
    )
    .await;
    assert_eq!(claimed["task"]["id"], id.as_str());
    let lease = claimed["lease"]["token"]
        .as_str()
        .expect("lease")
        .to_owned();
    (id, lease)
}

/// Builds row `n` for `route`, with what it needs in place (a task, an
/// event) made with the root token.
async fn prepare(server: &Server, route: Route, n: usize) -> Row {
    let mut row = Row {
        what: format!("{route:?}"),
        need: Need::Open,
        send: http(Method::GET, "/"),
        expect: Expect::Status(200),
        watch: Vec::new(),
        writes: false,
        subscribe: false,
        maybe_writes: false,
    };
    match route {
        Route::Enqueue
        | Route::EnqueueWait
        | Route::Claim
        | Route::Work
        | Route::TaskGet
        | Route::TaskWait
        | Route::TaskCancel
        | Route::TaskEvents(_)
        | Route::Progress
        | Route::Complete
        | Route::Fail => prepare_task(server, route, n, &mut row).await,
        Route::Topic(_) | Route::Subscribe(_) | Route::SubscribeTwo | Route::NotifyGet => {
            prepare_read(server, route, n, &mut row).await;
        }
        _ => prepare_other(server, route, n, &mut row).await,
    }
    row
}

/// `one(kind, name)`: the route needs that scope for that name.
fn one(kind: Kind, name: &str) -> Need {
    Need::Scopes(vec![(kind, name.to_owned())])
}

/// Publishing, the seed articles' routes, and operations.
async fn prepare_other(server: &Server, route: Route, n: usize, row: &mut Row) {
    let t = format!("r{n}.t");
    match route {
        Route::PublishOne => {
            row.need = one(Kind::Publish, &t);
            row.send = with_body(Method::POST, &format!("/topics/{t}"), "x");
            row.expect = Expect::Status(201);
            row.watch = vec![Watch::Topic(t)];
            row.writes = true;
        }
        Route::PublishBatch => {
            let (a, b) = (format!("r{n}.a"), format!("r{n}.b"));
            let body = format!(
                "{{\"topic\":\"{a}\",\"data\":\"1\"}}\n{{\"topic\":\"{b}\",\"data\":\"2\"}}\n"
            );
            row.need = Need::Scopes(vec![(Kind::Publish, a.clone()), (Kind::Publish, b.clone())]);
            row.send = with_body(Method::POST, "/publish", &body);
            row.expect = Expect::Status(201);
            row.watch = vec![Watch::Topic(a), Watch::Topic(b)];
            row.writes = true;
        }
        Route::NotifyPost => {
            row.need = one(Kind::Publish, "api.notifications");
            let body = r#"{"type":"info","message":"hello"}"#;
            row.send = with_body(Method::POST, "/api/notifications", body);
            row.watch = vec![Watch::Topic("api.notifications".into())];
            row.writes = true;
        }
        Route::Counter => {
            row.need = Need::AnyToken;
            row.send = http(Method::GET, "/sse");
            row.expect = Expect::Stream(SSE);
        }
        Route::ApiQueuePost => {
            row.need = one(Kind::Enqueue, "default");
            row.send = with_body(Method::POST, "/api/queue", "job");
            row.watch = vec![Watch::Queue("default".into())];
            row.writes = true;
        }
        Route::ApiQueueGet => {
            let id = enqueued(server, "default").await;
            row.need = one(Kind::Enqueue, "default");
            row.send = http(Method::GET, &format!("/api/queue?id={id}"));
            row.expect = Expect::Status(204);
            row.watch = vec![Watch::Task(id)];
        }
        Route::Metrics => {
            row.need = one(Kind::Admin, "");
            row.send = http(Method::GET, "/metrics");
        }
        Route::Healthz => row.send = http(Method::GET, "/healthz"),
        Route::Dashboard => row.send = http(Method::GET, "/"),
        _ => unreachable!("{route:?} is not one of these"),
    }
}

/// The task routes.
async fn prepare_task(server: &Server, route: Route, n: usize, row: &mut Row) {
    let q = format!("q{n}");
    match route {
        Route::Enqueue => {
            row.need = one(Kind::Enqueue, &q);
            row.send = with_body(Method::POST, &format!("/queues/{q}/tasks"), "job");
            row.expect = Expect::Status(201);
            row.watch = vec![Watch::Queue(q)];
            row.writes = true;
        }
        Route::EnqueueWait => {
            // Nobody works on it: the wait runs out (`408`), the task stays.
            row.need = one(Kind::Enqueue, &q);
            row.send = with_body(Method::POST, &format!("/queues/{q}/tasks?wait=0"), "job");
            row.expect = Expect::Status(408);
            row.watch = vec![Watch::Queue(q)];
            row.writes = true;
        }
        Route::Work => {
            // The socket claims the task as soon as it opens.
            let id = enqueued(server, &q).await;
            row.need = one(Kind::Work, &q);
            row.send = Send::Ws {
                path: format!("/queues/{q}/work?lease=600"),
            };
            row.expect = Expect::Upgraded;
            row.watch = vec![Watch::Task(id)];
            row.maybe_writes = true;
        }
        Route::Claim => {
            let id = enqueued(server, &q).await;
            row.need = one(Kind::Work, &q);
            row.send = http(Method::POST, &format!("/queues/{q}/claim?wait=0"));
            row.watch = vec![Watch::Task(id)];
            row.writes = true;
        }
        Route::TaskGet => {
            let id = enqueued(server, &q).await;
            row.need = one(Kind::Enqueue, &q);
            row.send = http(Method::GET, &format!("/tasks/{id}"));
            row.expect = Expect::Status(202);
            row.watch = vec![Watch::Task(id)];
        }
        Route::TaskWait => {
            let id = enqueued(server, &q).await;
            root_call(server, Method::DELETE, &format!("/tasks/{id}"), "", 200).await;
            row.need = one(Kind::Enqueue, &q);
            row.send = http(Method::GET, &format!("/tasks/{id}?wait=10"));
            row.watch = vec![Watch::Task(id)];
        }
        Route::TaskCancel => {
            let id = enqueued(server, &q).await;
            row.need = one(Kind::Enqueue, &q);
            row.send = http(Method::DELETE, &format!("/tasks/{id}"));
            row.watch = vec![Watch::Task(id)];
            row.writes = true;
        }
        Route::TaskEvents(transport) => {
            let id = enqueued(server, &q).await;
            row.need = one(Kind::Enqueue, &q);
            (row.send, row.expect) = subscribe_send(&format!("/tasks/{id}/events"), transport);
            row.watch = vec![Watch::Task(id)];
        }
        Route::Progress | Route::Complete | Route::Fail => {
            let (id, lease) = running(server, &q).await;
            let (path, body) = match route {
                Route::Progress => ("progress", r#"{"progress":0.5,"message":"half"}"#),
                Route::Complete => ("complete", "done"),
                _ => ("fail", r#"{"error":"broken"}"#),
            };
            row.need = one(Kind::Work, &q);
            row.send = Send::Http {
                method: Method::POST,
                path: format!("/tasks/{id}/{path}"),
                headers: vec![("herald-lease", lease)],
                body: Some(body.to_owned()),
            };
            row.watch = vec![Watch::Task(id)];
            row.writes = true;
        }
        _ => unreachable!("{route:?} is not one of these"),
    }
}

/// The subscribe routes, on each transport.
async fn prepare_read(server: &Server, route: Route, n: usize, row: &mut Row) {
    let t = format!("r{n}.t");
    match route {
        Route::Topic(transport) | Route::Subscribe(transport) => {
            publish(server, &t, "there").await;
            let path = match route {
                Route::Topic(_) => format!("/topics/{t}"),
                _ => format!("/subscribe?topic={t}"),
            };
            row.need = one(Kind::Subscribe, &t);
            (row.send, row.expect) = subscribe_send(&path, transport);
            row.watch = vec![Watch::Topic(t)];
            row.subscribe = true;
        }
        Route::SubscribeTwo => {
            let (a, b) = (format!("r{n}.a"), format!("r{n}.b"));
            row.need = Need::Scopes(vec![
                (Kind::Subscribe, a.clone()),
                (Kind::Subscribe, b.clone()),
            ]);
            (row.send, row.expect) =
                subscribe_send(&format!("/subscribe?topic={a}&topic={b}"), Transport::Sse);
            row.subscribe = true;
        }
        Route::NotifyGet => {
            row.need = one(Kind::Subscribe, "api.notifications");
            row.send = http(Method::GET, "/api/notifications");
            row.expect = Expect::Stream(SSE);
            row.subscribe = true;
        }
        _ => unreachable!("{route:?} is not one of these"),
    }
}

/// What `watch` shows now, read with the root token.
async fn observe(server: &Server, watch: &[Watch]) -> Vec<Value> {
    let mut seen = Vec::with_capacity(watch.len());
    for w in watch {
        seen.push(match w {
            Watch::Topic(t) => Value::Array(events_of(server, t).await),
            Watch::Task(id) => get_root(server, &format!("/tasks/{id}")).await.json(),
            Watch::Queue(q) => {
                // Takes the task if there is one: only when something was
                // (wrongly, before the in-scope request) enqueued.
                let r = Way::Http11
                    .client()
                    .post(server.url(&format!("/queues/{q}/claim?wait=0")))
                    .header("authorization", bearer(&root()))
                    .send()
                    .await
                    .expect("claim");
                json!(r.status().as_u16())
            }
        });
    }
    seen
}

/// A valid token with no `herald` claim: it opens `/sse`, nothing else.
fn scopeless() -> String {
    let mut c = claims(Value::Null, Some(unix_now() + 3600));
    c.as_object_mut().expect("claims").remove("herald");
    sign_with(&c, SECRET, jsonwebtoken::Algorithm::HS256)
}

/// Tries `row` every way it must be tried (see the module's doc).
async fn check(server: &Server, way: Way, row: &Row) {
    let what = |case: &str| format!("{way:?} {}: {case}", row.what);
    let stack = match (row.subscribe, &row.send) {
        (false, _) => "none",
        (true, Send::Ws { .. }) => "hyper",
        (true, Send::Http { .. }) => way.stack(),
    };
    let open = matches!(row.need, Need::Open);
    let watched = observe(server, &row.watch).await;

    let before = stacks(server).await;
    let mut refused = 0;
    let got = attempt(server, way, &row.send, None).await;
    refused += 1;
    if open {
        got.assert_ok(&what("no token"), row.expect);
    } else {
        got.assert_refused(&what("no token"), Refusal::NoToken);
    }
    for (why, bad) in bad_tokens() {
        let got = attempt(server, way, &row.send, Some(&bad)).await;
        refused += 1;
        if open {
            got.assert_ok(&what(why), row.expect);
        } else {
            got.assert_refused(&what(why), Refusal::BadToken);
        }
    }
    if let Need::Scopes(need) = &row.need {
        for (why, herald) in outside(need) {
            let got = attempt(server, way, &row.send, Some(&token(herald))).await;
            refused += 1;
            got.assert_refused(&what(&why), Refusal::Forbidden);
        }
    }
    assert_read_by(server, before, stack, refused, &what("refusals")).await;
    assert_eq!(
        observe(server, &row.watch).await,
        watched,
        "{}: a refused request changed nothing",
        what("")
    );

    let allowed = match &row.need {
        Need::Open => None,
        Need::AnyToken => Some(scopeless()),
        Need::Scopes(need) => Some(token(scopes(need))),
    };
    let before = stacks(server).await;
    let got = attempt(server, way, &row.send, allowed.as_deref()).await;
    got.assert_ok(&what("in scope"), row.expect);
    assert_read_by(server, before, stack, 1, &what("in scope")).await;
    let now = observe(server, &row.watch).await;
    if row.maybe_writes {
        return;
    }
    if row.writes {
        assert_ne!(
            now,
            watched,
            "{}: the allowed request did its work",
            what("")
        );
    } else {
        assert_eq!(now, watched, "{}: a read changes nothing", what(""));
    }
}

/// The whole table on one way in, one server.
async fn every_route(way: Way) {
    let server = super::server(&[]);
    for (n, route) in ROUTES.iter().enumerate() {
        // tungstenite speaks HTTP/1.1 only: the WebSocket rows run once.
        if way == Way::H2c && route.is_ws() {
            continue;
        }
        let row = prepare(&server, *route, n).await;
        check(&server, way, &row).await;
    }
}

#[tokio::test]
async fn every_route_http11() {
    every_route(Way::Http11).await;
}

#[tokio::test]
async fn every_route_h2c() {
    every_route(Way::H2c).await;
}
