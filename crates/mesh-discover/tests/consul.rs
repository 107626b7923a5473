//! The Consul backend against an in-repo double of Consul's health API
//! (no Consul binary can be installed here; see `mesh_testkit::consul` for
//! the documented rules it follows).

mod support;
use support::until;

use std::sync::Arc;
use std::time::{Duration, Instant};

use mesh_core::ext::with_endpoint_set;
use mesh_core::{EndpointSet, EventBus, MeshError, MeshEvent, ServiceName};
use mesh_discover::{Catalog, ConsulRegistry, DiscoverLayer, Registry};
use mesh_testkit::consul::{entry, ConsulDouble};
use tower::{service_fn, Layer, ServiceExt};

fn registry(double: &ConsulDouble) -> Arc<ConsulRegistry> {
    Arc::new(
        ConsulRegistry::builder(double.url())
            .wait(Duration::from_secs(2))
            .min_interval(Duration::from_millis(5))
            .build()
            .expect("config"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocking_queries_see_changes_at_once_and_follow_the_index_rules() {
    let double = ConsulDouble::start().await;
    double.set(
        "users",
        vec![
            entry("n1", "10.0.0.1", 80, "passing"),
            entry("n2", "10.0.0.2", 80, "critical"),
        ],
    );
    let bus = EventBus::new(256);
    let mut events = bus.subscribe();
    let catalog = Catalog::new(bus);
    let _follow = catalog.follow(
        registry(&double),
        ServiceName::new("users").expect("name"),
        Duration::from_millis(50),
    );
    until(&catalog, 1).await; // the critical one is dropped

    // A change is visible at once, well inside the query's 2 s wait (the
    // watch was blocked on it).
    tokio::time::sleep(Duration::from_millis(50)).await;
    double.set(
        "users",
        vec![
            entry("n1", "10.0.0.1", 80, "passing"),
            entry("n3", "10.0.0.3", 80, "passing"),
        ],
    );
    let seen = until(&catalog, 2).await;
    assert!(seen < Duration::from_millis(1000), "seen after {seen:?}");

    // The client sent the index back with a wait.
    let requests = double.requests();
    assert!(
        requests
            .iter()
            .any(|q| q.contains("index=11") && q.contains("wait=2000ms")),
        "{requests:?}"
    );
    assert!(requests.iter().all(|q| q.contains("passing=true")));

    // An agent restart sends the index backwards: the client starts over
    // from 0 (no index) instead of blocking on a future index.
    double.force_index(3);
    double.set("users", vec![entry("n4", "10.0.0.4", 80, "passing")]);
    until(&catalog, 1).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    let after: Vec<String> = double.requests();
    let restart = after
        .iter()
        .rposition(|q| !q.contains("index="))
        .expect("a query without index after the reset");
    assert!(restart > requests.len() - 1);

    // Index 0 (an old-Consul bug) is treated as 1: once the client has
    // seen it, its queries block (index=1) instead of returning at once in
    // a loop (index=0 never blocks).
    double.force_index(0);
    double.set("users", vec![entry("n4", "10.0.0.4", 80, "passing")]); // index 1
    double.force_index(0);
    double.set("users", vec![entry("n7", "10.0.0.7", 80, "passing")]); // index 1 again
    double.force_index(0);
    double.set("users", vec![entry("n4", "10.0.0.4", 80, "passing")]); // releases the watch
    double.force_index(0);
    let started = Instant::now();
    while !double.requests().iter().any(|q| q.contains("index=1&")) {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "the client never sent index 1"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let before = double.requests().len();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        double.requests().len() - before <= 2,
        "no busy loop on index 0: {} requests in 500 ms",
        double.requests().len() - before
    );

    // 500s: the last good set stays, a failure event, then recovery.
    while events.try_recv().is_ok() {}
    double.fail_next(2);
    // This change releases the blocked query; the next two fail.
    double.set(
        "users",
        vec![
            entry("n4", "10.0.0.4", 80, "passing"),
            entry("n5", "10.0.0.5", 80, "passing"),
            entry("n6", "10.0.0.6", 80, "passing"),
        ],
    );
    until(&catalog, 3).await;
    let started = Instant::now();
    let mut failures = 0;
    while failures < 2 {
        match events.try_recv() {
            Ok(MeshEvent::DiscoveryFailed { error, .. }) => {
                assert!(error.contains("500"), "{error}");
                failures += 1;
            }
            Ok(_) => {}
            Err(_) => {
                assert!(
                    started.elapsed() < Duration::from_secs(5),
                    "no failure events"
                );
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    }
    assert_eq!(
        catalog.get("users").map(|s| s.len()),
        Some(3),
        "the last good set stays"
    );
    double.set(
        "users",
        vec![
            entry("n4", "10.0.0.4", 80, "passing"),
            entry("n5", "10.0.0.5", 80, "passing"),
        ],
    );
    until(&catalog, 2).await;
    let started = Instant::now();
    loop {
        match events.try_recv() {
            Ok(MeshEvent::DiscoveryRecovered { .. }) => break,
            Ok(_) => {}
            Err(_) => {
                assert!(
                    started.elapsed() < Duration::from_secs(5),
                    "no recovery event"
                );
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_or_dead_consul_keeps_the_last_good_set() {
    let double = ConsulDouble::start().await;
    double.set("users", vec![entry("n1", "10.0.0.1", 80, "passing")]);
    let bus = EventBus::new(64);
    let mut events = bus.subscribe();
    let catalog = Catalog::new(bus);
    let follow = catalog.follow(
        registry(&double),
        ServiceName::new("users").expect("name"),
        Duration::from_millis(50),
    );
    until(&catalog, 1).await;
    drop(double); // dead: its connections close with it
    let started = Instant::now();
    loop {
        match events.try_recv() {
            Ok(MeshEvent::DiscoveryFailed { .. }) => break,
            Ok(_) => {}
            Err(_) => {
                assert!(
                    started.elapsed() < Duration::from_secs(5),
                    "no failure event"
                );
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    }
    assert_eq!(
        catalog.get("users").map(|s| s.len()),
        Some(1),
        "the last good set stays"
    );
    drop(follow);

    // resolve() answers once, without blocking.
    let double = ConsulDouble::start().await;
    double.set(
        "users",
        vec![
            entry("n1", "10.0.0.1", 80, "passing"),
            entry("n2", "10.0.0.2", 81, "passing"),
        ],
    );
    let set = registry(&double)
        .resolve(&ServiceName::new("users").expect("name"))
        .await
        .expect("answer");
    assert_eq!(set.len(), 2);

    // A slow Consul is waited for (within the timeout), not given up on.
    double.delay(Duration::from_millis(300));
    let started = Instant::now();
    let set = registry(&double)
        .resolve(&ServiceName::new("users").expect("name"))
        .await
        .expect("a slow answer");
    assert_eq!(set.len(), 2);
    assert!(started.elapsed() >= Duration::from_millis(300));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registration_round_trip_with_a_ttl_check_and_heartbeats() {
    use mesh_discover::{AgentCheck, Registration};
    let double = ConsulDouble::start().await;
    let consul = registry(&double);
    let me = Registration {
        id: "api-gateway-1".into(),
        name: "api-gateway".into(),
        address: "127.0.0.1".parse().expect("ip"),
        port: 8080,
        tags: vec!["v1".into(), "production".into()],
        meta: Default::default(),
        check: Some(AgentCheck::Ttl {
            ttl: Duration::from_secs(15),
        }),
        deregister_critical_after: Some(Duration::from_secs(60)),
    };
    consul.register(&me).await.expect("registered");
    let sent = double
        .registration("api-gateway-1")
        .expect("the agent got it");
    assert_eq!(sent["Name"], "api-gateway");
    assert_eq!(sent["Port"], 8080);
    assert_eq!(sent["Tags"], serde_json::json!(["v1", "production"]));
    assert_eq!(sent["Check"]["TTL"], "15000ms");
    assert_eq!(sent["Check"]["DeregisterCriticalServiceAfter"], "60000ms");

    let name = ServiceName::new("api-gateway").expect("name");
    // Critical until the first heartbeat: not among passing instances.
    assert!(consul.resolve(&name).await.expect("answer").is_empty());
    let beats = consul.heartbeat(me.clone(), Duration::from_millis(20));
    let started = Instant::now();
    while consul.resolve(&name).await.expect("answer").is_empty() {
        assert!(started.elapsed() < Duration::from_secs(5), "never passing");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(double.heartbeats() >= 2, "heartbeats keep coming");
    drop(beats);

    consul
        .deregister("api-gateway-1")
        .await
        .expect("deregistered");
    assert!(double.registration("api-gateway-1").is_none());
    assert!(consul.resolve(&name).await.expect("answer").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn junk_hosts_leave_no_follower_and_a_new_service_still_resolves() {
    let double = ConsulDouble::start().await;
    let layer = DiscoverLayer::with_registry(
        Catalog::default(),
        registry(&double),
        Duration::from_secs(5),
    );
    let svc = layer.layer(service_fn(|req: http::Request<()>| async move {
        let n = with_endpoint_set(&req, EndpointSet::len).unwrap_or(0);
        Ok::<_, std::convert::Infallible>(n)
    }));
    let get = |host: String| http::Request::get(format!("http://{host}/")).body(());

    // 5,000 hosts Consul answers `200 []` for, 50 at a time: each is
    // unknown at its first answer and leaves nothing behind.
    for wave in 0..100 {
        let mut calls = tokio::task::JoinSet::new();
        for i in 0..50 {
            let (svc, req) = (
                svc.clone(),
                get(format!("junk-{wave}-{i}")).expect("request"),
            );
            calls.spawn(svc.oneshot(req));
        }
        while let Some(answer) = calls.join_next().await {
            let err = answer.expect("task").expect_err("junk");
            assert!(
                matches!(
                    MeshError::find(&*err),
                    Some(MeshError::UnknownService { .. })
                ),
                "{err}"
            );
        }
    }
    assert!(layer.followed().is_empty(), "{:?}", layer.followed());
    // No follower is left querying Consul. A watch task may have started
    // its next query in the instant before its follower dropped it (the
    // abort then cancels that query): let those land before counting.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = double.requests().len();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(double.requests().len(), before);

    // A real service, never seen before, still resolves.
    double.set("users", vec![entry("n1", "10.0.0.1", 80, "passing")]);
    let n = svc
        .clone()
        .oneshot(get("users".into()).expect("request"))
        .await
        .expect("resolved");
    assert_eq!(n, 1);
    assert_eq!(
        layer.followed(),
        vec![ServiceName::new("users").expect("name")]
    );

    // A Consul too slow for the first wait: the error names it.
    let slow = DiscoverLayer::with_registry(
        Catalog::default(),
        registry(&double),
        Duration::from_millis(100),
    );
    double.delay(Duration::from_millis(500));
    let err = slow
        .layer(service_fn(|_: http::Request<()>| async {
            Ok::<_, std::convert::Infallible>(())
        }))
        .oneshot(get("users".into()).expect("request"))
        .await
        .expect_err("too slow");
    assert!(
        err.to_string()
            .contains(&format!("no answer from consul at {}", double.url())),
        "{err}"
    );
    assert!(slow.followed().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostname_addresses_resolve_and_one_that_does_not_leaves_the_rest_served() {
    let double = ConsulDouble::start().await;
    // The node's address is used when the service has none; it may be a
    // hostname too.
    let mut on_node = entry("n3", "", 82, "passing");
    on_node["Node"]["Address"] = "localhost".into();
    double.set(
        "users",
        vec![
            entry("n1", "10.0.0.1", 80, "passing"),
            entry("n2", "localhost", 81, "passing"),
            on_node,
            entry("n4", "no-such-host.invalid", 83, "passing"),
        ],
    );
    let consul = Arc::new(
        ConsulRegistry::builder(double.url())
            .wait(Duration::from_secs(2))
            .min_interval(Duration::from_millis(5))
            .hostname_lookup_timeout(Duration::from_secs(3))
            .build()
            .expect("config"),
    );
    let users = ServiceName::new("users").expect("name");
    let started = Instant::now();
    let set = consul.resolve(&users).await.expect("answer");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "resolution is bounded: {:?}",
        started.elapsed()
    );
    let mut addresses: Vec<String> = set.iter().map(|e| e.address().to_string()).collect();
    addresses.sort();
    addresses.dedup();
    // localhost may also be ::1 where the hosts file says so.
    let v4: Vec<&str> = addresses
        .iter()
        .map(String::as_str)
        .filter(|a| !a.starts_with('['))
        .collect();
    assert_eq!(
        v4,
        ["10.0.0.1:80", "127.0.0.1:81", "127.0.0.1:82"],
        "{set:?}"
    );
    assert!(
        set.iter().all(|e| e.address().port() != 83),
        "the name that does not resolve is left out: {set:?}"
    );
    // Ids stay the instance's: node/service-id (with @ip when a name has
    // several addresses).
    for endpoint in set.iter() {
        let id = endpoint.id().as_str();
        let want = match endpoint.address().port() {
            80 => "n1/svc-80",
            81 => "n2/svc-81",
            _ => "n3/svc-82",
        };
        assert!(
            id == want || id == format!("{want}@{}", endpoint.address().ip()),
            "{id} for {}",
            endpoint.address()
        );
    }

    // A watch serves the same set, and follows a change.
    let catalog = Catalog::default();
    let _follow = catalog.follow(
        Arc::clone(&consul) as Arc<dyn Registry>,
        users.clone(),
        Duration::from_millis(50),
    );
    until(&catalog, set.len()).await;
    double.set(
        "users",
        vec![
            entry("n2", "localhost", 81, "passing"),
            entry("n4", "no-such-host.invalid", 83, "passing"),
        ],
    );
    let localhost = set.iter().filter(|e| e.address().port() == 81).count();
    until(&catalog, localhost).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_consul_is_retried_at_least_as_often_as_the_error_backoff_cap() {
    let double = ConsulDouble::start().await;
    double.set("users", vec![entry("n1", "10.0.0.1", 80, "passing")]);
    let cap = Duration::from_millis(200);
    let consul = Arc::new(
        ConsulRegistry::builder(double.url())
            .wait(Duration::from_secs(2))
            .min_interval(Duration::from_millis(5))
            .max_error_backoff(cap)
            .build()
            .expect("config"),
    );
    double.fail_next(u32::MAX);
    let catalog = Catalog::default();
    let _follow = catalog.follow(
        consul,
        ServiceName::new("users").expect("name"),
        Duration::from_millis(50),
    );
    // When each query arrives, seen by polling the double.
    let mut arrivals = Vec::new();
    let mut seen = 0;
    let started = Instant::now();
    while started.elapsed() < Duration::from_millis(2500) {
        let now = double.requests().len();
        if now > seen {
            seen = now;
            arrivals.push(Instant::now());
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    // Uncapped, the 5th pause would be 2-4 s; capped, every pause is at
    // most 200 ms (the bound leaves room for a loaded machine).
    assert!(arrivals.len() >= 8, "{} queries in 2.5 s", arrivals.len());
    let longest = arrivals
        .windows(2)
        .map(|w| w[1] - w[0])
        .max()
        .expect("gaps");
    assert!(longest < cap * 5, "longest pause {longest:?}");
    assert!(catalog.get("users").is_none(), "no answer yet");

    // Consul recovers: the next query (within the cap) is answered.
    double.fail_next(0);
    let recovered = until(&catalog, 1).await;
    assert!(recovered < cap * 5, "seen after {recovered:?}");
}
