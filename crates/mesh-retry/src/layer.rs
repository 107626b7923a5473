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
    pub fn events(self, events: EventBus) -> Self {
        self.rebuild(|s| s.events = events)
    }

    /// Names error kinds with `classifier` (its status half is not used:
    /// retry has its own retryable statuses).
    pub fn classifier(self, classifier: FailureClassifier) -> Self {
        self.rebuild(|s| s.classifier = classifier)
    }

    /// The counters so far.
    pub fn stats(&self) -> RetryStats {
        self.shared.stats()
    }

    fn rebuild(self, change: impl FnOnce(&mut Shared)) -> Self {
        let mut shared = Shared {
            config: self.shared.config.clone(),
            classifier: self.shared.classifier,
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
