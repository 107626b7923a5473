//! The stacks the healthy-traffic benches measure, built the same way
//! for each of them: tower's retry + timeout (the anchor), tower-mesh
//! assembled by hand, and `MeshClient` from TOML, each over four loopback
//! instances of service [`SERVICE`].

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use mesh::prelude::*;
use mesh_testkit::anchors;
use tower::{Service, ServiceBuilder};

/// The per-attempt timeout of every stack that has one written here: the
/// production profile's (tower's timeout anchor, tower-mesh's breaker).
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(5);
/// The service every stack calls.
pub const SERVICE: &str = "user-service";

/// The request body every tower stack takes.
pub type Body = Full<Bytes>;

/// A request to the service, as the tower stacks are sent one.
pub fn request() -> Request<Body> {
    Request::get(format!("http://{SERVICE}/"))
        .body(Full::new(Bytes::new()))
        .expect("request")
}

/// tower's retry (2 retries on errors and 5xx) over tower's timeout over
/// raw hyper, round robin.
pub fn tower_retry_timeout(
    client: anchors::HttpClient,
    addrs: &[SocketAddr],
) -> impl Service<
    Request<Body>,
    Response = Response<hyper::body::Incoming>,
    Error = BoxError,
    Future = impl Send,
> + Clone
       + Send
       + 'static {
    ServiceBuilder::new()
        .layer(tower::retry::RetryLayer::new(anchors::RetryFailures::new(
            2,
        )))
        .timeout(ATTEMPT_TIMEOUT)
        .service(anchors::RoundRobin::new(client, addrs))
}

/// tower-mesh by hand, as `MeshClient` wires a service with the
/// production profile: retry (2 retries, exponential backoff from 50 ms,
/// a budget of 20% of the last 10 s plus 10 per second, the whole call
/// within 10 s), discovery, `strategy`, breakers per
/// endpoint (5 failures in a row, or 50% of the last 100 calls once 20
/// were seen; 30 s open) timing each attempt out at 5 s, over `addrs`
/// listed by a static registry; `client` sends to the instance each
/// request's URI names.
pub fn mesh_stack<C, B>(
    addrs: &[SocketAddr],
    strategy: Strategy,
    client: C,
) -> impl Service<
    Request<Body>,
    Response = Response<impl http_body::Body<Data = Bytes> + Send + 'static>,
    Error = BoxError,
    Future = impl Send,
> + Clone
       + Send
       + 'static
where
    C: Service<Request<Body>, Response = Response<B>> + Clone + Send + Sync + 'static,
    C::Error: Into<BoxError>,
    C::Future: Send + 'static,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let registry = StaticRegistry::builder()
        .service(SERVICE, addrs.iter().map(SocketAddr::to_string))
        .build()
        .expect("static list");
    let retry = RetryConfig::builder()
        .max_retries(2)
        .backoff(Backoff::exponential(Duration::from_millis(50), 2.0))
        .budget(20.0, 10, Duration::from_secs(10))
        .deadline(ATTEMPT_TIMEOUT * 2)
        .build()
        .expect("retry");
    let breaker = BreakerConfig::builder()
        .scope(BreakerScope::Endpoint)
        .consecutive_failures(5)
        .failure_rate_threshold(50.0)
        .minimum_calls(20)
        .open_duration(Duration::from_secs(30))
        .call_timeout(ATTEMPT_TIMEOUT)
        .build()
        .expect("breaker");
    ServiceBuilder::new()
        .layer(RetryLayer::new(retry))
        .layer(DiscoverLayer::new(registry.catalog()))
        .layer(BalanceLayer::new(strategy))
        .layer(BreakerLayer::new(breaker))
        .service(client)
}

/// `MeshClient` from TOML: the four instances listed statically, round
/// robin, everything else the defaults (production profile, HTTP/1).
pub async fn facade(addrs: &[SocketAddr]) -> MeshClient {
    facade_from(addrs, "[balance]\nstrategy = \"round_robin\"\n").await
}

/// `MeshClient` from TOML: the four instances listed statically and
/// nothing else, every setting its default (power of two choices).
pub async fn facade_with_defaults(addrs: &[SocketAddr]) -> MeshClient {
    facade_from(addrs, "").await
}

/// `MeshClient` from a TOML listing the four instances, then `rest`.
async fn facade_from(addrs: &[SocketAddr], rest: &str) -> MeshClient {
    let list: Vec<String> = addrs.iter().map(|a| format!("\"{a}\"")).collect();
    let config = MeshConfig::from_toml_str(&format!(
        r#"
[service]
name = "bench"
[discovery]
kind = "static"
services = {{ {SERVICE} = [{}] }}
{rest}"#,
        list.join(", ")
    ))
    .expect("config");
    MeshClient::from_config(config).await.expect("client")
}
