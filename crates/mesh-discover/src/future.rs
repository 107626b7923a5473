use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use http::Request;
use mesh_core::{BoxError, MeshError, ServiceName};
use pin_project_lite::pin_project;
use tokio::time::Instant;
use tower::Service;

use crate::catalog::Catalog;
use crate::followers::{First, Waiter};
use crate::service::note_endpoints;

pin_project! {
    /// The response future of [`crate::Discover`]: the inner call, the
    /// discovery error that prevented it, or (for the first request of a
    /// service backed by a registry) the wait for the first answer.
    pub struct ResponseFuture<S, B>
    where
        S: Service<Request<B>>,
    {
        #[pin]
        state: State<S, B>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<S, B>
    where
        S: Service<Request<B>>,
    {
        Called { #[pin] future: S::Future },
        Failed { error: Option<BoxError> },
        // Boxed: rare, and it holds a request and a service clone.
        Waiting { waiting: Box<Waiting<S, B>> },
    }
}

/// The wait for a follower's first answer: `None` when none came in time.
type FirstAnswer = Pin<Box<dyn Future<Output = Option<First>> + Send + Sync>>;

/// A first request, waiting for its service's first answer. Dropping it
/// drops its [`Waiter`], which stops an unanswered follower nobody else
/// waits for.
struct Waiting<S, B> {
    first: FirstAnswer,
    /// Whether the first answer made the service known.
    answered: bool,
    inner: S,
    catalog: Catalog,
    service: ServiceName,
    req: Option<Request<B>>,
    waited: Duration,
    waiter: Waiter,
}

impl<S, B> ResponseFuture<S, B>
where
    S: Service<Request<B>>,
{
    pub(crate) fn called(future: S::Future) -> Self {
        ResponseFuture {
            state: State::Called { future },
        }
    }

    pub(crate) fn failed(error: MeshError) -> Self {
        Self::refused(error.into())
    }

    pub(crate) fn refused(error: BoxError) -> Self {
        ResponseFuture {
            state: State::Failed { error: Some(error) },
        }
    }

    pub(crate) fn waiting(
        inner: S,
        catalog: Catalog,
        service: ServiceName,
        req: Request<B>,
        max: Duration,
        waiter: Waiter,
    ) -> Self {
        let deadline = Instant::now() + max;
        let mut first = waiter.subscribe();
        // Woken by the follower's answer (a watch channel), not by a timer.
        let first: FirstAnswer = Box::pin(async move {
            let answer =
                tokio::time::timeout_at(deadline, first.wait_for(|f| *f != First::Pending)).await;
            match answer {
                Ok(Ok(first)) => Some(*first),
                // The follower is gone without a word: as good as no answer.
                Ok(Err(_)) | Err(_) => None,
            }
        });
        ResponseFuture {
            state: State::Waiting {
                waiting: Box::new(Waiting {
                    first,
                    answered: false,
                    inner,
                    catalog,
                    service,
                    req: Some(req),
                    waited: max,
                    waiter,
                }),
            },
        }
    }
}

impl<S, B, T> Future for ResponseFuture<S, B>
where
    S: Service<Request<B>, Response = T>,
    S::Error: Into<BoxError>,
{
    type Output = Result<T, BoxError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        loop {
            let mut this = self.as_mut().project();
            let next = match this.state.as_mut().project() {
                StateProj::Called { future } => return future.poll(cx).map_err(Into::into),
                StateProj::Failed { error } => {
                    return Poll::Ready(Err(match error.take() {
                        Some(e) => e,
                        None => "discovery response future polled after completion".into(),
                    }))
                }
                StateProj::Waiting { waiting } => {
                    let w = &mut **waiting;
                    if !w.answered {
                        match std::task::ready!(w.first.as_mut().poll(cx)) {
                            Some(First::Known) => w.answered = true,
                            Some(First::Unknown) | Some(First::Pending) => {
                                return Poll::Ready(Err(MeshError::UnknownService {
                                    service: w.service.clone(),
                                }
                                .into()))
                            }
                            None => {
                                return Poll::Ready(Err(MeshError::DiscoveryTimeout {
                                    service: w.service.clone(),
                                    registry: w.waiter.registry_name(),
                                    after: w.waited,
                                }
                                .into()))
                            }
                        }
                    }
                    // Known: the follower published the set before saying
                    // so. It is gone only if the service was evicted since.
                    let Some(set) = w.catalog.get(w.service.as_str()) else {
                        return Poll::Ready(Err(MeshError::UnknownService {
                            service: w.service.clone(),
                        }
                        .into()));
                    };
                    if let Err(e) = std::task::ready!(w.inner.poll_ready(cx)) {
                        return Poll::Ready(Err(e.into()));
                    }
                    let Some(mut req) = w.req.take() else {
                        return Poll::Ready(Err(
                            "discovery response future polled after completion".into(),
                        ));
                    };
                    note_endpoints(&mut req, set);
                    State::Called {
                        future: w.inner.call(req),
                    }
                }
            };
            this.state.set(next);
        }
    }
}

impl<S, B> std::fmt::Debug for ResponseFuture<S, B>
where
    S: Service<Request<B>>,
{
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}
