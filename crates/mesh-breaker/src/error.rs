//! [`IllegalTransition`]: a manual transition the state machine forbids.

use std::fmt;

use mesh_core::CircuitState;

/// A manual transition the state machine forbids, refused with the circuit
/// left as it was.
///
/// The forbidden moves are resilience4j's: CLOSED cannot go to HALF_OPEN
/// (there was no OPEN to recover from), and METRICS_ONLY cannot go to OPEN
/// or HALF_OPEN (a circuit that never trips has nothing to open for; leave
/// it by closing, disabling or forcing it open). Every other move is
/// allowed, and a move to the current state changes nothing.
///
/// ```
/// use mesh_breaker::{BreakerConfig, BreakerKey, BreakerLayer};
/// use mesh_core::{CircuitState, ServiceName};
///
/// let layer = BreakerLayer::new(BreakerConfig::default());
/// let handle = layer
///     .handle_or_create(&BreakerKey::Service(ServiceName::new("payments")?))
///     .expect("room for a breaker");
/// let refused = handle.transition_to(CircuitState::HalfOpen).unwrap_err();
/// assert_eq!((refused.from(), refused.to()), (CircuitState::Closed, CircuitState::HalfOpen));
/// assert_eq!(refused.to_string(), "a circuit breaker cannot move from closed to half-open by hand");
/// assert_eq!(handle.state(), CircuitState::Closed);
/// # Ok::<(), mesh_core::InvalidName>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IllegalTransition {
    from: CircuitState,
    to: CircuitState,
}

// === impl IllegalTransition ===

impl IllegalTransition {
    /// Checks a manual move from `from` to `to`.
    pub(crate) fn check(from: CircuitState, to: CircuitState) -> Result<(), IllegalTransition> {
        use CircuitState::*;
        match (from, to) {
            (Closed, HalfOpen) | (MetricsOnly, Open) | (MetricsOnly, HalfOpen) => {
                Err(IllegalTransition { from, to })
            }
            _ => Ok(()),
        }
    }

    /// The state the circuit was (and still is) in.
    pub fn from(&self) -> CircuitState {
        self.from
    }

    /// The state asked for.
    pub fn to(&self) -> CircuitState {
        self.to
    }
}

impl fmt::Display for IllegalTransition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "a circuit breaker cannot move from {} to {} by hand",
            self.from, self.to
        )
    }
}

impl std::error::Error for IllegalTransition {}
