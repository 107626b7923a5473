//! The balancer against real hyper servers on 127.0.0.1: whatever happens
//! to requests (answered, cancelled mid-flight, bodies dropped unread), no
//! in-flight count is left behind.

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
