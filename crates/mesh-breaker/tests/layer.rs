//! The breaker as a tower layer: transitions, operator states, timeouts,
//! slow calls, ejection and concurrency, with tokio's paused clock where
//! time matters.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};
use mesh_breaker::{BreakerConfig, BreakerKey, BreakerLayer, BreakerScope, WindowConfig};
use mesh_core::ext::{SelectedEndpoint, TargetService};
use mesh_core::{
    clock, BoxError, CircuitState, Endpoint, EndpointSet, EventBus, MeshError, MeshEvent,
    ServiceName,
};
use tokio::sync::broadcast;
use tower::{service_fn, Layer, Service, ServiceExt};

type Reply = Result<Response<()>, BoxError>;

fn status(code: u16) -> Reply {
    Ok(Response::builder().status(code).body(()).expect("response"))
}

fn get() -> Request<()> {
    Request::get("http://api/x").body(()).expect("request")
}

fn key() -> BreakerKey {
    BreakerKey::Authority(http::uri::Authority::from_static("api"))
}

fn transitions(rx: &mut broadcast::Receiver<MeshEvent>) -> Vec<(CircuitState, CircuitState)> {
    let mut seen = Vec::new();
    while let Ok(event) = rx.try_recv() {
        if let MeshEvent::BreakerTransition { from, to, .. } = event {
            seen.push((from, to));
        }
    }
    seen
}

/// An upstream whose answer is switched by the test.
fn switchable(
    code: Arc<AtomicU64>,
) -> impl Service<Request<()>, Response = Response<()>, Error = BoxError, Future = impl Send> + Clone
{
    service_fn(move |_req: Request<()>| {
        let code = code.load(Ordering::SeqCst) as u16;
        async move { status(code) }
    })
}

#[tokio::test(start_paused = true)]
async fn a_time_window_forgets_old_failures_and_the_open_duration_follows_the_clock() {
    let bus = EventBus::new(64);
    let mut rx = bus.subscribe();
    let layer = BreakerLayer::new(
        BreakerConfig::builder()
            .no_consecutive_failures()
            .failure_rate_threshold(50.0)
            .window(WindowConfig::Time {
                duration: Duration::from_secs(10),
                buckets: 10,
            })
            .minimum_calls(4)
            .open_duration(Duration::from_secs(30))
            .open_duration_jitter(0.0)
            .half_open_probes(1)
            .build()
            .expect("config"),
    )
    .events(bus);
    let code = Arc::new(AtomicU64::new(500));
    let svc = layer.layer(switchable(Arc::clone(&code)));

    // Three failures, then 11 s pass: they leave the window.
    for _ in 0..3 {
        svc.clone().oneshot(get()).await.expect("answered");
    }
    tokio::time::advance(Duration::from_secs(11)).await;
    code.store(200, Ordering::SeqCst);
    svc.clone().oneshot(get()).await.expect("answered");
    assert_eq!(
        layer.state(&key()),
        Some(CircuitState::Closed),
        "1 call in the window"
    );

    // Now 3 failures among 4 recent calls: 75% >= 50%.
    code.store(500, Ordering::SeqCst);
    for _ in 0..3 {
        svc.clone().oneshot(get()).await.expect("answered");
    }
    assert_eq!(layer.state(&key()), Some(CircuitState::Open));

    // Refused for exactly the open duration, by the paused clock.
    tokio::time::advance(Duration::from_secs(29)).await;
    let err = svc.clone().oneshot(get()).await.expect_err("still open");
    assert!(
        matches!(MeshError::find(&*err), Some(MeshError::CircuitOpen { retry_in: Some(d), .. }) if *d == Duration::from_secs(1)),
        "{err}"
    );
    tokio::time::advance(Duration::from_secs(1)).await;
    code.store(200, Ordering::SeqCst);
    svc.clone().oneshot(get()).await.expect("the probe passes");
    assert_eq!(
        transitions(&mut rx),
        [
            (CircuitState::Closed, CircuitState::Open),
            (CircuitState::Open, CircuitState::HalfOpen),
            (CircuitState::HalfOpen, CircuitState::Closed),
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn a_call_over_the_timeout_is_cancelled_and_counts_as_a_failure() {
    let layer = BreakerLayer::new(
        BreakerConfig::builder()
            .consecutive_failures(2)
            .call_timeout(Duration::from_millis(100))
            .build()
            .expect("config"),
    );
    let dropped = Arc::new(AtomicUsize::new(0));
    struct OnDrop(Arc<AtomicUsize>);
    impl Drop for OnDrop {
        fn drop(&mut self) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }
    let svc = {
        let dropped = Arc::clone(&dropped);
        layer.layer(service_fn(move |_req: Request<()>| {
            let guard = OnDrop(Arc::clone(&dropped));
            async move {
                tokio::time::sleep(Duration::from_secs(10)).await;
                drop(guard);
                status(200)
            }
        }))
    };
    for n in 1..=2 {
        let started = tokio::time::Instant::now();
        let err = svc.clone().oneshot(get()).await.expect_err("timed out");
        assert_eq!(
            started.elapsed(),
            Duration::from_millis(100),
            "cut at the timeout, not run to its end"
        );
        assert!(
            matches!(MeshError::find(&*err), Some(MeshError::Timeout { .. })),
            "{err}"
        );
        assert_eq!(
            dropped.load(Ordering::SeqCst),
            n,
            "the slow call was cancelled"
        );
    }
    assert_eq!(layer.state(&key()), Some(CircuitState::Open));
    let metrics = layer.handle(&key()).expect("breaker").metrics();
    assert_eq!(metrics.failed_total, 2);
}

#[tokio::test(start_paused = true)]
async fn a_call_cancelled_after_its_timeout_ran_out_is_a_timeout_and_one_before_is_ignored() {
    let layer = BreakerLayer::new(
        BreakerConfig::builder()
            .consecutive_failures(5)
            .call_timeout(Duration::from_millis(100))
            .build()
            .expect("config"),
    );
    let mut svc = layer.layer(service_fn(|_req: Request<()>| async {
        tokio::time::sleep(Duration::from_secs(10)).await;
        status(200)
    }));
    // Cancelled (by a caller whose own limit ended on the same tick) with
    // the timeout run out but not yet polled; then one cancelled early.
    for waited in [Duration::from_millis(100), Duration::from_millis(50)] {
        let mut call = Box::pin(svc.ready().await.expect("ready").call(get()));
        assert!(futures_poll(&mut call).is_none(), "the call is under way");
        tokio::time::advance(waited).await;
        drop(call);
    }
    let metrics = layer.handle(&key()).expect("breaker").metrics();
    assert_eq!((metrics.failed_total, metrics.ignored_total), (1, 1));
}

#[tokio::test(start_paused = true)]
async fn slow_but_successful_calls_trip_the_breaker() {
    let layer = BreakerLayer::new(
        BreakerConfig::builder()
            .no_consecutive_failures()
            .no_failure_rate()
            .slow_calls(Duration::from_millis(200), 50.0)
            .window(WindowConfig::Count { size: 4 })
            .minimum_calls(4)
            .build()
            .expect("config"),
    );
    let delay = Arc::new(AtomicU64::new(0));
    let svc = {
        let delay = Arc::clone(&delay);
        layer.layer(service_fn(move |_req: Request<()>| {
            let ms = delay.load(Ordering::SeqCst);
            async move {
                tokio::time::sleep(Duration::from_millis(ms)).await;
                status(200)
            }
        }))
    };
    for ms in [10, 300, 10, 250] {
        delay.store(ms, Ordering::SeqCst);
        let r = svc.clone().oneshot(get()).await.expect("answered");
        assert_eq!(r.status(), 200);
    }
    assert_eq!(layer.state(&key()), Some(CircuitState::Open), "2 of 4 slow");
    let m = layer.handle(&key()).expect("breaker").metrics();
    assert_eq!((m.successful_total, m.failed_total), (4, 0));
}

fn endpoint_request(endpoint: &Endpoint) -> Request<()> {
    let mut req = Request::get("http://127.0.0.1:1/")
        .body(())
        .expect("request");
    req.extensions_mut()
        .insert(TargetService(ServiceName::new("users").expect("name")));
    req.extensions_mut()
        .insert(SelectedEndpoint(endpoint.clone()));
    req
}

#[tokio::test(start_paused = true)]
async fn at_most_max_ejection_percent_of_a_service_is_ejected_and_the_rest_keeps_serving() {
    let mut ejected = Vec::new();
    for cap in [50.0, 100.0] {
        let layer = BreakerLayer::new(
            BreakerConfig::builder()
                .scope(BreakerScope::Endpoint)
                .consecutive_failures(1)
                .open_duration(Duration::from_secs(30))
                .max_ejection_percent(cap)
                .build()
                .expect("config"),
        );
        // A whole outage: every endpoint of the service fails.
        let svc = layer.layer(switchable(Arc::new(AtomicU64::new(503))));
        let endpoints: Vec<Endpoint> = (1..=4)
            .map(|i| Endpoint::builder(format!("10.0.0.{i}:80").parse().expect("addr")).build())
            .collect();
        let set = EndpointSet::new(ServiceName::new("users").expect("name"), endpoints.clone());
        for endpoint in &endpoints {
            let mut req = endpoint_request(endpoint);
            req.extensions_mut().insert(set.clone());
            svc.clone().oneshot(req).await.expect("answered");
        }
        let now = clock::now();
        ejected.push(
            endpoints
                .iter()
                .filter(|e| !e.state().is_available(now))
                .count(),
        );
    }
    // Half of four, then the cap lifted: all four.
    assert_eq!(ejected, [2, 4]);
}

#[tokio::test(start_paused = true)]
async fn a_per_endpoint_breaker_ejects_its_endpoint_while_open_and_returns_it_on_close() {
    let layer = BreakerLayer::new(
        BreakerConfig::builder()
            .scope(BreakerScope::Endpoint)
            .consecutive_failures(2)
            .open_duration(Duration::from_secs(5))
            .open_duration_jitter(0.0)
            .half_open_probes(1)
            .build()
            .expect("config"),
    );
    let code = Arc::new(AtomicU64::new(503));
    let svc = layer.layer(switchable(Arc::clone(&code)));
    let endpoint = Endpoint::builder("127.0.0.1:1".parse().expect("addr")).build();
    for _ in 0..2 {
        svc.clone()
            .oneshot(endpoint_request(&endpoint))
            .await
            .expect("answered");
    }
    assert!(
        !endpoint.state().is_available(clock::now()),
        "ejected while open"
    );
    tokio::time::advance(Duration::from_secs(5)).await;
    assert!(
        endpoint.state().is_available(clock::now()),
        "back for the probe"
    );
    code.store(200, Ordering::SeqCst);
    svc.clone()
        .oneshot(endpoint_request(&endpoint))
        .await
        .expect("probe");
    let key = BreakerKey::Endpoint(
        ServiceName::new("users").expect("name"),
        endpoint.id().clone(),
    );
    assert_eq!(layer.state(&key), Some(CircuitState::Closed));
    assert!(endpoint.state().is_available(clock::now()));

    // Forced open by an operator: ejected until released.
    let handle = layer.handle(&key).expect("breaker");
    handle.force_open();
    tokio::time::advance(Duration::from_secs(3600)).await;
    assert!(!endpoint.state().is_available(clock::now()));
    handle.reset();
    assert!(endpoint.state().is_available(clock::now()));
}

/// Retry reads the refusal's `endpoint` to decide whether another
/// endpoint could serve: only a per-endpoint breaker names one.
#[tokio::test(start_paused = true)]
async fn an_open_circuit_names_its_endpoint_only_when_it_guards_one_endpoint() {
    let endpoint = Endpoint::builder("127.0.0.1:1".parse().expect("addr")).build();
    for (scope, named) in [
        (BreakerScope::Endpoint, Some(endpoint.id().clone())),
        (BreakerScope::Service, None),
    ] {
        let layer = BreakerLayer::new(
            BreakerConfig::builder()
                .scope(scope)
                .consecutive_failures(1)
                .build()
                .expect("config"),
        );
        let svc = layer.layer(switchable(Arc::new(AtomicU64::new(503))));
        svc.clone()
            .oneshot(endpoint_request(&endpoint))
            .await
            .expect("answered");
        let err = svc
            .clone()
            .oneshot(endpoint_request(&endpoint))
            .await
            .expect_err("refused");
        match MeshError::find(&*err) {
            Some(MeshError::CircuitOpen { endpoint, .. }) => {
                assert_eq!(endpoint, &named, "{scope:?}")
            }
            other => panic!("{scope:?}: {other:?}"),
        }
    }
}

#[tokio::test(start_paused = true)]
async fn a_cancelled_probe_hands_its_endpoint_back_for_the_next_probe() {
    // Found by the soak test: with every probe out, the endpoint is
    // ejected until they report; a probe whose caller gives up reports
    // nothing about the upstream and frees its slot, and the endpoint must
    // come back at once, not after the half-open maximum wait (30 s).
    let layer = BreakerLayer::new(
        BreakerConfig::builder()
            .scope(BreakerScope::Endpoint)
            .consecutive_failures(1)
            .open_duration(Duration::from_secs(1))
            .open_duration_jitter(0.0)
            .half_open_probes(1)
            .build()
            .expect("config"),
    );
    let code = Arc::new(AtomicU64::new(503));
    let hang = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let svc = {
        let (code, hang) = (Arc::clone(&code), Arc::clone(&hang));
        layer.layer(service_fn(move |_req: Request<()>| {
            let (code, hang) = (code.load(Ordering::SeqCst), hang.load(Ordering::SeqCst));
            async move {
                if hang {
                    std::future::pending::<()>().await;
                }
                status(code as u16)
            }
        }))
    };
    let endpoint = Endpoint::builder("127.0.0.1:1".parse().expect("addr")).build();
    svc.clone()
        .oneshot(endpoint_request(&endpoint))
        .await
        .expect("answered");
    tokio::time::advance(Duration::from_secs(1)).await;

    // The only probe hangs, and its caller gives up.
    hang.store(true, Ordering::SeqCst);
    let probe = svc.clone().oneshot(endpoint_request(&endpoint));
    assert!(
        tokio::time::timeout(Duration::from_millis(10), probe)
            .await
            .is_err(),
        "the probe hangs"
    );
    assert!(
        endpoint.state().is_available(clock::now()),
        "back at once for the next probe"
    );
    hang.store(false, Ordering::SeqCst);
    code.store(200, Ordering::SeqCst);
    svc.clone()
        .oneshot(endpoint_request(&endpoint))
        .await
        .expect("probe");
    let key = BreakerKey::Endpoint(
        ServiceName::new("users").expect("name"),
        endpoint.id().clone(),
    );
    assert_eq!(layer.state(&key), Some(CircuitState::Closed));
}

#[tokio::test]
async fn operator_transitions_publish_one_event_each_and_none_for_no_change() {
    let bus = EventBus::new(64);
    let mut rx = bus.subscribe();
    let layer = BreakerLayer::new(BreakerConfig::default()).events(bus);
    let handle = layer.handle_or_create(&key()).expect("breaker");
    assert!(handle.force_open());
    assert!(!handle.force_open());
    assert!(handle.disable());
    assert!(handle.metrics_only());
    // Changed on purpose: METRICS_ONLY cannot open (resilience4j's rule);
    // the refusal publishes nothing.
    assert!(handle.transition_to(CircuitState::Open).is_err());
    assert_eq!(handle.transition_to(CircuitState::Closed), Ok(true));
    assert_eq!(handle.transition_to(CircuitState::Open), Ok(true));
    assert_eq!(handle.transition_to(CircuitState::HalfOpen), Ok(true));
    assert!(handle.reset());
    assert!(!handle.reset());
    use CircuitState::*;
    assert_eq!(
        transitions(&mut rx),
        [
            (Closed, ForcedOpen),
            (ForcedOpen, Disabled),
            (Disabled, MetricsOnly),
            (MetricsOnly, Closed),
            (Closed, Open),
            (Open, HalfOpen),
            (HalfOpen, Closed),
        ]
    );
}

#[tokio::test]
async fn forced_open_refuses_and_disabled_passes_without_recording() {
    let layer = BreakerLayer::new(
        BreakerConfig::builder()
            .consecutive_failures(1)
            .build()
            .expect("config"),
    );
    let calls = Arc::new(AtomicUsize::new(0));
    let svc = {
        let calls = Arc::clone(&calls);
        layer.layer(service_fn(move |_req: Request<()>| {
            calls.fetch_add(1, Ordering::SeqCst);
            async { status(500) }
        }))
    };
    let handle = layer.handle_or_create(&key()).expect("breaker");
    handle.force_open();
    let err = svc.clone().oneshot(get()).await.expect_err("refused");
    assert!(
        err.to_string().contains("held open by an operator"),
        "{err}"
    );
    assert_eq!(calls.load(Ordering::SeqCst), 0);
    handle.disable();
    for _ in 0..5 {
        svc.clone().oneshot(get()).await.expect("passes");
    }
    assert_eq!(calls.load(Ordering::SeqCst), 5);
    assert_eq!(
        handle.state(),
        CircuitState::Disabled,
        "failures never trip it"
    );
    assert_eq!(handle.metrics().failed_total, 0, "and are not recorded");
}

/// 16 tasks hammer a half-open breaker whose probes hang: exactly the
/// configured number get through. Then the probes succeed, the breaker
/// closes, and every call made is accounted for exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_half_open_breaker_never_admits_more_than_its_probes_under_contention() {
    const PROBES: usize = 3;
    let layer = BreakerLayer::new(
        BreakerConfig::builder()
            .consecutive_failures(1)
            .half_open_probes(PROBES as u32)
            .half_open_max_wait(Duration::from_secs(60))
            .build()
            .expect("config"),
    );
    let admitted = Arc::new(AtomicUsize::new(0));
    let release = Arc::new(tokio::sync::Notify::new());
    let hold = Arc::new(AtomicBool::new(true));
    let svc = {
        let (admitted, release, hold) = (
            Arc::clone(&admitted),
            Arc::clone(&release),
            Arc::clone(&hold),
        );
        layer.layer(service_fn(move |_req: Request<()>| {
            admitted.fetch_add(1, Ordering::SeqCst);
            let (release, hold) = (Arc::clone(&release), Arc::clone(&hold));
            async move {
                let notified = release.notified();
                if hold.load(Ordering::SeqCst) {
                    notified.await;
                }
                status(200)
            }
        }))
    };
    let handle = layer.handle_or_create(&key()).expect("breaker");

    let (ok, refused) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    // All 16 tasks wait at the barrier; the breaker goes half-open only
    // once they are all there, so they race for the probes together.
    let start = Arc::new(tokio::sync::Barrier::new(17));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..16 {
        let (svc, ok, refused, start) = (
            svc.clone(),
            Arc::clone(&ok),
            Arc::clone(&refused),
            Arc::clone(&start),
        );
        tasks.spawn(async move {
            start.wait().await;
            let mut probes = Vec::new();
            for _ in 0..200 {
                let mut svc = svc.clone();
                let ready = svc.ready().await.expect("ready");
                let call = ready.call(get());
                let mut call = Box::pin(call);
                // A refusal is immediate; an admitted probe hangs.
                match futures_poll(&mut call) {
                    Some(Err(_)) => {
                        refused.fetch_add(1, Ordering::SeqCst);
                    }
                    Some(Ok(_)) => {
                        ok.fetch_add(1, Ordering::SeqCst);
                    }
                    None => probes.push(call),
                }
                tokio::task::yield_now().await;
            }
            for probe in probes {
                if probe.await.is_ok() {
                    ok.fetch_add(1, Ordering::SeqCst);
                }
            }
        });
    }
    // Through OPEN: CLOSED cannot go to HALF_OPEN by hand.
    handle.transition_to(CircuitState::Open).expect("allowed");
    handle
        .transition_to(CircuitState::HalfOpen)
        .expect("allowed");
    start.wait().await;
    // Wait (bounded) until every task has made its 200 attempts.
    for _ in 0..1000 {
        if refused.load(Ordering::SeqCst) + admitted.load(Ordering::SeqCst) >= 16 * 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(
        admitted.load(Ordering::SeqCst),
        PROBES,
        "never more than the probes"
    );
    hold.store(false, Ordering::SeqCst);
    release.notify_waiters();
    while let Some(done) = tasks.join_next().await {
        done.expect("task");
    }
    assert_eq!(handle.state(), CircuitState::Closed);
    let m = handle.metrics();
    let calls = 16 * 200;
    assert_eq!(
        ok.load(Ordering::SeqCst) + refused.load(Ordering::SeqCst),
        calls
    );
    assert_eq!(
        (m.successful_total + m.failed_total + m.ignored_total + m.rejected_total) as usize,
        calls,
        "{m:?}"
    );
}

fn futures_poll<F: std::future::Future + Unpin>(f: &mut F) -> Option<F::Output> {
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    match std::pin::Pin::new(f).poll(&mut cx) {
        std::task::Poll::Ready(v) => Some(v),
        std::task::Poll::Pending => None,
    }
}

/// Sends `req` through `layer` over a service answering 200.
async fn answered_through(layer: &BreakerLayer, req: Request<()>) {
    let mut svc = layer.layer(service_fn(|_req: Request<()>| async { status(200) }));
    svc.ready()
        .await
        .expect("ready")
        .call(req)
        .await
        .expect("call");
}

/// A breaker used without discovery keys by the URI's host and port:
/// userinfo (a password) keys no breaker of its own and shows in no key.
#[tokio::test]
async fn userinfo_keys_no_breaker_and_shows_in_no_key() {
    let layer = BreakerLayer::new(BreakerConfig::default());
    for uri in [
        "http://admin:hunter2@api/x",
        "http://api/y",
        "http://token@api/z",
    ] {
        answered_through(&layer, Request::get(uri).body(()).expect("request")).await;
    }
    assert_eq!(layer.breakers(), 1, "one breaker for api");
    assert!(layer.state(&key()).is_some(), "keyed as api");
    let shown = format!("{:?}", layer.metrics());
    assert!(
        !shown.contains("hunter2") && !shown.contains("token"),
        "{shown}"
    );
    // Listed, the key is the host and port alone.
    for (key, _) in layer.metrics() {
        match key {
            BreakerKey::Authority(authority) => assert_eq!(authority.as_str(), "api"),
            other => panic!("an authority key, not {other:?}"),
        }
    }
    // A key written by hand with userinfo is the same key, shown without.
    let by_hand = BreakerKey::Authority(http::uri::Authority::from_static("admin:hunter2@api"));
    assert!(layer.state(&by_hand).is_some(), "the breaker of api");
    assert!(!format!("{by_hand:?}").contains("hunter2"), "{by_hand:?}");
}

/// What a key function is shown, printed, holds no secret: no header
/// value, userinfo or query.
#[tokio::test]
async fn request_parts_print_no_secret() {
    let printed = Arc::new(std::sync::Mutex::new(String::new()));
    let seen = Arc::clone(&printed);
    let layer = BreakerLayer::new(BreakerConfig::default()).key_by(move |parts| {
        *seen.lock().expect("lock") = format!("{parts:?}");
        None
    });
    let req = Request::get("http://admin:hunter2@api/x?token=s3cret")
        .header("authorization", "Bearer t0k3n")
        .body(())
        .expect("request");
    answered_through(&layer, req).await;
    let printed = printed.lock().expect("lock").clone();
    assert!(
        printed.contains("authorization") && printed.contains("api/x"),
        "{printed}"
    );
    for secret in ["hunter2", "s3cret", "t0k3n"] {
        assert!(!printed.contains(secret), "{printed}");
    }
}
