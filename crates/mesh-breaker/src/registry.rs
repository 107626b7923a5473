//! The set of circuits of one breaker layer, keyed by endpoint or service.

use std::collections::HashMap;
use std::sync::Arc;

use arc_swap::ArcSwap;
use mesh_core::{EndpointId, ServiceName};

use crate::circuit::Circuit;
use crate::config::BreakerConfig;

/// What one circuit guards.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum BreakerKey {
    /// One endpoint of a service (from the balancer's selection).
    Endpoint(ServiceName, EndpointId),
    /// A whole service.
    Service(ServiceName),
    /// A plain authority, when the breaker is used without discovery.
    Authority(http::uri::Authority),
}

/// Circuits by key. Lookups are a lock-free snapshot load; a new key copies
/// the map once (keys are endpoints, so this happens when discovery adds
/// one, not per request).
#[derive(Debug)]
pub(crate) struct Registry {
    config: BreakerConfig,
    circuits: ArcSwap<HashMap<BreakerKey, Arc<Circuit>>>,
}

impl Registry {
    pub(crate) fn new(config: BreakerConfig) -> Self {
        Registry {
            config,
            circuits: ArcSwap::from_pointee(HashMap::new()),
        }
    }

    pub(crate) fn config(&self) -> &BreakerConfig {
        &self.config
    }

    pub(crate) fn get(&self, key: &BreakerKey) -> Option<Arc<Circuit>> {
        self.circuits.load().get(key).cloned()
    }

    pub(crate) fn get_or_insert(&self, key: &BreakerKey) -> Arc<Circuit> {
        if let Some(found) = self.get(key) {
            return found;
        }
        let mut inserted = None;
        self.circuits.rcu(|circuits| {
            if let Some(found) = circuits.get(key) {
                inserted = Some(Arc::clone(found));
                return Arc::clone(circuits);
            }
            let circuit = Arc::new(Circuit::new(self.config));
            inserted = Some(Arc::clone(&circuit));
            let mut circuits = HashMap::clone(circuits);
            circuits.insert(key.clone(), circuit);
            Arc::new(circuits)
        });
        inserted.unwrap_or_else(|| Arc::new(Circuit::new(self.config)))
    }
}
