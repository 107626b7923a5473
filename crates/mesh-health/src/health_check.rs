//! [`HealthCheck`]: one named check, what it runs, which probes it feeds
//! and how its results are judged.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use mesh_core::{ConfigError, Probe};

/// Why a check failed, in words for the operator reading `/health/*`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckError(pub String);

impl CheckError {
    /// A failure described by `message`.
    pub fn new(message: impl Into<String>) -> Self {
        CheckError(message.into())
    }
}

impl std::fmt::Display for CheckError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for CheckError {}

impl From<String> for CheckError {
    fn from(s: String) -> Self {
        CheckError(s)
    }
}

impl From<&str> for CheckError {
    fn from(s: &str) -> Self {
        CheckError(s.to_owned())
    }
}

/// The future one run of a check returns.
pub type CheckFuture = Pin<Box<dyn Future<Output = Result<(), CheckError>> + Send + 'static>>;

/// What a check runs: called once per interval; its future is bounded by
/// the check's timeout.
pub(crate) type CheckFn = Arc<dyn Fn() -> CheckFuture + Send + Sync>;

/// A named health check.
///
/// ```
/// use std::time::Duration;
/// use mesh_core::Probe;
/// use mesh_health::{CheckError, HealthCheck};
///
/// let check = HealthCheck::builder("database", || async {
///     // Ping the database here.
///     Ok::<(), CheckError>(())
/// })
/// .probes([Probe::Readiness])
/// .critical(true)
/// .interval(Duration::from_secs(10))
/// .timeout(Duration::from_secs(2))
/// .failure_threshold(3)
/// .build()?;
/// assert_eq!(check.name(), "database");
/// # Ok::<(), mesh_core::ConfigError>(())
/// ```
#[derive(Clone)]
pub struct HealthCheck {
    pub(crate) name: Arc<str>,
    pub(crate) probes: Vec<Probe>,
    pub(crate) critical: bool,
    pub(crate) interval: Duration,
    pub(crate) timeout: Duration,
    pub(crate) failure_threshold: u32,
    pub(crate) success_threshold: u32,
    pub(crate) run: CheckFn,
}

impl std::fmt::Debug for HealthCheck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HealthCheck")
            .field("name", &self.name)
            .field("probes", &self.probes)
            .field("critical", &self.critical)
            .field("interval", &self.interval)
            .field("timeout", &self.timeout)
            .field("failure_threshold", &self.failure_threshold)
            .field("success_threshold", &self.success_threshold)
            .finish_non_exhaustive()
    }
}

/// Builds a [`HealthCheck`]. Defaults: readiness only, critical, every
/// 10 s, 5 s timeout, unhealthy after 3 failures in a row, healthy again
/// after 1 success.
pub struct HealthCheckBuilder {
    check: HealthCheck,
}

impl HealthCheck {
    /// A check named `name` that runs `run`.
    pub fn builder<F, Fut>(name: impl Into<String>, run: F) -> HealthCheckBuilder
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), CheckError>> + Send + 'static,
    {
        HealthCheckBuilder {
            check: HealthCheck {
                name: Arc::from(name.into()),
                probes: vec![Probe::Readiness],
                critical: true,
                interval: Duration::from_secs(10),
                timeout: Duration::from_secs(5),
                failure_threshold: 3,
                success_threshold: 1,
                run: Arc::new(move || Box::pin(run())),
            },
        }
    }

    /// The check's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The probes it feeds.
    pub fn probes(&self) -> &[Probe] {
        &self.probes
    }

    /// Whether its failure makes its probes unhealthy (else degraded).
    pub fn is_critical(&self) -> bool {
        self.critical
    }

    /// Checks every value but the name; keys are relative to the check.
    fn validate(&self) -> Result<(), ConfigError> {
        if self.probes.is_empty() {
            return Err(ConfigError::new(
                "probes",
                "a check must feed at least one probe",
            ));
        }
        if self.interval < Duration::from_millis(10) {
            return Err(ConfigError::new(
                "interval",
                format!("{:?} is below 10ms", self.interval),
            ));
        }
        if self.timeout.is_zero() {
            return Err(ConfigError::new("timeout", "must be above zero"));
        }
        if self.failure_threshold == 0 {
            return Err(ConfigError::new("failure_threshold", "must be at least 1"));
        }
        if self.success_threshold == 0 {
            return Err(ConfigError::new("success_threshold", "must be at least 1"));
        }
        Ok(())
    }
}

impl HealthCheckBuilder {
    /// The probes this check feeds (at least one).
    pub fn probes(mut self, probes: impl IntoIterator<Item = Probe>) -> Self {
        let mut probes: Vec<Probe> = probes.into_iter().collect();
        probes.sort();
        probes.dedup();
        self.check.probes = probes;
        self
    }

    /// Whether a failure makes the probes unhealthy (`true`, the default)
    /// or only degraded.
    pub fn critical(mut self, critical: bool) -> Self {
        self.check.critical = critical;
        self
    }

    /// How often it runs.
    pub fn interval(mut self, interval: Duration) -> Self {
        self.check.interval = interval;
        self
    }

    /// How long one run may take; a run still going then is a failure.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.check.timeout = timeout;
        self
    }

    /// Failures in a row that make it failing.
    pub fn failure_threshold(mut self, n: u32) -> Self {
        self.check.failure_threshold = n;
        self
    }

    /// Successes in a row that make a failing check pass again.
    pub fn success_threshold(mut self, n: u32) -> Self {
        self.check.success_threshold = n;
        self
    }

    /// Validates and builds; the error names the value at fault
    /// (`health.checks.<name>.interval`).
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] for a check without a name, probes, a positive
    /// timeout or thresholds of at least 1, or run more often than every
    /// 10 ms.
    pub fn build(self) -> Result<HealthCheck, ConfigError> {
        let c = self.check;
        if c.name.is_empty() {
            return Err(ConfigError::new(
                "health.checks[].name",
                "a check needs a name",
            ));
        }
        c.validate()
            .map_err(|e| e.within(&format!("health.checks.{}.", c.name)))?;
        Ok(c)
    }
}
