//! [`ResponseBody`]: a response body that records its call's outcome when
//! the outcome is only known at its end.

use std::pin::Pin;
use std::task::{Context, Poll};

use http_body::{Body, Frame, SizeHint};
use mesh_core::grpc::BodyEnd;
use pin_project_lite::pin_project;

use crate::future::Tracker;

pin_project! {
    /// The body of a response that passed a [`crate::Breaker`]: the inner
    /// body's frames, unchanged.
    ///
    /// A gRPC answer whose `grpc-status` comes in trailers after its
    /// messages is judged when those trailers arrive: until then the call
    /// holds its place in the circuit (a half-open probe is not decided
    /// by headers alone). A body dropped before its end was cancelled by
    /// its reader and counts neither way. Every other response was judged
    /// at its headers and this wrapper only passes frames on.
    pub struct ResponseBody<B> {
        #[pin]
        inner: B,
        // Boxed: only a streamed gRPC answer waits for its end, and an
        // inline tracker would make every response through the stack
        // about 150 bytes larger, copied at every layer it passes.
        pending: Option<Box<Tracker>>,
    }
}

impl<B> From<B> for ResponseBody<B> {
    /// A body with nothing left to judge (what a fallback answers with).
    fn from(inner: B) -> Self {
        ResponseBody::judged(inner)
    }
}

impl<B> ResponseBody<B> {
    /// A body judged already.
    pub(crate) fn judged(inner: B) -> Self {
        ResponseBody {
            inner,
            pending: None,
        }
    }

    /// A body whose end `tracker` waits for.
    pub(crate) fn judged_at_end(inner: B, tracker: Tracker) -> Self {
        ResponseBody {
            inner,
            pending: Some(Box::new(tracker)),
        }
    }

    /// The inner body, from which nothing more is judged.
    pub fn into_inner(self) -> B {
        self.inner
    }
}

impl<B: Body> Body for ResponseBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let polled = this.inner.poll_frame(cx);
        if this.pending.is_some() {
            if let Some(end) = BodyEnd::of(&polled) {
                if let Some(mut tracker) = this.pending.take() {
                    let outcome = tracker.classifier().classify_body_end(end);
                    tracker.finish(outcome);
                }
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

impl<B> std::fmt::Debug for ResponseBody<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseBody")
            .field("judged_at_end", &self.pending.is_some())
            .finish_non_exhaustive()
    }
}
