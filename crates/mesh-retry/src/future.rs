//! [`ResponseFuture`]: the response future of [`Retry`](crate::Retry),
//! retrying or hedging.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use http::Request;
use mesh_core::BoxError;
use pin_project_lite::pin_project;
use tower::retry::Policy;
use tower::Service;
use tracing::Span;

use crate::hedge::HedgeFuture;
use crate::policy::RetryPolicy;
use crate::retrying::RetryingFuture;
use crate::service::AttemptTimeout;
use crate::trace::{self, AttemptAnswer};

/// The retry future, over attempts bounded by [`AttemptTimeout`].
type Retrying<S, B> = RetryingFuture<AttemptTimeout<S>, B>;

pin_project! {
    /// The response future of [`Retry`](crate::Retry): a retry future
    /// for a call that is retried, a [`HedgeFuture`] for one that is
    /// hedged.
    pub struct ResponseFuture<S, B>
    where
        S: Service<Request<B>>,
        S::Response: AttemptAnswer,
        S::Error: Into<BoxError>,
        RetryPolicy: Policy<Request<B>, S::Response, BoxError>,
    {
        #[pin]
        kind: Kind<S, B>,
        // The call's span (`mesh.call`), entered while the attempts run.
        span: Span,
        // Whether the call is a gRPC call, for the span's note of its answer.
        grpc_call: Option<bool>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<S, B>
    where
        S: Service<Request<B>>,
        S::Response: AttemptAnswer,
        S::Error: Into<BoxError>,
        RetryPolicy: Policy<Request<B>, S::Response, BoxError>,
    {
        Retrying { #[pin] future: Retrying<S, B> },
        // Boxed: a hedged call holds a clone of the stack and its
        // request's template, and every other call's future would be as
        // large (a hedged call allocates for its copies anyway).
        Hedging { future: Pin<Box<HedgeFuture<S, B>>> },
    }
}

// === impl ResponseFuture ===

impl<S, B> ResponseFuture<S, B>
where
    S: Service<Request<B>>,
    S::Response: AttemptAnswer,
    S::Error: Into<BoxError>,
    RetryPolicy: Policy<Request<B>, S::Response, BoxError>,
{
    pub(crate) fn retrying(future: Retrying<S, B>, span: Span, grpc_call: Option<bool>) -> Self {
        ResponseFuture {
            kind: Kind::Retrying { future },
            span,
            grpc_call,
        }
    }

    pub(crate) fn hedging(future: HedgeFuture<S, B>, span: Span, grpc_call: Option<bool>) -> Self {
        ResponseFuture {
            kind: Kind::Hedging {
                future: Box::pin(future),
            },
            span,
            grpc_call,
        }
    }
}

impl<S, B> Future for ResponseFuture<S, B>
where
    S: Service<Request<B>>,
    S::Response: AttemptAnswer,
    S::Error: Into<BoxError>,
    RetryPolicy: Policy<Request<B>, S::Response, BoxError>,
    Retrying<S, B>: Future<Output = Result<S::Response, BoxError>>,
    HedgeFuture<S, B>: Future<Output = Result<S::Response, BoxError>>,
{
    type Output = Result<S::Response, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let _entered = this.span.enter();
        let polled = match this.kind.project() {
            KindProj::Retrying { future } => future.poll(cx),
            KindProj::Hedging { future } => future.as_mut().poll(cx),
        };
        if let Poll::Ready(result) = &polled {
            trace::record_call(this.span, result, *this.grpc_call);
        }
        polled
    }
}

impl<S, B> std::fmt::Debug for ResponseFuture<S, B>
where
    S: Service<Request<B>>,
    S::Response: AttemptAnswer,
    S::Error: Into<BoxError>,
    RetryPolicy: Policy<Request<B>, S::Response, BoxError>,
{
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match &self.kind {
            Kind::Retrying { .. } => "retrying",
            Kind::Hedging { .. } => "hedging",
        };
        f.debug_struct("ResponseFuture")
            .field("kind", &kind)
            .finish_non_exhaustive()
    }
}
