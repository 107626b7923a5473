//! [`RetryStats`]: what a retry layer has done, and the counters behind it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Counters of one retry layer, shared by all its clones.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) requests: AtomicU64,
    pub(crate) retries: AtomicU64,
    pub(crate) successes_after_retry: AtomicU64,
    pub(crate) exhausted: AtomicU64,
    pub(crate) budget_exhausted: AtomicU64,
    pub(crate) total_delay_nanos: AtomicU64,
    pub(crate) hedges: AtomicU64,
    pub(crate) hedges_won: AtomicU64,
}

/// A snapshot of a retry layer's counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RetryStats {
    /// Requests received.
    pub requests: u64,
    /// Attempts sent (requests plus retries plus hedged copies).
    pub attempts: u64,
    /// Attempts made beyond the first.
    pub retries: u64,
    /// Requests that succeeded after at least one retry.
    pub successes_after_retry: u64,
    /// Requests that still failed when they ran out of retries.
    pub exhausted: u64,
    /// Retries (and hedged copies) not made because the budget was spent.
    pub budget_exhausted: u64,
    /// Time spent waiting between attempts, in all.
    pub total_delay: Duration,
    /// Hedged copies sent beyond each call's first.
    pub hedges: u64,
    /// Hedged calls whose answer came from a copy other than the first.
    pub hedges_won: u64,
}

// === impl Counters ===

impl Counters {
    /// The counts so far.
    pub(crate) fn snapshot(&self) -> RetryStats {
        let requests = self.requests.load(Ordering::Relaxed);
        let retries = self.retries.load(Ordering::Relaxed);
        let hedges = self.hedges.load(Ordering::Relaxed);
        RetryStats {
            requests,
            attempts: requests + retries + hedges,
            retries,
            successes_after_retry: self.successes_after_retry.load(Ordering::Relaxed),
            exhausted: self.exhausted.load(Ordering::Relaxed),
            budget_exhausted: self.budget_exhausted.load(Ordering::Relaxed),
            total_delay: Duration::from_nanos(self.total_delay_nanos.load(Ordering::Relaxed)),
            hedges,
            hedges_won: self.hedges_won.load(Ordering::Relaxed),
        }
    }
}
