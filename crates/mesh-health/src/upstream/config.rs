//! [`UpstreamCheckConfig`]: how a service's endpoints are probed, from a
//! file (the `[upstream_health]` table of the facade).

use std::time::Duration;

use mesh_core::ConfigError;
use serde::{Deserialize, Serialize};

/// How an upstream endpoint is probed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", deny_unknown_fields)]
pub enum UpstreamProbe {
    /// A TCP connect.
    Tcp,
    /// An HTTP GET of `path` (sent with the endpoint's address as the
    /// authority); a status in 200-399 passes.
    Http {
        /// The path, say `/health/ready`.
        path: String,
    },
}

/// Active health checking of one service's endpoints, with Envoy's
/// thresholds.
///
/// ```
/// let config: mesh_health::UpstreamCheckConfig = serde_json::from_str(
///     r#"{ "probe": { "http": { "path": "/health/ready" } }, "interval": "5s", "unhealthy_threshold": 2 }"#,
/// )?;
/// config.validate()?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamCheckConfig {
    /// TCP connect (the default) or an HTTP GET.
    #[serde(default = "default_probe")]
    pub probe: UpstreamProbe,
    /// Time between rounds of probes (the design document's
    /// `healthCheckInterval`), counted from the end of a round: the period
    /// is the interval, plus the jitter, plus the slowest probe.
    #[serde(default = "default_interval", with = "humantime_serde")]
    pub interval: Duration,
    /// Up to this much is added to each interval at random, so a fleet of
    /// clients does not probe in step.
    #[serde(default = "default_jitter", with = "humantime_serde")]
    pub jitter: Duration,
    /// How long a probe may take; longer is a failure.
    #[serde(default = "default_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// Successes in a row that bring an unhealthy endpoint back.
    #[serde(default = "default_healthy_threshold")]
    pub healthy_threshold: u32,
    /// Failures in a row that mark an endpoint unhealthy.
    #[serde(default = "default_unhealthy_threshold")]
    pub unhealthy_threshold: u32,
    /// Keep a newly discovered endpoint out of rotation until its first
    /// probe passes (by default it is usable at once).
    #[serde(default)]
    pub unhealthy_until_checked: bool,
}

fn default_probe() -> UpstreamProbe {
    UpstreamProbe::Tcp
}
fn default_interval() -> Duration {
    Duration::from_secs(10)
}
fn default_jitter() -> Duration {
    Duration::from_secs(1)
}
fn default_timeout() -> Duration {
    Duration::from_secs(1)
}
fn default_healthy_threshold() -> u32 {
    2
}
fn default_unhealthy_threshold() -> u32 {
    3
}

impl Default for UpstreamCheckConfig {
    fn default() -> Self {
        UpstreamCheckConfig {
            probe: default_probe(),
            interval: default_interval(),
            jitter: default_jitter(),
            timeout: default_timeout(),
            healthy_threshold: default_healthy_threshold(),
            unhealthy_threshold: default_unhealthy_threshold(),
            unhealthy_until_checked: false,
        }
    }
}

impl UpstreamCheckConfig {
    /// Checks every value; the error names the first one at fault
    /// (`health.upstream.interval`).
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] for an interval outside [10ms, 24h], a jitter above
    /// it, a timeout outside (0, 60s], a zero threshold, or an HTTP probe
    /// path that is not a path.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.interval < Duration::from_millis(10) || self.interval > Duration::from_secs(86_400)
        {
            return Err(ConfigError::new(
                "health.upstream.interval",
                format!("{:?} is outside [10ms, 24h]", self.interval),
            ));
        }
        if self.jitter > self.interval {
            return Err(ConfigError::new(
                "health.upstream.jitter",
                format!("{:?} is above the interval", self.jitter),
            ));
        }
        if self.timeout.is_zero() || self.timeout > Duration::from_secs(60) {
            return Err(ConfigError::new(
                "health.upstream.timeout",
                format!("{:?} is outside (0, 60s]", self.timeout),
            ));
        }
        if self.healthy_threshold == 0 {
            return Err(ConfigError::new(
                "health.upstream.healthy_threshold",
                "must be at least 1",
            ));
        }
        if self.unhealthy_threshold == 0 {
            return Err(ConfigError::new(
                "health.upstream.unhealthy_threshold",
                "must be at least 1",
            ));
        }
        if let UpstreamProbe::Http { path } = &self.probe {
            if !path.starts_with('/') {
                return Err(ConfigError::new(
                    "health.upstream.probe.http.path",
                    format!("{path:?} must start with '/'"),
                ));
            }
            if let Err(e) = path.parse::<http::uri::PathAndQuery>() {
                return Err(ConfigError::new(
                    "health.upstream.probe.http.path",
                    format!("{path:?} is not a path"),
                )
                .caused_by(e));
            }
        }
        Ok(())
    }
}
