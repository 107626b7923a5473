use std::sync::Arc;

use mesh_core::{EventBus, FailureClassifier};
use tower_layer::Layer;

use crate::config::RetryConfig;
use crate::policy::{Counters, RetryPolicy, RetryStats, Shared};
use crate::service::Retry;

/// Wraps a service in retries; see [`Retry`].
///
/// All services made by the layer share one set of counters
/// ([`RetryLayer::stats`]).
#[derive(Clone, Debug)]
pub struct RetryLayer {
    shared: Arc<Shared>,
}

impl RetryLayer {
    /// Retries according to `config`, with the default failure
    /// classification and no event subscribers.
    pub fn new(config: RetryConfig) -> Self {
        RetryLayer {
            shared: Arc::new(Shared {
                config,
                classifier: FailureClassifier::default(),
                events: EventBus::default(),
                counters: Counters::default(),
            }),
        }
    }

    /// Publishes a [`mesh_core::MeshEvent::RetryScheduled`] on `events` for
    /// every retry.
    ///
    /// This returns a new layer with fresh counters: configure it before
    /// making services or taking clones that should share them.
    pub fn events(self, events: EventBus) -> Self {
        self.rebuild(|s| s.events = events)
    }

    /// The counters so far.
    pub fn stats(&self) -> RetryStats {
        self.shared.stats()
    }

    /// The policy this layer's services use, for driving tower's own
    /// [`tower::retry::Retry`] directly. It shares this layer's counters.
    pub fn policy(&self) -> RetryPolicy {
        RetryPolicy::new(Arc::clone(&self.shared))
    }

    fn rebuild(self, change: impl FnOnce(&mut Shared)) -> Self {
        let mut shared = Shared {
            config: self.shared.config.clone(),
            classifier: self.shared.classifier.clone(),
            events: self.shared.events.clone(),
            counters: Counters::default(),
        };
        change(&mut shared);
        RetryLayer {
            shared: Arc::new(shared),
        }
    }
}

impl Default for RetryLayer {
    fn default() -> Self {
        RetryLayer::new(RetryConfig::default())
    }
}

impl<S> Layer<S> for RetryLayer {
    type Service = Retry<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Retry::new(inner, RetryPolicy::new(Arc::clone(&self.shared)))
    }
}
