//! The whole pipeline against real hyper servers on 127.0.0.1, built with
//! `ServiceBuilder` exactly as a user would: Retry, Discover, Balance,
//! Breaker and tower's timeout over hyper-util's legacy client.

#[path = "support/retry_events.rs"]
mod retry_events;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use mesh::balance::TrackedBody;
use mesh::breaker::BreakerKey;
use mesh::core::{CircuitState, EndpointId, MeshEvent};
use mesh::discover::Catalog;
use mesh::prelude::*;
use mesh_testkit::{Backend, Behavior};
use tokio::sync::broadcast;
use tower::{Service, ServiceBuilder, ServiceExt};

const SERVICE: &str = "users";

struct Scene {
    backends: Vec<Backend>,
    catalog: Catalog,
    breaker: BreakerLayer,
    retry: RetryLayer,
    events: broadcast::Receiver<MeshEvent>,
    stack: Stack,
}

type Stack = mesh::retry::Retry<
    mesh::discover::DiscoverService<
        mesh::balance::Balance<
            mesh::breaker::Breaker<
                tower::timeout::Timeout<
                    Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>,
                >,
            >,
        >,
    >,
>;

async fn scene(behaviors: &[Behavior], timeout: Duration) -> Scene {
    let mut backends = Vec::new();
    for b in behaviors {
        backends.push(Backend::start(*b).await.expect("loopback backend"));
    }
    let bus = EventBus::new(4096);
    let events = bus.subscribe();
    let registry = StaticRegistry::builder()
        .service(SERVICE, backends.iter().map(|b| b.addr().to_string()))
        .events(bus.clone())
        .build()
        .expect("valid static list");
    let breaker = BreakerLayer::new(
        BreakerConfig::builder()
            .scope(BreakerScope::Endpoint)
            .consecutive_failures(3)
            .open_duration(Duration::from_millis(100))
            .half_open_probes(1)
            .build()
            .expect("valid breaker config"),
    )
    .events(bus.clone());
    let retry = RetryLayer::new(
        RetryConfig::builder()
            .max_retries(2)
            .backoff(Backoff::constant(Duration::from_millis(1)))
            .build()
            .expect("valid retry config"),
    )
    .events(bus.clone());
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let stack = ServiceBuilder::new()
        .layer(retry.clone())
        .layer(DiscoverLayer::new(registry.catalog()))
        .layer(BalanceLayer::round_robin())
        .layer(breaker.clone())
        .timeout(timeout)
        .service(client);
    Scene {
        backends,
        catalog: registry.catalog(),
        breaker,
        retry,
        events,
        stack,
    }
}

async fn get(
    stack: &Stack,
    path: &str,
) -> Result<Response<TrackedBody<mesh_breaker::ResponseBody<Incoming>>>, BoxError> {
    let req = Request::get(format!("http://{SERVICE}{path}"))
        .body(Full::new(Bytes::new()))
        .expect("valid request");
    stack.clone().oneshot(req).await
}

/// Transitions seen for the endpoint at `addr`, in order.
fn transitions(events: &mut broadcast::Receiver<MeshEvent>, addr: SocketAddr) -> Vec<CircuitState> {
    let id = EndpointId::from_addr(addr);
    let mut seen = Vec::new();
    loop {
        match events.try_recv() {
            Ok(MeshEvent::BreakerTransition {
                endpoint: Some(e),
                to,
                ..
            }) if e == id => seen.push(to),
            Ok(_) => {}
            Err(broadcast::error::TryRecvError::Lagged(n)) => panic!("lost {n} events"),
            Err(_) => return seen,
        }
    }
}

fn in_flight_total(catalog: &Catalog) -> u32 {
    catalog
        .get(SERVICE)
        .expect("service listed")
        .iter()
        .map(|e| e.state().in_flight())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_request_succeeds_and_the_failing_server_only_sees_half_open_probes() {
    let mut s = scene(
        &[Behavior::Ok, Behavior::Status(503), Behavior::Ok],
        Duration::from_secs(5),
    )
    .await;
    for i in 0..300 {
        let response = get(&s.stack, &format!("/api/users/{i}"))
            .await
            .expect("request succeeds");
        assert_eq!(response.status(), StatusCode::OK, "request {i}");
        let body = response
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes();
        assert!(body.starts_with(b"200 OK from 127.0.0.1:"));
        // Spread the requests over a few open durations, so probes happen.
        tokio::time::sleep(Duration::from_millis(1)).await;
    }

    let bad = &s.backends[1];
    let seen = transitions(&mut s.events, bad.addr());
    let opened = seen.iter().filter(|t| **t == CircuitState::Open).count();
    let probes = seen
        .iter()
        .filter(|t| **t == CircuitState::HalfOpen)
        .count();
    assert!(opened >= 1, "the failing server's breaker opened: {seen:?}");
    assert_eq!(seen[0], CircuitState::Open);
    assert!(probes >= 1, "probes were sent: {seen:?}");
    assert!(
        !seen.contains(&CircuitState::Closed),
        "a 503 probe never closes it"
    );
    // Exactly 3 failures opened it; after that, only the probes got
    // through: one per half-open period, except that the last one may have
    // begun (by timer) just as the requests ended, with no probe yet.
    let sent = bad.stats().requests;
    let probes = probes as u64;
    assert!(
        (2 + probes..=3 + probes).contains(&sent),
        "{sent} requests; transitions: {seen:?}"
    );
    if sent == 2 + probes {
        assert_eq!(seen.last(), Some(&CircuitState::HalfOpen), "{seen:?}");
    }

    let good: u64 = [&s.backends[0], &s.backends[2]]
        .iter()
        .map(|b| b.stats().requests)
        .sum();
    assert_eq!(
        good, 300,
        "every request was answered once by a healthy server"
    );
    assert_eq!(s.retry.stats().retries, sent, "each 503 was retried once");
    assert_eq!(s.retry.stats().exhausted, 0);
    assert_eq!(in_flight_total(&s.catalog), 0);
    let key = BreakerKey::Endpoint(
        ServiceName::new(SERVICE).expect("name"),
        EndpointId::from_addr(bad.addr()),
    );
    assert_still_failing(&s.breaker, &key);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_callers_all_succeed_and_leave_nothing_in_flight() {
    let s = scene(
        &[Behavior::Ok, Behavior::Status(503), Behavior::Ok],
        Duration::from_secs(5),
    )
    .await;
    let mut tasks = tokio::task::JoinSet::new();
    for worker in 0..8 {
        let stack = s.stack.clone();
        tasks.spawn(async move {
            for i in 0..50 {
                let r = get(&stack, &format!("/w{worker}/{i}"))
                    .await
                    .expect("request succeeds");
                assert_eq!(r.status(), StatusCode::OK);
                r.into_body().collect().await.expect("body");
            }
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.expect("worker finished");
    }
    let served: u64 = s
        .backends
        .iter()
        .map(|b| b.stats().requests - b.stats().errors)
        .sum();
    assert_eq!(served, 400);
    assert_eq!(in_flight_total(&s.catalog), 0);
    let key = BreakerKey::Endpoint(
        ServiceName::new(SERVICE).expect("name"),
        EndpointId::from_addr(s.backends[1].addr()),
    );
    assert_still_failing(&s.breaker, &key);
}

/// The failing server's circuit after the calls: open (a 503 probe never
/// closes it), or half-open if its 100 ms open duration ran out after the
/// last call, with no probe sent since; never closed.
fn assert_still_failing(breaker: &BreakerLayer, key: &BreakerKey) {
    let state = breaker.state(key);
    assert!(
        matches!(state, Some(CircuitState::Open | CircuitState::HalfOpen)),
        "{state:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_server_times_out_opens_its_breaker_and_is_routed_around() {
    let mut s = scene(
        &[Behavior::Ok, Behavior::Slow(Duration::from_secs(2))],
        // Ample for the fast server on a loaded machine: a call to it that
        // timed out would be retried on it again.
        Duration::from_millis(300),
    )
    .await;
    for i in 0..40 {
        let r = get(&s.stack, &format!("/{i}"))
            .await
            .expect("request succeeds");
        assert_eq!(r.status(), StatusCode::OK);
    }
    let slow = &s.backends[1];
    let seen = transitions(&mut s.events, slow.addr());
    assert_eq!(seen.first(), Some(&CircuitState::Open), "{seen:?}");
    let probes = seen
        .iter()
        .filter(|t| **t == CircuitState::HalfOpen)
        .count() as u64;
    // As above: the last half-open may have begun (by timer) after the
    // last call, with no probe sent.
    let sent = slow.stats().requests;
    assert!(
        (2 + probes..=3 + probes).contains(&sent),
        "{sent} requests; transitions: {seen:?}"
    );
    if sent == 2 + probes {
        assert_eq!(seen.last(), Some(&CircuitState::HalfOpen), "{seen:?}");
    }
    assert_eq!(s.backends[0].stats().requests, 40);
    assert_eq!(in_flight_total(&s.catalog), 0);
}

#[tokio::test]
async fn bad_requests_get_errors_that_say_what_is_wrong() {
    let s = scene(&[Behavior::Ok], Duration::from_secs(1)).await;

    let unknown = Request::get("http://billing/invoices")
        .body(Full::new(Bytes::new()))
        .expect("valid request");
    let err = s
        .stack
        .clone()
        .oneshot(unknown)
        .await
        .expect_err("unknown service");
    assert!(matches!(
        MeshError::find(&*err),
        Some(MeshError::UnknownService { .. })
    ));
    assert!(err.to_string().contains("\"billing\""), "{err}");

    let relative = Request::get("/no/authority")
        .body(Full::new(Bytes::new()))
        .expect("valid request");
    let err = s
        .stack
        .clone()
        .oneshot(relative)
        .await
        .expect_err("no authority");
    assert!(matches!(
        MeshError::find(&*err),
        Some(MeshError::MissingAuthority)
    ));
    assert_eq!(
        s.backends[0].stats().requests,
        0,
        "nothing reached the server"
    );
}

#[tokio::test]
async fn an_unreachable_endpoint_is_retried_on_a_live_one() {
    // Reserve a port, then free it: connecting to it is refused.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port");
    let live = Backend::start(Behavior::Ok).await.expect("backend");
    let registry = StaticRegistry::builder()
        .service(SERVICE, [dead.to_string(), live.addr().to_string()])
        .build()
        .expect("valid list");
    let retry = RetryLayer::default();
    let mut stack = ServiceBuilder::new()
        .layer(retry.clone())
        .layer(DiscoverLayer::new(registry.catalog()))
        .layer(BalanceLayer::round_robin())
        .layer(BreakerLayer::default())
        .timeout(Duration::from_secs(1))
        .service(Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>());
    for _ in 0..4 {
        let req = Request::get(format!("http://{SERVICE}/"))
            .body(Full::new(Bytes::new()))
            .expect("valid request");
        let r = stack
            .ready()
            .await
            .expect("ready")
            .call(req)
            .await
            .expect("retried");
        assert_eq!(r.status(), StatusCode::OK);
    }
    assert_eq!(live.stats().requests, 4);
    // Round robin sent some first attempts to the dead port; each was
    // retried on the live one.
    assert!(retry.stats().retries >= 1, "{:?}", retry.stats());
    assert_eq!(retry.stats().exhausted, 0);
}

/// A request sent to an instance's own address and routed by hand with a
/// `TargetService` is reported under that service in every retry event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_events_name_the_service_a_request_is_routed_to() {
    use mesh::core::ext::TargetService;
    use mesh::core::ServiceName;

    let Scene {
        backends,
        mut events,
        stack,
        ..
    } = scene(&[Behavior::Status(503)], Duration::from_secs(5)).await;
    let users = ServiceName::new(SERVICE).expect("name");
    let mut req = Request::get(format!("http://{}/", backends[0].addr()))
        .body(Full::new(Bytes::new()))
        .expect("valid request");
    req.extensions_mut().insert(TargetService(users.clone()));
    let answer = stack.oneshot(req).await.expect("an answer");
    assert_eq!(answer.status(), StatusCode::SERVICE_UNAVAILABLE);
    let named = retry_events::services_named(&mut events);
    assert!(!named.is_empty(), "the retries were reported");
    assert!(
        named.iter().all(|s| s.as_ref() == Some(&users)),
        "every retry event names the routed service: {named:?}"
    );
}

/// Under tower's `ConcurrencyLimit` (one call at a time), a retry waits for
/// the slot no longer than its call's deadline: a call answered 503, then
/// held out of the slot by a slow call, times out at its deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_waiting_for_a_concurrency_slot_ends_at_the_deadline() {
    let failing = Backend::start(Behavior::Status(503))
        .await
        .expect("backend");
    let slow = Backend::start(Behavior::Slow(Duration::from_secs(10)))
        .await
        .expect("backend");
    // The backoff leaves the slow call a second to take the slot.
    let retry = RetryConfig::builder()
        .max_retries(2)
        .backoff(Backoff::constant(Duration::from_secs(1)))
        .deadline(Duration::from_secs(3))
        .build()
        .expect("retry");
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    // Its clones share the one slot.
    let limited = tower::limit::ConcurrencyLimit::new(client, 1);
    let stack = ServiceBuilder::new()
        .layer(RetryLayer::new(retry))
        .service(limited.clone());
    let to = |backend: &Backend| {
        Request::get(format!("http://{}/", backend.addr()))
            .body(Full::new(Bytes::new()))
            .expect("request")
    };
    let started = std::time::Instant::now();
    let retried = tokio::spawn(stack.clone().oneshot(to(&failing)));
    mesh_testkit::wait::until("the first attempt answered", || {
        failing.stats().requests == 1
    })
    .await;
    // Takes the one slot for 10 s (no deadline of its own) while the first
    // call backs off.
    let holder = tokio::spawn(limited.oneshot(to(&slow)));
    let err = retried
        .await
        .expect("task")
        .expect_err("no slot before the deadline");
    assert!(
        matches!(MeshError::find(&*err), Some(MeshError::Timeout { .. })),
        "{err}"
    );
    let took = started.elapsed();
    assert!(took < Duration::from_secs(6), "ended after {took:?}");
    assert_eq!(failing.stats().requests, 1, "the retry was never sent");
    holder.abort();
}
