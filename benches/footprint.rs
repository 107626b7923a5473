//! What the mesh keeps in memory per endpoint and per service: heap bytes
//! still held (allocated less freed, by a counting allocator) after
//!
//! - discovery learns 10,000 endpoints of one service, none ever called
//!   (idle endpoints: their address, id and live state); the anchor is
//!   tower's p2c balancer taking in 10,000 endpoints;
//! - discovery learns 1,000 services of 3 endpoints each;
//! - one call to each of those 1,000 services through a stack assembled
//!   by hand (retry, discovery, least response time, per-endpoint
//!   breakers) over an in-memory leaf: the per-service and per-endpoint
//!   state the layers make on first use;
//! - one call to each of 1,000 services through a `MeshClient` from TOML
//!   (static discovery, each service one endpoint, all on one loopback
//!   server, production profile): the facade's state besides (per-service
//!   state and retry budgets, request metrics series), and the one pooled
//!   connection; the in-process server's allocations are counted too.
//!
//! Each figure is also given per endpoint or per service, with the
//! process's resident memory before and after for scale.
//!
//! ```text
//! cargo bench -p tower-mesh-benches --bench footprint
//! ```

#[path = "bench_runtime.rs"]
mod bench_runtime;

use std::alloc::System;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use mesh::core::{Endpoint, EndpointSet};
use mesh::discover::Catalog;
use mesh::prelude::*;
use mesh_testkit::{Backend, Behavior};
use stats_alloc::{Region, StatsAlloc, INSTRUMENTED_SYSTEM};
use tower::{ServiceBuilder, ServiceExt};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

const IDLE_ENDPOINTS: u16 = 10_000;
const SERVICES: usize = 1_000;
const PER_SERVICE: u16 = 3;

/// Heap bytes `region` saw kept: allocated, less freed, plus growth.
fn kept(region: &Region<'_, System>) -> i64 {
    let change = region.change();
    let allocated = i64::try_from(change.bytes_allocated).unwrap_or(i64::MAX);
    let freed = i64::try_from(change.bytes_deallocated).unwrap_or(i64::MAX);
    let grown = i64::try_from(change.bytes_reallocated).unwrap_or(0);
    allocated - freed + grown
}

/// The process's resident memory, in MiB (Linux), for scale.
fn resident_mib() -> f64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: f64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0.0);
    pages * 4096.0 / (1024.0 * 1024.0)
}

fn name(i: usize) -> ServiceName {
    ServiceName::new(&format!("service-{i}")).expect("name")
}

fn endpoints(first_port: u32, count: u16) -> Vec<Endpoint> {
    (0..u32::from(count))
        .map(|i| {
            let n = first_port + i;
            let ip = [10, (n >> 16) as u8, (n >> 8) as u8, n as u8];
            Endpoint::builder((ip, 8080).into()).build()
        })
        .collect()
}

fn row(what: &str, bytes: i64, per: &str, count: usize, rss: (f64, f64)) {
    println!(
        "| {what} | {:.1} KiB | {:.0} B per {per} | {:.1} -> {:.1} MiB |",
        bytes as f64 / 1024.0,
        bytes as f64 / count as f64,
        rss.0,
        rss.1
    );
}

/// Discovery alone: `catalog` filled with `sets`.
fn fill(catalog: &Catalog, sets: Vec<EndpointSet>) {
    for set in sets {
        catalog.update(set);
    }
}

fn idle_endpoints() -> Catalog {
    // The event bus's buffer is made up front, whatever the catalog holds.
    let catalog = Catalog::new(EventBus::default());
    let before = resident_mib();
    let region = Region::new(GLOBAL);
    let sets = vec![EndpointSet::new(name(0), endpoints(0, IDLE_ENDPOINTS))];
    fill(&catalog, sets);
    let bytes = kept(&region);
    row(
        "discovery, 1 service of 10,000 endpoints never called",
        bytes,
        "endpoint",
        usize::from(IDLE_ENDPOINTS),
        (before, resident_mib()),
    );
    catalog
}

/// The anchor: tower's power-of-two-choices balancer over 10,000
/// endpoints (each a service holding its address, with a constant load),
/// once its first `poll_ready` has taken them all in.
async fn tower_p2c_idle_endpoints() {
    use std::net::SocketAddr;
    use tower::balance::p2c::Balance;
    use tower::discover::ServiceList;
    use tower::load::Constant;
    use tower::Service;
    let before = resident_mib();
    let region = Region::new(GLOBAL);
    let services: Vec<_> = endpoints(0, IDLE_ENDPOINTS)
        .into_iter()
        .map(|e| {
            let address: SocketAddr = e.address();
            let svc = tower::service_fn(move |_req: Request<()>| async move {
                Ok::<_, BoxError>(address.port())
            });
            Constant::new(svc, 1)
        })
        .collect();
    let mut balance = Balance::new(ServiceList::new(services));
    std::future::poll_fn(|cx| balance.poll_ready(cx))
        .await
        .expect("ready");
    row(
        "anchor: tower p2c over 10,000 endpoints (service, address, load)",
        kept(&region),
        "endpoint",
        usize::from(IDLE_ENDPOINTS),
        (before, resident_mib()),
    );
}

fn services() -> Vec<EndpointSet> {
    (0..SERVICES)
        .map(|i| {
            let first = u32::try_from(i).unwrap_or(0) * u32::from(PER_SERVICE);
            EndpointSet::new(name(i), endpoints(first, PER_SERVICE))
        })
        .collect()
}

async fn one_call_each_by_hand(catalog: &Catalog) {
    let leaf = tower::service_fn(|_req: Request<Full<Bytes>>| async {
        Ok::<_, BoxError>(Response::new(Full::new(Bytes::from_static(b"ok"))))
    });
    let breaker = BreakerConfig::builder()
        .scope(BreakerScope::Endpoint)
        .call_timeout(Duration::from_secs(5))
        .build()
        .expect("breaker config");
    let stack = ServiceBuilder::new()
        .layer(RetryLayer::default())
        .layer(DiscoverLayer::new(catalog.clone()))
        .layer(BalanceLayer::new(Strategy::LeastResponseTime))
        .layer(BreakerLayer::new(breaker))
        .service(leaf);
    let before = resident_mib();
    let region = Region::new(GLOBAL);
    for i in 0..SERVICES {
        let req = Request::get(format!("http://service-{i}/"))
            .body(Full::new(Bytes::new()))
            .expect("request");
        let response = stack.clone().oneshot(req).await.expect("call");
        response.into_body().collect().await.expect("body");
    }
    row(
        "stack by hand, after one call to each of 1,000 services",
        kept(&region),
        "service",
        SERVICES,
        (before, resident_mib()),
    );
    drop(stack);
}

async fn one_call_each_through_the_facade() {
    let backend = Backend::start(Behavior::Ok).await.expect("backend");
    let listed: Vec<String> = (0..SERVICES)
        .map(|i| format!("\"service-{i}\" = [\"{}\"]", backend.addr()))
        .collect();
    let toml = format!(
        "[service]\nname = \"caller\"\n[discovery]\nkind = \"static\"\nservices = {{ {} }}\n",
        listed.join(", ")
    );
    let config = MeshConfig::from_toml_str(&toml).expect("config");
    let client = MeshClient::from_config(config).await.expect("client");
    let before = resident_mib();
    let region = Region::new(GLOBAL);
    for i in 0..SERVICES {
        let response = client
            .get(&format!("service-{i}"), "/", CallOptions::default())
            .await
            .expect("call");
        response.into_body().collect().await.expect("body");
    }
    row(
        "`MeshClient`, after one call to each of 1,000 services (one server)",
        kept(&region),
        "service",
        SERVICES,
        (before, resident_mib()),
    );
    client.shutdown(Duration::from_secs(1)).await;
}

fn main() {
    let Some(runtime) = bench_runtime::runtime() else {
        return;
    };
    println!("| what | heap kept | per unit | resident |");
    println!("|---|---|---|---|");
    let idle = idle_endpoints();
    drop(idle);
    runtime.block_on(tower_p2c_idle_endpoints());
    let catalog = Catalog::new(EventBus::default());
    let before = resident_mib();
    let region = Region::new(GLOBAL);
    fill(&catalog, services());
    row(
        "discovery, 1,000 services of 3 endpoints",
        kept(&region),
        "service",
        SERVICES,
        (before, resident_mib()),
    );
    runtime.block_on(one_call_each_by_hand(&catalog));
    runtime.block_on(one_call_each_through_the_facade());
}
