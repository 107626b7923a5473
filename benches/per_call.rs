//! Where a call's time and allocations go, layer by layer: the stack
//! built up one layer at a time over an in-memory leaf that answers at
//! once (Discover; + Balance; + Breaker; + Retry, the full stack), each
//! against the leaf alone in the same run, with the allocations per call
//! counted by a counting allocator in the same process.
//!
//! ```text
//! cargo bench -p tower-mesh-benches --bench per_call
//! ```
//!
//! Stacks can be named as arguments (`-- retry+discover+balance+breaker`),
//! each word naming the stack of that name: the leaf is always measured,
//! as the anchor. Under `valgrind --tool=callgrind` one named stack gives
//! a profile of that stack, the leaf's runs and the future sizes beside
//! it.

#[path = "memory_registry.rs"]
mod memory_registry;

use std::alloc::System;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use mesh::prelude::*;
use stats_alloc::{Region, StatsAlloc, INSTRUMENTED_SYSTEM};
use tower::util::BoxCloneService;
use tower::{Layer, ServiceBuilder, ServiceExt};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

/// Calls per measurement, and measurements per stack (the median wins).
const CALLS: u32 = 200_000;
const ROUNDS: usize = 5;

type Stack = BoxCloneService<Request<Full<Bytes>>, Response<Full<Bytes>>, BoxError>;

/// One call through `stack`, its body read to the end.
async fn call(stack: &Stack) {
    let req = Request::get("http://user-service/api/users")
        .body(Full::new(Bytes::new()))
        .expect("request");
    let response = stack.clone().oneshot(req).await.expect("call");
    response.into_body().collect().await.expect("body");
}

fn leaf() -> Stack {
    BoxCloneService::new(tower::service_fn(|_req: Request<Full<Bytes>>| async {
        Ok::<_, BoxError>(Response::new(Full::new(Bytes::from_static(b"ok"))))
    }))
}

/// Answers boxed back into `Full`, so every stack has one type; the
/// unboxing costs the same in every stack, the leaf's included.
fn boxed<S, B>(service: S) -> Stack
where
    S: tower::Service<Request<Full<Bytes>>, Response = Response<B>> + Clone + Send + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    BoxCloneService::new(
        service
            .map_err(Into::into)
            .map_response(|r: Response<B>| r.map(|_| Full::new(Bytes::from_static(b"ok")))),
    )
}

fn stacks() -> Vec<(&'static str, Stack)> {
    let registry = memory_registry::three_instances();
    let discover = || DiscoverLayer::new(registry.catalog());
    let breaker = || {
        BreakerLayer::new(
            BreakerConfig::builder()
                .call_timeout(Duration::from_secs(5))
                .build()
                .expect("breaker config"),
        )
    };
    let leaf_fn = tower::service_fn(|_req: Request<Full<Bytes>>| async {
        Ok::<_, BoxError>(Response::new(Full::new(Bytes::from_static(b"ok"))))
    });
    vec![
        ("leaf", leaf()),
        ("discover", boxed(discover().layer(leaf_fn))),
        (
            "discover+balance",
            boxed(
                ServiceBuilder::new()
                    .layer(discover())
                    .layer(BalanceLayer::round_robin())
                    .service(leaf_fn),
            ),
        ),
        (
            "discover+balance+breaker",
            boxed(
                ServiceBuilder::new()
                    .layer(discover())
                    .layer(BalanceLayer::round_robin())
                    .layer(breaker())
                    .service(leaf_fn),
            ),
        ),
        (
            "retry+discover+balance+breaker",
            boxed(
                ServiceBuilder::new()
                    .layer(RetryLayer::default())
                    .layer(discover())
                    .layer(BalanceLayer::round_robin())
                    .layer(breaker())
                    .service(leaf_fn),
            ),
        ),
    ]
}

/// Nanoseconds and allocations per call through `stack`.
fn measure(runtime: &tokio::runtime::Runtime, stack: &Stack) -> (f64, f64) {
    runtime.block_on(async {
        for _ in 0..CALLS / 10 {
            call(stack).await;
        }
        let mut times = Vec::new();
        let mut allocations = 0;
        for _ in 0..ROUNDS {
            let region = Region::new(GLOBAL);
            let started = Instant::now();
            for _ in 0..CALLS {
                call(stack).await;
            }
            times.push(started.elapsed().as_nanos() as f64 / f64::from(CALLS));
            allocations = region.change().allocations;
        }
        times.sort_by(f64::total_cmp);
        (times[ROUNDS / 2], allocations as f64 / f64::from(CALLS))
    })
}

/// Bytes of the response future `service` returns for one call.
fn future_size<S>(mut service: S) -> usize
where
    S: tower::Service<Request<Full<Bytes>>>,
{
    let req = Request::get("http://user-service/")
        .body(Full::new(Bytes::new()))
        .expect("request");
    std::mem::size_of_val(&service.call(req))
}

/// Prints the size of each layer's response future, unboxed, over the
/// same leaf: futures are moved as they are built, so their size is
/// part of a call's cost.
fn future_sizes() {
    let registry = StaticRegistry::builder()
        .service("user-service", ["10.0.0.1:80"])
        .build()
        .expect("static list");
    let leaf = tower::service_fn(|_req: Request<Full<Bytes>>| async {
        Ok::<_, BoxError>(Response::new(Full::new(Bytes::from_static(b"ok"))))
    });
    let breaker = BreakerLayer::default().layer(leaf);
    let balance = BalanceLayer::round_robin().layer(breaker.clone());
    let discover = DiscoverLayer::new(registry.catalog()).layer(balance.clone());
    let retry = RetryLayer::default().layer(discover.clone());
    println!(
        "response future sizes (bytes): breaker {}, balance {}, discover {}, retry {}",
        future_size(breaker),
        future_size(balance),
        future_size(discover),
        future_size(retry),
    );
}

fn main() {
    future_sizes();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let named: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let stacks: Vec<_> = stacks()
        .into_iter()
        .filter(|(name, _)| *name == "leaf" || named.is_empty() || named.iter().any(|n| n == name))
        .collect();
    let (leaf_ns, leaf_allocs) = measure(&runtime, &stacks[0].1);
    println!("| stack | ns per call | added vs leaf | allocations per call | added |");
    println!("|---|---|---|---|---|");
    for (name, stack) in &stacks {
        let (ns, allocs) = measure(&runtime, stack);
        println!(
            "| {name} | {ns:.0} | {:+.0} ns | {allocs:.1} | {:+.1} |",
            ns - leaf_ns,
            allocs - leaf_allocs
        );
    }
}
