//! Deadlines on a timer: OPEN ending (with automatic half-open) and
//! HALF_OPEN's maximum wait (which starts with its first probe) apply when
//! they fall due, not on the next call.
//!
//! One tokio task per breaker that has a deadline pending, none per
//! request and none for a closed breaker. The task holds only a [`Weak`]
//! reference: a breaker evicted from its registry, or whose layer was
//! dropped, wakes it (the breaker's `Drop`) and it ends at once; it also
//! ends as soon as its breaker has no deadline left (a HALF_OPEN that no
//! probe has reached has none, so an idle endpoint keeps no task). A
//! transition that moves the deadline (a new trip, a manual open) wakes it
//! to read the new one, rather than starting a second task; so does the
//! first probe of a HALF_OPEN, which starts its maximum wait.
//!
//! Without a tokio runtime where the breaker changes state, no task is
//! started; the deadlines then apply on the next call, as they always
//! also do.

use std::future::Future;
use std::pin::pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::task::Poll;

use mesh_core::clock::{self, Nanos};
use mesh_core::Endpoint;
use tokio::sync::Notify;

use crate::circuit::Transition;
use crate::registry::Entry;

/// The timer state of one breaker.
#[derive(Debug, Default)]
pub(crate) struct Timer {
    /// A task is watching this breaker's deadlines.
    armed: AtomicBool,
    /// Wakes the task: the deadline moved, or the breaker is gone.
    wake: Arc<Notify>,
}

impl Drop for Timer {
    fn drop(&mut self) {
        // The breaker is gone: let its task see so now, not at its
        // deadline.
        self.wake.notify_one();
    }
}

// === impl Entry ===

impl Entry {
    /// Publishes `t` (a new OPEN deadline alone publishes nothing), applies
    /// it to the endpoint's live state, and makes sure a timer watches the
    /// circuit's next deadline.
    pub(crate) fn announce(
        self: &Arc<Self>,
        endpoint: Option<&Endpoint>,
        t: Transition,
        now: Nanos,
    ) {
        self.outcomes
            .announce(self.service.as_ref(), endpoint, t, now);
        watch(self);
    }

    /// Makes sure a timer watches a deadline set without a transition (the
    /// first probe of a HALF_OPEN that had none starts its maximum wait).
    pub(crate) fn watch_deadline(self: &Arc<Self>) {
        watch(self);
    }
}

/// Starts (or wakes) the task that applies `entry`'s next deadline.
fn watch(entry: &Arc<Entry>) {
    if entry.circuit.next_deadline().is_none() {
        if entry.timer.armed.load(Ordering::Acquire) {
            // Nothing left to wait for: let the task end now.
            entry.timer.wake.notify_one();
        }
        return;
    }
    if entry.timer.armed.swap(true, Ordering::AcqRel) {
        // Already watched: have it read the (maybe earlier) deadline.
        entry.timer.wake.notify_one();
        return;
    }
    match tokio::runtime::Handle::try_current() {
        Ok(runtime) => {
            runtime.spawn(run(Arc::downgrade(entry), Arc::clone(&entry.timer.wake)));
        }
        // No runtime here: the next call applies the deadline.
        Err(_) => entry.timer.armed.store(false, Ordering::Release),
    }
}

/// The task: sleep until the deadline (or a wake), apply it, repeat while
/// there is one.
async fn run(entry: Weak<Entry>, wake: Arc<Notify>) {
    loop {
        let deadline = {
            let Some(entry) = entry.upgrade() else {
                return;
            };
            let now = clock::now();
            if let Some(t) = entry.circuit.expire(now) {
                let endpoint = entry.endpoint.get().cloned();
                entry.announce(endpoint.as_ref(), t, now);
            }
            match entry.circuit.next_deadline() {
                Some(deadline) => deadline,
                None => {
                    entry.timer.armed.store(false, Ordering::Release);
                    // A deadline set between the look and the store found
                    // the timer still armed and only woke it: take it.
                    if entry.circuit.next_deadline().is_some()
                        && !entry.timer.armed.swap(true, Ordering::AcqRel)
                    {
                        continue;
                    }
                    return;
                }
            }
        };
        let mut sleep = pin!(tokio::time::sleep_until(tokio::time::Instant::from_std(
            deadline.to_instant()
        )));
        let mut woken = pin!(wake.notified());
        std::future::poll_fn(|cx| {
            if sleep.as_mut().poll(cx).is_ready() || woken.as_mut().poll(cx).is_ready() {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        })
        .await;
    }
}
