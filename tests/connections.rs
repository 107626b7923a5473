//! What the mesh does with its connections, against real HTTP/1.1 servers
//! on 127.0.0.1, through `MeshClient` built from TOML and through a stack
//! assembled by hand over `EndpointClient`: connections kept per instance
//! for calls made one after another, a request that meets a connection
//! its instance closed while idle sent once, on a new one, and the `Host`
//! the instance sees: the service's name, or the caller's own.

use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use mesh::prelude::*;
use mesh_testkit::wait::until;
use mesh_testkit::{Backend, Behavior};
use tower::{Service, ServiceBuilder, ServiceExt};

/// A client of service `users` at `backends`, everything else the
/// defaults (plain HTTP/1.1).
async fn facade(backends: &[Backend]) -> MeshClient {
    let list: Vec<String> = backends
        .iter()
        .map(|b| format!("\"{}\"", b.addr()))
        .collect();
    let config = MeshConfig::from_toml_str(&format!(
        "[service]\nname = \"caller\"\n[discovery]\nkind = \"static\"\nservices = {{ users = [{}] }}\n",
        list.join(", ")
    ))
    .expect("config");
    MeshClient::from_config(config).await.expect("client")
}

/// Retry, discovery, round robin and a breaker per instance over
/// `EndpointClient`, for service `users` at `backends`.
fn by_hand(
    backends: &[Backend],
) -> impl Service<
    Request<Full<Bytes>>,
    Response = Response<impl http_body::Body<Error = impl std::fmt::Debug>>,
    Error = BoxError,
> + Clone {
    let registry = StaticRegistry::builder()
        .service("users", backends.iter().map(|b| b.addr().to_string()))
        .build()
        .expect("registry");
    let breaker = BreakerConfig::builder()
        .scope(BreakerScope::Endpoint)
        .build()
        .expect("breaker");
    ServiceBuilder::new()
        .layer(RetryLayer::default())
        .layer(DiscoverLayer::new(registry.catalog()))
        .layer(BalanceLayer::round_robin())
        .layer(BreakerLayer::new(breaker))
        .service(EndpointClient::new())
}

/// One call through the facade, its answer read whole.
async fn call_facade(client: &MeshClient, method: Method) -> StatusCode {
    let response = client
        .request(
            method,
            "users",
            "/orders",
            Bytes::from_static(b"order"),
            CallOptions::default(),
        )
        .await
        .expect("call");
    let status = response.status();
    response.into_body().collect().await.expect("body");
    status
}

/// One call through a stack, its answer read whole.
async fn call_stack<S, B>(stack: &S, method: Method) -> StatusCode
where
    S: Service<Request<Full<Bytes>>, Response = Response<B>, Error = BoxError> + Clone,
    B: http_body::Body,
    B::Error: std::fmt::Debug,
{
    let req = Request::builder()
        .method(method)
        .uri("http://users/orders")
        .body(Full::new(Bytes::from_static(b"order")))
        .expect("request");
    let response = stack.clone().oneshot(req).await.expect("call");
    let status = response.status();
    response.into_body().collect().await.expect("body");
    status
}

/// Asserts that every instance served part of `calls` requests, on
/// connections the client kept: one, or a few more when a call began
/// before the last one's connection was back in its cache (a race
/// between the two cores, more often lost on a loaded machine).
fn assert_connections_kept(backends: &[Backend], calls: u64) {
    let stats: Vec<_> = backends.iter().map(Backend::stats).collect();
    assert_eq!(stats.iter().map(|s| s.requests).sum::<u64>(), calls);
    for s in &stats {
        assert!(s.requests > 0, "every instance called: {stats:?}");
        assert!((1..=5).contains(&s.connections), "{stats:?}");
    }
}

async fn two_instances() -> [Backend; 2] {
    [
        Backend::start(Behavior::Ok).await.expect("backend"),
        Backend::start(Behavior::Ok).await.expect("backend"),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_one_after_another_keep_their_connections() {
    let backends = two_instances().await;
    let client = facade(&backends).await;
    for _ in 0..50 {
        assert_eq!(call_facade(&client, Method::GET).await, StatusCode::OK);
    }
    assert_connections_kept(&backends, 50);

    let backends = two_instances().await;
    let stack = by_hand(&backends);
    for _ in 0..50 {
        assert_eq!(call_stack(&stack, Method::GET).await, StatusCode::OK);
    }
    assert_connections_kept(&backends, 50);
}

/// Sends four POSTs, each after `backend` closed the connection the
/// previous one left idle, through `call`; each must be sent once.
async fn posts_after_idle_closes<F, Fut>(backend: &Backend, call: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = StatusCode>,
{
    for round in 1..=4 {
        assert_eq!(call().await, StatusCode::OK);
        until("the instance closed the idle connection", || {
            backend.stats().connections_ended >= round
        })
        .await;
    }
    let stats = backend.stats();
    assert_eq!(stats.requests, 4, "each POST sent once: {stats:?}");
    assert_eq!(stats.connections, 4, "{stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_post_on_a_connection_the_instance_closed_while_idle_is_sent_once_on_a_new_one() {
    // Long enough for a loaded machine to write each request first.
    let idle = Some(Duration::from_secs(1));
    let backend = Backend::start(Behavior::Ok).await.expect("backend");
    backend.close_idle_after(idle);
    let client = facade(std::slice::from_ref(&backend)).await;
    posts_after_idle_closes(&backend, || call_facade(&client, Method::POST)).await;

    let backend = Backend::start(Behavior::Ok).await.expect("backend");
    backend.close_idle_after(idle);
    let stack = by_hand(std::slice::from_ref(&backend));
    posts_after_idle_closes(&backend, || call_stack(&stack, Method::POST)).await;
}

/// A server on 127.0.0.1 answering each request with the `Host` header
/// it arrived with.
async fn host_echo() -> std::net::SocketAddr {
    mesh_testkit::echo::serve(|req| {
        req.headers()
            .get(http::header::HOST)
            .map(|h| Bytes::copy_from_slice(h.as_bytes()))
            .unwrap_or_default()
    })
    .await
    .expect("echo server")
}

/// The body of `response`, as text.
async fn text<B>(response: Response<B>) -> String
where
    B: http_body::Body,
    B::Error: std::fmt::Debug,
{
    let body = response.into_body().collect().await.expect("body");
    String::from_utf8(body.to_bytes().to_vec()).expect("text")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_instance_sees_the_service_name_as_host_or_the_callers_own() {
    let addr = host_echo().await;
    let config = MeshConfig::from_toml_str(&format!(
        "[service]\nname = \"caller\"\n[discovery]\nkind = \"static\"\nservices = {{ users = [\"{addr}\"] }}\n"
    ))
    .expect("config");
    let client = MeshClient::from_config(config).await.expect("client");
    for _ in 0..3 {
        let response = client
            .get("users", "/", CallOptions::default())
            .await
            .expect("call");
        assert_eq!(text(response).await, "users", "through MeshClient");
    }
    let own = Request::get("http://users/")
        .header(http::header::HOST, "users.example")
        .body(Full::new(Bytes::new()))
        .expect("request");
    let response = client.send(own).await.expect("call");
    assert_eq!(text(response).await, "users.example", "the caller's Host");

    let registry = StaticRegistry::builder()
        .service("users", [addr.to_string()])
        .build()
        .expect("registry");
    let stack = ServiceBuilder::new()
        .layer(RetryLayer::default())
        .layer(DiscoverLayer::new(registry.catalog()))
        .layer(BalanceLayer::round_robin())
        .layer(BreakerLayer::default())
        .service(EndpointClient::new());
    for uri in ["http://users/", "http://Users:8080/"] {
        let req = Request::get(uri)
            .body(Full::new(Bytes::new()))
            .expect("request");
        let response = stack.clone().oneshot(req).await.expect("call");
        let host = uri.trim_start_matches("http://").trim_end_matches('/');
        assert_eq!(text(response).await, host, "by hand, {uri}");
    }
}
