//! What the client keeps per destination service (its call limits, its
//! upstream health checker), bounded although request hosts are user
//! input.
//!
//! A service gets its state on its first call, before discovery has said
//! whether it exists, so that no call escapes a limit. A call that finds
//! the service unknown removes the state it created, and a full map first
//! drops the states of services that neither the configuration nor
//! discovery knows any more; a map still full refuses the call rather than
//! let it through unlimited.

use hashbrown::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use arc_swap::ArcSwap;
use http::uri::Authority;
use mesh_core::{MeshError, ServiceName};
use mesh_health::UpstreamHealthChecker;

use crate::limits::Limits;

/// The most services a client keeps state for at once.
pub(crate) const MAX_SERVICES: usize = 1024;

/// One service's state, shared by every call to it.
#[derive(Debug)]
pub(crate) struct ServiceState {
    /// The service, as the map knows it: a call borrows its name from
    /// here instead of copying it.
    pub(crate) name: ServiceName,
    /// Its name as a URI authority, made once: a call's URI takes a
    /// clone instead of parsing its name again (over `'static` text for
    /// most services, so the clone, the retry layer's copy of the URI
    /// included, writes no shared count).
    pub(crate) authority: Option<Authority>,
    /// Its rate and concurrency limits, if any apply.
    pub(crate) limits: Option<Limits>,
    /// The whole-call deadline of its route, when its limits may make a
    /// call wait: the wait counts against it.
    pub(crate) queue_deadline: Option<std::time::Duration>,
    /// How much of a streamed request body is kept so a retry can send
    /// it again (`replay_buffer`).
    pub(crate) replay_buffer: usize,
    /// What answers its failed calls, if anything does.
    pub(crate) fallback: Option<crate::fallback::Fallback>,
    /// Its upstream health checker, started once discovery knows the
    /// service (`None` inside when none is configured); stops when
    /// dropped.
    pub(crate) checker: OnceLock<Option<UpstreamHealthChecker>>,
}

// === impl ServiceState ===

impl ServiceState {
    /// `name`'s state with no limits, fallback or checker.
    pub(crate) fn new(name: ServiceName) -> ServiceState {
        ServiceState {
            authority: name.authority(),
            name,
            limits: None,
            queue_deadline: None,
            replay_buffer: 0,
            fallback: None,
            checker: OnceLock::new(),
        }
    }
}

/// Every service's state: read without a lock on each call, written on a
/// service's first call.
#[derive(Debug, Default)]
pub(crate) struct ServiceStates {
    map: ArcSwap<HashMap<ServiceName, Arc<ServiceState>>>,
    /// Serializes inserts and removals.
    writing: Mutex<()>,
}

// === impl ServiceStates ===

impl ServiceStates {
    /// `service`'s state, made by `make` on its first call. When the map
    /// is full, states of services `still_known` refuses are dropped
    /// first; a map still full refuses the call.
    pub(crate) fn get_or_insert(
        &self,
        service: &ServiceName,
        still_known: impl Fn(&ServiceName) -> bool,
        make: impl FnOnce() -> ServiceState,
    ) -> Result<Arc<ServiceState>, MeshError> {
        if let Some(state) = self.map.load().get(service) {
            return Ok(Arc::clone(state));
        }
        let _writing = self.writing.lock().unwrap_or_else(|e| e.into_inner());
        let current = self.map.load_full();
        if let Some(state) = current.get(service) {
            return Ok(Arc::clone(state));
        }
        let mut map = HashMap::clone(&current);
        if map.len() >= MAX_SERVICES {
            // A state a call still holds stays: its limits are in force.
            map.retain(|name, state| still_known(name) || Arc::strong_count(state) > 1);
        }
        if map.len() >= MAX_SERVICES {
            return Err(MeshError::LimitExceeded {
                service: service.clone(),
                limit: format!(
                    "state for {MAX_SERVICES} services, every one of them known or in use"
                ),
            });
        }
        let state = Arc::new(make());
        map.insert(service.clone(), Arc::clone(&state));
        self.map.store(Arc::new(map));
        Ok(state)
    }

    /// The state of the service named exactly `name` (normalized
    /// already), if it has one: one lookup for a call's name and state.
    pub(crate) fn find(&self, name: &str) -> Option<Arc<ServiceState>> {
        self.map.load().get(name).cloned()
    }

    /// The name of a service with a state whose name is exactly `name`
    /// (normalized already): shared with the map, so that a call to a
    /// known service names it without allocating. `None` for a service
    /// not seen yet or a name that needs normalizing.
    pub(crate) fn name_of(&self, name: &str) -> Option<ServiceName> {
        let map = self.map.load();
        map.get_key_value(name).map(|(key, _)| key.clone())
    }

    /// Drops `service`'s state: a call found that no registry lists it.
    pub(crate) fn remove(&self, service: &ServiceName) {
        let _writing = self.writing.lock().unwrap_or_else(|e| e.into_inner());
        let current = self.map.load_full();
        if current.contains_key(service) {
            let mut map = HashMap::clone(&current);
            map.remove(service);
            self.map.store(Arc::new(map));
        }
    }

    /// Drops every state (stopping the upstream checkers).
    pub(crate) fn clear(&self) {
        self.map.store(Arc::default());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_known_service_is_named_by_its_shared_name_and_only_by_its_exact_name() {
        let states = ServiceStates::default();
        let users = ServiceName::new("users").expect("name");
        states
            .get_or_insert(&users, |_| true, || ServiceState::new(users.clone()))
            .expect("state");
        let named = states.name_of("users").expect("known");
        assert!(
            std::ptr::eq(named.as_str(), users.as_str()),
            "the map's name, not a new one"
        );
        assert_eq!(
            states.name_of("USERS"),
            None,
            "not normalized: validated anew"
        );
        assert_eq!(states.name_of("orders"), None);
        let found = states.find("users").expect("known");
        assert_eq!(found.name, users);
        assert!(states.find("USERS").is_none());
        states.remove(&users);
        assert_eq!(states.name_of("users"), None);
    }
}
