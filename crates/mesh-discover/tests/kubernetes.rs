//! Kubernetes DNS against a real dnsmasq (Debian's dnsmasq-base, installed
//! by .ci/run) on a loopback port, serving the records Kubernetes DNS would
//! for a headless service: A records from a hosts directory (changes picked
//! up without a restart) and SRV records for a named port.

mod support;
use support::until;

use mesh_testkit::dnsmasq::{start, write_hosts, Dnsmasq};

use std::sync::Arc;
use std::time::{Duration, Instant};

use mesh_core::ext::with_endpoint_set;
use mesh_core::ServiceName;
use mesh_discover::{Catalog, KubernetesDnsRegistry, PortSource, Registry};

fn registry(dns: &Dnsmasq, port: PortSource) -> KubernetesDnsRegistry {
    KubernetesDnsRegistry::builder(port)
        .nameserver(dns.addr)
        .refresh_between(Duration::from_millis(50), Duration::from_millis(200))
        .build()
        .expect("config")
}

async fn ready(registry: &KubernetesDnsRegistry) {
    let started = Instant::now();
    let users = ServiceName::new("users").expect("name");
    while registry
        .resolve(&users)
        .await
        .map_or(true, |s| s.is_empty())
    {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "dnsmasq never answered"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scaling_is_seen_and_zero_instances_is_an_empty_set() {
    let dns = start(&["127.0.0.11", "127.0.0.12", "127.0.0.13"]);
    let registry = registry(&dns, PortSource::Fixed(8080));
    ready(&registry).await;
    let catalog = Catalog::default();
    let _follow = catalog.follow(
        Arc::new(registry),
        ServiceName::new("users").expect("name"),
        Duration::from_millis(50),
    );
    until(&catalog, 3).await;
    let set = catalog.get("users").expect("set");
    assert!(set.iter().all(|e| e.address().port() == 8080));

    write_hosts(
        &dns.hosts,
        &["127.0.0.11", "127.0.0.12", "127.0.0.13", "127.0.0.14"],
    );
    until(&catalog, 4).await;
    write_hosts(&dns.hosts, &["127.0.0.12"]);
    until(&catalog, 1).await;
    write_hosts(&dns.hosts, &[]);
    until(&catalog, 0).await; // NXDOMAIN: no instances, not an error
    write_hosts(&dns.hosts, &["127.0.0.11", "127.0.0.12", "127.0.0.13"]);
    until(&catalog, 3).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn srv_records_give_ports_and_weights() {
    let dns = start(&["127.0.0.21", "127.0.0.22"]);
    let registry = registry(
        &dns,
        PortSource::Srv {
            name: "http".into(),
            protocol: "tcp".into(),
        },
    );
    ready(&registry).await;
    let set = registry
        .resolve(&ServiceName::new("users").expect("name"))
        .await
        .expect("answer");
    let mut seen: Vec<(String, u32)> = set
        .iter()
        .map(|e| (e.address().to_string(), e.weight().get()))
        .collect();
    seen.sort();
    assert_eq!(
        seen,
        [
            ("127.0.0.21:8080".to_owned(), 10),
            ("127.0.0.22:8080".to_owned(), 30)
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_nxdomain_first_answer_is_an_unknown_service_and_leaves_no_follower() {
    use mesh_core::{EndpointSet, MeshError};
    use mesh_discover::DiscoverLayer;
    use tower::{service_fn, Layer, ServiceExt};

    let dns = start(&["127.0.0.31", "127.0.0.32"]);
    let registry = registry(&dns, PortSource::Fixed(8080));
    ready(&registry).await;
    assert!(
        registry
            .describe()
            .contains(&format!("nameserver {}", dns.addr)),
        "{}",
        registry.describe()
    );
    let first_wait = Duration::from_secs(3);
    let layer = DiscoverLayer::with_registry(Catalog::default(), Arc::new(registry), first_wait);
    let svc = layer.layer(service_fn(|req: http::Request<()>| async move {
        let n = with_endpoint_set(&req, EndpointSet::len).unwrap_or(0);
        Ok::<_, std::convert::Infallible>(n)
    }));
    let get = |host: &str| {
        http::Request::get(format!("http://{host}/"))
            .body(())
            .expect("request")
    };

    // dnsmasq is authoritative for cluster.local: NXDOMAIN, at once.
    let started = Instant::now();
    for host in ["nosuch", "typo-users", "users-v9"] {
        let err = svc.clone().oneshot(get(host)).await.expect_err("unknown");
        assert!(
            matches!(
                MeshError::find(&*err),
                Some(MeshError::UnknownService { .. })
            ),
            "{host}: {err}"
        );
    }
    assert!(started.elapsed() < first_wait, "{:?}", started.elapsed());
    assert!(layer.followed().is_empty(), "{:?}", layer.followed());
    assert!(svc.catalog().services().is_empty());

    // The real service, never called before, resolves.
    assert_eq!(
        svc.clone().oneshot(get("users")).await.expect("resolved"),
        2
    );
    assert_eq!(
        layer.followed(),
        vec![ServiceName::new("users").expect("name")]
    );
}

/// A registry that gives each DNS query 200 ms, twice: an outage is an
/// error within 400 ms (asserted with a wide margin for a loaded machine).
fn impatient(nameserver: std::net::SocketAddr, port: PortSource) -> KubernetesDnsRegistry {
    KubernetesDnsRegistry::builder(port)
        .nameserver(nameserver)
        .refresh_between(Duration::from_millis(50), Duration::from_millis(200))
        .resolver_timeout(Duration::from_millis(200))
        .resolver_attempts(2)
        .build()
        .expect("config")
}

const OUTAGE_REPORTED_WITHIN: Duration = Duration::from_millis(1500);

fn srv() -> PortSource {
    PortSource::Srv {
        name: "http".into(),
        protocol: "tcp".into(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_dns_server_is_an_error_within_timeout_times_attempts() {
    let dns = start(&["127.0.0.41", "127.0.0.42"]);
    let users = ServiceName::new("users").expect("name");
    for port in [PortSource::Fixed(8080), srv()] {
        let registry = impatient(dns.addr, port.clone());
        ready(&registry).await;
        dns.pause();
        let started = Instant::now();
        let error = registry.resolve(&users).await.expect_err("DNS is down");
        let took = started.elapsed();
        dns.resume();
        assert!(took < OUTAGE_REPORTED_WITHIN, "{port:?}: {took:?}");
        let error = error.to_string();
        assert!(
            error.contains("resolver_timeout 200ms x resolver_attempts 2"),
            "{port:?}: {error}"
        );
        // Back up: answers again.
        ready(&registry).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nameserver_where_nothing_listens_is_an_error_within_the_bound() {
    let nowhere =
        std::net::SocketAddr::from(([127, 0, 0, 1], mesh_testkit::net::free_udp_and_tcp_port()));
    let users = ServiceName::new("users").expect("name");
    for port in [PortSource::Fixed(8080), srv()] {
        let registry = impatient(nowhere, port.clone());
        let started = Instant::now();
        registry.resolve(&users).await.expect_err("no DNS");
        let took = started.elapsed();
        assert!(took < OUTAGE_REPORTED_WITHIN, "{port:?}: {took:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dns_outage_reaches_the_catalog_as_a_failure_and_the_set_stays() {
    use mesh_core::{EventBus, MeshEvent};

    let dns = start(&["127.0.0.51", "127.0.0.52"]);
    let registry = impatient(dns.addr, PortSource::Fixed(8080));
    ready(&registry).await;
    let bus = EventBus::new(64);
    let mut events = bus.subscribe();
    let catalog = Catalog::new(bus);
    let _follow = catalog.follow(
        Arc::new(registry),
        ServiceName::new("users").expect("name"),
        Duration::from_millis(50),
    );
    until(&catalog, 2).await;
    while events.try_recv().is_ok() {}

    dns.pause();
    let started = Instant::now();
    loop {
        match events.try_recv() {
            Ok(MeshEvent::DiscoveryFailed { .. }) => break,
            Ok(_) => {}
            Err(_) => {
                // The next re-resolution starts within the TTL clamp
                // (200 ms), then fails within the bound.
                assert!(
                    started.elapsed() < OUTAGE_REPORTED_WITHIN + Duration::from_millis(200),
                    "no failure reported after {:?}",
                    started.elapsed()
                );
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    }
    assert_eq!(
        catalog.get("users").map(|s| s.len()),
        Some(2),
        "the last good set stays"
    );
    dns.resume();
    let started = Instant::now();
    loop {
        match events.try_recv() {
            Ok(MeshEvent::DiscoveryRecovered { .. }) => break,
            Ok(_) => {}
            Err(_) => {
                assert!(
                    started.elapsed() < Duration::from_secs(10),
                    "never recovered"
                );
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    }
}
