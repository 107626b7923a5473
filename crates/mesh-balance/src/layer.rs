use std::sync::Arc;

use tower_layer::Layer;

use crate::service::Balance;
use crate::strategy::{KeySource, Picker, Strategy};

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
}

impl BalanceLayer {
    /// Balances with `strategy`. With [`Strategy::ConsistentHash`] the key
    /// is the [`mesh_core::ext::AffinityKey`] extension unless
    /// [`BalanceLayer::sticky_by`] names other sources.
    pub fn new(strategy: Strategy) -> Self {
        let keys: Arc<[KeySource]> = if strategy == Strategy::ConsistentHash {
            Arc::from([KeySource::Extension])
        } else {
            Arc::from([])
        };
        BalanceLayer {
            picker: Arc::new(Picker::new(strategy, false)),
            keys,
        }
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
        BalanceLayer {
            picker: Arc::new(Picker::new(self.picker.strategy().clone(), true)),
            keys: sources.into_iter().collect(),
        }
    }
}

impl Default for BalanceLayer {
    fn default() -> Self {
        BalanceLayer::round_robin()
    }
}

impl<S> Layer<S> for BalanceLayer {
    type Service = Balance<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Balance::new(inner, Arc::clone(&self.picker), Arc::clone(&self.keys))
    }
}
