//! Spans: one `mesh.call` per call, one `mesh.attempt` child per attempt.
//!
//! [`Retry`](crate::Retry) opens the call span and keeps it entered while
//! tower's retry future (or a [`HedgeFuture`](crate::HedgeFuture)) runs,
//! so every attempt [`AttemptTimeout`](crate::AttemptTimeout) makes is its
//! child, retries and hedged copies alike. The attempt span is entered
//! while the layers below are called and polled: the balancer's pick, the
//! breaker's verdict and the transport's own spans and events all nest
//! under it, and the breaker records its state on it
//! (`mesh.breaker.state`).
//!
//! Field names follow OpenTelemetry's HTTP client semantic conventions
//! (`http.request.method`, `server.address`, `server.port`,
//! `http.response.status_code`, `error.type`, `http.request.resend_count`,
//! `rpc.grpc.status_code`); what those conventions do not name is under
//! `mesh.`. Fields known only later (the endpoint, the answer) are declared
//! empty and recorded when known.
//!
//! The call span also says which layers served the call: `mesh.route`,
//! the route's name, and `mesh.method_policy`, the per-method policy that
//! applied to the call, if any. A stack knows neither by itself: whoever
//! assembled it names the route once with
//! [`RetryLayer::name_route`](crate::RetryLayer::name_route). The
//! `mesh` facade names each route as its Prometheus metrics label it
//! (`*` for the layers every service without settings of its own shares,
//! else the service's name) and its method policies by the rule that
//! matched (`/api/search`, `GET /api/search`, `/pkg.Users/Get`, `*` for a
//! gRPC service config's default). A stack assembled by hand and never
//! named leaves both empty. The names live on the layer, not on each
//! request: a call pays nothing for them unless its span is enabled.
//!
//! Numbers are recorded as `i64`, which OpenTelemetry exports as integer
//! attributes (`tracing-opentelemetry` turns other integers into strings).
//!
//! Without a subscriber the spans are disabled: creating one costs a
//! callsite check, and nothing is formatted or recorded (every recording
//! here first asks [`Span::is_disabled`]).

use std::fmt;
use std::sync::{Arc, OnceLock};

use http::{Method, Request, Response};
use mesh_core::ext::{Attempt, CallContext, Destination, SelectedEndpoint};
use mesh_core::grpc::Answer;
use mesh_core::{BoxError, FailureClassifier, FailureKind, MeshError};
use tracing::field::Empty;
use tracing::Span;

/// Why an attempt after the first was sent; carried on the request from
/// the policy (or the hedge) to the attempt's span as `mesh.retry_reason`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum SentBecause {
    /// The attempt before failed this way and the policy retried it.
    Retry(FailureKind),
    /// A hedged copy: sent for want of an answer (`None`), or at once
    /// after a copy failed non-fatally.
    Hedge(Option<FailureKind>),
}

impl fmt::Display for SentBecause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SentBecause::Retry(reason) => reason.fmt(f),
            SentBecause::Hedge(None) => f.write_str("hedge"),
            SentBecause::Hedge(Some(reason)) => write!(f, "hedge after {reason}"),
        }
    }
}

/// Names the per-method policy a call matches, for the `mesh.method_policy`
/// field of its `mesh.call` span (see [`RetryLayer::name_route`]).
///
/// Asked only while the call's span is enabled, so a lookup here costs
/// nothing without a subscriber.
///
/// ```
/// use std::sync::Arc;
/// use mesh_retry::{MethodPolicyNames, RetryLayer};
///
/// /// Searches have a policy of their own.
/// struct Search;
///
/// impl MethodPolicyNames for Search {
///     fn policy_for(&self, _method: &http::Method, path: &str) -> Option<&str> {
///         path.starts_with("/api/search").then_some("/api/search")
///     }
/// }
///
/// let retry = RetryLayer::default();
/// assert!(retry.name_route("users", Some(Arc::new(Search))));
/// ```
///
/// [`RetryLayer::name_route`]: crate::RetryLayer::name_route
pub trait MethodPolicyNames: Send + Sync + 'static {
    /// The name of the policy that applies to a `method` call of `path`,
    /// if one does.
    fn policy_for(&self, method: &Method, path: &str) -> Option<&str>;
}

/// A route's names, given once to its layer
/// ([`RetryLayer::name_route`](crate::RetryLayer::name_route)) and read
/// only for enabled call spans.
#[derive(Clone)]
pub(crate) struct RouteNames {
    route: Box<str>,
    method_policies: Option<Arc<dyn MethodPolicyNames>>,
}

// === impl RouteNames ===

impl RouteNames {
    pub(crate) fn new(route: &str, method_policies: Option<Arc<dyn MethodPolicyNames>>) -> Self {
        RouteNames {
            route: route.into(),
            method_policies,
        }
    }

    /// Records the route and the call's method policy on `span`, enabled.
    fn record_on<B>(&self, span: &Span, req: &Request<B>) {
        span.record("mesh.route", &*self.route);
        let policy = self
            .method_policies
            .as_deref()
            .and_then(|names| names.policy_for(req.method(), req.uri().path()));
        if let Some(policy) = policy {
            span.record("mesh.method_policy", policy);
        }
    }
}

impl fmt::Debug for RouteNames {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RouteNames")
            .field("route", &self.route)
            .field("method_policies", &self.method_policies.is_some())
            .finish()
    }
}

/// The span of one call through [`Retry`](crate::Retry): its service,
/// method and path, the route that serves it (once `route` is named), and
/// in the end its answer.
pub(crate) fn call_span<B>(req: &Request<B>, route: &OnceLock<RouteNames>) -> Span {
    let span = tracing::info_span!(
        "mesh.call",
        mesh.service = Empty,
        mesh.route = Empty,
        mesh.method_policy = Empty,
        http.request.method = Empty,
        url.path = Empty,
        http.response.status_code = Empty,
        rpc.grpc.status_code = Empty,
        error.type = Empty,
        otel.status_code = Empty,
    );
    if !span.is_disabled() {
        let service = Destination::of(req).map(|d| d.as_str());
        span.record("mesh.service", service.unwrap_or_default());
        span.record("http.request.method", req.method().as_str());
        span.record("url.path", req.uri().path());
        if let Some(names) = route.get() {
            names.record_on(&span, req);
        }
    }
    span
}

/// The span of one attempt: a child of the current span (the call's),
/// with its number and, for a retry or hedged copy, why it was sent.
pub(crate) fn attempt_span<B>(req: &Request<B>) -> Span {
    let span = tracing::info_span!(
        "mesh.attempt",
        otel.kind = "client",
        otel.name = Empty,
        http.request.method = Empty,
        mesh.attempt = Empty,
        http.request.resend_count = Empty,
        mesh.retry_reason = Empty,
        mesh.endpoint = Empty,
        server.address = Empty,
        server.port = Empty,
        mesh.breaker.state = Empty,
        mesh.outcome = Empty,
        http.response.status_code = Empty,
        rpc.grpc.status_code = Empty,
        error.type = Empty,
        otel.status_code = Empty,
    );
    if !span.is_disabled() {
        let ext = req.extensions();
        let attempt = ext.get::<Attempt>().copied().unwrap_or_default().get();
        span.record("otel.name", req.method().as_str());
        span.record("http.request.method", req.method().as_str());
        span.record("mesh.attempt", i64::from(attempt));
        if attempt > 1 {
            span.record("http.request.resend_count", i64::from(attempt - 1));
        }
        if let Some(because) = ext.get::<SentBecause>() {
            span.record("mesh.retry_reason", tracing::field::display(because));
        }
    }
    span
}

/// An answer whose status and endpoint an attempt's span records:
/// [`http::Response`]. Sealed: the retry layer's services answer with
/// responses.
pub trait AttemptAnswer: sealed::Sealed {
    /// Records the answer's status (and gRPC code) on `span`, an enabled
    /// span; whether it succeeded.
    #[doc(hidden)]
    fn record_on(&self, span: &Span, grpc_call: Option<bool>) -> bool;

    /// The endpoint that served it, as the balancer noted it.
    #[doc(hidden)]
    fn served_by(&self) -> Option<(String, std::net::SocketAddr)>;
}

mod sealed {
    /// Only [`http::Response`] answers.
    pub trait Sealed {}
    impl<B> Sealed for http::Response<B> {}
}

impl<B> AttemptAnswer for Response<B> {
    fn record_on(&self, span: &Span, grpc_call: Option<bool>) -> bool {
        record_response(span, self, grpc_call)
    }

    fn served_by(&self) -> Option<(String, std::net::SocketAddr)> {
        self.extensions()
            .get::<SelectedEndpoint>()
            .map(|e| (e.0.id().to_string(), e.0.address()))
    }
}

/// Records a call's answer on its span.
pub(crate) fn record_call<T: AttemptAnswer>(
    span: &Span,
    result: &Result<T, BoxError>,
    grpc_call: Option<bool>,
) {
    if span.is_disabled() {
        return;
    }
    match result {
        Ok(response) => {
            response.record_on(span, grpc_call);
        }
        Err(error) => {
            span.record("error.type", error_type(error.as_ref()));
            span.record("otel.status_code", "ERROR");
        }
    }
}

/// Records an attempt's answer on its span: the endpoint that served it
/// (from the response, the error, or the balancer's note in the call's
/// context), its status or error, and the outcome.
pub(crate) fn record_attempt<T: AttemptAnswer>(
    span: &Span,
    result: &Result<T, BoxError>,
    context: &CallContext,
) {
    if span.is_disabled() {
        return;
    }
    let endpoint = match result {
        Ok(response) => response.served_by(),
        Err(error) => endpoint_in(error.as_ref()),
    };
    let endpoint = endpoint.or_else(|| context.chosen().map(|e| (e.id().to_string(), e.address())));
    if let Some((id, address)) = endpoint {
        span.record("mesh.endpoint", id);
        span.record("server.address", tracing::field::display(address.ip()));
        span.record("server.port", i64::from(address.port()));
    }
    let outcome = match result {
        Ok(response) if response.record_on(span, context.is_grpc_call()) => "success",
        Ok(_) => "failure",
        Err(error) => {
            span.record("error.type", error_type(error.as_ref()));
            span.record("otel.status_code", "ERROR");
            "error"
        }
    };
    span.record("mesh.outcome", outcome);
}

/// Records an attempt dropped before its answer: a hedged copy that lost
/// the race, or a call its caller gave up on.
pub(crate) fn record_cancelled(span: &Span) {
    if !span.is_disabled() {
        span.record("mesh.outcome", "cancelled");
    }
}

/// Records a response's status (and gRPC code); whether it succeeded:
/// below 400, and a gRPC call answered `OK` (or not yet, the code to come
/// in trailers). A failure's `error.type` is its status code (or gRPC
/// code name), as the conventions ask.
fn record_response<RB>(span: &Span, response: &Response<RB>, grpc_call: Option<bool>) -> bool {
    let status = response.status();
    span.record("http.response.status_code", i64::from(status.as_u16()));
    if status.as_u16() >= 400 {
        span.record("error.type", status.as_str());
        span.record("otel.status_code", "ERROR");
        return false;
    }
    match Answer::of_call(grpc_call, response) {
        Answer::TrailersOnly(code) => {
            span.record("rpc.grpc.status_code", i64::from(code.get()));
            let ok = code.get() == 0;
            if !ok {
                span.record("error.type", code.name());
                span.record("otel.status_code", "ERROR");
            }
            ok
        }
        Answer::Http | Answer::Streamed => true,
    }
}

/// The kind of an error, in few words (`error.type` must stay
/// low-cardinality): the failure kind the classifier gives it.
fn error_type(error: &(dyn std::error::Error + 'static)) -> &'static str {
    match FailureClassifier::default().classify_error(error) {
        FailureKind::Connect => "connect",
        FailureKind::Timeout => "timeout",
        FailureKind::Reset => "reset",
        FailureKind::CircuitOpen => "circuit_open",
        _ => match MeshError::find(error) {
            Some(MeshError::UnknownService { .. }) => "unknown_service",
            Some(MeshError::NoAvailableEndpoints { .. }) => "no_available_endpoints",
            Some(MeshError::DiscoveryTimeout { .. }) => "discovery_timeout",
            Some(MeshError::AtCapacity { .. } | MeshError::LimitExceeded { .. }) => "over_capacity",
            _ => "_OTHER",
        },
    }
}

/// The endpoint an error names, with its address.
fn endpoint_in(
    error: &(dyn std::error::Error + 'static),
) -> Option<(String, std::net::SocketAddr)> {
    let mut next = Some(error);
    while let Some(e) = next {
        if let Some(MeshError::Endpoint {
            endpoint, address, ..
        }) = e.downcast_ref::<MeshError>()
        {
            return Some((endpoint.to_string(), *address));
        }
        next = e.source();
    }
    None
}
