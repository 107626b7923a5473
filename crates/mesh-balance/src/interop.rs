//! Interoperation with tower's own balancer: a `Discover` stream of
//! per-endpoint services that report their load, so `tower::balance::p2c`
//! can run over tower-mesh discovery and endpoint state (and be compared
//! with [`crate::BalanceLayer`] on the same footing).

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures_core::Stream;
use mesh_core::{Endpoint, EndpointId, EndpointSet};
use pin_project_lite::pin_project;
use tower::discover::Change;
use tower::load::Load;
use tower::Service;

/// A service bound to one endpoint, reporting the endpoint's shared live
/// state as its [`Load`]: latency estimate x (in flight + 1), the cost
/// [`crate::Strategy::LeastResponseTime`] uses. Requests through it count
/// in the endpoint's in-flight gauge until their response arrives.
#[derive(Clone, Debug)]
pub struct EndpointService<S> {
    endpoint: Endpoint,
    inner: S,
}

impl<S> EndpointService<S> {
    /// Binds `inner` (a service that sends to `endpoint`) to its state.
    pub fn new(endpoint: Endpoint, inner: S) -> Self {
        EndpointService { endpoint, inner }
    }

    /// The endpoint.
    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }
}

impl<S> Load for EndpointService<S> {
    type Metric = u128;

    fn load(&self) -> u128 {
        let state = self.endpoint.state();
        let latency = state
            .latency()
            .unwrap_or(std::time::Duration::from_millis(10))
            .as_nanos();
        latency * (u128::from(state.in_flight()) + 1) / u128::from(self.endpoint.weight().get())
    }
}

impl<S, R> Service<R> for EndpointService<S>
where
    S: Service<R>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = CountedFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: R) -> Self::Future {
        let state = Arc::clone(self.endpoint.state());
        state.start_request();
        CountedFuture {
            inner: self.inner.call(req),
            guard: Some(Counted {
                state,
                started: std::time::Instant::now(),
            }),
        }
    }
}

struct Counted {
    state: Arc<mesh_core::EndpointState>,
    started: std::time::Instant,
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.state.finish_request();
    }
}

pin_project! {
    /// The response future of [`EndpointService`].
    pub struct CountedFuture<F> {
        #[pin]
        inner: F,
        guard: Option<Counted>,
    }
}

impl<F: Future<Output = Result<T, E>>, T, E> Future for CountedFuture<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let out = std::task::ready!(this.inner.poll(cx));
        if let Some(guard) = this.guard.take() {
            if out.is_ok() {
                guard
                    .state
                    .record_latency_at(guard.started.elapsed(), mesh_core::clock::now());
            }
        }
        Poll::Ready(out)
    }
}

impl<F> std::fmt::Debug for CountedFuture<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CountedFuture").finish_non_exhaustive()
    }
}

pin_project! {
    /// Turns a stream of [`EndpointSet`] snapshots into a
    /// [`tower::discover::Discover`] stream of [`Change`]s: an endpoint new
    /// in a snapshot is inserted (its service made by `make`), one gone from
    /// it is removed. Give it to `tower::balance::p2c::Balance`.
    ///
    /// ```
    /// use mesh_balance::{EndpointChanges, EndpointService};
    /// use mesh_core::{Endpoint, EndpointSet};
    ///
    /// // Any stream of snapshots (a registry watch) becomes a Discover.
    /// fn discover(
    ///     snapshots: impl futures_core::Stream<Item = EndpointSet>,
    /// ) -> impl tower::discover::Discover {
    ///     EndpointChanges::new(snapshots, |e: &Endpoint| {
    ///         EndpointService::new(
    ///             e.clone(),
    ///             tower::service_fn(|_: ()| async { Ok::<_, std::convert::Infallible>(()) }),
    ///         )
    ///     })
    /// }
    /// ```
    pub struct EndpointChanges<St, F, S> {
        #[pin]
        snapshots: St,
        make: F,
        known: HashMap<EndpointId, Endpoint>,
        pending: std::collections::VecDeque<Change<EndpointId, S>>,
    }
}

impl<St, F, S> EndpointChanges<St, F, S> {
    /// Diffs the snapshots of `snapshots`, making a service per new
    /// endpoint with `make`.
    pub fn new(snapshots: St, make: F) -> Self {
        EndpointChanges {
            snapshots,
            make,
            known: HashMap::new(),
            pending: std::collections::VecDeque::new(),
        }
    }
}

impl<St, F, S> Stream for EndpointChanges<St, F, S>
where
    St: Stream<Item = EndpointSet>,
    F: FnMut(&Endpoint) -> S,
{
    type Item = Result<Change<EndpointId, S>, Infallible>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let mut this = self.project();
        loop {
            if let Some(change) = this.pending.pop_front() {
                return Poll::Ready(Some(Ok(change)));
            }
            let Some(set) = std::task::ready!(this.snapshots.as_mut().poll_next(cx)) else {
                return Poll::Ready(None);
            };
            let now: HashMap<&EndpointId, &Endpoint> = set.iter().map(|e| (e.id(), e)).collect();
            let gone: Vec<EndpointId> = this
                .known
                .keys()
                .filter(|id| !now.contains_key(id))
                .cloned()
                .collect();
            for id in gone {
                this.known.remove(&id);
                this.pending.push_back(Change::Remove(id));
            }
            for e in set.iter() {
                let changed = this
                    .known
                    .get(e.id())
                    .is_some_and(|old| !old.same_description(e));
                if changed || !this.known.contains_key(e.id()) {
                    // New, or the same id at a new address or weight: tower
                    // replaces the service inserted under a known key.
                    this.known.insert(e.id().clone(), e.clone());
                    this.pending
                        .push_back(Change::Insert(e.id().clone(), (this.make)(e)));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mesh_core::ServiceName;

    struct Iter<I>(I);
    impl<I: Iterator + Unpin> Stream for Iter<I> {
        type Item = I::Item;
        fn poll_next(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<I::Item>> {
            Poll::Ready(self.0.next())
        }
    }

    fn set(ports: &[u16]) -> EndpointSet {
        EndpointSet::new(
            ServiceName::new("s").unwrap(),
            ports
                .iter()
                .map(|p| Endpoint::builder(([127, 0, 0, 1], *p).into()).build())
                .collect(),
        )
    }

    #[test]
    fn snapshots_become_inserts_and_removes() {
        let stream = Iter(vec![set(&[1, 2]), set(&[2, 3])].into_iter());
        let mut changes = Box::pin(EndpointChanges::new(stream, |e: &Endpoint| {
            e.address().port()
        }));
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let mut seen = Vec::new();
        while let Poll::Ready(Some(Ok(change))) = changes.as_mut().poll_next(&mut cx) {
            seen.push(match change {
                Change::Insert(id, port) => format!("+{id}={port}"),
                Change::Remove(id) => format!("-{id}"),
            });
        }
        assert_eq!(
            seen,
            [
                "+127.0.0.1:1=1",
                "+127.0.0.1:2=2",
                "-127.0.0.1:1",
                "+127.0.0.1:3=3"
            ]
        );
    }

    #[tokio::test]
    async fn load_follows_the_endpoint_state() {
        use tower::ServiceExt;
        let e = Endpoint::builder("127.0.0.1:1".parse().unwrap()).build();
        e.state()
            .record_latency(std::time::Duration::from_millis(2));
        let svc = EndpointService::new(
            e.clone(),
            tower::service_fn(|_: ()| async { Ok::<_, Infallible>(()) }),
        );
        assert_eq!(svc.load(), 2_000_000);
        e.state().start_request();
        assert_eq!(svc.load(), 4_000_000);
        e.state().finish_request();
        svc.clone().oneshot(()).await.unwrap();
        assert_eq!(e.state().in_flight(), 0);
        assert_eq!(e.state().requests(), 2);
    }
}
