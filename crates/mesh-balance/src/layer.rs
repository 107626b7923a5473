use std::sync::Arc;

use tower_layer::Layer;

use mesh_core::EventBus;

use crate::config::BalanceConfig;
use crate::service::Balance;
use crate::strategy::{KeySource, Picker, ServiceMetrics, Strategy};

/// Wraps a service so that each request goes to one endpoint of its
/// service; see [`Balance`].
///
/// Clones of the layer, and every service it makes, share one picking state,
/// so a stack cloned into many tasks still balances as one.
///
/// ```
/// use mesh_balance::{BalanceLayer, KeySource, Strategy};
/// use http::HeaderName;
///
/// // Fewest requests in flight; clients carrying an id stick to one instance.
/// let layer = BalanceLayer::new(Strategy::LeastConnections).sticky_by([
///     KeySource::Extension,
///     KeySource::Header(HeaderName::from_static("x-client-id")),
///     KeySource::Cookie("session".into()),
/// ]);
/// # let _ = layer;
/// ```
#[derive(Clone, Debug)]
pub struct BalanceLayer {
    picker: Arc<Picker>,
    keys: Arc<[KeySource]>,
    events: EventBus,
}

impl BalanceLayer {
    /// Balances with `strategy` and otherwise default settings. With
    /// [`Strategy::ConsistentHash`] the key is the
    /// [`mesh_core::ext::AffinityKey`] extension unless
    /// [`BalanceLayer::sticky_by`] names other sources.
    pub fn new(strategy: Strategy) -> Self {
        let config = BalanceConfig::builder().strategy(strategy).build();
        // The default settings with a strategy are always valid.
        BalanceLayer::from_config(config.unwrap_or_default())
    }

    /// Balances according to `config`.
    pub fn from_config(config: BalanceConfig) -> Self {
        BalanceLayer::with(config, EventBus::default())
    }

    fn with(config: BalanceConfig, events: EventBus) -> Self {
        let keys: Arc<[KeySource]> = match (config.sticky(), config.strategy()) {
            ([], Strategy::ConsistentHash) => Arc::from([KeySource::Extension]),
            (sources, _) => sources.iter().cloned().collect(),
        };
        BalanceLayer {
            picker: Arc::new(Picker::new(config, events.clone())),
            keys,
            events,
        }
    }

    /// Publishes changes in the number of available endpoints on `events`.
    /// Returns a layer with fresh picking state: configure before use.
    pub fn events(self, events: EventBus) -> Self {
        BalanceLayer::with(self.picker.config().clone(), events)
    }

    /// Per service, per instance: requests, in flight, latency estimate,
    /// share of traffic and availability, as this balancer sees them.
    pub fn metrics(&self) -> Vec<ServiceMetrics> {
        self.picker.metrics()
    }

    /// Balances by round robin over the available endpoints.
    pub fn round_robin() -> Self {
        BalanceLayer::new(Strategy::RoundRobin)
    }

    /// Session affinity (the design document's `sessionAffinity`): a
    /// request carrying a key from one of `sources` (tried in order) goes
    /// to the endpoint its key hashes to, whatever the strategy; when that
    /// endpoint is unavailable the key moves to a stable second choice,
    /// and back when it recovers. Requests without a key use the strategy.
    pub fn sticky_by(self, sources: impl IntoIterator<Item = KeySource>) -> Self {
        let config = self.picker.config().clone();
        let config = crate::config::BalanceConfigBuilder::from(config)
            .sticky_by(sources)
            .build();
        BalanceLayer::with(config.unwrap_or_default(), self.events)
    }
}

impl Default for BalanceLayer {
    /// [`BalanceConfig::default`]: power of two choices over each
    /// instance's latency and load; [`BalanceLayer::round_robin`] is the
    /// one-line alternative.
    fn default() -> Self {
        BalanceLayer::from_config(BalanceConfig::default())
    }
}

impl<S> Layer<S> for BalanceLayer {
    type Service = Balance<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Balance::new(inner, Arc::clone(&self.picker), Arc::clone(&self.keys))
    }
}
