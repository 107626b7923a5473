//! The breakers of one layer, by key: bounded, with idle ones evicted.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use mesh_core::clock::Nanos;
use mesh_core::{CircuitState, Endpoint, EndpointId, ServiceName};

use crate::circuit::Circuit;
use crate::config::BreakerConfig;

/// What one breaker guards.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum BreakerKey {
    /// One endpoint of a service (scope [`crate::BreakerScope::Endpoint`]).
    Endpoint(ServiceName, EndpointId),
    /// A whole service (scope [`crate::BreakerScope::Service`]).
    Service(ServiceName),
    /// A plain authority, when the breaker is used without discovery.
    Authority(http::uri::Authority),
    /// A key of the user's (see [`crate::BreakerLayer::key_by`]).
    Custom(Arc<str>),
}

/// One breaker and what events and ejection need to know about it.
#[derive(Debug)]
pub(crate) struct Entry {
    pub(crate) circuit: Circuit,
    pub(crate) service: Option<ServiceName>,
    pub(crate) endpoint: Option<Endpoint>,
    /// Used since the last sweep. Set with a load-then-store so that a
    /// breaker in steady use never writes the shared cache line.
    touched: AtomicBool,
}

impl Entry {
    fn is_evictable(self: &Arc<Self>, idle_only: bool) -> bool {
        // Never evict a breaker that is protecting anyone (open, probing,
        // held by an operator) or that a call in flight still uses.
        let quiet = matches!(
            self.circuit.state(),
            CircuitState::Closed | CircuitState::MetricsOnly | CircuitState::Disabled
        ) && Arc::strong_count(self) <= 2; // the published map and the copy being edited
        quiet && (!idle_only || !self.touched.load(Ordering::Relaxed))
    }
}

/// Breakers by key. Lookups are a lock-free snapshot load; a new key takes
/// a mutex and copies the map (keys are services or endpoints, so this
/// happens when one appears, not per request). The map never holds more
/// than `max_breakers`: inserting sweeps out breakers idle for a whole
/// `idle_timeout`, then, if still full, any quiet one; if every breaker is
/// busy protecting something, the new key goes unguarded rather than
/// evicting protection.
#[derive(Debug)]
pub(crate) struct Registry {
    config: BreakerConfig,
    map: ArcSwap<HashMap<BreakerKey, Arc<Entry>>>,
    last_sweep: AtomicU64,
    inserting: Mutex<()>,
}

impl Registry {
    pub(crate) fn new(config: BreakerConfig) -> Self {
        Registry {
            config,
            map: ArcSwap::from_pointee(HashMap::new()),
            last_sweep: AtomicU64::new(0),
            inserting: Mutex::new(()),
        }
    }

    pub(crate) fn config(&self) -> &BreakerConfig {
        &self.config
    }

    pub(crate) fn get(&self, key: &BreakerKey) -> Option<Arc<Entry>> {
        self.map.load().get(key).cloned()
    }

    pub(crate) fn len(&self) -> usize {
        self.map.load().len()
    }

    pub(crate) fn keys(&self) -> Vec<BreakerKey> {
        self.map.load().keys().cloned().collect()
    }

    /// The breaker for `key`, created if new; `None` if the registry is
    /// full of breakers that may not be evicted.
    pub(crate) fn get_or_insert(
        &self,
        key: &BreakerKey,
        service: Option<&ServiceName>,
        endpoint: Option<&Endpoint>,
        clock: impl Fn() -> Nanos,
    ) -> Option<Arc<Entry>> {
        if let Some(entry) = self.map.load().get(key) {
            if !entry.touched.load(Ordering::Relaxed) {
                entry.touched.store(true, Ordering::Relaxed);
            }
            return Some(Arc::clone(entry));
        }
        let _inserting = self.inserting.lock().unwrap_or_else(|e| e.into_inner());
        let current = self.map.load_full();
        if let Some(entry) = current.get(key) {
            return Some(Arc::clone(entry));
        }
        let mut map = HashMap::clone(&current);
        drop(current);
        let now = clock();
        let idle = self.config.idle_timeout();
        let last = Nanos(self.last_sweep.load(Ordering::Relaxed));
        let full = map.len() >= self.config.max_breakers() as usize;
        if full || now.saturating_since(last) >= idle {
            map.retain(|_, e| !e.is_evictable(true));
            for e in map.values() {
                e.touched.store(false, Ordering::Relaxed);
            }
            self.last_sweep.store(now.0, Ordering::Relaxed);
        }
        if map.len() >= self.config.max_breakers() as usize {
            let quiet: Vec<BreakerKey> = map
                .iter()
                .filter(|(_, e)| e.is_evictable(false))
                .map(|(k, _)| k.clone())
                .take(map.len() + 1 - self.config.max_breakers() as usize)
                .collect();
            for k in quiet {
                map.remove(&k);
            }
        }
        if map.len() >= self.config.max_breakers() as usize {
            tracing::warn!(
                ?key,
                max = self.config.max_breakers(),
                "breaker registry full of busy breakers; call goes unguarded"
            );
            self.map.store(Arc::new(map));
            return None;
        }
        // A breaker keyed by a plain authority still names its host in
        // events and errors, when the host is a valid service name.
        let service = service.cloned().or_else(|| match key {
            BreakerKey::Authority(a) => ServiceName::new(a.host()).ok(),
            _ => None,
        });
        let entry = Arc::new(Entry {
            circuit: Circuit::new(self.config.clone()),
            service,
            endpoint: endpoint.cloned(),
            touched: AtomicBool::new(true),
        });
        map.insert(key.clone(), Arc::clone(&entry));
        self.map.store(Arc::new(map));
        Some(entry)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mesh_core::{FailureKind, Outcome};
    use std::time::Duration;

    fn key(n: usize) -> BreakerKey {
        BreakerKey::Custom(Arc::from(format!("k{n}")))
    }

    fn registry(max: u32) -> Registry {
        Registry::new(
            BreakerConfig::builder()
                .consecutive_failures(1)
                .max_breakers(max)
                .idle_timeout(Duration::from_secs(60))
                .build()
                .unwrap(),
        )
    }

    const S: u64 = 1_000_000_000;

    #[test]
    fn stays_within_its_bound_and_keeps_open_breakers() {
        let r = registry(3);
        let open = r.get_or_insert(&key(0), None, None, || Nanos(0)).unwrap();
        let a = open.circuit.acquire(Nanos(0)).unwrap();
        open.circuit.record(
            a.permit,
            Outcome::Failure(FailureKind::Other),
            Duration::ZERO,
            Nanos(0),
        );
        drop(open);
        for n in 1..10 {
            assert!(r.get_or_insert(&key(n), None, None, || Nanos(S)).is_some());
            assert!(r.len() <= 3);
        }
        assert!(
            r.get(&key(0)).is_some(),
            "the open breaker was never evicted"
        );
    }

    #[test]
    fn evicts_breakers_idle_for_a_whole_timeout_first() {
        let r = registry(100);
        r.get_or_insert(&key(1), None, None, || Nanos(0));
        r.get_or_insert(&key(2), None, None, || Nanos(0));
        // 61 s later: a sweep clears the "used" marks; key 2 is used again.
        r.get_or_insert(&key(3), None, None, || Nanos(61 * S));
        r.get_or_insert(&key(2), None, None, || Nanos(62 * S));
        // 122 s: key 1 has not been used for a whole sweep period.
        r.get_or_insert(&key(4), None, None, || Nanos(122 * S));
        assert!(r.get(&key(1)).is_none(), "idle: evicted");
        assert!(r.get(&key(2)).is_some(), "used since the last sweep: kept");
    }

    #[test]
    fn a_registry_full_of_busy_breakers_leaves_new_keys_unguarded() {
        let r = registry(1);
        let held = r.get_or_insert(&key(0), None, None, || Nanos(0)).unwrap();
        assert!(r.get_or_insert(&key(1), None, None, || Nanos(0)).is_none());
        drop(held);
        assert!(r.get_or_insert(&key(1), None, None, || Nanos(0)).is_some());
    }
}
