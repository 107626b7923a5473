//! How long a last good set outlives a failing registry: forever with
//! `follow`, `max_staleness` with `follow_with_max_staleness`. On tokio's
//! paused clock (which `mesh_core::clock` follows): deterministic, instant.

mod support;
use support::until;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use mesh_core::{Endpoint, EndpointSet, EventBus, MeshEvent, ServiceName};
use mesh_discover::{BoxFuture, BoxStream, Catalog, DiscoveryError, Registry};
use tokio::sync::mpsc;

/// A registry whose one watch yields whatever the test sends, and stays
/// silent otherwise (a registry that hangs).
struct Scripted {
    answers: Mutex<Option<mpsc::UnboundedReceiver<Result<EndpointSet, DiscoveryError>>>>,
}

impl Registry for Scripted {
    fn resolve(&self, _: &ServiceName) -> BoxFuture<Result<EndpointSet, DiscoveryError>> {
        Box::pin(async { Err(DiscoveryError::Unavailable("resolve unused".into())) })
    }

    fn watch(&self, _: &ServiceName) -> BoxStream<Result<EndpointSet, DiscoveryError>> {
        let rx = self.answers.lock().expect("lock").take();
        Box::pin(Answers { rx })
    }
}

struct Answers {
    rx: Option<mpsc::UnboundedReceiver<Result<EndpointSet, DiscoveryError>>>,
}

impl futures_core::Stream for Answers {
    type Item = Result<EndpointSet, DiscoveryError>;
    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        match self.rx.as_mut() {
            Some(rx) => rx.poll_recv(cx),
            None => std::task::Poll::Pending,
        }
    }
}

fn users(n: u16) -> EndpointSet {
    let endpoints = (0..n)
        .map(|i| Endpoint::builder(SocketAddr::from(([127, 0, 0, 1], 9000 + i))).build())
        .collect();
    EndpointSet::new(ServiceName::new("users").expect("name"), endpoints)
}

fn scripted() -> (
    Arc<Scripted>,
    mpsc::UnboundedSender<Result<EndpointSet, DiscoveryError>>,
) {
    let (tx, rx) = mpsc::unbounded_channel();
    let registry = Scripted {
        answers: Mutex::new(Some(rx)),
    };
    (Arc::new(registry), tx)
}

#[tokio::test(start_paused = true)]
async fn a_set_older_than_max_staleness_is_withdrawn_then_restored() {
    let bus = EventBus::new(64);
    let mut events = bus.subscribe();
    let catalog = Catalog::new(bus);
    let (registry, tx) = scripted();
    let max = Duration::from_millis(500);
    let _follow = catalog.follow_with_max_staleness(
        registry,
        ServiceName::new("users").expect("name"),
        Duration::from_millis(10),
        max,
    );
    // Before the send: the follower's refresh time is no earlier.
    let refreshed = Instant::now();
    tx.send(Ok(users(2))).expect("send");
    until(&catalog, 2).await;
    tx.send(Err(DiscoveryError::Unavailable("down".into())))
        .expect("send");
    // Stale but young: still served. Then the registry goes silent, and
    // the timer (not another answer) withdraws the set.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(catalog.get("users").map(|s| s.len()), Some(2));
    until(&catalog, 0).await;
    assert!(refreshed.elapsed() >= max);

    let mut expired = None;
    while let Ok(event) = events.try_recv() {
        if let MeshEvent::DiscoveryExpired { stale_for, .. } = event {
            expired = Some(stale_for);
        }
    }
    let stale_for = expired.expect("a DiscoveryExpired event");
    assert!(stale_for >= max, "{stale_for:?}");

    tx.send(Ok(users(1))).expect("send");
    until(&catalog, 1).await;
    let mut recovered = false;
    while let Ok(event) = events.try_recv() {
        recovered |= matches!(event, MeshEvent::DiscoveryRecovered { .. });
    }
    assert!(recovered);
}

#[tokio::test(start_paused = true)]
async fn without_max_staleness_the_last_good_set_stays() {
    let bus = EventBus::new(64);
    let mut events = bus.subscribe();
    let catalog = Catalog::new(bus);
    let (registry, tx) = scripted();
    let _follow = catalog.follow(
        registry,
        ServiceName::new("users").expect("name"),
        Duration::from_millis(10),
    );
    tx.send(Ok(users(2))).expect("send");
    until(&catalog, 2).await;
    tx.send(Err(DiscoveryError::Unavailable("down".into())))
        .expect("send");
    tokio::time::sleep(Duration::from_secs(24 * 3600)).await;
    assert_eq!(catalog.get("users").map(|s| s.len()), Some(2));
    let mut failed = false;
    while let Ok(event) = events.try_recv() {
        failed |= matches!(event, MeshEvent::DiscoveryFailed { .. });
        assert!(!matches!(event, MeshEvent::DiscoveryExpired { .. }));
    }
    assert!(failed, "the error was never processed");
}

#[tokio::test(start_paused = true)]
async fn a_silent_healthy_registry_never_expires() {
    // Files, Consul and etcd watches say nothing while nothing changes.
    let catalog = Catalog::default();
    let (registry, tx) = scripted();
    let _follow = catalog.follow_with_max_staleness(
        registry,
        ServiceName::new("users").expect("name"),
        Duration::from_millis(10),
        Duration::from_millis(500),
    );
    tx.send(Ok(users(2))).expect("send");
    until(&catalog, 2).await;
    tokio::time::sleep(Duration::from_secs(3600)).await;
    assert_eq!(catalog.get("users").map(|s| s.len()), Some(2));
}
