//! What keeps retries bounded: how long a server's `Retry-After` may hold a
//! call, the call's deadline, one budget per service, a zero budget, and
//! open circuits that no other endpoint can get around.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use mesh_core::ext::{Attempt, AvoidEndpoints, Deadline};
use mesh_core::{clock, BoxError, EndpointId, MeshError, ServiceName};
use mesh_retry::{Backoff, Hedging, RetryConfig, RetryLayer};
use tokio::time::Instant;
use tower::{service_fn, Layer, ServiceExt};

const MS: fn(u64) -> Duration = Duration::from_millis;

/// A real hyper server on loopback that answers every request with 503 and
/// `Retry-After: <seconds>`, counting the requests it receives.
async fn asks_to_come_back_in(seconds: u64) -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let received = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&received);
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let counted = Arc::clone(&counted);
            tokio::spawn(async move {
                let svc =
                    hyper::service::service_fn(move |_req: Request<hyper::body::Incoming>| {
                        counted.fetch_add(1, Ordering::SeqCst);
                        async move {
                            Ok::<_, hyper::Error>(
                                Response::builder()
                                    .status(503)
                                    .header("retry-after", seconds.to_string())
                                    .body(Full::new(Bytes::new()))
                                    .expect("response"),
                            )
                        }
                    });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    (addr, received)
}

/// The facade's production retry settings before any `Retry-After` bound:
/// 2 retries, exponential backoff from 50 ms, a 20% budget.
fn production() -> mesh_retry::RetryConfigBuilder {
    RetryConfig::builder()
        .max_retries(2)
        .backoff(Backoff::exponential(MS(50), 2.0))
        .budget(20.0, 10, Duration::from_secs(10))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_after_over_the_maximum_returns_the_servers_response_at_once() {
    let (addr, received) = asks_to_come_back_in(4).await;
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let layer = RetryLayer::new(production().build().expect("config"));
    let req = Request::get(format!("http://{addr}/"))
        .body(Full::new(Bytes::new()))
        .expect("request");
    let started = std::time::Instant::now();
    let response = layer.layer(client).oneshot(req).await.expect("answered");
    let elapsed = started.elapsed();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        response.headers()["retry-after"],
        "4",
        "the server's own answer"
    );
    assert_eq!(received.load(Ordering::SeqCst), 1, "not retried early");
    // The old behaviour held the call 8 s; 3 s leaves room for a loaded
    // machine while proving no 4 s wait was started.
    assert!(elapsed < Duration::from_secs(3), "{elapsed:?}");
    assert_eq!(layer.stats().retries, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_after_that_would_end_past_the_deadline_is_not_waited_for() {
    let (addr, received) = asks_to_come_back_in(4).await;
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let layer = RetryLayer::new(
        production()
            .max_retry_after(Duration::from_secs(5))
            .deadline(Duration::from_secs(3))
            .build()
            .expect("config"),
    );
    let req = Request::get(format!("http://{addr}/"))
        .body(Full::new(Bytes::new()))
        .expect("request");
    let started = std::time::Instant::now();
    let response = layer.layer(client).oneshot(req).await.expect("answered");
    let elapsed = started.elapsed();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(received.load(Ordering::SeqCst), 1);
    assert!(elapsed < Duration::from_secs(3), "{elapsed:?}");
}

#[tokio::test(start_paused = true)]
async fn a_backoff_that_would_end_past_the_callers_deadline_is_not_started() {
    let attempts = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&attempts);
    // Each attempt takes 1 s and fails; the backoff is 2 s.
    let inner = service_fn(move |_req: Request<String>| {
        counted.fetch_add(1, Ordering::SeqCst);
        async {
            tokio::time::sleep(Duration::from_secs(1)).await;
            Ok::<_, BoxError>(Response::builder().status(503).body(()).expect("response"))
        }
    });
    let svc = RetryLayer::new(
        RetryConfig::builder()
            .max_retries(5)
            .backoff(Backoff::constant(Duration::from_secs(2)))
            .no_budget()
            .build()
            .expect("config"),
    )
    .layer(inner);
    let mut req = Request::get("http://api/x")
        .body(String::new())
        .expect("request");
    // The caller's deadline, 2.5 s away: after the first attempt 1.5 s are
    // left, less than the 2 s wait.
    req.extensions_mut()
        .insert(Deadline(clock::now().saturating_add(MS(2500))));
    let started = Instant::now();
    let response = svc.oneshot(req).await.expect("answered");
    assert_eq!(response.status(), 503, "the last real response");
    assert_eq!(attempts.load(Ordering::SeqCst), 1);
    assert_eq!(started.elapsed(), Duration::from_secs(1), "no wait started");
}

#[tokio::test(start_paused = true)]
async fn a_deadline_already_passed_sends_nothing_and_times_out() {
    let hedged = Hedging::new(3, MS(50)).expect("hedging");
    for (name, config) in [
        ("retry", RetryConfig::builder().max_retries(2)),
        ("hedging", RetryConfig::builder().hedging(hedged)),
    ] {
        let attempts = Arc::new(AtomicUsize::new(0));
        let counted = Arc::clone(&attempts);
        let inner = service_fn(move |_req: Request<String>| {
            counted.fetch_add(1, Ordering::SeqCst);
            async { Ok::<_, BoxError>(Response::new(())) }
        });
        let svc = RetryLayer::new(config.no_budget().build().expect("config")).layer(inner);
        let mut req = Request::get("http://api/x")
            .body(String::new())
            .expect("request");
        req.extensions_mut().insert(Deadline(clock::now()));
        let err = svc.oneshot(req).await.expect_err("no time left");
        assert!(
            matches!(MeshError::find(&*err), Some(MeshError::Timeout { .. })),
            "{name}: {err}"
        );
        assert_eq!(attempts.load(Ordering::SeqCst), 0, "{name}: nothing sent");
    }
}

/// A stack ready for one call only, answering it 503: every later wait for
/// readiness lasts for ever (nothing ever wakes it), as under a
/// concurrency limit whose slots are all held.
#[derive(Clone)]
struct ReadyOnce(Arc<AtomicUsize>);

impl tower::Service<Request<String>> for ReadyOnce {
    type Response = Response<()>;
    type Error = BoxError;
    type Future = std::future::Ready<Result<Response<()>, BoxError>>;

    fn poll_ready(
        &mut self,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), BoxError>> {
        match self.0.load(Ordering::SeqCst) {
            0 => std::task::Poll::Ready(Ok(())),
            _ => std::task::Poll::Pending,
        }
    }

    fn call(&mut self, _req: Request<String>) -> Self::Future {
        self.0.fetch_add(1, Ordering::SeqCst);
        let answer = Response::builder().status(503).body(()).expect("response");
        std::future::ready(Ok(answer))
    }
}

#[tokio::test(start_paused = true)]
async fn a_retry_waits_for_a_stack_s_readiness_no_longer_than_the_deadline() {
    let hedged = Hedging::new(3, MS(50)).expect("hedging");
    for (name, config) in [
        (
            "retry",
            RetryConfig::builder()
                .max_retries(2)
                .backoff(Backoff::constant(MS(10))),
        ),
        ("hedging", RetryConfig::builder().hedging(hedged)),
    ] {
        let calls = Arc::new(AtomicUsize::new(0));
        let config = config
            .deadline(MS(300))
            .no_budget()
            .build()
            .expect("config");
        let svc = RetryLayer::new(config).layer(ReadyOnce(Arc::clone(&calls)));
        let req = Request::get("http://api/x")
            .body(String::new())
            .expect("request");
        let started = Instant::now();
        let outcome = tokio::time::timeout(Duration::from_secs(60), svc.oneshot(req))
            .await
            .unwrap_or_else(|_| panic!("{name}: still waiting for readiness"));
        assert_eq!(started.elapsed(), MS(300), "{name}");
        assert_eq!(calls.load(Ordering::SeqCst), 1, "{name}");
        match outcome {
            // Hedging returns the last answer it had.
            Ok(answer) => assert_eq!((name, answer.status().as_u16()), ("hedging", 503)),
            Err(err) => {
                assert_eq!(name, "retry", "{err}");
                assert!(
                    matches!(MeshError::find(&*err), Some(MeshError::Timeout { .. })),
                    "{err}"
                );
            }
        }
    }
}

/// Attempts per service (by URI host), answered by `answer(host, attempt)`.
type Log = Arc<Mutex<HashMap<String, usize>>>;

fn per_host(
    answer: impl Fn(&str, u32) -> u16 + Send + Sync + 'static,
    log: Log,
) -> impl tower::Service<
    Request<String>,
    Response = Response<()>,
    Error = BoxError,
    Future = impl Send,
> + Clone {
    let answer = Arc::new(answer);
    service_fn(move |req: Request<String>| {
        let host = req.uri().host().unwrap_or_default().to_owned();
        let attempt = req
            .extensions()
            .get::<Attempt>()
            .copied()
            .unwrap_or_default()
            .get();
        *log.lock().expect("log").entry(host.clone()).or_default() += 1;
        let status = answer(&host, attempt);
        async move {
            Ok::<_, BoxError>(
                Response::builder()
                    .status(status)
                    .body(())
                    .expect("response"),
            )
        }
    })
}

fn to(host: &str, budget: Option<&mesh_retry::RetryBudget>) -> Request<String> {
    let mut req = Request::get(format!("http://{host}/x"))
        .body(String::new())
        .expect("request");
    if let Some(budget) = budget {
        req.extensions_mut().insert(budget.clone());
    }
    req
}

fn attempts(log: &Log, host: &str) -> usize {
    log.lock()
        .expect("log")
        .get(host)
        .copied()
        .unwrap_or_default()
}

#[tokio::test(start_paused = true)]
async fn each_service_spends_only_the_retries_its_own_traffic_funds() {
    // 20% of the last 10 s of requests, no per-second minimum.
    let config = RetryConfig::builder()
        .max_retries(1)
        .backoff(Backoff::constant(MS(1)))
        .budget(20.0, 0, Duration::from_secs(10))
        .build()
        .expect("config");
    // "a" always fails; "b" is healthy.
    let answer = |host: &str, _attempt: u32| if host == "a" { 503 } else { 200 };

    // One layer for both, as a default route serves every service: with
    // the layer's one budget, b's 100 requests fund 20 retries that a
    // spends on its 10 failing calls.
    let log = Log::default();
    let shared = RetryLayer::new(config.clone()).layer(per_host(answer, Arc::clone(&log)));
    for _ in 0..100 {
        shared.clone().oneshot(to("b", None)).await.expect("b");
    }
    for _ in 0..10 {
        shared.clone().oneshot(to("a", None)).await.expect("a");
    }
    assert_eq!(attempts(&log, "a"), 20, "one shared budget: b funds a");

    // The same layer with one budget per service.
    let log = Log::default();
    let layer = RetryLayer::new(config.clone());
    let svc = layer.layer(per_host(answer, Arc::clone(&log)));
    let budget_a = config.new_budget().expect("a budget");
    let budget_b = config.new_budget().expect("a budget");
    for _ in 0..100 {
        svc.clone()
            .oneshot(to("b", Some(&budget_b)))
            .await
            .expect("b");
    }
    for _ in 0..10 {
        let r = svc
            .clone()
            .oneshot(to("a", Some(&budget_a)))
            .await
            .expect("a");
        assert_eq!(r.status(), 503, "the last real response");
    }
    // 20% of a's own 10 requests: 2 retries.
    assert_eq!(attempts(&log, "a"), 12, "b's traffic does not fund a");
    assert_eq!(layer.stats().budget_exhausted, 8);
    // b's account is whole: 20% of its 100 requests, none spent by a.
    let now = clock::now();
    assert_eq!((0..30).filter(|_| budget_b.try_withdraw(now)).count(), 20);
    // Neither counted against the layer's own budget: a request without
    // an account of its own finds it empty (1 request: 0.2 of a retry).
    svc.clone().oneshot(to("a", None)).await.expect("a");
    assert_eq!(attempts(&log, "a"), 13);
}

#[tokio::test(start_paused = true)]
async fn a_budget_of_zero_allows_no_retry() {
    let log = Log::default();
    let layer = RetryLayer::new(
        RetryConfig::builder()
            .max_retries(3)
            .backoff(Backoff::constant(MS(1)))
            .budget(0.0, 0, Duration::from_secs(10))
            .build()
            .expect("config"),
    );
    let svc = layer.layer(per_host(|_, _| 503, Arc::clone(&log)));
    for _ in 0..50 {
        let r = svc.clone().oneshot(to("a", None)).await.expect("a");
        assert_eq!(r.status(), 503);
    }
    assert_eq!(attempts(&log, "a"), 50);
    let stats = layer.stats();
    assert_eq!((stats.retries, stats.budget_exhausted), (0, 50));
}

fn endpoint(n: u8) -> EndpointId {
    EndpointId::new(&format!("127.0.0.{n}:80")).expect("endpoint id")
}

/// A refusal by an open circuit, as the balancer returns it: wrapped with
/// the endpoint it had picked. `scoped_to_endpoint` says whether the
/// breaker guards that endpoint alone (and so names it) or the service.
fn refused(by: u8, scoped_to_endpoint: bool) -> BoxError {
    let service = ServiceName::new("api").expect("name");
    Box::new(MeshError::Endpoint {
        service: service.clone(),
        endpoint: endpoint(by),
        address: ([127, 0, 0, by], 80).into(),
        source: Box::new(MeshError::CircuitOpen {
            service: Some(service),
            endpoint: scoped_to_endpoint.then(|| endpoint(by)),
            retry_in: Some(Duration::from_secs(30)),
        }),
    })
}

#[tokio::test(start_paused = true)]
async fn a_circuit_open_for_the_whole_service_is_not_retried() {
    for method in [http::Method::GET, http::Method::POST] {
        let attempts = Arc::new(AtomicUsize::new(0));
        let counted = Arc::clone(&attempts);
        let inner = service_fn(move |_req: Request<String>| {
            counted.fetch_add(1, Ordering::SeqCst);
            async { Err::<Response<()>, BoxError>(refused(1, false)) }
        });
        let layer = RetryLayer::new(
            RetryConfig::builder()
                .max_retries(3)
                .backoff(Backoff::constant(MS(100)))
                .no_budget()
                .build()
                .expect("config"),
        );
        let req = Request::builder()
            .method(method.clone())
            .uri("http://api/x")
            .body(String::new())
            .expect("request");
        let started = Instant::now();
        let err = layer.layer(inner).oneshot(req).await.expect_err("refused");
        assert!(
            matches!(
                MeshError::find(&*err),
                Some(MeshError::CircuitOpen { endpoint: None, .. })
            ),
            "{method}: {err}"
        );
        assert_eq!(attempts.load(Ordering::SeqCst), 1, "{method}");
        assert_eq!(started.elapsed(), Duration::ZERO, "{method}: no backoff");
        assert_eq!(layer.stats().retries, 0);
    }
}

#[tokio::test(start_paused = true)]
async fn a_circuit_open_for_one_endpoint_is_retried_on_another() {
    for method in [http::Method::GET, http::Method::POST] {
        let avoided = Arc::new(Mutex::new(Vec::new()));
        let log = Arc::clone(&avoided);
        // Endpoint 1's breaker is open; the retry, told to avoid it, is
        // served by endpoint 2.
        let inner = service_fn(move |req: Request<String>| {
            let avoid: Vec<String> = req
                .extensions()
                .get::<AvoidEndpoints>()
                .map(|a| a.iter().map(ToString::to_string).collect())
                .unwrap_or_default();
            let first = avoid.is_empty();
            log.lock().expect("log").push(avoid);
            async move {
                if first {
                    Err(refused(1, true))
                } else {
                    Ok::<_, BoxError>(Response::new(()))
                }
            }
        });
        let layer = RetryLayer::new(
            RetryConfig::builder()
                .max_retries(3)
                .backoff(Backoff::constant(MS(100)))
                .no_budget()
                .build()
                .expect("config"),
        );
        let req = Request::builder()
            .method(method.clone())
            .uri("http://api/x")
            .body(String::new())
            .expect("request");
        let response = layer.layer(inner).oneshot(req).await.expect("served");
        assert_eq!(response.status(), 200, "{method}");
        assert_eq!(
            avoided.lock().expect("log").as_slice(),
            [vec![], vec!["127.0.0.1:80".to_owned()]],
            "{method}: a never-sent refusal is retried, POST included"
        );
    }
}
