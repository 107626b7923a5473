//! Per-thread lanes for state every call writes: a counter split over
//! cache lines, each thread adding to its own, so that two cores counting
//! calls do not pass one line back and forth. Reading the total sums the
//! lanes, which only rare readers do (a drain, a scrape).

use std::sync::atomic::{AtomicUsize, Ordering};

/// Lanes per counter: enough that threads seldom share one.
pub(crate) const LANES: usize = 8;

/// A value alone on its cache line (128 bytes: two lines are fetched
/// together on common x86 parts).
#[derive(Debug, Default)]
#[repr(align(128))]
pub(crate) struct Padded<T>(pub(crate) T);

/// A count of things in progress, added to and taken from on whichever
/// thread: each lane wraps on its own, and the sum of the lanes is exact.
#[derive(Debug, Default)]
pub(crate) struct LaneCount {
    lanes: [Padded<AtomicUsize>; LANES],
}

// === impl LaneCount ===

impl LaneCount {
    /// Counts one in, on this thread's lane.
    pub(crate) fn add(&self, order: Ordering) {
        self.lanes[this_thread_lane()].0.fetch_add(1, order);
    }

    /// Counts one out, on this thread's lane (not necessarily the lane it
    /// was counted in on: only the sum means anything).
    pub(crate) fn sub(&self, order: Ordering) {
        self.lanes[this_thread_lane()].0.fetch_sub(1, order);
    }

    /// The count now. The lanes are read one after the other, so a thing
    /// counted in on a lane already read and out on one not read yet makes
    /// the sum one short for that moment: a sum below zero reads as zero.
    /// Once nothing is counted in any more (a closed client's drain), the
    /// sum is never below the truth.
    pub(crate) fn sum(&self, order: Ordering) -> usize {
        let sum = self
            .lanes
            .iter()
            .fold(0, |sum: usize, lane| sum.wrapping_add(lane.0.load(order)));
        usize::try_from(sum as isize).unwrap_or(0)
    }
}

/// This thread's lane: a number fixed per thread, spreading threads over
/// the lanes.
pub(crate) fn this_thread_lane() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static LANE: usize = NEXT.fetch_add(1, Ordering::Relaxed) % LANES;
    }
    LANE.with(|lane| *lane)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_taken_out_on_another_thread_still_sum_to_the_truth() {
        let count = std::sync::Arc::new(LaneCount::default());
        for _ in 0..5 {
            count.add(Ordering::SeqCst);
        }
        let elsewhere = std::sync::Arc::clone(&count);
        std::thread::spawn(move || {
            for _ in 0..3 {
                elsewhere.sub(Ordering::SeqCst);
            }
        })
        .join()
        .expect("thread");
        assert_eq!(count.sum(Ordering::SeqCst), 2);
    }

    /// What a reader sees when it read the lane a call came in on before
    /// the call, and the lane it left on after: one out, none in.
    #[test]
    fn a_sum_caught_between_a_call_s_two_lanes_reads_zero_not_a_wrapped_count() {
        let count = LaneCount::default();
        count.sub(Ordering::SeqCst);
        assert_eq!(count.sum(Ordering::SeqCst), 0);
        count.add(Ordering::SeqCst);
        count.add(Ordering::SeqCst);
        assert_eq!(count.sum(Ordering::SeqCst), 1);
    }
}
