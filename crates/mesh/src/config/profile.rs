//! [`Profile`]: the defaults a configuration starts from, strict or
//! relaxed, before the sections written in the file override them.

use std::time::Duration;

use mesh_breaker::{BreakerConfig, BreakerScope};
use mesh_core::ConfigError;
use mesh_retry::{Backoff, Jitter, RetryConfig};
use serde::{Deserialize, Serialize};

use super::retry::{deadline_for, retry_after_for};

/// How strict the defaults are (the design document's environment
/// profiles). Sections written in the file override them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Profile {
    /// Relaxed: long timeouts, one retry, a breaker that trips only on a
    /// long run of failures, so a developer's flaky laptop stack keeps
    /// answering.
    Development,
    /// Production-like: production's settings, to find problems before
    /// production does.
    Staging,
    /// Strict: short timeouts, retries within a budget, per-endpoint
    /// breakers on failure rate.
    #[default]
    Production,
}

// === impl Profile ===

impl Profile {
    /// The per-attempt timeout.
    pub fn timeout(self) -> Duration {
        match self {
            Profile::Development => Duration::from_secs(30),
            Profile::Staging | Profile::Production => Duration::from_secs(5),
        }
    }

    /// The retry defaults for the profile's own per-attempt timeout.
    pub fn retry(self) -> Result<RetryConfig, ConfigError> {
        self.retry_within(self.timeout())
    }

    /// The retry defaults for calls whose attempts may take `attempt`:
    /// the whole call bounded by [`deadline_for`] it, a server's
    /// `Retry-After` honoured only up to [`retry_after_for`] it.
    pub fn retry_within(self, attempt: Duration) -> Result<RetryConfig, ConfigError> {
        let builder = match self {
            Profile::Development => RetryConfig::builder()
                .max_retries(1)
                .backoff(Backoff::constant(Duration::from_millis(100))),
            // Jittered in full, as a `[retry]` section is by default: many
            // clients failing at once must not retry in step.
            Profile::Staging | Profile::Production => RetryConfig::builder()
                .max_retries(2)
                .backoff(Backoff::exponential(Duration::from_millis(50), 2.0).jitter(Jitter::Full))
                .budget(20.0, 10, Duration::from_secs(10)),
        };
        builder
            .deadline(deadline_for(attempt))
            .max_retry_after(retry_after_for(attempt))
            .build()
    }

    /// The breaker defaults: per endpoint, so one bad instance is ejected
    /// rather than the whole service refused.
    pub fn breaker(self) -> Result<BreakerConfig, ConfigError> {
        let base = match self {
            Profile::Development => BreakerConfig::builder()
                .consecutive_failures(20)
                .no_failure_rate()
                .open_duration(Duration::from_secs(5)),
            Profile::Staging | Profile::Production => BreakerConfig::builder()
                .consecutive_failures(5)
                .failure_rate_threshold(50.0)
                .minimum_calls(20)
                .open_duration(Duration::from_secs(30)),
        };
        base.scope(BreakerScope::Endpoint).build()
    }
}
