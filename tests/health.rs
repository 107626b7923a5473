//! Active health checking feeding the balancer, against real hyper servers
//! on 127.0.0.1: a stopped instance is marked unhealthy and receives no
//! traffic; restarted, it is marked healthy and gets traffic again.

use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use mesh::core::{Health, ServiceName};
use mesh::health::{UpstreamCheckConfig, UpstreamHealthChecker, UpstreamProbe};
use mesh::prelude::*;
use mesh_testkit::{Backend, Behavior};
use tower::{ServiceBuilder, ServiceExt};

async fn until(what: &str, mut done: impl FnMut() -> bool) {
    let started = Instant::now();
    while !done() {
        assert!(started.elapsed() < Duration::from_secs(10), "never: {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_balancer_skips_what_health_checks_condemn_and_takes_it_back() {
    let mut backends = Vec::new();
    for _ in 0..3 {
        backends.push(Backend::start(Behavior::Ok).await.expect("backend"));
    }
    let registry = StaticRegistry::builder()
        .service("users", backends.iter().map(|b| b.addr().to_string()))
        .build()
        .expect("static list");
    let catalog = registry.catalog();
    let source = catalog.clone();
    let _checker = UpstreamHealthChecker::spawn(
        ServiceName::new("users").expect("name"),
        UpstreamCheckConfig {
            probe: UpstreamProbe::Http {
                path: "/health/ready".to_owned(),
            },
            interval: Duration::from_millis(20),
            jitter: Duration::from_millis(5),
            timeout: Duration::from_secs(1),
            healthy_threshold: 2,
            unhealthy_threshold: 2,
            unhealthy_until_checked: false,
        },
        move || source.get("users"),
        None,
    )
    .expect("checker");
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let stack = ServiceBuilder::new()
        .layer(DiscoverLayer::new(catalog.clone()))
        .layer(BalanceLayer::round_robin())
        .service(client);
    let send = |n: usize| {
        let stack = stack.clone();
        async move {
            for _ in 0..n {
                let req = Request::get("http://users/api")
                    .body(Full::new(Bytes::new()))
                    .expect("request");
                let response = stack.clone().oneshot(req).await.expect("the call succeeds");
                assert!(response.status().is_success());
            }
        }
    };
    let health = |i: usize| {
        catalog.get("users").expect("listed").endpoints()[i]
            .state()
            .health()
    };
    until("all healthy", || {
        (0..3).all(|i| health(i) == Health::Healthy)
    })
    .await;

    // Stop the third instance: once marked unhealthy, no request fails and
    // none goes to it.
    let stopped = backends.pop().expect("three");
    let stopped_addr = stopped.addr();
    drop(stopped);
    until("the stopped one is unhealthy", || {
        health(2) == Health::Unhealthy
    })
    .await;
    for b in &backends {
        b.reset_stats();
    }
    // Every call succeeds (a call to the stopped one would fail: there is
    // no retry here), and the two live ones share them.
    send(60).await;
    for b in &backends {
        let got = b.stats().requests;
        assert!(got >= 28, "a live instance got {got} of 60");
    }

    // Restart it where discovery expects it: healthy again, and it gets
    // its share.
    let restarted = Backend::start_on(stopped_addr, Behavior::Ok)
        .await
        .expect("restart");
    until("healthy again", || health(2) == Health::Healthy).await;
    restarted.reset_stats();
    send(60).await;
    // Round robin over three: about 20 requests, plus any probes.
    let got = restarted.stats().requests;
    assert!(got >= 18, "the restarted instance got {got} requests");
}
