//! gRPC health probes of upstream endpoints (`grpc.health.v1`, gRFC A17)
//! against real HTTP/2 servers on 127.0.0.1 running tonic-health's
//! reporter: `Check` at an interval, `Watch` followed as it streams, and
//! the fallback to `Check` where there is no stream.

mod common;

use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use common::{until, GrpcServer};
use mesh_core::{Endpoint, EndpointSet, Health, ServiceName};
use mesh_health::{UpstreamCheckConfig, UpstreamHealthChecker, UpstreamProbe};
use tonic::{Request, Response, Status};
use tonic_health::pb::health_server::{Health as HealthApi, HealthServer};
use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse};
use tonic_health::server::{health_reporter, HealthReporter, HealthService};
use tonic_health::ServingStatus;

const USERS: &str = "users.v1.Users";

fn config(service: &str, watch: bool, interval: Duration) -> UpstreamCheckConfig {
    UpstreamCheckConfig {
        probe: UpstreamProbe::Grpc {
            service: service.to_owned(),
            watch,
        },
        interval,
        jitter: interval / 4,
        // Generous: a live endpoint on a loaded CI machine must not be
        // condemned by a slow answer.
        timeout: Duration::from_secs(2),
        healthy_threshold: 2,
        unhealthy_threshold: 2,
        unhealthy_until_checked: false,
    }
}

/// One endpoint at `addr`, probed by a checker with `config`.
fn check(
    addr: std::net::SocketAddr,
    config: UpstreamCheckConfig,
) -> (EndpointSet, UpstreamHealthChecker) {
    let set = EndpointSet::new(
        ServiceName::new("users").expect("name"),
        vec![Endpoint::builder(addr).build()],
    );
    let source = set.clone();
    let checker = UpstreamHealthChecker::spawn(
        ServiceName::new("users").expect("name"),
        config,
        move || Some(source.clone()),
        None,
    )
    .expect("checker");
    (set, checker)
}

fn health(set: &EndpointSet) -> Health {
    set.endpoints()[0].state().health()
}

async fn reporter_server() -> (HealthReporter, GrpcServer) {
    let (reporter, service) = health_reporter();
    reporter
        .set_service_status(USERS, ServingStatus::Serving)
        .await;
    (reporter, GrpcServer::start(service).await)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_flips_the_endpoint_with_the_service_s_status() {
    let (reporter, server) = reporter_server().await;
    let (set, _checker) = check(server.addr, config(USERS, false, Duration::from_millis(20)));
    until("serving is healthy", || health(&set) == Health::Healthy).await;

    reporter
        .set_service_status(USERS, ServingStatus::NotServing)
        .await;
    until("not serving is unhealthy", || {
        health(&set) == Health::Unhealthy
    })
    .await;

    reporter
        .set_service_status(USERS, ServingStatus::Serving)
        .await;
    until("serving again is healthy", || {
        health(&set) == Health::Healthy
    })
    .await;
    assert!(server.calls("Check") >= 5, "{}", server.calls("Check"));
    assert_eq!(server.calls("Watch"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_asks_about_the_configured_service_or_the_whole_server() {
    let (reporter, server) = reporter_server().await;
    // The whole server is serving; a service it never heard of is not
    // (Check answers NOT_FOUND).
    let (whole, _a) = check(server.addr, config("", false, Duration::from_millis(20)));
    let (unknown, _b) = check(
        server.addr,
        config("orders.v1.Orders", false, Duration::from_millis(20)),
    );
    until("the whole server is healthy", || {
        health(&whole) == Health::Healthy
    })
    .await;
    until("an unknown service is unhealthy", || {
        health(&unknown) == Health::Unhealthy
    })
    .await;
    reporter
        .set_service_status("", ServingStatus::NotServing)
        .await;
    until("the whole server not serving", || {
        health(&whole) == Health::Unhealthy
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_ejects_and_readmits_as_the_server_streams_without_waiting_for_the_interval() {
    let (reporter, server) = reporter_server().await;
    // An hour between rounds: only the stream can explain a prompt change.
    let (set, _checker) = check(server.addr, config(USERS, true, Duration::from_secs(3600)));
    until("the first streamed status admits it", || {
        health(&set) == Health::Healthy
    })
    .await;

    for _ in 0..2 {
        reporter
            .set_service_status(USERS, ServingStatus::NotServing)
            .await;
        let took = until("ejected", || health(&set) == Health::Unhealthy).await;
        assert!(took < Duration::from_secs(5), "{took:?}");
        reporter
            .set_service_status(USERS, ServingStatus::Serving)
            .await;
        let took = until("readmitted", || health(&set) == Health::Healthy).await;
        assert!(took < Duration::from_secs(5), "{took:?}");
    }
    // One stream did it all: no Check, no second Watch.
    assert_eq!(server.calls("Watch"), 1);
    assert_eq!(server.calls("Check"), 0);
}

/// tonic-health's service with `Watch` refused, as by a server that
/// implements only `Check`.
#[derive(Clone)]
struct CheckOnly(std::sync::Arc<HealthService>);

#[tonic::async_trait]
impl HealthApi for CheckOnly {
    async fn check(
        &self,
        request: Request<HealthCheckRequest>,
    ) -> Result<Response<HealthCheckResponse>, Status> {
        self.0.check(request).await
    }

    type WatchStream = tokio_stream::Empty<Result<HealthCheckResponse, Status>>;

    async fn watch(
        &self,
        _: Request<HealthCheckRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        Err(Status::unimplemented("no Watch here"))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_without_watch_is_checked_at_the_interval_instead() {
    let reporter = HealthReporter::new();
    reporter
        .set_service_status(USERS, ServingStatus::Serving)
        .await;
    let only = CheckOnly(std::sync::Arc::new(HealthService::from_health_reporter(
        reporter.clone(),
    )));
    let server = GrpcServer::start(HealthServer::new(only)).await;
    let (set, _checker) = check(server.addr, config(USERS, true, Duration::from_millis(20)));
    until("healthy by Check", || health(&set) == Health::Healthy).await;
    reporter
        .set_service_status(USERS, ServingStatus::NotServing)
        .await;
    until("unhealthy by Check", || health(&set) == Health::Unhealthy).await;
    reporter
        .set_service_status(USERS, ServingStatus::Serving)
        .await;
    until("healthy again by Check", || health(&set) == Health::Healthy).await;
    // UNIMPLEMENTED means no Watch: it is not asked for again.
    assert_eq!(server.calls("Watch"), 1);
    assert!(server.calls("Check") >= 5, "{}", server.calls("Check"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_without_the_health_service_is_unhealthy() {
    // Every call answered UNIMPLEMENTED, as by a tonic server that never
    // added the health service.
    let unimplemented = tower::service_fn(|_: http::Request<hyper::body::Incoming>| async {
        Ok::<_, Infallible>(Status::unimplemented("").into_http::<tonic::body::Body>())
    });
    let server = GrpcServer::start(unimplemented).await;
    for watch in [false, true] {
        let (set, _checker) = check(server.addr, config("", watch, Duration::from_millis(20)));
        until("unhealthy", || health(&set) == Health::Unhealthy).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_watch_falls_back_to_check_and_is_followed_again_once_back() {
    let (_reporter, server) = reporter_server().await;
    let addr = server.addr;
    let (set, _checker) = check(addr, config(USERS, true, Duration::from_millis(50)));
    until("healthy by the stream", || health(&set) == Health::Healthy).await;

    // The process dies: the stream breaks, Checks are refused.
    drop(server);
    until("unhealthy by Check", || health(&set) == Health::Unhealthy).await;

    // Back on the same address: Checks let it in, and a new stream
    // follows it again.
    let (reporter, service) = health_reporter();
    reporter
        .set_service_status(USERS, ServingStatus::Serving)
        .await;
    let server = GrpcServer::start_on(addr, service).await;
    until("healthy again", || health(&set) == Health::Healthy).await;
    until("followed again", || server.calls("Watch") >= 1).await;
}

/// Answers a serving status the protocol does not define, to `Check` and
/// as the one message of a `Watch` stream.
#[derive(Clone)]
struct Odd;

#[tonic::async_trait]
impl HealthApi for Odd {
    async fn check(
        &self,
        _: Request<HealthCheckRequest>,
    ) -> Result<Response<HealthCheckResponse>, Status> {
        Ok(Response::new(HealthCheckResponse { status: 42 }))
    }

    type WatchStream = tokio_stream::Iter<std::vec::IntoIter<Result<HealthCheckResponse, Status>>>;

    async fn watch(
        &self,
        _: Request<HealthCheckRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let odd = vec![Ok(HealthCheckResponse { status: 42 })];
        Ok(Response::new(tokio_stream::iter(odd)))
    }
}

/// Answers every call with `body` and `content_type`, no trailers.
fn raw(
    content_type: &'static str,
    body: &'static [u8],
) -> impl tower::Service<
    http::Request<hyper::body::Incoming>,
    Response = http::Response<tonic::body::Body>,
    Error = Infallible,
    Future = impl Send,
> + Clone
       + Send {
    tower::service_fn(move |_: http::Request<hyper::body::Incoming>| async move {
        let body = http_body_util::Full::new(Bytes::from_static(body));
        Ok::<_, Infallible>(
            http::Response::builder()
                .header(http::header::CONTENT_TYPE, content_type)
                .body(tonic::body::Body::new(body))
                .expect("response"),
        )
    })
}

static PANICKED: AtomicBool = AtomicBool::new(false);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_answers_are_unhealthy_and_never_panic() {
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        PANICKED.store(true, Ordering::Relaxed);
        previous(info);
    }));
    let servers = [
        ("status 42", GrpcServer::start(HealthServer::new(Odd)).await),
        // A gRPC frame of 3 bytes that are no protobuf.
        (
            "garbage message",
            GrpcServer::start(raw("application/grpc", &[0, 0, 0, 0, 3, 0xff, 0xff, 0xff])).await,
        ),
        // A frame header promising more than there is.
        (
            "truncated frame",
            GrpcServer::start(raw("application/grpc", &[0, 0, 0, 0x10, 0])).await,
        ),
        (
            "not gRPC",
            GrpcServer::start(raw("text/plain", b"hello")).await,
        ),
    ];
    for (what, server) in &servers {
        for watch in [false, true] {
            let (set, checker) = check(server.addr, config("", watch, Duration::from_millis(20)));
            until(&format!("{what} (watch: {watch}) is unhealthy"), || {
                health(&set) == Health::Unhealthy
            })
            .await;
            // Still probing, and staying unhealthy.
            tokio::time::sleep(Duration::from_millis(100)).await;
            assert_eq!(health(&set), Health::Unhealthy, "{what}");
            assert_eq!(checker.tracked(), 1, "{what}");
        }
    }
    assert!(!PANICKED.load(Ordering::Relaxed), "something panicked");
}

#[test]
fn a_grpc_probe_is_configured_like_the_others_and_checked_by_key() {
    let config: UpstreamCheckConfig =
        serde_json::from_str(r#"{ "probe": { "grpc": {} } }"#).expect("parses");
    assert_eq!(
        config.probe,
        UpstreamProbe::Grpc {
            service: String::new(),
            watch: false
        },
        "the whole server, by Check"
    );
    config.validate().expect("valid");
    let config: UpstreamCheckConfig = serde_json::from_str(
        r#"{ "probe": { "grpc": { "service": "users.v1.Users", "watch": true } }, "interval": "5s" }"#,
    )
    .expect("parses");
    config.validate().expect("valid");

    for bad in [
        "users v1",
        "/users.v1.Users",
        "users..Users",
        "users.",
        ".users",
        "1users",
    ] {
        let config = UpstreamCheckConfig {
            probe: UpstreamProbe::Grpc {
                service: bad.to_owned(),
                watch: false,
            },
            ..UpstreamCheckConfig::default()
        };
        let err = config.validate().expect_err(bad);
        assert_eq!(err.key(), "health.upstream.probe.grpc.service", "{bad}");
        assert!(err.to_string().contains(&format!("{bad:?}")), "{err}");
    }
    let err =
        serde_json::from_str::<UpstreamCheckConfig>(r#"{ "probe": { "grpc": { "wach": true } } }"#)
            .expect_err("a typo");
    assert!(err.to_string().contains("wach"), "{err}");
}

#[tokio::test]
async fn a_grpc_client_with_a_scheme_other_than_http_or_https_is_refused() {
    let err = UpstreamHealthChecker::builder(
        ServiceName::new("users").expect("name"),
        config("", false, Duration::from_secs(1)),
        || None,
    )
    .grpc_client(
        mesh_health::grpc::GrpcProbeClient::plaintext(),
        "ftp".parse().expect("scheme"),
    )
    .spawn()
    .expect_err("ftp");
    assert_eq!(err.key(), "health.upstream.scheme");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_leaves_draining_alone_and_stops_with_the_checker() {
    let (reporter, server) = reporter_server().await;
    let (set, checker) = check(server.addr, config(USERS, true, Duration::from_secs(3600)));
    until("admitted", || health(&set) == Health::Healthy).await;
    reporter
        .set_service_status(USERS, ServingStatus::NotServing)
        .await;
    until("ejected", || health(&set) == Health::Unhealthy).await;

    // Dropped: its verdict is handed back, and the stream writes no more.
    drop(checker);
    assert_eq!(health(&set), Health::Unknown);
    reporter
        .set_service_status(USERS, ServingStatus::Serving)
        .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(health(&set), Health::Unknown);

    // Someone drains it: a streamed status does not undo that.
    set.endpoints()[0].state().set_health(Health::Draining);
    let _checker = UpstreamHealthChecker::spawn(
        ServiceName::new("users").expect("name"),
        config(USERS, true, Duration::from_secs(3600)),
        {
            let set = set.clone();
            move || Some(set.clone())
        },
        None,
    )
    .expect("checker");
    until("watched again", || server.calls("Watch") == 2).await;
    reporter
        .set_service_status(USERS, ServingStatus::NotServing)
        .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(health(&set), Health::Draining);
}
