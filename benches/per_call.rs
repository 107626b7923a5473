//! Where a call's time and allocations go, layer by layer: the stack
//! built up one layer at a time over an in-memory leaf that answers at
//! once (Discover; + Balance; + Breaker; + Retry, the full stack), each
//! against the leaf alone in the same run, with the allocations per call
//! counted by a counting allocator in the same process (in a pass of
//! their own). The stack is called `ready` then `call` on one clone, as
//! the healthy bench's callers and `MeshClient`'s lent stacks call it:
//! no clone per call. `benches/contention.rs` measures the same stacks
//! on two threads at once.
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

#[path = "per_call_stacks.rs"]
mod stacks;

use std::alloc::System;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use mesh::prelude::*;
use stats_alloc::{Region, StatsAlloc, INSTRUMENTED_SYSTEM};
use tower::Layer;

use stacks::{call, nanos_per_call, Stack};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

/// Allocations per call through `stack`, on one thread.
fn allocations_per_call(stack: &Stack) -> f64 {
    const COUNTED: u32 = 10_000;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let mut stack = stack.clone();
    runtime.block_on(async {
        for _ in 0..COUNTED {
            call(&mut stack).await;
        }
        let region = Region::new(GLOBAL);
        for _ in 0..COUNTED {
            call(&mut stack).await;
        }
        region.change().allocations as f64 / f64::from(COUNTED)
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
    let stacks = stacks::named(std::env::args().skip(1));
    let leaf_ns = nanos_per_call(&stacks[0].1, 1);
    let leaf_allocs = allocations_per_call(&stacks[0].1);
    println!("| stack | ns per call | added vs leaf | allocations per call | added |");
    println!("|---|---|---|---|---|");
    for (name, stack) in &stacks {
        let ns = nanos_per_call(stack, 1);
        let allocs = allocations_per_call(stack);
        println!(
            "| {name} | {ns:.0} | {:+.0} ns | {allocs:.1} | {:+.1} |",
            ns - leaf_ns,
            allocs - leaf_allocs
        );
    }
}
