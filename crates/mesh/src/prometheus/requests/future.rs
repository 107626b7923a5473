//! [`RequestMetricsFuture`]: counts the call when its response (or its
//! error) arrives.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use http::Response;
use mesh_core::ext::CallContext;
use mesh_core::{BoxError, Endpoint, ServiceName};

use super::RequestMetricsBody;
use crate::call_metrics::CallMetrics;

pin_project_lite::pin_project! {
    /// The response future of [`RequestMetrics`](super::RequestMetrics):
    /// the inner service's, counted when it is ready; a gRPC answer whose
    /// status comes in trailers is counted by its body.
    pub struct RequestMetricsFuture<F> {
        #[pin]
        inner: F,
        counting: Option<Counting>,
    }
}

/// A call being counted: where, under which service, since when.
pub(super) struct Counting {
    pub(super) metrics: Arc<CallMetrics>,
    pub(super) service: ServiceName,
    pub(super) started: tokio::time::Instant,
    pub(super) context: CallContext,
}

// === impl RequestMetricsFuture ===

impl<F> RequestMetricsFuture<F> {
    pub(super) fn new(inner: F, counting: Option<Counting>) -> RequestMetricsFuture<F> {
        RequestMetricsFuture { inner, counting }
    }
}

impl<F, B, E> Future for RequestMetricsFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
    E: Into<BoxError>,
{
    type Output = Result<Response<RequestMetricsBody<B>>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let outcome = ready!(this.inner.poll(cx)).map_err(Into::into);
        let Some(Counting {
            metrics,
            service,
            started,
            context,
        }) = this.counting.take()
        else {
            return Poll::Ready(outcome.map(|r| r.map(RequestMetricsBody::counted)));
        };
        let served_by = context.chosen();
        let served_by = served_by.as_ref().map(Endpoint::id);
        let grpc_call = context.is_grpc_call();
        let at_end = metrics.record(&service, &outcome, started, served_by, grpc_call);
        Poll::Ready(
            outcome.map(|response| {
                response.map(|body| RequestMetricsBody::new(body, metrics, at_end))
            }),
        )
    }
}

impl<F> std::fmt::Debug for RequestMetricsFuture<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RequestMetricsFuture")
            .finish_non_exhaustive()
    }
}
