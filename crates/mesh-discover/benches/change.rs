//! How long a registry change takes to reach the catalog (what the balancer
//! reads on its next request), per backend, against a one-shot read of the
//! same backend in the same run.
//!
//! - Consul: a blocking query against the in-repo Consul double
//!   (`mesh_testkit::consul`; no Consul binary exists here). Anchor: one
//!   plain `resolve` (a non-blocking GET) of the same double.
//! - File: a rename-replaced services file checked every 10 ms. Anchor: one
//!   `resolve` (read and parse) of the same file.
//! - Kubernetes DNS: a hostsdir edit served by a real dnsmasq with a 1 s TTL,
//!   re-resolved when the TTL runs out (clamped to 50..200 ms here). Anchor:
//!   one `resolve` (A query) against the same dnsmasq. Skipped, with a note,
//!   when dnsmasq is not installed.
//!
//! A change counts as seen when the catalog publishes its
//! `EndpointsChanged` event, right after swapping the new set in.
//!
//! ```text
//! cargo bench -p mesh-discover --bench change
//! ```

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_main, Criterion};
use mesh_core::{EventBus, MeshEvent, ServiceName};
use mesh_discover::{
    Catalog, ConsulRegistry, FileRegistry, KubernetesDnsRegistry, PortSource, Registry,
};
use mesh_testkit::fs::{write_atomically, TempDir};
use mesh_testkit::wait::until_endpoints;
use mesh_testkit::{consul, dnsmasq};
use tokio::runtime::Runtime;
use tokio::sync::broadcast;

fn users() -> ServiceName {
    ServiceName::new("users").expect("name")
}

/// A catalog publishing to a bus the bench listens on.
fn watched_catalog() -> (Catalog, broadcast::Receiver<MeshEvent>) {
    let bus = EventBus::new(1024);
    let events = bus.subscribe();
    (Catalog::new(bus), events)
}

/// Alternates between 2 and 3 endpoints, timing how long each change takes
/// to reach the catalog: until its `EndpointsChanged` event, which the
/// catalog publishes after the new set is in place.
///
/// Before each change the watch settles for a random, untimed `settle..2 x
/// settle`: changes arrive at a random point of the watch's cycle (its rate
/// limit, check interval or TTL), as real ones do, not right after the
/// previous one was seen.
async fn changes(
    catalog: &Catalog,
    events: &mut broadcast::Receiver<MeshEvent>,
    iters: u64,
    settle: Duration,
    mut apply: impl FnMut(usize),
) -> Duration {
    let mut total = Duration::ZERO;
    for _ in 0..iters {
        let want = match catalog.get("users").map(|s| s.len()) {
            Some(3) => 2,
            _ => 3,
        };
        tokio::time::sleep(settle.mul_f64(1.0 + fastrand::f64())).await;
        let started = Instant::now();
        apply(want);
        let seen = async {
            loop {
                match events.recv().await {
                    Ok(MeshEvent::EndpointsChanged { total, .. }) if total == want => break,
                    Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                    Err(broadcast::error::RecvError::Closed) => panic!("event bus closed"),
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(10), seen)
            .await
            .expect("the change never reached the catalog");
        total += started.elapsed();
    }
    total
}

async fn one_shot(registry: &dyn Registry, iters: u64) -> Duration {
    let started = Instant::now();
    for _ in 0..iters {
        let set = registry.resolve(&users()).await.expect("resolve");
        std::hint::black_box(set);
    }
    started.elapsed()
}

fn consul(c: &mut Criterion, rt: &Runtime) {
    let (double, registry, mut events, catalog, _follow) = rt.block_on(async {
        let double = consul::ConsulDouble::start().await;
        let set = |n: usize| {
            (0..n as u16)
                .map(|i| consul::entry("n1", "10.0.0.1", 80 + i, "passing"))
                .collect::<Vec<_>>()
        };
        double.set("users", set(2));
        let registry = Arc::new(
            ConsulRegistry::builder(double.url())
                .wait(Duration::from_secs(5))
                .min_interval(Duration::from_millis(1))
                .build()
                .expect("config"),
        );
        let (catalog, events) = watched_catalog();
        let follow = catalog.follow(registry.clone(), users(), Duration::from_millis(50));
        until_endpoints(|| catalog.get("users").map(|s| s.len()), 2).await;
        (double, registry, events, catalog, follow)
    });
    let entries = |n: usize| {
        (0..n as u16)
            .map(|i| consul::entry("n1", "10.0.0.1", 80 + i, "passing"))
            .collect::<Vec<_>>()
    };
    let mut group = c.benchmark_group("change_to_catalog/consul");
    group.sample_size(20);
    group.bench_function("one_shot_resolve", |b| {
        b.iter_custom(|iters| rt.block_on(one_shot(registry.as_ref(), iters)))
    });
    group.bench_function("blocking_query_change", |b| {
        b.iter_custom(|iters| {
            rt.block_on(changes(
                &catalog,
                &mut events,
                iters,
                Duration::from_millis(200),
                |n| double.set("users", entries(n)),
            ))
        })
    });
    group.finish();
}

fn write_services(path: &std::path::Path, n: usize) {
    let endpoints: Vec<String> = (0..n)
        .map(|p| format!("\"127.0.0.1:{}\"", 9000 + p))
        .collect();
    let body = format!(
        "{{ \"services\": {{ \"users\": [{}] }} }}",
        endpoints.join(", ")
    );
    write_atomically(path, body);
}

fn file(c: &mut Criterion, rt: &Runtime) {
    let dir = TempDir::new("change-bench");
    let path = dir.path("services.json");
    write_services(&path, 2);
    let registry = Arc::new(FileRegistry::new(&path).check_every(Duration::from_millis(10)));
    let (catalog, mut events) = watched_catalog();
    let _follow = rt.block_on(async {
        let follow = catalog.follow(registry.clone(), users(), Duration::from_millis(50));
        until_endpoints(|| catalog.get("users").map(|s| s.len()), 2).await;
        follow
    });
    let mut group = c.benchmark_group("change_to_catalog/file");
    group.sample_size(20);
    group.bench_function("one_shot_resolve", |b| {
        b.iter_custom(|iters| rt.block_on(one_shot(registry.as_ref(), iters)))
    });
    group.bench_function("edit_every_10ms_check", |b| {
        b.iter_custom(|iters| {
            rt.block_on(changes(
                &catalog,
                &mut events,
                iters,
                Duration::from_millis(200),
                |n| write_services(&path, n),
            ))
        })
    });
    group.finish();
}

fn kubernetes(c: &mut Criterion, rt: &Runtime) {
    let Some(dns) = dnsmasq::try_start(&["127.0.0.11", "127.0.0.12"]) else {
        eprintln!("change_to_catalog/kubernetes skipped: dnsmasq is not installed");
        return;
    };
    let registry = Arc::new(
        KubernetesDnsRegistry::builder(PortSource::Fixed(8080))
            .nameserver(dns.addr)
            .refresh_between(Duration::from_millis(50), Duration::from_millis(200))
            .build()
            .expect("config"),
    );
    let (catalog, mut events) = watched_catalog();
    let _follow = rt.block_on(async {
        let follow = catalog.follow(registry.clone(), users(), Duration::from_millis(50));
        until_endpoints(|| catalog.get("users").map(|s| s.len()), 2).await;
        follow
    });
    let ips = ["127.0.0.11", "127.0.0.12", "127.0.0.13"];
    let mut group = c.benchmark_group("change_to_catalog/kubernetes_dns");
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(20));
    group.bench_function("one_shot_resolve", |b| {
        b.iter_custom(|iters| rt.block_on(one_shot(registry.as_ref(), iters)))
    });
    group.bench_function("hostsdir_edit_ttl_1s", |b| {
        b.iter_custom(|iters| {
            rt.block_on(changes(
                &catalog,
                &mut events,
                iters,
                Duration::from_millis(200),
                |n| dnsmasq::write_hosts(&dns.hosts, &ips[..n]),
            ))
        })
    });
    group.finish();
}

pub(crate) fn change_latency(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    consul(c, &rt);
    file(c, &rt);
    kubernetes(c, &rt);
}

// The macro defines an undocumented public function.
#[allow(missing_docs)]
mod group {
    criterion::criterion_group!(benches, super::change_latency);
}
criterion_main!(group::benches);
