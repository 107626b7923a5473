//! [`MeshClientBuilder`]: a configuration plus what only code can give.

use std::future::Future;

use mesh_core::{ConfigError, Probe};
use mesh_health::HealthCheck;

use super::{MeshClient, StartError};
use crate::config::MeshConfig;

/// Builds a [`MeshClient`]: its configuration plus what only code can
/// give (the local service's health checks).
#[derive(Debug)]
pub struct MeshClientBuilder {
    config: MeshConfig,
    checks: Vec<HealthCheck>,
}

// === impl MeshClientBuilder ===

impl MeshClientBuilder {
    /// Adds a health check of the local service, built as it is. Its
    /// probes are served by [`MeshClient::health_layer`].
    pub fn check(mut self, check: HealthCheck) -> Self {
        self.checks.push(check);
        self
    }

    /// Adds a check named `name` running `run` for `probes`, with the
    /// configuration's `[health]` defaults (the probes' interval, timeout,
    /// thresholds).
    pub fn check_with<F, Fut>(
        mut self,
        name: &str,
        probes: impl IntoIterator<Item = Probe>,
        run: F,
    ) -> Result<Self, ConfigError>
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), mesh_health::CheckError>> + Send + 'static,
    {
        let defaults = self.config.health.clone().unwrap_or_default();
        self.checks.push(defaults.check(name, probes, run).build()?);
        Ok(self)
    }

    /// Builds and starts the client (see [`MeshClient::from_config`]).
    pub async fn build(self) -> Result<MeshClient, StartError> {
        MeshClient::start(self.config, self.checks).await
    }
}

// === impl MeshClient ===

impl MeshClient {
    /// Starts from a configuration; add health checks on the builder.
    pub fn builder(config: MeshConfig) -> MeshClientBuilder {
        MeshClientBuilder {
            config,
            checks: Vec::new(),
        }
    }

    /// Builds and starts the client: discovery (and its watches), the
    /// health manager, upstream health checks, certificate watching, and
    /// registration with Consul when configured. Needs a tokio runtime.
    ///
    /// # Errors
    ///
    /// [`StartError::Config`] naming the key when the configuration is
    /// refused (a value out of range, a file or certificate that cannot be
    /// read); [`StartError::Registration`] when `register = true` and the
    /// Consul agent does not take the local service.
    pub async fn from_config(config: MeshConfig) -> Result<MeshClient, StartError> {
        Self::start(config, Vec::new()).await
    }
}
