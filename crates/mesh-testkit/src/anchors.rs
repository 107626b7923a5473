//! The stacks tower-mesh is compared with, over the same hyper client:
//! the raw client with round robin by hand, tower's own balancer and retry,
//! and tower-resilience's circuit breaker. The end-to-end benchmarks run
//! each next to the mesh pipeline, so a number is always read against what
//! a user would otherwise write.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::uri::{Authority, Parts, PathAndQuery, Scheme};
use http::{Request, Response, Uri};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use tower::{Layer, Service, ServiceBuilder, ServiceExt};

/// hyper-util's pooled client.
pub type HttpClient = Client<HttpConnector, Full<Bytes>>;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Points `req` at `authority`, keeping its path and query.
fn point(req: &mut Request<Full<Bytes>>, authority: &Authority) {
    let mut parts = Parts::default();
    parts.scheme = Some(Scheme::HTTP);
    parts.authority = Some(authority.clone());
    parts.path_and_query = Some(
        req.uri()
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/")),
    );
    if let Ok(uri) = Uri::from_parts(parts) {
        *req.uri_mut() = uri;
    }
}

/// One instance for tower's balancer: the client, pointed at one address.
#[derive(Clone)]
pub struct ToAddr {
    /// The shared pooled client.
    pub client: HttpClient,
    /// The instance every request goes to.
    pub authority: Authority,
}

impl Service<Request<Full<Bytes>>> for ToAddr {
    type Response = Response<Incoming>;
    type Error = hyper_util::client::legacy::Error;
    type Future = hyper_util::client::legacy::ResponseFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Service::<Request<Full<Bytes>>>::poll_ready(&mut self.client, cx)
    }

    fn call(&mut self, mut req: Request<Full<Bytes>>) -> Self::Future {
        point(&mut req, &self.authority);
        self.client.request(req)
    }
}

/// One [`ToAddr`] per address, sharing `client`.
fn instances(client: &HttpClient, addrs: &[std::net::SocketAddr]) -> Vec<ToAddr> {
    addrs
        .iter()
        .map(|a| ToAddr {
            client: client.clone(),
            authority: Authority::try_from(a.to_string()).expect("authority"),
        })
        .collect()
}

/// The raw client: round robin by hand, nothing else.
#[derive(Clone)]
pub struct RoundRobin {
    client: HttpClient,
    authorities: Arc<Vec<Authority>>,
    next: Arc<AtomicUsize>,
}

impl RoundRobin {
    /// Round robin over `addrs`, in order.
    ///
    /// # Panics
    ///
    /// When `addrs` is empty.
    pub fn new(client: HttpClient, addrs: &[std::net::SocketAddr]) -> Self {
        assert!(!addrs.is_empty(), "RoundRobin needs at least one address");
        RoundRobin {
            client,
            authorities: Arc::new(
                addrs
                    .iter()
                    .map(|a| Authority::try_from(a.to_string()).expect("authority"))
                    .collect(),
            ),
            next: Arc::new(AtomicUsize::new(0)),
        }
    }
}

impl Service<Request<Full<Bytes>>> for RoundRobin {
    type Response = Response<Incoming>;
    type Error = hyper_util::client::legacy::Error;
    type Future = hyper_util::client::legacy::ResponseFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Service::<Request<Full<Bytes>>>::poll_ready(&mut self.client, cx)
    }

    fn call(&mut self, mut req: Request<Full<Bytes>>) -> Self::Future {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.authorities.len();
        point(&mut req, &self.authorities[i]);
        self.client.request(req)
    }
}

/// tower's retry policy as a user would write it: up to `left` more
/// attempts on an error or a 5xx.
#[derive(Clone)]
pub struct RetryFailures {
    left: usize,
}

impl RetryFailures {
    /// Up to `retries` more attempts after the first, on an error or a
    /// 5xx (the p2c anchor's policy, for stacks written around it).
    ///
    /// ```
    /// use mesh_testkit::anchors::RetryFailures;
    ///
    /// let policy = RetryFailures::new(2);
    /// let _layer = tower::retry::RetryLayer::new(policy);
    /// ```
    pub fn new(retries: usize) -> Self {
        RetryFailures { left: retries }
    }
}

impl<B, E> tower::retry::Policy<Request<Full<Bytes>>, Response<B>, E> for RetryFailures {
    type Future = std::future::Ready<()>;

    fn retry(
        &mut self,
        _req: &mut Request<Full<Bytes>>,
        result: &mut Result<Response<B>, E>,
    ) -> Option<Self::Future> {
        let failed = match result {
            Ok(r) => r.status().is_server_error(),
            Err(_) => true,
        };
        if failed && self.left > 0 {
            self.left -= 1;
            Some(std::future::ready(()))
        } else {
            None
        }
    }

    fn clone_request(&mut self, req: &Request<Full<Bytes>>) -> Option<Request<Full<Bytes>>> {
        let mut clone = Request::new(req.body().clone());
        *clone.method_mut() = req.method().clone();
        *clone.uri_mut() = req.uri().clone();
        *clone.headers_mut() = req.headers().clone();
        Some(clone)
    }
}

/// `tower::balance::p2c` over `PeakEwma`, behind a `Buffer`, under
/// `tower::retry` with 2 retries.
pub fn tower_p2c_retry(
    client: HttpClient,
    addrs: &[std::net::SocketAddr],
) -> impl Service<
    Request<Full<Bytes>>,
    Response = Response<Incoming>,
    Error = BoxError,
    Future = impl Send,
> + Clone
       + Send
       + 'static {
    ServiceBuilder::new()
        .layer(tower::retry::RetryLayer::new(RetryFailures { left: 2 }))
        .service(tower_p2c(client, addrs))
}

/// `tower::balance::p2c` over `PeakEwma`, behind a `Buffer`, with no
/// retry: [`tower_p2c_retry`] without its retry layer, what tower offers
/// for balancing alone.
pub fn tower_p2c(
    client: HttpClient,
    addrs: &[std::net::SocketAddr],
) -> impl Service<
    Request<Full<Bytes>>,
    Response = Response<Incoming>,
    Error = BoxError,
    Future = impl Send,
> + Clone
       + Send
       + 'static {
    let discover = tower::load::PeakEwmaDiscover::new(
        tower::discover::ServiceList::new(instances(&client, addrs)),
        Duration::from_millis(10),
        Duration::from_secs(10),
        tower::load::CompleteOnResponse::default(),
    );
    ServiceBuilder::new()
        .buffer(1024)
        .timeout(Duration::from_secs(1))
        .service(tower::balance::p2c::Balance::new(discover))
}

/// tower-resilience's circuit breaker over the raw client, a 5xx counted
/// as a failure.
pub fn resilience_breaker(
    client: HttpClient,
    addrs: &[std::net::SocketAddr],
) -> impl Service<
    Request<Full<Bytes>>,
    Response = Response<Incoming>,
    Error = BoxError,
    Future = impl Send,
> + Clone
       + Send
       + 'static {
    let raw = RoundRobin::new(client, addrs).map_result(
        |r: Result<Response<Incoming>, hyper_util::client::legacy::Error>| match r {
            Ok(resp) if resp.status().is_server_error() => {
                Err::<Response<Incoming>, BoxError>(format!("status {}", resp.status()).into())
            }
            Ok(resp) => Ok(resp),
            Err(e) => Err(e.into()),
        },
    );
    let breaker = tower_resilience::circuitbreaker::CircuitBreakerLayer::builder()
        .failure_rate_threshold(0.5)
        .sliding_window_size(100)
        .minimum_number_of_calls(20)
        .wait_duration_in_open(Duration::from_millis(300))
        .permitted_calls_in_half_open(3)
        .build()
        .expect("tower-resilience config");
    breaker
        .layer(raw)
        .map_err(|e| -> BoxError { format!("{e}").into() })
}
