use std::sync::Arc;
use std::task::{Context, Poll};

use http::Request;
use mesh_core::clock::{self, Nanos};
use mesh_core::ext::{chosen_endpoint, with_endpoint_set, CallContext, TargetService};
use mesh_core::{
    BoxError, CircuitState, Endpoint, EndpointSet, EventBus, FailureClassifier, FailureKind,
    MeshError, MeshEvent, ServiceName,
};
use tower::Service;

use crate::body::ResponseBody;
use crate::circuit::{Permit, Transition};
use crate::config::{BreakerConfig, BreakerScope};
use crate::future::{Called, Peers, ResponseFuture, Tracker};
use crate::layer::{KeyFn, RequestParts};
use crate::registry::{Entry, KeyRef, Outcomes, Registry};

/// What all services of one [`crate::BreakerLayer`] share.
pub(crate) struct LayerState {
    pub(crate) registry: Registry,
    pub(crate) key_fn: Option<Arc<KeyFn>>,
}

impl LayerState {
    pub(crate) fn new(
        config: BreakerConfig,
        outcomes: Outcomes,
        key_fn: Option<Arc<KeyFn>>,
    ) -> Self {
        LayerState {
            registry: Registry::new(config, outcomes),
            key_fn,
        }
    }
}

impl Outcomes {
    /// The shared parts for `config`, with the default classifier and bus.
    pub(crate) fn for_config(config: &BreakerConfig) -> Outcomes {
        Outcomes {
            // A refusal by another breaker below never reached the
            // upstream: it says nothing about it, so it counts neither way.
            classifier: FailureClassifier::default()
                .with_ignored_error(FailureKind::CircuitOpen)
                .with_grpc_failures(config.grpc_failures()),
            events: EventBus::default(),
            times_calls: config.slow_call_rate_threshold().is_some(),
            ejections: std::sync::Mutex::default(),
        }
    }

    /// Publishes a transition and applies it to the endpoint's live state:
    /// an open breaker ejects its endpoint so the balancer skips it; a
    /// half-open one lets the balancer send it probes; a closed one returns
    /// it. A new deadline for an OPEN circuit (from and to OPEN) moves the
    /// ejection and publishes nothing: the state did not change.
    pub(crate) fn announce(
        &self,
        service: Option<&ServiceName>,
        endpoint: Option<&Endpoint>,
        t: Transition,
        now: Nanos,
    ) {
        if let Some(endpoint) = endpoint {
            let state = endpoint.state();
            match t.to {
                CircuitState::Open => state.eject_until(t.until.unwrap_or(now).max(now)),
                CircuitState::ForcedOpen => state.eject_until(Nanos(u64::MAX)),
                CircuitState::HalfOpen
                | CircuitState::Closed
                | CircuitState::Disabled
                | CircuitState::MetricsOnly => state.clear_ejection(),
            }
        }
        if t.from == t.to {
            return;
        }
        let endpoint = endpoint.map(|e| e.id().clone());
        match t.to {
            CircuitState::Open | CircuitState::ForcedOpen => {
                tracing::warn!(?service, ?endpoint, from = %t.from, to = %t.to, "circuit opened")
            }
            _ => {
                tracing::info!(?service, ?endpoint, from = %t.from, to = %t.to, "circuit transition")
            }
        }
        self.events.publish(MeshEvent::BreakerTransition {
            service: service.cloned(),
            endpoint,
            from: t.from,
            to: t.to,
        });
    }
}

/// A rate of a breaker's window that reached its threshold.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Crossing {
    FailureRate(f64),
    SlowCallRate(f64),
}

impl Outcomes {
    /// Publishes each rate crossing as its own event.
    pub(crate) fn report_crossings(
        &self,
        service: Option<&ServiceName>,
        endpoint: Option<&Endpoint>,
        crossings: impl IntoIterator<Item = Crossing>,
    ) {
        let (service, endpoint) = (service.cloned(), endpoint.map(|e| e.id().clone()));
        for crossing in crossings {
            let event = match crossing {
                Crossing::FailureRate(failure_rate) => {
                    tracing::warn!(
                        ?service,
                        failure_rate,
                        "breaker failure rate threshold reached"
                    );
                    MeshEvent::BreakerFailureRateExceeded {
                        service: service.clone(),
                        endpoint: endpoint.clone(),
                        failure_rate,
                    }
                }
                Crossing::SlowCallRate(slow_call_rate) => {
                    tracing::warn!(
                        ?service,
                        slow_call_rate,
                        "breaker slow-call rate threshold reached"
                    );
                    MeshEvent::BreakerSlowCallRateExceeded {
                        service: service.clone(),
                        endpoint: endpoint.clone(),
                        slow_call_rate,
                    }
                }
            };
            self.events.publish(event);
        }
    }
}

/// What a request names: its service (a [`TargetService`], else its
/// endpoints' service) and, for per-endpoint breakers, the endpoint the
/// balancer chose.
struct Named {
    service: Option<ServiceName>,
    endpoint: Option<Endpoint>,
}

impl Named {
    fn of<B>(req: &Request<B>, scope: BreakerScope) -> Named {
        let service = match req.extensions().get::<TargetService>() {
            Some(TargetService(service)) => Some(service.clone()),
            None => with_endpoint_set(req, |set| set.service().clone()),
        };
        let endpoint = match (scope, &service) {
            (BreakerScope::Endpoint, Some(_)) => chosen_endpoint(req),
            _ => None,
        };
        Named { service, endpoint }
    }

    /// Which breaker the request belongs to: the key, the service and
    /// (for per-endpoint breakers) the endpoint. `None` for a request that
    /// names no service, endpoint or authority: it passes unguarded,
    /// having nothing to attribute its outcome to.
    fn key<'a, B>(
        &'a self,
        req: &'a Request<B>,
        custom: Option<&'a str>,
    ) -> Option<(KeyRef<'a>, Option<&'a ServiceName>, Option<&'a Endpoint>)> {
        if let Some(key) = custom {
            return Some((KeyRef::Custom(key), None, None));
        }
        match (&self.service, &self.endpoint) {
            (Some(service), Some(endpoint)) => Some((
                KeyRef::Endpoint(service, endpoint.id()),
                Some(service),
                Some(endpoint),
            )),
            (Some(service), None) => Some((KeyRef::Service(service), Some(service), None)),
            (None, _) => req
                .uri()
                .authority()
                .map(|a| (KeyRef::Authority(a), None, None)),
        }
    }
}

/// Fails fast on calls to a service (or endpoint, or key) whose recent
/// calls kept failing or were too slow; see the [crate docs](crate).
#[derive(Clone)]
pub struct Breaker<S> {
    inner: S,
    shared: Arc<LayerState>,
}

impl<S> Breaker<S> {
    pub(crate) fn new(inner: S, shared: Arc<LayerState>) -> Self {
        Breaker { inner, shared }
    }
}

impl<S: std::fmt::Debug> std::fmt::Debug for Breaker<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Breaker")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl<S, B, RB> Service<Request<B>> for Breaker<S>
where
    S: Service<Request<B>, Response = http::Response<RB>>,
    S::Error: Into<BoxError>,
{
    type Response = http::Response<ResponseBody<RB>>;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // An open circuit refuses in `call`, not here: holding back
        // readiness would stall callers that could use another endpoint.
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let custom = self.shared.key_fn.as_ref().and_then(|key_fn| {
            key_fn(&RequestParts {
                method: req.method(),
                uri: req.uri(),
                headers: req.headers(),
                extensions: req.extensions(),
            })
        });
        let registry = &self.shared.registry;
        let timeout = registry.config().call_timeout();
        let context = timeout.and_then(|_| CallContext::of(&req).cloned());
        let chosen = match custom {
            None => entry_of_chosen(registry, &req),
            Some(_) => None,
        };
        // A registry that refused the chosen endpoint's breaker (full of
        // busy ones) is not asked again by name: the call goes unguarded.
        let found = match chosen {
            Some(found) => found,
            None => entry_of_named(registry, &req, custom.as_deref()),
        };
        let Some((entry, called)) = found else {
            return ResponseFuture::unguarded(self.inner.call(req), timeout, context);
        };
        match entry.circuit.acquire_with(clock::now) {
            Ok(admitted) => {
                record_state(match admitted.permit {
                    Permit::Normal { .. } => CircuitState::Closed,
                    Permit::Probe { .. } => CircuitState::HalfOpen,
                    Permit::Unrecorded => CircuitState::Disabled,
                });
                if let Some(t) = admitted.transition {
                    entry.announce(called.endpoint().as_ref(), t, clock::now());
                } else if admitted.max_wait_until.is_some() {
                    // The first probe started HALF_OPEN's maximum wait: a
                    // probe that hangs must still be ended by it.
                    entry.watch_deadline();
                }
                if let Some(until) = admitted.probes_exhausted {
                    // Every probe is out: nothing more may pass until they
                    // report, so the balancer may as well look elsewhere.
                    if let Some(endpoint) = called.endpoint() {
                        endpoint.state().eject_until(until);
                        // Unless the probes already decided meanwhile (this
                        // write raced their verdict): then undo it.
                        if entry.circuit.state() != CircuitState::HalfOpen {
                            endpoint.state().clear_ejection();
                        }
                    }
                }
                let grpc_call = match &called {
                    Called::InContext(context) => context.is_grpc_call(),
                    Called::Here(_) => CallContext::of(&req).and_then(CallContext::is_grpc_call),
                };
                let mut tracker = Tracker::new(entry, admitted.permit, called).grpc_call(grpc_call);
                let cap = registry.config().max_ejection_percent();
                if cap < 100.0 && registry.config().scope() == BreakerScope::Endpoint {
                    if let Some(peers) = peers_of(&req) {
                        tracker = tracker.among(peers, cap);
                    }
                }
                ResponseFuture::called(self.inner.call(req), tracker, timeout, context)
            }
            Err(rejected) => {
                record_state(rejected.state);
                let now = clock::now();
                let endpoint = called.endpoint();
                if let Some(t) = rejected.transition {
                    entry.announce(endpoint.as_ref(), t, now);
                }
                let service = entry.service.clone();
                let endpoint_id = endpoint.map(|e| e.id().clone());
                tracing::debug!(?service, endpoint = ?endpoint_id, state = %rejected.state, "call refused by circuit breaker");
                let events = &entry.outcomes.events;
                if events.subscriber_count() > 0 {
                    events.publish(MeshEvent::BreakerRejected {
                        service: service.clone(),
                        endpoint: endpoint_id.clone(),
                        state: rejected.state,
                    });
                }
                ResponseFuture::rejected(MeshError::CircuitOpen {
                    service,
                    endpoint: endpoint_id,
                    retry_in: rejected.retry_in,
                })
            }
        }
    }
}

/// What the registry holds for an entry looked up: the breaker and the
/// call's endpoint, or `None` when the registry refused to make one.
type Found = Option<(Arc<Entry>, Called)>;

/// The breaker of the endpoint the balancer chose for `req`, found with
/// the choice borrowed from the call context (copying the endpoint and
/// its service would write two counts both cores share): for per-endpoint
/// breakers, when the request has a context and the balancer chose;
/// `None` otherwise.
fn entry_of_chosen<B>(registry: &Registry, req: &Request<B>) -> Option<Found> {
    if registry.config().scope() != BreakerScope::Endpoint {
        return None;
    }
    let context = CallContext::of(req)?;
    let target = req.extensions().get::<TargetService>().map(|t| &t.0);
    let entry = context.with_chosen(|service, endpoint| {
        let service = target.unwrap_or(service);
        let key = KeyRef::Endpoint(service, endpoint.id());
        let entry = registry.get_or_insert(key, Some(service), Some(endpoint), clock::now)?;
        if entry.endpoint.get().is_none() {
            let _ = entry.endpoint.set(endpoint.clone());
        }
        Some(entry)
    })?;
    Some(entry.map(|entry| (entry, Called::InContext(context.clone()))))
}

/// The breaker `req` belongs to by what it names (a custom key, its
/// service, the endpoint it carries, its authority), for requests
/// [`entry_of_chosen`] does not serve.
fn entry_of_named<B>(registry: &Registry, req: &Request<B>, custom: Option<&str>) -> Found {
    let named = match custom {
        Some(_) => Named {
            service: None,
            endpoint: None,
        },
        None => Named::of(req, registry.config().scope()),
    };
    let (key, service, endpoint) = named.key(req, custom)?;
    let entry = registry.get_or_insert(key, service, endpoint, clock::now)?;
    // Named only for per-endpoint breakers, which eject it: moved out of
    // the request's names, not copied (a shared count per copy).
    let endpoint = named.endpoint;
    if let Some(e) = &endpoint {
        if entry.endpoint.get().is_none() {
            let _ = entry.endpoint.set(e.clone());
        }
    }
    Some((entry, Called::Here(endpoint)))
}

/// Where the peers of `req`'s endpoint will be found if its breaker is
/// about to open: in its call context when discovery noted them there (a
/// copy per call would write a count both cores share), else a copy of
/// the set the request carries.
fn peers_of<B>(req: &Request<B>) -> Option<Peers> {
    match CallContext::of(req) {
        Some(context) if context.with_endpoints(|_| ()).is_some() => {
            Some(Peers::InContext(context.clone()))
        }
        _ => req
            .extensions()
            .get::<EndpointSet>()
            .cloned()
            .map(Peers::Set),
    }
}

/// Notes the circuit's state on the current span: the attempt's
/// (`mesh.attempt`, which declares `mesh.breaker.state`) when the retry
/// layer is above. Nothing is formatted unless that span is recorded.
fn record_state(state: CircuitState) {
    use tracing::level_filters::LevelFilter;
    // Without a subscriber that wants anything, no span is recorded, and
    // finding the current one costs more than the rest of the call's note.
    if LevelFilter::current() == LevelFilter::OFF {
        return;
    }
    let span = tracing::Span::current();
    if !span.is_disabled() {
        span.record("mesh.breaker.state", tracing::field::display(state));
    }
}
