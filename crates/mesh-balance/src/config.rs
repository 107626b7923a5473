//! [`BalanceConfig`]: validated balancer settings, from code or a file.

use std::time::Duration;

use http::HeaderName;
use mesh_core::MeshError;
use serde::{Deserialize, Serialize};

use crate::strategy::{KeySource, Strategy};

/// How the balancer picks, and the limits it keeps.
///
/// ```
/// use mesh_balance::{BalanceConfig, Strategy};
///
/// let config: BalanceConfig = toml::from_str(r#"
///     strategy = "least_response_time"
///     sticky = [{ header = "x-client-id" }, { cookie = "session" }]
///     max_connections_per_instance = 500
///     panic_threshold = 50.0
/// "#)?;
/// assert_eq!(config.strategy(), &Strategy::LeastResponseTime);
/// assert_eq!(config.max_connections_per_instance(), Some(500));
///
/// let err = toml::from_str::<BalanceConfig>("panic_threshold = 120.0").unwrap_err();
/// assert!(err.to_string().contains("balance.panic_threshold"));
/// # Ok::<(), toml::de::Error>(())
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "RawConfig", into = "RawConfig")]
pub struct BalanceConfig {
    strategy: Strategy,
    sticky: Vec<KeySource>,
    max_connections_per_instance: Option<u32>,
    wait_at_capacity: Option<Duration>,
    panic_threshold: f64,
    unknown_latency: Duration,
}

/// A key source as written in a file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
enum RawKeySource {
    /// `"extension"`.
    Extension,
    /// `{ header = "x-client-id" }`.
    Header(String),
    /// `{ cookie = "session" }`.
    Cookie(String),
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    strategy: Option<Strategy>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    sticky: Vec<RawKeySource>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    max_connections_per_instance: Option<u32>,
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    wait_at_capacity: Option<Duration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    panic_threshold: Option<f64>,
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    unknown_latency: Option<Duration>,
}

impl TryFrom<RawConfig> for BalanceConfig {
    type Error = MeshError;

    fn try_from(raw: RawConfig) -> Result<Self, MeshError> {
        let mut b = BalanceConfig::builder();
        if let Some(s) = raw.strategy {
            b = b.strategy(s);
        }
        let mut sticky = Vec::new();
        for source in raw.sticky {
            sticky.push(match source {
                RawKeySource::Extension => KeySource::Extension,
                RawKeySource::Header(name) => KeySource::Header(
                    HeaderName::try_from(name.as_str())
                        .map_err(|e| invalid("sticky.header", format!("{name:?}: {e}")))?,
                ),
                RawKeySource::Cookie(name) => KeySource::Cookie(name),
            });
        }
        b.config.sticky = sticky;
        b.config.max_connections_per_instance = raw.max_connections_per_instance;
        b.config.wait_at_capacity = raw.wait_at_capacity;
        if let Some(p) = raw.panic_threshold {
            b = b.panic_threshold(p);
        }
        if let Some(d) = raw.unknown_latency {
            b = b.unknown_latency(d);
        }
        b.build()
    }
}

impl From<BalanceConfig> for RawConfig {
    fn from(c: BalanceConfig) -> Self {
        RawConfig {
            strategy: Some(c.strategy),
            sticky: c
                .sticky
                .into_iter()
                .map(|s| match s {
                    KeySource::Extension => RawKeySource::Extension,
                    KeySource::Header(h) => RawKeySource::Header(h.as_str().to_owned()),
                    KeySource::Cookie(c) => RawKeySource::Cookie(c),
                })
                .collect(),
            max_connections_per_instance: c.max_connections_per_instance,
            wait_at_capacity: c.wait_at_capacity,
            panic_threshold: Some(c.panic_threshold),
            unknown_latency: Some(c.unknown_latency),
        }
    }
}

fn invalid(field: &str, reason: String) -> MeshError {
    MeshError::InvalidConfig {
        what: format!("balance.{field}"),
        reason,
    }
}

impl BalanceConfig {
    /// Starts from [`BalanceConfig::default`].
    pub fn builder() -> BalanceConfigBuilder {
        BalanceConfigBuilder {
            config: BalanceConfig::default(),
        }
    }
    /// The strategy.
    pub fn strategy(&self) -> &Strategy {
        &self.strategy
    }
    /// Where affinity keys come from (empty: no session affinity).
    pub fn sticky(&self) -> &[KeySource] {
        &self.sticky
    }
    /// The most requests one instance may have in flight (the design
    /// document's `maxConnectionsPerInstance`), if limited.
    pub fn max_connections_per_instance(&self) -> Option<u32> {
        self.max_connections_per_instance
    }
    /// How long a request waits for a slot when every instance is at its
    /// limit; `None`: it fails at once with [`MeshError::AtCapacity`].
    pub fn wait_at_capacity(&self) -> Option<Duration> {
        self.wait_at_capacity
    }
    /// Below this share (percent) of available instances, instances that
    /// health checks call unhealthy take traffic again (Envoy's panic
    /// threshold); ejected and draining ones do not. 0 turns it off.
    pub fn panic_threshold(&self) -> f64 {
        self.panic_threshold
    }
    /// The latency assumed for an instance with no sample yet.
    pub fn unknown_latency(&self) -> Duration {
        self.unknown_latency
    }
}

impl Default for BalanceConfig {
    /// Round robin, no affinity, no connection limit, a 50% panic threshold
    /// (as Envoy's), 10 ms assumed for unmeasured instances.
    fn default() -> Self {
        BalanceConfig {
            strategy: Strategy::RoundRobin,
            sticky: Vec::new(),
            max_connections_per_instance: None,
            wait_at_capacity: None,
            panic_threshold: 50.0,
            unknown_latency: Duration::from_millis(10),
        }
    }
}

/// Builds a [`BalanceConfig`].
#[derive(Clone, Debug)]
pub struct BalanceConfigBuilder {
    config: BalanceConfig,
}

impl From<BalanceConfig> for BalanceConfigBuilder {
    /// Starts from an existing configuration.
    fn from(config: BalanceConfig) -> Self {
        BalanceConfigBuilder { config }
    }
}

impl BalanceConfigBuilder {
    /// Picks with `strategy`.
    pub fn strategy(mut self, strategy: Strategy) -> Self {
        self.config.strategy = strategy;
        self
    }
    /// Session affinity by these key sources, tried in order.
    pub fn sticky_by(mut self, sources: impl IntoIterator<Item = KeySource>) -> Self {
        self.config.sticky = sources.into_iter().collect();
        self
    }
    /// At most `n` requests in flight per instance; an instance at its
    /// limit is skipped, and with every instance at its limit the request
    /// fails at once with [`MeshError::AtCapacity`] (or waits, see
    /// [`BalanceConfigBuilder::wait_at_capacity`]).
    pub fn max_connections_per_instance(mut self, n: u32) -> Self {
        self.config.max_connections_per_instance = Some(n);
        self
    }
    /// With every instance at its limit, waits up to `max` for a slot
    /// (looking again every millisecond) instead of failing at once.
    pub fn wait_at_capacity(mut self, max: Duration) -> Self {
        self.config.wait_at_capacity = Some(max);
        self
    }
    /// The panic threshold in percent (0 to 100; 0 turns it off).
    pub fn panic_threshold(mut self, percent: f64) -> Self {
        self.config.panic_threshold = percent;
        self
    }
    /// The latency assumed for an instance with no sample yet.
    pub fn unknown_latency(mut self, d: Duration) -> Self {
        self.config.unknown_latency = d;
        self
    }

    /// Validates the settings.
    ///
    /// # Errors
    ///
    /// [`MeshError::InvalidConfig`] naming the field out of range.
    pub fn build(self) -> Result<BalanceConfig, MeshError> {
        let c = self.config;
        if !(0.0..=100.0).contains(&c.panic_threshold) {
            return Err(invalid(
                "panic_threshold",
                format!(
                    "{} is outside [0, 100]: it is a percentage of instances",
                    c.panic_threshold
                ),
            ));
        }
        if c.max_connections_per_instance == Some(0) {
            return Err(invalid(
                "max_connections_per_instance",
                "must be at least 1".into(),
            ));
        }
        if let Some(w) = c.wait_at_capacity {
            if w.is_zero() || w > Duration::from_secs(60) {
                return Err(invalid(
                    "wait_at_capacity",
                    format!("{w:?} is outside (0, 60s]"),
                ));
            }
        }
        if c.unknown_latency.is_zero() || c.unknown_latency > Duration::from_secs(60) {
            return Err(invalid(
                "unknown_latency",
                format!("{:?} is outside (0, 60s]", c.unknown_latency),
            ));
        }
        Ok(c)
    }
}
