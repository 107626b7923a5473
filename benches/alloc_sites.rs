//! Where a call's allocations are made: 1,000 calls through the whole
//! stack (Retry with a deadline, Discover, Balance, a Breaker with a call
//! timeout) over an in-memory leaf, for a heap profiler to attribute each
//! allocation to its call site. A site made 1,000 times is per call.
//! `per_call` counts them; this names them.
//!
//! ```text
//! cargo bench -p tower-mesh-benches --bench alloc_sites --no-run
//! heaptrack target/release/deps/alloc_sites-<hash>
//! heaptrack_print -f heaptrack.alloc_sites.*.zst -m 0 -n 100 -s 100
//! ```

#[path = "memory_registry.rs"]
mod memory_registry;

use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use mesh::prelude::*;
use tower::{ServiceBuilder, ServiceExt};

const CALLS: usize = 1_000;

fn main() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let registry = memory_registry::three_instances();
    let leaf = tower::service_fn(|_req: Request<Full<Bytes>>| async {
        Ok::<_, BoxError>(Response::new(Full::new(Bytes::from_static(b"ok"))))
    });
    let retry = RetryConfig::builder()
        .deadline(Duration::from_secs(10))
        .build()
        .expect("retry config");
    let breaker = BreakerConfig::builder()
        .call_timeout(Duration::from_secs(5))
        .build()
        .expect("breaker config");
    let stack = ServiceBuilder::new()
        .layer(RetryLayer::new(retry))
        .layer(DiscoverLayer::new(registry.catalog()))
        .layer(BalanceLayer::round_robin())
        .layer(BreakerLayer::new(breaker))
        .service(leaf);
    runtime.block_on(async {
        for _ in 0..CALLS {
            let req = Request::get("http://user-service/api/users")
                .body(Full::new(Bytes::new()))
                .expect("request");
            let response = stack.clone().oneshot(req).await.expect("call");
            response.into_body().collect().await.expect("body");
        }
    });
}
