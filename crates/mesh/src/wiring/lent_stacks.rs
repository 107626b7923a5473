//! A route's stack lent to a call instead of cloned for it.
//!
//! `tower` hands a call `&mut` access to a service, so a shared stack is
//! usually cloned per call (`clone().oneshot(req)`). A whole stack is a
//! dozen `Arc`s (each layer's state, the transport), and on a busy client
//! every clone and drop of them is an atomic write to a cache line the
//! other cores write too. But the facade's layers are ready as soon as
//! their transport is, which always is, and `call` returns a future that
//! owns what it needs. So a call can borrow a stack for the instant of
//! `poll_ready` and `call`: the route keeps a few clones, one per lane, and
//! a thread takes its own lane's (cores rarely meet on one). A slot found
//! busy, or a stack not ready at once, falls back to a clone.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Mutex, TryLockError};
use std::task::{Context, Poll, Waker};

use tower::util::Oneshot;
use tower::{Service, ServiceExt};

use crate::lanes::{this_thread_lane, Padded, LANES};

/// Clones of one stack, each lent to one call at a time.
pub(crate) struct LentStacks<S> {
    slots: Box<[Slot<S>]>,
    /// Cloned for a call when its thread's slot is busy.
    spare: S,
}

/// One clone, alone on its cache line so that two threads using two
/// slots do not write the same line.
type Slot<S> = Padded<Mutex<S>>;

pin_project_lite::pin_project! {
    /// One call on a lent stack, or on a clone when none could be lent.
    #[project = CallProj]
    pub(crate) enum LentCall<S, R>
    where
        S: Service<R>,
    {
        /// Called on a lent stack.
        Lent { #[pin] future: S::Future },
        /// Called on a clone (boxed: rare, and the clone would make every
        /// call's future larger).
        Cloned { future: Pin<Box<Oneshot<S, R>>> },
    }
}

// === impl LentStacks ===

impl<S: Clone> LentStacks<S> {
    /// A clone of `stack` per lane, and one kept to clone from.
    pub(crate) fn new(stack: &S) -> Self {
        let slots = (0..LANES)
            .map(|_| Padded(Mutex::new(stack.clone())))
            .collect();
        LentStacks {
            slots,
            spare: stack.clone(),
        }
    }

    /// Sends `req` through this thread's slot's stack if it is free and
    /// ready now, else through a clone. The stack is called here, not at
    /// the first poll: a future that waited to call would hold the request
    /// until then and move the stack's future (about a kilobyte) into
    /// itself. Each branch builds the call it returns: no `Result` wraps
    /// the stack's future (about a kilobyte) on its way out, which would
    /// be one more copy of it.
    pub(crate) fn oneshot<R>(&self, req: R) -> LentCall<S, R>
    where
        S: Service<R>,
    {
        let slot = &self.slots[this_thread_lane()].0;
        let mut stack = match slot.try_lock() {
            Ok(stack) => stack,
            // A stack whose call panicked is still whole: each call owns
            // its future, and the layers keep no per-call state.
            Err(TryLockError::Poisoned(poisoned)) => poisoned.into_inner(),
            Err(TryLockError::WouldBlock) => return self.cloned(req),
        };
        // A stack not ready at once is waited on through a clone, which
        // registers the caller's own waker.
        let mut cx = Context::from_waker(Waker::noop());
        match stack.poll_ready(&mut cx) {
            Poll::Ready(Ok(())) => LentCall::Lent {
                future: stack.call(req),
            },
            Poll::Ready(Err(_)) | Poll::Pending => {
                drop(stack);
                self.cloned(req)
            }
        }
    }

    /// Sends `req` through a clone of the stack.
    fn cloned<R>(&self, req: R) -> LentCall<S, R>
    where
        S: Service<R>,
    {
        LentCall::Cloned {
            future: Box::pin(self.spare.clone().oneshot(req)),
        }
    }
}

// === impl LentCall ===

impl<S, R> Future for LentCall<S, R>
where
    S: Service<R> + Clone,
{
    type Output = Result<S::Response, S::Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            CallProj::Lent { future } => future.poll(cx),
            CallProj::Cloned { future } => future.as_mut().poll(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::convert::Infallible;
    use std::future::{ready, Ready};
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::Arc;

    /// Answers with its own clone number; ready when `ready` says so.
    #[derive(Clone)]
    struct Numbered {
        ready: Arc<AtomicBool>,
        calls: Arc<AtomicUsize>,
    }

    impl Service<u32> for Numbered {
        type Response = u32;
        type Error = Infallible;
        type Future = Ready<Result<u32, Infallible>>;

        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
            if self.ready.load(Ordering::Relaxed) {
                Poll::Ready(Ok(()))
            } else {
                Poll::Pending
            }
        }

        fn call(&mut self, req: u32) -> Self::Future {
            self.calls.fetch_add(1, Ordering::Relaxed);
            ready(Ok(req + 1))
        }
    }

    fn numbered(ready: bool) -> Numbered {
        Numbered {
            ready: Arc::new(AtomicBool::new(ready)),
            calls: Arc::new(AtomicUsize::new(0)),
        }
    }

    #[tokio::test]
    async fn a_ready_stack_is_lent_not_cloned() {
        let stack = numbered(true);
        let lent = LentStacks::new(&stack);
        let call = lent.oneshot(41);
        assert_eq!(
            stack.calls.load(Ordering::Relaxed),
            1,
            "called when the call is made"
        );
        let clones = Arc::strong_count(&stack.calls);
        assert_eq!(call.await, Ok(42));
        assert_eq!(stack.calls.load(Ordering::Relaxed), 1);
        assert_eq!(Arc::strong_count(&stack.calls), clones, "no clone was made");
    }

    #[tokio::test]
    async fn a_stack_not_ready_is_waited_on_through_a_clone() {
        let stack = numbered(false);
        let lent = LentStacks::new(&stack);
        let mut call = Box::pin(lent.oneshot(7));
        let first = std::future::poll_fn(|cx| Poll::Ready(call.as_mut().poll(cx))).await;
        assert!(first.is_pending());
        stack.ready.store(true, Ordering::Relaxed);
        assert_eq!(call.await, Ok(8));
        assert_eq!(stack.calls.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn a_busy_slot_sends_through_a_clone() {
        let stack = numbered(true);
        let lent = LentStacks::new(&stack);
        let slot = &lent.slots[this_thread_lane()].0;
        let held = slot.lock().expect("slot");
        let mut call = Box::pin(lent.oneshot(7));
        let first = call.as_mut().poll(&mut Context::from_waker(Waker::noop()));
        drop(held);
        assert_eq!(first, Poll::Ready(Ok(8)));
        assert_eq!(stack.calls.load(Ordering::Relaxed), 1);
    }
}
