//! gRPC health checking from the front door: a `MeshClient` built from a
//! configuration file probes tonic servers on 127.0.0.1 with the standard
//! `grpc.health.v1` protocol (`[upstream_health] probe = { grpc = { ... } }`)
//! and sends no call to an instance that says `NOT_SERVING`; and the
//! client's own readiness, served to gRPC clients by
//! `mesh::health::grpc::health_service`, follows its health manager.
//!
//! The servers are tonic's own handlers (`tonic::server::Grpc` for the
//! greeter, tonic-health's reporter for the health service) served over
//! HTTP/2 by hyper; the messages are written with prost's derive, so no
//! protoc is needed.

#[path = "../examples/grpc.rs"]
#[allow(dead_code)]
mod grpc;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use http::uri::PathAndQuery;
use http_body_util::BodyExt;
use mesh::core::{Health, MeshEvent, Probe};
use mesh::health::grpc::{health_service, GrpcProbeClient};
use mesh::health::CheckError;
use mesh::{CallOptions, MeshClient, MeshConfig};
use mesh_testkit::{Backend, Behavior};
use tonic_health::pb::health_check_response::ServingStatus as Wire;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::health_server::HealthServer;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::server::{HealthReporter, HealthService};
use tonic_health::ServingStatus;
use tonic_prost::ProstCodec;
use tower::ServiceExt;

use grpc::{HelloReply, HelloRequest, SAY_HELLO};

/// The greeter's fully qualified service name, as a health check names it.
const GREETER: &str = "helloworld.Greeter";
const CHECK: &str = "/grpc.health.v1.Health/Check";
const WATCH: &str = "/grpc.health.v1.Health/Watch";

/// The whole server, as a health check names it.
const WHOLE_SERVER: &str = "";

/// Calls an instance received, by method.
#[derive(Default)]
struct Seen {
    hellos: AtomicUsize,
    checks: AtomicUsize,
    watches: AtomicUsize,
}

/// One instance's HTTP/2 service: the greeter's one method and the health
/// service, routed by path as a tonic server routes them.
#[derive(Clone)]
struct Instance {
    health: HealthServer<HealthService>,
    seen: Arc<Seen>,
}

impl tower::Service<http::Request<hyper::body::Incoming>> for Instance {
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<hyper::body::Incoming>) -> Self::Future {
        let instance = self.clone();
        Box::pin(async move {
            let seen = &instance.seen;
            match req.uri().path() {
                SAY_HELLO => {
                    seen.hellos.fetch_add(1, Ordering::SeqCst);
                    let mut grpc =
                        tonic::server::Grpc::new(ProstCodec::<HelloReply, HelloRequest>::default());
                    Ok(grpc.unary(say_hello(), req).await)
                }
                path @ (CHECK | WATCH) => {
                    let counter = if path == CHECK {
                        &seen.checks
                    } else {
                        &seen.watches
                    };
                    counter.fetch_add(1, Ordering::SeqCst);
                    instance.health.clone().oneshot(req).await
                }
                _ => Ok(tonic::Status::unimplemented("no such method").into_http()),
            }
        })
    }
}

/// `SayHello`: greets at once.
fn say_hello() -> impl tower::Service<
    tonic::Request<HelloRequest>,
    Response = tonic::Response<HelloReply>,
    Error = tonic::Status,
    Future = impl Send,
> + Clone {
    tower::service_fn(|req: tonic::Request<HelloRequest>| async move {
        Ok(tonic::Response::new(HelloReply {
            message: format!("Hello {}", req.into_inner().name),
        }))
    })
}

/// A greeter on a loopback port whose health tonic-health's reporter
/// keeps: the whole server and `helloworld.Greeter` start `SERVING`.
struct Greeter {
    addr: SocketAddr,
    reporter: HealthReporter,
    seen: Arc<Seen>,
}

// === impl Greeter ===

impl Greeter {
    async fn start() -> Greeter {
        let reporter = HealthReporter::new();
        reporter
            .set_service_status(GREETER, ServingStatus::Serving)
            .await;
        let seen = Arc::new(Seen::default());
        let instance = Instance {
            health: HealthServer::new(HealthService::from_health_reporter(reporter.clone())),
            seen: Arc::clone(&seen),
        };
        let addr = mesh_testkit::h2c::serve(instance).await.expect("served");
        Greeter {
            addr,
            reporter,
            seen,
        }
    }

    /// Says `status` for `service` (`""`: the whole server).
    async fn set(&self, service: &str, status: ServingStatus) {
        self.reporter.set_service_status(service, status).await;
    }

    fn hellos(&self) -> usize {
        self.seen.hellos.load(Ordering::SeqCst)
    }

    fn checks(&self) -> usize {
        self.seen.checks.load(Ordering::SeqCst)
    }

    fn watches(&self) -> usize {
        self.seen.watches.load(Ordering::SeqCst)
    }
}

/// A mesh client for the `greeter` service at `greeters`, over h2c,
/// balanced round robin (so each instance in rotation gets its share),
/// with `upstream_health` as its `[upstream_health]` section.
async fn client(greeters: &[&Greeter], upstream_health: &str) -> MeshClient {
    let list: Vec<String> = greeters.iter().map(|g| format!("\"{}\"", g.addr)).collect();
    let config = MeshConfig::from_toml_str(&format!(
        r#"
[service]
name = "api-gateway"
[discovery]
kind = "static"
services = {{ greeter = [{}] }}
[services.greeter]
protocol = "h2c"
balance = {{ strategy = "round_robin" }}
[upstream_health]
{upstream_health}
"#,
        list.join(", ")
    ))
    .expect("config");
    MeshClient::from_config(config).await.expect("client")
}

/// `n` `SayHello` calls through the client's gRPC channel, one after the
/// other; every one must succeed.
async fn hellos(client: &MeshClient, n: usize) {
    let mut grpc = tonic::client::Grpc::with_origin(
        client.grpc_channel(),
        "http://greeter".parse().expect("uri"),
    );
    for i in 0..n {
        grpc.ready().await.expect("ready");
        let reply = grpc
            .unary(
                tonic::Request::new(HelloRequest {
                    name: format!("caller {i}"),
                }),
                PathAndQuery::from_static(SAY_HELLO),
                ProstCodec::<HelloRequest, HelloReply>::default(),
            )
            .await
            .unwrap_or_else(|status| panic!("call {i} failed: {status:?}"));
        assert_eq!(reply.into_inner().message, format!("Hello caller {i}"));
    }
}

/// Whether the client's balancer may send calls to `addr` now, as its
/// metrics report it.
fn available(client: &MeshClient, addr: SocketAddr) -> bool {
    let address = addr.to_string();
    client
        .metrics()
        .routes
        .iter()
        .flat_map(|r| &r.services)
        .filter(|s| s.service == "greeter")
        .flat_map(|s| &s.instances)
        .find(|i| i.address == address)
        .is_some_and(|i| i.available)
}

/// Waits until `done`, failing the test after ten seconds (generous: a
/// loaded two-core machine); returns how long it took.
async fn until(what: &str, mut done: impl FnMut() -> bool) -> Duration {
    let started = Instant::now();
    while !done() {
        assert!(started.elapsed() < Duration::from_secs(10), "never: {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    started.elapsed()
}

/// How many of `n` calls reach `greeter`.
async fn share_of(client: &MeshClient, greeter: &Greeter, n: usize) -> usize {
    let before = greeter.hellos();
    hellos(client, n).await;
    greeter.hellos() - before
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_ejects_a_not_serving_instance_at_once_and_readmits_it_when_serving() {
    let (a, b) = (Greeter::start().await, Greeter::start().await);
    // An hour between rounds: only the stream can explain a prompt change.
    let client = client(
        &[&a, &b],
        r#"probe = { grpc = { watch = true } }
interval = "1h""#,
    )
    .await;
    let mut events = client.subscribe();
    // The first call starts the service's checker; it follows each
    // instance's Watch stream.
    hellos(&client, 2).await;
    until("both instances watched", || {
        a.watches() >= 1 && b.watches() >= 1
    })
    .await;

    for round in 0..2 {
        a.set(WHOLE_SERVER, ServingStatus::NotServing).await;
        let took = until("ejected", || !available(&client, a.addr)).await;
        assert!(took < Duration::from_secs(5), "round {round}: {took:?}");
        assert_eq!(share_of(&client, &a, 20).await, 0, "round {round}");

        a.set(WHOLE_SERVER, ServingStatus::Serving).await;
        let took = until("readmitted", || available(&client, a.addr)).await;
        assert!(took < Duration::from_secs(5), "round {round}: {took:?}");
        let share = share_of(&client, &a, 20).await;
        assert!(
            share >= 8,
            "round {round}: readmitted, it got {share} of 20"
        );
    }
    // Each verdict was published on the client's events.
    let mut verdicts = Vec::new();
    while let Ok(event) = events.try_recv() {
        if let MeshEvent::EndpointHealthChanged { endpoint, to, .. } = event {
            if endpoint.to_string() == a.addr.to_string() {
                verdicts.push(to);
            }
        }
    }
    let unhealthy = verdicts.iter().filter(|v| **v == Health::Unhealthy);
    assert_eq!(unhealthy.count(), 2, "{verdicts:?}");
    // One stream per instance did it all.
    assert_eq!((a.watches(), b.watches()), (1, 1));
    assert_eq!((a.checks(), b.checks()), (0, 0), "no Check while watching");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_ejects_a_not_serving_instance_after_the_unhealthy_threshold_of_rounds() {
    let (a, b) = (Greeter::start().await, Greeter::start().await);
    let interval = Duration::from_millis(200);
    let client = client(
        &[&a, &b],
        r#"probe = { grpc = {} }
interval = "200ms"
jitter = "0s"
unhealthy_threshold = 3
healthy_threshold = 2"#,
    )
    .await;
    hellos(&client, 2).await;
    until("both instances checked", || {
        a.checks() >= 1 && b.checks() >= 1
    })
    .await;

    a.set(WHOLE_SERVER, ServingStatus::NotServing).await;
    let at_flip = a.checks();
    let took = until("ejected", || !available(&client, a.addr)).await;
    // Three failed rounds in a row, each at least an interval after the
    // one before: never sooner than two intervals.
    assert!(took >= interval * 2, "ejected after {took:?}");
    let rounds = a.checks() - at_flip;
    assert!(rounds >= 2, "ejected after {rounds} Checks");
    assert_eq!(share_of(&client, &a, 20).await, 0);

    a.set(WHOLE_SERVER, ServingStatus::Serving).await;
    let took = until("readmitted", || available(&client, a.addr)).await;
    // Two passed rounds: at least one interval apart.
    assert!(took >= interval, "readmitted after {took:?}");
    let share = share_of(&client, &a, 20).await;
    assert!(share >= 8, "readmitted, it got {share} of 20");
    assert_eq!((a.watches(), b.watches()), (0, 0), "no stream unless watch");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_watch_a_not_serving_instance_stays_in_rotation_until_the_next_check() {
    let (a, b) = (Greeter::start().await, Greeter::start().await);
    // The same hour between rounds as with watch, but Checks only.
    let client = client(
        &[&a, &b],
        r#"probe = { grpc = { watch = false } }
interval = "1h""#,
    )
    .await;
    hellos(&client, 2).await;
    until("both instances checked", || {
        a.checks() >= 1 && b.checks() >= 1
    })
    .await;

    a.set(WHOLE_SERVER, ServingStatus::NotServing).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(available(&client, a.addr));
    let share = share_of(&client, &a, 20).await;
    assert!(share >= 8, "nobody asked it again: it got {share} of 20");
    assert_eq!(a.checks(), 1, "the first round, and none within the hour");
    assert_eq!(a.watches(), 0);
}

/// With `probe`, flipping `ignored` on one instance leaves it in rotation;
/// flipping `obeyed` takes it out, and back.
async fn the_probed_name_decides(probe: &str, ignored: &str, obeyed: &str) {
    let (a, b) = (Greeter::start().await, Greeter::start().await);
    let client = client(&[&a, &b], probe).await;
    hellos(&client, 2).await;
    until("both instances probed", || {
        a.checks() + a.watches() >= 1 && b.checks() + b.watches() >= 1
    })
    .await;

    a.set(ignored, ServingStatus::NotServing).await;
    // Long enough for a stream to say it, or for several rounds of Check
    // to cross the threshold, had the probe asked about that name.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(available(&client, a.addr), "{probe}: {ignored:?} flipped");
    let share = share_of(&client, &a, 20).await;
    assert!(share >= 8, "{probe}: {ignored:?} flipped, it got {share}");

    a.set(obeyed, ServingStatus::NotServing).await;
    until("ejected", || !available(&client, a.addr)).await;
    assert_eq!(share_of(&client, &a, 20).await, 0, "{probe}");
    a.set(obeyed, ServingStatus::Serving).await;
    until("readmitted", || available(&client, a.addr)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_named_service_s_status_decides_not_the_whole_server_s() {
    for probe in [
        r#"probe = { grpc = { service = "helloworld.Greeter", watch = true } }
interval = "1h""#,
        r#"probe = { grpc = { service = "helloworld.Greeter" } }
interval = "100ms"
jitter = "0s"
unhealthy_threshold = 2"#,
    ] {
        the_probed_name_decides(probe, WHOLE_SERVER, GREETER).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_service_the_whole_server_s_status_decides() {
    for probe in [
        r#"probe = { grpc = { watch = true } }
interval = "1h""#,
        r#"probe = { grpc = {} }
interval = "100ms"
jitter = "0s"
unhealthy_threshold = 2"#,
    ] {
        the_probed_name_decides(probe, GREETER, WHOLE_SERVER).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_that_does_not_know_the_named_service_gets_no_calls() {
    let (a, b) = (Greeter::start().await, Greeter::start().await);
    b.set("orders.v1.Orders", ServingStatus::Serving).await;
    // tonic-health refuses a Watch of a name it does not know (NOT_FOUND)
    // rather than streaming SERVICE_UNKNOWN: a verdict all the same, at
    // once, however long the interval.
    let modes = [
        "probe = { grpc = { service = \"orders.v1.Orders\" } }\ninterval = \"100ms\"",
        "probe = { grpc = { service = \"orders.v1.Orders\", watch = true } }\ninterval = \"1h\"",
    ];
    for mode in modes {
        let client = client(&[&a, &b], &format!("{mode}\njitter = \"0s\"")).await;
        // The first call may land anywhere: nothing has been probed yet.
        hellos(&client, 1).await;
        until("a ejected", || !available(&client, a.addr)).await;
        assert!(available(&client, b.addr), "{mode}");
        assert_eq!(share_of(&client, &a, 10).await, 0, "{mode}");
    }
}

// --- The server side: the client's readiness to gRPC health clients ---

/// Serves `service` over HTTP/2 on a loopback port.
async fn serve_health(service: HealthServer<mesh::health::grpc::ReadinessHealth>) -> SocketAddr {
    mesh_testkit::h2c::serve(service).await.expect("served")
}

fn whole_server() -> HealthCheckRequest {
    HealthCheckRequest {
        service: WHOLE_SERVER.to_owned(),
    }
}

/// What `Check` answers now.
async fn check(health: &mut HealthClient<GrpcProbeClient>) -> Wire {
    let answer = health
        .check(whole_server())
        .await
        .expect("check")
        .into_inner();
    Wire::try_from(answer.status).expect("a defined status")
}

/// Asks `Check` until it answers `want`; fails after ten seconds.
async fn until_checked(health: &mut HealthClient<GrpcProbeClient>, want: Wire) {
    let started = Instant::now();
    loop {
        let seen = check(health).await;
        if seen == want {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "Check still says {seen:?}, not {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The next status a `Watch` stream sends, within ten seconds.
async fn next_status(stream: &mut tonic::Streaming<tonic_health::pb::HealthCheckResponse>) -> Wire {
    let message = tokio::time::timeout(Duration::from_secs(10), stream.message())
        .await
        .expect("a status within 10 s")
        .expect("the stream")
        .expect("open");
    Wire::try_from(message.status).expect("a defined status")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_s_readiness_is_served_as_grpc_health_through_shutdown_s_drain() {
    let users = Backend::start(Behavior::Ok).await.expect("backend");
    let config = MeshConfig::from_toml_str(&format!(
        r#"
[service]
name = "api-gateway"
[discovery]
kind = "static"
services = {{ users = ["{}"] }}
[health]
readiness_interval = "50ms"
failure_threshold = 1
success_threshold = 1
"#,
        users.addr()
    ))
    .expect("config");
    let database = Arc::new(AtomicBool::new(true));
    let up = Arc::clone(&database);
    let client = MeshClient::builder(config)
        .check_with("database", [Probe::Readiness], move || {
            let up = up.load(Ordering::SeqCst);
            async move {
                match up {
                    true => Ok(()),
                    false => Err(CheckError("connection refused".to_owned())),
                }
            }
        })
        .expect("check")
        .build()
        .await
        .expect("client");
    let manager = client.health().expect("a [health] section makes a manager");
    let addr = serve_health(health_service(manager)).await;
    let mut health = HealthClient::with_origin(
        GrpcProbeClient::plaintext(),
        format!("http://{addr}").parse().expect("uri"),
    );

    // Ready once the check passes; not while it fails; ready again.
    until_checked(&mut health, Wire::Serving).await;
    let mut stream = health
        .watch(whole_server())
        .await
        .expect("watch")
        .into_inner();
    assert_eq!(next_status(&mut stream).await, Wire::Serving);
    database.store(false, Ordering::SeqCst);
    until_checked(&mut health, Wire::NotServing).await;
    assert_eq!(next_status(&mut stream).await, Wire::NotServing);
    database.store(true, Ordering::SeqCst);
    until_checked(&mut health, Wire::Serving).await;
    assert_eq!(next_status(&mut stream).await, Wire::Serving);

    // A call in flight (its body unread) holds the drain open; meanwhile
    // gRPC clients are told NOT_SERVING, so they stop sending.
    let response = client
        .get("users", "/", CallOptions::default())
        .await
        .expect("the call");
    let shutdown = tokio::spawn({
        let client = client.clone();
        async move { client.shutdown(Duration::from_secs(10)).await }
    });
    assert_eq!(next_status(&mut stream).await, Wire::NotServing);
    assert_eq!(check(&mut health).await, Wire::NotServing);
    assert!(!shutdown.is_finished(), "still draining the call in flight");
    let body = response.into_body().collect().await.expect("body");
    drop(body);
    let left = tokio::time::timeout(Duration::from_secs(10), shutdown)
        .await
        .expect("the drain ends with the call")
        .expect("joined");
    assert_eq!(left, 0);
    assert_eq!(check(&mut health).await, Wire::NotServing, "for good");
}
