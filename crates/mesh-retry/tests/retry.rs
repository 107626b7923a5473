//! The retry layer end to end: timings on tokio's paused clock, server
//! hints, deadlines, budgets under a storm, and body replay to a real
//! hyper server.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body::{Body, Frame};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use mesh_core::{BoxError, MeshError};
use mesh_retry::{Backoff, ReplayBody, RetryConfig, RetryLayer};
use mesh_testkit::{Backend, Behavior};
use tokio::time::Instant;
use tower::{service_fn, Layer, ServiceExt};

type Reply = Result<Response<String>, BoxError>;

/// An upstream that answers each attempt from `script` (then repeats the
/// last entry) and logs when each attempt arrived.
fn scripted(
    script: Vec<(u16, Option<&'static str>, Duration)>,
    log: Arc<Mutex<Vec<Instant>>>,
) -> impl tower::Service<
    Request<String>,
    Response = Response<String>,
    Error = BoxError,
    Future = impl Send,
> + Clone {
    let script = Arc::new(script);
    service_fn(move |_req: Request<String>| {
        let n = {
            let mut log = log.lock().expect("log");
            log.push(Instant::now());
            log.len() - 1
        };
        let (code, retry_after, delay) = script[n.min(script.len() - 1)];
        async move {
            tokio::time::sleep(delay).await;
            let mut r = Response::builder().status(code);
            if let Some(v) = retry_after {
                r = r.header("retry-after", v);
            }
            Ok::<_, BoxError>(r.body(String::new()).expect("response"))
        }
    })
}

fn get() -> Request<String> {
    Request::get("http://api/x")
        .body(String::new())
        .expect("request")
}

fn gaps(log: &Mutex<Vec<Instant>>) -> Vec<Duration> {
    let log = log.lock().expect("log");
    log.windows(2).map(|w| w[1] - w[0]).collect()
}

const MS: fn(u64) -> Duration = Duration::from_millis;

#[tokio::test(start_paused = true)]
async fn attempts_follow_the_backoff_schedule_exactly() {
    let log = Arc::new(Mutex::new(Vec::new()));
    let layer = RetryLayer::new(
        RetryConfig::builder()
            .max_retries(3)
            .backoff(Backoff::exponential(MS(100), 2.0))
            .no_budget()
            .build()
            .expect("config"),
    );
    let svc = layer.layer(scripted(
        vec![(503, None, Duration::ZERO)],
        Arc::clone(&log),
    ));
    let r: Reply = svc.oneshot(get()).await;
    assert_eq!(r.expect("answered").status(), 503, "the last real response");
    assert_eq!(gaps(&log), [MS(100), MS(200), MS(400)]);
    let stats = layer.stats();
    assert_eq!((stats.requests, stats.attempts, stats.exhausted), (1, 4, 1));
    assert_eq!(stats.total_delay, MS(700));
}

#[tokio::test(start_paused = true)]
async fn retry_after_in_seconds_sets_the_delay_and_a_hint_over_max_retry_after_stops_retrying() {
    let log = Arc::new(Mutex::new(Vec::new()));
    let layer = RetryLayer::new(
        RetryConfig::builder()
            .max_retries(2)
            .backoff(Backoff::constant(MS(10)))
            .max_retry_after(Duration::from_secs(5))
            .no_budget()
            .build()
            .expect("config"),
    );
    let svc = layer.layer(scripted(
        vec![
            (429, Some("2"), Duration::ZERO),
            (503, Some("60"), Duration::ZERO),
            (200, None, Duration::ZERO),
        ],
        Arc::clone(&log),
    ));
    let r = svc.oneshot(get()).await.expect("answered");
    assert_eq!(r.status(), 503, "60 s is over the 5 s maximum: not retried");
    assert_eq!(gaps(&log), [Duration::from_secs(2)]);
}

#[tokio::test(start_paused = true)]
async fn retry_after_as_an_http_date_is_honoured() {
    let log = Arc::new(Mutex::new(Vec::new()));
    // Whole seconds, as HTTP dates have: 4 s after the start of this second.
    let unix = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    let at = httpdate::fmt_http_date(SystemTime::UNIX_EPOCH + Duration::from_secs(unix + 4));
    let at: &'static str = Box::leak(at.into_boxed_str());
    let layer = RetryLayer::new(
        RetryConfig::builder()
            .max_retries(1)
            .backoff(Backoff::constant(MS(10)))
            .max_retry_after(Duration::from_secs(10))
            .no_budget()
            .build()
            .expect("config"),
    );
    let svc = layer.layer(scripted(
        vec![(503, Some(at), Duration::ZERO), (200, None, Duration::ZERO)],
        Arc::clone(&log),
    ));
    assert_eq!(svc.oneshot(get()).await.expect("answered").status(), 200);
    // Between 3 and 4 s from now, give or take the real time the test takes.
    let gap = gaps(&log)[0];
    assert!(
        gap >= Duration::from_secs(2) && gap <= Duration::from_secs(4),
        "{gap:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn the_deadline_stops_retries_that_would_end_after_it() {
    let log = Arc::new(Mutex::new(Vec::new()));
    let layer = RetryLayer::new(
        RetryConfig::builder()
            .max_retries(10)
            .backoff(Backoff::constant(MS(100)))
            .deadline(MS(250))
            .no_budget()
            .build()
            .expect("config"),
    );
    let svc = layer.layer(scripted(
        vec![(503, None, Duration::ZERO)],
        Arc::clone(&log),
    ));
    let started = Instant::now();
    let r = svc.oneshot(get()).await.expect("answered");
    assert_eq!(r.status(), 503);
    assert_eq!(
        log.lock().expect("log").len(),
        3,
        "at 0, 100 and 200 ms; 300 is past 250"
    );
    assert_eq!(started.elapsed(), MS(200));
}

#[tokio::test(start_paused = true)]
async fn a_slow_attempt_times_out_and_the_retry_succeeds() {
    let log = Arc::new(Mutex::new(Vec::new()));
    let layer = RetryLayer::new(
        RetryConfig::builder()
            .max_retries(2)
            .backoff(Backoff::constant(MS(10)))
            .per_attempt_timeout(MS(100))
            .no_budget()
            .build()
            .expect("config"),
    );
    let svc = layer.layer(scripted(
        vec![
            (200, None, Duration::from_secs(60)),
            (200, None, Duration::ZERO),
        ],
        Arc::clone(&log),
    ));
    let started = Instant::now();
    assert_eq!(svc.oneshot(get()).await.expect("answered").status(), 200);
    assert_eq!(started.elapsed(), MS(110));
}

#[tokio::test(start_paused = true)]
async fn the_deadline_also_cuts_the_attempt_in_flight() {
    let log = Arc::new(Mutex::new(Vec::new()));
    let layer = RetryLayer::new(
        RetryConfig::builder()
            .deadline(MS(150))
            .no_budget()
            .build()
            .expect("config"),
    );
    let svc = layer.layer(scripted(
        vec![(200, None, Duration::from_secs(60))],
        Arc::clone(&log),
    ));
    let started = Instant::now();
    let err = svc.oneshot(get()).await.expect_err("deadline");
    assert!(
        matches!(MeshError::find(&*err), Some(MeshError::Timeout { .. })),
        "{err}"
    );
    assert_eq!(started.elapsed(), MS(150));
}

/// 50 clients hammer a backend that fails every request, with a 20%
/// budget: the backend sees at most 1.2x the requests plus the budget's
/// per-second minimum over the run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_storm_is_held_to_the_budget() {
    const CLIENTS: usize = 50;
    const PER_CLIENT: usize = 20;
    const MIN_PER_SECOND: u32 = 10;
    let backend = Backend::start(Behavior::Status(503))
        .await
        .expect("backend");
    let layer = RetryLayer::new(
        RetryConfig::builder()
            .max_retries(3)
            .backoff(Backoff::constant(MS(1)))
            .budget(20.0, MIN_PER_SECOND, Duration::from_secs(10))
            .build()
            .expect("config"),
    );
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let svc = layer.layer(client);
    let uri = format!("http://{}/", backend.addr());
    let started = std::time::Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..CLIENTS {
        let (svc, uri) = (svc.clone(), uri.clone());
        tasks.spawn(async move {
            for _ in 0..PER_CLIENT {
                let req = Request::get(uri.as_str())
                    .body(Full::new(Bytes::new()))
                    .expect("request");
                let r = svc
                    .clone()
                    .oneshot(req)
                    .await
                    .expect("the last real response");
                assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
            }
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.expect("client");
    }
    let seconds = started.elapsed().as_secs_f64();
    let requests = (CLIENTS * PER_CLIENT) as f64;
    let attempts = backend.stats().requests as f64;
    let bound = 1.2 * requests + f64::from(MIN_PER_SECOND) * (seconds + 1.0);
    assert!(
        attempts <= bound,
        "{attempts} attempts for {requests} requests in {seconds:.2}s (bound {bound})"
    );
    assert!(attempts > requests, "some retries were allowed");
    let stats = layer.stats();
    assert_eq!(stats.attempts as f64, attempts);
    assert!(stats.budget_exhausted > 0);
}

/// A body that yields its chunks one poll at a time, like a stream.
struct Chunks(VecDeque<Bytes>);

impl Body for Chunks {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        Poll::Ready(self.0.pop_front().map(|c| Ok(Frame::data(c))))
    }
}

/// A real hyper server that reads each request's whole body, logs it, and
/// answers 503 to the first request, 200 after.
async fn recording_server() -> (SocketAddr, Arc<Mutex<Vec<Bytes>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let bodies = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::clone(&bodies);
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let seen = Arc::clone(&seen);
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                    let seen = Arc::clone(&seen);
                    async move {
                        let body = req.into_body().collect().await?.to_bytes();
                        let first = {
                            let mut seen = seen.lock().expect("log");
                            seen.push(body);
                            seen.len() == 1
                        };
                        let status = if first { 503 } else { 200 };
                        Ok::<_, hyper::Error>(
                            Response::builder()
                                .status(status)
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
    (addr, bodies)
}

fn streaming(parts: usize) -> Chunks {
    Chunks(
        (0..parts)
            .map(|i| Bytes::from(format!("chunk-{i:03};")))
            .collect(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streaming_body_under_the_cap_is_replayed_byte_for_byte() {
    let (addr, bodies) = recording_server().await;
    let client = Client::builder(TokioExecutor::new()).build_http::<ReplayBody<Chunks>>();
    let svc = RetryLayer::new(
        RetryConfig::builder()
            .backoff(Backoff::constant(MS(1)))
            .no_budget()
            .build()
            .expect("config"),
    )
    .layer(client);
    let req = Request::put(format!("http://{addr}/upload"))
        .body(ReplayBody::new(streaming(50), 64 * 1024))
        .expect("request");
    let r = svc.oneshot(req).await.expect("answered");
    assert_eq!(r.status(), 200);
    let bodies = bodies.lock().expect("log");
    assert_eq!(bodies.len(), 2);
    assert_eq!(bodies[0].len(), 50 * 10);
    assert_eq!(bodies[0], bodies[1], "the retry sent the same bytes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streaming_body_over_the_cap_is_sent_once() {
    let (addr, bodies) = recording_server().await;
    let client = Client::builder(TokioExecutor::new()).build_http::<ReplayBody<Chunks>>();
    let svc = RetryLayer::new(
        RetryConfig::builder()
            .backoff(Backoff::constant(MS(1)))
            .no_budget()
            .build()
            .expect("config"),
    )
    .layer(client);
    let req = Request::put(format!("http://{addr}/upload"))
        .body(ReplayBody::new(streaming(50), 100))
        .expect("request");
    let r = svc.oneshot(req).await.expect("answered");
    assert_eq!(r.status(), 503, "the first (and only) answer");
    let bodies = bodies.lock().expect("log");
    assert_eq!(bodies.len(), 1);
    assert_eq!(bodies[0].len(), 500, "sent whole, once");
}

#[tokio::test(start_paused = true)]
async fn an_attempt_cut_by_its_timeout_puts_its_endpoint_on_the_avoid_list() {
    use mesh_core::ext::{AvoidEndpoints, CallContext};
    use mesh_core::{Endpoint, ServiceName};
    let seen: Arc<Mutex<Vec<Vec<String>>>> = Arc::new(Mutex::new(Vec::new()));
    let log = Arc::clone(&seen);
    // Stands in for the balancer: notes its choice in the call's context,
    // and the first choice hangs.
    let inner = service_fn(move |req: Request<String>| {
        let avoid: Vec<String> = req
            .extensions()
            .get::<AvoidEndpoints>()
            .map(|a| a.iter().map(ToString::to_string).collect())
            .unwrap_or_default();
        let attempt = {
            let mut log = log.lock().expect("log");
            log.push(avoid);
            log.len()
        };
        let endpoint = Endpoint::builder(([127, 0, 0, attempt as u8], 80).into()).build();
        if let Some(context) = CallContext::of(&req) {
            context.choose(ServiceName::new("api").expect("name"), endpoint);
        }
        async move {
            if attempt == 1 {
                std::future::pending::<()>().await;
            }
            Ok::<_, BoxError>(Response::new(String::new()))
        }
    });
    let svc = RetryLayer::new(
        RetryConfig::builder()
            .backoff(Backoff::constant(MS(1)))
            .per_attempt_timeout(MS(50))
            .no_budget()
            .build()
            .expect("config"),
    )
    .layer(inner);
    assert_eq!(svc.oneshot(get()).await.expect("answered").status(), 200);
    let seen = seen.lock().expect("log");
    assert_eq!(seen.as_slice(), [vec![], vec!["127.0.0.1:80".to_owned()]]);
}

/// A layer below that notes it ends each attempt `bound` from now (as the
/// breaker's call timeout does), withdraws the note after `held`, and
/// never answers.
fn hangs_after_noting_a_bound(
    bound: Duration,
    held: Duration,
) -> impl tower::Service<Request<String>, Response = Response<String>, Error = BoxError> + Clone {
    use mesh_core::clock;
    use mesh_core::ext::CallContext;
    service_fn(move |req: Request<String>| {
        let note =
            CallContext::of(&req).map(|c| c.bound_attempt(clock::now().saturating_add(bound)));
        async move {
            tokio::time::sleep(held).await;
            drop(note);
            std::future::pending::<()>().await;
            Ok::<_, BoxError>(Response::new(String::new()))
        }
    })
}

fn one_attempt_within(deadline: Duration) -> RetryLayer {
    RetryLayer::new(
        RetryConfig::builder()
            .max_retries(0)
            .deadline(deadline)
            .no_budget()
            .build()
            .expect("config"),
    )
}

#[tokio::test(start_paused = true)]
async fn an_attempt_bounded_below_gets_no_timer_while_the_bound_holds() {
    // The layer below promises to end the attempt at 1 s and (here) breaks
    // that promise, holding it for a minute: with no timer of its own,
    // the retry layer waits on.
    let below = hangs_after_noting_a_bound(MS(1_000), MS(60_000));
    let svc = one_attempt_within(MS(5_000)).layer(below);
    let waited = tokio::time::timeout(MS(30_000), svc.oneshot(get())).await;
    assert!(waited.is_err(), "trusted the bound below, set no timer");
}

/// One call through a retry layer (the whole call within 500 ms, no
/// retries) over `below`: it must fail with a timeout at 500 ms exactly.
async fn assert_cut_at_the_deadline(
    below: impl tower::Service<Request<String>, Response = Response<String>, Error = BoxError> + Clone,
) {
    let svc = one_attempt_within(MS(500)).layer(below);
    let started = Instant::now();
    let error = svc.oneshot(get()).await.expect_err("cut by the deadline");
    assert!(
        matches!(
            MeshError::find(error.as_ref()),
            Some(MeshError::Timeout { .. })
        ),
        "{error}"
    );
    assert_eq!(started.elapsed(), MS(500), "at the deadline, not later");
}

#[tokio::test(start_paused = true)]
async fn an_attempt_gets_its_timer_once_the_bound_below_is_withdrawn() {
    // The layer that promised answered at 100 ms (its note withdrawn);
    // something between it and the retry layer still waits.
    assert_cut_at_the_deadline(hangs_after_noting_a_bound(MS(1_000), MS(100))).await;
}

#[tokio::test(start_paused = true)]
async fn an_attempt_whose_own_limit_comes_first_keeps_its_timer() {
    assert_cut_at_the_deadline(hangs_after_noting_a_bound(MS(10_000), MS(60_000))).await;
}

/// One layer in front of two services: `orders` always fails, `users`
/// never does. With one budget for the layer, the healthy service's
/// traffic funds retries against the failing one; with one per service,
/// `orders` retries only on what its own calls funded (10% of one call:
/// nothing).
#[tokio::test(start_paused = true)]
async fn with_a_budget_per_service_a_failing_service_spends_only_its_own() {
    async fn attempts_on_orders(layer: RetryLayer) -> usize {
        let orders = Arc::new(Mutex::new(0));
        let counted = Arc::clone(&orders);
        let svc = layer.layer(service_fn(move |req: Request<String>| {
            let failing = req.uri().host() == Some("orders");
            if failing {
                *counted.lock().expect("count") += 1;
            }
            let status = if failing { 503 } else { 200 };
            async move {
                Ok::<_, BoxError>(Response::builder().status(status).body(String::new())?)
            }
        }));
        let to = |host: &str| {
            Request::get(format!("http://{host}/"))
                .body(String::new())
                .expect("request")
        };
        for _ in 0..100 {
            svc.clone().oneshot(to("users")).await.expect("users");
        }
        let answer = svc.oneshot(to("orders")).await.expect("an answer");
        assert_eq!(answer.status(), StatusCode::SERVICE_UNAVAILABLE);
        let attempts = *orders.lock().expect("count");
        attempts
    }
    let config = || {
        RetryConfig::builder()
            .max_retries(2)
            .backoff(Backoff::constant(Duration::from_millis(1)))
            .budget(10.0, 0, Duration::from_secs(10))
            .build()
            .expect("config")
    };
    assert_eq!(
        attempts_on_orders(RetryLayer::new(config())).await,
        3,
        "the layer's budget, funded by users, paid two retries"
    );
    assert_eq!(
        attempts_on_orders(RetryLayer::new(config()).budget_per_service()).await,
        1,
        "orders' own budget funds no retry"
    );
}

/// Retry events name the service a request is routed to: its
/// `TargetService` when it has one (a request whose authority is an
/// address or a proxy), else its URI's host.
#[tokio::test(start_paused = true)]
async fn retry_events_name_the_service_the_request_is_routed_to() {
    use mesh_core::ext::TargetService;
    use mesh_core::{EventBus, MeshEvent, ServiceName};

    let events = EventBus::default();
    let mut seen = events.subscribe();
    let log = Arc::new(Mutex::new(Vec::new()));
    let svc = RetryLayer::new(
        RetryConfig::builder()
            .max_retries(1)
            .backoff(Backoff::constant(MS(10)))
            .no_budget()
            .build()
            .expect("config"),
    )
    .events(events)
    .layer(scripted(vec![(503, None, MS(0))], log));
    let name = |n: &str| Some(ServiceName::new(n).expect("name"));
    let mut routed = get();
    routed
        .extensions_mut()
        .insert(TargetService(ServiceName::new("users").expect("name")));
    for (req, expected) in [(routed, name("users")), (get(), name("api"))] {
        let answer = svc.clone().oneshot(req).await.expect("an answer");
        assert_eq!(answer.status(), StatusCode::SERVICE_UNAVAILABLE);
        let mut named = Vec::new();
        while let Ok(event) = seen.try_recv() {
            match event {
                MeshEvent::RetryScheduled { service, .. }
                | MeshEvent::RetriesExhausted { service, .. } => named.push(service),
                _ => {}
            }
        }
        assert_eq!(
            named,
            [expected.clone(), expected],
            "scheduled, then exhausted"
        );
    }
}
