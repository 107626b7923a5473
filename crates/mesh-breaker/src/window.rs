//! Rolling windows of call outcomes, lock-free.
//!
//! Both windows answer "how many calls, failures and slow calls lately?"
//! without a lock and without allocating after construction:
//!
//! - [`CountWindow`]: the last N calls in a ring of one-byte slots. A call
//!   claims a slot with one `fetch_add` and swaps its outcome in; the
//!   failure and slow totals change only when the outcome differs from the
//!   one it replaces, so a healthy stream of calls writes two atomics.
//! - [`TimeWindow`]: fixed buckets, each stamped with the time slice it
//!   counts. A call adds to its slice's bucket, resetting it first if the
//!   bucket still holds an older slice. Buckets older than the window are
//!   skipped when reading. A bucket being reset is marked as such until its
//!   counts are zeroed, so no reader sees old counts under a new stamp;
//!   a call that meets a bucket mid-reset is not counted. Counts are exact
//!   otherwise.

use std::sync::atomic::{AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::time::Duration;

use mesh_core::clock::Nanos;

use crate::config::WindowConfig;

const FAILED: u8 = 1;
/// A time-window bucket whose counts are being zeroed.
const RESETTING: u64 = u64::MAX - 1;
const SLOW: u8 = 2;

/// Counts over a window at one moment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WindowCounts {
    /// Calls in the window.
    pub calls: u32,
    /// Failed calls in the window.
    pub failures: u32,
    /// Slow calls in the window (failed or not).
    pub slow: u32,
}

impl WindowCounts {
    /// Failed calls in percent, if there was any call.
    pub fn failure_rate(&self) -> Option<f64> {
        (self.calls > 0).then(|| 100.0 * f64::from(self.failures) / f64::from(self.calls))
    }

    /// Slow calls in percent, if there was any call.
    pub fn slow_call_rate(&self) -> Option<f64> {
        (self.calls > 0).then(|| 100.0 * f64::from(self.slow) / f64::from(self.calls))
    }
}

/// A rolling window, by count or by time.
#[derive(Debug)]
pub(crate) enum Window {
    Count(CountWindow),
    Time(TimeWindow),
}

impl Window {
    pub(crate) fn new(config: WindowConfig) -> Window {
        match config {
            WindowConfig::Count { size } => Window::Count(CountWindow::new(size)),
            WindowConfig::Time { duration, buckets } => {
                Window::Time(TimeWindow::new(duration, buckets))
            }
        }
    }

    /// Records a call; reads `clock` only for a time window.
    pub(crate) fn record(&self, failed: bool, slow: bool, clock: impl Fn() -> Nanos) {
        match self {
            Window::Count(w) => w.record(failed, slow),
            Window::Time(w) => w.record(failed, slow, clock()),
        }
    }

    /// The counts now; reads `clock` only for a time window.
    pub(crate) fn counts(&self, clock: impl Fn() -> Nanos) -> WindowCounts {
        match self {
            Window::Count(w) => w.counts(),
            Window::Time(w) => w.counts(clock()),
        }
    }

    /// Whether reading the counts could show a rate above zero: lets the
    /// hot path skip evaluation while everything succeeds.
    pub(crate) fn may_have_bad_calls(&self) -> bool {
        match self {
            Window::Count(w) => {
                w.failures.load(Ordering::Relaxed) != 0 || w.slow.load(Ordering::Relaxed) != 0
            }
            // Old successes leaving a time window can raise its rates with
            // no new bad call, so a time window is always evaluated.
            Window::Time(_) => true,
        }
    }

    pub(crate) fn reset(&self) {
        match self {
            Window::Count(w) => w.reset(),
            Window::Time(w) => w.reset(),
        }
    }
}

/// The last `size` calls.
#[derive(Debug)]
pub(crate) struct CountWindow {
    head: AtomicU64,
    slots: Box<[AtomicU8]>,
    failures: AtomicU32,
    slow: AtomicU32,
}

impl CountWindow {
    fn new(size: u32) -> Self {
        CountWindow {
            head: AtomicU64::new(0),
            slots: (0..size.max(1)).map(|_| AtomicU8::new(0)).collect(),
            failures: AtomicU32::new(0),
            slow: AtomicU32::new(0),
        }
    }

    fn record(&self, failed: bool, slow: bool) {
        let outcome = if failed { FAILED } else { 0 } | if slow { SLOW } else { 0 };
        let size = self.slots.len() as u64;
        let index = self.head.fetch_add(1, Ordering::Relaxed) % size;
        // `index < len` by construction; `get` keeps the hot path free of
        // panics all the same.
        let Some(slot) = self.slots.get(index as usize) else {
            return;
        };
        // A healthy stream keeps writing "success" over "success": skip the
        // write then, so steady traffic only bumps the head.
        let old = slot.load(Ordering::Relaxed);
        if old == outcome {
            return;
        }
        let old = slot.swap(outcome, Ordering::Relaxed);
        adjust(&self.failures, old & FAILED != 0, outcome & FAILED != 0);
        adjust(&self.slow, old & SLOW != 0, outcome & SLOW != 0);
    }

    fn counts(&self) -> WindowCounts {
        let size = self.slots.len() as u64;
        WindowCounts {
            calls: self.head.load(Ordering::Relaxed).min(size) as u32,
            failures: self.failures.load(Ordering::Relaxed),
            slow: self.slow.load(Ordering::Relaxed),
        }
    }

    fn reset(&self) {
        for slot in self.slots.iter() {
            slot.store(0, Ordering::Relaxed);
        }
        self.failures.store(0, Ordering::Relaxed);
        self.slow.store(0, Ordering::Relaxed);
        self.head.store(0, Ordering::Relaxed);
    }
}

fn adjust(counter: &AtomicU32, was: bool, is: bool) {
    match (was, is) {
        (false, true) => {
            counter.fetch_add(1, Ordering::Relaxed);
        }
        (true, false) => {
            // Saturating: a reset racing a stale call must not wrap.
            let _ =
                counter.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
        }
        _ => {}
    }
}

/// The calls of the last `duration`, in `buckets` slices.
#[derive(Debug)]
pub(crate) struct TimeWindow {
    slice: u64,
    buckets: Box<[Bucket]>,
}

#[derive(Debug)]
struct Bucket {
    /// The time slice counted (nanos / slice width); `u64::MAX` = empty.
    stamp: AtomicU64,
    calls: AtomicU32,
    failures: AtomicU32,
    slow: AtomicU32,
}

impl TimeWindow {
    fn new(duration: Duration, buckets: u32) -> Self {
        let buckets = buckets.max(1);
        let nanos = u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX);
        TimeWindow {
            slice: (nanos / u64::from(buckets)).max(1),
            buckets: (0..buckets)
                .map(|_| Bucket {
                    stamp: AtomicU64::new(u64::MAX),
                    calls: AtomicU32::new(0),
                    failures: AtomicU32::new(0),
                    slow: AtomicU32::new(0),
                })
                .collect(),
        }
    }

    fn record(&self, failed: bool, slow: bool, now: Nanos) {
        let stamp = now.0 / self.slice;
        let index = (stamp % self.buckets.len() as u64) as usize;
        let Some(bucket) = self.buckets.get(index) else {
            return;
        };
        let seen = bucket.stamp.load(Ordering::Acquire);
        if seen == RESETTING {
            return;
        }
        if seen != stamp {
            // Claim the bucket left over from an older slice, zero it, and
            // only then publish the new slice: readers and writers never
            // see the old counts under the new stamp.
            if bucket
                .stamp
                .compare_exchange(seen, RESETTING, Ordering::AcqRel, Ordering::Acquire)
                .is_err()
            {
                return;
            }
            bucket.calls.store(0, Ordering::Relaxed);
            bucket.failures.store(0, Ordering::Relaxed);
            bucket.slow.store(0, Ordering::Relaxed);
            bucket.stamp.store(stamp, Ordering::Release);
        }
        bucket.calls.fetch_add(1, Ordering::Relaxed);
        if failed {
            bucket.failures.fetch_add(1, Ordering::Relaxed);
        }
        if slow {
            bucket.slow.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn counts(&self, now: Nanos) -> WindowCounts {
        let current = now.0 / self.slice;
        let span = self.buckets.len() as u64;
        let mut counts = WindowCounts::default();
        for bucket in self.buckets.iter() {
            let stamp = bucket.stamp.load(Ordering::Acquire);
            if stamp <= current && current - stamp < span {
                counts.calls = counts
                    .calls
                    .saturating_add(bucket.calls.load(Ordering::Relaxed));
                counts.failures = counts
                    .failures
                    .saturating_add(bucket.failures.load(Ordering::Relaxed));
                counts.slow = counts
                    .slow
                    .saturating_add(bucket.slow.load(Ordering::Relaxed));
            }
        }
        counts
    }

    fn reset(&self) {
        for bucket in self.buckets.iter() {
            bucket.stamp.store(u64::MAX, Ordering::Release);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const S: u64 = 1_000_000_000;

    #[test]
    fn a_count_window_forgets_the_oldest_call() {
        let w = Window::new(WindowConfig::Count { size: 3 });
        w.record(true, false, || Nanos(0));
        w.record(false, true, || Nanos(0));
        w.record(false, false, || Nanos(0));
        assert_eq!(
            w.counts(|| Nanos(0)),
            WindowCounts {
                calls: 3,
                failures: 1,
                slow: 1
            }
        );
        w.record(false, false, || Nanos(0));
        assert_eq!(
            w.counts(|| Nanos(0)),
            WindowCounts {
                calls: 3,
                failures: 0,
                slow: 1
            }
        );
        w.reset();
        assert_eq!(w.counts(|| Nanos(0)), WindowCounts::default());
    }

    #[test]
    fn a_time_window_forgets_slices_older_than_its_duration() {
        let w = Window::new(WindowConfig::Time {
            duration: Duration::from_secs(10),
            buckets: 10,
        });
        w.record(true, false, || Nanos(0));
        w.record(false, false, || Nanos(5 * S));
        assert_eq!(
            w.counts(|| Nanos(9 * S)),
            WindowCounts {
                calls: 2,
                failures: 1,
                slow: 0
            }
        );
        // At 10 s the first slice (0..1 s) has left the window.
        assert_eq!(
            w.counts(|| Nanos(10 * S)),
            WindowCounts {
                calls: 1,
                failures: 0,
                slow: 0
            }
        );
        // A bucket reused for a new slice starts from zero.
        w.record(false, true, || Nanos(10 * S));
        assert_eq!(
            w.counts(|| Nanos(10 * S)),
            WindowCounts {
                calls: 2,
                failures: 0,
                slow: 1
            }
        );
        assert_eq!(w.counts(|| Nanos(30 * S)), WindowCounts::default());
    }

    proptest! {
        /// A count window always holds exactly the last `size` outcomes.
        #[test]
        fn count_window_matches_the_last_n_calls(
            size in 1u32..20,
            calls in proptest::collection::vec((any::<bool>(), any::<bool>()), 0..100),
        ) {
            let w = Window::new(WindowConfig::Count { size });
            for (i, (failed, slow)) in calls.iter().enumerate() {
                w.record(*failed, *slow, || Nanos(0));
                let start = (i + 1).saturating_sub(size as usize);
                let last = &calls[start..=i];
                let expected = WindowCounts {
                    calls: last.len() as u32,
                    failures: last.iter().filter(|c| c.0).count() as u32,
                    slow: last.iter().filter(|c| c.1).count() as u32,
                };
                prop_assert_eq!(w.counts(|| Nanos(0)), expected);
            }
        }

        /// A time window holds exactly the calls of the slices that are
        /// less than `buckets` slices old.
        #[test]
        fn time_window_matches_the_recent_slices(
            calls in proptest::collection::vec((0u64..3_000, any::<bool>()), 0..100),
        ) {
            // 1 s window in 10 slices of 100 ms; times in ms, increasing.
            let w = Window::new(WindowConfig::Time { duration: Duration::from_secs(1), buckets: 10 });
            let mut now_ms = 0u64;
            let mut log: Vec<(u64, bool)> = Vec::new();
            for (step, failed) in calls {
                now_ms += step % 300;
                w.record(failed, false, || Nanos(now_ms * 1_000_000));
                log.push((now_ms, failed));
                let current = now_ms / 100;
                let recent: Vec<_> = log.iter().filter(|(t, _)| current - t / 100 < 10).collect();
                let got = w.counts(|| Nanos(now_ms * 1_000_000));
                prop_assert_eq!(got.calls as usize, recent.len());
                prop_assert_eq!(got.failures as usize, recent.iter().filter(|c| c.1).count());
            }
        }
    }
}
