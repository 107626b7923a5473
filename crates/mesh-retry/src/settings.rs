//! [`RetrySettings`]: retries as a configuration file writes them.
//!
//! A [`RetryConfig`] holds what code can set (a predicate, error kinds, a
//! per-attempt timeout); a file writes a smaller, flat set of keys. This
//! module owns that file form, so every program reading retries from a file
//! reads the same keys with the same defaults and the same errors.

use std::time::Duration;

use http::StatusCode;
use mesh_core::grpc::{GrpcCode, GrpcCodes};
use mesh_core::ConfigError;
use serde::{Deserialize, Serialize};

use crate::backoff::{Backoff, Jitter, DEFAULT_CAP};
use crate::budget::RetryBudgetConfig;
use crate::config::{check_backoff, RetryConfig, RetryConfigBuilder};
use crate::hedge::HedgingSettings;

/// Which schedule the `backoff` key names; its parameters are the keys
/// `initial`, `multiplier` and `max_delay` beside it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackoffKind {
    /// `initial x multiplier^n` before retry `n` (the default).
    #[default]
    Exponential,
    /// `initial x (n + 1)` before retry `n`.
    Linear,
    /// `initial` before every retry.
    Constant,
    /// `initial x fib(n + 1)` before retry `n`.
    Fibonacci,
}

// === impl BackoffKind ===

impl BackoffKind {
    /// The schedule of this kind starting from `initial`; `multiplier` is
    /// the growth factor of [`BackoffKind::Exponential`] and is ignored by
    /// the others.
    ///
    /// ```
    /// use std::time::Duration;
    /// use mesh_retry::{Backoff, BackoffKind};
    ///
    /// let ms = Duration::from_millis;
    /// assert_eq!(BackoffKind::Linear.backoff(ms(10), 2.0), Backoff::linear(ms(10)));
    /// ```
    pub fn backoff(self, initial: Duration, multiplier: f64) -> Backoff {
        match self {
            BackoffKind::Exponential => Backoff::exponential(initial, multiplier),
            BackoffKind::Linear => Backoff::linear(initial),
            BackoffKind::Constant => Backoff::constant(initial),
            BackoffKind::Fibonacci => Backoff::fibonacci(initial),
        }
    }
}

/// Retries as a file writes them (the `[retry]` section of a mesh
/// configuration): unknown keys are refused, durations are human (`"50ms"`,
/// `"2s"`), and a key left out takes its value from
/// [`RetrySettings::default`].
///
/// [`RetrySettings::build`] checks the values, naming the key at fault
/// (`retry.multiplier`), and returns the [`RetryConfig`].
///
/// ```
/// use std::time::Duration;
/// use mesh_retry::{BackoffKind, Jitter, RetrySettings};
///
/// let settings: RetrySettings = toml::from_str(r#"
///     max_retries = 3
///     backoff = "constant"
///     initial = "200ms"
///     jitter = "none"
///     retryable_statuses = [502, 503]
///     budget_percent = 10.0
/// "#)?;
/// assert_eq!(settings.backoff, BackoffKind::Constant);
/// assert_eq!(settings.jitter, Jitter::None);
///
/// // Attempts of up to 1 s: unless written, the whole call gets 2 s.
/// let config = settings.build(Duration::from_secs(1))?;
/// assert_eq!(config.max_retries(), 3);
/// assert_eq!(config.deadline(), Some(Duration::from_secs(2)));
/// assert!(!config.retries_status(http::StatusCode::INTERNAL_SERVER_ERROR));
///
/// let typo = toml::from_str::<RetrySettings>("max_retrys = 3").unwrap_err();
/// assert!(typo.to_string().contains("max_retrys"));
///
/// let bad = RetrySettings { multiplier: 0.5, ..RetrySettings::default() };
/// assert_eq!(bad.validate().unwrap_err().key(), "retry.multiplier");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetrySettings {
    /// Retries after the first attempt (at most 100).
    pub max_retries: u32,
    /// The schedule of the waits between attempts.
    pub backoff: BackoffKind,
    /// The first wait (the step of linear backoff, every wait of constant
    /// backoff).
    #[serde(with = "humantime_serde")]
    pub initial: Duration,
    /// The growth per retry of exponential backoff (1 to 100).
    pub multiplier: f64,
    /// The longest single wait (at most 1 h).
    #[serde(with = "humantime_serde")]
    pub max_delay: Duration,
    /// How randomness spreads the waits.
    pub jitter: Jitter,
    /// The response statuses worth another attempt.
    pub retryable_statuses: Vec<u16>,
    /// The gRPC codes worth another attempt, for a call answered
    /// trailers-only (`[14]`, UNAVAILABLE, by default), whatever its HTTP
    /// method.
    pub retryable_grpc_codes: Vec<u32>,
    /// Retries requests with non-idempotent methods (POST, PATCH...) after
    /// any retryable failure, although they may then apply twice (else
    /// only after failures that prove they were never sent).
    pub retry_non_idempotent: bool,
    /// Retries may add at most this percent of the requests of the last
    /// 10 s (0 to 100), plus 10 retries a second so that a quiet service
    /// can still retry; `0` allows no retries at all.
    pub budget_percent: f64,
    /// The whole call, retries and waits included, ends within this; unset,
    /// [`RetrySettings::deadline_for`] the attempt timeout.
    #[serde(with = "humantime_serde", skip_serializing_if = "Option::is_none")]
    pub deadline: Option<Duration>,
    /// The longest `Retry-After` honoured: a server asking for longer gets
    /// no retry, and its answer goes back to the caller at once; unset,
    /// [`RetrySettings::max_retry_after_for`] the attempt timeout.
    #[serde(with = "humantime_serde", skip_serializing_if = "Option::is_none")]
    pub max_retry_after: Option<Duration>,
    /// Hedges calls instead of retrying them (an inline table:
    /// `hedging = { max_attempts = 3, delay = "50ms" }`); unset, calls are
    /// retried. See [`HedgingSettings`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hedging: Option<HedgingSettings>,
}

// === impl RetrySettings ===

impl RetrySettings {
    /// The deadline of a whole call whose attempts may take `attempt` each,
    /// when the settings write none: two attempts' worth, so one slow
    /// attempt still leaves room for a retry elsewhere, and no call waits
    /// for ever.
    pub fn deadline_for(attempt: Duration) -> Duration {
        attempt.saturating_mul(2)
    }

    /// The longest `Retry-After` honoured when attempts may take `attempt`
    /// and the settings write none: [`RetryConfig::DEFAULT_MAX_RETRY_AFTER`],
    /// or `attempt` when shorter, since a wait longer than an attempt holds
    /// the call for less than it gains.
    pub fn max_retry_after_for(attempt: Duration) -> Duration {
        attempt.min(RetryConfig::DEFAULT_MAX_RETRY_AFTER)
    }

    /// The validated configuration for calls whose attempts may take
    /// `attempt`: the deadline and the longest `Retry-After`, where the
    /// settings write none, follow from it ([`RetrySettings::deadline_for`],
    /// [`RetrySettings::max_retry_after_for`]).
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] whose [`key`](ConfigError::key) is the first key
    /// out of range as the file writes it (`retry.budget_percent`).
    pub fn build(&self, attempt: Duration) -> Result<RetryConfig, ConfigError> {
        let mut builder = self.builder()?;
        if self.deadline.is_none() {
            builder = builder.deadline(Self::deadline_for(attempt));
        }
        if self.max_retry_after.is_none() {
            builder = builder.max_retry_after(Self::max_retry_after_for(attempt));
        }
        builder.build()
    }

    /// Checks the keys written, as [`RetrySettings::build`] does.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] whose [`key`](ConfigError::key) is the first key
    /// out of range.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.builder()?.build().map(drop)
    }

    /// A builder holding every key written, after the checks that need the
    /// file's names for the keys.
    fn builder(&self) -> Result<RetryConfigBuilder, ConfigError> {
        let backoff = self
            .backoff
            .backoff(self.initial, self.multiplier)
            .max_delay(self.max_delay)
            .jitter(self.jitter);
        check_backoff(&backoff).map_err(|e| e.within("retry."))?;
        let mut builder = RetryConfig::builder()
            .max_retries(self.max_retries)
            .backoff(backoff)
            .retryable_statuses(self.statuses()?)
            .retryable_grpc_codes(self.grpc_codes()?)
            .retry_non_idempotent(self.retry_non_idempotent)
            .budget_config(self.budget()?);
        if let Some(deadline) = self.deadline {
            builder = builder.deadline(deadline);
        }
        if let Some(max) = self.max_retry_after {
            builder = builder.max_retry_after(max);
        }
        if let Some(hedging) = &self.hedging {
            builder = builder.hedging(hedging.build().map_err(|e| e.within("retry."))?);
        }
        Ok(builder)
    }

    /// `retryable_statuses` as status codes.
    fn statuses(&self) -> Result<Vec<StatusCode>, ConfigError> {
        self.retryable_statuses
            .iter()
            .map(|&code| {
                StatusCode::from_u16(code).map_err(|_| {
                    ConfigError::new(
                        "retry.retryable_statuses",
                        format!("{code} is not a status: use codes from 100 to 999"),
                    )
                })
            })
            .collect()
    }

    /// `retryable_grpc_codes` as gRPC codes.
    fn grpc_codes(&self) -> Result<GrpcCodes, ConfigError> {
        let codes = self.retryable_grpc_codes.iter().map(|&n| {
            GrpcCode::new(n).ok_or_else(|| {
                ConfigError::new(
                    "retry.retryable_grpc_codes",
                    format!("{n} is not a gRPC code: use codes from 0 to 16"),
                )
            })
        });
        Ok(GrpcCodes::of(codes.collect::<Result<Vec<_>, _>>()?))
    }

    /// The budget `budget_percent` describes.
    fn budget(&self) -> Result<RetryBudgetConfig, ConfigError> {
        if !(0.0..=100.0).contains(&self.budget_percent) {
            return Err(ConfigError::new(
                "retry.budget_percent",
                format!(
                    "{} is outside [0, 100]: it is a percentage of requests",
                    self.budget_percent
                ),
            ));
        }
        let funded = RetryBudgetConfig::default();
        Ok(RetryBudgetConfig {
            percent: self.budget_percent,
            // A zero budget funds nothing, the per-second minimum included.
            min_per_second: if self.budget_percent == 0.0 {
                0
            } else {
                funded.min_per_second
            },
            ttl: funded.ttl,
        })
    }
}

impl Default for RetrySettings {
    /// 2 retries; exponential backoff from 50 ms, doubling, capped at 30 s,
    /// with full jitter; the statuses 408, 429, 500, 502, 503 and 504;
    /// idempotent requests only; a budget of 20%; deadline and longest
    /// `Retry-After` from the attempt timeout.
    fn default() -> Self {
        RetrySettings {
            max_retries: 2,
            backoff: BackoffKind::Exponential,
            initial: Duration::from_millis(50),
            multiplier: 2.0,
            max_delay: DEFAULT_CAP,
            jitter: Jitter::Full,
            retryable_statuses: RetryConfig::DEFAULT_RETRYABLE_STATUSES.to_vec(),
            retryable_grpc_codes: vec![u32::from(GrpcCode::UNAVAILABLE.get())],
            retry_non_idempotent: false,
            budget_percent: RetryBudgetConfig::default().percent,
            deadline: None,
            max_retry_after: None,
            hedging: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_section_builds_the_documented_defaults() {
        let settings: RetrySettings = toml::from_str("").expect("empty");
        assert_eq!(settings, RetrySettings::default());
        let config = settings.build(Duration::from_secs(5)).expect("valid");
        assert_eq!(config.max_retries(), 2);
        assert_eq!(
            *config.backoff(),
            Backoff::exponential(Duration::from_millis(50), 2.0).jitter(Jitter::Full)
        );
        assert_eq!(config.deadline(), Some(Duration::from_secs(10)));
        assert_eq!(config.max_retry_after(), Duration::from_secs(1));
        assert_eq!(config.budget(), Some(RetryBudgetConfig::default()));
        for code in RetryConfig::DEFAULT_RETRYABLE_STATUSES {
            assert!(config.retries_status(StatusCode::from_u16(code).expect("status")));
        }
    }

    #[test]
    fn every_key_is_read_with_human_durations() {
        let settings: RetrySettings = toml::from_str(
            r#"
            max_retries = 4
            backoff = "fibonacci"
            initial = "10ms"
            multiplier = 3.0
            max_delay = "2s"
            jitter = "decorrelated"
            retryable_statuses = [429]
            retry_non_idempotent = true
            budget_percent = 0
            deadline = "3s"
            max_retry_after = "500ms"
            "#,
        )
        .expect("valid");
        let config = settings.build(Duration::from_secs(60)).expect("valid");
        assert_eq!(
            *config.backoff(),
            Backoff::fibonacci(Duration::from_millis(10))
                .max_delay(Duration::from_secs(2))
                .jitter(Jitter::Decorrelated)
        );
        assert!(config.retry_non_idempotent());
        assert!(config.retries_status(StatusCode::TOO_MANY_REQUESTS));
        assert!(!config.retries_status(StatusCode::SERVICE_UNAVAILABLE));
        assert_eq!(config.deadline(), Some(Duration::from_secs(3)));
        assert_eq!(config.max_retry_after(), Duration::from_millis(500));
        let budget = config.budget().expect("a budget");
        assert_eq!((budget.percent, budget.min_per_second), (0.0, 0));

        let json = serde_json::to_string(&settings).expect("serializes");
        assert_eq!(
            serde_json::from_str::<RetrySettings>(&json).expect("reads back"),
            settings
        );
    }

    #[test]
    fn hedging_is_an_inline_table_of_the_section() {
        let settings: RetrySettings = toml::from_str(
            r#"
            hedging = { max_attempts = 4, delay = "20ms", non_fatal_grpc_codes = [14], non_fatal_statuses = [503] }
            "#,
        )
        .expect("valid");
        let config = settings.build(Duration::from_secs(1)).expect("valid");
        let hedging = config.hedging().expect("hedging");
        assert_eq!(
            (hedging.max_attempts(), hedging.delay()),
            (4, Duration::from_millis(20))
        );
        assert!(hedging.is_non_fatal_status(StatusCode::SERVICE_UNAVAILABLE));
        assert!(!hedging.is_non_fatal_status(StatusCode::BAD_GATEWAY));
        assert!(RetrySettings::default()
            .build(Duration::from_secs(1))
            .expect("valid")
            .hedging()
            .is_none());

        let bad: RetrySettings = toml::from_str("hedging = { max_attempts = 1 }").expect("parses");
        assert_eq!(
            bad.validate().expect_err("one copy").key(),
            "retry.hedging.max_attempts"
        );
        let typo =
            toml::from_str::<RetrySettings>("hedging = { dealy = \"5ms\" }").expect_err("typo");
        assert!(typo.to_string().contains("dealy"), "{typo}");
    }

    #[test]
    fn unknown_keys_and_names_are_refused() {
        for (text, expected) in [
            ("backof = \"linear\"", "backof"),
            ("backoff = \"quadratic\"", "quadratic"),
            ("jitter = \"some\"", "some"),
            ("initial = 50", "initial"),
        ] {
            let err = toml::from_str::<RetrySettings>(text).expect_err(text);
            assert!(err.to_string().contains(expected), "{text}: {err}");
        }
    }

    #[test]
    fn values_out_of_range_are_refused_naming_the_key() {
        let default = RetrySettings::default;
        let cases = [
            (
                RetrySettings {
                    max_retries: 1000,
                    ..default()
                },
                "retry.max_retries",
            ),
            (
                RetrySettings {
                    multiplier: 0.5,
                    ..default()
                },
                "retry.multiplier",
            ),
            (
                RetrySettings {
                    max_delay: Duration::from_secs(7200),
                    ..default()
                },
                "retry.max_delay",
            ),
            (
                RetrySettings {
                    retryable_statuses: vec![42],
                    ..default()
                },
                "retry.retryable_statuses",
            ),
            (
                RetrySettings {
                    budget_percent: 120.0,
                    ..default()
                },
                "retry.budget_percent",
            ),
            (
                RetrySettings {
                    deadline: Some(Duration::ZERO),
                    ..default()
                },
                "retry.deadline",
            ),
            (
                RetrySettings {
                    max_retry_after: Some(Duration::from_secs(7200)),
                    ..default()
                },
                "retry.max_retry_after",
            ),
        ];
        for (settings, key) in cases {
            assert_eq!(settings.validate().expect_err(key).key(), key);
            assert_eq!(
                settings.build(Duration::from_secs(1)).expect_err(key).key(),
                key
            );
        }
    }
}
