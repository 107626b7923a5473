use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::{Request, Response};
use mesh_core::clock::{self, Nanos};
use mesh_core::ext::{deadline_of, CallContext, Deadline};
use mesh_core::grpc::{is_grpc_call, timeout_in};
use mesh_core::{BoxError, MeshError};
use pin_project_lite::pin_project;
use tokio::time::Sleep;
use tower::Service;
use tracing::Span;

use crate::budget::RetryBudget;
use crate::call_policy::CallPolicy;
use crate::future::ResponseFuture;
use crate::hedge::{HedgeFuture, Hedging};
use crate::policy::{may_repeat, PolicyState, RetryPolicy};
use crate::replay::ReplayableBody;
use crate::retrying::RetryingFuture;
use crate::trace::{self, AttemptAnswer};

/// Sends a request again when an attempt fails in a retryable way; see the
/// [crate docs](crate).
///
/// It works as tower's own [`tower::retry::Retry`] driven by a
/// [`RetryPolicy`] would (the policy can drive one), over the inner
/// service as [`AttemptTimeout`] sees it:
/// each attempt bounded by the per-attempt timeout and the request's
/// deadline, its errors boxed (so the policy can classify any error the
/// stack below produces).
/// Before the first attempt it counts the request for the retry budget (the
/// [`RetryBudget`] the request carries as an extension, if any, else its
/// service's when the layer keeps one per service
/// ([`crate::RetryLayer::budget_per_service`]), else the layer's) and
/// notes the call's deadline in its
/// [`CallContext`]: the earlier of the caller's (a [`Deadline`]) and the
/// configuration's.
///
/// A call is hedged instead ([`HedgeFuture`]) when the request's
/// [`CallPolicy`], or else the configuration, has [`Hedging`], and the
/// request may be sent more than once: an idempotent method, an
/// `Idempotency-Key`, `retry_non_idempotent`, or a gRPC call; and a
/// replayable body. Other calls take the retry path.
///
/// A call holds a shared copy of the stack below, made once by the layer,
/// and clones it only if it is retried: calls that are not (most) share
/// one reference count instead of cloning the stack. So, unlike tower's
/// `Retry`, a retry goes through a clone of the stack as the layer got it,
/// not of the service the call went through: the same for stacks whose
/// clones share their state (every mesh layer, hyper's client), not for
/// one whose clones copy it; and the layer needs the stack to be `Clone`.
pub struct Retry<S> {
    inner: AttemptTimeout<S>,
    prototype: Arc<std::sync::Mutex<AttemptTimeout<S>>>,
    shared: Arc<PolicyState>,
}

impl<S: Clone> Retry<S> {
    pub(crate) fn new(inner: S, shared: Arc<PolicyState>) -> Self {
        let per_attempt = shared.config.per_attempt_timeout();
        let inner = AttemptTimeout { inner, per_attempt };
        Retry {
            prototype: Arc::new(std::sync::Mutex::new(inner.clone())),
            inner,
            shared,
        }
    }
}

impl<S: Clone> Clone for Retry<S> {
    fn clone(&self) -> Self {
        Retry {
            inner: self.inner.clone(),
            prototype: Arc::clone(&self.prototype),
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<S: std::fmt::Debug> std::fmt::Debug for Retry<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Retry")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl<S, B, RB> Service<Request<B>> for Retry<S>
where
    S: Service<Request<B>, Response = Response<RB>> + Clone,
    S::Error: Into<BoxError>,
    B: ReplayableBody,
{
    type Response = Response<RB>;
    type Error = BoxError;
    type Future = ResponseFuture<S, B>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let shared = &*self.shared;
        let sequence = shared.counters.requests.fetch_add(1, Ordering::Relaxed);
        // Read at most once, for the budget and the deadline alike.
        let mut reading = None;
        let mut now = || *reading.get_or_insert_with(clock::now);
        // The call's own account: the request's, else its service's.
        // Only this layer reads it: taken off the request, it leaves the
        // replay copy nothing to copy but the context.
        let own_budget = req.extensions_mut().remove::<RetryBudget>().or_else(|| {
            let budgets = shared.service_budgets.as_ref()?;
            Some(budgets.of(&req))
        });
        match (&own_budget, &shared.budget) {
            // Counted at the exact time: the layer's request sequence says
            // nothing about how recently this account last read the clock.
            (Some(own), _) => own.deposit(now()),
            (None, Some(layer)) => layer.deposit_counted(sequence),
            (None, None) => {}
        }
        // One context for the call's attempts (the caller's, if it
        // attached one): its deadline, and where the balancer names each
        // attempt's endpoint, read back here to avoid it next time.
        let context = CallContext::of(&req).cloned().unwrap_or_default();
        // Looked at once here: the layers below, and this one's policy,
        // judge a plain call's answers without looking for a gRPC status.
        let grpc_call = is_grpc_call(&req);
        context.note_grpc_call(grpc_call);
        // The earliest of the caller's deadline (noted, or a gRPC call's
        // `grpc-timeout`) and ours.
        let grpc_timeout = grpc_call.then(|| timeout_in(req.headers())).flatten();
        let deadlines = [
            deadline_of(&req),
            grpc_timeout.map(|t| Deadline(now().saturating_add(t))),
            shared
                .config
                .deadline()
                .map(|d| Deadline(now().saturating_add(d))),
        ];
        if let Some(earliest) = deadlines.into_iter().flatten().min() {
            context.set_deadline(earliest);
        }
        // The first attempt is made now, the others while the response
        // future is polled: both inside the call's span, their parent.
        let span = trace::call_span(&req, &shared.route);
        let entered = span.enter();
        if let Some(hedging) = self.hedging_for(&req, grpc_call) {
            if CallContext::of(&req).is_none() {
                req.extensions_mut().insert(context);
            }
            let shared = Arc::clone(&self.shared);
            let future = HedgeFuture::start(&mut self.inner, req, hedging, shared, own_budget);
            drop(entered);
            return ResponseFuture::hedging(future, span, Some(grpc_call));
        }
        let policy = RetryPolicy::for_call(Arc::clone(&self.shared), context, own_budget);
        let prototype = Arc::clone(&self.prototype);
        let future = RetryingFuture::start(policy, &mut self.inner, prototype, req);
        drop(entered);
        ResponseFuture::retrying(future, span, Some(grpc_call))
    }
}

impl<S> Retry<S> {
    /// The hedging `req` gets, if any: its [`CallPolicy`]'s (which may
    /// have none), else the configuration's; only for a request that may
    /// be sent more than once (`grpc_call`: a gRPC call's retry policy,
    /// not its method, says so).
    fn hedging_for<B: ReplayableBody>(&self, req: &Request<B>, grpc_call: bool) -> Option<Hedging> {
        let config = &self.shared.config;
        let hedging = match req.extensions().get::<CallPolicy>() {
            Some(policy) => policy.hedging(),
            None => config.hedging(),
        }?;
        let repeatable = may_repeat(config, req) || grpc_call;
        (repeatable && req.body().is_replayable()).then_some(*hedging)
    }
}

/// Bounds each attempt by the per-attempt timeout and by the time left
/// before the request's [`Deadline`]; an attempt cut short fails with
/// [`MeshError::Timeout`], which the policy may retry. Cut by the
/// per-attempt timeout, the timeout names the endpoint (inside
/// [`MeshError::Endpoint`]), avoided by the next attempt; cut by the
/// deadline, it names none. The inner service's errors come out boxed, as
/// the policy classifies them.
///
/// Cut here, above the stack, an attempt is cancelled for the layers below:
/// a breaker under it records no failure. To count slow calls against an
/// endpoint, time them with the breaker's `call_timeout` instead.
#[derive(Clone, Debug)]
pub struct AttemptTimeout<S> {
    inner: S,
    per_attempt: Option<Duration>,
}

impl<S, B> Service<Request<B>> for AttemptTimeout<S>
where
    S: Service<Request<B>>,
    S::Response: AttemptAnswer,
    S::Error: Into<BoxError>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = AttemptFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        // A call's own policy sets its attempts' timeout, none included.
        let per_attempt = req
            .extensions()
            .get::<CallPolicy>()
            .map_or(self.per_attempt, CallPolicy::per_attempt_timeout);
        // The clock is read only for a limit to date.
        let deadline = deadline_of(&req);
        let now = (per_attempt.is_some() || deadline.is_some()).then(clock::now);
        let left = deadline.zip(now).map(|(d, now)| d.remaining(now));
        let limit = match (per_attempt, left) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        // Cut by the per-attempt timeout, the attempt was too slow and its
        // endpoint is named (the balancer notes it here) so the next
        // attempt avoids it; cut by the deadline, the caller's time ran
        // out, which says nothing about the endpoint.
        let endpoint_to_blame = per_attempt.is_some() && limit == per_attempt;
        // The call's context (a hedged copy's own) names the endpoint this
        // attempt goes to, once the balancer picks it.
        let context = CallContext::attach(&mut req).clone();
        context.begin_attempt();
        if let Some(left) = left {
            let grpc_call = context.is_grpc_call();
            crate::grpc::note_time_left(&mut req, left, grpc_call);
        }
        // The layers below are called, and later polled, inside the
        // attempt's span: the balancer's pick and the breaker's verdict
        // belong to this attempt.
        let span = trace::attempt_span(&req);
        #[cfg(feature = "opentelemetry")]
        crate::propagate::inject(&span, req.headers_mut());
        // Entered rather than `in_scope`: a closure would move the request
        // once more on its way to the call.
        // A deadline already passed sends nothing: the request would
        // reach the server only to be cancelled at once.
        let expired = limit.is_some_and(|l| l.is_zero());
        let entered = span.enter();
        let inner = (!expired).then(|| self.inner.call(req));
        drop(entered);
        AttemptFuture {
            inner,
            sleep: None,
            until: limit.zip(now).map(|(l, now)| now.saturating_add(l)),
            limit: limit.unwrap_or_default(),
            context,
            endpoint_to_blame,
            trace: AttemptTrace { span, done: false },
        }
    }
}

pin_project! {
    /// The response future of [`AttemptTimeout`].
    pub struct AttemptFuture<F> {
        // None when the deadline had passed before the attempt was made.
        #[pin]
        inner: Option<F>,
        // Set on a poll that finds the attempt pending, unless a layer
        // below still promises to end it by `until` (the breaker's call
        // timeout, noted in the context): one timer instead of two.
        #[pin]
        sleep: Option<Sleep>,
        // When the attempt must have ended.
        until: Option<Nanos>,
        limit: Duration,
        context: CallContext,
        endpoint_to_blame: bool,
        trace: AttemptTrace,
    }
}

/// The attempt's span, marked `cancelled` if the attempt is dropped before
/// its answer (a hedged copy that lost, a call given up).
struct AttemptTrace {
    span: Span,
    done: bool,
}

// === impl AttemptTrace ===

impl AttemptTrace {
    /// Records the attempt's answer.
    fn finish<T: AttemptAnswer>(&mut self, result: &Result<T, BoxError>, context: &CallContext) {
        self.done = true;
        trace::record_attempt(&self.span, result, context);
    }
}

impl Drop for AttemptTrace {
    fn drop(&mut self) {
        if !self.done {
            trace::record_cancelled(&self.span);
        }
    }
}

impl<F, T, E> Future for AttemptFuture<F>
where
    F: Future<Output = Result<T, E>>,
    T: AttemptAnswer,
    E: Into<BoxError>,
{
    type Output = Result<T, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        let Some(inner) = this.inner.as_pin_mut() else {
            let result = Err(MeshError::Timeout { after: *this.limit }.into());
            this.trace.finish(&result, this.context);
            return Poll::Ready(result);
        };
        let polled = {
            let _entered = this.trace.span.enter();
            inner.poll(cx)
        };
        if let Poll::Ready(result) = polled {
            let result = result.map_err(Into::into);
            this.trace.finish(&result, this.context);
            return Poll::Ready(result);
        }
        // Looked at on every poll: the bound lasts only while the layer
        // that noted it still has the call (a layer between may wait on
        // after it answered).
        if let (true, Some(until)) = (this.sleep.is_none(), *this.until) {
            let covered = this.context.attempt_bound().is_some_and(|b| b <= until);
            if !covered {
                this.sleep
                    .set(Some(tokio::time::sleep_until(until.to_tokio_instant())));
            }
        }
        if let Some(sleep) = this.sleep.as_pin_mut() {
            if sleep.poll(cx).is_ready() {
                let timeout = MeshError::Timeout { after: *this.limit };
                // Name the endpoint that was too slow (per-attempt timeouts
                // only), so the policy puts it on the avoid list.
                let blamed = match this.endpoint_to_blame {
                    true => this.context.chosen_with_service(),
                    false => None,
                };
                let error = match blamed {
                    Some((service, endpoint)) => MeshError::Endpoint {
                        service,
                        endpoint: endpoint.id().clone(),
                        address: endpoint.address(),
                        source: Box::new(timeout),
                    },
                    None => timeout,
                };
                let result = Err(error.into());
                this.trace.finish(&result, this.context);
                return Poll::Ready(result);
            }
        }
        Poll::Pending
    }
}

impl<F> std::fmt::Debug for AttemptFuture<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AttemptFuture")
            .field("limit", &self.limit)
            .finish_non_exhaustive()
    }
}
