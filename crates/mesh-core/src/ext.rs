//! Request extensions: what one layer tells the layers below it.
//!
//! Layers never call each other; they read and write these types in
//! [`http::Extensions`]. Outside in:
//!
//! | type | written by | read by |
//! |---|---|---|
//! | [`TargetService`] | the user, to route by something other than the authority | discovery, breaker, events; retry, for a layer that keeps a budget per service |
//! | [`AffinityKey`] | the user | balancer (session affinity, consistent hashing) |
//! | [`Attempt`] | retry | anyone tracing or logging |
//! | [`AvoidEndpoints`] | retry | balancer |
//! | [`Deadline`] | the caller, by hand (the facade notes its call timeout in the [`CallContext`]) | retry, which notes the earlier of that and its own in the [`CallContext`]: each attempt is cut at it, no backoff starts past it |
//! | `mesh_retry::RetryBudget` | the user (one per service, so one service's failures spend only its own retries; a retry layer can keep them itself, as the facade's does) | retry: counts the request and pays its retries from it instead of the layer's budget |
//! | [`CallContext`] | retry (one per call, one per hedged copy), else discovery, else the caller | see below |
//! | [`crate::EndpointSet`] | by hand, for a balancer without discovery above it | balancer; breaker and events take the service from it when there is no [`TargetService`] |
//! | [`SelectedEndpoint`] | by hand (a health probe aimed at one endpoint); the balancer when the request has no [`CallContext`] (request and response) | breaker, retry |
//!
//! The [`CallContext`] carries the notes that change with every call, in
//! one shared value instead of one boxed extension each: the deadline,
//! whether the call is a gRPC call (retry notes it),
//! discovery notes the service's endpoints there, the balancer the endpoint it chose, and
//! the breaker (below), retry and the facade (above) read that choice,
//! also after an attempt was cancelled. [`deadline_of`],
//! [`with_endpoint_set`] and [`chosen_endpoint`] read either form, and
//! [`Destination::of`] the service a request names ([`TargetService`],
//! else its host, read by [`host_of`]) for every layer that looks it up.
//!
//! One span field crosses layers the same way: the retry layer's attempt
//! span (`mesh.attempt`) is current while the layers below run, and the
//! breaker records `mesh.breaker.state` on it.

use std::num::NonZeroU32;
use std::sync::Arc;

use crate::endpoint::Endpoint;
use crate::name::{EndpointId, ServiceName};

pub use crate::call_context::{
    chosen_endpoint, deadline_of, with_endpoint_set, with_endpoint_set_from, AttemptBound,
    CallContext,
};
pub use crate::host::host_of;

/// The logical service a request is for.
///
/// Without it, discovery resolves the URI authority's host, and the layers
/// below take the service's name from the inserted
/// [`EndpointSet`](crate::EndpointSet). Setting it yourself routes a request
/// whose authority is something else.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct TargetService(pub ServiceName);

/// Which service a request is for, as the request says it: its
/// [`TargetService`], else its URI's host as written. A layer looks the
/// host up as it is, and validates it only when nothing is listed under
/// it (a known service's name costs no allocation).
///
/// ```
/// use mesh_core::ext::{Destination, TargetService};
/// use mesh_core::ServiceName;
///
/// let mut req = http::Request::get("http://users/api").body(()).unwrap();
/// assert_eq!(Destination::of(&req), Some(Destination::Host("users")));
/// let orders = ServiceName::new("orders").unwrap();
/// req.extensions_mut().insert(TargetService(orders.clone()));
/// assert_eq!(Destination::of(&req), Some(Destination::Named(&orders)));
/// assert_eq!(Destination::of(&req).unwrap().as_str(), "orders");
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Destination<'a> {
    /// The request's [`TargetService`].
    Named(&'a ServiceName),
    /// The host of the request's URI, not validated.
    Host(&'a str),
}

// === impl Destination ===

impl<'a> Destination<'a> {
    /// Where `req` goes; `None` when it has neither a [`TargetService`]
    /// nor a host.
    pub fn of<B>(req: &'a http::Request<B>) -> Option<Destination<'a>> {
        match req.extensions().get::<TargetService>() {
            Some(TargetService(service)) => Some(Destination::Named(service)),
            None => host_of(req.uri()).map(Destination::Host),
        }
    }

    /// The name or host, as text.
    pub fn as_str(&self) -> &'a str {
        match self {
            Destination::Named(service) => service.as_str(),
            Destination::Host(host) => host,
        }
    }
}

/// A client key for session affinity and consistent hashing (the design
/// document's `clientId`).
///
/// ```
/// use mesh_core::ext::AffinityKey;
/// let mut req = http::Request::new(());
/// req.extensions_mut().insert(AffinityKey::new("client-123"));
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct AffinityKey(pub Arc<str>);

impl AffinityKey {
    /// A key from any string.
    pub fn new(key: impl Into<Arc<str>>) -> Self {
        AffinityKey(key.into())
    }
}

/// An endpoint a request is for, named by hand.
///
/// A health probe aimed at one endpoint carries it, so that a per-endpoint
/// breaker knows whose state to update. The balancer notes its choice in
/// the request's [`CallContext`]; only a request without one (a balancer
/// used alone) gets this instead, on the request below the balancer and on
/// the response it returns.
#[derive(Clone, Debug)]
pub struct SelectedEndpoint(pub Endpoint);

/// Which attempt this is: 1 for the first send, 2 for the first retry...
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Attempt(pub NonZeroU32);

impl Attempt {
    /// The first attempt.
    pub const FIRST: Attempt = Attempt(NonZeroU32::MIN);

    /// The attempt number, from 1.
    pub fn get(self) -> u32 {
        self.0.get()
    }

    /// The attempt after this one.
    pub fn next(self) -> Attempt {
        Attempt(self.0.saturating_add(1))
    }
}

impl Default for Attempt {
    fn default() -> Self {
        Attempt::FIRST
    }
}

/// When the request as a whole must be answered (across all attempts and
/// waits), on [`crate::clock`]. A layer that waits should not wait past it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Deadline(pub crate::clock::Nanos);

impl Deadline {
    /// The time left at `now`, zero if the deadline has passed.
    pub fn remaining(self, now: crate::clock::Nanos) -> std::time::Duration {
        self.0.saturating_since(now)
    }
}

/// Endpoints that failed earlier attempts of this request: the balancer
/// prefers any other available endpoint, and uses these only when nothing
/// else is available.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AvoidEndpoints(Vec<EndpointId>);

impl AvoidEndpoints {
    /// Adds an endpoint (once).
    pub fn insert(&mut self, id: EndpointId) {
        if !self.0.contains(&id) {
            self.0.push(id);
        }
    }

    /// Whether `id` should be avoided.
    pub fn contains(&self, id: &EndpointId) -> bool {
        self.0.contains(id)
    }

    /// Whether nothing is to be avoided.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The endpoints to avoid, in the order they failed.
    pub fn iter(&self) -> impl Iterator<Item = &EndpointId> {
        self.0.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn avoid_list_holds_each_endpoint_once() {
        let mut avoid = AvoidEndpoints::default();
        let id = EndpointId::new("a").unwrap();
        avoid.insert(id.clone());
        avoid.insert(id.clone());
        assert_eq!(avoid.iter().count(), 1);
        assert!(avoid.contains(&id));
    }

    #[test]
    fn attempts_count_from_one() {
        assert_eq!(Attempt::default().get(), 1);
        assert_eq!(Attempt::FIRST.next().get(), 2);
    }
}
