use std::sync::Arc;
use std::task::{Context, Poll};

use http::Request;
use mesh_core::clock::{self, Nanos};
use mesh_core::ext::{SelectedEndpoint, TargetService};
use mesh_core::{
    BoxError, CircuitState, Endpoint, EndpointSet, EventBus, FailureClassifier, MeshError,
    MeshEvent, ServiceName,
};
use tower::Service;

use crate::circuit::Transition;
use crate::config::{BreakerConfig, BreakerScope};
use crate::future::{ResponseFuture, Tracker};
use crate::layer::{KeyFn, RequestParts};
use crate::registry::{BreakerKey, Registry};

/// What all services of one [`crate::BreakerLayer`] share.
pub(crate) struct Shared {
    pub(crate) registry: Registry,
    pub(crate) classifier: FailureClassifier,
    pub(crate) events: EventBus,
    pub(crate) key_fn: Option<Arc<KeyFn>>,
    /// Whether calls must be timed: only a slow-call rule needs it.
    pub(crate) times_calls: bool,
}

impl Shared {
    pub(crate) fn new(config: BreakerConfig) -> Self {
        Shared {
            times_calls: config.slow_call_rate_threshold().is_some(),
            registry: Registry::new(config),
            classifier: FailureClassifier::default(),
            events: EventBus::default(),
            key_fn: None,
        }
    }

    /// Publishes a transition and applies it to the endpoint's live state:
    /// an open breaker ejects its endpoint so the balancer skips it; a
    /// half-open one lets the balancer send it probes; a closed one returns
    /// it.
    pub(crate) fn announce(&self, entry: &crate::registry::Entry, t: Transition, now: Nanos) {
        self.announce_for(entry.service.as_ref(), entry.endpoint.as_ref(), t, now);
    }

    pub(crate) fn announce_for(
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

    /// Which breaker a request belongs to, and who it guards; `None` for a
    /// request that names no service, endpoint or authority (it passes
    /// unguarded: there is nothing to attribute its outcome to).
    fn target_of<B>(
        &self,
        req: &Request<B>,
    ) -> Option<(BreakerKey, Option<ServiceName>, Option<Endpoint>)> {
        let ext = req.extensions();
        if let Some(key_fn) = &self.key_fn {
            let parts = RequestParts {
                method: req.method(),
                uri: req.uri(),
                headers: req.headers(),
                extensions: ext,
            };
            if let Some(key) = key_fn(&parts) {
                return Some((BreakerKey::Custom(Arc::from(key)), None, None));
            }
        }
        let service = ext
            .get::<TargetService>()
            .map(|t| t.0.clone())
            .or_else(|| ext.get::<EndpointSet>().map(|s| s.service().clone()));
        if self.registry.config().scope() == BreakerScope::Endpoint {
            if let (Some(SelectedEndpoint(endpoint)), Some(service)) =
                (ext.get::<SelectedEndpoint>(), &service)
            {
                let key = BreakerKey::Endpoint(service.clone(), endpoint.id().clone());
                return Some((key, Some(service.clone()), Some(endpoint.clone())));
            }
        }
        match service {
            Some(service) => Some((BreakerKey::Service(service.clone()), Some(service), None)),
            None => req
                .uri()
                .authority()
                .map(|a| (BreakerKey::Authority(a.clone()), None, None)),
        }
    }
}

/// Fails fast on calls to a service (or endpoint, or key) whose recent
/// calls kept failing or were too slow; see the [crate docs](crate).
#[derive(Clone)]
pub struct Breaker<S> {
    inner: S,
    shared: Arc<Shared>,
}

impl<S> Breaker<S> {
    pub(crate) fn new(inner: S, shared: Arc<Shared>) -> Self {
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
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // An open circuit refuses in `call`, not here: holding back
        // readiness would stall callers that could use another endpoint.
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let Some((key, service, endpoint)) = self.shared.target_of(&req) else {
            return ResponseFuture::unguarded(self.inner.call(req));
        };
        let Some(entry) = self.shared.registry.get_or_insert(
            &key,
            service.as_ref(),
            endpoint.as_ref(),
            clock::now,
        ) else {
            return ResponseFuture::unguarded(self.inner.call(req));
        };
        let service = service.or_else(|| entry.service.clone());
        match entry.circuit.acquire_with(clock::now) {
            Ok(admitted) => {
                if let Some(t) = admitted.transition {
                    self.shared
                        .announce_for(service.as_ref(), endpoint.as_ref(), t, clock::now());
                }
                if let (Some(until), Some(endpoint)) = (admitted.probes_exhausted, &endpoint) {
                    // Every probe is out: nothing more may pass until they
                    // report, so the balancer may as well look elsewhere.
                    endpoint.state().eject_until(until);
                }
                let timeout = entry.circuit.config().call_timeout();
                let tracker = Tracker::new(
                    Arc::clone(&self.shared),
                    entry,
                    admitted.permit,
                    service,
                    endpoint,
                );
                ResponseFuture::called(self.inner.call(req), tracker, timeout)
            }
            Err(rejected) => {
                let now = clock::now();
                if let Some(t) = rejected.transition {
                    self.shared
                        .announce_for(service.as_ref(), endpoint.as_ref(), t, now);
                }
                let endpoint_id = endpoint.map(|e| e.id().clone());
                tracing::debug!(?service, endpoint = ?endpoint_id, state = %rejected.state, "call refused by circuit breaker");
                if self.shared.events.subscriber_count() > 0 {
                    self.shared.events.publish(MeshEvent::BreakerRejected {
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
