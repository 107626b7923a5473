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
    /// The standard gRPC health check (`grpc.health.v1.Health`) over
    /// HTTP/2: `SERVING` passes; `NOT_SERVING`, `SERVICE_UNKNOWN`,
    /// `UNKNOWN`, an error status (`UNIMPLEMENTED` from a server without
    /// the health service) or no answer fails. See
    /// [`UpstreamHealthChecker`](crate::UpstreamHealthChecker) for `watch`.
    Grpc {
        /// The service asked about, fully qualified
        /// (`users.v1.Users`); empty (the default) asks about the whole
        /// server.
        #[serde(default)]
        service: String,
        /// Follow the server's status as it streams it (`Watch`): an
        /// endpoint is ejected the moment it says `NOT_SERVING` and let
        /// back the moment it says `SERVING`, with no interval and no
        /// threshold. Where the stream cannot be had (a server answering
        /// `UNIMPLEMENTED`, a broken connection), the endpoint is judged
        /// by periodic `Check`s meanwhile. Off by default: `Check` at the
        /// interval, judged by the thresholds.
        #[serde(default)]
        watch: bool,
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
    /// TCP connect (the default), an HTTP GET or a gRPC health check.
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
    /// it, a timeout outside (0, 60s], a zero threshold, an HTTP probe
    /// path that is not a path, or a gRPC service name that is not one
    /// (`health.upstream.probe.grpc.service`).
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
        if let UpstreamProbe::Grpc { service, .. } = &self.probe {
            validate_grpc_service(service)?;
        }
        if let UpstreamProbe::Http { path } = &self.probe {
            // Quoted without its query, which may carry a token.
            let shown = path.split(['?', '#']).next().unwrap_or_default();
            if !path.starts_with('/') {
                return Err(ConfigError::new(
                    "health.upstream.probe.http.path",
                    format!("{shown:?} must start with '/'"),
                ));
            }
            if let Err(e) = path.parse::<http::uri::PathAndQuery>() {
                return Err(ConfigError::new(
                    "health.upstream.probe.http.path",
                    format!("{shown:?} is not a path"),
                )
                .caused_by(e));
            }
        }
        Ok(())
    }
}

/// A gRPC service name is empty (the whole server) or dot-separated
/// identifiers (`users.v1.Users`): anything else can name no service, so
/// every probe would fail for a reason a typo would hide.
fn validate_grpc_service(service: &str) -> Result<(), ConfigError> {
    let identifier = |part: &str| {
        part.chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && part.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
    };
    if service.is_empty() || service.split('.').all(identifier) {
        return Ok(());
    }
    Err(ConfigError::new(
        "health.upstream.probe.grpc.service",
        format!("{service:?} is not a fully qualified gRPC service name (say \"users.v1.Users\", or empty for the whole server)"),
    ))
}
