//! [`RequestMetricsBody`]: a response body that settles its gRPC call's
//! count when it ends.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http_body::{Body, Frame, SizeHint};

use crate::call_metrics::{CallMetrics, CountAtEnd};

pin_project_lite::pin_project! {
    /// The body of a response through
    /// [`RequestMetrics`](super::RequestMetrics): the inner body as it is.
    /// A gRPC answer whose status comes in trailers is counted when the
    /// body ends (with that status, `INTERNAL` without one, a reset when
    /// the body fails) or as `CANCELLED` when it is dropped before its
    /// end, as a [`MeshClient`](crate::MeshClient)'s `MeshBody` counts it.
    pub struct RequestMetricsBody<B> {
        #[pin]
        inner: B,
        // Only while a count waits for the end: other calls carry nothing.
        owed: Option<Owed>,
    }
}

/// A count the body owes, and where to pay it; paid as `CANCELLED` when
/// dropped unpaid.
struct Owed {
    metrics: Arc<CallMetrics>,
    at_end: CountAtEnd,
}

// === impl RequestMetricsBody ===

impl<B> RequestMetricsBody<B> {
    /// `inner`, whose call `at_end` counts when it ends, if it waits.
    pub(super) fn new(
        inner: B,
        metrics: Arc<CallMetrics>,
        at_end: CountAtEnd,
    ) -> RequestMetricsBody<B> {
        let owed = at_end.is_pending().then_some(Owed { metrics, at_end });
        RequestMetricsBody { inner, owed }
    }

    /// `inner`, of a call counted already (or never to be).
    pub(super) fn counted(inner: B) -> RequestMetricsBody<B> {
        RequestMetricsBody { inner, owed: None }
    }

    /// The inner body.
    pub fn get_ref(&self) -> &B {
        &self.inner
    }

    /// The inner body, settling nothing: a gRPC call still waiting for its
    /// end is counted as `CANCELLED` now.
    pub fn into_inner(self) -> B {
        self.inner
    }
}

impl<B: Body> Body for RequestMetricsBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        let this = self.project();
        let mut inner = this.inner;
        let polled = inner.as_mut().poll_frame(cx);
        if let Some(owed) = this.owed.as_mut() {
            owed.at_end
                .observe(&owed.metrics, &polled, inner.is_end_stream());
            if !owed.at_end.is_pending() {
                // Paid: let the counters go with it.
                *this.owed = None;
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl<B> std::fmt::Debug for RequestMetricsBody<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RequestMetricsBody")
            .field("counted", &self.owed.is_none())
            .finish_non_exhaustive()
    }
}

// === impl Owed ===

impl Drop for Owed {
    fn drop(&mut self) {
        self.at_end.cancel(&self.metrics);
    }
}
