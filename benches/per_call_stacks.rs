//! The stacks `per_call` and `contention` measure: built up one layer at
//! a time over an in-memory leaf that answers at once, each boxed the
//! same way, and the loop that times them.

#[path = "memory_registry.rs"]
mod memory_registry;

use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use mesh::prelude::*;
use tower::util::BoxCloneService;
use tower::{Layer, Service, ServiceBuilder, ServiceExt};

/// Calls per measurement, and measurements per stack (the median wins).
pub const CALLS: u32 = 200_000;
pub const ROUNDS: usize = 7;

/// Every stack, boxed to one type.
pub type Stack = BoxCloneService<Request<Full<Bytes>>, Response<Full<Bytes>>, BoxError>;

/// One call through `stack`, its body read to the end.
pub async fn call(stack: &mut Stack) {
    let req = Request::get("http://user-service/api/users")
        .body(Full::new(Bytes::new()))
        .expect("request");
    let ready = stack.ready().await.expect("ready");
    let response = ready.call(req).await.expect("call");
    response.into_body().collect().await.expect("body");
}

/// The leaf alone: the anchor every stack is measured against.
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

/// The leaf, then each stack the words in `args` name (every stack when
/// none is named; flags, `--...`, are skipped).
pub fn named(args: impl Iterator<Item = String>) -> Vec<(&'static str, Stack)> {
    let named: Vec<String> = args.filter(|a| !a.starts_with("--")).collect();
    all()
        .into_iter()
        .filter(|(name, _)| *name == "leaf" || named.is_empty() || named.iter().any(|n| n == name))
        .collect()
}

/// The leaf and the four stacks over it, by name.
fn all() -> Vec<(&'static str, Stack)> {
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

/// Nanoseconds per call through `stack`, on `threads` threads at once
/// (each its own runtime and clone of the stack, as each core of a busy
/// client has): the time is each thread's, per call, so the counts both
/// threads write (references, in-flight counts, the breaker's window)
/// show as time that one thread alone would not spend.
pub fn nanos_per_call(stack: &Stack, threads: usize) -> f64 {
    let mut times = Vec::new();
    for round in 0..=ROUNDS {
        let start = std::sync::Barrier::new(threads + 1);
        let started = std::thread::scope(|scope| {
            for _ in 0..threads {
                let (mut stack, start) = (stack.clone(), &start);
                scope.spawn(move || {
                    let runtime = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .expect("tokio runtime");
                    runtime.block_on(async {
                        for _ in 0..CALLS / 10 {
                            call(&mut stack).await;
                        }
                        start.wait();
                        for _ in 0..CALLS {
                            call(&mut stack).await;
                        }
                    });
                });
            }
            start.wait();
            // Leaving the scope joins every thread.
            Instant::now()
        });
        // The first round warms the caches and the allocator up.
        if round > 0 {
            times.push(started.elapsed().as_nanos() as f64 / f64::from(CALLS));
        }
    }
    times.sort_by(f64::total_cmp);
    times[ROUNDS / 2]
}
