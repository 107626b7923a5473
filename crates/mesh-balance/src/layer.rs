use std::sync::Arc;

use tower_layer::Layer;

use crate::round_robin::RoundRobin;
use crate::service::Balance;

/// Wraps a service so that each request goes to one endpoint of its
/// service; see [`Balance`].
///
/// Clones of the layer, and every service it makes, share one picking state,
/// so a stack cloned into many tasks still balances as one.
#[derive(Clone, Debug)]
pub struct BalanceLayer {
    picker: Arc<RoundRobin>,
}

impl BalanceLayer {
    /// Balances by round robin over the available endpoints.
    pub fn round_robin() -> Self {
        BalanceLayer {
            picker: Arc::new(RoundRobin::new()),
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
        Balance::new(inner, Arc::clone(&self.picker))
    }
}
