//! [`BreakerConfig`]: validated breaker settings.

use std::time::Duration;

use mesh_core::MeshError;

/// When a circuit opens and for how long. Built with
/// [`BreakerConfig::builder`], which refuses values that make no sense.
///
/// ```
/// use std::time::Duration;
/// use mesh_breaker::BreakerConfig;
///
/// let config = BreakerConfig::builder()
///     .consecutive_failures(5)
///     .open_duration(Duration::from_secs(30))
///     .build()?;
/// assert_eq!(config.consecutive_failures(), 5);
///
/// assert!(BreakerConfig::builder().consecutive_failures(0).build().is_err());
/// # Ok::<(), mesh_core::MeshError>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BreakerConfig {
    consecutive_failures: u32,
    open_duration: Duration,
}

impl BreakerConfig {
    /// The default number of consecutive failures that opens a circuit.
    pub const DEFAULT_CONSECUTIVE_FAILURES: u32 = 5;
    /// The default time a circuit stays open before probing.
    pub const DEFAULT_OPEN_DURATION: Duration = Duration::from_secs(30);

    /// Starts from the defaults (5 consecutive failures, 30 s open).
    pub fn builder() -> BreakerConfigBuilder {
        BreakerConfigBuilder {
            config: BreakerConfig::default(),
        }
    }

    /// Consecutive failures that open the circuit (at least 1).
    pub fn consecutive_failures(&self) -> u32 {
        self.consecutive_failures
    }

    /// How long an open circuit refuses calls before letting a probe
    /// through (the design document's `resetTimeout`).
    pub fn open_duration(&self) -> Duration {
        self.open_duration
    }
}

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig {
            consecutive_failures: Self::DEFAULT_CONSECUTIVE_FAILURES,
            open_duration: Self::DEFAULT_OPEN_DURATION,
        }
    }
}

/// Builds a [`BreakerConfig`].
#[derive(Clone, Debug)]
pub struct BreakerConfigBuilder {
    config: BreakerConfig,
}

impl BreakerConfigBuilder {
    /// Opens the circuit after this many consecutive failures.
    pub fn consecutive_failures(mut self, n: u32) -> Self {
        self.config.consecutive_failures = n;
        self
    }

    /// Keeps an open circuit open this long.
    pub fn open_duration(mut self, d: Duration) -> Self {
        self.config.open_duration = d;
        self
    }

    /// Validates the settings.
    ///
    /// # Errors
    ///
    /// [`MeshError::InvalidConfig`] when `consecutive_failures` is 0 or
    /// `open_duration` is zero or over a day.
    pub fn build(self) -> Result<BreakerConfig, MeshError> {
        let c = self.config;
        if c.consecutive_failures == 0 {
            return Err(MeshError::InvalidConfig {
                what: "breaker consecutive_failures".into(),
                reason: "must be at least 1 (0 would open the circuit before any call)".into(),
            });
        }
        if c.open_duration.is_zero() || c.open_duration > Duration::from_secs(86_400) {
            return Err(MeshError::InvalidConfig {
                what: "breaker open_duration".into(),
                reason: format!(
                    "{:?} is out of range: use more than 0 and at most 24h",
                    c.open_duration
                ),
            });
        }
        Ok(c)
    }
}
