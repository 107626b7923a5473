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
use crate::future::{ResponseFuture, Tracker};
use crate::registry::{BreakerKey, Registry};

/// What all services of one [`crate::BreakerLayer`] share.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) registry: Registry,
    pub(crate) classifier: FailureClassifier,
    pub(crate) events: EventBus,
}

/// Who a circuit guards, as far as events and ejection need to know.
#[derive(Clone, Debug)]
pub(crate) struct Guarded {
    pub(crate) service: Option<ServiceName>,
    pub(crate) endpoint: Option<Endpoint>,
}

impl Shared {
    /// Publishes a transition and applies it to the endpoint's live state:
    /// an open or probing circuit ejects its endpoint so the balancer skips
    /// it; a closed one returns it.
    pub(crate) fn announce(&self, guarded: &Guarded, t: Transition, now: Nanos) {
        if let Some(endpoint) = &guarded.endpoint {
            match t.to {
                CircuitState::Open | CircuitState::HalfOpen => {
                    endpoint
                        .state()
                        .eject_until(t.until.unwrap_or(now).max(now));
                }
                CircuitState::Closed => endpoint.state().clear_ejection(),
            }
        }
        let endpoint = guarded.endpoint.as_ref().map(|e| e.id().clone());
        match t.to {
            CircuitState::Open => {
                tracing::warn!(service = ?guarded.service, ?endpoint, from = %t.from, "circuit opened")
            }
            _ => {
                tracing::info!(service = ?guarded.service, ?endpoint, from = %t.from, to = %t.to, "circuit transition")
            }
        }
        self.events.publish(MeshEvent::BreakerTransition {
            service: guarded.service.clone(),
            endpoint,
            from: t.from,
            to: t.to,
        });
    }
}

/// Fails fast on calls to an endpoint (or service) whose recent calls kept
/// failing; see the [crate docs](crate).
#[derive(Clone, Debug)]
pub struct Breaker<S> {
    inner: S,
    shared: Arc<Shared>,
}

impl<S> Breaker<S> {
    pub(crate) fn new(inner: S, shared: Arc<Shared>) -> Self {
        Breaker { inner, shared }
    }
}

/// The circuit a request belongs to; `None` for a request that names no
/// service, endpoint or authority (it passes unguarded: there is nothing to
/// attribute its outcome to, and it will fail below for lack of a target).
fn key_of<B>(req: &Request<B>) -> Option<(BreakerKey, Guarded)> {
    let ext = req.extensions();
    let service = ext
        .get::<TargetService>()
        .map(|t| t.0.clone())
        .or_else(|| ext.get::<EndpointSet>().map(|s| s.service().clone()));
    if let Some(SelectedEndpoint(endpoint)) = ext.get::<SelectedEndpoint>() {
        if let Some(service) = &service {
            let key = BreakerKey::Endpoint(service.clone(), endpoint.id().clone());
            return Some((
                key,
                Guarded {
                    service: Some(service.clone()),
                    endpoint: Some(endpoint.clone()),
                },
            ));
        }
    }
    let key = match (&service, req.uri().authority()) {
        (Some(service), _) => BreakerKey::Service(service.clone()),
        (None, Some(authority)) => BreakerKey::Authority(authority.clone()),
        (None, None) => return None,
    };
    Some((
        key,
        Guarded {
            service,
            endpoint: None,
        },
    ))
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
        let Some((key, guarded)) = key_of(&req) else {
            return ResponseFuture::unguarded(self.inner.call(req));
        };
        let now = clock::now();
        let circuit = self.shared.registry.get_or_insert(&key);
        match circuit.acquire(now) {
            Ok((permit, transition)) => {
                if let Some(t) = transition {
                    self.shared.announce(&guarded, t, now);
                }
                let tracker = Tracker::new(Arc::clone(&self.shared), circuit, permit, guarded);
                ResponseFuture::called(self.inner.call(req), tracker)
            }
            Err(rejected) => ResponseFuture::rejected(MeshError::CircuitOpen {
                service: guarded.service,
                endpoint: guarded.endpoint.map(|e| e.id().clone()),
                retry_in: rejected.retry_in,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{BreakerConfig, BreakerLayer};
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::time::Duration;
    use tower::{service_fn, Layer, ServiceExt};

    fn endpoint_request(endpoint: &Endpoint) -> Request<()> {
        let mut req = Request::get("http://127.0.0.1:1/").body(()).unwrap();
        req.extensions_mut()
            .insert(TargetService(ServiceName::new("users").unwrap()));
        req.extensions_mut()
            .insert(SelectedEndpoint(endpoint.clone()));
        req
    }

    #[tokio::test]
    async fn a_per_endpoint_circuit_ejects_its_endpoint_until_a_probe_succeeds() {
        let events = EventBus::new(16);
        let mut rx = events.subscribe();
        let layer = BreakerLayer::new(
            BreakerConfig::builder()
                .consecutive_failures(2)
                .open_duration(Duration::from_millis(50))
                .build()
                .unwrap(),
        )
        .events(events);
        let healthy = Arc::new(AtomicBool::new(false));
        let calls = Arc::new(AtomicUsize::new(0));
        let svc = {
            let healthy = Arc::clone(&healthy);
            let calls = Arc::clone(&calls);
            layer.layer(service_fn(move |_req: Request<()>| {
                calls.fetch_add(1, Ordering::SeqCst);
                let status = if healthy.load(Ordering::SeqCst) {
                    200
                } else {
                    500
                };
                async move {
                    Ok::<_, BoxError>(http::Response::builder().status(status).body(()).unwrap())
                }
            }))
        };
        let endpoint = Endpoint::builder("127.0.0.1:1".parse().unwrap()).build();
        for _ in 0..2 {
            let r = svc
                .clone()
                .oneshot(endpoint_request(&endpoint))
                .await
                .unwrap();
            assert_eq!(r.status(), 500);
        }
        assert!(
            !endpoint.state().is_available(clock::now()),
            "ejected while open"
        );
        let err = svc
            .clone()
            .oneshot(endpoint_request(&endpoint))
            .await
            .unwrap_err();
        assert!(matches!(
            MeshError::find(&*err),
            Some(MeshError::CircuitOpen { .. })
        ));
        assert_eq!(
            calls.load(Ordering::SeqCst),
            2,
            "refused call never reached the service"
        );

        tokio::time::sleep(Duration::from_millis(60)).await;
        assert!(
            endpoint.state().is_available(clock::now()),
            "open duration over"
        );
        healthy.store(true, Ordering::SeqCst);
        let r = svc
            .clone()
            .oneshot(endpoint_request(&endpoint))
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert!(endpoint.state().is_available(clock::now()));
        let key = BreakerKey::Endpoint(ServiceName::new("users").unwrap(), endpoint.id().clone());
        assert_eq!(layer.state(&key), Some(CircuitState::Closed));

        let mut seen = Vec::new();
        while let Ok(MeshEvent::BreakerTransition {
            from,
            to,
            endpoint: Some(_),
            ..
        }) = rx.try_recv()
        {
            seen.push((from, to));
        }
        assert_eq!(
            seen,
            [
                (CircuitState::Closed, CircuitState::Open),
                (CircuitState::Open, CircuitState::HalfOpen),
                (CircuitState::HalfOpen, CircuitState::Closed),
            ]
        );
    }

    #[tokio::test]
    async fn a_cancelled_probe_is_given_back() {
        let layer = BreakerLayer::new(
            BreakerConfig::builder()
                .consecutive_failures(1)
                .open_duration(Duration::from_millis(20))
                .build()
                .unwrap(),
        );
        let hang = Arc::new(AtomicBool::new(false));
        let svc = {
            let hang = Arc::clone(&hang);
            layer.layer(service_fn(move |_req: Request<()>| {
                let hang = hang.load(Ordering::SeqCst);
                async move {
                    if hang {
                        std::future::pending::<()>().await;
                    }
                    Err::<http::Response<()>, BoxError>("refused".into())
                }
            }))
        };
        let req = || Request::get("http://db/").body(()).unwrap();
        assert!(svc.clone().oneshot(req()).await.is_err());
        let key = BreakerKey::Authority(http::uri::Authority::from_static("db"));
        assert_eq!(layer.state(&key), Some(CircuitState::Open));
        tokio::time::sleep(Duration::from_millis(25)).await;
        hang.store(true, Ordering::SeqCst);
        let probe =
            tokio::time::timeout(Duration::from_millis(10), svc.clone().oneshot(req())).await;
        assert!(probe.is_err(), "the probe hung and was cancelled");
        assert_eq!(
            layer.state(&key),
            Some(CircuitState::Open),
            "probe given back"
        );
        hang.store(false, Ordering::SeqCst);
        // The next call probes at once rather than waiting for the lost one.
        let err = svc.oneshot(req()).await.unwrap_err();
        assert_eq!(err.to_string(), "refused");
    }
}
