//! What resolving a service costs a request once its set is cached.
//!
//! One run, over the same ready no-op inner service (it answers 200 at
//! once): the inner service alone (the anchor), and behind `DiscoverLayer`
//! with the service's three endpoints in the catalog; plus a bare
//! `Catalog::get`. Each iteration is one `poll_ready`, one `call` and the
//! polls of its future, on a no-op waker: no executor in the measurement.
//!
//! ```text
//! cargo bench -p mesh-discover --bench resolve
//! ```

use std::convert::Infallible;
use std::hint::black_box;
use std::net::SocketAddr;

use criterion::{criterion_main, Criterion};
use http::{Request, Response, Uri};
use mesh_core::{Endpoint, EndpointSet, ServiceName};
use mesh_discover::{Catalog, DiscoverLayer};
use tower::{service_fn, Layer, Service};

fn one_call<S: Service<Request<()>>>(svc: &mut S, uri: &Uri) -> bool {
    let mut req = Request::new(());
    *req.uri_mut() = uri.clone();
    matches!(mesh_testkit::call_now(svc, req), Some(Ok(_)))
}

pub(crate) fn cached_resolution(c: &mut Criterion) {
    let uri: Uri = "http://users/api".parse().expect("uri");
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
        one_call(&mut discover, &uri),
        "the layer must resolve users"
    );

    let mut group = c.benchmark_group("cached_resolution");
    group.bench_function("no_layer", |b| {
        b.iter(|| black_box(one_call(&mut bare, &uri)))
    });
    group.bench_function("discover_layer", |b| {
        b.iter(|| black_box(one_call(&mut discover, &uri)))
    });
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
