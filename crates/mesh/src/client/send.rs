//! Sending: a call by service name and path (`get`, `post`...) or as a
//! ready request (`send`), each admitted, limited, routed to its
//! service's stack and reported as one `RequestCompleted` event.

use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response};
use mesh_core::clock;
use mesh_core::ext::{AffinityKey, CallContext, Deadline, SelectedEndpoint, TargetService};
use mesh_core::{BoxError, Endpoint, EndpointId, MeshError, MeshEvent, ServiceName};
use tower::ServiceExt;

use super::body::{CallGuard, StackBody};
use super::{CallOptions, MeshBody, MeshClient, RequestBody, SentBody};
use crate::fallback::{Asked, Fallback, FallbackCause};
use crate::services::ServiceState;

/// What a service's stack answers.
type Outcome = Result<Response<StackBody>, BoxError>;

/// One call's service, its state, its deadline and when it started.
#[derive(Clone, Copy)]
struct Call<'a> {
    service: &'a ServiceName,
    state: &'a ServiceState,
    deadline: Option<Duration>,
    started: tokio::time::Instant,
}

// === impl MeshClient ===

impl MeshClient {
    /// Sends `req` through the stack of the service its URI's host names
    /// (`http://users/api/users`). The body is whole (`Full<Bytes>`,
    /// `Bytes`, `String`...) or streamed ([`RequestBody::stream`]).
    pub async fn send(
        &self,
        req: Request<impl Into<RequestBody>>,
    ) -> Result<Response<MeshBody>, BoxError> {
        self.send_with(req.map(Into::into), None).await
    }

    /// [`MeshClient::send`] with the whole call held to `deadline`, for
    /// callers that carry their own (a gRPC call's `grpc-timeout`).
    pub(crate) async fn send_within(
        &self,
        req: Request<RequestBody>,
        deadline: Option<Duration>,
    ) -> Result<Response<MeshBody>, BoxError> {
        self.send_with(req, deadline).await
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
        let service = self.service_named(service)?;
        // One string for the whole URI, the path's slash added if missing.
        let slash = if path.starts_with('/') { "" } else { "/" };
        let mut req = Request::builder()
            .method(method)
            .uri(format!("http://{service}{slash}{path}"))
            .body(RequestBody::from(body))?;
        req.headers_mut().extend(options.headers);
        if let Some(key) = options.affinity_key {
            req.extensions_mut().insert(AffinityKey::new(key));
        }
        // No `TargetService`: the URI's host is the service's name, which
        // every layer below reads when the extension is absent.
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
    /// A failed call is answered by the service's fallback, if it has one.
    async fn send_with(
        &self,
        mut req: Request<RequestBody>,
        deadline: Option<Duration>,
    ) -> Result<Response<MeshBody>, BoxError> {
        let started = tokio::time::Instant::now();
        let mut guard = self.enter()?;
        let service = self.target(&mut req)?;
        let state = self.service_state(&service)?;
        // Where the balancer names the endpoint that served the call, for
        // its metrics and event (nothing is added to the response).
        let context = CallContext::attach(&mut req).clone();
        let req = req.map(|body| body.replayable(state.replay_buffer));
        let asked = state.fallback.as_ref().map(|_| Asked::of(&req));
        let call = Call {
            service: &service,
            state: &state,
            deadline,
            started,
        };
        let outcome = self.call(call, req, &mut guard).await;
        let served_by = context.chosen();
        let served_by = served_by.as_ref().map(Endpoint::id);
        self.publish_completed(service.clone(), &outcome, started, served_by);
        guard.record(&service, &outcome, started, served_by);
        match (&state.fallback, asked) {
            (Some(fallback), Some(asked)) => settle(fallback, &service, &asked, outcome, guard),
            _ => outcome.map(|response| response.map(|body| MeshBody::new(body, guard, None))),
        }
    }

    /// Admits `req` under its service's limits, then sends it through the
    /// service's stack.
    async fn call(
        &self,
        call: Call<'_>,
        mut req: Request<SentBody>,
        guard: &mut CallGuard,
    ) -> Outcome {
        let route = self.inner.routes.get(call.service);
        let applied = route
            .policies
            .as_deref()
            .and_then(|p| p.find(req.method(), req.uri().path()));
        // The caller's deadline or its method's, whichever is sooner, else
        // (when the service's limits may make the call wait) the route's:
        // counted from the start, the wait included. The retry layer holds
        // the call to it: each attempt is cut at it, and no backoff starts
        // that would end past it.
        let method_timeout = applied.and_then(|a| a.timeout);
        let deadline = match (call.deadline, method_timeout) {
            (Some(own), Some(method)) => Some(own.min(method)),
            (own, method) => own.or(method),
        };
        let deadline = deadline.or(call.state.queue_deadline);
        if let Some(policy) = applied.and_then(|a| a.call.clone()) {
            req.extensions_mut().insert(policy);
        }
        if let Some(limit) = deadline {
            CallContext::attach(&mut req)
                .set_deadline(Deadline(clock::now().saturating_add(limit)));
        }
        if let Some(limits) = &call.state.limits {
            let until = deadline.map(|d| call.started + d);
            guard.admitted(limits.admit(call.service, until).await?);
        }
        if let Some(budget) = &call.state.budget {
            req.extensions_mut().insert(budget.clone());
        }
        let stack = route.stack.clone();
        let outcome = stack.oneshot(req).await;
        self.after_call(call.service, call.state, &outcome);
        outcome
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

    /// The service `req` goes to: its [`TargetService`], else the host of
    /// its URI. A host that is not the name as normalized (`Users`) is
    /// recorded as the `TargetService`, for the layers below; one that is
    /// needs no extension (an allocation saved on most calls), since they
    /// read the host when it is absent.
    fn target<B>(&self, req: &mut Request<B>) -> Result<ServiceName, MeshError> {
        if let Some(TargetService(service)) = req.extensions().get::<TargetService>() {
            return Ok(service.clone());
        }
        let host = req.uri().host().ok_or(MeshError::MissingAuthority)?;
        let service = self.service_named(host)?;
        if service.as_str() != host {
            req.extensions_mut().insert(TargetService(service.clone()));
        }
        Ok(service)
    }

    /// `name` as a service name: the one a known service already has (no
    /// allocation on the path of every call), else validated and
    /// normalized.
    fn service_named(&self, name: &str) -> Result<ServiceName, MeshError> {
        if let Some(known) = self.inner.services.name_of(name) {
            return Ok(known);
        }
        ServiceName::new(name).map_err(|source| MeshError::InvalidAuthority {
            authority: name.to_owned(),
            source,
        })
    }

    /// Publishes the call's `RequestCompleted` event. Per-call events cost
    /// a clone and a publish: only while someone listens.
    fn publish_completed(
        &self,
        service: ServiceName,
        outcome: &Outcome,
        started: tokio::time::Instant,
        served_by: Option<&EndpointId>,
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
                    .map(|e| e.0.id())
                    .or(served_by)
                    .cloned(),
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

/// Whether `error` says no registry lists the service.
fn is_unknown(error: &(dyn std::error::Error + 'static)) -> bool {
    matches!(
        MeshError::find(error),
        Some(MeshError::UnknownService { .. })
    )
}

/// `outcome` as the caller gets it from a service with `fallback`: a
/// failed call, or an answer it replaces, answered by the fallback when it
/// has an answer; a 2xx answer to a GET kept as the path's last good one.
fn settle(
    fallback: &Fallback,
    service: &ServiceName,
    asked: &Asked,
    outcome: Outcome,
    guard: CallGuard,
) -> Result<Response<MeshBody>, BoxError> {
    let cause = |error, status| FallbackCause {
        service,
        method: &asked.method,
        uri: &asked.uri,
        error,
        status,
    };
    match outcome {
        Ok(response) if !fallback.replaces(response.status()) => {
            let capture = fallback.capture(asked, &response);
            Ok(response.map(|body| MeshBody::new(body, guard, capture)))
        }
        Ok(response) => match fallback.answer(&cause(None, Some(response.status()))) {
            // The replaced answer's body is dropped, and the call with it.
            Some(answer) => Ok(answer),
            None => Ok(response.map(|body| MeshBody::new(body, guard, None))),
        },
        Err(error) => {
            let answer = fallback.answer(&cause(Some(&error), None));
            answer.ok_or(error)
        }
    }
}
