//! `max_ejection_percent`: the circuit asks before it opens, so an endpoint
//! held back by the cap never enters OPEN (never refuses a call, publishes
//! nothing), a failed probe past the cap closes instead of reopening, and
//! concurrent trips never eject past the cap.

use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};
use mesh_breaker::{BreakerConfig, BreakerKey, BreakerLayer, BreakerScope};
use mesh_core::ext::{SelectedEndpoint, TargetService};
use mesh_core::{clock, BoxError, CircuitState, Endpoint, EndpointSet, EventBus, MeshEvent};
use mesh_core::{CircuitState::*, ServiceName};
use tokio::sync::{broadcast, Barrier};
use tower::{service_fn, Layer, Service, ServiceExt};

type Reply = Result<Response<()>, BoxError>;

fn users() -> ServiceName {
    ServiceName::new("users").expect("name")
}

/// `n` endpoints of `users`, and their set.
fn endpoints(n: usize) -> (Vec<Endpoint>, EndpointSet) {
    let endpoints: Vec<Endpoint> = (1..=n)
        .map(|i| Endpoint::builder(format!("10.0.0.{i}:80").parse().expect("addr")).build())
        .collect();
    let set = EndpointSet::new(users(), endpoints.clone());
    (endpoints, set)
}

fn request(endpoint: &Endpoint, set: &EndpointSet) -> Request<()> {
    let mut req = Request::get("http://users/").body(()).expect("request");
    req.extensions_mut().insert(TargetService(users()));
    req.extensions_mut()
        .insert(SelectedEndpoint(endpoint.clone()));
    req.extensions_mut().insert(set.clone());
    req
}

/// An upstream that always answers `code`.
fn upstream(
    code: u16,
) -> impl Service<Request<()>, Response = Response<()>, Error = BoxError, Future = impl Send>
       + Clone
       + Send
       + 'static {
    service_fn(move |_req: Request<()>| async move {
        let reply: Reply = Ok(Response::builder().status(code).body(())?);
        reply
    })
}

/// Per-endpoint breakers that open on one failure, capped at `cap`.
fn layer(cap: f64, bus: &EventBus) -> BreakerLayer {
    BreakerLayer::new(
        BreakerConfig::builder()
            .scope(BreakerScope::Endpoint)
            .consecutive_failures(1)
            .no_failure_rate()
            .open_duration(Duration::from_secs(10))
            .open_duration_jitter(0.0)
            .half_open_probes(1)
            .max_ejection_percent(cap)
            .build()
            .expect("config"),
    )
    .events(bus.clone())
}

fn key(endpoint: &Endpoint) -> BreakerKey {
    BreakerKey::Endpoint(users(), endpoint.id().clone())
}

fn transitions(rx: &mut broadcast::Receiver<MeshEvent>) -> Vec<(CircuitState, CircuitState)> {
    std::iter::from_fn(|| rx.try_recv().ok())
        .filter_map(|e| match e {
            MeshEvent::BreakerTransition { from, to, .. } => Some((from, to)),
            _ => None,
        })
        .collect()
}

async fn settle() {
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
}

#[tokio::test(start_paused = true)]
async fn an_endpoint_held_back_by_the_cap_never_opens_refuses_or_publishes() {
    let bus = EventBus::new(64);
    let mut events = bus.subscribe();
    let layer = layer(50.0, &bus);
    let svc = layer.layer(upstream(503));
    let (endpoints, set) = endpoints(2);
    let (a, b) = (&endpoints[0], &endpoints[1]);
    svc.clone()
        .oneshot(request(a, &set))
        .await
        .expect("answered");
    assert_eq!(layer.state(&key(a)), Some(Open));
    assert_eq!(transitions(&mut events), [(Closed, Open)]);
    // Half of two is one: b's failures trip nothing, again and again.
    for _ in 0..5 {
        let response = svc.clone().oneshot(request(b, &set)).await;
        assert_eq!(
            response.expect("sent, never refused").status(),
            503,
            "the upstream's answer"
        );
        assert_eq!(layer.state(&key(b)), Some(Closed));
    }
    assert!(b.state().is_available(clock::now()));
    assert!(transitions(&mut events).is_empty(), "no OPEN, no reset");
    let m = layer.handle(&key(b)).expect("breaker").metrics();
    assert_eq!(
        (m.transitions, m.rejected_total, m.failed_total),
        (0, 0, 5),
        "it never changed state"
    );
}

#[tokio::test(start_paused = true)]
async fn a_failed_probe_past_the_cap_closes_instead_of_reopening() {
    let bus = EventBus::new(64);
    let mut events = bus.subscribe();
    let layer = layer(50.0, &bus);
    let svc = layer.layer(upstream(503));
    let (endpoints, set) = endpoints(2);
    let (a, b) = (&endpoints[0], &endpoints[1]);
    svc.clone()
        .oneshot(request(a, &set))
        .await
        .expect("answered");
    tokio::time::advance(Duration::from_secs(10)).await;
    settle().await;
    assert_eq!(layer.state(&key(a)), Some(HalfOpen), "back for its probe");
    // Meanwhile b trips, taking the only room.
    svc.clone()
        .oneshot(request(b, &set))
        .await
        .expect("answered");
    assert_eq!(layer.state(&key(b)), Some(Open));
    transitions(&mut events);
    // a's probe fails: reopening would eject both.
    svc.clone()
        .oneshot(request(a, &set))
        .await
        .expect("answered");
    assert_eq!(layer.state(&key(a)), Some(Closed));
    assert_eq!(transitions(&mut events), [(HalfOpen, Closed)]);
    assert!(a.state().is_available(clock::now()), "a keeps serving");
}

/// Every endpoint trips at once, from two threads. What keeps two trips
/// from both taking the last room is structural (counting and ejecting
/// under one lock); this run seldom hits the race without it, so it checks
/// the outcome, not the interleaving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_trips_eject_exactly_the_cap() {
    for _ in 0..50 {
        let bus = EventBus::new(64);
        // A quarter of eight: two.
        let layer = layer(25.0, &bus);
        let (endpoints, set) = endpoints(8);
        let barrier = Arc::new(Barrier::new(endpoints.len()));
        let calls: Vec<_> = endpoints
            .iter()
            .map(|endpoint| {
                let svc = layer.layer(upstream(503));
                let req = request(endpoint, &set);
                let barrier = Arc::clone(&barrier);
                tokio::spawn(async move {
                    barrier.wait().await;
                    svc.oneshot(req).await.map(|r| r.status())
                })
            })
            .collect();
        for call in calls {
            assert_eq!(call.await.expect("task").expect("answered"), 503);
        }
        let now = clock::now();
        let ejected = endpoints
            .iter()
            .filter(|e| !e.state().is_available(now))
            .count();
        let open = endpoints
            .iter()
            .filter(|e| layer.state(&key(e)) == Some(Open))
            .count();
        assert_eq!((ejected, open), (2, 2), "exactly the cap, never past it");
    }
}
