//! [`RetryBudget`]: retries as a share of recent requests.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mesh_core::clock::Nanos;
use mesh_core::ConfigError;

const BUCKETS: u64 = 10;
const RESETTING: u64 = u64::MAX - 1;
const PPM: u128 = 1_000_000;

/// Limits retries to `percent` of the requests of the last `ttl`, plus
/// `min_per_second` retries per second however few requests there were (as
/// Finagle's and linkerd's budgets do), so that a failing upstream sees at
/// most `(1 + percent/100)` times its normal load plus a trickle, never a
/// storm. The per-second minimum is a token bucket that refills at
/// `min_per_second` and holds at most one second's worth, so over any run
/// of `d` seconds it adds at most `min_per_second x (d + 1)` retries, even
/// after a long idle period.
///
/// A `RetryBudget` is a handle: clones share one account, and cloning costs
/// a reference count. A [`crate::RetryLayer`] keeps one for all its
/// services, or one per service
/// ([`crate::RetryLayer::budget_per_service`]); a request carrying a
/// `RetryBudget` as an extension is counted against that one instead, so
/// a caller can keep its own accounts (build them with
/// [`crate::RetryConfig::new_budget`]). Either way a failing service then
/// spends only retries its own traffic funded.
///
/// A budget of 0% with a minimum of 0 per second allows no retry at all;
/// 0% with a minimum allows only that trickle.
///
/// The arithmetic is in
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
/// # Ok::<(), mesh_core::ConfigError>(())
/// ```
#[derive(Clone)]
pub struct RetryBudget {
    state: Arc<State>,
}

/// The account all clones of one [`RetryBudget`] share.
#[derive(Debug)]
struct State {
    ppm_per_request: u128,
    min_per_second: u32,
    ttl: Duration,
    slice: u64,
    /// The slice of the latest clock reading, for deposits that skip the
    /// clock (see [`RetryBudget::deposit_counted`]).
    current: AtomicU64,
    buckets: Box<[Bucket]>,
    withdrawing: Mutex<Reserve>,
}

/// The per-second minimum, in parts per million of a retry.
#[derive(Debug)]
struct Reserve {
    tokens: u128,
    refilled: Nanos,
}

#[derive(Debug)]
struct Bucket {
    stamp: AtomicU64,
    requests: AtomicU64,
    retries: AtomicU64,
}

/// The settings of a [`RetryBudget`]: what a [`crate::RetryConfig`] keeps
/// so that it can open a fresh account per service
/// ([`crate::RetryConfig::new_budget`]).
///
/// ```
/// use std::time::Duration;
/// use mesh_retry::RetryBudgetConfig;
///
/// let settings = RetryBudgetConfig { percent: 10.0, ..RetryBudgetConfig::default() };
/// let budget = settings.new_budget()?;
/// assert_eq!(budget.ttl(), Duration::from_secs(10));
/// # Ok::<(), mesh_core::ConfigError>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RetryBudgetConfig {
    /// Retries allowed as a share of the requests of the last `ttl`, in
    /// percent (0 to 1000).
    pub percent: f64,
    /// Retries allowed per second however few requests there were.
    pub min_per_second: u32,
    /// The window requests are counted over (1 s to 1 h).
    pub ttl: Duration,
}

// === impl RetryBudgetConfig ===

impl RetryBudgetConfig {
    /// A fresh account with these settings.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] whose [`key`](ConfigError::key) is the value out
    /// of range, as [`RetryBudget::new`].
    pub fn new_budget(&self) -> Result<RetryBudget, ConfigError> {
        RetryBudget::new(self.percent, self.min_per_second, self.ttl)
    }
}

impl Default for RetryBudgetConfig {
    /// 20% of the last 10 s of requests plus 10 retries per second.
    fn default() -> Self {
        RetryBudgetConfig {
            percent: 20.0,
            min_per_second: 10,
            ttl: Duration::from_secs(10),
        }
    }
}

// === impl RetryBudget ===

impl RetryBudget {
    /// A budget of `percent` (0 to 1000) of the requests of the last `ttl`
    /// (1 s to 1 h), plus `min_per_second` retries per second.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] whose [`key`](ConfigError::key) is the value out
    /// of range (`retry.budget.percent`, `retry.budget.ttl`).
    pub fn new(
        percent: f64,
        min_per_second: u32,
        ttl: Duration,
    ) -> Result<RetryBudget, ConfigError> {
        if !(0.0..=1000.0).contains(&percent) {
            return Err(ConfigError::new(
                "retry.budget.percent",
                format!("{percent} is outside [0, 1000]"),
            ));
        }
        if ttl < Duration::from_secs(1) || ttl > Duration::from_secs(3600) {
            return Err(ConfigError::new(
                "retry.budget.ttl",
                format!("{ttl:?} is outside 1s..=1h"),
            ));
        }
        let ttl_nanos = u64::try_from(ttl.as_nanos()).unwrap_or(u64::MAX);
        let state = State {
            // percent -> parts per million of a retry per request.
            ppm_per_request: (percent * 10_000.0).round() as u128,
            min_per_second,
            ttl,
            slice: (ttl_nanos / BUCKETS).max(1),
            current: AtomicU64::new(u64::MAX),
            buckets: (0..BUCKETS)
                .map(|_| Bucket {
                    stamp: AtomicU64::new(u64::MAX),
                    requests: AtomicU64::new(0),
                    retries: AtomicU64::new(0),
                })
                .collect(),
            // A new budget starts with one second of the minimum in hand,
            // so the very first failures of a fresh client can be retried.
            withdrawing: Mutex::new(Reserve {
                tokens: u128::from(min_per_second) * PPM,
                refilled: mesh_core::clock::now(),
            }),
        };
        Ok(RetryBudget {
            state: Arc::new(state),
        })
    }

    /// The window requests are counted over.
    pub fn ttl(&self) -> Duration {
        self.state.ttl
    }

    /// Counts one request (call it once per request, not per attempt).
    pub fn deposit(&self, now: Nanos) {
        let s = &*self.state;
        // Stored only when the slice turns: every call on every core comes
        // here, and a store would take the line from the other core each
        // time.
        let slice = now.0 / s.slice;
        if s.current.load(Ordering::Relaxed) != slice {
            s.current.store(slice, Ordering::Relaxed);
        }
        if let Some(b) = s.bucket(now) {
            b.requests.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Counts request number `sequence` of a stream, reading the clock only
    /// for one request in 32 (a clock read costs more than the rest of a
    /// deposit): the others go to the slice of the latest reading. A request
    /// so counted can only land in an older slice than its own, which
    /// leaves the window sooner: the budget errs towards fewer retries,
    /// never more.
    pub fn deposit_counted(&self, sequence: u64) {
        let s = &*self.state;
        if !sequence.is_multiple_of(32) {
            let stamp = s.current.load(Ordering::Relaxed);
            if let Some(b) = s.buckets.get((stamp % BUCKETS) as usize) {
                if b.stamp.load(Ordering::Acquire) == stamp {
                    b.requests.fetch_add(1, Ordering::Relaxed);
                    return;
                }
            }
        }
        self.deposit(mesh_core::clock::now());
    }

    /// Whether no request was counted in the whole window before `now`:
    /// the account then holds nothing a fresh one would not (its window is
    /// empty, and its per-second minimum, refilled for at least one
    /// second, is whole), so it may be dropped and made again.
    pub(crate) fn is_idle(&self, now: Nanos) -> bool {
        let s = &*self.state;
        let last = s.current.load(Ordering::Relaxed);
        last == u64::MAX || now.0 / s.slice >= last.saturating_add(BUCKETS)
    }

    /// Spends one retry if the budget allows it at `now`.
    pub fn try_withdraw(&self, now: Nanos) -> bool {
        let s = &*self.state;
        let mut reserve = s.withdrawing.lock().unwrap_or_else(|e| e.into_inner());
        // Retries funded by the percentage count in the window; beyond it,
        // the per-second minimum pays from its own bucket.
        let (requests, retries) = s.totals(now);
        if (retries + 1) * PPM <= requests * s.ppm_per_request {
            if let Some(b) = s.bucket(now) {
                b.retries.fetch_add(1, Ordering::Relaxed);
                return true;
            }
        }
        let one_second = u128::from(s.min_per_second) * PPM;
        let elapsed = now.saturating_since(reserve.refilled);
        let refill = u128::from(s.min_per_second) * elapsed.as_nanos() * PPM / 1_000_000_000;
        reserve.tokens = (reserve.tokens + refill).min(one_second);
        reserve.refilled = now.max(reserve.refilled);
        if reserve.tokens >= PPM {
            reserve.tokens -= PPM;
            return true;
        }
        false
    }
}

impl std::fmt::Debug for RetryBudget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = &*self.state;
        f.debug_struct("RetryBudget")
            .field("percent", &(s.ppm_per_request as f64 / 10_000.0))
            .field("min_per_second", &s.min_per_second)
            .field("ttl", &s.ttl)
            .finish_non_exhaustive()
    }
}

// === impl State ===

impl State {
    fn bucket(&self, now: Nanos) -> Option<&Bucket> {
        let stamp = now.0 / self.slice;
        let bucket = self.buckets.get((stamp % BUCKETS) as usize)?;
        let seen = bucket.stamp.load(Ordering::Acquire);
        if seen == stamp {
            return Some(bucket);
        }
        // Claim the bucket of an older slice, zero it, and only then publish
        // the new slice, so nobody counts in (or reads) old counts under a
        // new stamp. A call meeting a bucket mid-reset is not counted.
        if seen == RESETTING
            || bucket
                .stamp
                .compare_exchange(seen, RESETTING, Ordering::AcqRel, Ordering::Acquire)
                .is_err()
        {
            return None;
        }
        bucket.requests.store(0, Ordering::Relaxed);
        bucket.retries.store(0, Ordering::Relaxed);
        bucket.stamp.store(stamp, Ordering::Release);
        Some(bucket)
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
    fn old_requests_leave_the_window_and_the_minimum_refills_one_second_at_most() {
        let b = RetryBudget::new(50.0, 2, Duration::from_secs(10)).unwrap();
        let t0 = b.state.withdrawing.lock().unwrap().refilled.0;
        for _ in 0..4 {
            b.deposit(Nanos(t0));
        }
        // 50% of 4, plus the first second's minimum of 2.
        for _ in 0..4 {
            assert!(b.try_withdraw(Nanos(t0)));
        }
        assert!(!b.try_withdraw(Nanos(t0)));
        // 1 s later the minimum has refilled 2.
        assert!(b.try_withdraw(Nanos(t0 + S)));
        assert!(b.try_withdraw(Nanos(t0 + S)));
        assert!(!b.try_withdraw(Nanos(t0 + S)));
        // After a long idle spell the requests have left the window, and
        // the minimum holds one second's worth, not a window's.
        let later = Nanos(t0 + 600 * S);
        let granted = (0..30).filter(|_| b.try_withdraw(later)).count();
        assert_eq!(granted, 2);
    }

    #[test]
    fn deposits_that_skip_the_clock_still_count_in_the_current_slice() {
        let b = RetryBudget::new(10.0, 0, Duration::from_secs(10)).unwrap();
        for n in 0..100 {
            b.deposit_counted(n);
        }
        // 10% of 100 requests, counted with 4 clock readings in all.
        let now = mesh_core::clock::now();
        assert_eq!((0..20).filter(|_| b.try_withdraw(now)).count(), 10);
    }

    #[test]
    fn clones_share_one_account() {
        let b = RetryBudget::new(50.0, 0, Duration::from_secs(10)).unwrap();
        let clone = b.clone();
        b.deposit(Nanos(0));
        clone.deposit(Nanos(0));
        assert!(
            clone.try_withdraw(Nanos(0)),
            "50% of the 2 requests of both"
        );
        assert!(!b.try_withdraw(Nanos(0)), "the clone spent it");
    }

    #[test]
    fn bad_settings_are_refused_by_name() {
        let err = RetryBudget::new(-1.0, 0, Duration::from_secs(10)).unwrap_err();
        assert_eq!(err.key(), "retry.budget.percent");
        assert!(err.reason().contains("-1"), "{err}");
        let err = RetryBudget::new(20.0, 0, Duration::ZERO).unwrap_err();
        assert_eq!(err.key(), "retry.budget.ttl");
        assert!(err.to_string().contains("outside 1s..=1h"), "{err}");
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

        /// 0% with no minimum grants nothing, whatever the traffic and
        /// however much time passes.
        #[test]
        fn a_zero_budget_never_grants_a_retry(
            requests in 0u32..3000,
            later in 0u64..7200,
        ) {
            let b = RetryBudget::new(0.0, 0, Duration::from_secs(10)).unwrap();
            let start = mesh_core::clock::now().0;
            for n in 0..requests { b.deposit_counted(u64::from(n)); }
            prop_assert!(!b.try_withdraw(Nanos(start)));
            prop_assert!(!b.try_withdraw(Nanos(start + later * S)));
        }
    }
}
