//! End to end, one slow instance among four: tower-mesh's least response
//! time and power of two choices against `tower::balance::p2c` with
//! `PeakEwma` behind a `Buffer`, in the same run, over the same loopback
//! servers. Closed loop: 32 callers, 4,000 requests per stack (bounded).
//!
//! ```text
//! cargo bench -p tower-mesh-benches --bench balance_e2e
//! ```

#[path = "bench_runtime.rs"]
mod bench_runtime;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::uri::Authority;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use mesh::balance::Strategy;
use mesh::prelude::*;
use mesh_testkit::anchors::{HttpClient, ToAddr};
use mesh_testkit::{Backend, Behavior};
use tower::{Service, ServiceBuilder, ServiceExt};

const CALLERS: u64 = 32;
const REQUESTS: u64 = 4_000;

struct Outcome {
    name: &'static str,
    elapsed: Duration,
    ok: u64,
    latencies: Vec<Duration>,
    slow_share: f64,
}

async fn drive<S, B>(name: &'static str, svc: S, slow: &Backend, all: &[Backend]) -> Outcome
where
    S: Service<Request<Full<Bytes>>, Response = Response<B>> + Clone + Send + 'static,
    S::Error: Into<BoxError> + Send,
    S::Future: Send,
    B: http_body::Body + Send + 'static,
    B::Data: Send,
{
    for b in all {
        b.reset_stats();
    }
    let next = Arc::new(AtomicU64::new(0));
    let ok = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..CALLERS {
        let (svc, next, ok) = (svc.clone(), Arc::clone(&next), Arc::clone(&ok));
        tasks.spawn(async move {
            let mut latencies = Vec::new();
            while next.fetch_add(1, Ordering::Relaxed) < REQUESTS {
                let req = Request::get("http://user-service/")
                    .body(Full::new(Bytes::new()))
                    .expect("request");
                let t = Instant::now();
                let answer =
                    tokio::time::timeout(Duration::from_secs(5), svc.clone().oneshot(req)).await;
                if let Ok(Ok(r)) = answer {
                    if r.status().is_success() && r.into_body().collect().await.is_ok() {
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                }
                latencies.push(t.elapsed());
            }
            latencies
        });
    }
    let mut latencies = Vec::new();
    while let Some(done) = tasks.join_next().await {
        latencies.extend(done.unwrap_or_default());
    }
    let elapsed = started.elapsed();
    latencies.sort_unstable();
    let total: u64 = all.iter().map(|b| b.stats().requests).sum();
    Outcome {
        name,
        elapsed,
        ok: ok.load(Ordering::Relaxed),
        latencies,
        slow_share: slow.stats().requests as f64 / total.max(1) as f64,
    }
}

fn pct(l: &[Duration], p: f64) -> Duration {
    l[((l.len() as f64 * p).ceil() as usize).clamp(1, l.len()) - 1]
}

fn main() {
    let Some(runtime) = bench_runtime::runtime() else {
        return;
    };
    runtime.block_on(async {
        let mut backends = Vec::new();
        for b in [
            Behavior::Ok,
            Behavior::Ok,
            Behavior::Ok,
            Behavior::Slow(Duration::from_millis(20)),
        ] {
            backends.push(Backend::start(b).await.expect("backend"));
        }
        let client: HttpClient = Client::builder(TokioExecutor::new()).build_http();

        let tower_p2c = {
            let instances: Vec<ToAddr> = backends
                .iter()
                .map(|b| ToAddr {
                    client: client.clone(),
                    authority: Authority::try_from(b.addr().to_string()).expect("authority"),
                })
                .collect();
            let discover = tower::load::PeakEwmaDiscover::new(
                tower::discover::ServiceList::new(instances),
                Duration::from_millis(10),
                Duration::from_secs(10),
                tower::load::CompleteOnResponse::default(),
            );
            ServiceBuilder::new()
                .buffer(1024)
                .service(tower::balance::p2c::Balance::new(discover))
        };
        let registry = StaticRegistry::builder()
            .service(
                "user-service",
                backends.iter().map(|b| b.addr().to_string()),
            )
            .build()
            .expect("registry");
        let mesh = |strategy: Strategy| {
            ServiceBuilder::new()
                .layer(DiscoverLayer::new(registry.catalog()))
                .layer(BalanceLayer::new(strategy))
                .service(client.clone())
        };
        let slow = &backends[3];
        let results = vec![
            drive("tower p2c + PeakEwma + Buffer", tower_p2c, slow, &backends).await,
            drive(
                "tower-mesh least response time",
                mesh(Strategy::LeastResponseTime),
                slow,
                &backends,
            )
            .await,
            drive(
                "tower-mesh power of two choices",
                mesh(Strategy::PowerOfTwoChoices),
                slow,
                &backends,
            )
            .await,
        ];
        let anchor = &results[0];
        let anchor_tput = anchor.ok as f64 / anchor.elapsed.as_secs_f64();
        let anchor_p99 = pct(&anchor.latencies, 0.99);
        println!(
            "{:<34} {:>9} {:>9} {:>9} {:>10} {:>9} {:>11}",
            "stack", "req/s", "vs tower", "p50", "p99", "p99 vs", "slow share"
        );
        for r in &results {
            let tput = r.ok as f64 / r.elapsed.as_secs_f64();
            let p99 = pct(&r.latencies, 0.99);
            println!(
                "{:<34} {:>9.0} {:>8.2}x {:>9} {:>10} {:>8.2}x {:>10.1}%",
                r.name,
                tput,
                tput / anchor_tput,
                format!("{:.2?}", pct(&r.latencies, 0.50)),
                format!("{:.2?}", p99),
                p99.as_secs_f64() / anchor_p99.as_secs_f64(),
                100.0 * r.slow_share
            );
        }
    });
}
