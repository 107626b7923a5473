//! What the retry layer adds to a call that needs no retry.
//!
//! One run, over the same ready inner service answering 200 at once: the
//! inner service alone (the anchor); tower's `tower::retry::Retry` with an
//! equivalent policy (clone the request, retry 5xx up to 2 times); and
//! mesh-retry's `RetryLayer`, with its default budget (20% + 10/s) and
//! without a budget. Each iteration is one `poll_ready`, one `call` and the
//! polls of its future on a no-op waker.
//!
//! ```text
//! cargo bench -p mesh-retry --bench overhead
//! ```

use std::convert::Infallible;
use std::hint::black_box;

use bytes::Bytes;
use criterion::{criterion_main, Criterion};
use http::{Request, Response, Uri};
use http_body_util::Full;
use mesh_retry::{RetryConfig, RetryLayer};
use tower::{service_fn, Layer, Service};

type Body = Full<Bytes>;

fn inner() -> impl Service<
    Request<Body>,
    Response = Response<()>,
    Error = Infallible,
    Future = std::future::Ready<Result<Response<()>, Infallible>>,
> + Clone {
    service_fn(|_req: Request<Body>| std::future::ready(Ok(Response::new(()))))
}

/// tower's retry with the same decisions as mesh-retry's default, minus
/// budget, backoff and deadline: clone the request, retry 5xx twice.
#[derive(Clone)]
struct TowerPolicy(u32);

impl tower::retry::Policy<Request<Body>, Response<()>, Infallible> for TowerPolicy {
    type Future = std::future::Ready<()>;

    fn retry(
        &mut self,
        _req: &mut Request<Body>,
        result: &mut Result<Response<()>, Infallible>,
    ) -> Option<Self::Future> {
        match result {
            Ok(r) if r.status().is_server_error() && self.0 > 0 => {
                self.0 -= 1;
                Some(std::future::ready(()))
            }
            _ => None,
        }
    }

    fn clone_request(&mut self, req: &Request<Body>) -> Option<Request<Body>> {
        let mut clone = Request::new(req.body().clone());
        *clone.method_mut() = req.method().clone();
        *clone.uri_mut() = req.uri().clone();
        *clone.headers_mut() = req.headers().clone();
        Some(clone)
    }
}

/// One call through `svc`, on a no-op waker (see `mesh_testkit::call_now`).
fn one_call<S: Service<Request<Body>>>(svc: &mut S, uri: &Uri) -> bool {
    let mut req = Request::new(Full::new(Bytes::from_static(b"{}")));
    *req.uri_mut() = uri.clone();
    matches!(mesh_testkit::call_now(svc, req), Some(Ok(_)))
}

pub(crate) fn no_retry_needed(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let _context = runtime.enter();
    let uri: Uri = "http://api/users".parse().expect("uri");
    let mut bare = inner();
    let mut tower_retry = tower::retry::Retry::new(TowerPolicy(2), inner());
    let mut mesh = RetryLayer::new(RetryConfig::default()).layer(inner());
    let no_budget = RetryConfig::builder().no_budget().build().expect("config");
    let mut mesh_no_budget = RetryLayer::new(no_budget).layer(inner());

    let mut group = c.benchmark_group("no_retry_needed");
    group.bench_function("no_layer", |b| {
        b.iter(|| black_box(one_call(&mut bare, &uri)))
    });
    group.bench_function("tower_retry", |b| {
        b.iter(|| black_box(one_call(&mut tower_retry, &uri)))
    });
    group.bench_function("mesh_retry", |b| {
        b.iter(|| black_box(one_call(&mut mesh, &uri)))
    });
    group.bench_function("mesh_retry_no_budget", |b| {
        b.iter(|| black_box(one_call(&mut mesh_no_budget, &uri)))
    });
    group.finish();
}

// The macro defines an undocumented public function.
#[allow(missing_docs)]
mod group {
    criterion::criterion_group!(benches, super::no_retry_needed);
}
criterion_main!(group::benches);
