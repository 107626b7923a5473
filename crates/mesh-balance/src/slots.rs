//! [`Slots`]: wakes requests waiting for a connection slot when a call
//! ends, instead of having them look again on a timer.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::sync::futures::OwnedNotified;
use tokio::sync::Notify;

/// Shared by a balancer's calls (which free slots) and its waiting
/// requests (which want one).
#[derive(Debug, Default)]
pub(crate) struct Slots {
    /// Requests waiting now: a call's end wakes anyone only while some
    /// wait, so the healthy path takes no lock.
    waiting: AtomicUsize,
    freed: Arc<Notify>,
}

impl Slots {
    /// A call ended and its slot is free: wakes every waiter to look again
    /// (the pick decides which of them gets it).
    pub(crate) fn freed(&self) {
        if self.waiting.load(Ordering::SeqCst) > 0 {
            self.freed.notify_waiters();
        }
    }

    /// A wakeup for the next freed slot; enable it before looking for a
    /// slot, so one freed in between still wakes.
    pub(crate) fn next_freed(&self) -> OwnedNotified {
        Arc::clone(&self.freed).notified_owned()
    }
}

/// Counts one waiting request for as long as it lives.
#[derive(Debug)]
pub(crate) struct Waiter(Arc<Slots>);

impl Waiter {
    pub(crate) fn new(slots: Arc<Slots>) -> Waiter {
        slots.waiting.fetch_add(1, Ordering::SeqCst);
        Waiter(slots)
    }

    pub(crate) fn slots(&self) -> &Slots {
        &self.0
    }
}

impl Drop for Waiter {
    fn drop(&mut self) {
        self.0.waiting.fetch_sub(1, Ordering::SeqCst);
    }
}
