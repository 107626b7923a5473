//! [`RetryPolicy`]: the decisions, as a [`tower::retry::Policy`].

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use http::header::RETRY_AFTER;
use http::{Method, Request, Response, StatusCode};
use mesh_core::clock;
use mesh_core::ext::{
    deadline_of, Attempt, AvoidEndpoints, CallContext, Destination, SelectedEndpoint,
};
use mesh_core::{
    BoxError, EndpointId, EventBus, FailureClassifier, FailureKind, MeshError, MeshEvent,
    ServiceName,
};
use tokio::time::Sleep;

use crate::backoff::Backoff;
use crate::budget::RetryBudget;
use crate::call_policy::CallPolicy;
use crate::config::{RetryConfig, RetryContext};
use crate::grpc::{self, Pushback};
use crate::replay::ReplayableBody;
use crate::stats::{Counters, RetryStats};
use crate::trace::SentBecause;
use mesh_core::grpc::Answer;

pub(crate) struct PolicyState {
    pub(crate) config: RetryConfig,
    pub(crate) classifier: FailureClassifier,
    pub(crate) events: EventBus,
    pub(crate) counters: Counters,
    pub(crate) budget: Option<RetryBudget>,
    /// One budget per service, when the layer keeps them
    /// ([`crate::RetryLayer::budget_per_service`]).
    pub(crate) service_budgets: Option<crate::service_budgets::ServiceBudgets>,
    /// The route's names for its call spans, once given
    /// ([`crate::RetryLayer::name_route`]).
    pub(crate) route: std::sync::OnceLock<crate::trace::RouteNames>,
}

impl PolicyState {
    pub(crate) fn stats(&self) -> RetryStats {
        self.counters.snapshot()
    }
}

impl std::fmt::Debug for PolicyState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PolicyState")
            .field("config", &self.config)
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

/// Decides, per request, whether and when to send it again.
///
/// It implements [`tower::retry::Policy`], so it also works with tower's
/// own `Retry` service: take one from [`crate::RetryLayer::policy`]. A
/// policy value is cloned for each request (tower does this), and counts
/// that request's retries. With tower's `Retry` directly, the layer's
/// per-request parts (request counting for the budget, the deadline, the
/// per-attempt timeout) are not applied; [`crate::RetryLayer`] does them.
///
/// Backoff sleeps on tokio's timer, so the runtime must have time enabled
/// (`#[tokio::main]` does; a hand-built runtime needs `enable_time`).
#[derive(Clone, Debug)]
pub struct RetryPolicy {
    shared: Arc<PolicyState>,
    retries: u32,
    previous_delay: Option<Duration>,
    /// Retries made up to the server's last pushback: the backoff starts
    /// again from its first delay after one (gRFC A6).
    since_pushback: u32,
    /// The call's context when the layer's own retry future drives this
    /// policy: it attaches the context to each attempt, so copies of the
    /// request need not carry it.
    context: Option<CallContext>,
    /// The call's own budget, taken off the request (whose copies then
    /// need no extensions at all), else the request's or the layer's.
    budget: Option<RetryBudget>,
}

impl RetryPolicy {
    pub(crate) fn new(shared: Arc<PolicyState>) -> Self {
        RetryPolicy {
            shared,
            retries: 0,
            previous_delay: None,
            since_pushback: 0,
            context: None,
            budget: None,
        }
    }

    /// The policy of one call whose attempts carry `context`, paying its
    /// retries from `budget` when it has one of its own.
    pub(crate) fn for_call(
        shared: Arc<PolicyState>,
        context: CallContext,
        budget: Option<RetryBudget>,
    ) -> Self {
        RetryPolicy {
            context: Some(context),
            budget,
            ..RetryPolicy::new(shared)
        }
    }

    /// The call's context, when the layer's retry future drives this
    /// policy.
    pub(crate) fn context(&self) -> Option<&CallContext> {
        self.context.as_ref()
    }

    /// Whether `req` may be sent more than once whatever the failure:
    /// idempotent methods (RFC 9110 section 9.2.2), requests carrying an
    /// `Idempotency-Key`, or anything when configured so. Other requests
    /// are retried only after failures that prove they were never sent.
    pub fn may_retry<B>(&self, req: &Request<B>) -> bool {
        may_repeat(&self.shared.config, req)
    }

    /// The retries `req` may have: its [`CallPolicy`]'s, else the layer's.
    fn max_retries<B>(&self, req: &Request<B>) -> u32 {
        req.extensions()
            .get::<CallPolicy>()
            .map_or(self.shared.config.max_retries(), CallPolicy::max_retries)
    }

    /// The backoff of `req`: its [`CallPolicy`]'s, else the layer's.
    fn backoff<'a, B>(&'a self, req: &'a Request<B>) -> &'a Backoff {
        req.extensions()
            .get::<CallPolicy>()
            .map_or(self.shared.config.backoff(), CallPolicy::backoff)
    }

    /// Whether `req` is retried after `code`: its [`CallPolicy`] says,
    /// else the layer.
    fn retries_grpc<B>(&self, req: &Request<B>, code: mesh_core::grpc::GrpcCode) -> bool {
        match req.extensions().get::<CallPolicy>() {
            Some(policy) => policy.retries_grpc(code),
            None => self.shared.config.retries_grpc(code),
        }
    }

    /// How long to wait before retrying after `result`, and whether the
    /// server's pushback set it; `None` when the server's answer says not
    /// to retry. A gRPC pushback (`grpc-retry-pushback-ms`) is followed
    /// exactly, bounded only by the deadline, as gRFC A6 asks; a
    /// `Retry-After` is followed up to `max_retry_after`; else the backoff.
    fn wait<B, RB>(
        &self,
        req: &Request<B>,
        result: &Result<Response<RB>, BoxError>,
    ) -> Option<(Duration, bool)> {
        let config = &self.shared.config;
        let Ok(response) = result else {
            return Some((self.backoff_delay(req), false));
        };
        let grpc_call = self.context.as_ref().and_then(CallContext::is_grpc_call);
        if let Answer::TrailersOnly(_) = Answer::of_call(grpc_call, response) {
            match grpc::pushback(response) {
                Some(Pushback::After(d)) => return Some((d, true)),
                Some(Pushback::Stop) => {
                    tracing::debug!("not retried: the server pushed back for good");
                    return None;
                }
                None => {}
            }
        }
        let hint = config
            .honor_retry_after()
            .then(|| retry_after(response, SystemTime::now()))
            .flatten();
        match hint {
            // A server asking for more than we would wait: give up now and
            // hand back its answer, rather than retry early against its
            // wish or hold the caller for longer than configured.
            Some(hint) if hint > config.max_retry_after() => {
                tracing::debug!(?hint, max = ?config.max_retry_after(), "not retried: Retry-After beyond max_retry_after");
                None
            }
            Some(hint) => Some((hint, false)),
            None => Some((self.backoff_delay(req), false)),
        }
    }

    /// The backoff before the next retry, counted from the last pushback.
    fn backoff_delay<B>(&self, req: &Request<B>) -> Duration {
        let n = self.retries - self.since_pushback;
        self.backoff(req).delay(n, self.previous_delay)
    }

    /// Why this result should be retried, or `None` if it should not be.
    fn retryable<B, RB>(
        &self,
        req: &Request<B>,
        result: &Result<Response<RB>, BoxError>,
    ) -> Option<FailureKind> {
        let config = &self.shared.config;
        let grpc_call = self.context.as_ref().and_then(CallContext::is_grpc_call);
        let grpc = match result {
            Ok(response) => Answer::of_call(grpc_call, response).deciding_code(response.status()),
            Err(_) => None,
        };
        let kind = match (result, grpc) {
            (_, Some(code)) => FailureKind::Grpc(code),
            (Ok(response), None) => FailureKind::Status(response.status()),
            (Err(error), None) => self.shared.classifier.classify_error(error.as_ref()),
        };
        if let Some(predicate) = config.predicate() {
            let ctx = RetryContext {
                method: req.method(),
                uri: req.uri(),
                headers: req.headers(),
                attempt: self.retries + 1,
                outcome: match result {
                    Ok(response) => Ok(response.status()),
                    Err(error) => {
                        let error: &(dyn std::error::Error + 'static) = error.as_ref();
                        Err(error)
                    }
                },
            };
            if let Some(decided) = predicate(&ctx) {
                return decided.then_some(kind);
            }
        }
        match (result, grpc) {
            (_, Some(code)) => self.retries_grpc(req, code).then_some(kind),
            (Ok(response), None) => config.retries_status(response.status()).then_some(kind),
            (Err(_), None) => config.retries_error(kind).then_some(kind),
        }
    }
}

/// Whether `req` may be sent more than once whatever the failure; see
/// [`RetryPolicy::may_retry`].
pub(crate) fn may_repeat<B>(config: &RetryConfig, req: &Request<B>) -> bool {
    // A constant name: a `&str` key would be parsed on every call.
    static IDEMPOTENCY_KEY: http::HeaderName = http::HeaderName::from_static("idempotency-key");
    config.retry_non_idempotent()
        || is_idempotent(req.method())
        || req.headers().contains_key(&IDEMPOTENCY_KEY)
}

fn is_idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE
    )
}

/// The server's `Retry-After` hint on a 429 or 503: delay-seconds or an
/// HTTP date (RFC 9110 section 10.2.3). A date in the past means now.
pub(crate) fn retry_after<RB>(response: &Response<RB>, now: SystemTime) -> Option<Duration> {
    if !matches!(
        response.status(),
        StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE
    ) {
        return None;
    }
    let value = response.headers().get(RETRY_AFTER)?.to_str().ok()?.trim();
    if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
        // Too many digits for a u64 is still "wait longer than we ever
        // would": saturate, so the cap turns the retry down.
        return Some(Duration::from_secs(
            value.parse::<u64>().unwrap_or(u64::MAX),
        ));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

/// Whether an attempt was refused by a circuit breaker that guards the
/// whole service (or a custom key) rather than one endpoint: every attempt
/// would meet the same open circuit, so a retry only adds load and delay.
/// A per-endpoint breaker names its endpoint in the refusal; another
/// endpoint may serve the retry.
fn refused_by_a_service_wide_circuit<RB>(result: &Result<Response<RB>, BoxError>) -> bool {
    match result {
        Ok(_) => false,
        Err(error) => matches!(
            MeshError::find(error.as_ref()),
            Some(MeshError::CircuitOpen { endpoint: None, .. })
        ),
    }
}

/// The endpoint that served (or failed) an attempt, if the balancer said:
/// on the response, in the error, or in the attempt's call `context`.
pub(crate) fn failed_endpoint<RB>(
    result: &Result<Response<RB>, BoxError>,
    context: Option<&CallContext>,
) -> Option<EndpointId> {
    let named = match result {
        Ok(response) => response
            .extensions()
            .get::<SelectedEndpoint>()
            .map(|s| s.0.id().clone()),
        Err(error) => MeshError::endpoint_of(error.as_ref()).cloned(),
    };
    named.or_else(|| context?.chosen().map(|e| e.id().clone()))
}

/// The service `req` is routed to, as its events name it: its
/// [`TargetService`](mesh_core::ext::TargetService), else its URI's host
/// when that is a valid name.
pub(crate) fn service_of<B>(req: &Request<B>) -> Option<ServiceName> {
    match Destination::of(req)? {
        Destination::Named(service) => Some(service.clone()),
        Destination::Host(host) => ServiceName::new(host).ok(),
    }
}

impl<B, RB> tower::retry::Policy<Request<B>, Response<RB>, BoxError> for RetryPolicy
where
    B: ReplayableBody,
{
    type Future = Sleep;

    fn retry(
        &mut self,
        req: &mut Request<B>,
        result: &mut Result<Response<RB>, BoxError>,
    ) -> Option<Self::Future> {
        let shared = &*self.shared;
        let counters = &shared.counters;
        let Some(reason) = self.retryable(req, result) else {
            let succeeded =
                matches!(result, Ok(r) if r.status().is_success() || r.status().is_redirection());
            if self.retries > 0 && succeeded {
                counters
                    .successes_after_retry
                    .fetch_add(1, Ordering::Relaxed);
            }
            return None;
        };
        if refused_by_a_service_wide_circuit(result) {
            tracing::debug!(%reason, "not retried: the circuit is open for the whole service");
            return None;
        }
        // A gRPC call's retryable codes are its retry policy's to decide
        // (gRFC A6), whatever its HTTP method.
        let grpc = matches!(reason, FailureKind::Grpc(_));
        if !self.may_retry(req) && !reason.never_sent() && !grpc {
            // A non-idempotent request may have been applied upstream; only
            // a failure that provably never sent it may be retried.
            return None;
        }
        if !req.body().is_replayable() {
            tracing::debug!(%reason, "not retried: the request body outgrew its replay buffer");
            return None;
        }
        let attempts = self.retries + 1;
        if self.retries >= self.max_retries(req) {
            counters.exhausted.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(%reason, attempts, "retries exhausted");
            shared.events.publish(MeshEvent::RetriesExhausted {
                service: service_of(req),
                attempts,
                reason,
            });
            return None;
        }
        let (delay, pushed_back) = self.wait(req, result)?;
        let now = clock::now();
        let deadline = self.context.as_ref().and_then(CallContext::deadline);
        if let Some(deadline) = deadline.or_else(|| deadline_of(req)) {
            if delay >= deadline.remaining(now) {
                tracing::debug!(?delay, "not retried: the wait would pass the deadline");
                return None;
            }
        }
        // A budget of the call's own (one per service) replaces the layer's.
        let budget = self
            .budget
            .as_ref()
            .or_else(|| req.extensions().get::<RetryBudget>())
            .or(shared.budget.as_ref());
        if let Some(budget) = budget {
            if !budget.try_withdraw(now) {
                counters.budget_exhausted.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(%reason, "not retried: retry budget spent");
                shared.events.publish(MeshEvent::RetryBudgetExhausted {
                    service: service_of(req),
                    reason,
                });
                return None;
            }
        }
        if pushed_back {
            // The backoff counts again from its first delay (gRFC A6).
            self.since_pushback = self.retries + 1;
        }
        self.retries += 1;
        self.previous_delay = (!pushed_back).then_some(delay);
        let attempt = Attempt::FIRST.0.saturating_add(self.retries);
        let failed = failed_endpoint(result, self.context.as_ref().or(CallContext::of(req)));
        if let Some(id) = &failed {
            req.extensions_mut()
                .get_or_insert_default::<AvoidEndpoints>()
                .insert(id.clone());
        }
        req.extensions_mut().insert(Attempt(attempt));
        req.extensions_mut().insert(SentBecause::Retry(reason));
        grpc::note_previous_attempts(req, self.retries);
        counters.retries.fetch_add(1, Ordering::Relaxed);
        counters.total_delay_nanos.fetch_add(
            u64::try_from(delay.as_nanos()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
        tracing::debug!(%reason, attempt = attempt.get(), ?failed, ?delay, "retrying");
        shared.events.publish(MeshEvent::RetryScheduled {
            service: service_of(req),
            attempt: attempt.get(),
            failed_endpoint: failed,
            reason,
            backoff: delay,
        });
        Some(tokio::time::sleep(delay))
    }

    fn clone_request(&mut self, req: &Request<B>) -> Option<Request<B>> {
        // Kept even when no retry is left, so that `retry` still sees the
        // last outcome and counts an exhausted request; kept for
        // non-idempotent requests too, which may be retried when a failure
        // proves they were never sent.
        if self.max_retries(req) == 0 {
            return None;
        }
        Some(clone_request(req, self.context.is_some()))
    }
}

/// A copy of `req` for another attempt: its parts and a clone of its body.
/// When the caller attaches a call context to the copy itself
/// (`context_attached_later`), a request carrying nothing but its context
/// is copied without extensions: a copy is made for every call that may
/// be retried, and a copied map costs an allocation per entry and two for
/// the map.
pub(crate) fn clone_request<B: Clone>(
    req: &Request<B>,
    context_attached_later: bool,
) -> Request<B> {
    let mut clone = Request::new(req.body().clone());
    *clone.method_mut() = req.method().clone();
    *clone.uri_mut() = req.uri().clone();
    *clone.version_mut() = req.version();
    *clone.headers_mut() = req.headers().clone();
    let ext = req.extensions();
    let only_context = ext.len() == 1 && ext.get::<CallContext>().is_some();
    if !(context_attached_later && only_context) {
        *clone.extensions_mut() = ext.clone();
    }
    clone
}

#[cfg(test)]
mod tests {
    use crate::{Backoff, RetryConfig, RetryLayer};
    use http::{Request, Response, StatusCode};
    use mesh_core::ext::{Attempt, AvoidEndpoints, SelectedEndpoint};
    use mesh_core::{BoxError, Endpoint, MeshError, ServiceName};
    use std::sync::{Arc, Mutex};
    use std::time::Duration;
    use tower::{service_fn, Layer, ServiceExt};

    #[derive(Debug)]
    struct Seen {
        attempt: u32,
        avoid: Vec<String>,
    }

    fn layer(max_retries: u32) -> RetryLayer {
        RetryLayer::new(
            RetryConfig::builder()
                .max_retries(max_retries)
                .no_budget()
                .backoff(Backoff::constant(Duration::from_millis(1)))
                .build()
                .unwrap(),
        )
    }

    /// A service that answers `statuses` in turn (`None` = connect error),
    /// each "from" endpoint 127.0.0.1:<attempt>, and logs what it saw.
    fn upstream(
        statuses: Vec<Option<u16>>,
        log: Arc<Mutex<Vec<Seen>>>,
    ) -> impl tower::Service<
        Request<String>,
        Response = Response<()>,
        Error = BoxError,
        Future = impl Send,
    > + Clone {
        let statuses = Arc::new(statuses);
        service_fn(move |req: Request<String>| {
            let mut log = log.lock().unwrap();
            let attempt = req
                .extensions()
                .get::<Attempt>()
                .copied()
                .unwrap_or_default()
                .get();
            let avoid = req
                .extensions()
                .get::<AvoidEndpoints>()
                .map(|a| a.iter().map(|e| e.to_string()).collect())
                .unwrap_or_default();
            log.push(Seen { attempt, avoid });
            let index = log.len() - 1;
            let endpoint = Endpoint::builder(([127, 0, 0, 1], index as u16 + 1).into()).build();
            let answer = statuses[index.min(statuses.len() - 1)];
            async move {
                match answer {
                    Some(code) => {
                        let mut r = Response::builder().status(code).body(()).unwrap();
                        r.extensions_mut().insert(SelectedEndpoint(endpoint));
                        Ok(r)
                    }
                    None => Err(Box::new(MeshError::Endpoint {
                        service: ServiceName::new("users").unwrap(),
                        endpoint: endpoint.id().clone(),
                        address: endpoint.address(),
                        source: Box::new(std::io::Error::from(
                            std::io::ErrorKind::ConnectionRefused,
                        )),
                    }) as BoxError),
                }
            }
        })
    }

    fn get() -> Request<String> {
        Request::get("http://users/x").body(String::new()).unwrap()
    }

    #[tokio::test]
    async fn each_retry_avoids_the_endpoints_that_failed_and_counts_attempts() {
        let log = Arc::new(Mutex::new(Vec::new()));
        let svc = layer(3).layer(upstream(vec![Some(503), None, Some(200)], Arc::clone(&log)));
        let response = svc.oneshot(get()).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let log = log.lock().unwrap();
        assert_eq!(log.iter().map(|s| s.attempt).collect::<Vec<_>>(), [1, 2, 3]);
        assert_eq!(log[1].avoid, ["127.0.0.1:1"]);
        assert_eq!(log[2].avoid, ["127.0.0.1:1", "127.0.0.1:2"]);
    }

    #[tokio::test]
    async fn exhausted_retries_return_the_last_real_response() {
        let log = Arc::new(Mutex::new(Vec::new()));
        let l = layer(2);
        let svc = l.layer(upstream(
            vec![Some(503), Some(502), Some(500)],
            Arc::clone(&log),
        ));
        let response = svc.oneshot(get()).await.unwrap();
        assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(log.lock().unwrap().len(), 3);
        assert_eq!(l.stats().retries, 2);
        assert_eq!(l.stats().exhausted, 1);
    }

    #[tokio::test]
    async fn exhausted_retries_return_the_last_real_error() {
        let log = Arc::new(Mutex::new(Vec::new()));
        let svc = layer(1).layer(upstream(vec![None], Arc::clone(&log)));
        let err = svc.oneshot(get()).await.unwrap_err();
        assert_eq!(
            err.to_string(),
            "request to users endpoint 127.0.0.1:2 failed: connection refused"
        );
        assert_eq!(log.lock().unwrap().len(), 2);
    }

    #[tokio::test]
    async fn non_idempotent_requests_are_retried_only_when_never_sent() {
        let log = Arc::new(Mutex::new(Vec::new()));
        // A refused connection, then a 503: the POST is resent after the
        // first (it never left) but not after the second (it may have
        // been applied).
        let svc = layer(3).layer(upstream(vec![None, Some(503), Some(200)], Arc::clone(&log)));
        let post = Request::post("http://users/x")
            .body("{}".to_owned())
            .unwrap();
        assert_eq!(svc.oneshot(post).await.unwrap().status(), 503);
        assert_eq!(log.lock().unwrap().len(), 2);
    }

    #[tokio::test]
    async fn non_idempotent_requests_are_sent_once_unless_keyed() {
        let log = Arc::new(Mutex::new(Vec::new()));
        let svc = layer(3).layer(upstream(vec![Some(503)], Arc::clone(&log)));
        let post = Request::post("http://users/x")
            .body("{}".to_owned())
            .unwrap();
        assert_eq!(svc.clone().oneshot(post).await.unwrap().status(), 503);
        assert_eq!(log.lock().unwrap().len(), 1);

        let keyed = Request::post("http://users/x")
            .header("Idempotency-Key", "abc")
            .body("{}".to_owned())
            .unwrap();
        assert_eq!(svc.oneshot(keyed).await.unwrap().status(), 503);
        assert_eq!(log.lock().unwrap().len(), 5, "1 + 4 attempts");
    }

    #[test]
    fn retry_after_reads_seconds_dates_and_absurd_values() {
        let now = std::time::SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let hint = |status: u16, value: &str| {
            let r = Response::builder()
                .status(status)
                .header("retry-after", value)
                .body(())
                .unwrap();
            super::retry_after(&r, now)
        };
        assert_eq!(hint(503, "7"), Some(Duration::from_secs(7)));
        assert_eq!(
            hint(429, &httpdate::fmt_http_date(now + Duration::from_secs(30))),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            hint(503, &httpdate::fmt_http_date(now - Duration::from_secs(30))),
            Some(Duration::ZERO)
        );
        assert_eq!(
            hint(503, "99999999999999999999999"),
            Some(Duration::from_secs(u64::MAX))
        );
        assert_eq!(
            hint(500, "7"),
            None,
            "only 429 and 503 carry hints we follow"
        );
        assert_eq!(hint(503, "soon"), None);
    }

    #[tokio::test]
    async fn client_errors_and_unknown_errors_are_not_retried() {
        let log = Arc::new(Mutex::new(Vec::new()));
        let svc = layer(3).layer(upstream(vec![Some(404)], Arc::clone(&log)));
        assert_eq!(svc.oneshot(get()).await.unwrap().status(), 404);
        assert_eq!(log.lock().unwrap().len(), 1);

        let calls = Arc::new(Mutex::new(0));
        let counted = Arc::clone(&calls);
        let svc = layer(3).layer(service_fn(move |_req: Request<String>| {
            *counted.lock().unwrap() += 1;
            async { Err::<Response<()>, BoxError>("unroutable".into()) }
        }));
        assert!(svc.oneshot(get()).await.is_err());
        assert_eq!(*calls.lock().unwrap(), 1);
    }
}
