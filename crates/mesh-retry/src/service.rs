use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use http::{Request, Response};
use mesh_core::BoxError;
use pin_project_lite::pin_project;
use tower::Service;

use crate::policy::RetryPolicy;

/// Sends a request again when an attempt fails in a retryable way; see the
/// [crate docs](crate).
///
/// This is tower's own [`tower::retry::Retry`] driven by a
/// [`RetryPolicy`], over the inner service with its errors boxed (so the
/// policy can classify any error the stack below produces).
#[derive(Clone, Debug)]
pub struct Retry<S> {
    inner: tower::retry::Retry<RetryPolicy, BoxErrors<S>>,
}

impl<S> Retry<S> {
    pub(crate) fn new(inner: S, policy: RetryPolicy) -> Self {
        Retry {
            inner: tower::retry::Retry::new(policy, BoxErrors { inner }),
        }
    }
}

impl<S, B, RB> Service<Request<B>> for Retry<S>
where
    S: Service<Request<B>, Response = Response<RB>> + Clone,
    S::Error: Into<BoxError>,
    B: Clone,
{
    type Response = Response<RB>;
    type Error = BoxError;
    type Future = tower::retry::future::ResponseFuture<RetryPolicy, BoxErrors<S>, Request<B>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        self.inner.call(req)
    }
}

/// The inner service of [`Retry`], with its errors boxed.
#[derive(Clone, Debug)]
pub struct BoxErrors<S> {
    inner: S,
}

impl<S, R> Service<R> for BoxErrors<S>
where
    S: Service<R>,
    S::Error: Into<BoxError>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = BoxErrorsFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: R) -> Self::Future {
        BoxErrorsFuture {
            inner: self.inner.call(req),
        }
    }
}

pin_project! {
    /// The response future of [`BoxErrors`].
    #[derive(Debug)]
    pub struct BoxErrorsFuture<F> {
        #[pin]
        inner: F,
    }
}

impl<F, T, E> Future for BoxErrorsFuture<F>
where
    F: Future<Output = Result<T, E>>,
    E: Into<BoxError>,
{
    type Output = Result<T, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.project().inner.poll(cx).map_err(Into::into)
    }
}
