//! A check URL's password is used, never shown: an HTTP check of
//! `http://admin:s3cret@127.0.0.1:<port>/` authenticates with Basic
//! against a real axum server on loopback, and when it fails neither its
//! error, the report, the served details, Debug output, events nor
//! tracing show `s3cret`.

use std::fmt::Write as _;
use std::sync::{Arc, Mutex};

use axum::routing::get;
use axum::Router;
use http::{HeaderMap, StatusCode};
use mesh_core::{EventBus, Probe};
use mesh_health::{checks, HealthCheck, HealthCheckManager, HealthLayer, ProbeClient};
use mesh_testkit::net::free_port;
use tower::{Layer, ServiceExt};

const PASSWORD: &str = "s3cret";

/// A server on 127.0.0.1 whose `/` wants `admin:s3cret` by Basic auth.
async fn guarded_server() -> std::net::SocketAddr {
    let app = Router::new().route(
        "/",
        get(|headers: HeaderMap| async move {
            // base64("admin:s3cret")
            match headers.get(http::header::AUTHORIZATION) {
                Some(v) if v == "Basic YWRtaW46czNjcmV0" => StatusCode::OK,
                _ => StatusCode::UNAUTHORIZED,
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

/// Every tracing event's fields, as text.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<String>>);

struct Fields<'a>(&'a mut String);

impl tracing::field::Visit for Fields<'_> {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        let _ = write!(self.0, " {}={value:?}", field.name());
    }
}

impl tracing::Subscriber for Captured {
    fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        tracing::span::Id::from_u64(1)
    }
    fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
    fn event(&self, event: &tracing::Event<'_>) {
        if let Ok(mut text) = self.0.lock() {
            event.record(&mut Fields(&mut text));
            text.push('\n');
        }
    }
    fn enter(&self, _: &tracing::span::Id) {}
    fn exit(&self, _: &tracing::span::Id) {}
}

#[tokio::test]
async fn the_password_of_a_check_url_is_sent_as_basic_auth_and_never_shown() {
    // The current-thread runtime runs the check tasks on this thread, so
    // this thread's subscriber sees their events.
    let logs = Captured::default();
    let _guard = tracing::subscriber::set_default(logs.clone());

    let guarded = guarded_server().await;
    // Bound, then released: nothing listens there.
    let closed = free_port();
    let url = |addr: String| {
        format!("http://admin:{PASSWORD}@{addr}/")
            .parse()
            .expect("url")
    };
    let check = |name: &str, url| {
        HealthCheck::builder(name, checks::http_get(url, checks::HttpExpect::default()))
            .probes([Probe::Readiness])
            .failure_threshold(1)
            .build()
            .expect("check")
    };
    let authenticated = check("authenticated", url(guarded.to_string()));
    let refused = check("refused", url(format!("127.0.0.1:{closed}")));
    let wrong = HealthCheck::builder(
        "wrong-password",
        checks::http_get_with(
            ProbeClient::plaintext(),
            format!("http://admin:n0t-{PASSWORD}@{guarded}/")
                .parse()
                .expect("url"),
            checks::HttpExpect::default(),
        ),
    )
    .failure_threshold(1)
    .build()
    .expect("check");
    let debug = format!("{refused:?} {wrong:?}");

    let bus = EventBus::new(64);
    let mut events = bus.subscribe();
    let manager = HealthCheckManager::builder()
        .check(authenticated)
        .check(refused)
        .check(wrong)
        .events(bus)
        .build()
        .expect("manager");
    manager.run_once().await;

    let report = manager.report(Probe::Readiness);
    let error = |name: &str| {
        report
            .checks
            .iter()
            .find(|c| c.name == name)
            .and_then(|c| c.last_error.clone())
    };
    assert_eq!(error("authenticated"), None, "the credentials were sent");
    let refused_error = error("refused").expect("a closed port fails");
    assert!(
        refused_error.contains(&format!("GET http://admin:***@127.0.0.1:{closed}/")),
        "the URL is still named: {refused_error}"
    );
    let wrong_error = error("wrong-password").expect("401 fails");
    assert!(wrong_error.contains("401"), "{wrong_error}");

    let mut shown = format!("{debug}\n{report:?}\n{}\n", serde_json::json!(report));
    while let Ok(event) = events.try_recv() {
        writeln!(shown, "{event:?}").expect("write");
    }
    let app = tower::service_fn(|_req: http::Request<()>| async {
        Ok::<_, std::convert::Infallible>(http::Response::new(
            http_body_util::Empty::<bytes::Bytes>::new(),
        ))
    });
    let served = HealthLayer::new(manager.clone())
        .details(true)
        .layer(app)
        .oneshot(http::Request::get("/health/ready").body(()).expect("req"))
        .await
        .expect("answer");
    let body = http_body_util::BodyExt::collect(served.into_body())
        .await
        .expect("body")
        .to_bytes();
    shown.push_str(&String::from_utf8_lossy(&body));
    let logged = logs.0.lock().expect("logs").clone();
    assert!(
        logged.contains("admin:***@"),
        "the failure was logged: {logged}"
    );
    shown.push_str(&logged);

    assert!(
        shown.contains("HealthCheckFailed"),
        "events were published: {shown}"
    );
    assert!(shown.contains("admin:***@"), "{shown}");
    assert!(!shown.contains(PASSWORD), "a password leaked: {shown}");
}
