//! A soak through the whole stack (Retry, Discover, Balance, per-endpoint
//! Breaker, timeout, hyper-util) against five real servers on 127.0.0.1:
//! 100,000 requests with faults (one instance answering 503, one flapping
//! between fast and slow, one killed and restarted) and cancellations (a
//! share of the calls abandoned mid-flight). Afterwards: no request is
//! counted in flight anywhere, no breaker is stuck (all close again once
//! the instances recover), and the process's memory did not grow beyond a
//! bound. Bounded in requests and in time.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use mesh::core::CircuitState;
use mesh::discover::Catalog;
use mesh::prelude::*;
use mesh_testkit::{Backend, Behavior};
use tower::{ServiceBuilder, ServiceExt};

const REQUESTS: u64 = 100_000;
const CALLERS: u64 = 64;
const TIME_LIMIT: Duration = Duration::from_secs(240);

fn rss_bytes() -> u64 {
    // statm: pages of size, resident, ...
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map_or(0, |pages| pages * 4096)
}

fn in_flight_total(catalog: &Catalog) -> u32 {
    catalog
        .get("users")
        .map(|set| set.iter().map(|e| e.state().in_flight()).sum())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_thousand_requests_with_faults_and_cancellations_leave_nothing_behind() {
    let mut backends = Vec::new();
    for _ in 0..5 {
        backends.push(Backend::start(Behavior::Ok).await.expect("backend"));
    }
    backends[3].set_behavior(Behavior::Status(503));
    let registry = StaticRegistry::builder()
        .service("users", backends.iter().map(|b| b.addr().to_string()))
        .build()
        .expect("registry");
    let catalog = registry.catalog();
    let breaker = BreakerLayer::new(
        BreakerConfig::builder()
            .scope(BreakerScope::Endpoint)
            .consecutive_failures(5)
            .open_duration(Duration::from_millis(200))
            // Growth capped at 1 s, so that recovery is judged in seconds
            // after the soak (a breaker legitimately open for minutes is
            // not a stuck one).
            .open_duration_growth(2.0, Duration::from_secs(1))
            .half_open_probes(2)
            .build()
            .expect("breaker"),
    );
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let stack = ServiceBuilder::new()
        .layer(RetryLayer::new(
            RetryConfig::builder()
                .max_retries(2)
                .backoff(Backoff::constant(Duration::from_millis(1)))
                .build()
                .expect("retry"),
        ))
        .layer(DiscoverLayer::new(catalog.clone()))
        .layer(BalanceLayer::round_robin())
        .layer(breaker.clone())
        .timeout(Duration::from_secs(2))
        .service(client);

    let started = Instant::now();
    let next = Arc::new(AtomicU64::new(0));
    let (ok, cancelled) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let mut rss_after_warmup = 0;
    let mut callers = tokio::task::JoinSet::new();
    for _ in 0..CALLERS {
        let (stack, next, ok, cancelled) = (
            stack.clone(),
            Arc::clone(&next),
            Arc::clone(&ok),
            Arc::clone(&cancelled),
        );
        callers.spawn(async move {
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= REQUESTS || started.elapsed() > TIME_LIMIT {
                    return;
                }
                let req = Request::get("http://users/api")
                    .body(Full::new(Bytes::new()))
                    .expect("request");
                let call = async {
                    let response = stack.clone().oneshot(req).await?;
                    response.into_body().collect().await?;
                    Ok::<_, BoxError>(())
                };
                // One call in ten is abandoned almost at once, mid-flight.
                if n.is_multiple_of(10) {
                    if tokio::time::timeout(Duration::from_micros(200), call)
                        .await
                        .is_err()
                    {
                        cancelled.fetch_add(1, Ordering::Relaxed);
                    }
                } else if call.await.is_ok() {
                    ok.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
    }
    // Faults while the load runs: flapping, a kill and a restart.
    let mut round = 0u32;
    let mut killed: Option<std::net::SocketAddr> = None;
    while !callers.is_empty() {
        tokio::select! {
            _ = callers.join_next() => {}
            _ = tokio::time::sleep(Duration::from_millis(100)) => {
                round += 1;
                let slow = round.is_multiple_of(2);
                // The last instance flaps (the kill below shifts indexes,
                // never the last one).
                if let Some(flapping) = backends.last() {
                    flapping.set_behavior(if slow {
                        Behavior::Slow(Duration::from_millis(20))
                    } else {
                        Behavior::Ok
                    });
                }
                if round == 10 {
                    rss_after_warmup = rss_bytes();
                }
                if round == 20 {
                    killed = Some(backends[2].addr());
                    backends.remove(2);
                } else if round == 30 {
                    if let Some(addr) = killed.take() {
                        backends.insert(2, Backend::start_on(addr, Behavior::Ok).await.expect("restart"));
                    }
                }
            }
        }
    }
    let sent = next.load(Ordering::Relaxed).min(REQUESTS);
    assert_eq!(
        sent, REQUESTS,
        "the soak ran to the end within {TIME_LIMIT:?}"
    );
    let completed = ok.load(Ordering::Relaxed) + cancelled.load(Ordering::Relaxed);
    assert!(
        ok.load(Ordering::Relaxed) >= REQUESTS * 85 / 100,
        "most calls succeed: {} of {REQUESTS} ({} cancelled)",
        ok.load(Ordering::Relaxed),
        cancelled.load(Ordering::Relaxed)
    );
    assert!(completed <= REQUESTS);

    // Nothing is left counted in flight, cancelled calls included.
    let settle = Instant::now();
    while in_flight_total(&catalog) != 0 {
        assert!(
            settle.elapsed() < Duration::from_secs(5),
            "in flight after the soak: {}",
            in_flight_total(&catalog)
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    // No breaker is stuck: with every instance healthy again, each one
    // closes after its open period and a few calls.
    if backends.len() < 5 {
        if let Some(addr) = killed.take() {
            backends.insert(
                2,
                Backend::start_on(addr, Behavior::Ok)
                    .await
                    .expect("restart"),
            );
        }
    }
    for b in &backends {
        b.set_behavior(Behavior::Ok);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let recover = Instant::now();
    loop {
        for _ in 0..50 {
            let req = Request::get("http://users/api")
                .body(Full::new(Bytes::new()))
                .expect("request");
            if let Ok(r) = stack.clone().oneshot(req).await {
                let _ = r.into_body().collect().await;
            }
        }
        let stuck: Vec<_> = breaker
            .metrics()
            .into_iter()
            .filter(|(_, m)| m.state != CircuitState::Closed)
            .map(|(k, m)| format!("{k:?}: {}", m.state))
            .collect();
        if stuck.is_empty() {
            break;
        }
        assert!(
            recover.elapsed() < Duration::from_secs(15),
            "breakers not closing: {stuck:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    // Memory: growth after warm-up stays bounded (no per-request leak;
    // 100k requests leaking even 1 KiB each would be ~100 MiB).
    let grown = rss_bytes().saturating_sub(rss_after_warmup);
    assert!(
        grown < 48 * 1024 * 1024,
        "resident memory grew by {} MiB after warm-up",
        grown / (1024 * 1024)
    );
}
