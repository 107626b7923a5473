//! Memory over a long run: 10 million requests (or `MESH_SOAK_REQUESTS`)
//! through the full tower-mesh stack against five loopback servers, one
//! answering 503 and one flapping slow, closed loop with 64 callers,
//! bounded to 5 minutes. Prints resident memory every million requests:
//! flat means no per-request leak.
//!
//! ```text
//! cargo bench -p tower-mesh-benches --bench soak
//! ```

#[path = "bench_runtime.rs"]
mod bench_runtime;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use mesh::balance::Strategy;
use mesh::prelude::*;
use mesh_testkit::{Backend, Behavior};
use tower::{ServiceBuilder, ServiceExt};

const CALLERS: u64 = 64;
const TIME_LIMIT: Duration = Duration::from_secs(300);

fn rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map_or(0.0, |pages| (pages * 4096) as f64 / (1024.0 * 1024.0))
}

fn main() {
    let Some(runtime) = bench_runtime::runtime() else {
        return;
    };
    let total: u64 = std::env::var("MESH_SOAK_REQUESTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000_000);
    runtime.block_on(async move {
        let mut backends = Vec::new();
        for _ in 0..5 {
            backends.push(Backend::start(Behavior::Ok).await.expect("backend"));
        }
        backends[3].set_behavior(Behavior::Status(503));
        let registry = StaticRegistry::builder()
            .service("users", backends.iter().map(|b| b.addr().to_string()))
            .build()
            .expect("registry");
        let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
        let stack = ServiceBuilder::new()
            .layer(RetryLayer::new(RetryConfig::default()))
            .layer(DiscoverLayer::new(registry.catalog()))
            .layer(BalanceLayer::new(Strategy::LeastResponseTime))
            .layer(BreakerLayer::new(
                BreakerConfig::builder()
                    .scope(BreakerScope::Endpoint)
                    .open_duration(Duration::from_millis(200))
                    .build()
                    .expect("breaker"),
            ))
            .timeout(Duration::from_secs(1))
            .service(client);
        let started = Instant::now();
        let (next, ok) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let mut callers = tokio::task::JoinSet::new();
        for _ in 0..CALLERS {
            let (stack, next, ok) = (stack.clone(), Arc::clone(&next), Arc::clone(&ok));
            callers.spawn(async move {
                while next.fetch_add(1, Ordering::Relaxed) < total && started.elapsed() < TIME_LIMIT {
                    let req = Request::get("http://users/").body(Full::new(Bytes::new())).expect("request");
                    if let Ok(r) = stack.clone().oneshot(req).await {
                        if r.into_body().collect().await.is_ok() {
                            ok.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            });
        }
        println!("{:>12} {:>10} {:>10} {:>9}", "requests", "elapsed", "rss MiB", "success");
        let mut reported = 0u64;
        let mut flap = 0u32;
        while !callers.is_empty() {
            tokio::select! {
                _ = callers.join_next() => {}
                _ = tokio::time::sleep(Duration::from_millis(250)) => {
                    flap += 1;
                    backends[4].set_behavior(if flap % 8 < 4 { Behavior::Ok } else { Behavior::Slow(Duration::from_millis(5)) });
                    let done = next.load(Ordering::Relaxed).min(total);
                    if done >= reported + 1_000_000 || done == total {
                        reported = done - done % 1_000_000;
                        println!(
                            "{:>12} {:>9.1}s {:>10.1} {:>8.3}%",
                            done,
                            started.elapsed().as_secs_f64(),
                            rss_mib(),
                            100.0 * ok.load(Ordering::Relaxed) as f64 / done.max(1) as f64
                        );
                    }
                }
            }
        }
        let done = next.load(Ordering::Relaxed).min(total);
        println!(
            "done: {done} requests in {:.1}s, rss {:.1} MiB, success {:.3}%",
            started.elapsed().as_secs_f64(),
            rss_mib(),
            100.0 * ok.load(Ordering::Relaxed) as f64 / done.max(1) as f64
        );
    });
}
