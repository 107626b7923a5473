use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use mesh_core::{clock, BoxError, MeshError};
use pin_project_lite::pin_project;

use crate::circuit::{Circuit, Permit};
use crate::service::{Guarded, Shared};

/// Holds a call's permit until its outcome is recorded; a call dropped
/// before finishing gives its probe back instead of leaving the circuit
/// half-open forever.
pub(crate) struct Tracker {
    shared: Arc<Shared>,
    circuit: Arc<Circuit>,
    permit: Permit,
    guarded: Guarded,
    done: bool,
}

impl Tracker {
    pub(crate) fn new(
        shared: Arc<Shared>,
        circuit: Arc<Circuit>,
        permit: Permit,
        guarded: Guarded,
    ) -> Self {
        Tracker {
            shared,
            circuit,
            permit,
            guarded,
            done: false,
        }
    }

    fn finish(&mut self, failed: bool) {
        self.done = true;
        let now = clock::now();
        if let Some(t) = self.circuit.record(self.permit, failed, now) {
            self.shared.announce(&self.guarded, t, now);
        }
    }
}

impl Drop for Tracker {
    fn drop(&mut self) {
        if !self.done {
            let now = clock::now();
            if let Some(t) = self.circuit.abandon(self.permit, now) {
                self.shared.announce(&self.guarded, t, now);
            }
        }
    }
}

pin_project! {
    /// The response future of [`crate::Breaker`].
    pub struct ResponseFuture<F> {
        #[pin]
        state: State<F>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F> {
        Called { #[pin] future: F, tracker: Option<Tracker> },
        Rejected { error: Option<MeshError> },
    }
}

impl<F> ResponseFuture<F> {
    pub(crate) fn called(future: F, tracker: Tracker) -> Self {
        ResponseFuture {
            state: State::Called {
                future,
                tracker: Some(tracker),
            },
        }
    }

    pub(crate) fn unguarded(future: F) -> Self {
        ResponseFuture {
            state: State::Called {
                future,
                tracker: None,
            },
        }
    }

    pub(crate) fn rejected(error: MeshError) -> Self {
        ResponseFuture {
            state: State::Rejected { error: Some(error) },
        }
    }
}

impl<F, B, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<http::Response<B>, E>>,
    E: Into<BoxError>,
{
    type Output = Result<http::Response<B>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().state.project() {
            StateProj::Called { future, tracker } => {
                let result = std::task::ready!(future.poll(cx)).map_err(Into::into);
                if let Some(mut tracker) = tracker.take() {
                    let outcome = tracker.shared.classifier.classify_result(&result);
                    tracker.finish(outcome.is_failure());
                }
                Poll::Ready(result)
            }
            StateProj::Rejected { error } => Poll::Ready(Err(match error.take() {
                Some(e) => e.into(),
                None => "breaker response future polled after completion".into(),
            })),
        }
    }
}

impl<F> std::fmt::Debug for ResponseFuture<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}
