//! The balancer against real hyper servers on 127.0.0.1: whatever happens
//! to requests (answered, cancelled mid-flight, bodies dropped unread), no
//! in-flight count is left behind; past 16 instances, the sampled
//! least-cost picks still steer around a slow one; power of two choices
//! never leaves a candidate unchallenged, however few instances there are.

use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use mesh::balance::Strategy;
use mesh::prelude::*;
use mesh_testkit::{Backend, Behavior};
use tower::{ServiceBuilder, ServiceExt};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_requests_with_cancellations_leave_no_count_behind() {
    let behaviors = [
        Behavior::Ok,
        Behavior::Ok,
        Behavior::Slow(Duration::from_millis(5)),
    ];
    let mut backends = Vec::new();
    for b in behaviors {
        backends.push(Backend::start(b).await.expect("backend"));
    }
    let registry = StaticRegistry::builder()
        .service("users", backends.iter().map(|b| b.addr().to_string()))
        .build()
        .expect("static list");
    let catalog = registry.catalog();
    for strategy in [Strategy::LeastConnections, Strategy::PowerOfTwoChoices] {
        let stack = ServiceBuilder::new()
            .layer(DiscoverLayer::new(catalog.clone()))
            .layer(BalanceLayer::new(strategy.clone()))
            .service(Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>());
        let mut tasks = tokio::task::JoinSet::new();
        for worker in 0..50u32 {
            let stack = stack.clone();
            tasks.spawn(async move {
                for i in 0..100u32 {
                    let req = Request::get("http://users/")
                        .body(Full::new(Bytes::new()))
                        .expect("request");
                    let call = stack.clone().oneshot(req);
                    match (worker + i) % 4 {
                        // Cancelled mid-flight: a 1 ms budget cuts most calls
                        // to the slow instance, and some others.
                        0 => {
                            let _ = tokio::time::timeout(Duration::from_millis(1), call).await;
                        }
                        // Answered, body dropped unread.
                        1 => drop(call.await.expect("answered")),
                        // Answered and read to the end.
                        _ => {
                            let r = call.await.expect("answered");
                            r.into_body().collect().await.expect("body");
                        }
                    }
                }
            });
        }
        while let Some(done) = tasks.join_next().await {
            done.expect("worker");
        }
        let set = catalog.get("users").expect("service");
        for e in set.iter() {
            assert_eq!(
                e.state().in_flight(),
                0,
                "{strategy:?}: {e} still counts requests"
            );
        }
    }
    let served: u64 = backends.iter().map(|b| b.stats().requests).sum();
    assert!(served > 5_000, "most requests reached a server: {served}");
}

/// A `MeshClient` from TOML listing `addrs` as `users`, then `rest`.
async fn client_of_users(addrs: &[String], rest: &str) -> mesh::MeshClient {
    let list: Vec<String> = addrs.iter().map(|a| format!("\"{a}\"")).collect();
    let config = mesh::MeshConfig::from_toml_str(&format!(
        r#"
[service]
name = "caller"
[discovery]
kind = "static"
services = {{ users = [{}] }}
{rest}"#,
        list.join(", ")
    ))
    .expect("config");
    mesh::MeshClient::from_config(config).await.expect("client")
}

/// Twenty instances, one answering after 200 ms: past 16 candidates the
/// least-cost strategies compare a random sample, and the slow instance,
/// its requests piling up in flight, still gets far less than round
/// robin's one in twenty. Through a `MeshClient` built from TOML and a
/// stack assembled by hand, against real servers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_sixteen_instances_sampled_least_cost_picks_still_starve_a_slow_one() {
    let mut backends = vec![Backend::start(Behavior::Slow(Duration::from_millis(200)))
        .await
        .expect("slow backend")];
    for _ in 0..19 {
        backends.push(Backend::start(Behavior::Ok).await.expect("backend"));
    }
    let addrs: Vec<String> = backends.iter().map(|b| b.addr().to_string()).collect();
    let slow_share = |backends: &[Backend]| {
        let all: u64 = backends.iter().map(|b| b.stats().requests).sum();
        backends[0].stats().requests as f64 / all as f64
    };
    for strategy in ["least_connections", "least_response_time"] {
        let balance = format!("[balance]\nstrategy = \"{strategy}\"\n");
        let client = client_of_users(&addrs, &balance).await;
        backends.iter().for_each(Backend::reset_stats);
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..32 {
            let client = client.clone();
            tasks.spawn(async move {
                for _ in 0..20 {
                    let response = client
                        .get("users", "/", mesh::CallOptions::default())
                        .await
                        .expect("answered");
                    response.into_body().collect().await.expect("body");
                }
            });
        }
        while let Some(done) = tasks.join_next().await {
            done.expect("worker");
        }
        let share = slow_share(&backends);
        assert!(
            share < 0.025,
            "{strategy} through MeshClient: the slow instance got {share:.3}"
        );
        client.shutdown(Duration::from_secs(5)).await;
    }

    let registry = StaticRegistry::builder()
        .service("users", addrs.clone())
        .build()
        .expect("static list");
    for strategy in [Strategy::LeastConnections, Strategy::LeastResponseTime] {
        let stack = ServiceBuilder::new()
            .layer(DiscoverLayer::new(registry.catalog()))
            .layer(BalanceLayer::new(strategy.clone()))
            .service(Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>());
        backends.iter().for_each(Backend::reset_stats);
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..32 {
            let stack = stack.clone();
            tasks.spawn(async move {
                for _ in 0..20 {
                    let req = Request::get("http://users/")
                        .body(Full::new(Bytes::new()))
                        .expect("request");
                    let response = stack.clone().oneshot(req).await.expect("answered");
                    response.into_body().collect().await.expect("body");
                }
            });
        }
        while let Some(done) = tasks.join_next().await {
            done.expect("worker");
        }
        let share = slow_share(&backends);
        assert!(
            share < 0.025,
            "{strategy:?} by hand: the slow instance got {share:.3}"
        );
    }
}

/// Requests a lone caller sends one after another.
const ONE_BY_ONE: usize = 2_000;

/// Of two instances, one answering after 500 ms: power of two choices
/// (the default strategy) compares both on every pick, so a lone caller's
/// requests go to the slow one only while it is unmeasured (its first
/// answer says how slow it is), where a candidate drawn unchallenged would
/// send it one request in 32 (about 60 here). The bound leaves room for
/// a fast call stalled on a loaded machine past the slow one's fading
/// estimate (half a second makes that rare). Through a `MeshClient` built from
/// TOML with no `[balance]` section, and a stack assembled by hand,
/// against real servers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn power_of_two_choices_sends_a_lone_caller_to_the_slow_one_of_two_only_to_measure_it() {
    let backends = [
        Backend::start(Behavior::Slow(Duration::from_millis(500)))
            .await
            .expect("slow backend"),
        Backend::start(Behavior::Ok).await.expect("backend"),
    ];
    let addrs: Vec<String> = backends.iter().map(|b| b.addr().to_string()).collect();
    let client = client_of_users(&addrs, "").await;
    for _ in 0..ONE_BY_ONE {
        let response = client
            .get("users", "/", mesh::CallOptions::default())
            .await
            .expect("answered");
        response.into_body().collect().await.expect("body");
    }
    let to_slow = backends[0].stats().requests;
    assert!(
        to_slow <= 10,
        "MeshClient sent {to_slow} of {ONE_BY_ONE} to the slow one"
    );
    client.shutdown(Duration::from_secs(5)).await;

    backends.iter().for_each(Backend::reset_stats);
    let registry = StaticRegistry::builder()
        .service("users", addrs)
        .build()
        .expect("static list");
    let stack = ServiceBuilder::new()
        .layer(DiscoverLayer::new(registry.catalog()))
        .layer(BalanceLayer::new(Strategy::PowerOfTwoChoices))
        .service(Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>());
    for _ in 0..ONE_BY_ONE {
        let req = Request::get("http://users/")
            .body(Full::new(Bytes::new()))
            .expect("request");
        let response = stack.clone().oneshot(req).await.expect("answered");
        response.into_body().collect().await.expect("body");
    }
    let to_slow = backends[0].stats().requests;
    assert!(
        to_slow <= 10,
        "by hand: {to_slow} of {ONE_BY_ONE} to the slow one"
    );
}
