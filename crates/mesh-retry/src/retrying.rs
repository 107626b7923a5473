//! [`RetryingFuture`]: one call's attempts, one after another, as the
//! [`RetryPolicy`] decides.
//!
//! tower's own retry future does the same, but its service clones the
//! whole stack below on every call, to have a service for the retries: a
//! handful of reference counts shared by every caller, bounced between
//! cores on each request. Most calls are never retried, so this future
//! holds only a shared, unused copy of the stack (one reference count)
//! and clones it the first time a retry needs a service. The copy sits
//! behind a mutex, taken only to clone it, so that the future is `Send`
//! for any `Send` stack (a `BoxCloneService` is not `Sync`).
//!
//! A retry goes through a clone of the stack as the layer was given it,
//! where tower's clones the service the call went through: the same for
//! a stack whose clones share their state (every mesh layer, hyper's
//! client), not for one whose clones copy it.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll};
use std::time::Duration;

use http::Request;
use mesh_core::clock;
use mesh_core::ext::CallContext;
use mesh_core::{BoxError, MeshError};
use pin_project_lite::pin_project;
use tokio::time::Sleep;
use tower::retry::Policy;
use tower::Service;

use crate::policy::RetryPolicy;

pin_project! {
    /// The attempts of one call: the first already sent, a retry sent
    /// when the policy asks for one, after its backoff.
    pub(crate) struct RetryingFuture<S, B>
    where
        S: Service<Request<B>>,
        RetryPolicy: Policy<Request<B>, S::Response, BoxError>,
    {
        policy: RetryPolicy,
        // The copy the next attempt sends; `None` when no retry may come.
        request: Option<Request<B>>,
        // The stack as the layer was given it, cloned into `service` for
        // the first retry: boxed, so that the calls never retried (most)
        // carry a pointer rather than room for a whole stack, moved with
        // the future at every level.
        prototype: Arc<Mutex<S>>,
        service: Option<Box<S>>,
        #[pin]
        state: State<S::Future, <RetryPolicy as Policy<Request<B>, S::Response, BoxError>>::Future>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F, W> {
        Called { #[pin] future: F },
        Waiting { #[pin] backoff: W },
        // Waiting for the stack to be ready for the retry: no longer than
        // the call's deadline, when a stack applies backpressure.
        // `left`: the time left when the wait began.
        Retrying { #[pin] expiry: Option<Sleep>, left: Duration },
    }
}

// === impl RetryingFuture ===

impl<S, B> RetryingFuture<S, B>
where
    S: Service<Request<B>>,
    RetryPolicy: Policy<Request<B>, S::Response, BoxError>,
{
    /// Sends `req` through `ready` (a service ready to be called), keeping
    /// a copy for a retry if the policy may ask for one.
    pub(crate) fn start(
        mut policy: RetryPolicy,
        ready: &mut S,
        prototype: Arc<Mutex<S>>,
        mut req: Request<B>,
    ) -> Self {
        let request = policy.clone_request(&req);
        attach_context(&policy, &mut req);
        RetryingFuture {
            policy,
            request,
            prototype,
            service: None,
            state: State::Called {
                future: ready.call(req),
            },
        }
    }
}

impl<S, B> Future for RetryingFuture<S, B>
where
    S: Service<Request<B>> + Clone,
    S::Error: Into<BoxError>,
    RetryPolicy: Policy<Request<B>, S::Response, BoxError>,
{
    type Output = Result<S::Response, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                StateProj::Called { future } => {
                    let mut result = ready!(future.poll(cx)).map_err(Into::into);
                    let Some(req) = this.request.as_mut() else {
                        return Poll::Ready(result);
                    };
                    match this.policy.retry(req, &mut result) {
                        Some(backoff) => this.state.set(State::Waiting { backoff }),
                        None => return Poll::Ready(result),
                    }
                }
                StateProj::Waiting { backoff } => {
                    ready!(backoff.poll(cx));
                    this.state.set(State::Retrying {
                        expiry: None,
                        left: Duration::ZERO,
                    });
                }
                StateProj::Retrying { mut expiry, left } => {
                    let prototype = &**this.prototype;
                    let service = this.service.get_or_insert_with(|| {
                        // A panic while cloning leaves the copy as it was.
                        Box::new(prototype.lock().unwrap_or_else(|e| e.into_inner()).clone())
                    });
                    let ready = match service.poll_ready(cx) {
                        Poll::Ready(ready) => ready,
                        Poll::Pending => {
                            let Some(timeout) = expired(this.policy, expiry.as_mut(), left, cx)
                            else {
                                return Poll::Pending;
                            };
                            this.request.take();
                            return Poll::Ready(Err(timeout.into()));
                        }
                    };
                    if let Err(error) = ready {
                        // Done: a poll after this must not send the copy.
                        this.request.take();
                        return Poll::Ready(Err(error.into()));
                    }
                    let Some(req) = this.request.take() else {
                        // `Called` only moves on with a request in hand.
                        return Poll::Ready(Err("retry future polled after completion".into()));
                    };
                    let mut req = req;
                    *this.request = this.policy.clone_request(&req);
                    attach_context(this.policy, &mut req);
                    let future = service.call(req);
                    this.state.set(State::Called { future });
                }
            }
        }
    }
}

/// Whether the call's deadline has come while the stack is not ready: the
/// timeout then, armed on the first wait (most stacks are always ready).
fn expired(
    policy: &RetryPolicy,
    mut expiry: Pin<&mut Option<Sleep>>,
    left: &mut Duration,
    cx: &mut Context<'_>,
) -> Option<MeshError> {
    if expiry.is_none() {
        let deadline = policy.context()?.deadline()?;
        *left = deadline.remaining(clock::now());
        expiry.set(Some(tokio::time::sleep_until(
            deadline.0.to_tokio_instant(),
        )));
    }
    let fired = expiry.as_pin_mut()?.poll(cx).is_ready();
    fired.then_some(MeshError::Timeout { after: *left })
}

/// Gives an attempt the call's context (a copy of the request may have
/// been made without it).
fn attach_context<B>(policy: &RetryPolicy, req: &mut Request<B>) {
    if let Some(context) = policy.context() {
        if CallContext::of(req).is_none() {
            req.extensions_mut().insert(context.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use http::{Response, StatusCode};
    use tower::{Layer, ServiceExt};

    use crate::{Backoff, RetryConfig, RetryLayer};

    use super::*;

    /// Answers 503 to the paths that start with `/fail` the first time,
    /// 200 otherwise, and counts its clones.
    #[derive(Debug)]
    struct Counted {
        clones: Arc<AtomicUsize>,
        failed: Arc<AtomicUsize>,
    }

    impl Clone for Counted {
        fn clone(&self) -> Self {
            self.clones.fetch_add(1, Ordering::Relaxed);
            Counted {
                clones: Arc::clone(&self.clones),
                failed: Arc::clone(&self.failed),
            }
        }
    }

    impl Service<Request<String>> for Counted {
        type Response = Response<String>;
        type Error = BoxError;
        type Future = std::future::Ready<Result<Response<String>, BoxError>>;

        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, req: Request<String>) -> Self::Future {
            let fail = req.uri().path().starts_with("/fail")
                && self.failed.fetch_add(1, Ordering::Relaxed) == 0;
            let status = match fail {
                true => StatusCode::SERVICE_UNAVAILABLE,
                false => StatusCode::OK,
            };
            let mut response = Response::new(String::new());
            *response.status_mut() = status;
            std::future::ready(Ok(response))
        }
    }

    fn get(path: &str) -> Request<String> {
        Request::get(format!("http://users{path}"))
            .body(String::new())
            .expect("request")
    }

    /// A `BoxCloneService` is `Send` but not `Sync`: the layer over it,
    /// and its calls, must still be `Send` (spawned, served by axum).
    #[test]
    fn the_service_and_its_future_are_send_over_a_stack_that_is_not_sync() {
        fn send<T: Send>(_: &T) {}
        let inner = tower::util::BoxCloneService::new(Counted {
            clones: Arc::default(),
            failed: Arc::default(),
        });
        let mut retry = RetryLayer::default().layer(inner);
        send(&retry);
        send(&retry.call(get("/ok")));
    }

    #[tokio::test(start_paused = true)]
    async fn the_stack_below_is_cloned_for_a_retry_only() {
        let clones = Arc::new(AtomicUsize::new(0));
        let inner = Counted {
            clones: Arc::clone(&clones),
            failed: Arc::default(),
        };
        let config = RetryConfig::builder()
            .backoff(Backoff::constant(Duration::from_millis(1)))
            .build()
            .expect("config");
        let mut retry = RetryLayer::new(config).layer(inner);
        let made = clones.load(Ordering::Relaxed);
        for _ in 0..10 {
            let response = retry.ready().await.expect("ready").call(get("/ok")).await;
            assert_eq!(response.expect("answer").status(), StatusCode::OK);
        }
        assert_eq!(clones.load(Ordering::Relaxed), made, "no clone per call");
        let response = retry.ready().await.expect("ready").call(get("/fail")).await;
        assert_eq!(
            response.expect("answer").status(),
            StatusCode::OK,
            "retried"
        );
        assert_eq!(
            clones.load(Ordering::Relaxed),
            made + 1,
            "one clone, for the retry"
        );
    }
}
