//! [`MeshBody`], a response body that keeps its call counted until it
//! ends, and the [`CallGuard`] that does the counting.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use mesh_balance::TrackedBody;
use mesh_core::{BoxError, EndpointId, ServiceName};

use super::Inner;
use crate::call_metrics::CountAtEnd;
use crate::fallback::Capture;
use crate::limits::Admission;

pin_project_lite::pin_project! {
    /// The body of a response through the mesh: hyper's, counted as in
    /// flight on its endpoint and by the client (for shutdown's drain and
    /// the service's concurrency limit) until it ends or is dropped; or
    /// one made from bytes (a fallback's answer, or your own, for a
    /// `FallbackLayer` over the client).
    pub struct MeshBody {
        #[pin]
        kind: Kind,
    }
}

pin_project_lite::pin_project! {
    #[project = KindProj]
    enum Kind {
        Network {
            #[pin]
            inner: StackBody,
            call: Option<CallGuard>,
            // Kept as the service's last good answer when it ends. Boxed
            // (one allocation per captured answer): only services with a
            // fallback capture, and unboxed every response would be
            // 160 bytes larger.
            capture: Option<Box<Capture>>,
        },
        Bytes { data: Option<Bytes> },
    }
}

/// A response body as a service's stack answers it: hyper's, judged by
/// the breaker and counted by the balancer until it ends.
pub(crate) type StackBody = TrackedBody<mesh_breaker::ResponseBody<Incoming>>;

/// One call counted as in flight (and holding its limit admission) until
/// dropped: with the response body when there is one. A gRPC call whose
/// status comes in trailers is counted in the metrics when its body ends.
pub(super) struct CallGuard {
    inner: Arc<Inner>,
    _admission: Option<Admission>,
    pending: CountAtEnd,
}

// === impl MeshBody ===

impl MeshBody {
    /// `inner`, keeping `call` counted until the body ends, and kept by
    /// `capture` (when given) once whole.
    pub(super) fn new(inner: StackBody, call: CallGuard, capture: Option<Capture>) -> MeshBody {
        MeshBody {
            kind: Kind::Network {
                inner,
                call: Some(call),
                capture: capture.map(Box::new),
            },
        }
    }

    /// A body of `data`, whole.
    pub fn from_bytes(data: impl Into<Bytes>) -> MeshBody {
        let data: Bytes = data.into();
        MeshBody {
            kind: Kind::Bytes {
                data: (!data.is_empty()).then_some(data),
            },
        }
    }

    /// An empty body.
    pub fn empty() -> MeshBody {
        MeshBody::from_bytes(Bytes::new())
    }
}

impl From<Bytes> for MeshBody {
    fn from(data: Bytes) -> MeshBody {
        MeshBody::from_bytes(data)
    }
}

impl From<String> for MeshBody {
    fn from(data: String) -> MeshBody {
        MeshBody::from_bytes(data)
    }
}

impl From<&'static str> for MeshBody {
    fn from(data: &'static str) -> MeshBody {
        MeshBody::from_bytes(data)
    }
}

impl Body for MeshBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.project().kind.project() {
            KindProj::Network {
                mut inner,
                call,
                capture,
            } => {
                let polled = inner.as_mut().poll_frame(cx);
                if let Some(guard) = call.as_mut() {
                    guard.observe(&polled, inner.is_end_stream());
                }
                match &polled {
                    Poll::Ready(Some(Ok(frame))) => {
                        if let (Some(data), Some(kept)) = (frame.data_ref(), capture.as_mut()) {
                            if !kept.add(data) {
                                // Too big to keep.
                                capture.take();
                            }
                        }
                        // A reader that knows the length (hyper's server
                        // relaying it) stops here, never asking for the end.
                        if inner.is_end_stream() {
                            call.take();
                            if let Some(kept) = capture.take() {
                                kept.keep();
                            }
                        }
                    }
                    Poll::Ready(None) => {
                        // Ended: the call is over, and the answer whole.
                        call.take();
                        if let Some(kept) = capture.take() {
                            kept.keep();
                        }
                    }
                    Poll::Ready(Some(Err(_))) => {
                        call.take();
                        capture.take();
                    }
                    Poll::Pending => {}
                }
                polled
            }
            KindProj::Bytes { data } => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Network { inner, .. } => inner.is_end_stream(),
            Kind::Bytes { data } => data.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Network { inner, .. } => inner.size_hint(),
            Kind::Bytes { data } => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
        }
    }
}

impl std::fmt::Debug for MeshBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MeshBody").finish_non_exhaustive()
    }
}

// === impl CallGuard ===

impl CallGuard {
    /// Guards a call `inner` has already counted as in flight.
    pub(super) fn new(inner: Arc<Inner>) -> CallGuard {
        CallGuard {
            inner,
            _admission: None,
            pending: CountAtEnd::default(),
        }
    }

    /// Counts the call to `service` (served by endpoint `served_by`, if
    /// the response does not say; a gRPC call or not as `grpc_call` says,
    /// if its context noted it) in the client's metrics: now, or when its
    /// body ends for a gRPC answer whose status is in its trailers.
    pub(super) fn record<B>(
        &mut self,
        service: &ServiceName,
        outcome: &Result<http::Response<B>, BoxError>,
        started: tokio::time::Instant,
        served_by: Option<&EndpointId>,
        grpc_call: Option<bool>,
    ) {
        self.pending = self
            .inner
            .call_metrics
            .record(service, outcome, started, served_by, grpc_call);
    }

    /// Settles a pending call once `polled` ends its body (trailers, the
    /// end, an error), or a data frame ends it without trailers.
    fn observe<E>(&mut self, polled: &Poll<Option<Result<Frame<Bytes>, E>>>, ended: bool) {
        self.pending
            .observe(&self.inner.call_metrics, polled, ended);
    }

    /// Holds the call's admission under its service's limits for as long
    /// as the call lasts.
    pub(super) fn admitted(&mut self, admission: Admission) {
        self._admission = Some(admission);
    }
}

impl Drop for CallGuard {
    fn drop(&mut self) {
        self.pending.cancel(&self.inner.call_metrics);
        self.inner.calls.leave();
    }
}
