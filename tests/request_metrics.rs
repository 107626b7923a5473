//! Request metrics for a stack assembled by hand, read as a user reads
//! them: `RequestMetricsLayer` on top of `ServiceBuilder`'s Retry,
//! Discover, Balance and Breaker over hyper-util's client, real servers on
//! 127.0.0.1, exported by `register_layers` into a `prometheus-client`
//! registry and checked against what the servers and the caller saw,
//! then by `promtool check metrics` (Debian's `prometheus` package;
//! scripts/test.sh installs it).

#[path = "support/promtool.rs"]
mod promtool;

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use mesh::balance::{Balance, TrackedBody};
use mesh::breaker::{Breaker, ResponseBody};
use mesh::core::ext::CallContext;
use mesh::core::{Endpoint, EndpointSet, ServiceName};
use mesh::discover::{Catalog, DiscoverService};
use mesh::prelude::*;
use mesh::prometheus::RequestMetricsLayer;
use mesh::prometheus::{register_layers, Layers, RequestMetrics, RequestMetricsBody};
use mesh::retry::Retry;
use mesh_testkit::{Backend, Behavior};
use prometheus_client::registry::Registry;
use promtool::promtool_check;
use tower::{ServiceBuilder, ServiceExt};

/// How long anything in these tests may take on a loaded 2-core machine
/// before it counts as hung.
const PATIENCE: Duration = Duration::from_secs(30);

type Stack =
    RequestMetrics<Retry<DiscoverService<Balance<Breaker<Client<HttpConnector, Full<Bytes>>>>>>>;

type Answer = Response<RequestMetricsBody<TrackedBody<ResponseBody<Incoming>>>>;

/// A stack as a user assembles it, with its request metrics and retries
/// exported into a registry of its own.
struct Scene {
    stack: Stack,
    catalog: Catalog,
    registry: Registry,
}

/// `RequestMetricsLayer` over retry (two retries, 1 ms apart), discovery
/// of `services`, round robin and a per-endpoint breaker that never opens
/// (so every outcome comes from a server), over `client`.
fn scene(
    services: &[(&str, Vec<SocketAddr>)],
    client: Client<HttpConnector, Full<Bytes>>,
) -> Scene {
    let mut discovery = StaticRegistry::builder();
    for (service, addrs) in services {
        discovery = discovery.service(service, addrs.iter().map(ToString::to_string));
    }
    let catalog = discovery.build().expect("static list").catalog();
    let requests = RequestMetricsLayer::new().catalog(catalog.clone());
    let retry = RetryLayer::new(
        RetryConfig::builder()
            .max_retries(2)
            .backoff(Backoff::constant(Duration::from_millis(1)))
            .build()
            .expect("retry settings"),
    );
    let breaker = BreakerConfig::builder()
        .scope(BreakerScope::Endpoint)
        .consecutive_failures(u32::MAX)
        .no_failure_rate()
        .build()
        .expect("breaker settings");
    let stack = ServiceBuilder::new()
        .layer(requests.clone())
        .layer(retry.clone())
        .layer(DiscoverLayer::new(catalog.clone()))
        .layer(BalanceLayer::round_robin())
        .layer(BreakerLayer::new(breaker))
        .service(client);
    let mut registry = Registry::default();
    register_layers(
        &mut registry,
        [Layers::new("by-hand").requests(&requests).retry(&retry)],
    );
    Scene {
        stack,
        catalog,
        registry,
    }
}

/// `req` through `stack`, within [`PATIENCE`].
async fn send(stack: &Stack, req: Request<Full<Bytes>>) -> Answer {
    within(stack.clone().oneshot(req))
        .await
        .expect("the stack answers")
}

async fn within<F: Future>(future: F) -> F::Output {
    tokio::time::timeout(PATIENCE, future)
        .await
        .expect("done in time")
}

/// The labels of one exported series: (service, endpoint, status_class,
/// grpc_code, error) for `mesh_requests_total`.
type Outcome = (String, String, String, String, String);

/// One scrape of `registry`, in Prometheus's text format (what a
/// `/metrics` route serves with `mesh::prometheus::CONTENT_TYPE`).
struct Scrape {
    text: String,
}

impl Scrape {
    fn of(registry: &Registry) -> Scrape {
        let mut text = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut text, registry).expect("encode");
        Scrape { text }
    }

    /// `(labels, value)` of every sample of `name`.
    fn samples(&self, name: &str) -> Vec<(BTreeMap<String, String>, f64)> {
        self.text
            .lines()
            .filter(|line| !line.starts_with('#'))
            .filter_map(|line| {
                let (series, value) = line.rsplit_once(' ')?;
                let (metric, labels) = series.split_once('{').unwrap_or((series, "}"));
                (metric == name).then_some(())?;
                let labels = labels
                    .trim_end_matches('}')
                    .split("\",")
                    .filter(|pair| !pair.is_empty())
                    .map(|pair| {
                        let (key, value) = pair.split_once("=\"").expect("label");
                        (key.to_owned(), value.trim_end_matches('"').to_owned())
                    })
                    .collect();
                Some((labels, value.parse().expect("sample value")))
            })
            .collect()
    }

    /// `mesh_requests_total` by its labels.
    fn requests(&self) -> BTreeMap<Outcome, u64> {
        self.samples("mesh_requests_total")
            .into_iter()
            .map(|(l, v)| {
                let key = (
                    l["service"].clone(),
                    l["endpoint"].clone(),
                    l["status_class"].clone(),
                    l["grpc_code"].clone(),
                    l["error"].clone(),
                );
                (key, v as u64)
            })
            .collect()
    }

    /// `mesh_request_duration_seconds_count` by (service, endpoint).
    fn latency_counts(&self) -> BTreeMap<(String, String), u64> {
        self.samples("mesh_request_duration_seconds_count")
            .into_iter()
            .map(|(l, v)| ((l["service"].clone(), l["endpoint"].clone()), v as u64))
            .collect()
    }

    /// The one sample of a route-labelled retry counter.
    fn retry(&self, name: &str) -> u64 {
        let samples = self.samples(name);
        assert_eq!(samples.len(), 1, "{name} in:\n{}", self.text);
        samples[0].1 as u64
    }
}

/// The calls of `outcomes` to each (service, endpoint).
fn calls_by_endpoint(outcomes: &BTreeMap<Outcome, u64>) -> BTreeMap<(String, String), u64> {
    let mut calls = BTreeMap::new();
    for ((service, endpoint, ..), n) in outcomes {
        *calls
            .entry((service.clone(), endpoint.clone()))
            .or_default() += n;
    }
    calls
}

fn http_outcome(service: &str, endpoint: SocketAddr, status: StatusCode) -> Outcome {
    let class = format!("{}xx", status.as_u16() / 100);
    (
        service.into(),
        endpoint.to_string(),
        class,
        String::new(),
        String::new(),
    )
}

fn grpc_outcome(service: &str, endpoint: SocketAddr, code: &str) -> Outcome {
    let (service, endpoint) = (service.into(), endpoint.to_string());
    (service, endpoint, "2xx".into(), code.into(), String::new())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_call_is_counted_once_by_the_endpoint_that_answered_it_retries_included() {
    const USERS_CALLS: u64 = 40;
    const FLAKY_CALLS: u64 = 5;
    let healthy = Backend::start(Behavior::Ok).await.expect("backend");
    let failing = Backend::start(Behavior::Status(503))
        .await
        .expect("backend");
    let (a, b) = (healthy.addr(), failing.addr());
    let client = Client::builder(TokioExecutor::new()).build_http();
    // `users` is on both servers; `flaky` only on the one answering 503.
    let scene = scene(&[("users", vec![a, b]), ("flaky", vec![b])], client);

    // What the caller saw: each answer's status by the endpoint that gave
    // it, as the balancer noted it in the call's context.
    let mut seen: BTreeMap<Outcome, u64> = BTreeMap::new();
    for (service, calls) in [("users", USERS_CALLS), ("flaky", FLAKY_CALLS)] {
        for _ in 0..calls {
            let mut req = Request::get(format!("http://{service}/api"))
                .body(Full::default())
                .expect("request");
            let context = CallContext::attach(&mut req).clone();
            let response = send(&scene.stack, req).await;
            let endpoint = context
                .chosen()
                .expect("the balancer names the endpoint")
                .address();
            let status = response.status();
            within(response.into_body().collect()).await.expect("body");
            *seen
                .entry(http_outcome(service, endpoint, status))
                .or_default() += 1;
        }
    }
    let flaky_seen = seen[&http_outcome("flaky", b, StatusCode::SERVICE_UNAVAILABLE)];
    assert_eq!(flaky_seen, FLAKY_CALLS, "no retry saves a call to `flaky`");

    // The failing server leaves discovery: its series stay for the scrape
    // that shows their last count.
    let users = ServiceName::new("users").expect("name");
    let only_a = EndpointSet::new(users, vec![Endpoint::builder(a).build()]);
    assert!(scene.catalog.update(only_a), "the catalog changed");
    scene
        .catalog
        .remove(&ServiceName::new("flaky").expect("name"));

    let scrape = Scrape::of(&scene.registry);
    let exported = scrape.requests();
    assert_eq!(exported, seen, "exported as seen:\n{}", scrape.text);
    assert_eq!(
        scrape.latency_counts(),
        calls_by_endpoint(&seen),
        "one latency per call"
    );
    // Once per call, though the servers answered every attempt.
    let attempts = scrape.retry("mesh_retry_attempts_total");
    let served = healthy.stats().requests + failing.stats().requests;
    assert_eq!(attempts, served, "the servers saw every attempt");
    assert!(
        scrape.retry("mesh_retry_retries_total") >= 2 * FLAKY_CALLS,
        "retries were sent"
    );
    let counted: u64 = exported.values().sum();
    assert_eq!(counted, USERS_CALLS + FLAKY_CALLS, "one count per call");
    assert!(served > counted, "{served} attempts for {counted} calls");
    let answered_by_a: u64 = exported
        .iter()
        .filter(|((_, endpoint, ..), _)| *endpoint == a.to_string())
        .map(|(_, n)| n)
        .sum();
    assert_eq!(
        answered_by_a,
        healthy.stats().requests,
        "every 200 ended its call"
    );
    promtool_check(&scrape.text);

    let after = Scrape::of(&scene.registry);
    let left: BTreeMap<Outcome, u64> = seen
        .into_iter()
        .filter(|((_, endpoint, ..), _)| *endpoint == a.to_string())
        .collect();
    assert_eq!(after.requests(), left, "only A's series:\n{}", after.text);
    assert!(after.retry("mesh_retry_requests_total") >= USERS_CALLS + FLAKY_CALLS);
    promtool_check(&after.text);
}

/// A gRPC-shaped server over h2c: `/test.Svc/Find` answers one message
/// then `grpc-status: 5` (NOT_FOUND) in trailers; `/test.Svc/Watch` one
/// message, then nothing, never ending.
async fn grpc_server() -> SocketAddr {
    let service = tower::service_fn(|req: Request<Incoming>| async move {
        let message = Frame::data(Bytes::from_static(&[0, 0, 0, 0, 0]));
        let mut trailers = http::HeaderMap::new();
        trailers.insert("grpc-status", http::HeaderValue::from_static("5"));
        let frames: Vec<Result<Frame<Bytes>, Infallible>> = match req.uri().path() {
            "/test.Svc/Find" => vec![Ok(message), Ok(Frame::trailers(trailers))],
            _ => vec![Ok(message)],
        };
        use tokio_stream::StreamExt;
        let stream = tokio_stream::iter(frames).chain(tokio_stream::pending());
        let body = StreamBody::new(stream);
        let response = Response::builder()
            .header(http::header::CONTENT_TYPE, "application/grpc")
            .body(body)
            .expect("response");
        Ok::<_, Infallible>(response)
    });
    mesh_testkit::h2c::serve(service).await.expect("h2c server")
}

fn grpc_call(method: &str) -> Request<Full<Bytes>> {
    Request::post(format!("http://greeter/test.Svc/{method}"))
        .header(http::header::CONTENT_TYPE, "application/grpc")
        .header(http::header::TE, "trailers")
        .body(Full::new(Bytes::from_static(&[0, 0, 0, 0, 0])))
        .expect("request")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grpc_status_in_trailers_is_counted_when_the_body_ends_or_cancelled_when_dropped() {
    let server = grpc_server().await;
    let client = Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http();
    let scene = scene(&[("greeter", vec![server])], client);
    let not_found = grpc_outcome("greeter", server, "NOT_FOUND");
    let cancelled = grpc_outcome("greeter", server, "CANCELLED");

    let response = send(&scene.stack, grpc_call("Find")).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert!(
        Scrape::of(&scene.registry).requests().is_empty(),
        "not counted before its status"
    );
    let body = within(response.into_body().collect()).await.expect("body");
    let status = body.trailers().and_then(|t| t.get("grpc-status")).cloned();
    assert_eq!(status.as_ref().map(|s| s.as_bytes()), Some(&b"5"[..]));
    let scrape = Scrape::of(&scene.registry);
    assert_eq!(
        scrape.requests(),
        BTreeMap::from([(not_found.clone(), 1)]),
        "counted with the trailers' status:\n{}",
        scrape.text
    );

    let mut body = send(&scene.stack, grpc_call("Watch")).await.into_body();
    let first = within(body.frame()).await.expect("a frame").expect("data");
    assert!(first.is_data());
    assert_eq!(
        Scrape::of(&scene.registry).requests().len(),
        1,
        "a message ends nothing"
    );
    drop(body);
    let scrape = Scrape::of(&scene.registry);
    assert_eq!(
        scrape.requests(),
        BTreeMap::from([(not_found, 1), (cancelled, 1)]),
        "the caller gave up:\n{}",
        scrape.text
    );
    assert_eq!(scrape.retry("mesh_retry_retries_total"), 0);
    promtool_check(&scrape.text);
}
