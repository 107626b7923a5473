//! Sending: a call by service name and path (`get`, `post`...) or as a
//! ready request (`send`), each admitted, limited, routed to its
//! service's stack and reported as one `RequestCompleted` event.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::uri::{Authority, InvalidUri, PathAndQuery, Scheme};
use http::{Method, Request, Response, Uri};
use mesh_core::clock;
use mesh_core::ext::{
    AffinityKey, CallContext, Deadline, Destination, SelectedEndpoint, TargetService,
};
use mesh_core::grpc::{is_grpc_call, timeout_in};
use mesh_core::{BoxError, EndpointId, MeshError, MeshEvent, ServiceName};

use super::body::{CallGuard, StackBody};
use super::{CallOptions, MeshBody, MeshClient, RequestBody, SentBody};
use crate::fallback::{Asked, Fallback, FallbackCause};
use crate::limits::CallDeadline;
use crate::services::ServiceState;
use crate::wiring::routes::Route;

/// What a service's stack answers.
type Outcome = Result<Response<StackBody>, BoxError>;

/// What [`MeshClient::make_request`] makes.
struct MadeRequest {
    req: Request<RequestBody>,
    timeout: Option<Duration>,
    /// The service's state, when known by the name asked for.
    state: Option<Arc<ServiceState>>,
}

/// A request readied for its service's stack, and what the call needs
/// beside it.
struct Prepared<'a> {
    /// The request as the stack sends it.
    req: Request<SentBody>,
    /// The service's route.
    route: &'a Route,
    /// The service's state: its name, limits, fallback.
    state: Arc<ServiceState>,
    /// Where the balancer names the endpoint it chose.
    context: CallContext,
    /// What a fallback needs of the request, for a service with one.
    /// Boxed (an allocation per call to such a service): unboxed, every
    /// call's future would be 120 bytes larger.
    asked: Option<Box<Asked>>,
    /// When the call's deadline falls, for a wait for admission.
    until: Option<CallDeadline>,
}

/// One call's service state, its caller's deadline and when it started.
#[derive(Clone, Copy)]
struct Call<'a> {
    state: &'a ServiceState,
    deadline: Option<Duration>,
    started: tokio::time::Instant,
}

// === impl MeshClient ===

impl MeshClient {
    /// Sends `req` through the stack of the service its URI's host names
    /// (`http://users/api/users`). The body is whole (`Full<Bytes>`,
    /// `Bytes`, `String`...) or streamed ([`RequestBody::stream`]).
    ///
    /// A gRPC call's `grpc-timeout` is its deadline: the whole call, queue
    /// and retries included, has its response's headers within it, and
    /// each attempt tells the server the time left.
    pub fn send(
        &self,
        req: Request<impl Into<RequestBody>>,
    ) -> impl Future<Output = Result<Response<MeshBody>, BoxError>> + Send + '_ {
        let deadline = is_grpc_call(&req)
            .then(|| timeout_in(req.headers()))
            .flatten();
        self.send_with(Ok(req.map(Into::into)), deadline, None)
    }

    /// Sends `method` to `service` at `path` (the design document's
    /// `get`/`post`/... with headers, body, timeout and client id). The
    /// request is made, and its service found, before the future is
    /// returned: it borrows neither `service` nor `path`.
    pub fn request(
        &self,
        method: Method,
        service: &str,
        path: &str,
        body: Bytes,
        options: CallOptions,
    ) -> impl Future<Output = Result<Response<MeshBody>, BoxError>> + Send + '_ {
        match self.make_request(method, service, path, body, options) {
            Ok(made) => self.send_with(Ok(made.req), made.timeout, made.state),
            Err(error) => self.send_with(Err(error), None, None),
        }
    }

    /// `GET` (the design document's `get("user-service", "/api/users", { clientId })`).
    pub fn get(
        &self,
        service: &str,
        path: &str,
        options: CallOptions,
    ) -> impl Future<Output = Result<Response<MeshBody>, BoxError>> + Send + '_ {
        self.request(Method::GET, service, path, Bytes::new(), options)
    }

    /// `POST` with `body`.
    pub fn post(
        &self,
        service: &str,
        path: &str,
        body: impl Into<Bytes>,
        options: CallOptions,
    ) -> impl Future<Output = Result<Response<MeshBody>, BoxError>> + Send + '_ {
        self.request(Method::POST, service, path, body.into(), options)
    }

    /// `PUT` with `body`.
    pub fn put(
        &self,
        service: &str,
        path: &str,
        body: impl Into<Bytes>,
        options: CallOptions,
    ) -> impl Future<Output = Result<Response<MeshBody>, BoxError>> + Send + '_ {
        self.request(Method::PUT, service, path, body.into(), options)
    }

    /// `DELETE`.
    pub fn delete(
        &self,
        service: &str,
        path: &str,
        options: CallOptions,
    ) -> impl Future<Output = Result<Response<MeshBody>, BoxError>> + Send + '_ {
        self.request(Method::DELETE, service, path, Bytes::new(), options)
    }

    /// The request `request` sends, with its caller's timeout and, when
    /// the service is known by that exact name, its state (found once
    /// here rather than again from the URI).
    fn make_request(
        &self,
        method: Method,
        service: &str,
        path: &str,
        body: Bytes,
        options: CallOptions,
    ) -> Result<MadeRequest, BoxError> {
        let state = self.inner.services.find(service);
        let named;
        let name = match &state {
            Some(state) => state.name.as_str(),
            None => {
                named = self.service_named(service)?;
                named.as_str()
            }
        };
        // The service's authority made once (with its state), else from
        // its name; only the path is parsed per call.
        let authority = match state.as_ref().and_then(|s| s.authority.as_ref()) {
            Some(made) => Ok(made.clone()),
            None => Authority::try_from(name),
        };
        let uri = match authority.and_then(|authority| call_uri(authority, path)) {
            Ok(uri) => uri,
            Err(source) => {
                let service = match &state {
                    Some(state) => state.name.clone(),
                    None => self.service_named(name)?,
                };
                return Err(MeshError::InvalidPath { service, source }.into());
            }
        };
        let mut req = Request::new(RequestBody::from(body));
        *req.method_mut() = method;
        *req.uri_mut() = uri;
        // Most calls add none: an empty map is not even walked.
        if !options.headers.is_empty() {
            req.headers_mut().extend(options.headers);
        }
        if let Some(key) = options.affinity_key {
            req.extensions_mut().insert(AffinityKey::new(key));
        }
        // No `TargetService`: the URI's host is the service's name, which
        // every layer below reads when the extension is absent.
        Ok(MadeRequest {
            req,
            timeout: options.timeout,
            state,
        })
    }

    /// Sends `req`, the whole call (retries included) within `deadline`
    /// when given; the response body keeps the call counted until it ends.
    /// A failed call is answered by the service's fallback, if it has one;
    /// a request that could not be made fails as it is.
    ///
    /// One async function from admission to answer, the rest plain
    /// functions: every level of nested futures would be copied once more
    /// per call (hence the request that could not be made, failed here
    /// rather than in a future of its own). The request is only ever moved
    /// here, never borrowed ([`MeshClient::prepare`] works on it): a local
    /// an async function borrows keeps its room in the future to the end,
    /// and each room for a request is 264 bytes copied with the future.
    async fn send_with(
        &self,
        req: Result<Request<RequestBody>, BoxError>,
        deadline: Option<Duration>,
        state: Option<Arc<ServiceState>>,
    ) -> Result<Response<MeshBody>, BoxError> {
        let req = req?;
        let started = tokio::time::Instant::now();
        let mut guard = self.enter()?;
        let Prepared {
            state,
            context,
            asked,
            until,
            req,
            route,
        } = self.prepare(req, deadline, state, started)?;
        let service = &state.name;
        // Boxed: most services set no limits, and every call's future
        // would otherwise be as large as a waiting admission.
        let refused: Option<BoxError> = match &state.limits {
            Some(limits) => match Box::pin(limits.admit(service, until)).await {
                Ok(admission) => {
                    guard.admitted(admission);
                    None
                }
                Err(refused) => Some(refused.into()),
            },
            None => None,
        };
        let outcome = match refused {
            // Refused by the limits: counted, reported and answered by the
            // fallback like any failed call.
            Some(refused) => Err(refused),
            None => {
                // Handed to the stack here, as the argument of its future:
                // the request takes no room of its own in this one.
                let outcome = route.lent.oneshot(req).await;
                self.after_call(service, &state, route, &outcome);
                outcome
            }
        };
        // The endpoint is borrowed from the context, not copied: a copy
        // writes a count every core shares.
        let mut report = |served_by: Option<&EndpointId>| {
            self.publish_completed(service, &outcome, started, served_by);
            guard.record(
                service,
                &outcome,
                started,
                served_by,
                context.is_grpc_call(),
            );
        };
        if context.with_chosen(|_, e| report(Some(e.id()))).is_none() {
            report(None);
        }
        match (&state.fallback, asked) {
            (Some(fallback), Some(asked)) => settle(fallback, service, &asked, outcome, guard),
            _ => outcome.map(|response| response.map(|body| MeshBody::new(body, guard, None))),
        }
    }

    /// Readies `req` for its service's stack: finds the service's state
    /// (unless given), attaches the call's context, makes its body
    /// replayable, notes what a fallback needs, finds its route, and gives
    /// it its method's policy and the call's deadline
    /// ([`MeshClient::hold_to_deadline`]).
    fn prepare(
        &self,
        mut req: Request<RequestBody>,
        deadline: Option<Duration>,
        state: Option<Arc<ServiceState>>,
        started: tokio::time::Instant,
    ) -> Result<Prepared<'_>, MeshError> {
        let state = match state {
            Some(state) => state,
            None => self.state_of(&mut req)?,
        };
        // Where the balancer names the endpoint that served the call, for
        // its metrics and event (nothing is added to the response).
        let context = CallContext::attach(&mut req).clone();
        let mut req = req.map(|body| body.replayable(state.replay_buffer));
        let asked = state.fallback.as_ref().map(|_| Box::new(Asked::of(&req)));
        let route = self.inner.routes.get(&state.name);
        let call = Call {
            state: &state,
            deadline,
            started,
        };
        let until = self.hold_to_deadline(call, route, &mut req);
        Ok(Prepared {
            req,
            route,
            state,
            context,
            asked,
            until,
        })
    }

    /// Gives `req` its method's policy and the call's deadline; returns
    /// when a wait for admission must end.
    ///
    /// The deadline is the caller's or its method's, whichever is sooner,
    /// else (when the service's limits may make the call wait) the
    /// route's: counted from the start, the wait included. The retry layer
    /// holds the call to it: each attempt is cut at it, and no backoff
    /// starts that would end past it.
    fn hold_to_deadline(
        &self,
        call: Call<'_>,
        route: &Route,
        req: &mut Request<SentBody>,
    ) -> Option<CallDeadline> {
        let applied = route
            .policies
            .as_deref()
            .and_then(|p| p.find(req.method(), req.uri().path()));
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
            // Dated from the call's start, as the wait's end below is.
            let started = clock::Nanos::from_instant(call.started.into_std());
            CallContext::attach(req).set_deadline(Deadline(started.saturating_add(limit)));
        }
        deadline.map(|limit| CallDeadline {
            at: call.started + limit,
            limit,
        })
    }

    /// Forgets the state (and retry budget) of a service the call found
    /// unknown to everyone; else starts the service's upstream checker
    /// once discovery knows it.
    fn after_call(
        &self,
        service: &ServiceName,
        state: &ServiceState,
        route: &Route,
        outcome: &Outcome,
    ) {
        match outcome {
            Err(error) if is_unknown(&**error) && !self.knows(service) => {
                self.inner.services.remove(service);
                route.retry.forget_budget(service);
            }
            _ => self.check_upstream(service, state),
        }
    }

    /// The state of the service `req` goes to: its [`TargetService`], else
    /// the host of its URI. A host that is a known service's name as
    /// normalized is found in one lookup and needs no extension (an
    /// allocation saved on most calls), since the layers below read the
    /// host when it is absent; another (`Users`) is validated, normalized
    /// and recorded as the `TargetService` for them.
    fn state_of<B>(&self, req: &mut Request<B>) -> Result<Arc<ServiceState>, MeshError> {
        let host = match Destination::of(req) {
            Some(Destination::Named(service)) => return self.service_state(service),
            Some(Destination::Host(host)) => host,
            None => return Err(MeshError::MissingAuthority),
        };
        if let Some(state) = self.inner.services.find(host) {
            return Ok(state);
        }
        let service = self.service_named(host)?;
        if service.as_str() != host {
            req.extensions_mut().insert(TargetService(service.clone()));
        }
        self.service_state(&service)
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
        service: &ServiceName,
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
                service: service.clone(),
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
                service: service.clone(),
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

/// The longest URI `http` parses (65,534 bytes). Made from parts, a URI
/// is not measured whole.
const MAX_URI: usize = u16::MAX as usize - 1;

/// The URI of a call to the service at `authority` for `path`, its slash
/// added if missing; refused, as `http` refuses to parse it, when the
/// whole is longer than [`MAX_URI`].
fn call_uri(authority: Authority, path: &str) -> Result<Uri, InvalidUri> {
    let path_and_query = match path.starts_with('/') {
        true => PathAndQuery::try_from(path)?,
        false => PathAndQuery::try_from(["/", path].concat())?,
    };
    let whole = ["http://", authority.as_str(), path_and_query.as_str()];
    if whole.iter().map(|part| part.len()).sum::<usize>() > MAX_URI {
        // Parsed whole, it fails as too long: the error `http` gives.
        return Uri::try_from(whole.concat());
    }
    let mut parts = http::uri::Parts::default();
    parts.scheme = Some(Scheme::HTTP);
    parts.authority = Some(authority);
    parts.path_and_query = Some(path_and_query);
    // A scheme, an authority and a path always make a URI; if they
    // somehow did not, discovery refuses the URI without an authority
    // (no service named) rather than sending it anywhere.
    let uri = Uri::from_parts(parts);
    debug_assert!(uri.is_ok(), "a URI of scheme, authority and path: {uri:?}");
    Ok(uri.unwrap_or_default())
}
