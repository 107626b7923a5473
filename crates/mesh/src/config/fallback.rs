//! [`FallbackConfig`]: what answers a failed call to a service
//! (`[services.<name>.fallback]`).

use std::time::Duration;

use http::{HeaderValue, StatusCode};
use mesh_core::ConfigError;
use serde::{Deserialize, Serialize};

/// The longest a fixed fallback body may be.
const MAX_BODY: usize = 1024 * 1024;

/// What answers a call to the service when it fails (an error, a refusal
/// by a breaker or a limit) or, with `on_status`, is answered with a
/// status the caller should not see: the last good answer to the same
/// GET while it is fresh, else a fixed answer, else (in code)
/// [`crate::MeshClientBuilder::fallback`]'s.
///
/// ```toml
/// [services.recommendations.fallback]
/// last_good = "5m"            # the last 2xx answer to the same GET, if younger
/// status = 200                # else this fixed answer
/// body = '{"items":[]}'
/// content_type = "application/json"
/// on_status = [502, 503, 504] # also replace these answers
/// ```
///
/// An answer from a fallback carries the [`crate::FallbackUsed`] response
/// extension, so a caller can tell it from the service's own.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FallbackConfig {
    /// Answer an idempotent GET with the last 2xx answer to the same path
    /// and query, if it is no older than this (bodies up to 1 MiB, the
    /// 256 most recent paths per service).
    #[serde(default, with = "humantime_serde")]
    pub last_good: Option<Duration>,
    /// The fixed answer's status (200 when only `body` is written).
    #[serde(default)]
    pub status: Option<u16>,
    /// The fixed answer's body (empty when only `status` is written).
    #[serde(default)]
    pub body: Option<String>,
    /// The fixed answer's `content-type`.
    #[serde(default)]
    pub content_type: Option<String>,
    /// Answers with these statuses are replaced too (none by default:
    /// only failed calls are).
    #[serde(default)]
    pub on_status: Vec<u16>,
}

// === impl FallbackConfig ===

impl FallbackConfig {
    /// Checks the section written at `what` (`services.<name>.fallback`);
    /// the error names the field.
    pub(super) fn validate(&self, what: &str) -> Result<(), ConfigError> {
        let invalid =
            |field: &str, reason: String| Err(ConfigError::new(format!("{what}.{field}"), reason));
        if self.last_good.is_none() && !self.has_fixed_answer() && self.on_status.is_empty() {
            return invalid(
                "status",
                "a fallback answers with last_good, a fixed status or body, or code \
                 (MeshClientBuilder::fallback, with on_status saying which answers it replaces): \
                 write one"
                    .to_owned(),
            );
        }
        if let Some(age) = self.last_good {
            if age.is_zero() || age > Duration::from_secs(24 * 3600) {
                return invalid("last_good", format!("{age:?} is outside (0, 24h]"));
            }
        }
        if let Some(code) = self.status {
            status(code).map_err(|reason| ConfigError::new(format!("{what}.status"), reason))?;
        }
        if self.body.as_ref().is_some_and(|b| b.len() > MAX_BODY) {
            return invalid("body", "longer than 1 MiB".to_owned());
        }
        if let Some(kind) = &self.content_type {
            if HeaderValue::from_str(kind).is_err() {
                return invalid("content_type", format!("{kind:?} is not a header value"));
            }
        }
        for (i, &code) in self.on_status.iter().enumerate() {
            status(code)
                .map_err(|reason| ConfigError::new(format!("{what}.on_status[{i}]"), reason))?;
        }
        Ok(())
    }

    /// Whether a fixed answer is configured.
    pub(crate) fn has_fixed_answer(&self) -> bool {
        self.status.is_some() || self.body.is_some()
    }

    /// Whether the section gives an answer of its own (else only code's
    /// can answer).
    pub(crate) fn answers(&self) -> bool {
        self.last_good.is_some() || self.has_fixed_answer()
    }
}

/// `code` as a status a response may carry.
pub(crate) fn status(code: u16) -> Result<StatusCode, String> {
    match StatusCode::from_u16(code) {
        Ok(status) if (200..=599).contains(&code) => Ok(status),
        _ => Err(format!("{code} is not a response status (200..=599)")),
    }
}
