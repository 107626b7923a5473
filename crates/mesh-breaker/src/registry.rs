//! The breakers of one layer, by key: bounded, with idle ones evicted.

use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use hashbrown::{Equivalent, HashMap};
use mesh_core::clock::Nanos;
use mesh_core::{Endpoint, EndpointId, EventBus, FailureClassifier, ServiceName};

use crate::circuit::Circuit;
use crate::config::BreakerConfig;
use crate::timer::Timer;

/// What one breaker guards.
///
/// Keys compare as written: an authority `API` and an authority `api` are
/// two breakers (service names are lower case already). An authority
/// compares, and shows in `Debug`, by its host and port alone.
#[derive(Clone)]
pub enum BreakerKey {
    /// One endpoint of a service (scope [`crate::BreakerScope::Endpoint`]).
    Endpoint(ServiceName, EndpointId),
    /// A whole service (scope [`crate::BreakerScope::Service`]).
    Service(ServiceName),
    /// A plain authority, when the breaker is used without discovery: its
    /// host and port key it (userinfo, a password, keys no breaker of its
    /// own and shows nowhere).
    Authority(http::uri::Authority),
    /// A key of the user's (see [`crate::BreakerLayer::key_by`]).
    Custom(Arc<str>),
}

impl BreakerKey {
    /// (kind, first part, second part): what keys hash and compare by.
    fn parts(&self) -> (u8, &str, &str) {
        match self {
            BreakerKey::Endpoint(s, e) => (0, s.as_str(), e.as_str()),
            BreakerKey::Service(s) => (1, s.as_str(), ""),
            BreakerKey::Authority(a) => (2, host_and_port(a), ""),
            BreakerKey::Custom(k) => (3, k, ""),
        }
    }
}

impl std::fmt::Debug for BreakerKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        KeyRef::of(self).fmt(f)
    }
}

/// An authority's host and port: what follows its userinfo, if any.
fn host_and_port(authority: &http::uri::Authority) -> &str {
    let text = authority.as_str();
    text.rsplit_once('@').map_or(text, |(_, host)| host)
}

/// Whether two key parts are equal. Parts usually share their buffer
/// (every request for a service carries the same `Arc<str>`), so pointer
/// equality answers first; short keys are then compared inline rather than
/// through a `memcmp` call, which costs more than the rest of a lookup.
fn same_part(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && (std::ptr::eq(a.as_ptr(), b.as_ptr()) || a.bytes().zip(b.bytes()).all(|(x, y)| x == y))
}

fn same_parts(a: (u8, &str, &str), b: (u8, &str, &str)) -> bool {
    a.0 == b.0 && same_part(a.1, b.1) && same_part(a.2, b.2)
}

impl PartialEq for BreakerKey {
    fn eq(&self, other: &Self) -> bool {
        same_parts(self.parts(), other.parts())
    }
}

impl Eq for BreakerKey {}

impl Hash for BreakerKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.parts().hash(state);
    }
}

/// A [`BreakerKey`] borrowed from a request, so that looking a breaker up
/// clones nothing and counts no reference.
#[derive(Clone, Copy)]
pub(crate) enum KeyRef<'a> {
    Endpoint(&'a ServiceName, &'a EndpointId),
    Service(&'a ServiceName),
    Authority(&'a http::uri::Authority),
    Custom(&'a str),
}

impl std::fmt::Debug for KeyRef<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KeyRef::Endpoint(s, e) => f.debug_tuple("Endpoint").field(s).field(e).finish(),
            KeyRef::Service(s) => f.debug_tuple("Service").field(s).finish(),
            KeyRef::Authority(a) => f.debug_tuple("Authority").field(&host_and_port(a)).finish(),
            KeyRef::Custom(k) => f.debug_tuple("Custom").field(k).finish(),
        }
    }
}

impl<'a> KeyRef<'a> {
    fn parts(self) -> (u8, &'a str, &'a str) {
        match self {
            KeyRef::Endpoint(s, e) => (0, s.as_str(), e.as_str()),
            KeyRef::Service(s) => (1, s.as_str(), ""),
            KeyRef::Authority(a) => (2, host_and_port(a), ""),
            KeyRef::Custom(k) => (3, k, ""),
        }
    }

    pub(crate) fn to_owned_key(self) -> BreakerKey {
        match self {
            KeyRef::Endpoint(s, e) => BreakerKey::Endpoint(s.clone(), e.clone()),
            KeyRef::Service(s) => BreakerKey::Service(s.clone()),
            // Kept as host and port: a kept key is listed (`metrics`,
            // `keys`) and shown. A host and port that is no authority by
            // itself (`[x@y]`, brackets around an '@') is kept as written:
            // it compares by the same parts.
            KeyRef::Authority(a) => BreakerKey::Authority(
                http::uri::Authority::try_from(host_and_port(a)).unwrap_or_else(|_| a.clone()),
            ),
            KeyRef::Custom(k) => BreakerKey::Custom(Arc::from(k)),
        }
    }

    pub(crate) fn of(key: &'a BreakerKey) -> KeyRef<'a> {
        match key {
            BreakerKey::Endpoint(s, e) => KeyRef::Endpoint(s, e),
            BreakerKey::Service(s) => KeyRef::Service(s),
            BreakerKey::Authority(a) => KeyRef::Authority(a),
            BreakerKey::Custom(k) => KeyRef::Custom(k),
        }
    }
}

impl Hash for KeyRef<'_> {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.parts().hash(state);
    }
}

impl Equivalent<BreakerKey> for KeyRef<'_> {
    fn equivalent(&self, key: &BreakerKey) -> bool {
        same_parts(self.parts(), key.parts())
    }
}

/// What every breaker of a layer shares: how to judge outcomes and where
/// to report.
#[derive(Debug)]
pub(crate) struct Outcomes {
    pub(crate) classifier: FailureClassifier,
    pub(crate) events: EventBus,
    /// Whether calls must be timed: only a slow-call rule needs it.
    pub(crate) times_calls: bool,
    /// Taken by a per-endpoint breaker about to open under the ejection
    /// cap, to count its peers and eject its endpoint as one step.
    pub(crate) ejections: Mutex<()>,
}

/// One breaker and what events and ejection need to know about it.
#[derive(Debug)]
pub(crate) struct Entry {
    pub(crate) circuit: Circuit,
    pub(crate) outcomes: Arc<Outcomes>,
    pub(crate) service: Option<ServiceName>,
    /// The endpoint of a per-endpoint breaker, from the first call that
    /// named it (a handle made before any call learns it then).
    pub(crate) endpoint: std::sync::OnceLock<Endpoint>,
    /// Used since the last sweep. Set with a load-then-store so that a
    /// breaker in steady use never writes the shared cache line.
    touched: AtomicBool,
    /// The task applying its deadlines, if one is pending.
    pub(crate) timer: Timer,
}

impl Entry {
    fn is_evictable(self: &Arc<Self>, now: Nanos, idle_only: bool) -> bool {
        // Never evict a breaker that is protecting anyone (open or probing
        // and not yet due, held by an operator) or that a call in flight or
        // a handle still uses. An open breaker whose endpoint never came
        // back is settled once its deadline passes, so it does not leak.
        let quiet = self.circuit.is_settled(now) && Arc::strong_count(self) <= 2; // the published map and the copy being edited
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
    outcomes: Arc<Outcomes>,
    map: ArcSwap<HashMap<BreakerKey, Arc<Entry>>>,
    last_sweep: AtomicU64,
    inserting: Mutex<()>,
}

impl Registry {
    pub(crate) fn new(config: BreakerConfig, outcomes: Outcomes) -> Self {
        Registry {
            config,
            outcomes: Arc::new(outcomes),
            map: ArcSwap::from_pointee(HashMap::new()),
            last_sweep: AtomicU64::new(0),
            inserting: Mutex::new(()),
        }
    }

    pub(crate) fn config(&self) -> &BreakerConfig {
        &self.config
    }

    pub(crate) fn outcomes(&self) -> &Outcomes {
        &self.outcomes
    }

    pub(crate) fn get(&self, key: &BreakerKey) -> Option<Arc<Entry>> {
        self.map.load().get(&KeyRef::of(key)).cloned()
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
        key: KeyRef<'_>,
        service: Option<&ServiceName>,
        endpoint: Option<&Endpoint>,
        clock: impl Fn() -> Nanos,
    ) -> Option<Arc<Entry>> {
        if let Some(entry) = self.map.load().get(&key) {
            if !entry.touched.load(Ordering::Relaxed) {
                entry.touched.store(true, Ordering::Relaxed);
            }
            return Some(Arc::clone(entry));
        }
        self.insert(key, service, endpoint, clock)
    }

    #[cold]
    fn insert(
        &self,
        key: KeyRef<'_>,
        service: Option<&ServiceName>,
        endpoint: Option<&Endpoint>,
        clock: impl Fn() -> Nanos,
    ) -> Option<Arc<Entry>> {
        let _inserting = self.inserting.lock().unwrap_or_else(|e| e.into_inner());
        let current = self.map.load_full();
        if let Some(entry) = current.get(&key) {
            return Some(Arc::clone(entry));
        }
        let key = key.to_owned_key();
        let key = &key;
        let mut map = HashMap::clone(&current);
        drop(current);
        let now = clock();
        let idle = self.config.idle_timeout();
        let last = Nanos(self.last_sweep.load(Ordering::Relaxed));
        if now.saturating_since(last) >= idle {
            // Once per idle period: forget breakers unused since the last
            // sweep, and start a new period of marks.
            map.retain(|_, e| !e.is_evictable(now, true));
            for e in map.values() {
                e.touched.store(false, Ordering::Relaxed);
            }
            self.last_sweep.store(now.0, Ordering::Relaxed);
        }
        let max = self.config.max_breakers() as usize;
        if map.len() >= max {
            // Full: make just enough room, unused breakers first.
            let mut quiet: Vec<(bool, BreakerKey)> = map
                .iter()
                .filter(|(_, e)| e.is_evictable(now, false))
                .map(|(k, e)| (e.touched.load(Ordering::Relaxed), k.clone()))
                .collect();
            quiet.sort_by_key(|(touched, _)| *touched);
            for (_, k) in quiet.into_iter().take(map.len() + 1 - max) {
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
            outcomes: Arc::clone(&self.outcomes),
            service,
            endpoint: endpoint
                .cloned()
                .map(std::sync::OnceLock::from)
                .unwrap_or_default(),
            touched: AtomicBool::new(true),
            timer: Timer::default(),
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
            Outcomes {
                classifier: FailureClassifier::default(),
                events: EventBus::default(),
                times_calls: false,
                ejections: Mutex::default(),
            },
        )
    }

    const S: u64 = 1_000_000_000;

    #[test]
    fn stays_within_its_bound_and_keeps_open_breakers() {
        let r = registry(3);
        let open = r
            .get_or_insert(KeyRef::of(&key(0)), None, None, || Nanos(0))
            .unwrap();
        let a = open.circuit.acquire(Nanos(0)).unwrap();
        open.circuit.record(
            a.permit,
            Outcome::Failure(FailureKind::Other),
            Duration::ZERO,
            Nanos(0),
        );
        drop(open);
        for n in 1..10 {
            assert!(r
                .get_or_insert(KeyRef::of(&key(n)), None, None, || Nanos(S))
                .is_some());
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
        r.get_or_insert(KeyRef::of(&key(1)), None, None, || Nanos(0));
        r.get_or_insert(KeyRef::of(&key(2)), None, None, || Nanos(0));
        // 61 s later: a sweep clears the "used" marks; key 2 is used again.
        r.get_or_insert(KeyRef::of(&key(3)), None, None, || Nanos(61 * S));
        r.get_or_insert(KeyRef::of(&key(2)), None, None, || Nanos(62 * S));
        // 122 s: key 1 has not been used for a whole sweep period.
        r.get_or_insert(KeyRef::of(&key(4)), None, None, || Nanos(122 * S));
        assert!(r.get(&key(1)).is_none(), "idle: evicted");
        assert!(r.get(&key(2)).is_some(), "used since the last sweep: kept");
    }

    #[test]
    fn a_registry_full_of_busy_breakers_leaves_new_keys_unguarded() {
        let r = registry(1);
        let held = r
            .get_or_insert(KeyRef::of(&key(0)), None, None, || Nanos(0))
            .unwrap();
        assert!(r
            .get_or_insert(KeyRef::of(&key(1)), None, None, || Nanos(0))
            .is_none());
        drop(held);
        assert!(r
            .get_or_insert(KeyRef::of(&key(1)), None, None, || Nanos(0))
            .is_some());
    }
}

#[cfg(test)]
mod lookup_tests {
    use super::*;

    #[test]
    fn borrowed_and_owned_keys_find_the_same_breaker() {
        let r = Registry::new(
            BreakerConfig::default(),
            Outcomes {
                classifier: FailureClassifier::default(),
                events: EventBus::default(),
                times_calls: false,
                ejections: Mutex::default(),
            },
        );
        let authority = http::uri::Authority::from_static("api");
        let first = r
            .get_or_insert(KeyRef::Authority(&authority), None, None, || Nanos(0))
            .unwrap();
        let again = r
            .get_or_insert(KeyRef::Authority(&authority), None, None, || Nanos(0))
            .unwrap();
        assert!(Arc::ptr_eq(&first, &again));
        let owned = BreakerKey::Authority(authority.clone());
        assert!(Arc::ptr_eq(&first, &r.get(&owned).unwrap()));
        assert_eq!(r.len(), 1);
        assert_eq!(first.service.as_ref().map(|s| s.as_str()), Some("api"));
    }
}
