//! Hedging end to end: copies racing on tokio's paused clock behind a
//! stand-in balancer, the budget and the deadline holding them, and a race
//! between two real hyper servers on loopback.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, Uri};
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use mesh_core::ext::{AvoidEndpoints, CallContext};
use mesh_core::{BoxError, Endpoint, MeshError, ServiceName};
use mesh_retry::{CallPolicy, Hedging, RetryBudget, RetryConfig, RetryLayer};
use proptest::prelude::*;
use tokio::time::Instant;
use tower::{service_fn, Layer, Service, ServiceExt};

const MS: fn(u64) -> Duration = Duration::from_millis;

/// How one instance answers: `status` after `delay` (a gRPC answer with
/// its code in `grpc-status` when set).
#[derive(Clone, Copy, Debug)]
struct Instance {
    delay: Duration,
    status: u16,
    grpc: Option<u32>,
}

const fn answers(status: u16, after_ms: u64) -> Instance {
    Instance {
        delay: Duration::from_millis(after_ms),
        status,
        grpc: None,
    }
}

/// What the instances saw.
#[derive(Debug, Default)]
struct Log {
    /// Each copy: the instance it went to, when, and its
    /// `grpc-previous-rpc-attempts`.
    sent: Vec<(usize, Instant, Option<String>)>,
    completed: usize,
    cancelled: usize,
}

/// Counts a copy's handler as cancelled when dropped before it answered.
struct Handler {
    log: Arc<Mutex<Log>>,
    done: bool,
}

impl Drop for Handler {
    fn drop(&mut self) {
        let mut log = self.log.lock().expect("log");
        if self.done {
            log.completed += 1;
        } else {
            log.cancelled += 1;
        }
    }
}

fn endpoint(i: usize) -> Endpoint {
    Endpoint::builder(([127, 0, 0, i as u8 + 1], 80).into()).build()
}

/// Stands in for discovery and the balancer: sends each copy to the first
/// instance its `AvoidEndpoints` allows and notes it in the call's context,
/// as mesh-balance does.
fn balanced(
    instances: Vec<Instance>,
    log: Arc<Mutex<Log>>,
) -> impl Service<Request<String>, Response = Response<String>, Error = BoxError, Future = impl Send>
       + Clone {
    let instances = Arc::new(instances);
    service_fn(move |req: Request<String>| {
        let avoid = req
            .extensions()
            .get::<AvoidEndpoints>()
            .cloned()
            .unwrap_or_default();
        let i = (0..instances.len())
            .find(|&i| !avoid.contains(endpoint(i).id()))
            .unwrap_or(0);
        if let Some(context) = CallContext::of(&req) {
            context.choose(ServiceName::new("users").expect("name"), endpoint(i));
        }
        let previous = req
            .headers()
            .get("grpc-previous-rpc-attempts")
            .map(|v| v.to_str().expect("ascii").to_owned());
        log.lock()
            .expect("log")
            .sent
            .push((i, Instant::now(), previous));
        let handler = Handler {
            log: Arc::clone(&log),
            done: false,
        };
        let instance = instances[i];
        async move {
            // Moved whole (not just the field it sets), so it lives as
            // long as the handler does.
            let mut handler = handler;
            tokio::time::sleep(instance.delay).await;
            handler.done = true;
            let mut r = Response::builder()
                .status(instance.status)
                .header("x-instance", i.to_string());
            if let Some(code) = instance.grpc {
                r = r
                    .header("content-type", "application/grpc")
                    .header("grpc-status", code.to_string());
            }
            Ok::<_, BoxError>(r.body(String::new()).expect("response"))
        }
    })
}

fn hedging(max_attempts: u32, delay: Duration) -> RetryLayer {
    RetryLayer::new(
        RetryConfig::builder()
            .hedging(Hedging::new(max_attempts, delay).expect("hedging"))
            .no_budget()
            .build()
            .expect("config"),
    )
}

fn get() -> Request<String> {
    Request::get("http://users/x")
        .body(String::new())
        .expect("request")
}

fn instance_of(r: &Response<String>) -> &str {
    r.headers()["x-instance"].to_str().expect("ascii")
}

fn sent_to(log: &Mutex<Log>) -> Vec<usize> {
    log.lock().expect("log").sent.iter().map(|s| s.0).collect()
}

#[tokio::test(start_paused = true)]
async fn a_second_copy_sent_after_the_delay_beats_a_slow_first_and_the_loser_is_cancelled() {
    let log = Arc::new(Mutex::new(Log::default()));
    let layer = hedging(3, MS(50));
    let svc = layer.layer(balanced(
        vec![answers(200, 10_000), answers(200, 10)],
        Arc::clone(&log),
    ));
    let started = Instant::now();
    let r = svc.oneshot(get()).await.expect("answered");
    assert_eq!(instance_of(&r), "1", "the second instance answered");
    assert_eq!(started.elapsed(), MS(60));
    assert_eq!(sent_to(&log), [0, 1], "no third copy: an answer came first");
    {
        let log = log.lock().expect("log");
        assert_eq!(log.sent[1].1 - log.sent[0].1, MS(50));
        assert_eq!(
            (log.completed, log.cancelled),
            (1, 1),
            "the slow copy was dropped"
        );
    }
    let stats = layer.stats();
    assert_eq!(
        (
            stats.requests,
            stats.attempts,
            stats.hedges,
            stats.hedges_won
        ),
        (1, 2, 1, 1)
    );
}

#[tokio::test(start_paused = true)]
async fn a_first_copy_that_answers_within_the_delay_is_never_hedged() {
    let log = Arc::new(Mutex::new(Log::default()));
    let layer = hedging(3, MS(50));
    let svc = layer.layer(balanced(vec![answers(200, 40)], Arc::clone(&log)));
    svc.oneshot(get()).await.expect("answered");
    assert_eq!(sent_to(&log), [0]);
    assert_eq!(layer.stats().hedges, 0);
}

#[tokio::test(start_paused = true)]
async fn a_non_fatal_answer_sends_the_next_copy_at_once() {
    let log = Arc::new(Mutex::new(Log::default()));
    let svc = hedging(3, Duration::from_secs(1)).layer(balanced(
        vec![answers(503, 10), answers(200, 10)],
        Arc::clone(&log),
    ));
    let started = Instant::now();
    let r = svc.oneshot(get()).await.expect("answered");
    assert_eq!((r.status().as_u16(), instance_of(&r)), (200, "1"));
    assert_eq!(started.elapsed(), MS(20));
}

#[tokio::test(start_paused = true)]
async fn a_fatal_answer_ends_the_call_even_when_it_is_an_error() {
    let log = Arc::new(Mutex::new(Log::default()));
    let svc = hedging(3, MS(50)).layer(balanced(
        vec![answers(500, 10), answers(200, 10)],
        Arc::clone(&log),
    ));
    let r = svc.oneshot(get()).await.expect("answered");
    assert_eq!(r.status(), 500, "500 is not in the non-fatal set");
    assert_eq!(sent_to(&log), [0]);
}

#[tokio::test(start_paused = true)]
async fn when_every_copy_fails_non_fatally_the_last_answer_is_returned() {
    let log = Arc::new(Mutex::new(Log::default()));
    let svc = hedging(3, Duration::from_secs(1)).layer(balanced(
        vec![answers(503, 10), answers(502, 10), answers(504, 10)],
        Arc::clone(&log),
    ));
    let r = svc.oneshot(get()).await.expect("answered");
    assert_eq!(r.status(), 504);
    assert_eq!(
        sent_to(&log),
        [0, 1, 2],
        "each copy to an instance not tried"
    );
}

#[tokio::test(start_paused = true)]
async fn a_grpc_unavailable_is_non_fatal_and_each_copy_counts_those_before_it() {
    let log = Arc::new(Mutex::new(Log::default()));
    let unavailable = Instance {
        grpc: Some(14),
        ..answers(200, 10)
    };
    let ok = Instance {
        grpc: Some(0),
        ..answers(200, 10)
    };
    let svc = hedging(3, Duration::from_secs(1)).layer(balanced(
        vec![unavailable, unavailable, ok],
        Arc::clone(&log),
    ));
    let call = Request::post("http://users/pkg.Users/Get")
        .header("content-type", "application/grpc")
        .body(String::new())
        .expect("request");
    let r = svc.oneshot(call).await.expect("answered");
    assert_eq!(r.headers()["grpc-status"], "0");
    let previous: Vec<_> = log
        .lock()
        .expect("log")
        .sent
        .iter()
        .map(|s| s.2.clone())
        .collect();
    assert_eq!(previous, [None, Some("1".to_owned()), Some("2".to_owned())]);
}

#[tokio::test(start_paused = true)]
async fn a_spent_budget_sends_no_other_copy() {
    let log = Arc::new(Mutex::new(Log::default()));
    let layer = RetryLayer::new(
        RetryConfig::builder()
            .hedging(Hedging::new(3, MS(50)).expect("hedging"))
            .budget(0.0, 0, Duration::from_secs(10))
            .build()
            .expect("config"),
    );
    let svc = layer.layer(balanced(
        vec![answers(200, 1_000), answers(200, 10)],
        Arc::clone(&log),
    ));
    let started = Instant::now();
    let r = svc.oneshot(get()).await.expect("answered");
    assert_eq!(instance_of(&r), "0", "the only copy answered");
    assert_eq!(started.elapsed(), MS(1_000));
    assert_eq!(sent_to(&log), [0]);
    let stats = layer.stats();
    assert_eq!((stats.hedges, stats.budget_exhausted), (0, 1));
}

#[tokio::test(start_paused = true)]
async fn a_post_is_not_hedged_unless_it_is_a_grpc_call() {
    let log = Arc::new(Mutex::new(Log::default()));
    let svc = hedging(3, MS(50)).layer(balanced(
        vec![answers(200, 1_000), answers(200, 10)],
        Arc::clone(&log),
    ));
    let post = Request::post("http://users/x")
        .body("{}".to_owned())
        .expect("request");
    let r = svc.clone().oneshot(post).await.expect("answered");
    assert_eq!(instance_of(&r), "0");
    assert_eq!(sent_to(&log), [0]);

    let grpc = Request::post("http://users/pkg.Users/Get")
        .header("content-type", "application/grpc")
        .body(String::new())
        .expect("request");
    let r = svc.oneshot(grpc).await.expect("answered");
    assert_eq!(instance_of(&r), "1");
    assert_eq!(sent_to(&log), [0, 0, 1]);
}

#[tokio::test(start_paused = true)]
async fn a_call_policy_turns_hedging_on_or_off_for_its_call() {
    let log = Arc::new(Mutex::new(Log::default()));
    let retrying = RetryLayer::new(RetryConfig::builder().no_budget().build().expect("config"));
    let svc = retrying.layer(balanced(
        vec![answers(200, 1_000), answers(200, 10)],
        Arc::clone(&log),
    ));
    let hedged = CallPolicy::builder()
        .hedging(Hedging::new(2, MS(50)).expect("hedging"))
        .build()
        .expect("policy");
    let mut req = get();
    req.extensions_mut().insert(hedged);
    let r = svc.oneshot(req).await.expect("answered");
    assert_eq!(instance_of(&r), "1");

    let log = Arc::new(Mutex::new(Log::default()));
    let svc = hedging(3, MS(50)).layer(balanced(
        vec![answers(200, 1_000), answers(200, 10)],
        Arc::clone(&log),
    ));
    let mut req = get();
    req.extensions_mut()
        .insert(CallPolicy::builder().build().expect("policy"));
    let r = svc.oneshot(req).await.expect("answered");
    assert_eq!(instance_of(&r), "0", "retried, not hedged");
    assert_eq!(sent_to(&log), [0]);
}

#[tokio::test(start_paused = true)]
async fn the_deadline_bounds_every_copy() {
    let log = Arc::new(Mutex::new(Log::default()));
    let svc = RetryLayer::new(
        RetryConfig::builder()
            .hedging(Hedging::new(5, MS(40)).expect("hedging"))
            .deadline(MS(100))
            .no_budget()
            .build()
            .expect("config"),
    )
    .layer(balanced(vec![answers(200, 10_000)], Arc::clone(&log)));
    let started = Instant::now();
    let err = svc.oneshot(get()).await.expect_err("deadline");
    assert!(
        matches!(MeshError::find(&*err), Some(MeshError::Timeout { .. })),
        "{err}"
    );
    assert_eq!(started.elapsed(), MS(100));
    assert_eq!(sent_to(&log).len(), 3, "at 0, 40 and 80 ms");
    assert_eq!(log.lock().expect("log").cancelled, 3);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// However the instances answer, a call sends at most `max_attempts`
    /// copies, and at most one more than the budget's tokens.
    #[test]
    fn copies_stay_within_max_attempts_and_the_budget(
        max_attempts in 2u32..=5,
        delay_ms in 0u64..100,
        tokens in 0u32..=4,
        instances in proptest::collection::vec((0u64..200, prop_oneof![Just(200u16), Just(503), Just(500)]), 1..6),
    ) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .expect("runtime");
        let log = Arc::new(Mutex::new(Log::default()));
        let layer = hedging(max_attempts, MS(delay_ms));
        let instances = instances.into_iter().map(|(ms, status)| answers(status, ms)).collect();
        let svc = layer.layer(balanced(instances, Arc::clone(&log)));
        // `tokens` hundred percent of one request: exactly `tokens` copies.
        let budget = RetryBudget::new(f64::from(tokens) * 100.0, 0, Duration::from_secs(10))
            .expect("budget");
        let mut req = get();
        req.extensions_mut().insert(budget);
        let r = rt.block_on(svc.oneshot(req));
        prop_assert!(r.is_ok());
        let sent = sent_to(&log).len() as u32;
        prop_assert!(sent <= max_attempts, "{} copies for {}", sent, max_attempts);
        prop_assert!(sent <= 1 + tokens, "{} copies for {} tokens", sent, tokens);
        prop_assert_eq!(layer.stats().hedges, u64::from(sent - 1));
        let log = log.lock().expect("log");
        prop_assert_eq!(log.completed + log.cancelled, sent as usize, "every copy ended");
    }
}

/// A real hyper server on loopback that answers 200 after `delay`, naming
/// itself in `x-instance`, and counts handlers cancelled before answering.
async fn server(name: &'static str, delay: Duration) -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let cancelled = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&cancelled);
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let counted = Arc::clone(&counted);
            tokio::spawn(async move {
                let svc =
                    hyper::service::service_fn(move |_req: Request<hyper::body::Incoming>| {
                        struct Guard(Arc<AtomicUsize>, bool);
                        impl Drop for Guard {
                            fn drop(&mut self) {
                                if !self.1 {
                                    self.0.fetch_add(1, Ordering::SeqCst);
                                }
                            }
                        }
                        let guard = Guard(Arc::clone(&counted), false);
                        async move {
                            let mut guard = guard;
                            tokio::time::sleep(delay).await;
                            guard.1 = true;
                            Ok::<_, hyper::Error>(
                                Response::builder()
                                    .header("x-instance", name)
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
    (addr, cancelled)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn between_two_real_servers_the_fast_one_wins_and_the_slow_one_is_cancelled() {
    let (slow, slow_cancelled) = server("slow", Duration::from_secs(5)).await;
    let (fast, _) = server("fast", Duration::ZERO).await;
    let addrs = [slow, fast];
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    // The balancer's part: the first address not avoided, noted in the slot.
    let balancer = service_fn(move |mut req: Request<Full<Bytes>>| {
        let avoid = req
            .extensions()
            .get::<AvoidEndpoints>()
            .cloned()
            .unwrap_or_default();
        let addr = addrs
            .into_iter()
            .find(|a| !avoid.contains(Endpoint::builder(*a).build().id()))
            .unwrap_or(slow);
        if let Some(context) = CallContext::of(&req) {
            context.choose(
                ServiceName::new("users").expect("name"),
                Endpoint::builder(addr).build(),
            );
        }
        let uri: Uri = format!("http://{addr}/").parse().expect("uri");
        *req.uri_mut() = uri;
        client.request(req)
    });
    let layer = RetryLayer::new(
        RetryConfig::builder()
            .hedging(Hedging::new(2, MS(50)).expect("hedging"))
            .no_budget()
            .build()
            .expect("config"),
    );
    let req = Request::get("http://users/")
        .body(Full::new(Bytes::new()))
        .expect("request");
    let started = std::time::Instant::now();
    // Spawned, so the hedged call's future is shown to be `Send`.
    let call = tokio::spawn(layer.layer(balancer).oneshot(req));
    let r = call.await.expect("joined").expect("answered");
    assert_eq!(r.headers()["x-instance"], "fast");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    // Dropping the slow copy closed its connection; the server drops the
    // handler when it sees that.
    let waited = std::time::Instant::now();
    while slow_cancelled.load(Ordering::SeqCst) == 0 && waited.elapsed() < Duration::from_secs(3) {
        tokio::time::sleep(MS(10)).await;
    }
    assert_eq!(
        slow_cancelled.load(Ordering::SeqCst),
        1,
        "the slow handler was cancelled"
    );
    assert_eq!(layer.stats().hedges_won, 1);
}

/// With a budget per service, a hedged copy is paid by its own service's
/// traffic: `users`' fast calls fund copies of `orders`' slow call only
/// when the layer keeps one budget for both.
#[tokio::test(start_paused = true)]
async fn with_a_budget_per_service_a_hedged_copy_is_paid_by_its_own_service() {
    async fn copies_to_orders(layer: RetryLayer) -> usize {
        let sent = Arc::new(Mutex::new(0usize));
        let counted = Arc::clone(&sent);
        let svc = layer.layer(service_fn(move |req: Request<String>| {
            let copy = match req.uri().host() {
                Some("orders") => {
                    let mut sent = counted.lock().expect("count");
                    *sent += 1;
                    *sent
                }
                _ => 0,
            };
            async move {
                // The first copy to `orders` is slow: a hedge is due at 50 ms.
                if copy == 1 {
                    tokio::time::sleep(MS(1_000)).await;
                }
                Ok::<_, BoxError>(Response::new(String::new()))
            }
        }));
        let to = |host: &str| {
            Request::get(format!("http://{host}/"))
                .body(String::new())
                .expect("request")
        };
        for _ in 0..50 {
            svc.clone().oneshot(to("users")).await.expect("users");
        }
        svc.oneshot(to("orders")).await.expect("orders");
        let copies = *sent.lock().expect("count");
        copies
    }
    let config = || {
        RetryConfig::builder()
            .budget(10.0, 0, Duration::from_secs(10))
            .hedging(Hedging::new(2, MS(50)).expect("hedging"))
            .build()
            .expect("config")
    };
    assert_eq!(
        copies_to_orders(RetryLayer::new(config())).await,
        2,
        "users' calls paid a copy"
    );
    assert_eq!(
        copies_to_orders(RetryLayer::new(config()).budget_per_service()).await,
        1,
        "orders' own call funds no copy"
    );
}

/// A plain call answered in `application/grpc` with `UNAVAILABLE` is
/// judged by its HTTP 200, as the layers below its copies judge it: the
/// answer, not a reason for another copy.
#[tokio::test(start_paused = true)]
async fn a_plain_call_s_answer_is_judged_by_its_http_status() {
    let unavailable = Instance {
        grpc: Some(14),
        ..answers(200, 10)
    };
    let log = Arc::new(Mutex::new(Log::default()));
    let svc = hedging(3, Duration::from_secs(1)).layer(balanced(
        vec![unavailable, answers(200, 10)],
        Arc::clone(&log),
    ));
    let r = svc.oneshot(get()).await.expect("answered");
    assert_eq!(instance_of(&r), "0", "the first answer ends the call");
    assert_eq!(sent_to(&log), [0]);
}
