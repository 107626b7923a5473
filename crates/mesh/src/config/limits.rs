//! [`LimitsConfig`]: rate and concurrency limits on calls to a service.

use std::time::Duration;

use mesh_core::ConfigError;
use serde::{Deserialize, Serialize};

/// Limits on calls to a service: over them, a call is refused at once
/// with [`mesh_core::MeshError::LimitExceeded`], or, with `max_wait`,
/// waits in a bounded queue for a slot or a permit (a bulkhead), never
/// longer than `max_wait` nor past the call's deadline.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    /// Calls in flight at most.
    #[serde(default)]
    pub concurrency: Option<u32>,
    /// Calls per `per` at most (a token bucket: bursts up to `requests`).
    #[serde(default)]
    pub requests: Option<u32>,
    /// The period for `requests` (1 s by default).
    #[serde(default, with = "humantime_serde")]
    pub per: Option<Duration>,
    /// How long a call over a limit may wait for room; unset, it is
    /// refused at once.
    #[serde(default, with = "humantime_serde")]
    pub max_wait: Option<Duration>,
    /// How many calls may wait at once (with `max_wait`); more are refused
    /// at once. Default: the `concurrency` limit, else `requests`.
    #[serde(default)]
    pub queue: Option<u32>,
}

// === impl LimitsConfig ===

impl LimitsConfig {
    /// Checks the limits written at `what` (`limits`,
    /// `services.<name>.limits`); the error names the field.
    pub(super) fn validate(&self, what: &str) -> Result<(), ConfigError> {
        let invalid =
            |field: &str, reason: &str| Err(ConfigError::new(format!("{what}.{field}"), reason));
        if self.concurrency == Some(0) {
            return invalid("concurrency", "must be at least 1");
        }
        if self.requests == Some(0) {
            return invalid("requests", "must be at least 1");
        }
        if let Some(per) = self.per {
            if per.is_zero() || per > Duration::from_secs(3600) {
                return invalid("per", "must be within (0, 1h]");
            }
            if self.requests.is_none() {
                return invalid("per", "needs requests");
            }
        }
        if let Some(n) = self.requests {
            let per = self.per.unwrap_or(Duration::from_secs(1));
            if per.as_nanos() < u128::from(n) {
                return invalid("requests", "more than one call per nanosecond");
            }
        }
        self.validate_queue(what)
    }

    /// `max_wait` and `queue`: a wait needs a limit to wait for, and the
    /// queue is bounded.
    fn validate_queue(&self, what: &str) -> Result<(), ConfigError> {
        let invalid =
            |field: &str, reason: &str| Err(ConfigError::new(format!("{what}.{field}"), reason));
        if let Some(wait) = self.max_wait {
            if wait.is_zero() || wait > Duration::from_secs(3600) {
                return invalid("max_wait", "must be within (0, 1h]");
            }
            if self.concurrency.is_none() && self.requests.is_none() {
                return invalid("max_wait", "needs concurrency or requests to wait for");
            }
        }
        match self.queue {
            Some(_) if self.max_wait.is_none() => {
                invalid("queue", "needs max_wait (without it nothing waits)")
            }
            Some(n) if n == 0 || n > 100_000 => invalid("queue", "must be within 1..=100000"),
            _ => Ok(()),
        }
    }

    /// How many calls may wait at once: `queue`, else the `concurrency`
    /// limit, else `requests`.
    pub(crate) fn queue_capacity(&self) -> u32 {
        self.queue
            .or(self.concurrency)
            .or(self.requests)
            .unwrap_or(1)
            .min(100_000)
    }
}
