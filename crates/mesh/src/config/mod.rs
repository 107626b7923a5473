//! [`MeshConfig`]: the whole client from one file, with profiles,
//! per-service overrides and environment overrides.
//!
//! Each section has its own module: the [`Profile`] defaults, the
//! [`DiscoveryConfig`] kinds, the services ([`LocalService`],
//! [`ServiceOverride`]), [`RetrySettings`] and [`LimitsConfig`]; reading
//! a file (`load`), the environment overrides (`env`) and the checks
//! serde cannot make (`validate`) are rooms of their own too. This module
//! holds the configuration itself and answers "which setting applies to
//! this service".

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use mesh_balance::BalanceConfig;
use mesh_breaker::{BreakerConfig, BreakerConfigBuilder};
use mesh_core::{ConfigError, ServiceName};
use mesh_health::{HealthConfig, UpstreamCheckConfig};
use mesh_retry::RetryConfig;
use mesh_tls::{SpiffeId, TlsConfig};
use serde::{Deserialize, Serialize};

mod discovery;
mod env;
mod fallback;
mod grpc_service_config;
mod limits;
mod load;
mod methods;
mod profile;
mod retry;
mod service;
mod validate;

pub use discovery::DiscoveryConfig;
pub(crate) use fallback::status as fallback_status;
pub use fallback::FallbackConfig;
pub use limits::LimitsConfig;
pub use methods::{MethodSettings, RetryPolicySettings};
pub use profile::Profile;
pub use retry::{deadline_for, retry_after_for, RetrySettings};
pub use service::{LocalService, Protocol, ServiceOverride};

/// The whole configuration of a [`crate::MeshClient`].
///
/// ```
/// let config = mesh::MeshConfig::from_toml_str(r#"
///     profile = "staging"
///     [service]
///     name = "api-gateway"
///     [discovery]
///     kind = "static"
///     services = { users = ["127.0.0.1:8081"] }
///     [services.users]
///     timeout = "2s"
/// "#)?;
/// assert_eq!(config.service.name, "api-gateway");
/// assert_eq!(config.timeout_for("users"), std::time::Duration::from_secs(2));
///
/// let err = mesh::MeshConfig::from_toml_str(r#"
///     [service]
///     name = "api-gateway"
///     [discovery]
///     kind = "static"
///     services = {}
///     [services.users.retry]
///     max_retrys = 3
/// "#).unwrap_err();
/// assert!(err.to_string().contains("services.users.retry"), "{err}");
/// # Ok::<(), mesh_core::ConfigError>(())
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MeshConfig {
    /// The defaults' strictness (`MESH_PROFILE` overrides it).
    #[serde(default)]
    pub profile: Profile,
    /// The local service.
    pub service: LocalService,
    /// Where other services are found.
    pub discovery: DiscoveryConfig,
    /// How long a service's set is kept while its registry fails (file,
    /// Consul, Kubernetes); unset, forever.
    #[serde(default, with = "humantime_serde")]
    pub max_staleness: Option<Duration>,
    /// Per-attempt timeout for every service (else the profile's).
    #[serde(default, with = "humantime_serde")]
    pub timeout: Option<Duration>,
    /// How many bytes of a streamed request body (a gRPC client stream)
    /// are kept so a retry can send it again, for every service (else
    /// [`MeshConfig::DEFAULT_REPLAY_BUFFER`]); past them the call is
    /// committed to its first attempt, never failed for its size.
    #[serde(default)]
    pub replay_buffer: Option<usize>,
    /// Balancing for every service.
    #[serde(default)]
    pub balance: Option<BalanceConfig>,
    /// Circuit breaking for every service (else the profile's).
    #[serde(default)]
    pub breaker: Option<BreakerConfig>,
    /// Retries for every service (else the profile's).
    #[serde(default)]
    pub retry: Option<RetrySettings>,
    /// Rate and concurrency limits for every service (each service gets
    /// its own allowance).
    #[serde(default)]
    pub limits: Option<LimitsConfig>,
    /// The local service's probes.
    #[serde(default)]
    pub health: Option<HealthConfig>,
    /// Active health checks of every service's instances.
    #[serde(default)]
    pub upstream_health: Option<UpstreamCheckConfig>,
    /// Mutual TLS (the design document's `mtls`).
    #[serde(default)]
    pub tls: Option<TlsConfig>,
    /// Per-service overrides, by service name.
    #[serde(default)]
    pub services: BTreeMap<String, ServiceOverride>,
    /// Capacity of the event channel (slow subscribers lose the oldest).
    #[serde(default = "default_event_capacity")]
    pub event_capacity: usize,
}

fn default_event_capacity() -> usize {
    1024
}

// === impl MeshConfig ===

impl MeshConfig {
    /// Whether calls go over mutual TLS (`[tls]` present and enabled).
    pub fn tls_enabled(&self) -> bool {
        self.tls.as_ref().is_some_and(|t| t.enabled)
    }

    /// The SPIFFE IDs configured per service (`services.<name>.identity`),
    /// parsed; each needs `[tls]` on.
    pub fn identities(&self) -> Result<HashMap<ServiceName, SpiffeId>, ConfigError> {
        let mut identities = HashMap::new();
        for (name, o) in &self.services {
            let Some(identity) = &o.identity else {
                continue;
            };
            let what = || format!("services.{name}.identity");
            if !self.tls_enabled() {
                return Err(ConfigError::new(
                    what(),
                    "an expected identity needs mutual TLS: add an enabled [tls] section",
                ));
            }
            let id = identity
                .parse::<SpiffeId>()
                .map_err(|e| ConfigError::new(what(), format!("{identity:?}: {}", e.reason())))?;
            let service = ServiceName::new(name)
                .map_err(|e| ConfigError::new(format!("services.{name}"), e))?;
            identities.insert(service, id);
        }
        Ok(identities)
    }

    /// A setting for `service`: its override, else the file's.
    fn pick<'a, T>(
        &'a self,
        service: &str,
        overridden: impl Fn(&'a ServiceOverride) -> Option<&'a T>,
        everywhere: Option<&'a T>,
    ) -> Option<&'a T> {
        self.services
            .get(service)
            .and_then(overridden)
            .or(everywhere)
    }

    /// The per-attempt timeout for `service`: its override, else the
    /// file's, else the profile's.
    pub fn timeout_for(&self, service: &str) -> Duration {
        self.pick(service, |o| o.timeout.as_ref(), self.timeout.as_ref())
            .copied()
            .unwrap_or_else(|| self.profile.timeout())
    }

    /// The replay buffer when the file sets none: 1 MiB, gRPC's default
    /// per-call retry buffer.
    pub const DEFAULT_REPLAY_BUFFER: usize = 1 << 20;

    /// The largest `replay_buffer` accepted: each streamed call may keep
    /// this much in memory while it is sent.
    pub const MAX_REPLAY_BUFFER: usize = 64 << 20;

    /// How much of a streamed request body to `service` is kept for
    /// retries: its override, else the file's, else 1 MiB.
    pub fn replay_buffer_for(&self, service: &str) -> usize {
        self.pick(
            service,
            |o| o.replay_buffer.as_ref(),
            self.replay_buffer.as_ref(),
        )
        .copied()
        .unwrap_or(MeshConfig::DEFAULT_REPLAY_BUFFER)
    }

    /// `service`'s per-method policies: its gRPC service config's
    /// `methodConfig` entries and its `[[services.<name>.methods]]`;
    /// `None` when it has neither. Reads the service config's file.
    pub(crate) fn method_policies_for(
        &self,
        service: &str,
    ) -> Result<Option<crate::policies::MethodPolicies>, ConfigError> {
        let Some(o) = self.services.get(service) else {
            return Ok(None);
        };
        let mut rules = match &o.grpc_service_config {
            Some(path) => {
                let key = format!("services.{service}.grpc_service_config");
                grpc_service_config::load(path, &key)?
            }
            None => Vec::new(),
        };
        for (i, method) in o.methods.iter().enumerate() {
            rules.push(method.rule(&format!("services.{service}.methods[{i}]"))?);
        }
        Ok(crate::policies::MethodPolicies::new(rules))
    }

    /// The retry settings for `service`.
    pub fn retry_for(&self, service: &str) -> Result<RetryConfig, ConfigError> {
        match self.pick(service, |o| o.retry.as_ref(), self.retry.as_ref()) {
            Some(retry) => retry.build(self.timeout_for(service)),
            None => self.profile.retry_within(self.timeout_for(service)),
        }
    }

    /// The breaker settings for `service`, its per-attempt timeout
    /// ([`MeshConfig::timeout_for`]) as their call timeout: timed by the
    /// breaker, an attempt that runs out of time counts against the
    /// endpoint that was slow.
    pub fn breaker_for(&self, service: &str) -> Result<BreakerConfig, ConfigError> {
        let breaker = match self.pick(service, |o| o.breaker.as_ref(), self.breaker.as_ref()) {
            Some(breaker) => breaker.clone(),
            None => self.profile.breaker()?,
        };
        BreakerConfigBuilder::from_config(breaker)
            .call_timeout(self.timeout_for(service))
            .build()
    }

    /// The protocol for `service`.
    pub fn protocol_for(&self, service: &str) -> Protocol {
        self.services
            .get(service)
            .map(|o| o.protocol)
            .unwrap_or_default()
    }

    /// The limits for `service`.
    pub fn limits_for(&self, service: &str) -> Option<&LimitsConfig> {
        self.pick(service, |o| o.limits.as_ref(), self.limits.as_ref())
    }

    /// The balancing settings for `service`.
    pub fn balance_for(&self, service: &str) -> BalanceConfig {
        self.pick(service, |o| o.balance.as_ref(), self.balance.as_ref())
            .cloned()
            .unwrap_or_default()
    }
}
