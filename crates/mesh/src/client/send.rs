//! Sending: a call by service name and path (`get`, `post`...) or as a
//! ready request (`send`), each admitted, limited, routed to its
//! service's stack and reported as one `RequestCompleted` event.

use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use mesh_balance::TrackedBody;
use mesh_core::clock;
use mesh_core::ext::{AffinityKey, Deadline, SelectedEndpoint, TargetService};
use mesh_core::{BoxError, MeshError, MeshEvent, ServiceName};
use tower::ServiceExt;

use super::{CallOptions, MeshBody, MeshClient};
use crate::services::ServiceState;

/// What a service's stack answers.
type Outcome = Result<Response<TrackedBody<Incoming>>, BoxError>;

// === impl MeshClient ===

impl MeshClient {
    /// Sends `req` through the stack of the service its URI's host names
    /// (`http://users/api/users`).
    pub async fn send(&self, req: Request<Full<Bytes>>) -> Result<Response<MeshBody>, BoxError> {
        self.send_with(req, None).await
    }

    /// Sends `method` to `service` at `path` (the design document's
    /// `get`/`post`/... with headers, body, timeout and client id).
    pub async fn request(
        &self,
        method: Method,
        service: &str,
        path: &str,
        body: Bytes,
        options: CallOptions,
    ) -> Result<Response<MeshBody>, BoxError> {
        let service = ServiceName::new(service).map_err(|source| MeshError::InvalidAuthority {
            authority: service.to_owned(),
            source,
        })?;
        let path = if path.starts_with('/') {
            path.to_owned()
        } else {
            format!("/{path}")
        };
        let mut req = Request::builder()
            .method(method)
            .uri(format!("http://{service}{path}"))
            .body(Full::new(body))?;
        req.headers_mut().extend(options.headers);
        if let Some(key) = options.affinity_key {
            req.extensions_mut().insert(AffinityKey::new(key));
        }
        req.extensions_mut().insert(TargetService(service));
        self.send_with(req, options.timeout).await
    }

    /// `GET` (the design document's `get("user-service", "/api/users", { clientId })`).
    pub async fn get(
        &self,
        service: &str,
        path: &str,
        options: CallOptions,
    ) -> Result<Response<MeshBody>, BoxError> {
        self.request(Method::GET, service, path, Bytes::new(), options)
            .await
    }

    /// `POST` with `body`.
    pub async fn post(
        &self,
        service: &str,
        path: &str,
        body: impl Into<Bytes>,
        options: CallOptions,
    ) -> Result<Response<MeshBody>, BoxError> {
        self.request(Method::POST, service, path, body.into(), options)
            .await
    }

    /// `PUT` with `body`.
    pub async fn put(
        &self,
        service: &str,
        path: &str,
        body: impl Into<Bytes>,
        options: CallOptions,
    ) -> Result<Response<MeshBody>, BoxError> {
        self.request(Method::PUT, service, path, body.into(), options)
            .await
    }

    /// `DELETE`.
    pub async fn delete(
        &self,
        service: &str,
        path: &str,
        options: CallOptions,
    ) -> Result<Response<MeshBody>, BoxError> {
        self.request(Method::DELETE, service, path, Bytes::new(), options)
            .await
    }

    /// Sends `req`, the whole call (retries included) within `deadline`
    /// when given; the response body keeps the call counted until it ends.
    async fn send_with(
        &self,
        mut req: Request<Full<Bytes>>,
        deadline: Option<Duration>,
    ) -> Result<Response<MeshBody>, BoxError> {
        let started = tokio::time::Instant::now();
        let mut guard = self.enter()?;
        let service = target(&mut req)?;
        let state = self.service_state(&service)?;
        if let Some(limit) = deadline {
            // Counted from now, a wait for the service's limits included.
            // The retry layer holds the call to it: each attempt is cut
            // at it, and no backoff starts that would end past it.
            req.extensions_mut()
                .insert(Deadline(clock::now().saturating_add(limit)));
        }
        if let Some(limits) = &state.limits {
            let until = deadline.map(|d| started + d);
            guard.admitted(limits.admit(&service, until).await?);
        }
        if let Some(budget) = &state.budget {
            req.extensions_mut().insert(budget.clone());
        }
        let call = self.inner.routes.stack(&service).clone().oneshot(req);
        let outcome = call.await;
        self.after_call(&service, &state, &outcome);
        self.publish_completed(service, &outcome, started);
        outcome.map(|response| response.map(|body| MeshBody::new(body, guard)))
    }

    /// Forgets the state of a service the call found unknown to everyone;
    /// else starts the service's upstream checker once discovery knows it.
    fn after_call(&self, service: &ServiceName, state: &ServiceState, outcome: &Outcome) {
        match outcome {
            Err(error) if is_unknown(&**error) && !self.knows(service) => {
                self.inner.services.remove(service)
            }
            _ => self.check_upstream(service, state),
        }
    }

    /// Publishes the call's `RequestCompleted` event. Per-call events cost
    /// a clone and a publish: only while someone listens.
    fn publish_completed(
        &self,
        service: ServiceName,
        outcome: &Outcome,
        started: tokio::time::Instant,
    ) {
        if self.inner.bus.subscriber_count() == 0 {
            return;
        }
        let elapsed = started.elapsed();
        let event = match outcome {
            Ok(response) => MeshEvent::RequestCompleted {
                service,
                endpoint: response
                    .extensions()
                    .get::<SelectedEndpoint>()
                    .map(|e| e.0.id().clone()),
                status: Some(response.status().as_u16()),
                error: None,
                elapsed,
            },
            Err(error) => MeshEvent::RequestCompleted {
                service,
                endpoint: MeshError::endpoint_of(&**error).cloned(),
                status: None,
                error: Some(error.to_string()),
                elapsed,
            },
        };
        self.inner.bus.publish(event);
    }
}

/// The service `req` goes to: its [`TargetService`], else the host of its
/// URI (then recorded as its `TargetService`).
fn target(req: &mut Request<Full<Bytes>>) -> Result<ServiceName, MeshError> {
    if let Some(TargetService(service)) = req.extensions().get::<TargetService>() {
        return Ok(service.clone());
    }
    let host = req.uri().host().ok_or(MeshError::MissingAuthority)?;
    let service = ServiceName::new(host).map_err(|source| MeshError::InvalidAuthority {
        authority: host.to_owned(),
        source,
    })?;
    req.extensions_mut().insert(TargetService(service.clone()));
    Ok(service)
}

/// Whether `error` says no registry lists the service.
fn is_unknown(error: &(dyn std::error::Error + 'static)) -> bool {
    matches!(
        MeshError::find(error),
        Some(MeshError::UnknownService { .. })
    )
}
