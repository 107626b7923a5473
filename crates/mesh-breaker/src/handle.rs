//! [`BreakerHandle`]: an operator's hold on one breaker.

use std::sync::Arc;

use mesh_core::{clock, CircuitState};

use crate::circuit::BreakerMetrics;
use crate::registry::{BreakerKey, Entry};

/// One breaker, to inspect or drive by hand. Every manual transition
/// publishes exactly one event (and applies endpoint ejection like an
/// automatic one); a transition to the current state publishes none.
///
/// ```
/// use mesh_breaker::{BreakerConfig, BreakerKey, BreakerLayer};
/// use mesh_core::{CircuitState, ServiceName};
///
/// let layer = BreakerLayer::new(BreakerConfig::default());
/// let key = BreakerKey::Service(ServiceName::new("payments")?);
/// let handle = layer.handle_or_create(&key).expect("room for a breaker");
/// handle.force_open(); // maintenance: refuse every call
/// assert_eq!(handle.state(), CircuitState::ForcedOpen);
/// handle.reset();
/// assert_eq!(handle.state(), CircuitState::Closed);
/// # Ok::<(), mesh_core::InvalidName>(())
/// ```
#[derive(Clone)]
pub struct BreakerHandle {
    key: BreakerKey,
    entry: Arc<Entry>,
}

impl BreakerHandle {
    pub(crate) fn new(key: BreakerKey, entry: Arc<Entry>) -> Self {
        BreakerHandle { key, entry }
    }

    fn announce(&self, t: crate::circuit::Transition, now: mesh_core::clock::Nanos) {
        let entry = &self.entry;
        entry
            .outcomes
            .announce(entry.service.as_ref(), entry.endpoint.get(), t, now);
    }

    /// Which breaker this is.
    pub fn key(&self) -> &BreakerKey {
        &self.key
    }

    /// The state now.
    pub fn state(&self) -> CircuitState {
        self.entry.circuit.state()
    }

    /// A metrics snapshot.
    pub fn metrics(&self) -> BreakerMetrics {
        self.entry.circuit.metrics(clock::now())
    }

    /// Moves to `state` by hand; returns whether the state changed.
    pub fn transition_to(&self, state: CircuitState) -> bool {
        let now = clock::now();
        match self.entry.circuit.transition_to(state, now) {
            Some(t) => {
                self.announce(t, now);
                true
            }
            None => false,
        }
    }

    /// Refuses every call until another manual transition.
    pub fn force_open(&self) -> bool {
        self.transition_to(CircuitState::ForcedOpen)
    }

    /// Lets every call through, recording nothing.
    pub fn disable(&self) -> bool {
        self.transition_to(CircuitState::Disabled)
    }

    /// Records and reports, but never trips.
    pub fn metrics_only(&self) -> bool {
        self.transition_to(CircuitState::MetricsOnly)
    }

    /// Back to a fresh CLOSED breaker (empty window, no streak, no growth).
    pub fn reset(&self) -> bool {
        let now = clock::now();
        match self.entry.circuit.reset(now) {
            Some(t) => {
                self.announce(t, now);
                true
            }
            None => false,
        }
    }
}

impl std::fmt::Debug for BreakerHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BreakerHandle")
            .field("key", &self.key)
            .field("state", &self.state())
            .finish()
    }
}
