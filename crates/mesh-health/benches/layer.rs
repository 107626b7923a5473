//! What the health layer costs: a request that is not a probe (the goal:
//! under 50 ns, no allocation), against the same no-op service without the
//! layer in the same run; and serving a probe (three checks, JSON).
//!
//! ```text
//! cargo bench -p mesh-health --bench layer
//! ```

use std::alloc::System;
use std::convert::Infallible;
use std::hint::black_box;

use criterion::{criterion_main, BatchSize, Criterion};
use http::{Request, Response, Uri};
use mesh_health::{CheckError, HealthCheck, HealthCheckManager, HealthLayer, Probe};
use stats_alloc::{Region, StatsAlloc, INSTRUMENTED_SYSTEM};
use tower::{service_fn, Layer, Service};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

fn request(uri: &Uri) -> Request<()> {
    let mut req = Request::new(());
    *req.uri_mut() = uri.clone();
    req
}

fn one_call<S: Service<Request<()>>>(svc: &mut S, req: Request<()>) -> bool {
    matches!(mesh_testkit::call_now(svc, req), Some(Ok(_)))
}

fn allocations_per_call<S: Service<Request<()>>>(svc: &mut S, uri: &Uri) -> f64 {
    const CALLS: u64 = 10_000;
    let mut total = 0;
    for _ in 0..CALLS {
        let req = request(uri);
        let region = Region::new(GLOBAL);
        black_box(one_call(svc, req));
        total += region.change().allocations;
    }
    total as f64 / CALLS as f64
}

pub(crate) fn layer(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let mut builder = HealthCheckManager::builder();
    for name in ["db", "cache", "disk"] {
        builder = builder.check(
            HealthCheck::builder(name, || async { Ok::<(), CheckError>(()) })
                .probes([Probe::Liveness, Probe::Readiness])
                .build()
                .expect("check"),
        );
    }
    let manager = builder.build().expect("manager");
    rt.block_on(manager.run_once());

    let inner = || {
        service_fn(|_req: Request<()>| std::future::ready(Ok::<_, Infallible>(Response::new(()))))
    };
    let mut bare = inner();
    let mut health = HealthLayer::new(manager).layer(inner());
    let app: Uri = "http://svc/api/users".parse().expect("uri");
    let probe: Uri = "http://svc/health/ready".parse().expect("uri");
    assert!(one_call(&mut health, request(&probe)));
    eprintln!(
        "allocations per call, not a probe: no layer {:.2}, HealthLayer {:.2}; serving a probe {:.2}",
        allocations_per_call(&mut bare, &app),
        allocations_per_call(&mut health, &app),
        allocations_per_call(&mut health, &probe),
    );

    let mut group = c.benchmark_group("health_layer");
    group.bench_function("no_layer", |b| {
        b.iter_batched(
            || request(&app),
            |req| black_box(one_call(&mut bare, req)),
            BatchSize::SmallInput,
        )
    });
    group.bench_function("not_a_probe", |b| {
        b.iter_batched(
            || request(&app),
            |req| black_box(one_call(&mut health, req)),
            BatchSize::SmallInput,
        )
    });
    group.bench_function("serve_readiness_probe", |b| {
        b.iter_batched(
            || request(&probe),
            |req| black_box(one_call(&mut health, req)),
            BatchSize::SmallInput,
        )
    });
    group.finish();
}

// The macro defines an undocumented public function.
#[allow(missing_docs)]
mod group {
    criterion::criterion_group!(benches, super::layer);
}
criterion_main!(group::benches);
