//! [`Catalog`]: the cache of endpoint sets that requests resolve against.

use hashbrown::HashMap;
use std::fmt;
use std::sync::Arc;

use arc_swap::ArcSwap;
use mesh_core::{EndpointSet, EventBus, MeshEvent, ServiceName};

type Services = HashMap<ServiceName, EndpointSet>;

/// The endpoint sets of every known service, shared by all clones.
///
/// The map lives behind an [`ArcSwap`]: a request's lookup is a snapshot
/// load plus a hash lookup, with no lock and no waiting on writers.
/// Registries publish with [`Catalog::update`], which copies the map (it is
/// small and changes rarely) and swaps it in whole.
#[derive(Clone)]
pub struct Catalog {
    services: Arc<ArcSwap<Services>>,
    events: EventBus,
}

// === impl Catalog ===

impl Catalog {
    /// An empty catalog that publishes changes on `events`.
    pub fn new(events: EventBus) -> Self {
        Catalog {
            services: Arc::new(ArcSwap::from_pointee(HashMap::new())),
            events,
        }
    }

    /// The current endpoints of `service`, if any registry knows it.
    ///
    /// `service` is matched case-insensitively, as hosts are.
    pub fn get(&self, service: &str) -> Option<EndpointSet> {
        let services = self.services.load();
        if service.bytes().any(|b| b.is_ascii_uppercase()) {
            services.get(service.to_ascii_lowercase().as_str()).cloned()
        } else {
            services.get(service).cloned()
        }
    }

    /// The names of all known services, sorted.
    pub fn services(&self) -> Vec<ServiceName> {
        let mut names: Vec<ServiceName> = self.services.load().keys().cloned().collect();
        names.sort();
        names
    }

    /// Publishes a new set for its service.
    ///
    /// Endpoints that were already known keep their live state (in-flight
    /// count, latency, health, ejection). An update that changes nothing is
    /// dropped, so a registry may publish every poll without churn. Returns
    /// whether the catalog changed.
    pub fn update(&self, set: EndpointSet) -> bool {
        let service = set.service().clone();
        let mut changed = None;
        self.services.rcu(|services| {
            let previous = services.get(&service);
            if previous.is_some_and(|p| p.same_endpoints(&set)) {
                changed = None;
                return Arc::clone(services);
            }
            let next = match previous {
                Some(p) => set.reconcile(p),
                None => set.clone(),
            };
            changed = Some(diff(previous, &next));
            let mut services = Services::clone(services);
            services.insert(service.clone(), next);
            Arc::new(services)
        });
        match changed {
            Some((added, removed, total)) => {
                tracing::info!(%service, total, added, removed, "endpoints changed");
                self.events.publish(MeshEvent::EndpointsChanged {
                    service,
                    total,
                    added,
                    removed,
                });
                true
            }
            None => false,
        }
    }

    /// Forgets a service; requests for it fail as unknown afterwards.
    /// Returns whether it was known.
    pub fn remove(&self, service: &ServiceName) -> bool {
        let mut removed = false;
        self.services.rcu(|services| {
            removed = services.contains_key(service);
            if !removed {
                return Arc::clone(services);
            }
            let mut services = Services::clone(services);
            services.remove(service);
            Arc::new(services)
        });
        removed
    }

    /// The bus this catalog publishes [`MeshEvent::EndpointsChanged`] on.
    pub fn events(&self) -> &EventBus {
        &self.events
    }
}

impl Default for Catalog {
    fn default() -> Self {
        Catalog::new(EventBus::default())
    }
}

impl fmt::Debug for Catalog {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Catalog")
            .field("services", &self.services())
            .finish()
    }
}

/// (added, removed, total) between two sets, by endpoint id.
fn diff(previous: Option<&EndpointSet>, next: &EndpointSet) -> (usize, usize, usize) {
    let total = next.len();
    let Some(previous) = previous else {
        return (total, 0, total);
    };
    let (before, after) = (previous.by_id(), next.by_id());
    let added = after.keys().filter(|id| !before.contains_key(*id)).count();
    let removed = before.keys().filter(|id| !after.contains_key(*id)).count();
    (added, removed, total)
}

#[cfg(test)]
mod tests {
    use super::*;
    use mesh_core::Endpoint;

    fn set(ports: &[u16]) -> EndpointSet {
        EndpointSet::new(
            ServiceName::new("orders").unwrap(),
            ports
                .iter()
                .map(|p| Endpoint::builder(([127, 0, 0, 1], *p).into()).build())
                .collect(),
        )
    }

    #[tokio::test]
    async fn updates_keep_live_state_and_report_the_difference() {
        let bus = EventBus::new(8);
        let mut events = bus.subscribe();
        let catalog = Catalog::new(bus);
        assert!(catalog.update(set(&[1, 2])));
        catalog.get("orders").unwrap().endpoints()[0]
            .state()
            .start_request();

        assert!(!catalog.update(set(&[2, 1])), "same endpoints: no change");
        assert!(catalog.update(set(&[1, 3])));
        let now = catalog.get("ORDERS").unwrap();
        assert_eq!(now.endpoints()[0].state().in_flight(), 1);

        let first = events.recv().await.unwrap();
        assert!(matches!(
            first,
            MeshEvent::EndpointsChanged {
                added: 2,
                removed: 0,
                total: 2,
                ..
            }
        ));
        let second = events.recv().await.unwrap();
        assert!(matches!(
            second,
            MeshEvent::EndpointsChanged {
                added: 1,
                removed: 1,
                total: 2,
                ..
            }
        ));
        assert!(
            events.try_recv().is_err(),
            "the no-op update published nothing"
        );
    }

    #[test]
    fn removal_forgets_the_service() {
        let catalog = Catalog::default();
        catalog.update(set(&[1]));
        let name = ServiceName::new("orders").unwrap();
        assert_eq!(catalog.services(), vec![name.clone()]);
        assert!(catalog.remove(&name));
        assert!(catalog.get("orders").is_none());
        assert!(!catalog.remove(&name));
    }
}
