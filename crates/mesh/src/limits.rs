//! Per-service call limits: a concurrency cap (a semaphore) and a rate
//! (governor's GCRA token bucket). Over a limit a call is refused at once,
//! or, with `max_wait`, waits in a bounded queue for a slot or a permit
//! (a bulkhead), never past `max_wait` nor the call's deadline.

use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use governor::clock::Clock;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use mesh_core::{MeshError, ServiceName};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use crate::config::LimitsConfig;

/// One service's limits, shared by every call to it (through its
/// `ServiceState`).
#[derive(Debug)]
pub(crate) struct Limits {
    concurrency: Option<(Arc<Semaphore>, u32)>,
    rate: Option<(DefaultDirectRateLimiter, u32, Duration)>,
    queue: Option<Queue>,
}

/// Calls waiting for a slot or a permit: at most `capacity`, each for at
/// most `max_wait`.
#[derive(Debug)]
struct Queue {
    max_wait: Duration,
    capacity: u32,
    waiting: AtomicU32,
}

/// A place in the queue, given back when dropped (admitted, timed out, or
/// the call cancelled).
struct Place<'a>(&'a AtomicU32);

/// When a call's deadline falls, and the limit it came from (the call's
/// timeout, as a [`MeshError::Timeout`] names it).
#[derive(Clone, Copy, Debug)]
pub(crate) struct CallDeadline {
    pub(crate) at: Instant,
    pub(crate) limit: Duration,
}

/// How long a call waits in the queue, and whether its deadline is what
/// ends the wait (then running out is a timeout, not a refusal).
struct Wait {
    until: Instant,
    deadline: Option<Duration>,
}

/// Held for the duration of a call.
pub(crate) struct Admission {
    _permit: Option<OwnedSemaphorePermit>,
}

// === impl Limits ===

impl Limits {
    /// The limits `config` sets: a semaphore for `concurrency`, a token
    /// bucket for `requests` per `per`, a queue when `max_wait` is set.
    pub(crate) fn new(config: &LimitsConfig) -> Limits {
        let concurrency = config
            .concurrency
            .map(|n| (Arc::new(Semaphore::new(n as usize)), n));
        let rate = config.requests.and_then(|n| {
            let per = config.per.unwrap_or(Duration::from_secs(1));
            let burst = NonZeroU32::new(n)?;
            // One token every per/n, bursts up to n.
            let quota = Quota::with_period(per / n)?.allow_burst(burst);
            Some((RateLimiter::direct(quota), n, per))
        });
        let queue = config.max_wait.map(|max_wait| Queue {
            max_wait,
            capacity: config.queue_capacity(),
            waiting: AtomicU32::new(0),
        });
        Limits {
            concurrency,
            rate,
            queue,
        }
    }

    /// Admits a call: at once when under every limit; else, with a queue,
    /// after waiting for room at most `max_wait` (and no later than
    /// `deadline`); else refused, naming the limit. A wait for a slot that
    /// lasts to the call's deadline fails as the call's timeout.
    pub(crate) async fn admit(
        &self,
        service: &ServiceName,
        deadline: Option<CallDeadline>,
    ) -> Result<Admission, MeshError> {
        let queued = self.queue.as_ref().map(|q| q.wait(deadline));
        // One place in the queue for the whole admission, taken on the
        // first wait: a call waiting for a permit, then for a slot, is
        // one waiter, never refused as "queue full" by itself.
        let mut place = None;
        if let Some((limiter, n, per)) = &self.rate {
            let refused = || exceeded(service, format!("{n} calls per {per:?}"));
            if limiter.check().is_err() {
                let (queue, wait) = queued.as_ref().ok_or_else(refused)?;
                place = Some(queue.enter().ok_or_else(|| queue.full(service))?);
                wait_for_permit(limiter, wait.until)
                    .await
                    .ok_or_else(refused)?;
            }
        }
        let permit = match &self.concurrency {
            None => None,
            Some((semaphore, n)) => {
                let refused = || exceeded(service, format!("{n} calls in flight"));
                match Arc::clone(semaphore).try_acquire_owned() {
                    Ok(permit) => Some(permit),
                    Err(_) => {
                        let (queue, wait) = queued.as_ref().ok_or_else(refused)?;
                        if place.is_none() {
                            place = Some(queue.enter().ok_or_else(|| queue.full(service))?);
                        }
                        let acquire = Arc::clone(semaphore).acquire_owned();
                        match tokio::time::timeout_at(wait.until, acquire).await {
                            Ok(Ok(permit)) => Some(permit),
                            _ => return Err(wait.gave_up(refused())),
                        }
                    }
                }
            }
        };
        drop(place);
        Ok(Admission { _permit: permit })
    }
}

/// Waits until `limiter` grants a permit, giving up (`None`) when the next
/// one would come after `until`.
async fn wait_for_permit(limiter: &DefaultDirectRateLimiter, until: Instant) -> Option<()> {
    loop {
        let next = match limiter.check() {
            Ok(()) => return Some(()),
            Err(not_until) => not_until.wait_time_from(limiter.clock().now()),
        };
        let at = Instant::now() + next;
        if at > until {
            return None;
        }
        tokio::time::sleep_until(at).await;
    }
}

fn exceeded(service: &ServiceName, limit: String) -> MeshError {
    MeshError::LimitExceeded {
        service: service.clone(),
        limit,
    }
}

// === impl Wait ===

impl Wait {
    /// Why a wait that ran out failed: the call's timeout when its
    /// deadline ended it, else `refused`.
    fn gave_up(&self, refused: MeshError) -> MeshError {
        match self.deadline {
            Some(after) => MeshError::Timeout { after },
            None => refused,
        }
    }
}

// === impl Queue ===

impl Queue {
    /// When a call arriving now stops waiting: after `max_wait`, or at its
    /// deadline if sooner.
    fn wait(&self, deadline: Option<CallDeadline>) -> (&Queue, Wait) {
        let own = Instant::now() + self.max_wait;
        let wait = match deadline {
            Some(d) if d.at < own => Wait {
                until: d.at,
                deadline: Some(d.limit),
            },
            _ => Wait {
                until: own,
                deadline: None,
            },
        };
        (self, wait)
    }

    /// A place in the queue, unless it is full.
    fn enter(&self) -> Option<Place<'_>> {
        self.waiting
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.capacity).then_some(n + 1)
            })
            .ok()
            .map(|_| Place(&self.waiting))
    }

    fn full(&self, service: &ServiceName) -> MeshError {
        exceeded(
            service,
            format!("its queue of {} waiting calls", self.capacity),
        )
    }
}

impl Drop for Place<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}
