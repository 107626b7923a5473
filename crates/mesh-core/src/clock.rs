//! A monotonic clock readable as one `u64`.
//!
//! Endpoint state is a set of atomics, so a point in time stored there (such
//! as "ejected until") must fit in an `AtomicU64`. [`Nanos`] counts
//! nanoseconds since a process-wide epoch fixed on first use; it is derived
//! from tokio's [`Instant`](tokio::time::Instant), so it never goes
//! backwards, and a test that pauses tokio's clock
//! (`tokio::time::pause`) controls every timed decision of the mesh
//! (breaker windows, open durations) without sleeping.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

static EPOCH: OnceLock<Instant> = OnceLock::new();

fn epoch() -> Instant {
    *EPOCH.get_or_init(|| {
        // Read through tokio, like `now`, and set well in the past: a test
        // runtime whose clock was paused a little before another set the
        // epoch must still read times after it (times before the epoch all
        // read as zero, which would stop the clock for that runtime).
        let first = tokio::time::Instant::now().into_std();
        [3600, 60, 1]
            .into_iter()
            .find_map(|s| first.checked_sub(Duration::from_secs(s)))
            .unwrap_or(first)
    })
}

/// A point on the process's monotonic clock, in nanoseconds since its epoch.
///
/// `Nanos(0)` is the epoch itself, earlier than any time read afterwards, so
/// it doubles as "never" for deadlines stored in atomics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Nanos(pub u64);

impl Nanos {
    /// The epoch: earlier than every time read from [`now`].
    pub const ZERO: Nanos = Nanos(0);

    /// Converts an [`Instant`] to the clock (instants before the epoch map to it).
    pub fn from_instant(at: Instant) -> Nanos {
        let since = at.saturating_duration_since(epoch());
        Nanos(u64::try_from(since.as_nanos()).unwrap_or(u64::MAX))
    }

    /// Converts back to an [`Instant`].
    pub fn to_instant(self) -> Instant {
        epoch() + Duration::from_nanos(self.0)
    }

    /// Converts to the runtime's clock, for a timer set at this time.
    pub fn to_tokio_instant(self) -> tokio::time::Instant {
        tokio::time::Instant::from_std(self.to_instant())
    }

    /// This time plus `d`, saturating instead of overflowing.
    pub fn saturating_add(self, d: Duration) -> Nanos {
        let d = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        Nanos(self.0.saturating_add(d))
    }

    /// The time from `earlier` to `self`, or zero if `earlier` is later.
    pub fn saturating_since(self, earlier: Nanos) -> Duration {
        Duration::from_nanos(self.0.saturating_sub(earlier.0))
    }
}

/// The current time on the process clock.
///
/// ```
/// let a = mesh_core::clock::now();
/// let b = mesh_core::clock::now();
/// assert!(b >= a);
/// ```
pub fn now() -> Nanos {
    Nanos::from_instant(tokio::time::Instant::now().into_std())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn follows_tokio_s_paused_clock() {
        let before = now();
        tokio::time::advance(Duration::from_secs(30)).await;
        assert_eq!(now().saturating_since(before), Duration::from_secs(30));
    }

    #[test]
    fn round_trips_through_instant() {
        let at = Instant::now() + Duration::from_millis(5);
        let n = Nanos::from_instant(at);
        assert_eq!(n.to_instant(), at);
        assert_eq!(
            n.saturating_add(Duration::from_millis(1))
                .saturating_since(n),
            Duration::from_millis(1)
        );
        assert_eq!(Nanos::ZERO.saturating_since(n), Duration::ZERO);
    }
}
