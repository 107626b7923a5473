//! One timer per attempt: when the breaker below times each call, the
//! retry layer above sets no timer of its own for an attempt the breaker
//! ends first, and still sets one when its own limit is earlier or the
//! breaker's call is over while a layer between them still waits. Each
//! time the call ends at the earlier limit, against real servers on
//! 127.0.0.1, through a stack assembled by hand and through a
//! `MeshClient` built from TOML.

use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use mesh::prelude::*;
use mesh_testkit::{Backend, Behavior};
use tower::util::MapFutureLayer;
use tower::{ServiceBuilder, ServiceExt};

const SLOW: Duration = Duration::from_secs(3);

/// Retry (no retries, the whole call within `deadline`), discovery of
/// `backend`, round robin, and a breaker timing each call at
/// `call_timeout`, over hyper's client; with `stall`, a layer between
/// balancer and breaker that waits that long after the breaker answered
/// (as one reading a body that never ends would). One call to it, its
/// error and how long it took.
async fn call_by_hand(
    backend: &Backend,
    deadline: Duration,
    call_timeout: Duration,
    stall: Option<Duration>,
) -> (BoxError, Duration) {
    let registry = StaticRegistry::builder()
        .service("users", [backend.addr().to_string()])
        .build()
        .expect("static list");
    let retry = RetryConfig::builder()
        .max_retries(0)
        .deadline(deadline)
        .build()
        .expect("retry config");
    let breaker = BreakerConfig::builder()
        .call_timeout(call_timeout)
        .build()
        .expect("breaker config");
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let stack = ServiceBuilder::new()
        .layer(RetryLayer::new(retry))
        .layer(DiscoverLayer::new(registry.catalog()))
        .layer(BalanceLayer::round_robin())
        .option_layer(stall.map(|wait| {
            MapFutureLayer::new(move |answer| async move {
                let answer = answer.await;
                tokio::time::sleep(wait).await;
                answer
            })
        }))
        .layer(BreakerLayer::new(breaker))
        .service(client);
    let req = Request::get("http://users/")
        .body(Full::new(Bytes::new()))
        .expect("request");
    let started = Instant::now();
    let error = stack.oneshot(req).await.expect_err("too slow");
    (error, started.elapsed())
}

/// The timeout inside `error` (wrapped in the endpoint's error or not).
fn timed_out_after(error: &BoxError) -> Option<Duration> {
    match MeshError::find(error.as_ref())? {
        MeshError::Timeout { after } => Some(*after),
        _ => None,
    }
}

#[tokio::test]
async fn the_breakers_earlier_call_timeout_ends_the_attempt_for_the_retry_layer() {
    let backend = Backend::start(Behavior::Slow(SLOW)).await.expect("backend");
    let (error, elapsed) = call_by_hand(
        &backend,
        Duration::from_secs(10),
        Duration::from_millis(150),
        None,
    )
    .await;
    assert_eq!(
        timed_out_after(&error),
        Some(Duration::from_millis(150)),
        "the breaker's timeout: {error}"
    );
    assert!(
        MeshError::endpoint_of(error.as_ref()).is_some(),
        "cut below the balancer, so the endpoint is named: {error}"
    );
    assert!(elapsed < SLOW, "ended by the breaker, took {elapsed:?}");
}

#[tokio::test]
async fn a_deadline_earlier_than_the_breakers_timeout_still_ends_the_attempt() {
    let backend = Backend::start(Behavior::Slow(SLOW)).await.expect("backend");
    let (error, elapsed) = call_by_hand(
        &backend,
        Duration::from_millis(150),
        Duration::from_secs(10),
        None,
    )
    .await;
    let after = timed_out_after(&error).expect("a timeout");
    assert!(
        after <= Duration::from_millis(150),
        "the deadline's time left, not the breaker's 10 s: {error}"
    );
    assert!(
        MeshError::endpoint_of(error.as_ref()).is_none(),
        "a deadline says nothing about the endpoint: {error}"
    );
    assert!(elapsed < SLOW, "ended by the deadline, took {elapsed:?}");
}

#[tokio::test]
async fn a_layer_waiting_after_the_breaker_answered_is_cut_at_the_deadline() {
    // The server answers at once, so the breaker's call (timed at 10 s) is
    // over when the layer between starts to wait.
    let backend = Backend::start(Behavior::Ok).await.expect("backend");
    let (error, elapsed) = call_by_hand(
        &backend,
        Duration::from_millis(300),
        Duration::from_secs(10),
        Some(SLOW),
    )
    .await;
    let after = timed_out_after(&error).expect("a timeout");
    assert!(after <= Duration::from_millis(300), "{error}");
    assert!(
        elapsed < SLOW,
        "the stalled layer was cut, took {elapsed:?}"
    );
}

/// A client of `backend` with a per-attempt `timeout` and no retries.
async fn facade(backend: &Backend, timeout: &str) -> MeshClient {
    let config = mesh::MeshConfig::from_toml_str(&format!(
        r#"
[service]
name = "caller"
[discovery]
kind = "static"
services = {{ users = ["{}"] }}
[retry]
max_retries = 0
[services.users]
timeout = "{timeout}"
"#,
        backend.addr()
    ))
    .expect("config");
    MeshClient::from_config(config).await.expect("client")
}

#[tokio::test]
async fn through_the_facade_the_service_timeout_and_a_shorter_call_deadline_both_hold() {
    let backend = Backend::start(Behavior::Slow(SLOW)).await.expect("backend");
    // The per-attempt timeout, timed by the breaker, under the deadline
    // the facade derives from it: the breaker's timer ends each attempt.
    let client = facade(&backend, "150ms").await;
    let started = Instant::now();
    let error = client
        .get("users", "/", CallOptions::default())
        .await
        .expect_err("too slow");
    let elapsed = started.elapsed();
    assert_eq!(
        timed_out_after(&error),
        Some(Duration::from_millis(150)),
        "{error}"
    );
    assert!(elapsed < SLOW, "took {elapsed:?}");
    // A caller's deadline shorter than the breaker's timeout: the retry
    // layer's own timer ends the call.
    let client = facade(&backend, "10s").await;
    let started = Instant::now();
    let options = CallOptions::default().timeout(Duration::from_millis(150));
    let error = client
        .get("users", "/", options)
        .await
        .expect_err("too slow");
    let elapsed = started.elapsed();
    let after = timed_out_after(&error).expect("a timeout");
    assert!(after <= Duration::from_millis(150), "{error}");
    assert!(elapsed < SLOW, "took {elapsed:?}");
}
