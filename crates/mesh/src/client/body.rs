//! [`MeshBody`], a response body that keeps its call counted until it
//! ends, and the [`CallGuard`] that does the counting.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use hyper::body::Incoming;
use mesh_balance::TrackedBody;

use super::Inner;
use crate::limits::Admission;

pin_project_lite::pin_project! {
    /// The body of a response through the mesh: hyper's, counted as in
    /// flight on its endpoint and by the client (for shutdown's drain and
    /// the service's concurrency limit) until it ends or is dropped.
    pub struct MeshBody {
        #[pin]
        inner: TrackedBody<Incoming>,
        call: Option<CallGuard>,
    }
}

/// One call counted as in flight (and holding its limit admission) until
/// dropped: with the response body when there is one.
pub(super) struct CallGuard {
    inner: Arc<Inner>,
    _admission: Option<Admission>,
}

// === impl MeshBody ===

impl MeshBody {
    /// `inner`, keeping `call` counted until the body ends.
    pub(super) fn new(inner: TrackedBody<Incoming>, call: CallGuard) -> MeshBody {
        MeshBody {
            inner,
            call: Some(call),
        }
    }
}

impl http_body::Body for MeshBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, hyper::Error>>> {
        let this = self.project();
        let polled = this.inner.poll_frame(cx);
        if let Poll::Ready(None) | Poll::Ready(Some(Err(_))) = &polled {
            // Ended: the call is over.
            this.call.take();
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
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
        }
    }

    /// Holds the call's admission under its service's limits for as long
    /// as the call lasts.
    pub(super) fn admitted(&mut self, admission: Admission) {
        self._admission = Some(admission);
    }
}

impl Drop for CallGuard {
    fn drop(&mut self) {
        self.inner.calls.leave();
    }
}
