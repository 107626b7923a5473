//! Per-service call limits: a concurrency cap (a semaphore) and a rate
//! (governor's GCRA token bucket), both refusing at once when full.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use mesh_core::{MeshError, ServiceName};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::config::LimitsConfig;

/// One service's limits, shared by every call to it (through its
/// `ServiceState`).
#[derive(Debug)]
pub(crate) struct Limits {
    concurrency: Option<(Arc<Semaphore>, u32)>,
    rate: Option<(DefaultDirectRateLimiter, u32, Duration)>,
}

/// Held for the duration of a call.
pub(crate) struct Admission {
    _permit: Option<OwnedSemaphorePermit>,
}

// === impl Limits ===

impl Limits {
    /// The limits `config` sets: a semaphore for `concurrency`, a token
    /// bucket for `requests` per `per`.
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
        Limits { concurrency, rate }
    }

    /// Admits a call or refuses it at once, naming the limit.
    pub(crate) fn admit(&self, service: &ServiceName) -> Result<Admission, MeshError> {
        if let Some((limiter, n, per)) = &self.rate {
            if limiter.check().is_err() {
                return Err(MeshError::LimitExceeded {
                    service: service.clone(),
                    limit: format!("{n} calls per {per:?}"),
                });
            }
        }
        let permit = match &self.concurrency {
            None => None,
            Some((semaphore, n)) => match Arc::clone(semaphore).try_acquire_owned() {
                Ok(permit) => Some(permit),
                Err(_) => {
                    return Err(MeshError::LimitExceeded {
                        service: service.clone(),
                        limit: format!("{n} calls in flight"),
                    })
                }
            },
        };
        Ok(Admission { _permit: permit })
    }
}
