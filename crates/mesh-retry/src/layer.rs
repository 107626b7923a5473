use std::sync::Arc;

use mesh_core::{EventBus, FailureClassifier};
use tower_layer::Layer;

use crate::config::RetryConfig;
use crate::policy::{PolicyState, RetryPolicy};
use crate::service::Retry;
use crate::stats::{Counters, RetryStats};

/// Wraps a service in retries; see [`Retry`].
///
/// All services made by the layer share one set of counters
/// ([`RetryLayer::stats`]) and one retry budget. A request that carries its
/// own [`RetryBudget`](crate::RetryBudget) extension is counted, and its
/// retries paid, from that budget instead of the layer's (whether or not
/// the layer has one): a layer serving several services keeps them apart
/// with one budget per service, made by
/// [`RetryConfig::new_budget`](crate::RetryConfig::new_budget).
///
/// Configure the layer before making services: [`RetryLayer::events`]
/// returns a layer with fresh counters and a fresh budget.
#[derive(Clone, Debug)]
pub struct RetryLayer {
    shared: Arc<PolicyState>,
}

impl RetryLayer {
    /// Retries according to `config`, with the default failure
    /// classification and no event subscribers.
    pub fn new(config: RetryConfig) -> Self {
        RetryLayer {
            shared: Arc::new(Self::shared(config, EventBus::default())),
        }
    }

    fn shared(config: RetryConfig, events: EventBus) -> PolicyState {
        let budget = config.new_budget();
        PolicyState {
            config,
            classifier: FailureClassifier::default(),
            events,
            counters: Counters::default(),
            budget,
        }
    }

    /// Publishes retries, exhausted retries and spent budgets on `events`.
    pub fn events(self, events: EventBus) -> Self {
        RetryLayer {
            shared: Arc::new(Self::shared(self.shared.config.clone(), events)),
        }
    }

    /// The counters so far.
    pub fn stats(&self) -> RetryStats {
        self.shared.stats()
    }

    /// The policy this layer's services use, for driving tower's own
    /// [`tower::retry::Retry`] directly. It shares this layer's counters
    /// and budget.
    pub fn policy(&self) -> RetryPolicy {
        RetryPolicy::new(Arc::clone(&self.shared))
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
        Retry::new(
            inner,
            RetryPolicy::new(Arc::clone(&self.shared)),
            Arc::clone(&self.shared),
        )
    }
}
