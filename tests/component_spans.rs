//! The spans of the mesh's background work and of its routes, against
//! real files and real loopback servers: a file registry's answers
//! (`mesh.discovery.update`), active probes of upstream endpoints
//! (`mesh.health.probe`), certificate files rotated
//! (`mesh.tls.rotate`), and the route and method policy that served a
//! `MeshClient`'s call (`mesh.route`, `mesh.method_policy` on
//! `mesh.call`). A subscriber that lags slows calls down but loses the
//! client none of its counts.
//!
//! The capture keeps every span with its parent and fields. It is this
//! file's own (`tests/spans.rs` has its twin): the package shares no test
//! helpers between its binaries.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::Arc;
use std::time::Duration;

use axum::http::StatusCode;
use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use mesh::discover::{Catalog, FileRegistry};
use mesh::health::{UpstreamCheckConfig, UpstreamProbe};
use mesh::prelude::*;
use mesh::tls::PemSource;
use mesh_core::Health;
use mesh_retry::MethodPolicyNames;
use mesh_testkit::fs::{write_atomically, TempDir};
use mesh_testkit::pki::{Ca, Leaf};
use tower::{ServiceBuilder, ServiceExt};
use tracing::span::{Attributes, Id};
use tracing::{Event, Subscriber};
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};

/// How long a test waits for background work to show in its spans before
/// it fails: generous, for a loaded machine.
const PATIENCE: Duration = Duration::from_secs(20);

#[path = "support/span_capture.rs"]
#[allow(dead_code)]
mod span_capture;

use span_capture::{Capture, Captured};

/// The first span `name` that `wanted` accepts, once background work has
/// opened (and recorded) it.
async fn wait_for(capture: &Capture, name: &str, wanted: impl Fn(&Captured) -> bool) -> Captured {
    let started = tokio::time::Instant::now();
    loop {
        if let Some(found) = capture.named(name).into_iter().find(&wanted) {
            return found;
        }
        assert!(
            started.elapsed() < PATIENCE,
            "no such {name} span within {PATIENCE:?}: {:#?}",
            capture.named(name)
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// An axum server on 127.0.0.1 answering `/health` with `status`.
async fn health_server(status: StatusCode) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app =
        axum::Router::new().route("/health", axum::routing::get(move || async move { status }));
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

/// An axum server on 127.0.0.1 answering every request `ok`, counting them
/// in `hits`.
async fn ok_server(hits: Arc<AtomicUsize>) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = axum::Router::new().fallback(move || {
        hits.fetch_add(1, Ordering::SeqCst);
        async { "ok" }
    });
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

/// A services file listing `addresses` for `users`.
fn services_json(addresses: &[&str]) -> String {
    let listed: Vec<String> = addresses.iter().map(|a| format!("{a:?}")).collect();
    format!(
        r#"{{ "services": {{ "users": [{}] }} }}"#,
        listed.join(", ")
    )
}

#[tokio::test]
async fn each_answer_of_a_file_registry_is_a_discovery_span_with_the_service_and_its_result() {
    let capture = Capture::default();
    let _default = capture.install();
    let dir = TempDir::new("component-spans-discovery");
    let file = dir.path("services.json");
    write_atomically(&file, services_json(&["127.0.0.1:7001", "127.0.0.1:7002"]));
    let catalog = Catalog::new(EventBus::new(16));
    let registry = FileRegistry::new(&file).check_every(Duration::from_millis(10));
    let users = ServiceName::new("users").unwrap();
    let _follow = catalog.follow(Arc::new(registry), users, Duration::from_millis(50));

    let first = wait_for(&capture, "mesh.discovery.update", |s| {
        s.field("mesh.outcome").is_some()
    })
    .await;
    assert_eq!(first.parent, None, "a background root: {first:#?}");
    assert_eq!(first.field("mesh.service"), Some("users"));
    assert_eq!(first.field("mesh.outcome"), Some("answered"));
    assert_eq!(first.field("mesh.endpoints"), Some("2"));
    assert_eq!(first.field("error.type"), None);

    // The file is rewritten with a third endpoint: a new answer.
    let three = ["127.0.0.1:7001", "127.0.0.1:7002", "127.0.0.1:7003"];
    write_atomically(&file, services_json(&three));
    let grown = wait_for(&capture, "mesh.discovery.update", |s| {
        s.field("mesh.endpoints") == Some("3")
    })
    .await;
    assert_eq!(grown.field("mesh.service"), Some("users"));
    assert_eq!(grown.field("mesh.outcome"), Some("answered"));
    assert_eq!(catalog.get("users").map(|set| set.len()), Some(3));

    // A file that does not parse is a failed answer, and the last good set
    // stays.
    write_atomically(&file, "{ \"services\": ");
    let failed = wait_for(&capture, "mesh.discovery.update", |s| {
        s.field("mesh.outcome") == Some("failed")
    })
    .await;
    assert_eq!(failed.parent, None);
    assert_eq!(failed.field("mesh.service"), Some("users"));
    assert_eq!(failed.field("error.type"), Some("malformed"));
    assert_eq!(failed.field("mesh.endpoints"), None, "{failed:#?}");
    assert_eq!(catalog.get("users").map(|set| set.len()), Some(3));
}

#[tokio::test]
async fn an_upstream_probe_is_a_span_naming_the_endpoint_and_its_verdict() {
    let capture = Capture::default();
    let _default = capture.install();
    let passing = health_server(StatusCode::OK).await;
    let failing = health_server(StatusCode::SERVICE_UNAVAILABLE).await;
    let registry = StaticRegistry::builder()
        .service("users", [passing.to_string(), failing.to_string()])
        .build()
        .expect("static list");
    let catalog = registry.catalog();
    let config = UpstreamCheckConfig {
        probe: UpstreamProbe::Http {
            path: "/health".to_owned(),
        },
        interval: Duration::from_millis(50),
        jitter: Duration::ZERO,
        timeout: Duration::from_secs(10),
        healthy_threshold: 1,
        unhealthy_threshold: 1,
        unhealthy_until_checked: false,
    };
    let source = catalog.clone();
    let checker = UpstreamHealthChecker::spawn(
        ServiceName::new("users").unwrap(),
        config,
        move || source.get("users"),
        None,
    )
    .expect("checker");

    let judged = |addr: SocketAddr| {
        let id = addr.to_string();
        move |s: &Captured| {
            s.field("mesh.endpoint") == Some(id.as_str()) && s.field("mesh.outcome").is_some()
        }
    };
    let passed = wait_for(&capture, "mesh.health.probe", judged(passing)).await;
    assert_eq!(passed.parent, None, "a background root: {passed:#?}");
    assert_eq!(passed.field("mesh.service"), Some("users"));
    assert_eq!(passed.field("server.address"), Some("127.0.0.1"));
    let port = passing.port().to_string();
    assert_eq!(passed.field("server.port"), Some(port.as_str()));
    assert_eq!(passed.field("mesh.outcome"), Some("success"));
    assert_eq!(passed.field("error.type"), None);

    let failed = wait_for(&capture, "mesh.health.probe", judged(failing)).await;
    assert_eq!(failed.parent, None);
    assert_eq!(failed.field("mesh.service"), Some("users"));
    let port = failing.port().to_string();
    assert_eq!(failed.field("server.port"), Some(port.as_str()));
    assert_eq!(failed.field("mesh.outcome"), Some("failure"));
    assert_eq!(failed.field("error.type"), Some("probe_failed"));

    // The spans tell the verdicts the checker wrote for the balancer.
    let health = |addr: SocketAddr| {
        let set = catalog.get("users").expect("listed");
        let id = addr.to_string();
        let endpoint = set.endpoints().iter().find(|e| e.id().to_string() == id);
        endpoint.expect("listed").state().health()
    };
    let started = tokio::time::Instant::now();
    while (health(passing), health(failing)) != (Health::Healthy, Health::Unhealthy) {
        assert!(started.elapsed() < PATIENCE, "never judged");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    drop(checker);
}

#[tokio::test]
async fn rotated_certificate_files_are_a_span_naming_the_new_identity_or_why_they_were_refused() {
    let capture = Capture::default();
    let _default = capture.install();
    let ca = Ca::new("mesh CA");
    let dir = TempDir::new("component-spans-tls");
    let [cert, key, ca_file] = dir.write("tls", &ca.issue(Leaf::service("users")), &ca.pem);
    // Reloaded here rather than by `watch`, whose reloads run on tokio's
    // blocking threads, out of reach of this thread's subscriber.
    let credentials = Credentials::load(PemSource::files(&cert, &key, &ca_file)).expect("load");
    assert!(!credentials.reload().expect("unchanged"), "nothing changed");
    assert!(
        capture.named("mesh.tls.rotate").is_empty(),
        "no rotation yet"
    );
    let sa = |name: &str| format!("spiffe://cluster.local/ns/default/sa/{name}");

    // New files: a rotation to the new identity.
    dir.write("tls", &ca.issue(Leaf::service("orders")), &ca.pem);
    assert!(credentials.reload().expect("rotated"));
    let spans = capture.named("mesh.tls.rotate");
    assert_eq!(spans.len(), 1, "{spans:#?}");
    let rotated = &spans[0];
    assert_eq!(rotated.parent, None, "a background root: {rotated:#?}");
    assert_eq!(rotated.field("mesh.outcome"), Some("rotated"));
    assert_eq!(
        rotated.field("mesh.tls.identity"),
        Some(sa("orders").as_str())
    );
    let not_after: i64 = rotated
        .field("mesh.tls.not_after")
        .and_then(|t| t.parse().ok())
        .expect("the new certificate's expiry");
    assert_eq!(not_after, credentials.current().not_after_unix());
    assert_eq!(rotated.field("error.type"), None);

    // A certificate written without its key does not fit the old key:
    // checked again while the writer may not be done (for a second),
    // then refused.
    let payments = ca.issue(Leaf::service("payments"));
    write_atomically(&cert, &payments.cert_pem);
    credentials
        .reload()
        .expect_err("a key that is not the certificate's");
    let unsettled = capture.named("mesh.tls.rotate").pop().expect("a span");
    assert_eq!(unsettled.field("mesh.outcome"), Some("unsettled"));
    assert_eq!(unsettled.field("error.type"), Some("key_mismatch"));
    assert_eq!(unsettled.field("mesh.tls.identity"), None);
    let started = tokio::time::Instant::now();
    let refused = loop {
        tokio::time::sleep(Duration::from_millis(50)).await;
        credentials
            .reload()
            .expect_err("still not the certificate's key");
        let last = capture.named("mesh.tls.rotate").pop().expect("a span");
        if last.field("mesh.outcome") != Some("unsettled") {
            break last;
        }
        assert!(started.elapsed() < PATIENCE, "never settled: {last:#?}");
    };
    assert_eq!(refused.parent, None);
    assert_eq!(refused.field("mesh.outcome"), Some("refused"));
    assert_eq!(refused.field("error.type"), Some("key_mismatch"));
    assert_eq!(refused.field("mesh.tls.identity"), None);
    assert_eq!(
        credentials.current().identity(),
        Some(sa("orders").as_str()),
        "the material in use stays"
    );
}

/// Names the one method policy of [`a_stack_assembled_by_hand_leaves_the_route_empty_until_it_is_named`].
struct Search;

impl MethodPolicyNames for Search {
    fn policy_for(&self, _method: &http::Method, path: &str) -> Option<&str> {
        path.starts_with("/api/search").then_some("/api/search")
    }
}

fn get(path: &str) -> Request<Full<Bytes>> {
    Request::get(format!("http://orders{path}"))
        .body(Full::new(Bytes::new()))
        .unwrap()
}

#[tokio::test]
async fn a_stack_assembled_by_hand_leaves_the_route_empty_until_it_is_named() {
    let capture = Capture::default();
    let _default = capture.install();
    let retry = RetryLayer::default();
    let stack = ServiceBuilder::new()
        .layer(retry.clone())
        .service(tower::service_fn(|_req: Request<Full<Bytes>>| async {
            Ok::<_, BoxError>(Response::new(Full::new(Bytes::from_static(b"ok"))))
        }));

    stack
        .clone()
        .oneshot(get("/api/search/q"))
        .await
        .expect("answered");
    assert!(retry.name_route("orders", Some(Arc::new(Search))));
    assert!(!retry.name_route("users", None), "a route is named once");
    stack
        .clone()
        .oneshot(get("/api/search/q"))
        .await
        .expect("answered");
    stack.oneshot(get("/api/users")).await.expect("answered");

    let calls = capture.named("mesh.call");
    assert_eq!(calls.len(), 3, "{calls:#?}");
    assert_eq!(calls[0].field("mesh.route"), None);
    assert_eq!(calls[0].field("mesh.method_policy"), None);
    assert_eq!(calls[1].field("mesh.route"), Some("orders"));
    assert_eq!(calls[1].field("mesh.method_policy"), Some("/api/search"));
    assert_eq!(calls[2].field("mesh.route"), Some("orders"));
    assert_eq!(calls[2].field("mesh.method_policy"), None);
}

/// A client of `users` (on the shared default layers) and `orders` (with
/// settings, and so layers, of its own, and two method policies), both at
/// `addr`.
async fn two_route_client(addr: SocketAddr) -> MeshClient {
    let config = MeshConfig::from_toml_str(&format!(
        r#"
timeout = "30s"

[service]
name = "api-gateway"

[discovery]
kind = "static"
services = {{ users = ["{addr}"], orders = ["{addr}"] }}

[services.orders]
timeout = "20s"

[[services.orders.methods]]
path = "/api/search"
method = "GET"
timeout = "25s"

[[services.orders.methods]]
path = "/api"
retry = {{ max_attempts = 2 }}
"#
    ))
    .expect("config");
    MeshClient::from_config(config).await.expect("client")
}

#[tokio::test]
async fn a_mesh_client_call_span_names_its_route_as_the_metrics_do_and_the_method_policy_it_matched(
) {
    let capture = Capture::default();
    let _default = capture.install();
    let hits = Arc::new(AtomicUsize::new(0));
    let client = two_route_client(ok_server(Arc::clone(&hits)).await).await;
    let options = CallOptions::default;

    let calls = [
        client.get("users", "/api/users", options()).await,
        client.get("orders", "/api/search/recent", options()).await,
        client.post("orders", "/api/orders", "{}", options()).await,
        client.get("orders", "/about", options()).await,
    ];
    for answer in calls {
        let answer = answer.expect("answered");
        assert_eq!(answer.status(), StatusCode::OK);
        answer.into_body().collect().await.expect("body");
    }

    let spans = capture.named("mesh.call");
    assert_eq!(spans.len(), 4, "{spans:#?}");
    let fields = |s: &Captured| {
        let field = |name| s.field(name).map(str::to_owned);
        (
            field("mesh.service"),
            field("mesh.route"),
            field("mesh.method_policy"),
        )
    };
    let named = |service: &str, route: &str, policy: Option<&str>| {
        (
            Some(service.to_owned()),
            Some(route.to_owned()),
            policy.map(str::to_owned),
        )
    };
    assert_eq!(fields(&spans[0]), named("users", "*", None));
    assert_eq!(
        fields(&spans[1]),
        named("orders", "orders", Some("GET /api/search"))
    );
    assert_eq!(fields(&spans[2]), named("orders", "orders", Some("/api")));
    assert_eq!(fields(&spans[3]), named("orders", "orders", None));
    let attempts = capture.named("mesh.attempt");
    for call in &spans {
        assert!(
            attempts.iter().any(|a| a.parent == Some(call.id)),
            "each call has its attempt: {call:#?}"
        );
    }

    // The routes the spans name are those the metrics count the calls in.
    let requests: BTreeMap<String, u64> = client
        .metrics()
        .routes
        .iter()
        .map(|r| (r.route.clone(), r.retry.requests))
        .collect();
    assert_eq!(requests.get("*"), Some(&1), "{requests:?}");
    assert_eq!(requests.get("orders"), Some(&3), "{requests:?}");
    assert_eq!(hits.load(Ordering::SeqCst), 4);
}

/// A subscriber that lags: each span and event it is shown costs it a
/// millisecond, and it queues what it saw in a small queue nobody drains,
/// dropping what does not fit (as a non-blocking writer that is behind
/// does).
struct Lagging {
    queue: SyncSender<&'static str>,
    dropped: Arc<AtomicUsize>,
    calls_seen: Arc<AtomicUsize>,
}

impl Lagging {
    fn saw(&self, name: &'static str) {
        std::thread::sleep(Duration::from_millis(1));
        if self.queue.try_send(name).is_err() {
            self.dropped.fetch_add(1, Ordering::SeqCst);
        }
    }
}

impl<S: Subscriber> Layer<S> for Lagging {
    fn on_new_span(&self, attrs: &Attributes<'_>, _id: &Id, _ctx: Context<'_, S>) {
        if attrs.metadata().name() == "mesh.call" {
            self.calls_seen.fetch_add(1, Ordering::SeqCst);
        }
        self.saw(attrs.metadata().name());
    }

    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        self.saw(event.metadata().name());
    }
}

#[tokio::test]
async fn a_subscriber_that_lags_slows_calls_but_loses_no_count() {
    const CALLS: usize = 40;
    let (queue, _undrained): (_, Receiver<&'static str>) = sync_channel(4);
    let (dropped, calls_seen) = (Arc::default(), Arc::default());
    let lagging = Lagging {
        queue,
        dropped: Arc::clone(&dropped),
        calls_seen: Arc::clone(&calls_seen),
    };
    let _default = tracing::subscriber::set_default(tracing_subscriber::registry().with(lagging));
    let hits = Arc::new(AtomicUsize::new(0));
    let client = two_route_client(ok_server(Arc::clone(&hits)).await).await;

    // All at once, so calls wait on the subscriber while others are in
    // flight.
    let mut calls = tokio::task::JoinSet::new();
    for n in 0..CALLS {
        let client = client.clone();
        calls.spawn(async move {
            let service = if n % 2 == 0 { "users" } else { "orders" };
            let answer = client
                .get(service, "/api/users", CallOptions::default())
                .await?;
            let status = answer.status();
            answer.into_body().collect().await?;
            Ok::<_, BoxError>(status)
        });
    }
    while let Some(joined) = calls.join_next().await {
        let status = joined.expect("no panic").expect("answered");
        assert_eq!(status, StatusCode::OK);
    }

    assert_eq!(
        calls_seen.load(Ordering::SeqCst),
        CALLS,
        "the subscriber saw every call"
    );
    assert!(
        dropped.load(Ordering::SeqCst) > 0,
        "the subscriber fell behind"
    );
    assert_eq!(hits.load(Ordering::SeqCst), CALLS);
    let metrics = client.metrics();
    assert_eq!(metrics.in_flight, 0);
    let mut routes = BTreeMap::new();
    for route in &metrics.routes {
        let instances = route.services.iter().flat_map(|s| &s.instances);
        let (sent, in_flight) = instances.fold((0, 0), |(sent, in_flight), i| {
            (sent + i.requests, in_flight + i.in_flight)
        });
        assert_eq!(in_flight, 0, "route {}", route.route);
        routes.insert(
            route.route.clone(),
            (route.retry.requests, route.retry.attempts, sent),
        );
    }
    let half = (CALLS / 2) as u64;
    assert_eq!(routes.get("*"), Some(&(half, half, half)), "{routes:?}");
    assert_eq!(
        routes.get("orders"),
        Some(&(half, half, half)),
        "{routes:?}"
    );
}
