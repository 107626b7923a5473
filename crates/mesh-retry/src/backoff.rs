//! How long to wait before each retry.

use std::time::Duration;

/// A backoff schedule: the delay before the n-th retry.
///
/// It is a plain value, usable without tower: [`Backoff::delays`] is an
/// iterator over the schedule.
///
/// ```
/// use std::time::Duration;
/// use mesh_retry::Backoff;
///
/// let backoff = Backoff::constant(Duration::from_millis(50));
/// let first: Vec<_> = backoff.delays().take(3).collect();
/// assert_eq!(first, [Duration::from_millis(50); 3]);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Backoff {
    /// The same delay before every retry (the design document's
    /// `constant`).
    Constant(Duration),
}

impl Backoff {
    /// The same `delay` before every retry.
    pub fn constant(delay: Duration) -> Backoff {
        Backoff::Constant(delay)
    }

    /// The delay before retry number `retry` (0 for the first retry).
    pub fn delay(&self, retry: u32) -> Duration {
        let _ = retry;
        match self {
            Backoff::Constant(delay) => *delay,
        }
    }

    /// The delays before the first, second, third... retry.
    pub fn delays(&self) -> impl Iterator<Item = Duration> + '_ {
        (0u32..).map(|retry| self.delay(retry))
    }

    /// The longest delay the schedule can produce.
    pub fn max_delay(&self) -> Duration {
        match self {
            Backoff::Constant(delay) => *delay,
        }
    }
}

impl Default for Backoff {
    /// 25 ms between attempts: a retry goes to another endpoint, so it need
    /// not wait for the failed one to recover.
    fn default() -> Self {
        Backoff::Constant(Duration::from_millis(25))
    }
}
