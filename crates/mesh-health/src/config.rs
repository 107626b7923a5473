//! [`HealthConfig`]: the manager's settings from a file (the design
//! document's `livenessInterval`, `readinessInterval`, `failureThreshold`).

use std::future::Future;
use std::time::Duration;

use mesh_core::{ConfigError, Probe};
use serde::{Deserialize, Serialize};

use crate::health_check::{CheckError, HealthCheck, HealthCheckBuilder};
use crate::layer::{HealthLayer, HealthPaths};
use crate::manager::HealthCheckManager;

/// Defaults for a service's checks and where its probes are served.
///
/// ```
/// use mesh_core::Probe;
/// use mesh_health::{CheckError, HealthConfig};
/// let config: HealthConfig = serde_json::from_str(r#"{
///     "liveness_interval": "5s",
///     "readiness_interval": "3s",
///     "failure_threshold": 5
/// }"#)?;
/// config.validate()?;
/// let check = config
///     .check("postgres", [Probe::Readiness], || async { Ok::<(), CheckError>(()) })
///     .build()?;
/// assert_eq!(check.probes(), &[Probe::Readiness]);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthConfig {
    /// How often checks feeding liveness run (`livenessInterval`).
    #[serde(default = "default_liveness", with = "humantime_serde")]
    pub liveness_interval: Duration,
    /// How often checks feeding readiness run (`readinessInterval`).
    #[serde(default = "default_readiness", with = "humantime_serde")]
    pub readiness_interval: Duration,
    /// How often checks feeding startup run, until it passes.
    #[serde(default = "default_startup", with = "humantime_serde")]
    pub startup_interval: Duration,
    /// How long one run may take.
    #[serde(default = "default_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// Failures in a row that fail a check (`failureThreshold`).
    #[serde(default = "default_failure_threshold")]
    pub failure_threshold: u32,
    /// Successes in a row that bring a failing check back.
    #[serde(default = "default_success_threshold")]
    pub success_threshold: u32,
    /// Where the probes are served.
    #[serde(default)]
    pub paths: PathsConfig,
    /// Whether probes answer the detailed report (check names, last
    /// errors) instead of the status alone; off by default, since anyone
    /// who reaches the port reads it. See [`HealthLayer::details`].
    #[serde(default)]
    pub details: bool,
}

/// Probe paths, as configured.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PathsConfig {
    /// Liveness (`/health/live`).
    #[serde(default = "default_live")]
    pub live: String,
    /// Readiness (`/health/ready`).
    #[serde(default = "default_ready")]
    pub ready: String,
    /// Startup (`/health/startup`).
    #[serde(default = "default_startup_path")]
    pub startup: String,
}

impl Default for PathsConfig {
    fn default() -> Self {
        PathsConfig {
            live: default_live(),
            ready: default_ready(),
            startup: default_startup_path(),
        }
    }
}

fn default_live() -> String {
    "/health/live".to_owned()
}
fn default_ready() -> String {
    "/health/ready".to_owned()
}
fn default_startup_path() -> String {
    "/health/startup".to_owned()
}
fn default_liveness() -> Duration {
    Duration::from_secs(5)
}
fn default_readiness() -> Duration {
    Duration::from_secs(3)
}
fn default_startup() -> Duration {
    Duration::from_secs(1)
}
fn default_timeout() -> Duration {
    Duration::from_secs(2)
}
fn default_failure_threshold() -> u32 {
    3
}
fn default_success_threshold() -> u32 {
    1
}

impl Default for HealthConfig {
    fn default() -> Self {
        HealthConfig {
            liveness_interval: default_liveness(),
            readiness_interval: default_readiness(),
            startup_interval: default_startup(),
            timeout: default_timeout(),
            failure_threshold: default_failure_threshold(),
            success_threshold: default_success_threshold(),
            paths: PathsConfig::default(),
            details: false,
        }
    }
}

impl HealthConfig {
    /// Checks every value; the error names the first one at fault
    /// (`health.failure_threshold`, `health.paths.ready`).
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] for an interval outside [10ms, 24h], a zero
    /// timeout or threshold, or an invalid probe path.
    pub fn validate(&self) -> Result<(), ConfigError> {
        for (what, interval) in [
            ("liveness_interval", self.liveness_interval),
            ("readiness_interval", self.readiness_interval),
            ("startup_interval", self.startup_interval),
        ] {
            if interval < Duration::from_millis(10) || interval > Duration::from_secs(86_400) {
                return Err(ConfigError::new(
                    format!("health.{what}"),
                    format!("{interval:?} is outside [10ms, 24h]"),
                ));
            }
        }
        let probe = HealthCheck::builder("config", || async { Ok::<(), CheckError>(()) });
        self.apply(probe, &Probe::ALL)
            .build()
            .map_err(|e| e.renamed("health.checks.config.", "health."))?;
        self.probe_paths().map(|_| ())
    }

    /// A check with these defaults: the interval of the most frequent
    /// probe it feeds, the timeout and the thresholds. Anything can still
    /// be changed on the builder.
    pub fn check<F, Fut>(
        &self,
        name: impl Into<String>,
        probes: impl IntoIterator<Item = Probe>,
        run: F,
    ) -> HealthCheckBuilder
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), CheckError>> + Send + 'static,
    {
        let probes: Vec<Probe> = probes.into_iter().collect();
        self.apply(HealthCheck::builder(name, run), &probes)
    }

    fn apply(&self, builder: HealthCheckBuilder, probes: &[Probe]) -> HealthCheckBuilder {
        let interval = probes
            .iter()
            .map(|p| match p {
                Probe::Liveness => self.liveness_interval,
                Probe::Readiness => self.readiness_interval,
                Probe::Startup => self.startup_interval,
            })
            .min()
            .unwrap_or(self.readiness_interval);
        builder
            .probes(probes.iter().copied())
            .interval(interval)
            .timeout(self.timeout)
            .failure_threshold(self.failure_threshold)
            .success_threshold(self.success_threshold)
    }

    /// The probe paths, validated.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] naming the path at fault (`health.paths.ready`),
    /// as [`HealthPaths::new`].
    pub fn probe_paths(&self) -> Result<HealthPaths, ConfigError> {
        HealthPaths::new(&self.paths.live, &self.paths.ready, &self.paths.startup)
    }

    /// A [`HealthLayer`] serving `manager`'s probes as configured: on
    /// [`paths`](Self::paths), with the detailed report only if
    /// [`details`](Self::details) is on. Fails, naming the key, on an
    /// invalid path.
    ///
    /// ```
    /// use mesh_health::{HealthCheckManager, HealthConfig};
    /// let config: HealthConfig = serde_json::from_str(r#"{ "details": true }"#)?;
    /// let layer = config.layer(HealthCheckManager::builder().build()?)?;
    /// # let _ = layer;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn layer(&self, manager: HealthCheckManager) -> Result<HealthLayer, ConfigError> {
        Ok(HealthLayer::new(manager)
            .paths(self.probe_paths()?)
            .details(self.details))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_follow_the_design_document_shape() {
        let config: HealthConfig = serde_json::from_str("{}").unwrap();
        assert_eq!(config, HealthConfig::default());
        assert!(!config.details, "details are opt-in");
        assert!(config.validate().is_ok());
        let check = config
            .check("db", [Probe::Liveness, Probe::Readiness], || async {
                Ok(())
            })
            .build()
            .unwrap();
        // The more frequent of the two probes' intervals.
        assert_eq!(check.probes(), &[Probe::Liveness, Probe::Readiness]);
    }

    #[test]
    fn bad_values_and_unknown_keys_are_named() {
        let err =
            serde_json::from_str::<HealthConfig>(r#"{"livenessIntervall": "5s"}"#).unwrap_err();
        assert!(err.to_string().contains("livenessIntervall"), "{err}");
        let config = HealthConfig {
            failure_threshold: 0,
            ..HealthConfig::default()
        };
        let err = config.validate().unwrap_err().to_string();
        assert!(err.contains("health.failure_threshold"), "{err}");
        let config = HealthConfig {
            liveness_interval: Duration::from_millis(1),
            ..HealthConfig::default()
        };
        assert!(config
            .validate()
            .unwrap_err()
            .to_string()
            .contains("health.liveness_interval"));
        let mut config = HealthConfig::default();
        config.paths.ready = "ready".to_owned();
        assert!(config
            .validate()
            .unwrap_err()
            .to_string()
            .contains("health.paths.ready"));
    }
}
