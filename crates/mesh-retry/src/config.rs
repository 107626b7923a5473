//! [`RetryConfig`]: validated retry settings.

use std::time::Duration;

use http::StatusCode;
use mesh_core::{FailureKind, MeshError, StatusSet};

use crate::backoff::Backoff;

/// Which failures are retried, how often, and how far apart.
///
/// ```
/// use std::time::Duration;
/// use mesh_retry::{Backoff, RetryConfig};
///
/// let config = RetryConfig::builder()
///     .max_retries(3)
///     .backoff(Backoff::constant(Duration::from_millis(10)))
///     .build()?;
/// assert_eq!(config.max_retries(), 3);
/// assert!(config.retries_status(http::StatusCode::SERVICE_UNAVAILABLE));
/// assert!(!config.retries_status(http::StatusCode::NOT_FOUND));
/// # Ok::<(), mesh_core::MeshError>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RetryConfig {
    max_retries: u32,
    backoff: Backoff,
    retryable_statuses: StatusSet,
    retry_non_idempotent: bool,
}

impl RetryConfig {
    /// The design document's retryable statuses: 408, 429, 500, 502, 503, 504.
    pub const DEFAULT_RETRYABLE_STATUSES: [u16; 6] = [408, 429, 500, 502, 503, 504];

    /// Starts from the defaults: 2 retries (3 attempts), a 25 ms constant
    /// backoff, the default statuses, idempotent requests only.
    pub fn builder() -> RetryConfigBuilder {
        RetryConfigBuilder {
            config: RetryConfig::default(),
        }
    }

    /// Retries after the first attempt.
    pub fn max_retries(&self) -> u32 {
        self.max_retries
    }

    /// The backoff schedule.
    pub fn backoff(&self) -> &Backoff {
        &self.backoff
    }

    /// Whether a response with `status` is retried.
    pub fn retries_status(&self, status: StatusCode) -> bool {
        self.retryable_statuses.contains(status)
    }

    /// Whether an error of `kind` is retried: connect errors, resets,
    /// timeouts and open circuits are; other errors are not, since
    /// sending the same request again would fail the same way.
    pub fn retries_error(&self, kind: FailureKind) -> bool {
        matches!(
            kind,
            FailureKind::Connect
                | FailureKind::Timeout
                | FailureKind::Reset
                | FailureKind::CircuitOpen
        )
    }

    /// Whether requests with non-idempotent methods (POST, PATCH...) and no
    /// `Idempotency-Key` header are retried too.
    pub fn retry_non_idempotent(&self) -> bool {
        self.retry_non_idempotent
    }
}

impl Default for RetryConfig {
    fn default() -> Self {
        RetryConfig {
            max_retries: 2,
            backoff: Backoff::default(),
            retryable_statuses: Self::DEFAULT_RETRYABLE_STATUSES
                .iter()
                .filter_map(|c| StatusCode::from_u16(*c).ok())
                .collect(),
            retry_non_idempotent: false,
        }
    }
}

/// Builds a [`RetryConfig`].
#[derive(Clone, Debug)]
pub struct RetryConfigBuilder {
    config: RetryConfig,
}

impl RetryConfigBuilder {
    /// Retries at most `n` times after the first attempt.
    pub fn max_retries(mut self, n: u32) -> Self {
        self.config.max_retries = n;
        self
    }

    /// Waits according to `backoff` before each retry.
    pub fn backoff(mut self, backoff: Backoff) -> Self {
        self.config.backoff = backoff;
        self
    }

    /// Retries exactly the responses with these statuses.
    pub fn retryable_statuses(mut self, statuses: impl IntoIterator<Item = StatusCode>) -> Self {
        self.config.retryable_statuses = statuses.into_iter().collect();
        self
    }

    /// Retries non-idempotent requests too (only if the upstream tolerates
    /// duplicates).
    pub fn retry_non_idempotent(mut self, yes: bool) -> Self {
        self.config.retry_non_idempotent = yes;
        self
    }

    /// Validates the settings.
    ///
    /// # Errors
    ///
    /// [`MeshError::InvalidConfig`] when `max_retries` exceeds 100 or a
    /// backoff delay exceeds one hour.
    pub fn build(self) -> Result<RetryConfig, MeshError> {
        let c = self.config;
        if c.max_retries > 100 {
            return Err(MeshError::InvalidConfig {
                what: "retry max_retries".into(),
                reason: format!(
                    "{} is more than 100; a request retried that often is a retry storm",
                    c.max_retries
                ),
            });
        }
        if c.backoff.max_delay() > Duration::from_secs(3600) {
            return Err(MeshError::InvalidConfig {
                what: "retry backoff".into(),
                reason: format!(
                    "a delay of {:?} is more than one hour",
                    c.backoff.max_delay()
                ),
            });
        }
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_follow_the_design_document() {
        let c = RetryConfig::default();
        for code in RetryConfig::DEFAULT_RETRYABLE_STATUSES {
            assert!(c.retries_status(StatusCode::from_u16(code).unwrap()));
        }
        assert!(!c.retries_status(StatusCode::NOT_IMPLEMENTED));
        assert!(!c.retries_error(FailureKind::Other));
        assert!(c.retries_error(FailureKind::Connect));
    }

    #[test]
    fn absurd_values_are_refused_by_name() {
        let err = RetryConfig::builder()
            .max_retries(1000)
            .build()
            .unwrap_err();
        assert!(err.to_string().contains("max_retries"), "{err}");
        let err = RetryConfig::builder()
            .backoff(Backoff::constant(Duration::from_secs(7200)))
            .build()
            .unwrap_err();
        assert!(err.to_string().contains("backoff"), "{err}");
    }
}
