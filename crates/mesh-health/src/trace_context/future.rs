//! [`TraceContextFuture`]: the response future of
//! [`TraceContext`](super::TraceContext).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use http::Response;
use pin_project_lite::pin_project;
use tracing::Span;

pin_project! {
    /// Polls the handler inside the request's `mesh.server` span, and
    /// records the answer's status on it.
    pub struct TraceContextFuture<F> {
        #[pin]
        inner: F,
        span: Span,
    }
}

// === impl TraceContextFuture ===

impl<F> TraceContextFuture<F> {
    pub(super) fn new(inner: F, span: Span) -> Self {
        TraceContextFuture { inner, span }
    }
}

impl<F, RB, E> Future for TraceContextFuture<F>
where
    F: Future<Output = Result<Response<RB>, E>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let polled = {
            let _entered = this.span.enter();
            this.inner.poll(cx)
        };
        if let Poll::Ready(result) = &polled {
            if !this.span.is_disabled() {
                match result {
                    Ok(response) => {
                        let status = response.status();
                        this.span
                            .record("http.response.status_code", i64::from(status.as_u16()));
                        if status.is_server_error() {
                            this.span.record("otel.status_code", "ERROR");
                        }
                    }
                    Err(_) => {
                        this.span.record("otel.status_code", "ERROR");
                    }
                }
            }
        }
        polled
    }
}

impl<F> std::fmt::Debug for TraceContextFuture<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TraceContextFuture")
            .field("span", &self.span)
            .finish_non_exhaustive()
    }
}
