//! [`EndpointSet`]: an immutable snapshot of a service's endpoints.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use http::HeaderValue;

use crate::clock::Nanos;
use crate::endpoint::Endpoint;
use crate::name::{EndpointId, ServiceName};

/// The endpoints of one service at one moment.
///
/// A set never changes: discovery builds a new one and swaps it in whole, so
/// a request that took a snapshot keeps a consistent view for its lifetime.
/// Cloning is one reference-count increment, cheap enough to attach to
/// every request. The set also holds its service's name as a `Host` header
/// value ([`EndpointSet::host`]) that costs nothing to clone, so that the
/// balancer does not make one per request.
///
/// ```
/// use mesh_core::{Endpoint, EndpointSet, ServiceName};
/// let name = ServiceName::new("orders")?;
/// let v1 = EndpointSet::new(name.clone(), vec![Endpoint::builder("127.0.0.1:1".parse()?).build()]);
/// v1.endpoints()[0].state().start_request();
///
/// // A refreshed set from the registry: same endpoint plus a new one.
/// let fresh = EndpointSet::new(name, vec![
///     Endpoint::builder("127.0.0.1:1".parse()?).build(),
///     Endpoint::builder("127.0.0.1:2".parse()?).build(),
/// ]);
/// let v2 = fresh.reconcile(&v1);
/// // The surviving endpoint kept its live state (one request in flight).
/// assert_eq!(v2.endpoints()[0].state().in_flight(), 1);
/// assert_eq!(v2.endpoints()[1].state().in_flight(), 0);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone)]
pub struct EndpointSet {
    members: Arc<Members>,
    generation: u64,
}

/// What a set's clones share, behind one reference count (a clone per
/// request writes one count every core shares, not one per field): its
/// service, its endpoints, and the service's name as a `Host` value.
struct Members {
    service: ServiceName,
    endpoints: Box<[Endpoint]>,
    host: Option<HeaderValue>,
}

impl Members {
    fn new(service: ServiceName, endpoints: Vec<Endpoint>) -> Arc<Self> {
        Arc::new(Members {
            host: crate::name_values::host_value(&service),
            service,
            endpoints: endpoints.into_boxed_slice(),
        })
    }
}

/// Orders snapshots: every set made gets the next number.
static GENERATION: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

fn next_generation() -> u64 {
    GENERATION.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

// === impl EndpointSet ===

impl EndpointSet {
    /// A set of `endpoints` for `service`. If two endpoints share an id, the
    /// later one wins, so an id always names exactly one endpoint.
    pub fn new(service: ServiceName, endpoints: Vec<Endpoint>) -> Self {
        let mut endpoints = endpoints;
        let mut seen: HashMap<EndpointId, usize> = HashMap::with_capacity(endpoints.len());
        let mut keep = vec![true; endpoints.len()];
        for (i, ep) in endpoints.iter().enumerate() {
            if let Some(prev) = seen.insert(ep.id().clone(), i) {
                keep[prev] = false;
            }
        }
        let mut i = 0;
        endpoints.retain(|_| {
            i += 1;
            keep[i - 1]
        });
        EndpointSet {
            members: Members::new(service, endpoints),
            generation: next_generation(),
        }
    }

    /// When this snapshot was made, relative to others: a larger number is
    /// a later snapshot. Layers that cache per snapshot use it to never
    /// replace a newer snapshot's cache with an older one's.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// An empty set: the service exists but has no instances right now.
    pub fn empty(service: ServiceName) -> Self {
        EndpointSet {
            members: Members::new(service, Vec::new()),
            generation: next_generation(),
        }
    }

    /// The service these endpoints belong to.
    pub fn service(&self) -> &ServiceName {
        &self.members.service
    }

    /// The service's name as a `Host` header value (`user-service`),
    /// for requests addressed to the service by that name. Cloning it
    /// copies a pointer: its bytes are `'static`, kept once per name (for
    /// the first 4,096 names; later ones share a reference count). `None`
    /// only for a name no header could carry, which a validated
    /// [`ServiceName`] never is.
    pub fn host(&self) -> Option<&HeaderValue> {
        self.members.host.as_ref()
    }

    /// All endpoints, available or not, in a stable order.
    pub fn endpoints(&self) -> &[Endpoint] {
        &self.members.endpoints
    }

    /// Iterates over all endpoints.
    pub fn iter(&self) -> std::slice::Iter<'_, Endpoint> {
        self.members.endpoints.iter()
    }

    /// The number of endpoints, available or not.
    pub fn len(&self) -> usize {
        self.members.endpoints.len()
    }

    /// Whether the set has no endpoint at all.
    pub fn is_empty(&self) -> bool {
        self.members.endpoints.is_empty()
    }

    /// The endpoint with this id.
    pub fn get(&self, id: &EndpointId) -> Option<&Endpoint> {
        self.members.endpoints.iter().find(|e| e.id() == id)
    }

    /// The endpoints that may receive a new request at `now` (healthy or
    /// unchecked, and not ejected).
    pub fn available(&self, now: Nanos) -> impl Iterator<Item = &Endpoint> + '_ {
        self.members
            .endpoints
            .iter()
            .filter(move |e| e.state().is_available(now))
    }

    /// The position in this set of `endpoint`, if it is one of this set's
    /// own (the value [`EndpointSet::endpoints`] holds, not an equal
    /// one), found from its address without a scan.
    ///
    /// ```
    /// use mesh_core::{Endpoint, EndpointSet, ServiceName};
    /// let at = |port| Endpoint::builder(([127, 0, 0, 1], port).into()).build();
    /// let set = EndpointSet::new(ServiceName::new("orders")?, vec![at(1), at(2)]);
    /// assert_eq!(set.position_of(&set.endpoints()[1]), Some(1));
    /// assert_eq!(set.position_of(&at(2)), None, "equal, not the set's own");
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn position_of(&self, endpoint: &Endpoint) -> Option<usize> {
        const SIZE: usize = std::mem::size_of::<Endpoint>();
        const _: () = assert!(SIZE != 0, "an endpoint holds two pointers");
        let start = self.members.endpoints.as_ptr().addr();
        let offset = std::ptr::from_ref(endpoint).addr().checked_sub(start)?;
        let at = offset / SIZE;
        (offset % SIZE == 0 && at < self.len()).then_some(at)
    }

    /// Whether two sets are the same snapshot (pointer equality).
    pub fn ptr_eq(&self, other: &EndpointSet) -> bool {
        Arc::ptr_eq(&self.members, &other.members)
    }

    /// This set, with every endpoint that `previous` also had (same id and
    /// address) carrying `previous`'s live state, so in-flight counts, latency,
    /// health and ejections survive a refresh from the registry.
    pub fn reconcile(&self, previous: &EndpointSet) -> EndpointSet {
        if previous.is_empty() {
            return self.clone();
        }
        let by_id = previous.by_id();
        let endpoints: Vec<Endpoint> = self
            .iter()
            .map(|e| match by_id.get(e.id()) {
                // Same id at a new address is a new instance (a rescheduled
                // pod keeps its name): it starts with fresh state.
                Some(old) if old.address() == e.address() => e.with_state(Arc::clone(old.state())),
                _ => e.clone(),
            })
            .collect();
        EndpointSet {
            // The endpoints are new; the name and `Host` value are the
            // service's.
            members: Arc::new(Members {
                service: self.members.service.clone(),
                endpoints: endpoints.into_boxed_slice(),
                host: self.members.host.clone(),
            }),
            generation: next_generation(),
        }
    }

    /// Whether both sets describe the same endpoints (ids, addresses,
    /// weights, tags, metadata, zones), in any order, ignoring live state.
    /// Discovery uses it to skip updates that change nothing.
    pub fn same_endpoints(&self, other: &EndpointSet) -> bool {
        if self.len() != other.len() {
            return false;
        }
        let others = other.by_id();
        self.iter()
            .all(|e| others.get(e.id()).is_some_and(|o| o.same_description(e)))
    }

    /// The endpoints indexed by id, for comparisons that would otherwise
    /// scan the set once per endpoint.
    pub fn by_id(&self) -> HashMap<&EndpointId, &Endpoint> {
        self.iter().map(|e| (e.id(), e)).collect()
    }
}

impl fmt::Debug for EndpointSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EndpointSet")
            .field("service", &self.members.service)
            .field("endpoints", &self.members.endpoints)
            .finish()
    }
}

impl<'a> IntoIterator for &'a EndpointSet {
    type Item = &'a Endpoint;
    type IntoIter = std::slice::Iter<'a, Endpoint>;
    fn into_iter(self) -> Self::IntoIter {
        self.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::Health;

    fn ep(port: u16) -> Endpoint {
        Endpoint::builder(([127, 0, 0, 1], port).into()).build()
    }

    fn name() -> ServiceName {
        ServiceName::new("svc").unwrap()
    }

    #[test]
    fn an_endpoint_is_found_at_its_position_in_its_own_set_only() {
        let set = EndpointSet::new(name(), vec![ep(1), ep(2), ep(3)]);
        for (at, endpoint) in set.iter().enumerate() {
            assert_eq!(set.position_of(endpoint), Some(at));
        }
        let equal = ep(2);
        assert_eq!(set.position_of(&equal), None, "an equal copy");
        let other = EndpointSet::new(name(), vec![ep(1), ep(2), ep(3)]);
        assert_eq!(set.position_of(&other.endpoints()[1]), None);
        assert_eq!(
            EndpointSet::empty(name()).position_of(&set.endpoints()[0]),
            None
        );
    }

    #[test]
    fn duplicate_ids_keep_the_last() {
        let first = ep(1);
        let second = Endpoint::builder(([127, 0, 0, 1], 1).into())
            .tag("later")
            .build();
        let set = EndpointSet::new(name(), vec![first, ep(2), second]);
        assert_eq!(set.len(), 2);
        assert!(set.endpoints()[1].has_tag("later"));
    }

    #[test]
    fn available_skips_unhealthy_and_ejected() {
        let set = EndpointSet::new(name(), vec![ep(1), ep(2), ep(3)]);
        set.endpoints()[0].state().set_health(Health::Unhealthy);
        set.endpoints()[1].state().eject_until(Nanos(50));
        let ports: Vec<u16> = set
            .available(Nanos(10))
            .map(|e| e.address().port())
            .collect();
        assert_eq!(ports, vec![3]);
        let ports: Vec<u16> = set
            .available(Nanos(60))
            .map(|e| e.address().port())
            .collect();
        assert_eq!(ports, vec![2, 3]);
    }

    #[test]
    fn a_reused_id_at_a_new_address_starts_fresh() {
        let id = EndpointId::new("pod-a").unwrap();
        let old = Endpoint::builder(([10, 0, 0, 1], 80).into())
            .id(id.clone())
            .build();
        old.state().set_health(Health::Unhealthy);
        let previous = EndpointSet::new(name(), vec![old]);
        let moved = Endpoint::builder(([10, 0, 0, 2], 80).into())
            .id(id.clone())
            .build();
        let stayed = Endpoint::builder(([10, 0, 0, 1], 80).into()).id(id).build();
        let fresh = EndpointSet::new(name(), vec![moved]).reconcile(&previous);
        assert_eq!(fresh.endpoints()[0].state().health(), Health::Unknown);
        let kept = EndpointSet::new(name(), vec![stayed]).reconcile(&previous);
        assert_eq!(kept.endpoints()[0].state().health(), Health::Unhealthy);
    }

    #[test]
    fn the_host_value_is_the_service_name_and_survives_a_refresh() {
        let name = ServiceName::new("Orders").unwrap();
        let old = EndpointSet::new(name.clone(), vec![ep(1)]);
        assert_eq!(old.host().map(HeaderValue::as_bytes), Some(&b"orders"[..]));
        let fresh = EndpointSet::new(name.clone(), vec![ep(1), ep(2)]).reconcile(&old);
        assert_eq!(fresh.host(), old.host());
        assert_eq!(EndpointSet::empty(name).host(), old.host());
    }

    #[test]
    fn same_endpoints_ignores_order_and_state() {
        let a = EndpointSet::new(name(), vec![ep(1), ep(2)]);
        a.endpoints()[0].state().start_request();
        a.endpoints()[1].state().set_health(Health::Unhealthy);
        let b = EndpointSet::new(name(), vec![ep(2), ep(1)]);
        assert!(a.same_endpoints(&b));
        let c = EndpointSet::new(name(), vec![ep(2), ep(3)]);
        assert!(!a.same_endpoints(&c));
    }
}
