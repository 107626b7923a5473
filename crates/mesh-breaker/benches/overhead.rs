//! What a closed breaker adds to a call.
//!
//! One run, three services over the same ready no-op inner service (it
//! answers 200 at once): the inner service alone (the anchor), with
//! mesh-breaker's `BreakerLayer`, and with tower-resilience's
//! `CircuitBreakerLayer`, both configured alike (failure rate 50% over the
//! last 100 calls, at least 20 calls, 30 s open, 3 half-open probes).
//! Each iteration is one `poll_ready`, one `call` and the polls of its
//! future, on a no-op waker: no executor in the measurement.
//!
//! ```text
//! cargo bench -p mesh-breaker --bench overhead
//! ```

use std::convert::Infallible;
use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_main, Criterion};
use http::{Request, Response, Uri};
use mesh_breaker::{BreakerConfig, BreakerLayer, WindowConfig};
use tower::{service_fn, Layer, Service};

fn inner() -> impl Service<
    Request<()>,
    Response = Response<()>,
    Error = Infallible,
    Future = std::future::Ready<Result<Response<()>, Infallible>>,
> + Clone
       + Send
       + 'static {
    service_fn(|_req: Request<()>| std::future::ready(Ok(Response::new(()))))
}

/// One call through `svc`, on a no-op waker (see `mesh_testkit::call_now`).
fn one_call<S: Service<Request<()>>>(svc: &mut S, uri: &Uri) -> bool {
    let mut req = Request::new(());
    *req.uri_mut() = uri.clone();
    matches!(mesh_testkit::call_now(svc, req), Some(Ok(_)))
}

pub(crate) fn closed_breaker(c: &mut Criterion) {
    // tower-resilience reads tokio's clock; give it a runtime context.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let _context = runtime.enter();
    let uri: Uri = "http://api/users".parse().expect("uri");

    let mut bare = inner();
    let mut mesh = BreakerLayer::new(
        BreakerConfig::builder()
            .no_consecutive_failures()
            .failure_rate_threshold(50.0)
            .window(WindowConfig::Count { size: 100 })
            .minimum_calls(20)
            .open_duration(Duration::from_secs(30))
            .half_open_probes(3)
            .build()
            .expect("config"),
    )
    .layer(inner());
    let mut resilience = tower_resilience::circuitbreaker::CircuitBreakerLayer::builder()
        .failure_rate_threshold(0.5)
        .sliding_window_size(100)
        .minimum_number_of_calls(20)
        .wait_duration_in_open(Duration::from_secs(30))
        .permitted_calls_in_half_open(3)
        .build()
        .expect("tower-resilience config")
        .layer(inner());

    let mut group = c.benchmark_group("closed_breaker_call");
    group.bench_function("no_breaker", |b| {
        b.iter(|| black_box(one_call(&mut bare, &uri)))
    });
    group.bench_function("mesh_breaker", |b| {
        b.iter(|| black_box(one_call(&mut mesh, &uri)))
    });
    group.bench_function("tower_resilience", |b| {
        b.iter(|| black_box(one_call(&mut resilience, &uri)))
    });
    group.finish();
}

// The macro defines an undocumented public function.
#[allow(missing_docs)]
mod group {
    criterion::criterion_group!(benches, super::closed_breaker);
}
criterion_main!(group::benches);
