//! Hedging from the front door: a `MeshClient` built from a configuration
//! file whose `[retry]` section writes `hedging = { ... }`, against real
//! servers on 127.0.0.1, one of them slow. Balanced round robin, the slow
//! instance gets its share of first copies; a hedged copy sent to another
//! instance after `delay` answers first, and the slow copy is cancelled
//! (its server sees the handler dropped). Each key of the table is shown
//! to change what happens, and so are the rules around it: a POST is not
//! hedged, a gRPC call is, a spent budget sends no copy.

#[path = "../examples/grpc.rs"]
#[allow(dead_code)]
mod grpc;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::uri::PathAndQuery;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use mesh::metrics::RetryMetrics;
use mesh::{CallOptions, MeshClient, MeshConfig};
use tonic_prost::ProstCodec;

use grpc::{HelloReply, HelloRequest, SAY_HELLO};

/// How long the slow instances take: far longer than any hedged call.
const SLOW: Duration = Duration::from_secs(2);
/// A hedged call takes the delay plus a fast answer; on a loaded machine,
/// well under this.
const QUICK: Duration = Duration::from_secs(1);
/// A call that waited for a slow instance took at least this.
const WAITED: Duration = Duration::from_millis(1900);

/// The file's hedging line, every key written (the defaults).
const HEDGING: &str = r#"hedging = { max_attempts = 3, delay = "50ms", non_fatal_grpc_codes = [14], non_fatal_statuses = [502, 503, 504] }"#;

/// How an instance answers.
#[derive(Clone, Copy, Debug)]
enum Answer {
    /// 200 (gRPC: OK) after this long.
    After(Duration),
    /// At once with this status (gRPC: trailers-only with this code).
    Fails(u16),
}

/// What an instance saw: handlers started, and how each ended.
#[derive(Default)]
struct Seen {
    started: AtomicUsize,
    completed: AtomicUsize,
    cancelled: AtomicUsize,
}

/// Counts one handler: completed when it answered, cancelled when it was
/// dropped before (its connection closed, its HTTP/2 stream reset).
struct Handler(Arc<Seen>, bool);

impl Handler {
    fn new(seen: &Arc<Seen>) -> Handler {
        seen.started.fetch_add(1, Ordering::SeqCst);
        Handler(Arc::clone(seen), false)
    }
}

impl Drop for Handler {
    fn drop(&mut self) {
        let ended = if self.1 {
            &self.0.completed
        } else {
            &self.0.cancelled
        };
        ended.fetch_add(1, Ordering::SeqCst);
    }
}

/// One instance on a loopback port.
struct Instance {
    addr: SocketAddr,
    name: String,
    seen: Arc<Seen>,
}

// === impl Instance ===

impl Instance {
    /// An HTTP/1.1 instance (hyper's server) answering as `answer` says,
    /// naming itself in `x-instance`.
    async fn http(name: &str, answer: Answer) -> Instance {
        let seen = Arc::new(Seen::default());
        let counted = Arc::clone(&seen);
        let named = name.to_owned();
        let addr = listen(move |tcp| {
            let (seen, name) = (Arc::clone(&counted), named.clone());
            let svc = hyper::service::service_fn(move |_req: Request<hyper::body::Incoming>| {
                let handler = Handler::new(&seen);
                let name = name.clone();
                async move {
                    // Moved whole (not just the field set below), so it
                    // lives exactly as long as the handler.
                    let mut handler = handler;
                    let status = match answer {
                        Answer::After(delay) => {
                            tokio::time::sleep(delay).await;
                            200
                        }
                        Answer::Fails(status) => status,
                    };
                    handler.1 = true;
                    Ok::<_, Infallible>(
                        Response::builder()
                            .status(status)
                            .header("x-instance", name)
                            .body(Full::new(Bytes::new()))
                            .expect("response"),
                    )
                }
            });
            async move {
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), svc)
                    .await;
            }
        })
        .await;
        Instance {
            addr,
            name: name.to_owned(),
            seen,
        }
    }

    /// A gRPC greeter (tonic's handler over hyper's HTTP/2 server)
    /// answering `SayHello` as `answer` says, naming itself in the reply.
    async fn grpc(name: &str, answer: Answer) -> Instance {
        let seen = Arc::new(Seen::default());
        let greeter = Greeter {
            name: name.to_owned(),
            answer,
            seen: Arc::clone(&seen),
        };
        let addr = mesh_testkit::h2c::serve(greeter).await.expect("served");
        Instance {
            addr,
            name: name.to_owned(),
            seen,
        }
    }

    fn started(&self) -> usize {
        self.seen.started.load(Ordering::SeqCst)
    }

    fn completed(&self) -> usize {
        self.seen.completed.load(Ordering::SeqCst)
    }

    fn cancelled(&self) -> usize {
        self.seen.cancelled.load(Ordering::SeqCst)
    }
}

/// Accepts connections on a loopback port, serving each with `serve`.
async fn listen<F, Fut>(serve: F) -> SocketAddr
where
    F: Fn(tokio::net::TcpStream) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            tokio::spawn(serve(tcp));
        }
    });
    addr
}

/// The greeter service of one gRPC instance.
#[derive(Clone)]
struct Greeter {
    name: String,
    answer: Answer,
    seen: Arc<Seen>,
}

impl tower::Service<Request<hyper::body::Incoming>> for Greeter {
    type Response = Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<hyper::body::Incoming>) -> Self::Future {
        let greeter = self.clone();
        Box::pin(async move {
            if req.uri().path() != SAY_HELLO {
                return Ok(tonic::Status::unimplemented("no such method").into_http());
            }
            // Dropped with this future when the client resets the stream.
            let mut handler = Handler::new(&greeter.seen);
            let answer = match greeter.answer {
                Answer::After(delay) => {
                    tokio::time::sleep(delay).await;
                    let mut grpc =
                        tonic::server::Grpc::new(ProstCodec::<HelloReply, HelloRequest>::default());
                    grpc.unary(greet(greeter.name.clone()), req).await
                }
                Answer::Fails(code) => {
                    tonic::Status::new(tonic::Code::from(code as i32), "failing").into_http()
                }
            };
            handler.1 = true;
            Ok(answer)
        })
    }
}

/// `SayHello`: the reply names the instance.
fn greet(
    name: String,
) -> impl tower::Service<
    tonic::Request<HelloRequest>,
    Response = tonic::Response<HelloReply>,
    Error = tonic::Status,
    Future = impl Send,
> {
    tower::service_fn(move |_req: tonic::Request<HelloRequest>| {
        let message = name.clone();
        async move { Ok(tonic::Response::new(HelloReply { message })) }
    })
}

/// Where a service's settings are written.
#[derive(Clone, Copy, Debug)]
enum Route {
    /// `[services.users]`: the service has a route (and a retry layer and
    /// budget) of its own, reported as `users`.
    Own,
    /// Nothing for the service: it shares the default route (`*`), and
    /// its budget travels with each request.
    Shared,
}

// === impl Route ===

impl Route {
    fn label(self, service: &str) -> String {
        match self {
            Route::Own => service.to_owned(),
            Route::Shared => "*".to_owned(),
        }
    }
}

/// A mesh client for `service` at `instances`, its calls balanced round
/// robin (so the slow instance gets its share of first copies), with
/// `retry` as the body of its `[retry]` section (`None`: no section).
async fn client(
    service: &str,
    instances: &[&Instance],
    retry: Option<&str>,
    route: Route,
) -> MeshClient {
    let list: Vec<String> = instances
        .iter()
        .map(|i| format!("\"{}\"", i.addr))
        .collect();
    let protocol = if service == "greeter" { "h2c" } else { "http1" };
    // Keys outside any table come first.
    let (top, tables) = match route {
        Route::Own => (
            String::new(),
            format!(
                "[services.{service}]\nprotocol = \"{protocol}\"\ntimeout = \"5s\"\nbalance = {{ strategy = \"round_robin\" }}"
            ),
        ),
        Route::Shared => (
            "timeout = \"5s\"".to_owned(),
            "[balance]\nstrategy = \"round_robin\"".to_owned(),
        ),
    };
    let retry = retry.map_or(String::new(), |r| format!("[retry]\n{r}"));
    let text = format!(
        r#"{top}
[service]
name = "api-gateway"
[discovery]
kind = "static"
services = {{ {service} = [{}] }}
{tables}
{retry}
"#,
        list.join(", ")
    );
    let config = MeshConfig::from_toml_str(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    MeshClient::from_config(config).await.expect("client")
}

/// One call's outcome: who answered, with what, and how long it took.
#[derive(Debug)]
struct Call {
    instance: String,
    status: StatusCode,
    took: Duration,
}

/// Sends `method` to `users` and reads the whole answer.
async fn call(client: &MeshClient, method: http::Method, options: CallOptions) -> Call {
    let started = Instant::now();
    let response = client
        .request(method, "users", "/", Bytes::from_static(b"{}"), options)
        .await
        .expect("answered");
    let status = response.status();
    let instance = response.headers()["x-instance"]
        .to_str()
        .expect("ascii")
        .to_owned();
    response.into_body().collect().await.expect("body");
    Call {
        instance,
        status,
        took: started.elapsed(),
    }
}

/// `n` GETs, one after the other.
async fn gets(client: &MeshClient, n: usize) -> Vec<Call> {
    let mut calls = Vec::new();
    for _ in 0..n {
        calls.push(call(client, http::Method::GET, CallOptions::default()).await);
    }
    calls
}

/// One `SayHello` through the client's gRPC channel: who answered (or the
/// status), and how long it took.
async fn say_hello(client: &MeshClient) -> (Result<String, tonic::Status>, Duration) {
    let mut grpc = tonic::client::Grpc::with_origin(
        client.grpc_channel(),
        "http://greeter".parse().expect("uri"),
    );
    grpc.ready().await.expect("ready");
    let started = Instant::now();
    let reply = grpc
        .unary(
            tonic::Request::new(HelloRequest {
                name: "Ada".to_owned(),
            }),
            PathAndQuery::from_static(SAY_HELLO),
            ProstCodec::<HelloRequest, HelloReply>::default(),
        )
        .await;
    (reply.map(|r| r.into_inner().message), started.elapsed())
}

/// The retry counters of `route`.
fn retry_of(client: &MeshClient, route: &str) -> RetryMetrics {
    client
        .metrics()
        .routes
        .into_iter()
        .find(|r| r.route == route)
        .unwrap_or_else(|| panic!("no route {route}"))
        .retry
}

/// Waits until `done`, failing the test after ten seconds (generous: a
/// loaded two-core machine).
async fn until(what: &str, mut done: impl FnMut() -> bool) {
    let started = Instant::now();
    while !done() {
        assert!(started.elapsed() < Duration::from_secs(10), "never: {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Three HTTP instances: the first slow, two quick.
async fn slow_and_fast() -> [Instance; 3] {
    [
        Instance::http("slow", Answer::After(SLOW)).await,
        Instance::http("fast-1", Answer::After(Duration::ZERO)).await,
        Instance::http("fast-2", Answer::After(Duration::ZERO)).await,
    ]
}

/// The value of the Prometheus sample `name{route="<route>"}`.
fn sample(text: &str, name: &str, route: &str) -> u64 {
    let prefix = format!("{name}{{route=\"{route}\"}} ");
    let line = text
        .lines()
        .find(|l| l.starts_with(&prefix))
        .unwrap_or_else(|| panic!("no {prefix} in\n{text}"));
    line[prefix.len()..].trim().parse().expect("a count")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hedged_gets_all_finish_fast_and_the_slow_instance_s_copies_are_cancelled() {
    for route in [Route::Own, Route::Shared] {
        let [slow, fast_1, fast_2] = slow_and_fast().await;
        let client = client("users", &[&slow, &fast_1, &fast_2], Some(HEDGING), route).await;
        for call in gets(&client, 9).await {
            assert!(call.took < QUICK, "{route:?}: {call:?}");
            assert_eq!(call.status, StatusCode::OK);
            assert_ne!(call.instance, slow.name, "{route:?}: a copy elsewhere wins");
        }
        assert!(
            slow.started() >= 2,
            "{route:?}: round robin sent it its share"
        );
        until("every slow copy cancelled", || {
            slow.cancelled() == slow.started()
        })
        .await;
        assert_eq!(slow.completed(), 0, "{route:?}");
        // The cancelled copies left no count behind.
        let metrics = client.metrics();
        assert_eq!(metrics.in_flight, 0);
        let instances = metrics.routes.iter().flat_map(|r| &r.services);
        for instance in instances.flat_map(|s| &s.instances) {
            assert_eq!(instance.in_flight, 0, "{route:?}: {instance:?}");
        }

        let label = route.label("users");
        let retry = retry_of(&client, &label);
        // Each call whose first copy met the slow instance sent at least
        // one other copy, which won; a quick first copy may (on a loaded
        // machine) have been hedged too, to no avail.
        assert!(
            retry.hedges >= slow.started() as u64,
            "{route:?}: {retry:?}"
        );
        assert!(retry.hedges_won >= 1, "{route:?}: {retry:?}");
        assert!(retry.hedges_won <= retry.hedges, "{route:?}: {retry:?}");
        assert_eq!((retry.requests, retry.retries), (9, 0), "{route:?}");

        let text = client.prometheus();
        assert_eq!(
            sample(&text, "mesh_retry_hedges_total", &label),
            retry.hedges
        );
        assert_eq!(
            sample(&text, "mesh_retry_hedges_won_total", &label),
            retry.hedges_won
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_hedging_the_gets_routed_to_the_slow_instance_wait_for_it() {
    for retry in [None, Some("max_retries = 2")] {
        let [slow, fast_1, fast_2] = slow_and_fast().await;
        let client = client("users", &[&slow, &fast_1, &fast_2], retry, Route::Own).await;
        let calls = gets(&client, 6).await;
        let waited: Vec<&Call> = calls.iter().filter(|c| c.instance == slow.name).collect();
        assert_eq!(waited.len(), 2, "round robin over three: {calls:?}");
        for call in &calls {
            match call.instance == slow.name {
                true => assert!(call.took >= WAITED, "{call:?}"),
                false => assert!(call.took < QUICK, "{call:?}"),
            }
        }
        assert_eq!((slow.completed(), slow.cancelled()), (2, 0));
        assert_eq!(retry_of(&client, "users").hedges, 0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_post_is_not_hedged_unless_it_carries_an_idempotency_key() {
    let [slow, fast_1, fast_2] = slow_and_fast().await;
    let client = client(
        "users",
        &[&slow, &fast_1, &fast_2],
        Some(HEDGING),
        Route::Own,
    )
    .await;
    // Three POSTs: round robin sends one to the slow instance, and only
    // that instance answers it, however long it takes.
    let mut posts = Vec::new();
    for _ in 0..3 {
        posts.push(call(&client, http::Method::POST, CallOptions::default()).await);
    }
    let waited: Vec<&Call> = posts.iter().filter(|c| c.instance == slow.name).collect();
    assert_eq!(waited.len(), 1, "{posts:?}");
    assert!(waited[0].took >= WAITED, "{posts:?}");
    assert_eq!(retry_of(&client, "users").hedges, 0);
    assert_eq!((slow.started(), slow.completed()), (1, 1));

    // Said to be safe to send twice, it is hedged like a GET.
    let keyed = CallOptions::default().header(
        http::HeaderName::from_static("idempotency-key"),
        http::HeaderValue::from_static("order-42"),
    );
    for _ in 0..3 {
        let post = call(&client, http::Method::POST, keyed.clone()).await;
        assert!(post.took < QUICK, "{post:?}");
        assert_ne!(post.instance, slow.name);
    }
    assert!(retry_of(&client, "users").hedges >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spent_budget_sends_no_hedge() {
    let retry = format!("budget_percent = 0\n{HEDGING}");
    for route in [Route::Own, Route::Shared] {
        let [slow, fast_1, fast_2] = slow_and_fast().await;
        let client = client("users", &[&slow, &fast_1, &fast_2], Some(&retry), route).await;
        let calls = gets(&client, 3).await;
        let waited: Vec<&Call> = calls.iter().filter(|c| c.instance == slow.name).collect();
        assert_eq!(waited.len(), 1, "{route:?}: {calls:?}");
        assert!(waited[0].took >= WAITED, "{route:?}: {calls:?}");
        let retry = retry_of(&client, &route.label("users"));
        assert_eq!(retry.hedges, 0, "{route:?}: {retry:?}");
        assert!(retry.budget_exhausted >= 1, "{route:?}: {retry:?}");
        assert_eq!((slow.started(), slow.completed()), (1, 1), "{route:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_attempts_bounds_the_copies_of_a_call() {
    for max_attempts in [2, 3] {
        // Every instance slow: no copy answers before the last is sent.
        let instances = [
            Instance::http("slow-1", Answer::After(SLOW)).await,
            Instance::http("slow-2", Answer::After(SLOW)).await,
            Instance::http("slow-3", Answer::After(SLOW)).await,
        ];
        let [a, b, c] = &instances;
        let retry = format!("hedging = {{ max_attempts = {max_attempts}, delay = \"50ms\" }}");
        let client = client("users", &[a, b, c], Some(&retry), Route::Own).await;
        let only = gets(&client, 1).await;
        assert!(only[0].took >= WAITED, "{only:?}");
        let copies: usize = instances.iter().map(Instance::started).sum();
        assert_eq!(copies, max_attempts, "one copy per instance, at most");
        until("the losers cancelled", || {
            instances.iter().map(Instance::cancelled).sum::<usize>() == max_attempts - 1
        })
        .await;
        let retry = retry_of(&client, "users");
        assert_eq!(retry.hedges, max_attempts as u64 - 1, "{retry:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_delay_is_how_long_a_copy_goes_unanswered_before_the_next() {
    let [slow, fast_1, fast_2] = slow_and_fast().await;
    let delay = Duration::from_millis(600);
    let retry = r#"hedging = { delay = "600ms" }"#;
    let client = client("users", &[&slow, &fast_1, &fast_2], Some(retry), Route::Own).await;
    let calls = gets(&client, 6).await;
    let hedged: Vec<&Call> = calls
        .iter()
        .filter(|c| c.took >= Duration::from_millis(500))
        .collect();
    // The calls whose first copy met the slow instance (every other one:
    // each hedge takes the next instance's turn) were answered by their
    // second, sent after the delay.
    assert_eq!(hedged.len(), slow.started(), "{calls:?}");
    assert!(hedged.len() >= 2, "{calls:?}");
    for call in &calls {
        assert_ne!(call.instance, slow.name, "{call:?}");
        assert!(call.took < delay + QUICK, "{call:?}");
        if call.took >= Duration::from_millis(500) {
            assert!(call.took >= delay, "{call:?}");
        }
    }
    assert_eq!(retry_of(&client, "users").hedges_won, hedged.len() as u64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_non_fatal_status_sends_the_next_copy_at_once_and_a_fatal_one_is_the_answer() {
    for (non_fatal, recovers) in [("[503]", true), ("[502]", false)] {
        let failing = Instance::http("failing", Answer::Fails(503)).await;
        let fine = Instance::http("fine", Answer::After(Duration::ZERO)).await;
        // A long delay: only a non-fatal answer explains a quick second copy.
        let retry = format!("hedging = {{ delay = \"5s\", non_fatal_statuses = {non_fatal} }}");
        let client = client("users", &[&failing, &fine], Some(&retry), Route::Own).await;
        let calls = gets(&client, 2).await;
        // Round robin sends the first call to the failing instance; when
        // its answer is non-fatal, the hedge takes the other's turn, and
        // the second call meets the failing one again.
        let met = if recovers { 2 } else { 1 };
        assert_eq!(failing.started(), met, "{non_fatal}: {calls:?}");
        for call in &calls {
            assert!(call.took < QUICK, "{non_fatal}: {call:?}");
            match (call.instance == failing.name, recovers) {
                // The 503 went back as the answer: a hedged call is never
                // retried, whatever retryable_statuses says.
                (true, false) => assert_eq!(call.status, StatusCode::SERVICE_UNAVAILABLE),
                (true, true) => panic!("{non_fatal}: a non-fatal answer returned: {call:?}"),
                (false, _) => assert_eq!(call.status, StatusCode::OK),
            }
        }
        let retry = retry_of(&client, "users");
        let hedges = if recovers { 2 } else { 0 };
        assert_eq!(retry.hedges, hedges, "{non_fatal}: {retry:?}");
        assert_eq!(retry.retries, 0, "{non_fatal}: {retry:?}");
    }
}

/// A slow gRPC greeter and two quick ones.
async fn greeters() -> [Instance; 3] {
    [
        Instance::grpc("slow", Answer::After(SLOW)).await,
        Instance::grpc("fast-1", Answer::After(Duration::ZERO)).await,
        Instance::grpc("fast-2", Answer::After(Duration::ZERO)).await,
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grpc_call_is_hedged_past_a_slow_instance_and_its_stream_reset() {
    let [slow, fast_1, fast_2] = greeters().await;
    let client = client(
        "greeter",
        &[&slow, &fast_1, &fast_2],
        Some(HEDGING),
        Route::Own,
    )
    .await;
    for _ in 0..6 {
        let (reply, took) = say_hello(&client).await;
        let reply = reply.expect("OK");
        assert_ne!(reply, slow.name);
        assert!(took < QUICK, "{took:?}");
    }
    assert!(slow.started() >= 1);
    until("every slow copy cancelled", || {
        slow.cancelled() == slow.started()
    })
    .await;
    assert_eq!(slow.completed(), 0);
    let retry = retry_of(&client, "greeter");
    assert!(retry.hedges >= slow.started() as u64, "{retry:?}");
    assert!(retry.hedges_won >= 1, "{retry:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_hedging_a_grpc_call_waits_for_the_slow_instance() {
    let [slow, fast_1, fast_2] = greeters().await;
    let client = client("greeter", &[&slow, &fast_1, &fast_2], None, Route::Own).await;
    let mut waited = 0;
    for _ in 0..3 {
        let (reply, took) = say_hello(&client).await;
        if reply.expect("OK") == slow.name {
            waited += 1;
            assert!(took >= WAITED, "{took:?}");
        }
    }
    assert_eq!(waited, 1, "round robin over three");
    assert_eq!(retry_of(&client, "greeter").hedges, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_non_fatal_grpc_code_sends_the_next_copy_at_once_and_a_fatal_one_is_the_answer() {
    for (non_fatal, recovers) in [("[14]", true), ("[]", false)] {
        let failing = Instance::grpc("failing", Answer::Fails(14)).await;
        let fine = Instance::grpc("fine", Answer::After(Duration::ZERO)).await;
        let retry = format!("hedging = {{ delay = \"5s\", non_fatal_grpc_codes = {non_fatal} }}");
        let client = client("greeter", &[&failing, &fine], Some(&retry), Route::Own).await;
        let mut unavailable = 0;
        for _ in 0..2 {
            let (reply, took) = say_hello(&client).await;
            assert!(took < QUICK, "{non_fatal}: {took:?}");
            match reply {
                Ok(name) => assert_eq!(name, fine.name),
                Err(status) => {
                    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
                    unavailable += 1;
                }
            }
        }
        // As over HTTP: a hedge takes the other instance's turn.
        let met = if recovers { 2 } else { 1 };
        assert_eq!(failing.started(), met, "{non_fatal}");
        assert_eq!(unavailable, usize::from(!recovers), "{non_fatal}");
        let retry = retry_of(&client, "greeter");
        let hedges = if recovers { 2 } else { 0 };
        assert_eq!(retry.hedges, hedges, "{non_fatal}: {retry:?}");
        assert_eq!(retry.retries, 0, "{non_fatal}: never retried: {retry:?}");
    }
}

/// Every copy sent to an instance slow from its first call is cancelled
/// after `delay`: those cancellations are its only measure, and the
/// default balancer (power of two choices over latency x load) must learn
/// from them to send it little, as it does without hedging.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_hedging_the_default_balancer_still_learns_which_instance_is_slow() {
    let [slow, fast_1, fast_2] = slow_and_fast().await;
    let list = format!(
        "\"{}\", \"{}\", \"{}\"",
        slow.addr, fast_1.addr, fast_2.addr
    );
    let config = MeshConfig::from_toml_str(&format!(
        r#"
[service]
name = "api-gateway"
[discovery]
kind = "static"
services = {{ users = [{list}] }}
[retry]
{HEDGING}
"#
    ))
    .expect("config");
    let client = MeshClient::from_config(config).await.expect("client");
    gets(&client, 40).await;
    let first_copies = slow.started();
    assert!(
        first_copies <= 5,
        "the slow instance got {first_copies} of 40 calls (1 without hedging)"
    );
}
