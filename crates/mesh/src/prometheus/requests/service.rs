//! [`RequestMetrics`]: names each call's service and starts its clock.

use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Request, Response};
use mesh_core::ext::{CallContext, Destination};
use mesh_core::{BoxError, ServiceName};
use tower::Service;

use super::future::Counting;
use super::{RequestMetricsBody, RequestMetricsFuture};
use crate::call_metrics::CallMetrics;

/// The service of a [`RequestMetricsLayer`](super::RequestMetricsLayer):
/// counts each call's outcome and latency under its service, the
/// request's [`TargetService`](mesh_core::ext::TargetService) or else its
/// URI's host (as `DiscoverLayer` resolves it), and the endpoint that
/// answered or failed.
///
/// A request that names no valid service (no host, or a host that is not
/// a service name) is passed through uncounted: `DiscoverLayer` fails it
/// before any endpoint, and there is no service to count it under. A
/// call whose caller drops it before its response is not counted either,
/// as a [`MeshClient`](crate::MeshClient) does not count it.
#[derive(Clone)]
pub struct RequestMetrics<S> {
    inner: S,
    metrics: Arc<CallMetrics>,
}

impl<S: std::fmt::Debug> std::fmt::Debug for RequestMetrics<S> {
    /// The inner service only: the counters (up to thousands of series)
    /// belong in a scrape, not in a log line.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RequestMetrics")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

// === impl RequestMetrics ===

impl<S> RequestMetrics<S> {
    pub(super) fn new(inner: S, metrics: Arc<CallMetrics>) -> RequestMetrics<S> {
        RequestMetrics { inner, metrics }
    }

    /// The service `req` is counted under. A host is looked up among the
    /// services already counted first, so that a known one costs no
    /// allocation.
    fn service_of<B>(&self, req: &Request<B>) -> Option<ServiceName> {
        match Destination::of(req)? {
            Destination::Named(service) => Some(service.clone()),
            Destination::Host(host) => self
                .metrics
                .service_named(host)
                .or_else(|| ServiceName::new(host).ok()),
        }
    }
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for RequestMetrics<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    S::Error: Into<BoxError>,
{
    type Response = Response<RequestMetricsBody<ResBody>>;
    type Error = BoxError;
    type Future = RequestMetricsFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, mut req: Request<ReqBody>) -> Self::Future {
        // Started before the stack below runs any of the call.
        let started = tokio::time::Instant::now();
        let service = self.service_of(&req);
        let counting = service.map(|service| Counting {
            metrics: Arc::clone(&self.metrics),
            service,
            started,
            // Where the balancer below names the endpoint that served.
            context: CallContext::attach(&mut req).clone(),
        });
        RequestMetricsFuture::new(self.inner.call(req), counting)
    }
}
