//! [`MeshError`]: what a request meets in tower-mesh layers (a
//! configuration refused when built is a [`crate::ConfigError`]).

use std::net::SocketAddr;
use std::time::Duration;

use crate::name::{EndpointId, InvalidName, ServiceName};

/// The error type tower services in a stack pass along: any error, boxed.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// `(address) ` when the endpoint's id does not already say it.
fn at(endpoint: &EndpointId, address: &SocketAddr) -> String {
    match endpoint.as_str() == address.to_string() {
        true => String::new(),
        false => format!("({address}) "),
    }
}

/// The innermost error of `error`'s source chain, as text: what an error
/// whose message ends with its root cause (and keeps the whole chain as
/// its source) says last.
pub fn root_cause(error: &(dyn std::error::Error + 'static)) -> String {
    let mut root = error;
    while let Some(next) = root.source() {
        root = next;
    }
    root.to_string()
}

/// An error and its causes, `outer: inner: root`, for messages: hyper's
/// own text ("client error (Connect)") does not say what failed (a refused
/// connection, a TLS alert). A cause whose text its wrapper already
/// repeats is not repeated.
pub fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut next = error.source();
    while let Some(cause) = next {
        let more = cause.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        next = cause.source();
    }
    text
}

/// A connection could not be set up (a TLS handshake refused, say), so
/// the request was never sent.
///
/// Connectors wrap their failures in it (mesh-tls's does) so that failure
/// classification reports [`crate::FailureKind::Connect`] and retries know
/// sending again is safe, whatever the connector's own error type. The
/// cause is the [`source`](std::error::Error::source).
#[derive(Debug, thiserror::Error)]
#[error("connection not established")]
pub struct ConnectError(#[source] BoxError);

impl ConnectError {
    /// Wraps a connector's error.
    pub fn new(cause: impl Into<BoxError>) -> Self {
        ConnectError(cause.into())
    }

    /// The connector's error.
    pub fn cause(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
        &*self.0
    }
}

/// What went wrong with a request in a tower-mesh layer, said so that a
/// person can act.
///
/// These are request-time errors; a configuration refused when something
/// is built is a [`ConfigError`](crate::ConfigError) instead. Layers return
/// these boxed (as [`BoxError`]), because a stack mixes them
/// with errors from tower and hyper. Find one in an error chain with
/// [`MeshError::find`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MeshError {
    /// The request URI has no authority, so there is no service to route to.
    #[error("the request URI has no authority: send requests to http://<service-name>/path so the mesh knows which service they are for")]
    MissingAuthority,

    /// The URI authority does not name a valid service.
    #[error("the request authority {authority:?} is not a valid service name: {source}")]
    InvalidAuthority {
        /// The authority as written.
        authority: String,
        /// Why it is not a service name.
        source: InvalidName,
    },

    /// A call's path is not a valid URI path. The path is not repeated:
    /// its query may carry a secret.
    #[error("the path of a call to {service} is not a valid URI path: {source}")]
    InvalidPath {
        /// The service called.
        service: ServiceName,
        /// Why the path is not one.
        source: http::uri::InvalidUri,
    },

    /// No registry knows the service.
    #[error(
        "unknown service {service:?}: no registry lists it; check the name or add it to discovery"
    )]
    UnknownService {
        /// The service asked for.
        service: ServiceName,
    },

    /// The first request for a service waited for the registry's first
    /// answer, and none came in time.
    #[error("no answer from {registry} for service {service:?} within {after:?}: check that the registry is reachable and lists the service")]
    DiscoveryTimeout {
        /// The service.
        service: ServiceName,
        /// Which registry was asked, without secrets (`consul at
        /// http://127.0.0.1:8500`, `file /etc/mesh/services.json`).
        registry: String,
        /// How long the request waited.
        after: Duration,
    },

    /// The service is known but none of its endpoints may take a request.
    #[error("service {service:?} has no available endpoint ({total} known, all unhealthy, ejected or draining)")]
    NoAvailableEndpoints {
        /// The service.
        service: ServiceName,
        /// How many endpoints it has in all.
        total: usize,
    },

    /// Every available endpoint is at its limit of requests in flight.
    #[error("all {available} available endpoints of {service:?} are at their limit of {limit} requests in flight; raise max_connections_per_instance or add instances")]
    AtCapacity {
        /// The service.
        service: ServiceName,
        /// How many endpoints were available.
        available: usize,
        /// The per-instance limit.
        limit: u32,
    },

    /// A layer that needs an earlier layer's work found none: the stack is
    /// assembled in the wrong order.
    #[error("{layer} found no {missing} on the request: {hint}")]
    Misconfigured {
        /// The layer that noticed.
        layer: &'static str,
        /// What it looked for.
        missing: &'static str,
        /// How to fix the stack.
        hint: &'static str,
    },

    /// A circuit breaker refused the call without sending it.
    #[error("circuit open for {}{}: {}", service.as_ref().map_or("the service", |s| s.as_str()), endpoint.as_ref().map(|e| format!(" endpoint {e}")).unwrap_or_default(), retry_in.map_or("held open by an operator until released".to_owned(), |d| format!("calls are refused for up to {d:?} while it recovers")))]
    CircuitOpen {
        /// The service guarded.
        service: Option<ServiceName>,
        /// The endpoint, for a per-endpoint breaker.
        endpoint: Option<EndpointId>,
        /// The longest the breaker refuses calls from now; `None` while an
        /// operator holds it open.
        retry_in: Option<Duration>,
    },

    /// A call took longer than the timeout a layer gives it, and was
    /// cancelled.
    #[error("call timed out after {after:?} and was cancelled")]
    Timeout {
        /// The timeout.
        after: Duration,
    },

    /// A call was refused because its service's configured limit was
    /// reached (refused at once rather than queued without bound).
    #[error("call to {service} refused: {limit} reached; raise the limit or add capacity")]
    LimitExceeded {
        /// The service called.
        service: ServiceName,
        /// Which limit (`50 calls in flight`, `100 calls per 1s`).
        limit: String,
    },

    /// The client is shutting down and takes no new calls.
    #[error("the mesh client of {service} is shutting down and takes no new calls")]
    ShuttingDown {
        /// The local service.
        service: ServiceName,
    },

    /// Sending to a chosen endpoint failed; `source` says how, and the
    /// message ends with the root cause (`connection refused`), so the
    /// one line a caller prints says why.
    #[error("request to {service} endpoint {endpoint} {}failed: {}", at(endpoint, address), root_cause(source.as_ref()))]
    Endpoint {
        /// The service.
        service: ServiceName,
        /// The endpoint that was tried.
        endpoint: EndpointId,
        /// Its address.
        address: SocketAddr,
        /// The underlying error (connect, timeout, breaker...).
        #[source]
        source: crate::BoxError,
    },
}

impl MeshError {
    /// The endpoint a failure names: the first [`MeshError::Endpoint`] in
    /// `err`'s source chain, `err` included ([`MeshError::find`] looks
    /// through that context to the cause beneath).
    pub fn endpoint_of<'a>(err: &'a (dyn std::error::Error + 'static)) -> Option<&'a EndpointId> {
        let mut next = Some(err);
        while let Some(e) = next {
            if let Some(MeshError::Endpoint { endpoint, .. }) = e.downcast_ref::<MeshError>() {
                return Some(endpoint);
            }
            next = e.source();
        }
        None
    }

    /// The first `MeshError` in `err`'s source chain, `err` included.
    ///
    /// ```
    /// use mesh_core::{BoxError, MeshError};
    /// let err: BoxError = Box::new(MeshError::MissingAuthority);
    /// assert!(matches!(MeshError::find(&*err), Some(MeshError::MissingAuthority)));
    /// ```
    pub fn find<'a>(err: &'a (dyn std::error::Error + 'static)) -> Option<&'a MeshError> {
        let mut next = Some(err);
        while let Some(e) = next {
            if let Some(found) = e.downcast_ref::<MeshError>() {
                // An endpoint wrapper is context; prefer the cause beneath it.
                if let MeshError::Endpoint { source, .. } = found {
                    if let Some(inner) = MeshError::find(source.as_ref()) {
                        return Some(inner);
                    }
                }
                return Some(found);
            }
            next = e.source();
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("client error (Connect)")]
    struct Outer(#[source] std::io::Error);

    #[test]
    fn an_endpoint_failure_says_its_root_cause_once() {
        let failed = MeshError::Endpoint {
            service: ServiceName::new("users").unwrap(),
            endpoint: EndpointId::new("127.0.0.1:8080").unwrap(),
            address: "127.0.0.1:8080".parse().unwrap(),
            source: Box::new(Outer(std::io::Error::new(
                std::io::ErrorKind::ConnectionRefused,
                "connection refused",
            ))),
        };
        assert_eq!(
            failed.to_string(),
            "request to users endpoint 127.0.0.1:8080 failed: connection refused"
        );
        // The chain adds the layer between, and repeats nothing.
        assert_eq!(
            error_chain(&failed),
            "request to users endpoint 127.0.0.1:8080 failed: connection refused: \
             client error (Connect)"
        );
        let named = MeshError::Endpoint {
            service: ServiceName::new("users").unwrap(),
            endpoint: EndpointId::new("users-1").unwrap(),
            address: "10.0.0.7:80".parse().unwrap(),
            source: "reset".into(),
        };
        assert_eq!(
            named.to_string(),
            "request to users endpoint users-1 (10.0.0.7:80) failed: reset"
        );
    }

    #[test]
    fn messages_name_what_to_fix() {
        let svc = ServiceName::new("payments").unwrap();
        let unknown = MeshError::UnknownService {
            service: svc.clone(),
        };
        assert!(unknown.to_string().contains("\"payments\""));
        let open = MeshError::CircuitOpen {
            service: Some(svc.clone()),
            endpoint: Some(EndpointId::new("10.0.0.1:80").unwrap()),
            retry_in: Some(Duration::from_secs(2)),
        };
        assert_eq!(
            open.to_string(),
            "circuit open for payments endpoint 10.0.0.1:80: calls are refused for up to 2s while it recovers"
        );
    }

    #[test]
    fn find_looks_through_endpoint_context() {
        let inner = MeshError::CircuitOpen {
            service: None,
            endpoint: None,
            retry_in: Some(Duration::ZERO),
        };
        let outer = MeshError::Endpoint {
            service: ServiceName::new("a").unwrap(),
            endpoint: EndpointId::new("e").unwrap(),
            address: "127.0.0.1:1".parse().unwrap(),
            source: Box::new(inner),
        };
        assert!(matches!(
            MeshError::find(&outer),
            Some(MeshError::CircuitOpen { .. })
        ));
    }
}
