//! [`EndpointClient`]: plain HTTP/1.1 on connections kept per endpoint,
//! the leaf of `MeshClient`'s plain routes and a leaf for stacks
//! assembled by hand.
//!
//! hyper-util's legacy client keeps every destination in one pool, keyed
//! by scheme and authority and hashed with SipHash one byte at a time,
//! three times a request; with its checkout futures, it costs more
//! instructions per loopback request than the whole stack assembled by
//! hand (BENCHMARKS.md, "Connections kept per endpoint"). Here a request
//! finds its endpoint's cache with one foldhash lookup, and the cache
//! (hyper-util's `client::pool::cache`) hands out one of hyper's own
//! connections (`hyper::client::conn::http1`) under a short lock.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use mesh_core::BoxError;
use tower::Service;

mod caches;
mod connection;

use caches::Pools;

/// How often idle connections are closed and the caches of endpoints no
/// longer called dropped: a connection no request took for a whole sweep
/// (idle between one and two sweeps) is closed.
const SWEEP: Duration = Duration::from_secs(45);

/// How long opening a connection may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// TCP as every client of the mesh opens it: no Nagle delay, and a
/// connection open within [`CONNECT_TIMEOUT`] or failed.
pub(crate) fn tcp() -> HttpConnector {
    let mut http = HttpConnector::new();
    http.set_nodelay(true);
    http.set_connect_timeout(Some(CONNECT_TIMEOUT));
    http
}

/// Sends each request over plain HTTP/1.1 to the endpoint its URI's
/// authority names, on a connection kept for that endpoint: the leaf of a
/// stack whose balancer points each request at an endpoint.
///
/// What hyper-util's legacy client does for a pooled connection, it does
/// too:
/// - cached connections found closed (the peer's idle timeout, a restart)
///   are passed over and dropped, however many; a request hyper hands
///   back unwritten because its connection closed first goes out on the
///   next one, whatever its method, since it never reached the peer;
/// - a connection opened for a request that closes at once fails that
///   request with a [`ConnectError`](mesh_core::ConnectError): never sent,
///   so retrying it (elsewhere) is safe, as it is for a refused
///   connection, a connect timeout or a name that does not resolve;
/// - a connection goes back to its endpoint's cache once its response has
///   been read (a task waits for that while the caller is still reading);
///   one given up before its answer came (the call failed or was
///   cancelled), or whose answer is dropped while its body is still
///   coming, is closed;
/// - requests go out in origin form (`GET /path?query HTTP/1.1`), with the
///   `Host` they carry (the balancer keeps the service's name there), else
///   the endpoint's; upgrades (`hyper::upgrade::on`) work.
///
/// Every 45 s, connections no request took since the last sweep are
/// closed, and endpoints no request named are forgotten: the caches follow
/// the endpoints the balancer picks. The sweep is a task on the runtime of
/// a request: one whose runtime ends, or stops being driven (two sweeps
/// missed), is started again on the runtime of the next request (the next
/// request to a new endpoint, for one no longer driven). Userinfo in a
/// URI's authority (`user:password@host`) is left out: it keys no cache
/// and reaches no error message. TCP_NODELAY is on; a connection must open within 5 s.
///
/// Plain HTTP/1.x only, refused before anything is sent: an `https` URI
/// (it would go out in cleartext: use mesh-tls's connector under
/// hyper-util's client), an HTTP/2 request (use h2c), `CONNECT`.
///
/// Calls must run inside a tokio runtime: each connection, and each wait
/// for a connection to be read out, is a task.
///
/// Cloning is cheap and shares the connections.
///
/// ```no_run
/// use bytes::Bytes;
/// use http_body_util::Full;
/// use mesh::prelude::*;
/// use tower::{ServiceBuilder, ServiceExt};
///
/// # async fn run() -> Result<(), BoxError> {
/// let registry = StaticRegistry::builder()
///     .service("user-service", ["10.0.0.7:8080", "10.0.0.8:8080"])
///     .build()?;
/// let stack = ServiceBuilder::new()
///     .layer(RetryLayer::default())
///     .layer(DiscoverLayer::new(registry.catalog()))
///     .layer(BalanceLayer::round_robin())
///     .layer(BreakerLayer::default())
///     .service(EndpointClient::<Full<Bytes>>::new());
/// let request = http::Request::get("http://user-service/api/users").body(Full::default())?;
/// let response = stack.oneshot(request).await?;
/// # Ok(()) }
/// ```
pub struct EndpointClient<B> {
    pools: Arc<dyn Pools<B>>,
}

impl<B> Clone for EndpointClient<B> {
    fn clone(&self) -> Self {
        EndpointClient {
            pools: Arc::clone(&self.pools),
        }
    }
}

impl<B> fmt::Debug for EndpointClient<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EndpointClient")
            .field("endpoints", &self.pools.endpoints())
            .finish()
    }
}

impl<B> EndpointClient<B>
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    /// A client with no connection yet; its sweep starts with its first
    /// request.
    pub fn new() -> EndpointClient<B> {
        Self::sweeping_every(SWEEP)
    }

    /// A client swept every `period` (tests shorten it).
    pub(crate) fn sweeping_every(period: Duration) -> EndpointClient<B> {
        EndpointClient {
            pools: caches::over(tcp(), period),
        }
    }

    /// How many endpoints have a cache.
    #[cfg(test)]
    pub(crate) fn endpoints(&self) -> usize {
        self.pools.endpoints()
    }

    /// Sweeps now.
    #[cfg(test)]
    pub(crate) fn sweep(&self) {
        self.pools.sweep();
    }
}

impl<B> Default for EndpointClient<B>
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    fn default() -> Self {
        Self::new()
    }
}

impl<B> Service<Request<B>> for EndpointClient<B> {
    type Response = Response<Incoming>;
    type Error = BoxError;
    type Future = ResponseFuture;

    /// Always ready: each call finds (or opens) its own connection.
    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> ResponseFuture {
        ResponseFuture(self.pools.send(req))
    }
}

/// [`EndpointClient`]'s response future.
pub struct ResponseFuture(
    Pin<Box<dyn Future<Output = Result<Response<Incoming>, BoxError>> + Send>>,
);

impl fmt::Debug for ResponseFuture {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ResponseFuture")
    }
}

impl Future for ResponseFuture {
    type Output = Result<Response<Incoming>, BoxError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.0.as_mut().poll(cx)
    }
}

#[cfg(test)]
mod tests;
