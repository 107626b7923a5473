//! A services file followed into a catalog: edits seen at once, bad edits
//! and a vanished file leave the last good set in use.

mod support;
use support::until;

use std::sync::Arc;
use std::time::{Duration, Instant};

use mesh_core::ext::with_endpoint_set;
use mesh_core::{EventBus, MeshEvent, ServiceName};
use mesh_discover::{Catalog, FileRegistry};
use mesh_testkit::fs::{write_atomically, TempDir};
use tokio::sync::broadcast;

fn write(path: &std::path::Path, ports: &[u16]) {
    let endpoints: Vec<String> = ports.iter().map(|p| format!("\"127.0.0.1:{p}\"")).collect();
    let body = format!(
        "{{ \"services\": {{ \"users\": [{}] }} }}",
        endpoints.join(", ")
    );
    write_atomically(path, body);
}

fn next_discovery_event(rx: &mut broadcast::Receiver<MeshEvent>) -> Option<MeshEvent> {
    while let Ok(event) = rx.try_recv() {
        if matches!(
            event,
            MeshEvent::DiscoveryFailed { .. } | MeshEvent::DiscoveryRecovered { .. }
        ) {
            return Some(event);
        }
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edits_are_seen_within_100ms_and_bad_edits_keep_the_last_good_set() {
    let dir = TempDir::new("file-test");
    let path = dir.path("services.json");
    write(&path, &[1, 2]);

    let bus = EventBus::new(64);
    let mut events = bus.subscribe();
    let catalog = Catalog::new(bus);
    let registry = Arc::new(FileRegistry::new(&path).check_every(Duration::from_millis(10)));
    let _follow = catalog.follow(
        registry,
        ServiceName::new("users").expect("name"),
        Duration::from_millis(50),
    );
    until(&catalog, 2).await;

    // An edit is seen on one of the next checks (every 10 ms; the bound
    // leaves room for a loaded machine).
    write(&path, &[1, 2, 3]);
    let seen_after = until(&catalog, 3).await;
    assert!(
        seen_after < Duration::from_millis(500),
        "seen after {seen_after:?}"
    );

    // A malformed edit: refused, the last good set stays, an event says so.
    std::fs::write(&path, "{ not json").expect("write");
    let started = Instant::now();
    let failed = loop {
        if let Some(e) = next_discovery_event(&mut events) {
            break e;
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "no failure event"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    assert!(
        matches!(failed, MeshEvent::DiscoveryFailed { ref error, .. } if error.contains("services.json")),
        "{failed:?}"
    );
    assert_eq!(catalog.get("users").map(|s| s.len()), Some(3));

    // Fixed: the new set, and a recovery event.
    write(&path, &[4]);
    until(&catalog, 1).await;
    let started = Instant::now();
    loop {
        if let Some(MeshEvent::DiscoveryRecovered { .. }) = next_discovery_event(&mut events) {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "no recovery event"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }

    // The file vanishes (the registry dies): requests keep the last set.
    std::fs::remove_file(&path).expect("remove");
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(catalog.get("users").map(|s| s.len()), Some(1));

    // Back, without the service: listed before, so now it has no
    // endpoints (not a failure that would keep the old set forever).
    std::fs::write(&path, r#"{ "services": {} }"#).expect("write");
    until(&catalog, 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_request_waits_for_the_registry_and_an_unlisted_service_is_unknown_at_once() {
    use mesh_core::{EndpointSet, MeshError};
    use mesh_discover::DiscoverLayer;
    use tower::{service_fn, Layer, ServiceExt};

    let dir = TempDir::new("first-test");
    let path = dir.path("services.json");
    write(&path, &[1, 2]);
    let registry = Arc::new(
        FileRegistry::open(&path)
            .expect("a readable file")
            .check_every(Duration::from_millis(10)),
    );
    let first_wait = Duration::from_secs(3);
    let layer = DiscoverLayer::with_registry(Catalog::default(), registry, first_wait);
    let svc = layer.layer(service_fn(|req: http::Request<()>| async move {
        let n = with_endpoint_set(&req, EndpointSet::len).unwrap_or(0);
        Ok::<_, std::convert::Infallible>(n)
    }));
    let get = |host: &str| {
        http::Request::get(format!("http://{host}/"))
            .body(())
            .expect("request")
    };

    // Nothing cached yet: the first request waits for the first answer.
    assert_eq!(
        svc.clone().oneshot(get("users")).await.expect("resolved"),
        2
    );
    // Cached now: no wait.
    let started = Instant::now();
    assert_eq!(
        svc.clone().oneshot(get("users")).await.expect("resolved"),
        2
    );
    assert!(started.elapsed() < first_wait / 2);
    // A service the file does not list: unknown as soon as the file is
    // read, not after the whole wait, and not followed.
    let started = Instant::now();
    let err = svc.oneshot(get("billing")).await.expect_err("unknown");
    assert!(
        matches!(
            MeshError::find(&*err),
            Some(MeshError::UnknownService { .. })
        ),
        "{err}"
    );
    assert!(err.to_string().contains("\"billing\""), "{err}");
    assert!(
        started.elapsed() < first_wait / 2,
        "{:?}",
        started.elapsed()
    );
    assert_eq!(
        layer.followed(),
        vec![ServiceName::new("users").expect("name")]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_file_is_refused_at_open_and_a_timeout_names_the_file() {
    use mesh_core::MeshError;
    use mesh_discover::DiscoverLayer;
    use tower::{service_fn, Layer, ServiceExt};

    let dir = TempDir::new("missing-test");
    let path = dir.path("services.json");
    let err = FileRegistry::open(&path).expect_err("no such file");
    assert_eq!(err.key(), "file");
    assert_eq!(err.reason(), format!("cannot read {}", path.display()));
    let io = std::error::Error::source(&err)
        .and_then(|e| e.downcast_ref::<std::io::Error>())
        .expect("the io::Error is kept as the cause");
    assert_eq!(io.kind(), std::io::ErrorKind::NotFound);
    let text = err.to_string();
    assert!(
        text.contains(&path.display().to_string()) && text.contains("No such file"),
        "{text}"
    );

    // Malformed: refused naming the file and the entry, the parser's
    // error kept as the cause.
    std::fs::write(&path, r#"{ "services": { "users": ["10.0.0.1"] } }"#).expect("write");
    let err = FileRegistry::open(&path).expect_err("bad address");
    assert_eq!(err.key(), "file");
    assert!(
        std::error::Error::source(&err).is_some_and(|e| e.is::<std::net::AddrParseError>()),
        "{err:?}"
    );
    let text = err.to_string();
    assert!(
        text.contains("services.json") && text.contains("10.0.0.1"),
        "{text}"
    );
    std::fs::remove_file(&path).expect("remove");

    // Built without the check: the first call times out naming the file,
    // and leaves no follower behind.
    let registry = Arc::new(FileRegistry::new(&path).check_every(Duration::from_millis(10)));
    let layer =
        DiscoverLayer::with_registry(Catalog::default(), registry, Duration::from_millis(200));
    let svc = layer.layer(service_fn(|_: http::Request<()>| async {
        Ok::<_, std::convert::Infallible>(())
    }));
    let err = svc
        .oneshot(
            http::Request::get("http://users/")
                .body(())
                .expect("request"),
        )
        .await
        .expect_err("no file");
    assert!(
        matches!(
            MeshError::find(&*err),
            Some(MeshError::DiscoveryTimeout { .. })
        ),
        "{err}"
    );
    assert!(
        err.to_string()
            .contains(&format!("file {}", path.display())),
        "{err}"
    );
    assert!(layer.followed().is_empty(), "{:?}", layer.followed());
}
