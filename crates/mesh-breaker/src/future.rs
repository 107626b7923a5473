use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use mesh_core::clock::Nanos;
use mesh_core::ext::{AttemptBound, CallContext};
use mesh_core::grpc::Answer;
use mesh_core::{clock, BoxError, Endpoint, EndpointSet, MeshError, Outcome};
use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};

use crate::body::ResponseBody;
use crate::circuit::Permit;
use crate::registry::Entry;
use crate::service::Crossing;

/// Holds a call's permit until its outcome is recorded. A call dropped
/// before it finished (cancelled by its caller) is recorded as ignored: it
/// says nothing about the upstream, and a probe's slot goes to another
/// call instead of leaving the circuit half-open until it times out. One
/// dropped after its call timeout had run out is a timeout all the same
/// (a caller whose own limit ended on the same tick cancelled it first).
pub(crate) struct Tracker {
    entry: Arc<Entry>,
    permit: Permit,
    called: Called,
    started: Option<Instant>,
    timed_out_at: Option<(Instant, Duration)>,
    /// Whether the call is a gRPC call, when its context says: a plain
    /// call's answer is judged by its HTTP status.
    grpc_call: Option<bool>,
    /// The endpoint's service, and the most of it that may be ejected
    /// (percent), when a cap applies.
    peers: Option<(Peers, f64)>,
    done: bool,
}

/// The endpoint a call went to: a copy of its own (for a request without
/// a call context), or its call context's choice, read only when the
/// outcome needs it (a transition, an ejection, a reported crossing), so
/// that a call that changes nothing copies nothing. The context still
/// names this attempt's endpoint then: the outcome is recorded before the
/// retry layer above starts another attempt.
pub(crate) enum Called {
    Here(Option<Endpoint>),
    InContext(CallContext),
}

impl Called {
    /// The endpoint, if the call named one.
    pub(crate) fn endpoint(&self) -> Option<Endpoint> {
        match self {
            Called::Here(endpoint) => endpoint.clone(),
            Called::InContext(context) => context.chosen(),
        }
    }
}

/// Where a call's peers are found when its breaker is about to open: its
/// call context, read only then (most calls never open one), or, for a
/// request that noted them without a context, a copy of the set.
pub(crate) enum Peers {
    InContext(CallContext),
    Set(EndpointSet),
}

impl Tracker {
    pub(crate) fn new(entry: Arc<Entry>, permit: Permit, called: Called) -> Self {
        Tracker {
            started: entry.outcomes.times_calls.then(Instant::now),
            entry,
            permit,
            called,
            timed_out_at: None,
            grpc_call: None,
            peers: None,
            done: false,
        }
    }

    /// Notes whether the call is a gRPC call, as its context says.
    pub(crate) fn grpc_call(mut self, grpc_call: Option<bool>) -> Self {
        self.grpc_call = grpc_call;
        self
    }

    /// Caps the ejection of this call's endpoint: at most `percent` of
    /// `peers` ejected at once.
    pub(crate) fn among(mut self, peers: Peers, percent: f64) -> Self {
        self.peers = Some((peers, percent));
        self
    }

    /// Whether this call's breaker may open until `until`: asked by the
    /// circuit, under its lock, before it enters OPEN. Without a cap, yes.
    /// With one, yes only while fewer of the service's other endpoints are
    /// ejected than the cap allows (at least one endpoint may always go);
    /// and then the endpoint is ejected here, under the layer's ejection
    /// lock, so that a concurrent trip of another endpoint counts it: two
    /// breakers of this layer never both take the last room.
    fn reserve_ejection(&self, until: Nanos) -> bool {
        let Some((peers, percent)) = &self.peers else {
            return true;
        };
        let Some(me) = self.called.endpoint() else {
            return true;
        };
        let _serialized = self
            .entry
            .outcomes
            .ejections
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let now = clock::now();
        let count = |set: &EndpointSet| {
            let ejected = set
                .iter()
                .filter(|e| e.id() != me.id() && e.state().ejected_until(now).is_some())
                .count();
            (ejected, set.len())
        };
        let (ejected, total) = match peers {
            Peers::Set(set) => count(set),
            Peers::InContext(context) => match context.with_endpoints(count) {
                Some(counted) => counted,
                None => return true,
            },
        };
        let allowed = (total as f64 * percent / 100.0).floor().max(1.0) as usize;
        if ejected >= allowed {
            return false;
        }
        me.state().eject_until(until.max(now));
        true
    }

    /// Notes that the call's timeout of `limit` runs out `at`.
    fn times_out(&mut self, at: Instant, limit: Duration) {
        self.timed_out_at = Some((at, limit));
    }

    /// Notes that the call answered within its timeout: from now on a
    /// drop is a cancellation, however late.
    fn answered(&mut self) {
        self.timed_out_at = None;
    }

    /// Records a timeout after `limit`, as the classifier judges it.
    fn finish_timed_out(&mut self, limit: Duration) -> MeshError {
        let timeout = MeshError::Timeout { after: limit };
        let outcome = self.classifier().classify_error_outcome(&timeout);
        self.finish(outcome);
        timeout
    }

    pub(crate) fn classifier(&self) -> &mesh_core::FailureClassifier {
        &self.entry.outcomes.classifier
    }

    pub(crate) fn finish(&mut self, outcome: Outcome) {
        self.done = true;
        let elapsed = self.started.map_or(Duration::ZERO, |s| s.elapsed());
        let entry = &self.entry;
        let recorded =
            entry
                .circuit
                .record_gated(self.permit, outcome, elapsed, clock::now, |until| {
                    self.reserve_ejection(until)
                });
        if recorded.opening_held {
            // The rest of the service is out already: this endpoint keeps
            // serving, its failures counted afresh. Debug, not info: under
            // a full outage this repeats for every capped endpoint.
            let endpoint = self.called.endpoint();
            tracing::debug!(service = ?entry.service, endpoint = ?endpoint.as_ref().map(|e| e.id()), "ejection cap reached: the endpoint stays in service");
        }
        if recorded.probe_slot_freed {
            // A cancelled probe gave its slot back: if probes were
            // exhausted, the endpoint was ejected until they reported;
            // let the balancer send the next probe instead of waiting out
            // the half-open maximum wait.
            if let Some(endpoint) = self.called.endpoint() {
                endpoint.state().clear_ejection();
            }
        }
        let crossings = [
            recorded.failure_rate_exceeded.map(Crossing::FailureRate),
            recorded.slow_call_rate_exceeded.map(Crossing::SlowCallRate),
        ];
        if crossings.iter().any(Option::is_some) {
            entry.outcomes.report_crossings(
                entry.service.as_ref(),
                self.called.endpoint().as_ref(),
                crossings.into_iter().flatten(),
            );
        }
        if let Some(t) = recorded.transition {
            entry.announce(self.called.endpoint().as_ref(), t, clock::now());
        }
    }
}

impl Drop for Tracker {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        match self.timed_out_at {
            Some((at, limit)) if Instant::now() >= at => {
                self.finish_timed_out(limit);
            }
            _ => self.finish(Outcome::Ignored),
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
        Called {
            #[pin]
            future: F,
            // Made on the first poll, not in `call`, so that building the
            // future needs no timer.
            #[pin]
            timeout: Option<Sleep>,
            after: Option<Duration>,
            tracker: Option<Tracker>,
            // Told when the timer will end the attempt, so that a retry
            // layer above with no earlier limit needs no timer of its own;
            // the note is withdrawn as soon as this call is over.
            context: Option<CallContext>,
            bound: Option<AttemptBound>,
        },
        Rejected { error: Option<MeshError> },
    }
}

impl<F> ResponseFuture<F> {
    pub(crate) fn called(
        future: F,
        tracker: Tracker,
        timeout: Option<Duration>,
        context: Option<CallContext>,
    ) -> Self {
        ResponseFuture {
            state: State::Called {
                future,
                timeout: None,
                after: timeout,
                tracker: Some(tracker),
                context,
                bound: None,
            },
        }
    }

    pub(crate) fn unguarded(
        future: F,
        timeout: Option<Duration>,
        context: Option<CallContext>,
    ) -> Self {
        ResponseFuture {
            state: State::Called {
                future,
                timeout: None,
                after: timeout,
                tracker: None,
                context,
                bound: None,
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
    type Output = Result<http::Response<ResponseBody<B>>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().state.project() {
            StateProj::Called {
                future,
                mut timeout,
                after,
                tracker,
                context,
                bound,
            } => {
                if let Poll::Ready(result) = future.poll(cx) {
                    bound.take();
                    let result = result.map_err(Into::into);
                    return Poll::Ready(judge(result, tracker.take()));
                }
                let Some(limit) = *after else {
                    return Poll::Pending;
                };
                if timeout.is_none() {
                    // One reading dates the timer, the tracker's note and
                    // the bound, so the bound is the timer's own end.
                    let at = Instant::now() + limit;
                    timeout.set(Some(tokio::time::sleep_until(at)));
                    if let Some(tracker) = tracker.as_mut() {
                        tracker.times_out(at, limit);
                    }
                    if let Some(context) = context.take() {
                        *bound = Some(context.bound_attempt(Nanos::from_instant(at.into_std())));
                    }
                }
                if let Some(sleep) = timeout.as_pin_mut() {
                    if sleep.poll(cx).is_ready() {
                        bound.take();
                        // The call is cancelled when the caller drops this
                        // future, right after this answer.
                        let error = match tracker.take() {
                            Some(mut tracker) => tracker.finish_timed_out(limit),
                            None => MeshError::Timeout { after: limit },
                        };
                        return Poll::Ready(Err(error.into()));
                    }
                }
                Poll::Pending
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

/// Records the outcome of a call that ended with `result`, now, or for a
/// gRPC answer whose status comes in trailers, when its body ends.
fn judge<B>(
    result: Result<http::Response<B>, BoxError>,
    tracker: Option<Tracker>,
) -> Result<http::Response<ResponseBody<B>>, BoxError> {
    let Some(mut tracker) = tracker else {
        return result.map(|r| r.map(ResponseBody::judged));
    };
    let outcome = match &result {
        Ok(response) => match Answer::of_call(tracker.grpc_call, response) {
            Answer::Streamed => {
                tracker.answered();
                return result.map(|r| r.map(|body| ResponseBody::judged_at_end(body, tracker)));
            }
            answer => tracker
                .classifier()
                .classify_answer(response.status(), answer),
        },
        Err(error) => tracker.classifier().classify_error_outcome(&**error),
    };
    tracker.finish(outcome);
    result.map(|r| r.map(ResponseBody::judged))
}
