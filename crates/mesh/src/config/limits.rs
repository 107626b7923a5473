//! [`LimitsConfig`]: rate and concurrency limits on calls to a service.

use std::time::Duration;

use mesh_core::ConfigError;
use serde::{Deserialize, Serialize};

/// Limits on calls to a service: over them, a call is refused at once
/// with [`mesh_core::MeshError::LimitExceeded`] rather than queued.
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
        Ok(())
    }
}
