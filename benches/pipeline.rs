//! What the mesh pipeline costs on healthy traffic.
//!
//! One process, one run: the same GET to three healthy loopback instances,
//! sent (a) by the bare hyper client, round robin by hand — the anchor —
//! and (b) through the full tower-mesh stack (Retry, Discover, Balance,
//! Breaker timing each attempt) over the same client type. The ratio of the two
//! is what BENCHMARKS.md reports.
//!
//! A second group isolates the layers' own cost: the same stack over an
//! in-memory leaf service that answers at once, against calling that leaf
//! directly, and that stack again with `mesh::prometheus`'s
//! `RequestMetricsLayer` on top (what counting every call into
//! `mesh_requests_total` and its latency histogram adds).
//!
//! ```text
//! cargo bench -p tower-mesh-benches --bench pipeline
//! cargo bench -p tower-mesh-benches --bench pipeline -- in_memory_overhead/tower_mesh
//! ```

#[path = "memory_registry.rs"]
mod memory_registry;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use criterion::{criterion_main, Criterion};
use http::{Request, Uri};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use mesh::prelude::*;
use mesh_testkit::{Backend, Behavior};
use tower::{ServiceBuilder, ServiceExt};

pub(crate) fn healthy_get(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let backends: Vec<Backend> = runtime.block_on(async {
        let mut backends = Vec::new();
        for _ in 0..3 {
            backends.push(Backend::start(Behavior::Ok).await.expect("backend"));
        }
        backends
    });
    let uris: Arc<Vec<Uri>> = Arc::new(
        backends
            .iter()
            .map(|b| {
                format!("http://{}/api/users", b.addr())
                    .parse()
                    .expect("uri")
            })
            .collect(),
    );
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();

    let registry = StaticRegistry::builder()
        .service(
            "user-service",
            backends.iter().map(|b| b.addr().to_string()),
        )
        .build()
        .expect("static list");
    let stack = ServiceBuilder::new()
        .layer(RetryLayer::default())
        .layer(DiscoverLayer::new(registry.catalog()))
        .layer(BalanceLayer::round_robin())
        .layer(BreakerLayer::new(timed_breaker()))
        .service(client.clone());

    let mut group = c.benchmark_group("healthy_get");
    group.measurement_time(Duration::from_secs(5));
    let next = Arc::new(AtomicUsize::new(0));
    group.bench_function("bare_hyper", |b| {
        b.to_async(&runtime).iter(|| {
            let client = client.clone();
            let uri = uris[next.fetch_add(1, Ordering::Relaxed) % uris.len()].clone();
            async move {
                let response = client.get(uri).await.expect("bare request");
                assert!(response.status().is_success());
                response.into_body().collect().await.expect("body");
            }
        })
    });
    group.bench_function("tower_mesh", |b| {
        b.to_async(&runtime).iter(|| {
            let stack = stack.clone();
            async move {
                let req = Request::get("http://user-service/api/users")
                    .body(Full::new(Bytes::new()))
                    .expect("request");
                let response = stack.oneshot(req).await.expect("mesh request");
                assert!(response.status().is_success());
                response.into_body().collect().await.expect("body");
            }
        })
    });
    group.finish();
    drop(backends);
}

/// The layers' own cost, with no network: an in-memory leaf that answers
/// 200 at once, called directly (anchor), through the full stack, and
/// through the full stack under a `RequestMetricsLayer`.
pub(crate) fn in_memory_overhead(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let leaf = tower::service_fn(|_req: Request<Full<Bytes>>| async {
        Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(Bytes::from_static(b"ok"))))
    });
    let registry = memory_registry::three_instances();
    let stack = ServiceBuilder::new()
        .layer(RetryLayer::default())
        .layer(DiscoverLayer::new(registry.catalog()))
        .layer(BalanceLayer::round_robin())
        .layer(BreakerLayer::new(timed_breaker()))
        .service(leaf);
    // The same stack, each call counted as a MeshClient counts its own.
    let counted = ServiceBuilder::new()
        .layer(mesh::prometheus::RequestMetricsLayer::new().catalog(registry.catalog()))
        .service(stack.clone());

    let mut group = c.benchmark_group("in_memory_overhead");
    group.bench_function("leaf_only", |b| {
        b.to_async(&runtime).iter(|| async {
            let req = Request::get("http://user-service/api/users")
                .body(Full::new(Bytes::new()))
                .expect("request");
            let response = leaf.oneshot(req).await.expect("leaf");
            response.into_body().collect().await.expect("body");
        })
    });
    group.bench_function("tower_mesh", |b| {
        b.to_async(&runtime).iter(|| {
            let stack = stack.clone();
            async move {
                let req = Request::get("http://user-service/api/users")
                    .body(Full::new(Bytes::new()))
                    .expect("request");
                let response = stack.oneshot(req).await.expect("mesh");
                response.into_body().collect().await.expect("body");
            }
        })
    });
    group.bench_function("tower_mesh_request_metrics", |b| {
        b.to_async(&runtime).iter(|| {
            let counted = counted.clone();
            async move {
                let req = Request::get("http://user-service/api/users")
                    .body(Full::new(Bytes::new()))
                    .expect("request");
                let response = counted.oneshot(req).await.expect("mesh");
                response.into_body().collect().await.expect("body");
            }
        })
    });
    group.finish();
}

// The macro defines an undocumented public function.
#[allow(missing_docs)]
mod group {
    criterion::criterion_group!(benches, super::healthy_get, super::in_memory_overhead);
}
criterion_main!(group::benches);

/// The breaker as the README's stack has it: the per-attempt timeout is
/// its call timeout.
fn timed_breaker() -> BreakerConfig {
    BreakerConfig::builder()
        .call_timeout(Duration::from_secs(2))
        .build()
        .expect("breaker settings")
}
