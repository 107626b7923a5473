//! W3C trace context across real hyper servers on 127.0.0.1, captured by
//! OpenTelemetry's in-memory exporter: a client calls server A through a
//! tower-mesh stack; A's handler calls server B through a second stack,
//! and B fails the first attempt. One trace from end to end, each server
//! span the child of the attempt that reached it. A malformed incoming
//! `traceparent` starts a new trace and the request still succeeds. A
//! `MeshClient` built from a file carries its trace the same way.

use std::convert::Infallible;
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
use hyper_util::service::TowerToHyperService;
use mesh::health::TraceContextLayer;
use mesh::prelude::*;
use opentelemetry::trace::{SpanId, SpanKind, TraceId, TracerProvider as _};
use opentelemetry::Value;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use tower::{ServiceBuilder, ServiceExt};
use tracing::Instrument;
use tracing_subscriber::layer::SubscriberExt;

type Body = Full<Bytes>;

/// The in-memory exporter behind a tracing subscriber (this thread's
/// default while the guard lives), and the W3C propagator.
fn capture() -> (
    InMemorySpanExporter,
    SdkTracerProvider,
    tracing::subscriber::DefaultGuard,
) {
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    let layer = tracing_opentelemetry::layer().with_tracer(provider.tracer("trace-context-test"));
    let subscriber = tracing_subscriber::registry().with(layer);
    let guard = tracing::subscriber::set_default(subscriber);
    (exporter, provider, guard)
}

/// Serves `service`, wrapped in [`TraceContextLayer`], on 127.0.0.1.
async fn serve<S>(service: S) -> SocketAddr
where
    S: tower::Service<Request<Incoming>, Response = Response<Body>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let service = ServiceBuilder::new()
        .layer(TraceContextLayer::new())
        .service(service);
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let service = TowerToHyperService::new(service.clone());
            tokio::spawn(
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service),
            );
        }
    });
    addr
}

/// A tower-mesh stack (Retry with two retries, Discover, Balance) to the
/// service `name` at `addr`.
fn stack(
    name: &str,
    addr: SocketAddr,
) -> impl tower::Service<
    Request<Body>,
    Response = Response<impl http_body::Body<Data = Bytes, Error: std::fmt::Debug>>,
    Error = BoxError,
    Future: Send,
> + Clone
       + Send
       + 'static {
    let registry = StaticRegistry::builder()
        .service(name, [addr.to_string()])
        .build()
        .expect("static list");
    let retry = RetryLayer::new(
        RetryConfig::builder()
            .max_retries(2)
            .backoff(Backoff::constant(Duration::from_millis(1)))
            .build()
            .expect("retry config"),
    );
    let client = Client::builder(TokioExecutor::new()).build_http::<Body>();
    ServiceBuilder::new()
        .layer(retry)
        .layer(DiscoverLayer::new(registry.catalog()))
        .layer(BalanceLayer::round_robin())
        .service(client)
}

fn text(status: StatusCode, body: &'static str) -> Response<Body> {
    let mut response = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *response.status_mut() = status;
    response
}

fn attribute<'a>(span: &'a SpanData, key: &str) -> Option<&'a Value> {
    span.attributes
        .iter()
        .find(|kv| kv.key.as_str() == key)
        .map(|kv| &kv.value)
}

fn named<'a>(spans: &'a [SpanData], name: &str, kind: SpanKind) -> Vec<&'a SpanData> {
    spans
        .iter()
        .filter(|s| s.name == name && s.span_kind == kind)
        .collect()
}

#[tokio::test]
async fn two_hops_and_one_retry_make_one_trace_with_each_server_under_its_attempt() {
    let (exporter, _provider, _guard) = capture();

    // B: 503 to the first request, 200 after.
    let seen = Arc::new(AtomicUsize::new(0));
    let b = serve(tower::service_fn(move |_req: Request<Incoming>| {
        let first = seen.fetch_add(1, Ordering::SeqCst) == 0;
        async move {
            Ok::<_, Infallible>(match first {
                true => text(StatusCode::SERVICE_UNAVAILABLE, "later"),
                false => text(StatusCode::OK, "from b"),
            })
        }
    }))
    .await;
    // A: calls B through its own stack, inside its server span.
    let to_b = stack("b", b);
    let a = serve(tower::service_fn(move |_req: Request<Incoming>| {
        let to_b = to_b.clone();
        async move {
            let req = Request::get("http://b/inner")
                .body(Body::default())
                .unwrap();
            let response = to_b.oneshot(req).await.expect("b answers");
            let status = response.status();
            response.into_body().collect().await.expect("b's body");
            Ok::<_, Infallible>(text(status, "from a"))
        }
    }))
    .await;

    let root = tracing::info_span!("test.root");
    let response = async {
        let req = Request::get("http://a/outer")
            .body(Body::default())
            .unwrap();
        stack("a", a).oneshot(req).await.expect("a answers")
    }
    .instrument(root.clone())
    .await;
    assert_eq!(response.status(), StatusCode::OK);
    response.into_body().collect().await.expect("a's body");
    drop(root);

    let spans = exporter.get_finished_spans().expect("exported");
    let root = named(&spans, "test.root", SpanKind::Internal);
    assert_eq!(root.len(), 1, "{spans:#?}");
    let trace = root[0].span_context.trace_id();
    assert_ne!(trace, TraceId::INVALID);
    for span in &spans {
        assert_eq!(span.span_context.trace_id(), trace, "{span:#?}");
    }

    // Hop 1: the client's call and its one attempt; A's server span is
    // the attempt's child, across the wire.
    let calls = named(&spans, "mesh.call", SpanKind::Internal);
    assert_eq!(calls.len(), 2, "one call per hop: {spans:#?}");
    let outer = calls
        .iter()
        .find(|c| c.parent_span_id == root[0].span_context.span_id())
        .expect("the client's call is the root's child");
    let attempts = named(&spans, "GET", SpanKind::Client);
    assert_eq!(attempts.len(), 3, "one attempt to A, two to B: {spans:#?}");
    let to_a: Vec<_> = attempts
        .iter()
        .filter(|s| s.parent_span_id == outer.span_context.span_id())
        .collect();
    assert_eq!(to_a.len(), 1);
    let servers = named(&spans, "mesh.server", SpanKind::Server);
    assert_eq!(servers.len(), 3, "A once, B twice: {spans:#?}");
    let at_a: Vec<_> = servers
        .iter()
        .filter(|s| s.parent_span_id == to_a[0].span_context.span_id())
        .collect();
    assert_eq!(at_a.len(), 1);
    assert!(at_a[0].parent_span_is_remote);
    assert_eq!(
        attribute(at_a[0], "url.path").map(|v| v.as_str().into_owned()),
        Some("/outer".to_owned())
    );

    // Hop 2: A's call is its server span's child, with two attempts, each
    // the remote parent of one of B's server spans.
    let inner = calls
        .iter()
        .find(|c| c.parent_span_id == at_a[0].span_context.span_id())
        .expect("A's call is the child of A's server span");
    let mut to_b: Vec<_> = attempts
        .iter()
        .filter(|s| s.parent_span_id == inner.span_context.span_id())
        .collect();
    to_b.sort_by_key(|s| s.start_time);
    assert_eq!(to_b.len(), 2);
    assert_eq!(
        attribute(to_b[0], "http.response.status_code"),
        Some(&Value::I64(503))
    );
    assert_eq!(
        attribute(to_b[1], "http.request.resend_count"),
        Some(&Value::I64(1))
    );
    assert_eq!(
        attribute(to_b[1], "http.response.status_code"),
        Some(&Value::I64(200))
    );
    for attempt in &to_b {
        let children: Vec<_> = servers
            .iter()
            .filter(|s| s.parent_span_id == attempt.span_context.span_id())
            .collect();
        assert_eq!(children.len(), 1, "B's span under each attempt: {spans:#?}");
        assert!(children[0].parent_span_is_remote);
    }
}

#[tokio::test]
async fn a_malformed_traceparent_starts_a_new_trace_and_the_request_succeeds() {
    let (exporter, _provider, _guard) = capture();
    let addr = serve(tower::service_fn(|_req: Request<Incoming>| async {
        Ok::<_, Infallible>(text(StatusCode::OK, "ok"))
    }))
    .await;
    let client = Client::builder(TokioExecutor::new()).build_http::<Body>();
    let malformed = [
        "not-a-traceparent",
        "00-zzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzz-00f067aa0ba902b7-01",
        // All-zero trace id and span id: invalid by the W3C rules.
        "00-00000000000000000000000000000000-0000000000000000-01",
        "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
    ];
    for value in malformed {
        let req = Request::get(format!("http://{addr}/"))
            .header("traceparent", value)
            .header("tracestate", "=,=,garbage")
            .body(Body::default())
            .unwrap();
        let response = client.request(req).await.expect("served");
        assert_eq!(response.status(), StatusCode::OK, "{value}");
        response.into_body().collect().await.expect("body");
    }

    let spans = exporter.get_finished_spans().expect("exported");
    let servers = named(&spans, "mesh.server", SpanKind::Server);
    assert_eq!(servers.len(), malformed.len(), "{spans:#?}");
    let mut traces = Vec::new();
    for span in servers {
        assert_ne!(span.span_context.trace_id(), TraceId::INVALID);
        assert_eq!(
            span.parent_span_id,
            SpanId::INVALID,
            "a new trace: {span:#?}"
        );
        assert!(!span.parent_span_is_remote);
        traces.push(span.span_context.trace_id());
    }
    traces.sort_by_key(|t| t.to_bytes());
    traces.dedup();
    assert_eq!(traces.len(), malformed.len(), "each request its own trace");
}

#[tokio::test]
async fn a_valid_traceparent_is_continued_by_the_server_span() {
    let (exporter, _provider, _guard) = capture();
    let addr = serve(tower::service_fn(|_req: Request<Incoming>| async {
        Ok::<_, Infallible>(text(StatusCode::OK, "ok"))
    }))
    .await;
    let client = Client::builder(TokioExecutor::new()).build_http::<Body>();
    let req = Request::get(format!("http://{addr}/"))
        .header(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        )
        .body(Body::default())
        .unwrap();
    let response = client.request(req).await.expect("served");
    response.into_body().collect().await.expect("body");

    let spans = exporter.get_finished_spans().expect("exported");
    let servers = named(&spans, "mesh.server", SpanKind::Server);
    assert_eq!(servers.len(), 1);
    assert_eq!(
        servers[0].span_context.trace_id(),
        TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").unwrap()
    );
    assert_eq!(
        servers[0].parent_span_id,
        SpanId::from_hex("00f067aa0ba902b7").unwrap()
    );
}

#[tokio::test]
async fn a_mesh_client_call_carries_its_trace_to_the_server() {
    let (exporter, _provider, _guard) = capture();
    let addr = serve(tower::service_fn(|_req: Request<Incoming>| async {
        Ok::<_, Infallible>(text(StatusCode::OK, "ok"))
    }))
    .await;
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
    response.into_body().collect().await.expect("body");

    let spans = exporter.get_finished_spans().expect("exported");
    let attempts = named(&spans, "GET", SpanKind::Client);
    let servers = named(&spans, "mesh.server", SpanKind::Server);
    assert_eq!((attempts.len(), servers.len()), (1, 1), "{spans:#?}");
    assert_eq!(
        servers[0].span_context.trace_id(),
        attempts[0].span_context.trace_id(),
        "one trace across the call"
    );
    assert_eq!(
        servers[0].parent_span_id,
        attempts[0].span_context.span_id(),
        "the server span under the attempt that reached it"
    );
}
