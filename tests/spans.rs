//! Spans against real hyper servers on 127.0.0.1: a call through a
//! hand-assembled stack (Retry, Discover, Balance, Breaker over hyper-util's
//! client) opens one `mesh.call` span with one `mesh.attempt` child per
//! attempt, each carrying OpenTelemetry's HTTP client fields; a subscriber
//! that panics loses no count. A `MeshClient` built from a file gives the
//! same tree.

use std::convert::Infallible;
use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use mesh::prelude::*;
use tower::{ServiceBuilder, ServiceExt};
use tracing::span::{Attributes, Id};
use tracing::Subscriber;
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};

#[path = "support/span_capture.rs"]
#[allow(dead_code)]
mod span_capture;

use span_capture::Capture;

/// A hyper server on 127.0.0.1 answering `statuses` in turn (the last one
/// for ever after).
async fn server(statuses: &'static [u16]) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(AtomicUsize::new(0));
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let seen = Arc::clone(&seen);
            let service = hyper::service::service_fn(move |_req: Request<Incoming>| {
                let n = seen.fetch_add(1, Ordering::SeqCst);
                let status = statuses[n.min(statuses.len() - 1)];
                async move {
                    let mut response = Response::new(Full::new(Bytes::from_static(b"ok")));
                    *response.status_mut() = StatusCode::from_u16(status).unwrap();
                    Ok::<_, Infallible>(response)
                }
            });
            tokio::spawn(
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service),
            );
        }
    });
    addr
}

/// Retry (two retries, 1 ms apart), Discover, Balance and a per-endpoint
/// Breaker over hyper-util's client, for the service `users` at `addr`.
fn stack(
    addr: SocketAddr,
) -> impl tower::Service<
    Request<Full<Bytes>>,
    Response = Response<impl http_body::Body<Data = Bytes, Error: fmt::Debug>>,
    Error = BoxError,
> + Clone {
    let registry = StaticRegistry::builder()
        .service("users", [addr.to_string()])
        .build()
        .expect("static list");
    let retry = RetryLayer::new(
        RetryConfig::builder()
            .max_retries(2)
            .backoff(Backoff::constant(Duration::from_millis(1)))
            .build()
            .expect("retry config"),
    );
    let breaker = BreakerLayer::new(
        BreakerConfig::builder()
            .scope(BreakerScope::Endpoint)
            .build()
            .expect("breaker config"),
    );
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    ServiceBuilder::new()
        .layer(retry)
        .layer(DiscoverLayer::new(registry.catalog()))
        .layer(BalanceLayer::round_robin())
        .layer(breaker)
        .service(client)
}

fn get() -> Request<Full<Bytes>> {
    Request::get("http://users/api/users")
        .body(Full::new(Bytes::new()))
        .unwrap()
}

#[tokio::test]
async fn a_call_with_one_retry_has_one_call_span_with_two_attempt_children() {
    let capture = Capture::default();
    let subscriber = tracing_subscriber::registry().with(capture.clone());
    let _default = tracing::subscriber::set_default(subscriber);
    let addr = server(&[503, 200]).await;

    let response = stack(addr).oneshot(get()).await.expect("answered");
    assert_eq!(response.status(), StatusCode::OK);
    response.into_body().collect().await.expect("body");

    let calls = capture.named("mesh.call");
    assert_eq!(calls.len(), 1, "{calls:#?}");
    let call = &calls[0];
    assert_eq!(call.field("mesh.service"), Some("users"));
    assert_eq!(call.field("http.request.method"), Some("GET"));
    assert_eq!(call.field("url.path"), Some("/api/users"));
    assert_eq!(call.field("http.response.status_code"), Some("200"));
    assert_eq!(call.field("error.type"), None);

    let attempts = capture.named("mesh.attempt");
    assert_eq!(attempts.len(), 2, "{attempts:#?}");
    for attempt in &attempts {
        assert_eq!(attempt.parent, Some(call.id), "{attempt:#?}");
        assert_eq!(attempt.field("otel.kind"), Some("client"));
        assert_eq!(attempt.field("http.request.method"), Some("GET"));
        assert_eq!(attempt.field("server.address"), Some("127.0.0.1"));
        let port = addr.port().to_string();
        assert_eq!(attempt.field("server.port"), Some(port.as_str()));
        assert_eq!(
            attempt.field("mesh.endpoint"),
            Some(addr.to_string().as_str())
        );
        assert_eq!(attempt.field("mesh.breaker.state"), Some("closed"));
    }
    let (first, second) = (&attempts[0], &attempts[1]);
    assert_eq!(first.field("mesh.attempt"), Some("1"));
    assert_eq!(first.field("http.request.resend_count"), None);
    assert_eq!(first.field("mesh.retry_reason"), None);
    assert_eq!(first.field("http.response.status_code"), Some("503"));
    assert_eq!(first.field("error.type"), Some("503"));
    assert_eq!(first.field("mesh.outcome"), Some("failure"));

    assert_eq!(second.field("mesh.attempt"), Some("2"));
    assert_eq!(second.field("http.request.resend_count"), Some("1"));
    assert_eq!(second.field("mesh.retry_reason"), Some("status 503"));
    assert_eq!(second.field("http.response.status_code"), Some("200"));
    assert_eq!(second.field("error.type"), None);
    assert_eq!(second.field("mesh.outcome"), Some("success"));
}

#[tokio::test]
async fn a_call_that_fails_to_connect_names_the_error_type_on_every_attempt() {
    let capture = Capture::default();
    let subscriber = tracing_subscriber::registry().with(capture.clone());
    let _default = tracing::subscriber::set_default(subscriber);
    // A port nothing listens on.
    let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = closed.local_addr().unwrap();
    drop(closed);

    let Err(error) = stack(addr).oneshot(get()).await else {
        panic!("nothing listens, yet an answer came");
    };
    assert!(!error.to_string().is_empty());

    let calls = capture.named("mesh.call");
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].field("otel.status_code"), Some("ERROR"));
    assert_eq!(calls[0].field("error.type"), Some("connect"));
    let attempts = capture.named("mesh.attempt");
    assert_eq!(attempts.len(), 3, "{attempts:#?}");
    for attempt in &attempts {
        assert_eq!(attempt.parent, Some(calls[0].id));
        assert_eq!(attempt.field("mesh.outcome"), Some("error"));
        assert_eq!(attempt.field("error.type"), Some("connect"));
        assert_eq!(attempt.field("server.address"), Some("127.0.0.1"));
    }
    assert_eq!(
        attempts[2].field("mesh.retry_reason"),
        Some("connect error")
    );
}

/// A layer that panics when the attempt's span opens.
struct Panicking;

impl<S: Subscriber> Layer<S> for Panicking {
    fn on_new_span(&self, attrs: &Attributes<'_>, _id: &Id, _ctx: Context<'_, S>) {
        if attrs.metadata().name() == "mesh.attempt" {
            panic!("a subscriber that panics");
        }
    }
}

#[tokio::test]
async fn a_subscriber_that_panics_leaves_no_count_behind() {
    let addr = server(&[200]).await;
    let registry = StaticRegistry::builder()
        .service("users", [addr.to_string()])
        .build()
        .expect("static list");
    let catalog = registry.catalog();
    let retry = RetryLayer::default();
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let stack = ServiceBuilder::new()
        .layer(retry.clone())
        .layer(DiscoverLayer::new(catalog.clone()))
        .layer(BalanceLayer::round_robin())
        .service(client);

    let panicked = {
        let stack = stack.clone();
        tokio::spawn(async move {
            let subscriber = tracing_subscriber::registry().with(Panicking);
            let _default = tracing::subscriber::set_default(subscriber);
            stack.oneshot(get()).await.map(|_| ())
        })
        .await
    };
    assert!(panicked.expect_err("the subscriber panicked").is_panic());

    // Without it, the same stack still answers, and the balancer counts
    // nothing in flight: the panicked call's count was given back.
    let response = stack.oneshot(get()).await.expect("answered");
    response.into_body().collect().await.expect("body");
    let endpoints = catalog.get("users").expect("discovered");
    let in_flight: u32 = endpoints.iter().map(|e| e.state().in_flight()).sum();
    assert_eq!(in_flight, 0);
    assert_eq!(retry.stats().requests, 2);
}

#[tokio::test]
async fn a_mesh_client_call_with_one_retry_has_the_same_span_tree() {
    let capture = Capture::default();
    let subscriber = tracing_subscriber::registry().with(capture.clone());
    let _default = tracing::subscriber::set_default(subscriber);
    let addr = server(&[503, 200]).await;
    let config = MeshConfig::from_toml_str(&format!(
        "[service]\nname = \"api-gateway\"\n[discovery]\nkind = \"static\"\n\
         services = {{ users = [\"{addr}\"] }}\n"
    ))
    .expect("config");
    let client = MeshClient::from_config(config).await.expect("client");

    let response = client
        .get("users", "/api/users", CallOptions::default())
        .await
        .expect("answered");
    assert_eq!(response.status(), StatusCode::OK);
    response.into_body().collect().await.expect("body");

    let calls = capture.named("mesh.call");
    assert_eq!(calls.len(), 1, "{calls:#?}");
    let call = &calls[0];
    assert_eq!(call.field("mesh.service"), Some("users"));
    assert_eq!(call.field("url.path"), Some("/api/users"));
    assert_eq!(call.field("http.response.status_code"), Some("200"));
    let attempts = capture.named("mesh.attempt");
    assert_eq!(attempts.len(), 2, "{attempts:#?}");
    assert!(attempts.iter().all(|a| a.parent == Some(call.id)));
    assert_eq!(attempts[0].field("http.response.status_code"), Some("503"));
    assert_eq!(attempts[1].field("mesh.retry_reason"), Some("status 503"));
    assert_eq!(
        attempts[1].field("mesh.endpoint"),
        Some(addr.to_string().as_str())
    );
}
