//! [`MeshClientBuilder`]: a configuration plus what only code can give.

use std::future::Future;
use std::sync::Arc;

use http::Response;
use mesh_core::{ConfigError, Probe};
use mesh_health::HealthCheck;

use super::{MeshBody, MeshClient, StartError};
use crate::config::MeshConfig;
use crate::fallback::{FallbackCause, FallbackFn};

/// Builds a [`MeshClient`]: its configuration plus what only code can
/// give (the local service's health checks, fallbacks written in code).
#[derive(Debug)]
pub struct MeshClientBuilder {
    config: MeshConfig,
    code: FromCode,
}

/// What only code gives a client.
#[derive(Default)]
pub(super) struct FromCode {
    pub(super) checks: Vec<HealthCheck>,
    /// By service name as written; checked at start.
    pub(super) fallbacks: Vec<(String, FallbackFn)>,
}

// === impl MeshClientBuilder ===

impl MeshClientBuilder {
    /// Adds a health check of the local service, built as it is. Its
    /// probes are served by [`MeshClient::health_layer`].
    pub fn check(mut self, check: HealthCheck) -> Self {
        self.code.checks.push(check);
        self
    }

    /// Answers failed calls to `service` (errors, refusals, and the
    /// statuses its `[services.<name>.fallback] on_status` lists) with
    /// `fallback`'s answer; `None` leaves the call's own outcome, or the
    /// fixed answer the file configures. A fresh last good answer
    /// (`last_good`) is preferred to it.
    ///
    /// A `service` that is not a valid service name fails
    /// [`MeshClientBuilder::build`], naming `services.<name>.fallback`.
    pub fn fallback<F>(mut self, service: &str, fallback: F) -> Self
    where
        F: Fn(&FallbackCause<'_>) -> Option<Response<MeshBody>> + Send + Sync + 'static,
    {
        self.code
            .fallbacks
            .push((service.to_owned(), Arc::new(fallback)));
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
        self.code
            .checks
            .push(defaults.check(name, probes, run).build()?);
        Ok(self)
    }

    /// Builds and starts the client (see [`MeshClient::from_config`]).
    pub async fn build(self) -> Result<MeshClient, StartError> {
        MeshClient::start(self.config, self.code).await
    }
}

// === impl MeshClient ===

impl MeshClient {
    /// Starts from a configuration; add health checks on the builder.
    pub fn builder(config: MeshConfig) -> MeshClientBuilder {
        MeshClientBuilder {
            config,
            code: FromCode::default(),
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
        Self::start(config, FromCode::default()).await
    }
}

impl std::fmt::Debug for FromCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FromCode")
            .field("checks", &self.checks)
            .field(
                "fallbacks",
                &self.fallbacks.iter().map(|(s, _)| s).collect::<Vec<_>>(),
            )
            .finish()
    }
}
