//! [`BreakerHandle`]: an operator's hold on one breaker.

use std::sync::Arc;
use std::time::{Duration, Instant};

use mesh_core::clock::{self, Nanos};
use mesh_core::CircuitState;

use crate::circuit::{BreakerMetrics, Transition};
use crate::error::IllegalTransition;
use crate::registry::{BreakerKey, Entry};

/// One breaker, to inspect or drive by hand. Every manual transition
/// publishes exactly one event (and applies endpoint ejection like an
/// automatic one); a transition to the current state publishes none. A
/// move the state machine forbids (CLOSED to HALF_OPEN, METRICS_ONLY to
/// OPEN or HALF_OPEN) is refused with an [`IllegalTransition`].
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

    fn announce(&self, t: Transition, now: Nanos) {
        self.entry.announce(self.entry.endpoint.get(), t, now);
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

    /// Moves to `state` by hand; returns whether the state changed. OPEN
    /// lasts the configured open duration (see [`BreakerHandle::open_for`]
    /// for another).
    ///
    /// # Errors
    ///
    /// [`IllegalTransition`] for a move the state machine forbids; the
    /// breaker is left as it was.
    pub fn transition_to(&self, state: CircuitState) -> Result<bool, IllegalTransition> {
        let now = clock::now();
        Ok(match self.entry.circuit.transition_to(state, now)? {
            Some(t) => {
                self.announce(t, now);
                true
            }
            None => false,
        })
    }

    /// Opens for `duration` from now, whatever the configured open
    /// duration (resilience4j's `transitionToOpenStateFor`): for a known
    /// maintenance window, say. Afterwards the circuit probes as after a
    /// trip. While already OPEN, only the end moves (no event). Returns
    /// whether the state changed.
    ///
    /// ```
    /// use std::time::Duration;
    /// use mesh_breaker::{BreakerConfig, BreakerKey, BreakerLayer};
    /// use mesh_core::{CircuitState, ServiceName};
    ///
    /// let layer = BreakerLayer::new(BreakerConfig::default());
    /// let handle = layer
    ///     .handle_or_create(&BreakerKey::Service(ServiceName::new("search")?))
    ///     .expect("room for a breaker");
    /// assert_eq!(handle.open_for(Duration::from_secs(120)), Ok(true));
    /// assert_eq!(handle.state(), CircuitState::Open);
    /// assert_eq!(handle.open_for(Duration::from_secs(60)), Ok(false), "already open: the end moves");
    /// # Ok::<(), mesh_core::InvalidName>(())
    /// ```
    ///
    /// # Errors
    ///
    /// [`IllegalTransition`] from METRICS_ONLY, which never opens.
    pub fn open_for(&self, duration: Duration) -> Result<bool, IllegalTransition> {
        let now = clock::now();
        self.open_until_nanos(now.saturating_add(duration), now)
    }

    /// Opens until `until` (a [`std::time::Instant`] or a
    /// [`tokio::time::Instant`], resilience4j's
    /// `transitionToOpenStateUntil`). While already OPEN, only the end
    /// moves (no event). Returns whether the state changed.
    ///
    /// # Errors
    ///
    /// [`IllegalTransition`] from METRICS_ONLY, which never opens.
    pub fn open_until(&self, until: impl Into<Instant>) -> Result<bool, IllegalTransition> {
        self.open_until_nanos(Nanos::from_instant(until.into()), clock::now())
    }

    fn open_until_nanos(&self, until: Nanos, now: Nanos) -> Result<bool, IllegalTransition> {
        let t = self.entry.circuit.open_until(until)?;
        self.announce(t, now);
        Ok(t.from != t.to)
    }

    /// Refuses every call until another manual transition (allowed from
    /// every state). Returns whether the state changed.
    pub fn force_open(&self) -> bool {
        self.operator_state(CircuitState::ForcedOpen)
    }

    /// Lets every call through, recording nothing (allowed from every
    /// state). Returns whether the state changed.
    pub fn disable(&self) -> bool {
        self.operator_state(CircuitState::Disabled)
    }

    /// Records and reports, but never trips (allowed from every state).
    /// Returns whether the state changed.
    pub fn metrics_only(&self) -> bool {
        self.operator_state(CircuitState::MetricsOnly)
    }

    /// A move every state permits.
    fn operator_state(&self, state: CircuitState) -> bool {
        self.transition_to(state).unwrap_or(false)
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
