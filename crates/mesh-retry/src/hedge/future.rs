//! [`HedgeFuture`]: one hedged call, its copies racing.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::{Request, Response};
use mesh_core::ext::{deadline_of, Attempt, AvoidEndpoints, CallContext};
use mesh_core::{clock, BoxError, FailureKind, MeshEvent};
use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};
use tower::Service;

use crate::budget::RetryBudget;
use crate::grpc;
use crate::hedge::config::Hedging;
use crate::hedge::race::{judge, Answer, Next, Race};
use crate::policy::{clone_request, failed_endpoint, service_of, PolicyState};
use crate::replay::ReplayableBody;
use crate::service::{AttemptFuture, AttemptTimeout};
use crate::trace::{AttemptAnswer, SentBecause};

pin_project! {
    /// The response future of a hedged call: the first copy is sent when
    /// it is made, then one more every [`Hedging::delay`] without an
    /// answer (at once after a non-fatal one), each paid from the retry
    /// budget and sent to an endpoint no earlier copy went to. The first
    /// fatal answer is returned and the other copies are dropped, which
    /// cancels them; when every copy ends non-fatal, the last answer is
    /// returned.
    pub struct HedgeFuture<S, B>
    where
        S: Service<Request<B>>,
    {
        call: Hedge<S, B>,
    }
}

/// The state of one hedged call.
struct Hedge<S, B>
where
    S: Service<Request<B>>,
{
    /// Where further copies go (a clone of the service the first went to).
    service: AttemptTimeout<S>,
    /// The request each copy is cloned from.
    template: Request<B>,
    hedging: Hedging,
    shared: Arc<PolicyState>,
    /// The request's budget, else the layer's.
    budget: Option<RetryBudget>,
    race: Race,
    running: Vec<Running<AttemptFuture<S::Future>>>,
    /// The call's own context, told which copy's endpoint answered.
    context: CallContext,
    /// Each copy's context (copy `n` at `n - 1`): where it went, as the
    /// balancer notes it.
    tried: Vec<CallContext>,
    avoid: AvoidEndpoints,
    /// When the next copy is due for want of an answer.
    timer: Pin<Box<Sleep>>,
    armed: bool,
    /// A copy is to be sent as soon as the service is ready.
    due: bool,
    /// The latest non-fatal answer: the call's answer if no copy does better.
    last: Option<(u32, Result<S::Response, BoxError>)>,
    /// Why the latest copy failed, for the budget's event.
    reason: Option<FailureKind>,
    /// The failure the next copy is sent at once after, if it is (else it
    /// is sent for want of an answer): its span's `mesh.retry_reason`.
    sent_after: Option<FailureKind>,
}

/// A copy on its way.
struct Running<F> {
    copy: u32,
    future: Pin<Box<F>>,
}

// === impl HedgeFuture ===

impl<S, B> HedgeFuture<S, B>
where
    S: Service<Request<B>> + Clone,
    S::Response: AttemptAnswer,
    S::Error: Into<BoxError>,
    B: ReplayableBody,
{
    /// Sends the first copy of `req` on `ready` (a service whose
    /// `poll_ready` said yes) and arms the timer for the next; copies are
    /// paid from `own_budget` (the call's), else the layer's.
    pub(crate) fn start(
        ready: &mut AttemptTimeout<S>,
        req: Request<B>,
        hedging: Hedging,
        shared: Arc<PolicyState>,
        own_budget: Option<RetryBudget>,
    ) -> Self {
        let budget = own_budget.or_else(|| shared.budget.clone());
        let avoid = req
            .extensions()
            .get::<AvoidEndpoints>()
            .cloned()
            .unwrap_or_default();
        let context = CallContext::of(&req).cloned().unwrap_or_default();
        let mut call = Hedge {
            service: ready.clone(),
            context,
            template: req,
            race: Race::new(hedging.max_attempts()),
            hedging,
            shared,
            budget,
            running: Vec::new(),
            tried: Vec::new(),
            avoid,
            timer: Box::pin(tokio::time::sleep(hedging.delay())),
            armed: false,
            due: false,
            last: None,
            reason: None,
            sent_after: None,
        };
        call.send(ready);
        HedgeFuture { call }
    }
}

impl<S, B, RB> Future for HedgeFuture<S, B>
where
    S: Service<Request<B>, Response = Response<RB>> + Clone,
    S::Error: Into<BoxError>,
    B: ReplayableBody,
{
    type Output = Result<Response<RB>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let call = self.project().call;
        loop {
            if let Some(answer) = call.poll_running(cx) {
                return Poll::Ready(answer);
            }
            if call.armed && call.timer.as_mut().poll(cx).is_ready() {
                call.armed = false;
                call.due = true;
                call.sent_after = None;
            }
            if call.due && call.past_deadline() {
                call.race.close();
            }
            if !(call.due && call.race.may_send()) {
                if call.race.is_idle() && !call.race.may_send() {
                    return Poll::Ready(call.finish());
                }
                return Poll::Pending;
            }
            match call.service.poll_ready(cx) {
                // A stack that applies backpressure is waited for no longer
                // than the deadline: the timer, unless armed, is set to it
                // (when it fires, the deadline closes the race).
                Poll::Pending if call.armed => return Poll::Pending,
                Poll::Pending => match call.deadline_at() {
                    Some(at) => {
                        call.timer.as_mut().reset(at);
                        call.armed = true;
                    }
                    None => return Poll::Pending,
                },
                Poll::Ready(Err(error)) => {
                    // The copies already out may still answer.
                    call.race.close();
                    // Copy 0: no copy was sent, none answered.
                    call.last.get_or_insert((0, Err(error)));
                }
                Poll::Ready(Ok(())) if call.withdraw() => {
                    let mut service = call.service.clone();
                    std::mem::swap(&mut service, &mut call.service);
                    call.send(&mut service);
                }
                Poll::Ready(Ok(())) => call.race.close(),
            }
        }
    }
}

impl<S, B> std::fmt::Debug for HedgeFuture<S, B>
where
    S: Service<Request<B>>,
{
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HedgeFuture")
            .field("hedging", &self.call.hedging)
            .field("race", &self.call.race)
            .finish_non_exhaustive()
    }
}

// === impl Hedge ===

impl<S, B> Hedge<S, B>
where
    S: Service<Request<B>> + Clone,
    S::Response: AttemptAnswer,
    S::Error: Into<BoxError>,
    B: ReplayableBody,
{
    /// Sends the next copy on `ready`, and arms the timer for the one
    /// after, if any may follow.
    fn send(&mut self, ready: &mut AttemptTimeout<S>) {
        let copy = self.race.sent();
        let req = self.copy_of_request(copy);
        self.running.push(Running {
            copy,
            future: Box::pin(ready.call(req)),
        });
        self.due = false;
        self.armed = self.race.may_send();
        if self.armed {
            let next = Instant::now() + self.hedging.delay();
            self.timer.as_mut().reset(next);
        }
        if copy > 1 {
            let counters = &self.shared.counters;
            counters.hedges.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(attempt = copy, avoid = ?self.avoid, "hedging: another copy sent");
        }
    }

    /// Copy number `copy` of the request: its attempt number, the earlier
    /// copies' endpoints to avoid, a slot for the balancer to name its
    /// endpoint, and (gRPC) the count of copies before it.
    fn copy_of_request(&mut self, copy: u32) -> Request<B> {
        for tried in &self.tried {
            if let Some(endpoint) = tried.chosen() {
                self.avoid.insert(endpoint.id().clone());
            }
        }
        let mut req = clone_request(&self.template, true);
        let context = self.context.fork();
        self.tried.push(context.clone());
        let ext = req.extensions_mut();
        ext.insert(context);
        ext.insert(Attempt(Attempt::FIRST.0.saturating_add(copy - 1)));
        if !self.avoid.is_empty() {
            ext.insert(self.avoid.clone());
        }
        if copy > 1 {
            let ext = req.extensions_mut();
            ext.insert(SentBecause::Hedge(self.sent_after.take()));
            grpc::note_previous_attempts(&mut req, copy - 1);
        }
        req
    }
}

impl<S, B, RB> Hedge<S, B>
where
    S: Service<Request<B>, Response = Response<RB>> + Clone,
    S::Error: Into<BoxError>,
    B: ReplayableBody,
{
    /// Polls the copies on their way; the call's answer once it has one.
    fn poll_running(&mut self, cx: &mut Context<'_>) -> Option<Result<Response<RB>, BoxError>> {
        let mut i = 0;
        while i < self.running.len() {
            let Poll::Ready(result) = self.running[i].future.as_mut().poll(cx) else {
                i += 1;
                continue;
            };
            let copy = self.running.swap_remove(i).copy;
            if let Some(answer) = self.settle(copy, result) {
                return Some(answer);
            }
        }
        None
    }

    /// Copy `copy` answered `result`: the call's answer if it ends the
    /// call, else what it means for the next copy.
    fn settle(
        &mut self,
        copy: u32,
        result: Result<Response<RB>, BoxError>,
    ) -> Option<Result<Response<RB>, BoxError>> {
        let answer = judge(
            &self.hedging,
            &self.shared.classifier,
            &result,
            self.context.is_grpc_call(),
        );
        let next = self.race.settle(answer);
        if let Answer::NonFatal { reason, .. } = answer {
            tracing::debug!(attempt = copy, %reason, "hedging: a copy failed, non-fatally");
            if let Some(id) = failed_endpoint(&result, self.tried_by(copy)) {
                self.avoid.insert(id);
            }
            self.reason = Some(reason);
        }
        match next {
            Next::Return => {
                tracing::debug!(
                    copies = self.race.copies(),
                    answered_by = copy,
                    "hedging: done"
                );
                if answer == Answer::Fatal && copy > 1 {
                    let counters = &self.shared.counters;
                    counters.hedges_won.fetch_add(1, Ordering::Relaxed);
                }
                // Dropping the other copies cancels them.
                self.running.clear();
                self.adopt(copy);
                return Some(result);
            }
            Next::SendNow => {
                self.due = true;
                self.sent_after = self.reason;
            }
            // The server's pushback would outlast the call's deadline: no
            // copy is waited for. With none left running this answer is
            // the call's; else the copies out may still answer, and one
            // answering non-fatally may still send the next at once.
            Next::SendAfter(wait) if self.outlasts_deadline(wait) => match self.race.is_idle() {
                true => self.race.close(),
                false => {
                    self.due = false;
                    self.armed = false;
                }
            },
            Next::SendAfter(wait) => {
                self.due = false;
                self.armed = true;
                self.timer.as_mut().reset(Instant::now() + wait);
            }
            Next::Await => {}
        }
        self.last = Some((copy, result));
        None
    }

    /// The context copy `copy` was sent with.
    fn tried_by(&self, copy: u32) -> Option<&CallContext> {
        self.tried.get(usize::try_from(copy).ok()?.checked_sub(1)?)
    }

    /// Copy `copy`'s answer is the call's: its endpoint is the call's.
    fn adopt(&self, copy: u32) {
        if let Some(tried) = self.tried_by(copy) {
            self.context.adopt_choice(tried);
        }
    }

    /// Takes a token for another copy from the budget, if there is one;
    /// `false` (counted and published) when it is spent.
    fn withdraw(&mut self) -> bool {
        let Some(budget) = &self.budget else {
            return true;
        };
        if budget.try_withdraw(clock::now()) {
            return true;
        }
        let shared = &self.shared;
        shared
            .counters
            .budget_exhausted
            .fetch_add(1, Ordering::Relaxed);
        tracing::debug!("hedging: no other copy, the retry budget is spent");
        // A copy sent for want of an answer has no failure to name; one
        // sent after a non-fatal answer has.
        if let Some(reason) = self.reason {
            shared.events.publish(MeshEvent::RetryBudgetExhausted {
                service: service_of(&self.template),
                reason,
            });
        }
        false
    }

    /// Whether the request's deadline has passed: no copy is worth sending.
    fn past_deadline(&self) -> bool {
        deadline_of(&self.template).is_some_and(|d| d.remaining(clock::now()).is_zero())
    }

    /// When the request's deadline falls, on the runtime's clock.
    fn deadline_at(&self) -> Option<Instant> {
        let deadline = deadline_of(&self.template)?;
        Some(deadline.0.to_tokio_instant())
    }

    /// Whether waiting `wait` would reach the request's deadline.
    fn outlasts_deadline(&self, wait: Duration) -> bool {
        deadline_of(&self.template).is_some_and(|d| d.remaining(clock::now()) <= wait)
    }

    /// The call's answer when no copy is running and none may follow: the
    /// last one received.
    fn finish(&mut self) -> Result<Response<RB>, BoxError> {
        match self.last.take() {
            Some((copy, result)) => {
                self.adopt(copy);
                result
            }
            None => Err("hedged call ended without an answer".into()),
        }
    }
}
