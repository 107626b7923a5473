//! [`Hedging`]: how many copies of a call may race and how far apart, and
//! [`HedgingSettings`], its file form.

use std::time::Duration;

use http::StatusCode;
use mesh_core::grpc::{GrpcCode, GrpcCodes};
use mesh_core::{ConfigError, StatusSet};
use serde::{Deserialize, Serialize};

/// Hedging (gRFC A6's `hedgingPolicy`): send a call, and while no answer
/// has come back, send another copy to another endpoint every
/// [`delay`](Hedging::delay), up to [`max_attempts`](Hedging::max_attempts)
/// copies in all. The first *fatal* answer (anything but a non-fatal one,
/// success included) is returned and the other copies are cancelled; a
/// *non-fatal* answer (a status or gRPC code in the non-fatal sets, or a
/// connection error) sends the next copy at once.
///
/// A validated value: [`Hedging::new`] refuses counts and delays out of
/// range, naming the key.
///
/// ```
/// use std::time::Duration;
/// use mesh_core::grpc::{GrpcCode, GrpcCodes};
/// use mesh_retry::Hedging;
///
/// let hedging = Hedging::new(3, Duration::from_millis(50))?
///     .non_fatal_grpc_codes(GrpcCodes::of([GrpcCode::UNAVAILABLE]))
///     .non_fatal_statuses([http::StatusCode::BAD_GATEWAY]);
/// assert_eq!(hedging.max_attempts(), 3);
/// assert!(hedging.is_non_fatal_status(http::StatusCode::BAD_GATEWAY));
/// assert!(!hedging.is_non_fatal_status(http::StatusCode::SERVICE_UNAVAILABLE));
///
/// let err = Hedging::new(1, Duration::from_millis(50)).unwrap_err();
/// assert_eq!(err.key(), "hedging.max_attempts");
/// # Ok::<(), mesh_core::ConfigError>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Hedging {
    max_attempts: u32,
    delay: Duration,
    non_fatal_grpc_codes: GrpcCodes,
    non_fatal_statuses: StatusSet,
}

// === impl Hedging ===

impl Hedging {
    /// The most copies of one call: gRFC A6 clients cap theirs at 5; a
    /// few more are allowed here, never a storm.
    pub const MAX_ATTEMPTS: u32 = 10;

    /// The statuses that, by default, send the next copy at once: 502,
    /// 503, 504 (the instance, not the request, is at fault).
    pub const DEFAULT_NON_FATAL_STATUSES: [u16; 3] = [502, 503, 504];

    /// Up to `max_attempts` copies (2 to [`Hedging::MAX_ATTEMPTS`]), one
    /// more every `delay` (at most 1 h; zero sends them all at once), with
    /// the default non-fatal answers: gRPC `UNAVAILABLE` and
    /// [`Hedging::DEFAULT_NON_FATAL_STATUSES`].
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] whose [`key`](ConfigError::key) is
    /// `hedging.max_attempts` or `hedging.delay`.
    pub fn new(max_attempts: u32, delay: Duration) -> Result<Hedging, ConfigError> {
        if !(2..=Self::MAX_ATTEMPTS).contains(&max_attempts) {
            return Err(ConfigError::new(
                "hedging.max_attempts",
                format!(
                    "{max_attempts} is outside [2, {}]: one copy is no hedge, more is a storm",
                    Self::MAX_ATTEMPTS
                ),
            ));
        }
        if delay > Duration::from_secs(3600) {
            return Err(ConfigError::new(
                "hedging.delay",
                format!("{delay:?} is more than one hour"),
            ));
        }
        Ok(Hedging {
            max_attempts,
            delay,
            non_fatal_grpc_codes: GrpcCodes::retryable(),
            non_fatal_statuses: Self::DEFAULT_NON_FATAL_STATUSES
                .iter()
                .filter_map(|&c| StatusCode::from_u16(c).ok())
                .collect(),
        })
    }

    /// Exactly these gRPC codes (on a trailers-only answer) are non-fatal.
    pub fn non_fatal_grpc_codes(mut self, codes: GrpcCodes) -> Hedging {
        self.non_fatal_grpc_codes = codes;
        self
    }

    /// Exactly these HTTP statuses are non-fatal.
    pub fn non_fatal_statuses(mut self, statuses: impl IntoIterator<Item = StatusCode>) -> Hedging {
        self.non_fatal_statuses = statuses.into_iter().collect();
        self
    }

    /// The most copies of one call, the first included.
    pub fn max_attempts(&self) -> u32 {
        self.max_attempts
    }

    /// How long a copy goes unanswered before the next is sent.
    pub fn delay(&self) -> Duration {
        self.delay
    }

    /// Whether a gRPC answer with `code` sends the next copy at once
    /// rather than ending the call.
    pub fn is_non_fatal_grpc(&self, code: GrpcCode) -> bool {
        self.non_fatal_grpc_codes.contains(code)
    }

    /// Whether an answer with `status` sends the next copy at once rather
    /// than ending the call.
    pub fn is_non_fatal_status(&self, status: StatusCode) -> bool {
        self.non_fatal_statuses.contains(status)
    }
}

/// Hedging as a file writes it: the `hedging` key of the `[retry]`
/// section (see [`crate::RetrySettings`]), an inline table whose keys may
/// each be left out ([`HedgingSettings::default`]).
///
/// ```
/// use std::time::Duration;
/// use mesh_retry::HedgingSettings;
///
/// let settings: HedgingSettings = toml::from_str(r#"
///     max_attempts = 3
///     delay = "50ms"
///     non_fatal_grpc_codes = [14]
///     non_fatal_statuses = [502, 503, 504]
/// "#)?;
/// let hedging = settings.build()?;
/// assert_eq!(hedging.delay(), Duration::from_millis(50));
///
/// let bad = HedgingSettings { max_attempts: 50, ..HedgingSettings::default() };
/// assert_eq!(bad.validate().unwrap_err().key(), "hedging.max_attempts");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HedgingSettings {
    /// The most copies of one call, the first included (2 to 10).
    pub max_attempts: u32,
    /// How long a copy goes unanswered before the next is sent (at most
    /// 1 h; `"0s"` sends them all at once).
    #[serde(with = "humantime_serde")]
    pub delay: Duration,
    /// gRPC codes (of a trailers-only answer) that send the next copy at
    /// once instead of ending the call.
    pub non_fatal_grpc_codes: Vec<u32>,
    /// HTTP statuses that send the next copy at once instead of ending the
    /// call.
    pub non_fatal_statuses: Vec<u16>,
}

// === impl HedgingSettings ===

impl HedgingSettings {
    /// The validated [`Hedging`].
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] whose [`key`](ConfigError::key) is the first key
    /// out of range (`hedging.delay`, `hedging.non_fatal_statuses`...).
    pub fn build(&self) -> Result<Hedging, ConfigError> {
        let codes = self.non_fatal_grpc_codes.iter().map(|&n| {
            GrpcCode::new(n).ok_or_else(|| {
                ConfigError::new(
                    "hedging.non_fatal_grpc_codes",
                    format!("{n} is not a gRPC code: use codes from 0 to 16"),
                )
            })
        });
        let codes = GrpcCodes::of(codes.collect::<Result<Vec<_>, _>>()?);
        let statuses = self.non_fatal_statuses.iter().map(|&code| {
            StatusCode::from_u16(code).map_err(|_| {
                ConfigError::new(
                    "hedging.non_fatal_statuses",
                    format!("{code} is not a status: use codes from 100 to 999"),
                )
            })
        });
        let statuses = statuses.collect::<Result<Vec<_>, _>>()?;
        Ok(Hedging::new(self.max_attempts, self.delay)?
            .non_fatal_grpc_codes(codes)
            .non_fatal_statuses(statuses))
    }

    /// Checks the keys written, as [`HedgingSettings::build`] does.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] whose [`key`](ConfigError::key) is the first key
    /// out of range.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.build().map(drop)
    }
}

impl Default for HedgingSettings {
    /// 3 copies, 50 ms apart; gRPC `UNAVAILABLE` and the statuses 502, 503
    /// and 504 are non-fatal.
    fn default() -> Self {
        HedgingSettings {
            max_attempts: 3,
            delay: Duration::from_millis(50),
            non_fatal_grpc_codes: vec![u32::from(GrpcCode::UNAVAILABLE.get())],
            non_fatal_statuses: Hedging::DEFAULT_NON_FATAL_STATUSES.to_vec(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_table_builds_the_documented_defaults() {
        let settings: HedgingSettings = toml::from_str("").expect("empty");
        let hedging = settings.build().expect("valid");
        assert_eq!(
            hedging,
            Hedging::new(3, Duration::from_millis(50)).expect("valid")
        );
        assert!(hedging.is_non_fatal_grpc(GrpcCode::UNAVAILABLE));
        assert!(!hedging.is_non_fatal_grpc(GrpcCode::OK));
        assert!(hedging.is_non_fatal_status(StatusCode::GATEWAY_TIMEOUT));
        assert!(!hedging.is_non_fatal_status(StatusCode::INTERNAL_SERVER_ERROR));
    }

    #[test]
    fn values_out_of_range_are_refused_naming_the_key() {
        let default = HedgingSettings::default;
        let cases = [
            (
                HedgingSettings {
                    max_attempts: 1,
                    ..default()
                },
                "hedging.max_attempts",
            ),
            (
                HedgingSettings {
                    delay: Duration::from_secs(7200),
                    ..default()
                },
                "hedging.delay",
            ),
            (
                HedgingSettings {
                    non_fatal_grpc_codes: vec![17],
                    ..default()
                },
                "hedging.non_fatal_grpc_codes",
            ),
            (
                HedgingSettings {
                    non_fatal_statuses: vec![42],
                    ..default()
                },
                "hedging.non_fatal_statuses",
            ),
        ];
        for (settings, key) in cases {
            assert_eq!(settings.validate().expect_err(key).key(), key);
        }
        let typo = toml::from_str::<HedgingSettings>("max_attempt = 3").expect_err("typo");
        assert!(typo.to_string().contains("max_attempt"), "{typo}");
    }
}
