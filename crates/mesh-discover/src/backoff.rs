//! The pause after a registry error, with no executor in it: it doubles
//! from 250 ms at each failure in a row up to a cap, and is jittered
//! (between half and all of it) so that many clients of one failing
//! server do not retry in step. A success starts it over.

use std::time::Duration;

/// The first pause after an error (or the cap, if lower).
pub(crate) const FIRST_PAUSE: Duration = Duration::from_millis(250);

/// Exponential backoff with jitter, capped.
#[derive(Clone, Debug)]
pub(crate) struct ErrorBackoff {
    cap: Duration,
    /// The un-jittered pause of the last failure (zero: none yet).
    current: Duration,
}

// === impl ErrorBackoff ===

impl ErrorBackoff {
    /// A schedule whose pause never exceeds `cap`.
    pub(crate) fn new(cap: Duration) -> Self {
        ErrorBackoff {
            cap,
            current: Duration::ZERO,
        }
    }

    /// After a success: the next failure pauses [`FIRST_PAUSE`] again.
    pub(crate) fn reset(&mut self) {
        self.current = Duration::ZERO;
    }

    /// The pause after one more failure; `unit` is a random number in
    /// `[0, 1)` (`fastrand::f64()`), making it between half and all of the
    /// doubled pause.
    pub(crate) fn next_pause(&mut self, unit: f64) -> Duration {
        let floor = FIRST_PAUSE.min(self.cap);
        self.current = self.current.saturating_mul(2).clamp(floor, self.cap);
        self.current.mul_f64(0.5 + unit.clamp(0.0, 1.0) / 2.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn doubles_from_250ms_up_to_the_cap_and_starts_over_after_a_success() {
        let mut backoff = ErrorBackoff::new(Duration::from_secs(2));
        let pauses: Vec<u128> = (0..6)
            .map(|_| backoff.next_pause(1.0).as_millis())
            .collect();
        assert_eq!(pauses, [250, 500, 1000, 2000, 2000, 2000]);
        backoff.reset();
        assert_eq!(backoff.next_pause(1.0), Duration::from_millis(250));
    }

    #[test]
    fn a_cap_below_the_first_pause_is_the_pause() {
        let mut backoff = ErrorBackoff::new(Duration::from_millis(40));
        assert_eq!(backoff.next_pause(1.0), Duration::from_millis(40));
        assert_eq!(backoff.next_pause(1.0), Duration::from_millis(40));
    }

    proptest! {
        /// Whatever the cap and the luck, a pause is between half the cap's
        /// floor and the cap.
        #[test]
        fn a_pause_never_exceeds_the_cap(cap_ms in 1u64..600_000, units in proptest::collection::vec(0.0f64..1.0, 1..40)) {
            let cap = Duration::from_millis(cap_ms);
            let mut backoff = ErrorBackoff::new(cap);
            for unit in units {
                let pause = backoff.next_pause(unit);
                prop_assert!(pause <= cap, "{:?} > {:?}", pause, cap);
                prop_assert!(pause >= FIRST_PAUSE.min(cap) / 2, "{:?}", pause);
            }
        }
    }
}
