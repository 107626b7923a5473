use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use http::Request;
use mesh_core::{BoxError, MeshError, ServiceName};
use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};
use tower::Service;

use std::sync::Arc;

use crate::catalog::Catalog;
use crate::service::Source;

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
        Failed { error: Option<MeshError> },
        // Boxed: rare, and it holds a request and a service clone.
        Waiting { waiting: Pin<Box<Waiting<S, B>>> },
    }
}

pin_project! {
    struct Waiting<S, B> {
        #[pin]
        tick: Sleep,
        inner: S,
        catalog: Catalog,
        service: ServiceName,
        req: Option<Request<B>>,
        deadline: Instant,
        waited: Duration,
        source: Option<Arc<Source>>,
    }
}

/// How often a waiting first request looks at the catalog again.
const TICK: Duration = Duration::from_millis(2);

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
        source: Option<Arc<Source>>,
    ) -> Self {
        let now = Instant::now();
        ResponseFuture {
            state: State::Waiting {
                waiting: Box::pin(Waiting {
                    tick: tokio::time::sleep_until(now + TICK),
                    inner,
                    catalog,
                    service,
                    req: Some(req),
                    deadline: now + max,
                    waited: max,
                    source,
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
                        Some(e) => e.into(),
                        None => "discovery response future polled after completion".into(),
                    }))
                }
                StateProj::Waiting { waiting } => {
                    let w = waiting.as_mut().project();
                    let mut tick = w.tick;
                    std::task::ready!(tick.as_mut().poll(cx));
                    let Some(set) = w.catalog.get(w.service.as_str()) else {
                        let now = Instant::now();
                        if now >= *w.deadline {
                            // Nothing came: stop following a service that
                            // may never exist (a typo in a host), so hosts
                            // from requests cannot pile up followers.
                            if let Some(source) = w.source {
                                if let Ok(mut follows) = source.follows.lock() {
                                    if w.catalog.get(w.service.as_str()).is_none() {
                                        follows.remove(w.service);
                                    }
                                }
                            }
                            return Poll::Ready(Err(MeshError::DiscoveryTimeout {
                                service: w.service.clone(),
                                after: *w.waited,
                            }
                            .into()));
                        }
                        tick.reset((now + TICK).min(*w.deadline));
                        continue;
                    };
                    if let Err(e) = std::task::ready!(w.inner.poll_ready(cx)) {
                        return Poll::Ready(Err(e.into()));
                    }
                    let Some(mut req) = w.req.take() else {
                        return Poll::Ready(Err(
                            "discovery response future polled after completion".into(),
                        ));
                    };
                    req.extensions_mut().insert(set);
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
