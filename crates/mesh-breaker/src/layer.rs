use std::sync::Arc;

use mesh_core::{CircuitState, EventBus, FailureClassifier};
use tower_layer::Layer;

use crate::config::BreakerConfig;
use crate::registry::{BreakerKey, Registry};
use crate::service::{Breaker, Shared};

/// Wraps a service in circuit breakers; see [`Breaker`].
///
/// Every service made by the layer, and every clone of those, shares one
/// set of circuits: a stack cloned into many tasks still trips as one.
#[derive(Clone, Debug)]
pub struct BreakerLayer {
    shared: Arc<Shared>,
}

impl BreakerLayer {
    /// Breakers with `config`, the default failure classification and no
    /// event subscribers.
    pub fn new(config: BreakerConfig) -> Self {
        BreakerLayer {
            shared: Arc::new(Shared {
                registry: Registry::new(config),
                classifier: FailureClassifier::default(),
                events: EventBus::default(),
            }),
        }
    }

    /// Publishes transitions on `events`.
    ///
    /// This and [`BreakerLayer::classifier`] return a new layer with fresh
    /// circuits: configure the layer before making services or taking
    /// clones that should share them.
    pub fn events(self, events: EventBus) -> Self {
        self.rebuild(|s| s.events = events)
    }

    /// Judges failures with `classifier` instead of the default.
    pub fn classifier(self, classifier: FailureClassifier) -> Self {
        self.rebuild(|s| s.classifier = classifier)
    }

    /// The state of the circuit for `key`, if a call ever used it.
    pub fn state(&self, key: &BreakerKey) -> Option<CircuitState> {
        self.shared.registry.get(key).map(|c| c.state())
    }

    fn rebuild(self, change: impl FnOnce(&mut Shared)) -> Self {
        let mut shared = Shared {
            registry: Registry::new(*self.shared.registry.config()),
            classifier: self.shared.classifier,
            events: self.shared.events.clone(),
        };
        change(&mut shared);
        BreakerLayer {
            shared: Arc::new(shared),
        }
    }
}

impl Default for BreakerLayer {
    fn default() -> Self {
        BreakerLayer::new(BreakerConfig::default())
    }
}

impl<S> Layer<S> for BreakerLayer {
    type Service = Breaker<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Breaker::new(inner, Arc::clone(&self.shared))
    }
}
