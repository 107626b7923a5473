//! Following stays bounded whatever hosts requests carry: a service the
//! registry does not list is unknown at its first answer and followed by
//! nothing, an abandoned first wait and an idle service stop their
//! follower, and past the cap a call is refused naming it.
//!
//! Against a registry that counts its open watches (one per follower
//! task), on tokio's paused clock: deterministic and instant.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::Request;
use mesh_core::ext::with_endpoint_set;
use mesh_core::{BoxError, Endpoint, EndpointSet, MeshError, ServiceName};
use mesh_discover::{
    BoxFuture, BoxStream, Catalog, DiscoverLayer, DiscoveryError, Registry, TooManyServices,
};
use proptest::prelude::*;
use tokio::sync::watch;
use tower::{service_fn, Layer, Service, ServiceExt};

/// Services and their ports, changeable while followed. A listed service
/// whose ports are `None` never answers (a registry that hangs); a service
/// not listed answers with no instance, as Consul's `200 []` does.
#[derive(Default)]
struct Listed {
    services: Mutex<HashMap<String, watch::Sender<Option<Vec<u16>>>>>,
    open_watches: Arc<AtomicUsize>,
}

impl Listed {
    fn set(&self, service: &str, ports: Option<Vec<u16>>) {
        let mut services = self.services.lock().expect("lock");
        services
            .entry(service.to_owned())
            .or_insert_with(|| watch::Sender::new(None))
            .send_replace(ports);
    }

    fn open_watches(&self) -> usize {
        self.open_watches.load(Ordering::SeqCst)
    }
}

fn set_of(service: &ServiceName, ports: &[u16]) -> EndpointSet {
    let endpoints = ports
        .iter()
        .map(|p| Endpoint::builder(SocketAddr::from(([127, 0, 0, 1], *p))).build())
        .collect();
    EndpointSet::new(service.clone(), endpoints)
}

/// Counts a watch as open for as long as its task runs.
struct Open(Arc<AtomicUsize>);

impl Drop for Open {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Registry for Listed {
    fn resolve(&self, _: &ServiceName) -> BoxFuture<Result<EndpointSet, DiscoveryError>> {
        Box::pin(async { Err(DiscoveryError::Unavailable("resolve unused".into())) })
    }

    fn watch(&self, service: &ServiceName) -> BoxStream<Result<EndpointSet, DiscoveryError>> {
        let rx = self
            .services
            .lock()
            .expect("lock")
            .get(service.as_str())
            .map(watch::Sender::subscribe);
        self.open_watches.fetch_add(1, Ordering::SeqCst);
        let open = Open(Arc::clone(&self.open_watches));
        let service = service.clone();
        mesh_discover::watch_task(move |tx| async move {
            let _open = open;
            let Some(mut rx) = rx else {
                let _ = tx.send(Ok(EndpointSet::empty(service))).await;
                std::future::pending::<()>().await;
                return;
            };
            loop {
                let ports = rx.borrow_and_update().clone();
                if let Some(ports) = ports {
                    if tx.send(Ok(set_of(&service, &ports))).await.is_err() {
                        return;
                    }
                }
                if rx.changed().await.is_err() {
                    std::future::pending::<()>().await;
                }
            }
        })
    }

    fn describe(&self) -> String {
        "the test registry".to_owned()
    }
}

type Svc = mesh_discover::DiscoverService<
    tower::util::ServiceFn<fn(Request<()>) -> std::future::Ready<Result<usize, BoxError>>>,
>;

fn endpoints(req: Request<()>) -> std::future::Ready<Result<usize, BoxError>> {
    std::future::ready(Ok(with_endpoint_set(&req, EndpointSet::len).unwrap_or(0)))
}

const FIRST_WAIT: Duration = Duration::from_secs(2);
const IDLE: Duration = Duration::from_secs(60);

fn layer(registry: &Arc<Listed>) -> DiscoverLayer {
    DiscoverLayer::with_registry(Catalog::default(), registry.clone(), FIRST_WAIT)
        .idle_timeout(IDLE)
}

fn svc(layer: &DiscoverLayer) -> Svc {
    layer.layer(service_fn(
        endpoints as fn(Request<()>) -> std::future::Ready<Result<usize, BoxError>>,
    ))
}

fn call(svc: &Svc, host: &str) -> tower::util::Oneshot<Svc, Request<()>> {
    let req = Request::get(format!("http://{host}/"))
        .body(())
        .expect("request");
    svc.clone().oneshot(req)
}

/// Lets aborted follower tasks finish being dropped.
async fn settle() {
    for _ in 0..4 {
        tokio::task::yield_now().await;
    }
    tokio::time::sleep(Duration::from_millis(1)).await;
}

fn name(s: &str) -> ServiceName {
    ServiceName::new(s).expect("name")
}

fn is_unknown(err: &BoxError) -> bool {
    matches!(
        MeshError::find(&**err),
        Some(MeshError::UnknownService { .. })
    )
}

#[tokio::test(start_paused = true)]
async fn an_empty_first_answer_is_an_unknown_service_and_follows_nothing() {
    let registry = Arc::new(Listed::default());
    let layer = layer(&registry);
    let svc = svc(&layer);
    let started = tokio::time::Instant::now();
    let err = call(&svc, "nosuch").await.expect_err("unknown");
    assert!(is_unknown(&err), "{err}");
    assert!(
        started.elapsed() < FIRST_WAIT,
        "failed at the answer, not the deadline"
    );
    settle().await;
    assert!(layer.followed().is_empty(), "{:?}", layer.followed());
    assert_eq!(registry.open_watches(), 0);
    assert!(svc.catalog().get("nosuch").is_none());
}

#[tokio::test(start_paused = true)]
async fn five_thousand_junk_hosts_leave_no_follower_and_a_new_service_still_resolves() {
    let registry = Arc::new(Listed::default());
    let layer = layer(&registry);
    let svc = svc(&layer);
    for wave in 0..100 {
        let mut calls = tokio::task::JoinSet::new();
        for i in 0..50 {
            calls.spawn(call(&svc, &format!("junk-{wave}-{i}")));
        }
        while let Some(answer) = calls.join_next().await {
            let err = answer.expect("task").expect_err("junk");
            assert!(is_unknown(&err), "{err}");
        }
    }
    settle().await;
    assert!(layer.followed().is_empty(), "{:?}", layer.followed());
    assert_eq!(registry.open_watches(), 0);
    assert!(svc.catalog().services().is_empty());

    registry.set("users", Some(vec![1, 2]));
    assert_eq!(call(&svc, "users").await.expect("resolved"), 2);
    assert_eq!(layer.followed(), vec![name("users")]);
}

#[tokio::test(start_paused = true)]
async fn a_dropped_first_caller_removes_its_follower_unless_another_still_waits() {
    let registry = Arc::new(Listed::default());
    registry.set("slow", None);
    let layer = layer(&registry);
    let svc = svc(&layer);

    // Alone: giving up early removes the follower and stops its watch.
    let gave_up = tokio::time::timeout(Duration::from_millis(100), call(&svc, "slow")).await;
    assert!(gave_up.is_err(), "the registry never answers");
    settle().await;
    assert!(layer.followed().is_empty(), "{:?}", layer.followed());
    assert_eq!(registry.open_watches(), 0);

    // Two callers: the first gives up, the second still waits and gets
    // the answer when it comes.
    let patient = tokio::spawn(call(&svc, "slow"));
    let hasty = tokio::time::timeout(Duration::from_millis(100), call(&svc, "slow")).await;
    assert!(hasty.is_err());
    settle().await;
    assert_eq!(layer.followed(), vec![name("slow")]);
    assert_eq!(registry.open_watches(), 1);
    registry.set("slow", Some(vec![7]));
    assert_eq!(patient.await.expect("task").expect("resolved"), 1);
}

#[tokio::test(start_paused = true)]
async fn a_first_call_without_answer_names_the_registry_and_leaves_no_follower() {
    let registry = Arc::new(Listed::default());
    registry.set("slow", None);
    let layer = layer(&registry);
    let svc = svc(&layer);
    let err = call(&svc, "slow").await.expect_err("no answer");
    match MeshError::find(&*err) {
        Some(MeshError::DiscoveryTimeout {
            service,
            registry,
            after,
        }) => {
            assert_eq!(service.as_str(), "slow");
            assert_eq!(registry, "the test registry");
            assert_eq!(*after, FIRST_WAIT);
        }
        other => panic!("{other:?}: {err}"),
    }
    assert!(err.to_string().contains("the test registry"), "{err}");
    settle().await;
    assert!(layer.followed().is_empty());
    assert_eq!(registry.open_watches(), 0);
}

#[tokio::test(start_paused = true)]
async fn an_idle_service_is_no_longer_followed_and_comes_back_on_its_next_call() {
    let registry = Arc::new(Listed::default());
    registry.set("users", Some(vec![1, 2]));
    let layer = layer(&registry);
    let svc = svc(&layer);
    assert_eq!(call(&svc, "users").await.expect("resolved"), 2);

    // Calls within the idle timeout keep it followed.
    for _ in 0..6 {
        tokio::time::sleep(IDLE / 2).await;
        assert_eq!(call(&svc, "users").await.expect("cached"), 2);
    }
    assert_eq!(layer.followed(), vec![name("users")]);
    assert_eq!(registry.open_watches(), 1);

    // No call for the idle timeout: the follower and the set are gone.
    tokio::time::sleep(IDLE + Duration::from_millis(10)).await;
    settle().await;
    assert!(layer.followed().is_empty());
    assert_eq!(registry.open_watches(), 0);
    assert!(svc.catalog().get("users").is_none());

    // The next call follows it again.
    registry.set("users", Some(vec![1, 2, 3]));
    assert_eq!(call(&svc, "users").await.expect("resolved"), 3);
    assert_eq!(registry.open_watches(), 1);
}

#[tokio::test(start_paused = true)]
async fn once_known_an_empty_answer_is_a_change_and_stays_followed() {
    let registry = Arc::new(Listed::default());
    registry.set("users", Some(vec![1]));
    let layer = layer(&registry);
    let svc = svc(&layer);
    assert_eq!(call(&svc, "users").await.expect("resolved"), 1);
    registry.set("users", Some(vec![])); // scaled to zero
    settle().await;
    assert_eq!(call(&svc, "users").await.expect("known, empty"), 0);
    assert_eq!(layer.followed(), vec![name("users")]);
    registry.set("users", Some(vec![1, 2]));
    settle().await;
    assert_eq!(call(&svc, "users").await.expect("back"), 2);
}

#[tokio::test(start_paused = true)]
async fn past_the_cap_idle_services_make_room_else_the_call_is_refused_naming_the_cap() {
    let registry = Arc::new(Listed::default());
    for s in ["a", "b", "c"] {
        registry.set(s, Some(vec![1]));
    }
    let layer = layer(&registry).max_followed(2);
    let svc = svc(&layer);
    call(&svc, "a").await.expect("a");
    call(&svc, "b").await.expect("b");

    let err = call(&svc, "c").await.expect_err("full");
    let full = err
        .downcast_ref::<TooManyServices>()
        .unwrap_or_else(|| panic!("{err}"));
    assert_eq!(full.limit, 2);
    let text = err.to_string();
    assert!(
        text.contains("\"c\"") && text.contains("2 services") && text.contains("max_followed"),
        "{text}"
    );
    assert_eq!(registry.open_watches(), 2);

    // `b` stays busy, `a` goes idle: `a` makes room for `c`.
    tokio::time::sleep(IDLE / 2).await;
    call(&svc, "b").await.expect("b");
    tokio::time::sleep(IDLE / 2 + Duration::from_millis(10)).await;
    // Evicted on insert even before its own task notices.
    call(&svc, "c").await.expect("room was made");
    settle().await;
    assert_eq!(layer.followed(), vec![name("b"), name("c")]);
    assert_eq!(registry.open_watches(), 2);
    assert!(svc.catalog().get("a").is_none());
}

/// One step of a random workload.
#[derive(Clone, Debug)]
enum Step {
    /// Calls host `n` (below 4: listed; otherwise junk).
    Call(u8),
    /// Calls host `n` and gives up after the given milliseconds.
    GiveUp(u8, u16),
    /// Lets time pass.
    Wait(Duration),
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        4 => (0u8..12).prop_map(Step::Call),
        1 => (0u8..12, 0u16..3000).prop_map(|(n, ms)| Step::GiveUp(n, ms)),
        2 => (0u64..90_000).prop_map(|ms| Step::Wait(Duration::from_millis(ms))),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// Whatever the calls, the followed services are listed ones, called
    /// within the idle timeout, within the cap, each with one watch.
    #[test]
    fn followers_are_only_listed_recently_called_services(steps in proptest::collection::vec(step(), 1..40)) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .expect("runtime");
        rt.block_on(async move {
            let registry = Arc::new(Listed::default());
            for n in 0..4 {
                registry.set(&format!("s{n}"), Some(vec![1]));
            }
            let layer = layer(&registry).max_followed(3);
            let mut svc = svc(&layer);
            let mut last_call: HashMap<ServiceName, tokio::time::Instant> = HashMap::new();
            for step in steps {
                match step {
                    Step::Call(n) => {
                        let host = format!("s{n}");
                        let answer = call(&svc, &host).await;
                        if n < 4 {
                            if let Err(err) = &answer {
                                // Only the cap may refuse a listed service.
                                prop_assert!(err.downcast_ref::<TooManyServices>().is_some(), "{err}");
                            }
                        } else {
                            prop_assert!(answer.is_err());
                        }
                        last_call.insert(name(&host), tokio::time::Instant::now());
                    }
                    Step::GiveUp(n, ms) => {
                        let host = format!("s{n}");
                        let mut call = std::pin::pin!(svc.call(
                            Request::get(format!("http://{host}/")).body(()).expect("request"),
                        ));
                        let _ = tokio::time::timeout(Duration::from_millis(u64::from(ms)), &mut call).await;
                        last_call.insert(name(&host), tokio::time::Instant::now());
                    }
                    Step::Wait(d) => tokio::time::sleep(d).await,
                }
                settle().await;
                let followed = layer.followed();
                prop_assert!(followed.len() <= 3, "{followed:?}");
                prop_assert_eq!(registry.open_watches(), followed.len());
                for service in &followed {
                    let n: u8 = service.as_str()[1..].parse().expect("s<n>");
                    prop_assert!(n < 4, "junk {service} followed");
                    let since = last_call.get(service).map(|t| t.elapsed());
                    prop_assert!(since.is_some_and(|s| s <= IDLE + Duration::from_millis(5)), "{service} idle for {since:?}");
                }
            }
            Ok(())
        })?;
    }
}
