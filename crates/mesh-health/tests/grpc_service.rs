//! The gRPC health service fed by a `HealthCheckManager`: a tonic-health
//! client calling `Check` and `Watch` on a real HTTP/2 server on
//! 127.0.0.1 sees `SERVING` and `NOT_SERVING` follow the manager's
//! readiness; and the upstream checker, pointed at that server, ejects
//! and readmits it.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{until, GrpcServer};
use mesh_core::{Endpoint, EndpointSet, Health, Probe, ServiceName};
use mesh_health::grpc::{health_service, GrpcProbeClient, ReadinessHealth};
use mesh_health::{
    CheckError, HealthCheck, HealthCheckManager, UpstreamCheckConfig, UpstreamHealthChecker,
    UpstreamProbe,
};
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse};

/// A manager whose readiness hangs on one critical check, and a
/// non-critical one, each answering as its switch says.
fn manager() -> (HealthCheckManager, Arc<AtomicBool>, Arc<AtomicBool>) {
    let (database, disk) = (
        Arc::new(AtomicBool::new(true)),
        Arc::new(AtomicBool::new(true)),
    );
    let check = |name: &str, up: &Arc<AtomicBool>, critical: bool| {
        let up = Arc::clone(up);
        HealthCheck::builder(name, move || {
            let up = up.load(Ordering::Relaxed);
            async move {
                match up {
                    true => Ok(()),
                    false => Err(CheckError("down".to_owned())),
                }
            }
        })
        .probes([Probe::Readiness])
        .critical(critical)
        .failure_threshold(1)
        .success_threshold(1)
        .build()
        .expect("check")
    };
    let manager = HealthCheckManager::builder()
        .check(check("database", &database, true))
        .check(check("disk", &disk, false))
        .build()
        .expect("manager");
    (manager, database, disk)
}

fn client(server: &GrpcServer) -> HealthClient<GrpcProbeClient> {
    let origin = format!("http://{}", server.addr).parse().expect("uri");
    HealthClient::with_origin(GrpcProbeClient::plaintext(), origin)
}

fn about(service: &str) -> HealthCheckRequest {
    HealthCheckRequest {
        service: service.to_owned(),
    }
}

fn status(response: HealthCheckResponse) -> ServingStatus {
    ServingStatus::try_from(response.status).expect("a defined status")
}

async fn check(client: &mut HealthClient<GrpcProbeClient>, service: &str) -> ServingStatus {
    status(
        client
            .check(about(service))
            .await
            .expect("check")
            .into_inner(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_answers_serving_exactly_while_the_manager_is_ready() {
    let (manager, database, disk) = manager();
    let server = GrpcServer::start(health_service(&manager)).await;
    let mut client = client(&server);

    // Nothing has run yet: not ready.
    assert_eq!(check(&mut client, "").await, ServingStatus::NotServing);
    manager.run_once().await;
    assert_eq!(check(&mut client, "").await, ServingStatus::Serving);

    // Degraded is still ready.
    disk.store(false, Ordering::Relaxed);
    manager.run_once().await;
    assert_eq!(check(&mut client, "").await, ServingStatus::Serving);

    database.store(false, Ordering::Relaxed);
    manager.run_once().await;
    assert_eq!(check(&mut client, "").await, ServingStatus::NotServing);

    database.store(true, Ordering::Relaxed);
    manager.run_once().await;
    assert_eq!(check(&mut client, "").await, ServingStatus::Serving);

    // Shutting down drains gRPC clients too.
    manager.shutdown();
    assert_eq!(check(&mut client, "").await, ServingStatus::NotServing);
}

/// The next status a `Watch` stream sends, within ten seconds.
async fn next(stream: &mut tonic::Streaming<HealthCheckResponse>) -> ServingStatus {
    let message = tokio::time::timeout(Duration::from_secs(10), stream.message())
        .await
        .expect("a message in time")
        .expect("no error")
        .expect("the stream goes on");
    status(message)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_streams_each_change_as_the_manager_reports_it() {
    let (manager, database, disk) = manager();
    manager.run_once().await;
    let server = GrpcServer::start(health_service(&manager)).await;
    let mut stream = client(&server)
        .watch(about(""))
        .await
        .expect("watch")
        .into_inner();
    assert_eq!(
        next(&mut stream).await,
        ServingStatus::Serving,
        "the status at once"
    );

    // Degraded is no change for gRPC: the next message is the real one.
    disk.store(false, Ordering::Relaxed);
    manager.run_once().await;
    database.store(false, Ordering::Relaxed);
    manager.run_once().await;
    assert_eq!(next(&mut stream).await, ServingStatus::NotServing);

    database.store(true, Ordering::Relaxed);
    manager.run_once().await;
    assert_eq!(next(&mut stream).await, ServingStatus::Serving);

    manager.shutdown();
    assert_eq!(next(&mut stream).await, ServingStatus::NotServing);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn named_services_share_readiness_and_unknown_ones_are_told_so() {
    let (manager, _, _) = manager();
    manager.run_once().await;
    let service = ReadinessHealth::new(manager.clone())
        .service("users.v1.Users")
        .into_server();
    let server = GrpcServer::start(service).await;
    let mut client = client(&server);
    assert_eq!(
        check(&mut client, "users.v1.Users").await,
        ServingStatus::Serving
    );
    assert_eq!(check(&mut client, "").await, ServingStatus::Serving);

    // Check: NOT_FOUND. Watch: SERVICE_UNKNOWN, and the call stays open.
    let error = client
        .check(about("orders.v1.Orders"))
        .await
        .expect_err("unknown");
    assert_eq!(error.code(), Code::NotFound);
    let mut stream = client
        .watch(about("orders.v1.Orders"))
        .await
        .expect("watch")
        .into_inner();
    let first = stream
        .message()
        .await
        .expect("no error")
        .expect("a message");
    assert_eq!(status(first), ServingStatus::ServiceUnknown);
    let more = tokio::time::timeout(Duration::from_millis(200), stream.message()).await;
    assert!(
        more.is_err(),
        "the call stays open with nothing more to say"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_checker_watching_the_service_follows_the_manager() {
    let (manager, database, _) = manager();
    manager.run_once().await;
    let server = GrpcServer::start(health_service(&manager)).await;
    let set = EndpointSet::new(
        ServiceName::new("users").expect("name"),
        vec![Endpoint::builder(server.addr).build()],
    );
    let source = set.clone();
    let _checker = UpstreamHealthChecker::spawn(
        ServiceName::new("users").expect("name"),
        UpstreamCheckConfig {
            probe: UpstreamProbe::Grpc {
                service: String::new(),
                watch: true,
            },
            // Only the stream can explain a prompt change.
            interval: Duration::from_secs(3600),
            timeout: Duration::from_secs(2),
            ..UpstreamCheckConfig::default()
        },
        move || Some(source.clone()),
        None,
    )
    .expect("checker");
    let health = || set.endpoints()[0].state().health();
    until("admitted", || health() == Health::Healthy).await;
    database.store(false, Ordering::Relaxed);
    manager.run_once().await;
    until("ejected", || health() == Health::Unhealthy).await;
    database.store(true, Ordering::Relaxed);
    manager.run_once().await;
    until("readmitted", || health() == Health::Healthy).await;
    assert_eq!(server.calls("Check"), 0);
}
