//! What resolving a service costs a request once its set is cached.
//!
//! One run, over the same ready no-op inner service (it answers 200 at
//! once): the inner service alone (the anchor), and behind `DiscoverLayer`
//! with the service's three endpoints in the catalog; plus a bare
//! `Catalog::get`. Each iteration is one `poll_ready`, one `call` and the
//! polls of its future, on a no-op waker: no executor in the measurement.
//!
//! Two request shapes: a bare request, whose `http::Extensions` map does
//! not exist yet (the layer's one insert allocates it), and a request that
//! already carries an extension (an affinity key, say). A counting
//! allocator (`stats_alloc`) reports the allocations each case makes per
//! call.
//!
//! ```text
//! cargo bench -p mesh-discover --bench resolve
//! ```

use std::alloc::System;
use std::convert::Infallible;
use std::hint::black_box;
use std::net::SocketAddr;

use criterion::{criterion_main, Criterion};
use http::{Request, Response, Uri};
use mesh_core::ext::AffinityKey;
use mesh_core::{Endpoint, EndpointSet, ServiceName};
use mesh_discover::{Catalog, DiscoverLayer};
use stats_alloc::{Region, StatsAlloc, INSTRUMENTED_SYSTEM};
use tower::{service_fn, Layer, Service};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

fn request(uri: &Uri, carried: Option<&AffinityKey>) -> Request<()> {
    let mut req = Request::new(());
    *req.uri_mut() = uri.clone();
    if let Some(key) = carried {
        req.extensions_mut().insert(key.clone());
    }
    req
}

fn one_call<S: Service<Request<()>>>(svc: &mut S, req: Request<()>) -> bool {
    matches!(mesh_testkit::call_now(svc, req), Some(Ok(_)))
}

/// Allocations per call made by the call itself (the request is built
/// before counting starts).
fn allocations_per_call<S: Service<Request<()>>>(
    svc: &mut S,
    uri: &Uri,
    carried: Option<&AffinityKey>,
) -> f64 {
    const CALLS: u64 = 10_000;
    let mut total = 0;
    for _ in 0..CALLS {
        let req = request(uri, carried);
        let region = Region::new(GLOBAL);
        black_box(one_call(svc, req));
        total += region.change().allocations;
    }
    total as f64 / CALLS as f64
}

pub(crate) fn cached_resolution(c: &mut Criterion) {
    let uri: Uri = "http://users/api".parse().expect("uri");
    let key = AffinityKey::new("client-1");
    let catalog = Catalog::default();
    let endpoints = (0..3u16)
        .map(|i| Endpoint::builder(SocketAddr::from(([127, 0, 0, 1], 9000 + i))).build())
        .collect();
    catalog.update(EndpointSet::new(
        ServiceName::new("users").expect("name"),
        endpoints,
    ));
    let inner = || {
        service_fn(|_req: Request<()>| std::future::ready(Ok::<_, Infallible>(Response::new(()))))
    };
    let mut bare = inner();
    let mut discover = DiscoverLayer::new(catalog.clone()).layer(inner());
    assert!(
        one_call(&mut discover, request(&uri, None)),
        "the layer must resolve users"
    );

    for (name, carried) in [
        ("bare request", None),
        ("carrying an extension", Some(&key)),
    ] {
        eprintln!(
            "allocations per call, {name}: no layer {:.2}, DiscoverLayer {:.2}",
            allocations_per_call(&mut bare, &uri, carried),
            allocations_per_call(&mut discover, &uri, carried),
        );
    }

    let mut group = c.benchmark_group("cached_resolution");
    for (suffix, carried) in [("", None), ("_with_extensions", Some(&key))] {
        group.bench_function(format!("no_layer{suffix}"), |b| {
            b.iter_batched(
                || request(&uri, carried),
                |req| black_box(one_call(&mut bare, req)),
                criterion::BatchSize::SmallInput,
            )
        });
        group.bench_function(format!("discover_layer{suffix}"), |b| {
            b.iter_batched(
                || request(&uri, carried),
                |req| black_box(one_call(&mut discover, req)),
                criterion::BatchSize::SmallInput,
            )
        });
    }
    group.bench_function("catalog_get", |b| {
        b.iter(|| black_box(catalog.get(black_box("users"))))
    });
    group.finish();
}

// The macro defines an undocumented public function.
#[allow(missing_docs)]
mod group {
    criterion::criterion_group!(benches, super::cached_resolution);
}
criterion_main!(group::benches);
