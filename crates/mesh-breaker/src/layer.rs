use std::sync::Arc;

use http::{Extensions, HeaderMap, Method, Uri};
use mesh_core::{clock, EventBus, FailureClassifier, HeaderNames, ShownUri};
use tower_layer::Layer;

use crate::circuit::BreakerMetrics;
use crate::config::BreakerConfig;
use crate::handle::BreakerHandle;
use crate::registry::{BreakerKey, KeyRef, Outcomes};
use crate::service::{Breaker, LayerState};

/// The parts of a request a custom key function may look at. `Debug`
/// shows no header value, userinfo or query: they may hold secrets.
pub struct RequestParts<'a> {
    /// The method.
    pub method: &'a Method,
    /// The URI.
    pub uri: &'a Uri,
    /// The headers.
    pub headers: &'a HeaderMap,
    /// The extensions.
    pub extensions: &'a Extensions,
}

impl std::fmt::Debug for RequestParts<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RequestParts")
            .field("method", self.method)
            .field("uri", &ShownUri(self.uri))
            .field("headers", &HeaderNames(self.headers))
            .finish_non_exhaustive()
    }
}

/// A function choosing a request's breaker key; `None` falls back to the
/// configured scope.
pub type KeyFn = dyn Fn(&RequestParts<'_>) -> Option<String> + Send + Sync;

/// Wraps a service in circuit breakers; see [`Breaker`].
///
/// Every service made by the layer, and every clone of those, shares one
/// registry of breakers: a stack cloned into many tasks still trips as one.
/// Configure the layer (events, classifier, key) before making services:
/// each of those methods returns a layer with a fresh registry.
#[derive(Clone)]
pub struct BreakerLayer {
    shared: Arc<LayerState>,
}

impl BreakerLayer {
    /// Breakers with `config`, the default failure classification and no
    /// event subscribers.
    pub fn new(config: BreakerConfig) -> Self {
        let outcomes = Outcomes::for_config(&config);
        BreakerLayer {
            shared: Arc::new(LayerState::new(config, outcomes, None)),
        }
    }

    /// Publishes transitions, rejections and rate crossings on `events`.
    pub fn events(self, events: EventBus) -> Self {
        self.rebuild(|outcomes, _| outcomes.events = events)
    }

    /// Judges outcomes with `classifier` instead of the default (5xx and
    /// errors fail).
    pub fn classifier(self, classifier: FailureClassifier) -> Self {
        self.rebuild(|outcomes, _| outcomes.classifier = classifier)
    }

    /// Keys breakers by what `key` returns for a request (a tenant, a
    /// route...), falling back to the configured scope when it returns
    /// `None`.
    ///
    /// ```
    /// use mesh_breaker::{BreakerConfig, BreakerLayer};
    /// let layer = BreakerLayer::new(BreakerConfig::default()).key_by(|req| {
    ///     req.headers.get("x-tenant")?.to_str().ok().map(str::to_owned)
    /// });
    /// # let _ = layer;
    /// ```
    pub fn key_by<F>(self, key: F) -> Self
    where
        F: Fn(&RequestParts<'_>) -> Option<String> + Send + Sync + 'static,
    {
        let key: Arc<KeyFn> = Arc::new(key);
        self.rebuild(move |_, key_fn| *key_fn = Some(key))
    }

    /// A handle on the breaker for `key`, to inspect or drive it by hand;
    /// `None` if no call has created it yet.
    pub fn handle(&self, key: &BreakerKey) -> Option<BreakerHandle> {
        self.shared
            .registry
            .get(key)
            .map(|entry| BreakerHandle::new(key.clone(), entry))
    }

    /// A handle on the breaker for `key`, creating it if needed (to force
    /// one open before any call, say). `None` only if the registry is full
    /// of breakers that may not be evicted.
    pub fn handle_or_create(&self, key: &BreakerKey) -> Option<BreakerHandle> {
        let service = match key {
            BreakerKey::Endpoint(s, _) | BreakerKey::Service(s) => Some(s),
            _ => None,
        };
        self.shared
            .registry
            .get_or_insert(KeyRef::of(key), service, None, clock::now)
            .map(|entry| BreakerHandle::new(key.clone(), entry))
    }

    /// The state of the breaker for `key`, if a call ever used it.
    pub fn state(&self, key: &BreakerKey) -> Option<mesh_core::CircuitState> {
        self.shared.registry.get(key).map(|e| e.circuit.state())
    }

    /// A metrics snapshot of every breaker, by key.
    pub fn metrics(&self) -> Vec<(BreakerKey, BreakerMetrics)> {
        let now = clock::now();
        let mut all: Vec<_> = self
            .shared
            .registry
            .keys()
            .into_iter()
            .filter_map(|k| {
                let m = self.shared.registry.get(&k)?.circuit.metrics(now);
                Some((k, m))
            })
            .collect();
        all.sort_by(|a, b| format!("{:?}", a.0).cmp(&format!("{:?}", b.0)));
        all
    }

    /// How many breakers the registry holds.
    pub fn breakers(&self) -> usize {
        self.shared.registry.len()
    }

    fn rebuild(self, change: impl FnOnce(&mut Outcomes, &mut Option<Arc<KeyFn>>)) -> Self {
        let config = self.shared.registry.config().clone();
        let old = self.shared.registry.outcomes();
        let mut outcomes = Outcomes {
            classifier: old.classifier.clone(),
            events: old.events.clone(),
            times_calls: old.times_calls,
            ejections: std::sync::Mutex::default(),
        };
        let mut key_fn = self.shared.key_fn.clone();
        change(&mut outcomes, &mut key_fn);
        BreakerLayer {
            shared: Arc::new(LayerState::new(config, outcomes, key_fn)),
        }
    }
}

impl Default for BreakerLayer {
    fn default() -> Self {
        BreakerLayer::new(BreakerConfig::default())
    }
}

impl std::fmt::Debug for BreakerLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BreakerLayer")
            .field("config", self.shared.registry.config())
            .field("breakers", &self.breakers())
            .finish()
    }
}

impl<S> Layer<S> for BreakerLayer {
    type Service = Breaker<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Breaker::new(inner, Arc::clone(&self.shared))
    }
}
