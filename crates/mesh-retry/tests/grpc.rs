//! gRPC semantics of the retry layer (gRFC A6): the server's pushback,
//! the count of previous attempts each retry carries, and a call's own
//! policy replacing the layer's.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use mesh_core::grpc::{GrpcCode, GrpcCodes};
use mesh_core::BoxError;
use mesh_retry::{Backoff, CallPolicy, Hedging, RetryBudget, RetryConfig, RetryLayer};
use tokio::time::Instant;
use tower::{service_fn, Layer, ServiceExt};

const MS: fn(u64) -> Duration = Duration::from_millis;

/// One attempt as the upstream saw it: when, and its
/// `grpc-previous-rpc-attempts`.
type Seen = (Instant, Option<String>);

/// An answer: the gRPC code, a `grpc-retry-pushback-ms`, and how long the
/// upstream takes to give it.
type Script = Vec<(u32, Option<&'static str>, Duration)>;

/// A gRPC upstream answering each attempt trailers-only from `script`
/// (then repeating its last entry).
fn grpc_upstream(
    script: Script,
    log: Arc<Mutex<Vec<Seen>>>,
) -> impl tower::Service<
    Request<String>,
    Response = Response<String>,
    Error = BoxError,
    Future = impl Send,
> + Clone {
    let script = Arc::new(script);
    service_fn(move |req: Request<String>| {
        let previous = req
            .headers()
            .get("grpc-previous-rpc-attempts")
            .map(|v| v.to_str().expect("ascii").to_owned());
        let n = {
            let mut log = log.lock().expect("log");
            log.push((Instant::now(), previous));
            log.len() - 1
        };
        let (code, pushback, delay) = script[n.min(script.len() - 1)];
        async move {
            tokio::time::sleep(delay).await;
            let mut r = Response::builder()
                .header("content-type", "application/grpc")
                .header("grpc-status", code.to_string());
            if let Some(ms) = pushback {
                r = r.header("grpc-retry-pushback-ms", ms);
            }
            Ok::<_, BoxError>(r.body(String::new()).expect("response"))
        }
    })
}

fn grpc_call() -> Request<String> {
    Request::post("http://users/pkg.Users/Get")
        .header("content-type", "application/grpc")
        .body(String::new())
        .expect("request")
}

fn grpc_status(r: &Response<String>) -> &str {
    r.headers()["grpc-status"].to_str().expect("ascii")
}

fn gaps(log: &Mutex<Vec<Seen>>) -> Vec<Duration> {
    let log = log.lock().expect("log");
    log.windows(2).map(|w| w[1].0 - w[0].0).collect()
}

fn previous_attempts(log: &Mutex<Vec<Seen>>) -> Vec<Option<String>> {
    log.lock()
        .expect("log")
        .iter()
        .map(|s| s.1.clone())
        .collect()
}

fn layer(max_retries: u32, backoff: Backoff) -> RetryLayer {
    RetryLayer::new(
        RetryConfig::builder()
            .max_retries(max_retries)
            .backoff(backoff)
            .no_budget()
            .build()
            .expect("config"),
    )
}

#[tokio::test(start_paused = true)]
async fn a_pushback_sets_the_next_wait_exactly_instead_of_the_backoff() {
    let log = Arc::new(Mutex::new(Vec::new()));
    let svc = layer(3, Backoff::constant(MS(10))).layer(grpc_upstream(
        vec![
            (14, Some("300"), Duration::ZERO),
            (14, None, Duration::ZERO),
            (0, None, Duration::ZERO),
        ],
        Arc::clone(&log),
    ));
    let r = svc.oneshot(grpc_call()).await.expect("answered");
    assert_eq!(grpc_status(&r), "0");
    assert_eq!(gaps(&log), [MS(300), MS(10)]);
}

#[tokio::test(start_paused = true)]
async fn a_negative_or_malformed_pushback_stops_retrying() {
    for value in ["-1", "soon", "1.5"] {
        let log = Arc::new(Mutex::new(Vec::new()));
        let l = layer(3, Backoff::constant(MS(10)));
        let svc = l.layer(grpc_upstream(
            vec![(14, Some(value), Duration::ZERO), (0, None, Duration::ZERO)],
            Arc::clone(&log),
        ));
        let started = Instant::now();
        let r = svc.oneshot(grpc_call()).await.expect("answered");
        assert_eq!(grpc_status(&r), "14", "{value}: the server's own answer");
        assert_eq!(log.lock().expect("log").len(), 1, "{value}");
        assert_eq!(started.elapsed(), Duration::ZERO, "{value}");
        assert_eq!(l.stats().retries, 0);
    }
}

#[tokio::test(start_paused = true)]
async fn a_pushback_that_would_end_past_the_deadline_returns_the_answer_at_once() {
    let log = Arc::new(Mutex::new(Vec::new()));
    let svc = RetryLayer::new(
        RetryConfig::builder()
            .max_retries(3)
            .deadline(MS(200))
            .no_budget()
            .build()
            .expect("config"),
    )
    .layer(grpc_upstream(
        vec![(14, Some("500"), Duration::ZERO), (0, None, Duration::ZERO)],
        Arc::clone(&log),
    ));
    let started = Instant::now();
    let r = svc.oneshot(grpc_call()).await.expect("answered");
    assert_eq!(grpc_status(&r), "14");
    assert_eq!(started.elapsed(), Duration::ZERO);
    assert_eq!(log.lock().expect("log").len(), 1);
}

#[tokio::test(start_paused = true)]
async fn the_callers_grpc_timeout_bounds_the_call_when_it_is_earlier_than_the_deadline() {
    for (caller, told, ended) in [("100m", "100m", MS(100)), ("60S", "10000m", MS(10_000))] {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = Arc::clone(&seen);
        let hung = service_fn(move |req: Request<String>| {
            let told = req.headers().get("grpc-timeout").cloned();
            log.lock().expect("log").push(told);
            async {
                std::future::pending::<()>().await;
                Ok::<_, BoxError>(Response::new(String::new()))
            }
        });
        let svc = RetryLayer::new(
            RetryConfig::builder()
                .max_retries(2)
                .deadline(Duration::from_secs(10))
                .no_budget()
                .build()
                .expect("config"),
        )
        .layer(hung);
        let mut call = grpc_call();
        call.headers_mut()
            .insert("grpc-timeout", caller.parse().expect("value"));
        let started = Instant::now();
        let err = svc
            .oneshot(call)
            .await
            .expect_err("the server never answers");
        assert_eq!(started.elapsed(), ended, "{caller}: {err}");
        let seen = seen.lock().expect("log").clone();
        assert_eq!(seen, [Some(told.parse().expect("value"))], "{caller}");
    }
}

#[tokio::test(start_paused = true)]
async fn a_hedged_call_waits_for_no_pushback_that_would_end_past_its_deadline() {
    for (pushback, deadline, waited, sent) in [
        ("60000", MS(200), Duration::ZERO, 1),
        ("100", MS(200), MS(100), 2),
    ] {
        let log = Arc::new(Mutex::new(Vec::new()));
        let svc = RetryLayer::new(
            RetryConfig::builder()
                .hedging(Hedging::new(3, Duration::from_secs(1)).expect("hedging"))
                .deadline(deadline)
                .no_budget()
                .build()
                .expect("config"),
        )
        .layer(grpc_upstream(
            vec![
                (14, Some(pushback), Duration::ZERO),
                (0, None, Duration::ZERO),
            ],
            Arc::clone(&log),
        ));
        let started = Instant::now();
        let r = svc.oneshot(grpc_call()).await.expect("answered");
        assert_eq!(started.elapsed(), waited, "pushback {pushback}");
        assert_eq!(log.lock().expect("log").len(), sent, "pushback {pushback}");
        let status = if sent == 1 { "14" } else { "0" };
        assert_eq!(grpc_status(&r), status, "pushback {pushback}");
    }
}

/// A pushback past the deadline from one copy stops only the timer: a copy
/// still out that answers non-fatally sends the next one at once.
#[tokio::test(start_paused = true)]
async fn a_pushback_past_the_deadline_leaves_the_copies_out_their_say() {
    let log = Arc::new(Mutex::new(Vec::new()));
    let svc = RetryLayer::new(
        RetryConfig::builder()
            .hedging(Hedging::new(3, MS(50)).expect("hedging"))
            .deadline(Duration::from_secs(1))
            .no_budget()
            .build()
            .expect("config"),
    )
    .layer(grpc_upstream(
        vec![
            (14, Some("60000"), MS(70)),
            (14, None, MS(60)),
            (0, None, Duration::ZERO),
        ],
        Arc::clone(&log),
    ));
    let started = Instant::now();
    let r = svc.oneshot(grpc_call()).await.expect("answered");
    assert_eq!(grpc_status(&r), "0", "the third copy's answer");
    // Copy 2 left at 50 ms and answered at 110 ms; the hedging timer,
    // stopped by the pushback at 70 ms, sent nothing at 100 ms.
    assert_eq!(started.elapsed(), MS(110));
    assert_eq!(gaps(&log), [MS(50), MS(60)]);
}

#[tokio::test(start_paused = true)]
async fn a_pushback_on_a_code_that_is_not_retried_changes_nothing() {
    let log = Arc::new(Mutex::new(Vec::new()));
    let svc = layer(3, Backoff::constant(MS(10))).layer(grpc_upstream(
        vec![(5, Some("10"), Duration::ZERO), (0, None, Duration::ZERO)],
        Arc::clone(&log),
    ));
    let r = svc.oneshot(grpc_call()).await.expect("answered");
    assert_eq!(
        grpc_status(&r),
        "5",
        "NOT_FOUND is the application's answer"
    );
    assert_eq!(log.lock().expect("log").len(), 1);
}

#[tokio::test(start_paused = true)]
async fn after_a_pushback_the_backoff_starts_again_from_its_first_delay() {
    let log = Arc::new(Mutex::new(Vec::new()));
    let svc = layer(4, Backoff::exponential(MS(100), 2.0)).layer(grpc_upstream(
        vec![
            (14, None, Duration::ZERO),
            (14, Some("50"), Duration::ZERO),
            (14, None, Duration::ZERO),
            (0, None, Duration::ZERO),
        ],
        Arc::clone(&log),
    ));
    svc.oneshot(grpc_call()).await.expect("answered");
    assert_eq!(gaps(&log), [MS(100), MS(50), MS(100)]);
}

#[tokio::test(start_paused = true)]
async fn each_retry_of_a_grpc_call_tells_the_server_the_attempts_before_it() {
    let log = Arc::new(Mutex::new(Vec::new()));
    let svc = layer(3, Backoff::constant(MS(1))).layer(grpc_upstream(
        vec![
            (14, None, Duration::ZERO),
            (14, None, Duration::ZERO),
            (0, None, Duration::ZERO),
        ],
        Arc::clone(&log),
    ));
    let mut call = grpc_call();
    // A stale value the caller left is never sent on the first attempt's
    // retries: the layer writes its own.
    call.headers_mut()
        .insert("grpc-previous-rpc-attempts", "9".parse().expect("value"));
    svc.oneshot(call).await.expect("answered");
    assert_eq!(
        previous_attempts(&log),
        [
            Some("9".to_owned()),
            Some("1".to_owned()),
            Some("2".to_owned())
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn http_requests_never_carry_the_previous_attempts_header() {
    let log: Arc<Mutex<Vec<Option<String>>>> = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::clone(&log);
    let svc = layer(2, Backoff::constant(MS(1))).layer(service_fn(move |req: Request<String>| {
        seen.lock().expect("log").push(
            req.headers()
                .get("grpc-previous-rpc-attempts")
                .map(|v| v.to_str().expect("ascii").to_owned()),
        );
        async {
            Ok::<_, BoxError>(
                Response::builder()
                    .status(503)
                    .body(String::new())
                    .expect("response"),
            )
        }
    }));
    let get = Request::get("http://users/")
        .body(String::new())
        .expect("request");
    assert_eq!(svc.oneshot(get).await.expect("answered").status(), 503);
    assert_eq!(log.lock().expect("log").as_slice(), [None, None, None]);
}

/// A real hyper server on loopback answering gRPC calls trailers-only:
/// UNAVAILABLE to the first two, OK after; it logs each call's
/// `grpc-previous-rpc-attempts`.
async fn unavailable_twice() -> (SocketAddr, Arc<Mutex<Vec<Option<String>>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let log = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::clone(&log);
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let seen = Arc::clone(&seen);
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                    let calls = {
                        let mut seen = seen.lock().expect("log");
                        seen.push(
                            req.headers()
                                .get("grpc-previous-rpc-attempts")
                                .map(|v| v.to_str().expect("ascii").to_owned()),
                        );
                        seen.len()
                    };
                    let code = if calls <= 2 { "14" } else { "0" };
                    async move {
                        Ok::<_, hyper::Error>(
                            Response::builder()
                                .header("content-type", "application/grpc")
                                .header("grpc-status", code)
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
    (addr, log)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_server_sees_the_previous_attempts_of_each_retry() {
    let (addr, log) = unavailable_twice().await;
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let svc = layer(3, Backoff::constant(MS(1))).layer(client);
    let call = Request::post(format!("http://{addr}/pkg.Users/Get"))
        .header("content-type", "application/grpc")
        .body(Full::new(Bytes::new()))
        .expect("request");
    let r = svc.oneshot(call).await.expect("answered");
    assert_eq!(r.headers()["grpc-status"], "0");
    assert_eq!(
        log.lock().expect("log").as_slice(),
        [None, Some("1".to_owned()), Some("2".to_owned())]
    );
}

#[tokio::test(start_paused = true)]
async fn a_call_policy_replaces_the_layers_attempts_codes_and_backoff() {
    // The layer alone would not retry at all.
    let log = Arc::new(Mutex::new(Vec::new()));
    let l = layer(0, Backoff::constant(MS(500)));
    let script = vec![
        (13, None, Duration::ZERO),
        (13, None, Duration::ZERO),
        (0, None, Duration::ZERO),
    ];
    let svc = l.layer(grpc_upstream(script, Arc::clone(&log)));
    let r = svc.clone().oneshot(grpc_call()).await.expect("answered");
    assert_eq!(grpc_status(&r), "13");
    assert_eq!(log.lock().expect("log").len(), 1);

    let log = Arc::new(Mutex::new(Vec::new()));
    let script = vec![
        (13, None, Duration::ZERO),
        (13, None, Duration::ZERO),
        (0, None, Duration::ZERO),
    ];
    let svc = l.layer(grpc_upstream(script, Arc::clone(&log)));
    let policy = CallPolicy::builder()
        .max_attempts(3)
        .backoff(Backoff::constant(MS(20)))
        .retryable_grpc_codes(GrpcCodes::of([GrpcCode::INTERNAL]))
        .build()
        .expect("policy");
    let mut call = grpc_call();
    call.extensions_mut().insert(policy);
    let r = svc.oneshot(call).await.expect("answered");
    assert_eq!(grpc_status(&r), "0");
    assert_eq!(gaps(&log), [MS(20), MS(20)]);
}

#[tokio::test(start_paused = true)]
async fn a_call_policy_can_also_narrow_what_the_layer_would_retry() {
    let log = Arc::new(Mutex::new(Vec::new()));
    let svc = layer(5, Backoff::constant(MS(1))).layer(grpc_upstream(
        vec![(14, None, Duration::ZERO)],
        Arc::clone(&log),
    ));
    let policy = CallPolicy::builder()
        .max_attempts(2)
        .build()
        .expect("policy");
    let mut call = grpc_call();
    call.extensions_mut().insert(policy);
    svc.clone().oneshot(call).await.expect("answered");
    assert_eq!(log.lock().expect("log").len(), 2, "two attempts, not six");

    let no_unavailable = CallPolicy::builder()
        .retryable_grpc_codes(GrpcCodes::NONE)
        .build()
        .expect("policy");
    let mut call = grpc_call();
    call.extensions_mut().insert(no_unavailable);
    svc.oneshot(call).await.expect("answered");
    assert_eq!(
        log.lock().expect("log").len(),
        3,
        "one more attempt, no retry"
    );
}

#[tokio::test(start_paused = true)]
async fn a_call_policys_per_attempt_timeout_cuts_each_attempt() {
    let log = Arc::new(Mutex::new(Vec::new()));
    let svc = layer(2, Backoff::constant(MS(10))).layer(grpc_upstream(
        vec![
            (0, None, Duration::from_secs(60)),
            (0, None, Duration::ZERO),
        ],
        Arc::clone(&log),
    ));
    let policy = CallPolicy::builder()
        .backoff(Backoff::constant(MS(10)))
        .per_attempt_timeout(MS(100))
        .build()
        .expect("policy");
    // Idempotent, so a timed-out attempt may be sent again (a gRPC call,
    // a POST, is retried only on the codes its policy names).
    let mut call = Request::get("http://users/x")
        .body(String::new())
        .expect("request");
    call.extensions_mut().insert(policy);
    let started = Instant::now();
    let r = svc.oneshot(call).await.expect("answered");
    assert_eq!(grpc_status(&r), "0");
    assert_eq!(started.elapsed(), MS(110));
}

#[tokio::test(start_paused = true)]
async fn a_call_policy_still_answers_to_the_budget() {
    let log = Arc::new(Mutex::new(Vec::new()));
    let svc = layer(2, Backoff::constant(MS(1))).layer(grpc_upstream(
        vec![(14, None, Duration::ZERO)],
        Arc::clone(&log),
    ));
    let policy = CallPolicy::builder()
        .max_attempts(5)
        .build()
        .expect("policy");
    let spent = RetryBudget::new(0.0, 0, Duration::from_secs(10)).expect("budget");
    let mut call = grpc_call();
    call.extensions_mut().insert(policy);
    call.extensions_mut().insert(spent);
    svc.oneshot(call).await.expect("answered");
    assert_eq!(log.lock().expect("log").len(), 1);
}

/// Only a gRPC call has a gRPC status: a plain GET answered in
/// `application/grpc` with `UNAVAILABLE` (a misrouted call) is judged by
/// its HTTP 200 and not retried, where the same answer to a gRPC call is.
#[tokio::test(start_paused = true)]
async fn a_plain_call_is_judged_by_its_http_status_whatever_its_answer_says() {
    let unavailable = || vec![(14, None, Duration::ZERO), (0, None, Duration::ZERO)];
    let log = Arc::new(Mutex::new(Vec::new()));
    let svc =
        layer(2, Backoff::constant(MS(1))).layer(grpc_upstream(unavailable(), Arc::clone(&log)));
    let plain = Request::get("http://users/")
        .body(String::new())
        .expect("request");
    let r = svc.oneshot(plain).await.expect("answered");
    assert_eq!(grpc_status(&r), "14", "handed back as it came");
    assert_eq!(log.lock().expect("log").len(), 1, "not retried");

    let log = Arc::new(Mutex::new(Vec::new()));
    let svc =
        layer(2, Backoff::constant(MS(1))).layer(grpc_upstream(unavailable(), Arc::clone(&log)));
    let r = svc.oneshot(grpc_call()).await.expect("answered");
    assert_eq!(grpc_status(&r), "0");
    assert_eq!(log.lock().expect("log").len(), 2, "retried once");
}
