//! [`RetryBudget`]: retries as a share of recent requests.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use mesh_core::clock::Nanos;
use mesh_core::MeshError;

const BUCKETS: u64 = 10;
const PPM: u128 = 1_000_000;

/// Limits retries to `percent` of the requests of the last `ttl`, plus
/// `min_per_second` retries per second however few requests there were (as
/// Finagle's and linkerd's budgets do), so that a failing upstream sees at
/// most `(1 + percent/100)` times its normal load plus a trickle, never a
/// storm. The per-second minimum accrues with time (from one second's
/// worth at creation, up to one `ttl`'s worth), so over a run of `d`
/// seconds it adds at most `min_per_second x (d + 1)` retries.
///
/// Shared by all clones of a [`crate::RetryLayer`]. The arithmetic is in
/// integers (parts per million of a retry), so a fractional percentage
/// such as 0.1% allows exactly one retry per thousand requests, never one
/// more. Requests are counted with a lock-free atomic add; a retry takes a
/// small mutex to check and withdraw, so two concurrent retries cannot
/// both spend the last token.
///
/// ```
/// use std::time::Duration;
/// use mesh_retry::RetryBudget;
/// use mesh_core::clock::Nanos;
///
/// let budget = RetryBudget::new(20.0, 0, Duration::from_secs(10))?;
/// for _ in 0..10 {
///     budget.deposit(Nanos(0));
/// }
/// assert!(budget.try_withdraw(Nanos(0)));   // 20% of 10 requests: 2 retries
/// assert!(budget.try_withdraw(Nanos(0)));
/// assert!(!budget.try_withdraw(Nanos(0)));
/// # Ok::<(), mesh_core::MeshError>(())
/// ```
#[derive(Debug)]
pub struct RetryBudget {
    ppm_per_request: u128,
    min_per_second: u32,
    ttl: Duration,
    slice: u64,
    created: Nanos,
    buckets: Box<[Bucket]>,
    withdrawing: Mutex<()>,
}

#[derive(Debug)]
struct Bucket {
    stamp: AtomicU64,
    requests: AtomicU64,
    retries: AtomicU64,
}

impl RetryBudget {
    /// A budget of `percent` (0 to 1000) of the requests of the last `ttl`
    /// (1 s to 1 h), plus `min_per_second` retries per second.
    ///
    /// # Errors
    ///
    /// [`MeshError::InvalidConfig`] naming the value out of range.
    pub fn new(percent: f64, min_per_second: u32, ttl: Duration) -> Result<RetryBudget, MeshError> {
        if !(0.0..=1000.0).contains(&percent) {
            return Err(MeshError::InvalidConfig {
                what: "retry.budget.percent".into(),
                reason: format!("{percent} is outside [0, 1000]"),
            });
        }
        if ttl < Duration::from_secs(1) || ttl > Duration::from_secs(3600) {
            return Err(MeshError::InvalidConfig {
                what: "retry.budget.ttl".into(),
                reason: format!("{ttl:?} is outside 1s..=1h"),
            });
        }
        let ttl_nanos = u64::try_from(ttl.as_nanos()).unwrap_or(u64::MAX);
        Ok(RetryBudget {
            // percent -> parts per million of a retry per request.
            ppm_per_request: (percent * 10_000.0).round() as u128,
            min_per_second,
            ttl,
            slice: (ttl_nanos / BUCKETS).max(1),
            created: mesh_core::clock::now(),
            buckets: (0..BUCKETS)
                .map(|_| Bucket {
                    stamp: AtomicU64::new(u64::MAX),
                    requests: AtomicU64::new(0),
                    retries: AtomicU64::new(0),
                })
                .collect(),
            withdrawing: Mutex::new(()),
        })
    }

    /// The window requests are counted over.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    fn bucket(&self, now: Nanos) -> Option<&Bucket> {
        let stamp = now.0 / self.slice;
        let bucket = self.buckets.get((stamp % BUCKETS) as usize)?;
        let seen = bucket.stamp.load(Ordering::Acquire);
        if seen != stamp
            && bucket
                .stamp
                .compare_exchange(seen, stamp, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            bucket.requests.store(0, Ordering::Relaxed);
            bucket.retries.store(0, Ordering::Relaxed);
        }
        Some(bucket)
    }

    /// Counts one request (call it once per request, not per attempt).
    pub fn deposit(&self, now: Nanos) {
        if let Some(b) = self.bucket(now) {
            b.requests.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn totals(&self, now: Nanos) -> (u128, u128) {
        let current = now.0 / self.slice;
        let (mut requests, mut retries) = (0u128, 0u128);
        for b in self.buckets.iter() {
            let stamp = b.stamp.load(Ordering::Acquire);
            if stamp <= current && current - stamp < BUCKETS {
                requests += u128::from(b.requests.load(Ordering::Relaxed));
                retries += u128::from(b.retries.load(Ordering::Relaxed));
            }
        }
        (requests, retries)
    }

    /// Spends one retry if the budget allows it at `now`.
    pub fn try_withdraw(&self, now: Nanos) -> bool {
        let _one_at_a_time = self.withdrawing.lock().unwrap_or_else(|e| e.into_inner());
        let (requests, retries) = self.totals(now);
        // The per-second minimum accrues with time, up to one window's
        // worth, so a short burst cannot spend a whole window's reserve.
        // A new budget starts with one second of the minimum in hand, so
        // the very first failures of a fresh client can be retried.
        let accrued = (now.saturating_since(self.created) + Duration::from_secs(1)).min(self.ttl);
        let reserve = u128::from(self.min_per_second) * accrued.as_nanos() * PPM / 1_000_000_000;
        let allowed = requests * self.ppm_per_request + reserve;
        if (retries + 1) * PPM > allowed {
            return false;
        }
        match self.bucket(now) {
            Some(b) => {
                b.retries.fetch_add(1, Ordering::Relaxed);
                true
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const S: u64 = 1_000_000_000;

    #[test]
    fn fractional_percentages_are_exact() {
        // tower#857: 0.1% must allow exactly 1 retry per 1000 requests.
        let b = RetryBudget::new(0.1, 0, Duration::from_secs(10)).unwrap();
        for _ in 0..999 {
            b.deposit(Nanos(0));
        }
        assert!(!b.try_withdraw(Nanos(0)), "999 requests: no retry yet");
        b.deposit(Nanos(0));
        assert!(b.try_withdraw(Nanos(0)));
        assert!(!b.try_withdraw(Nanos(0)));
    }

    #[test]
    fn old_requests_leave_the_window_and_the_minimum_accrues() {
        let b = RetryBudget::new(50.0, 2, Duration::from_secs(10)).unwrap();
        // The budget counts a second of minimum from creation on.
        let t0 = b.created.0;
        for _ in 0..4 {
            b.deposit(Nanos(t0));
        }
        // 50% of 4, plus the first second's minimum of 2.
        for _ in 0..4 {
            assert!(b.try_withdraw(Nanos(t0)));
        }
        assert!(!b.try_withdraw(Nanos(t0)));
        // 1 s later the minimum has accrued 2 more.
        assert!(b.try_withdraw(Nanos(t0 + S)));
        assert!(b.try_withdraw(Nanos(t0 + S)));
        assert!(!b.try_withdraw(Nanos(t0 + S)));
        // 20 s later the old requests and retries are gone; the reserve
        // is a whole window's: 2/s x 10 s.
        let later = Nanos(t0 + 20 * S);
        let granted = (0..30).filter(|_| b.try_withdraw(later)).count();
        assert_eq!(granted, 20);
    }

    #[test]
    fn bad_settings_are_refused_by_name() {
        assert!(RetryBudget::new(-1.0, 0, Duration::from_secs(10))
            .unwrap_err()
            .to_string()
            .contains("percent"));
        assert!(RetryBudget::new(20.0, 0, Duration::ZERO)
            .unwrap_err()
            .to_string()
            .contains("ttl"));
    }

    proptest! {
        /// Within one window, retries granted never exceed
        /// floor(requests x percent / 100) (no minimum).
        #[test]
        fn never_over_admits(percent_milli in 0u32..200_000, requests in 0u32..3000) {
            let percent = f64::from(percent_milli) / 1000.0;
            let b = RetryBudget::new(percent, 0, Duration::from_secs(10)).unwrap();
            for _ in 0..requests { b.deposit(Nanos(0)); }
            let granted = (0..requests * 3 + 5).filter(|_| b.try_withdraw(Nanos(0))).count() as u128;
            let ppm = (percent * 10_000.0).round() as u128;
            prop_assert_eq!(granted, u128::from(requests) * ppm / 1_000_000);
        }
    }
}
