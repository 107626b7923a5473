//! [`BalanceConfig`]: validated balancer settings, from code or a file.

use std::time::Duration;

use http::HeaderName;
use mesh_core::ConfigError;
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
#[serde(try_from = "Settings", into = "Settings")]
pub struct BalanceConfig {
    settings: Settings,
}

/// The settings of a [`BalanceConfig`], each declared once, in the form a
/// file writes them: a key left out takes its value from
/// [`Settings::default`]. A `BalanceConfig` holds them once
/// [`Settings::validate`] has accepted them, so a file and the builder
/// share one set of checks.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct Settings {
    strategy: Strategy,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    sticky: Vec<KeySource>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_connections_per_instance: Option<u32>,
    #[serde(with = "humantime_serde", skip_serializing_if = "Option::is_none")]
    wait_at_capacity: Option<Duration>,
    panic_threshold: f64,
    #[serde(with = "humantime_serde")]
    unknown_latency: Duration,
}

impl TryFrom<Settings> for BalanceConfig {
    type Error = ConfigError;

    fn try_from(settings: Settings) -> Result<Self, ConfigError> {
        settings.validate()?;
        Ok(BalanceConfig { settings })
    }
}

impl From<BalanceConfig> for Settings {
    fn from(config: BalanceConfig) -> Self {
        config.settings
    }
}

/// A [`KeySource`] as a file writes it: `"extension"`,
/// `{ header = "x-client-id" }` or `{ cookie = "session" }`. It exists
/// because a [`HeaderName`] has no serde form of its own.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
enum KeySourceForm {
    Extension,
    Header(String),
    Cookie(String),
}

// === impl KeySource ===

impl Serialize for KeySource {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            KeySource::Extension => KeySourceForm::Extension,
            KeySource::Header(name) => KeySourceForm::Header(name.as_str().to_owned()),
            KeySource::Cookie(name) => KeySourceForm::Cookie(name.clone()),
        }
        .serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for KeySource {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Ok(match KeySourceForm::deserialize(deserializer)? {
            KeySourceForm::Extension => KeySource::Extension,
            KeySourceForm::Header(name) => {
                KeySource::Header(HeaderName::try_from(name.as_str()).map_err(|e| {
                    serde::de::Error::custom(
                        ConfigError::new(
                            "balance.sticky.header",
                            format!("{name:?} is not a header name"),
                        )
                        .caused_by(e),
                    )
                })?)
            }
            KeySourceForm::Cookie(name) => KeySource::Cookie(name),
        })
    }
}

// === impl BalanceConfig ===

impl BalanceConfig {
    /// Starts from [`BalanceConfig::default`].
    pub fn builder() -> BalanceConfigBuilder {
        BalanceConfigBuilder {
            settings: Settings::default(),
        }
    }
    /// The strategy.
    pub fn strategy(&self) -> &Strategy {
        &self.settings.strategy
    }
    /// Where affinity keys come from (empty: no session affinity).
    pub fn sticky(&self) -> &[KeySource] {
        &self.settings.sticky
    }
    /// The most requests one instance may have in flight (the design
    /// document's `maxConnectionsPerInstance`), if limited.
    pub fn max_connections_per_instance(&self) -> Option<u32> {
        self.settings.max_connections_per_instance
    }
    /// How long a request waits for a slot when every instance is at its
    /// limit; `None`: it fails at once with [`mesh_core::MeshError::AtCapacity`].
    pub fn wait_at_capacity(&self) -> Option<Duration> {
        self.settings.wait_at_capacity
    }
    /// Below this share (percent) of available instances, instances that
    /// health checks call unhealthy take traffic again (Envoy's panic
    /// threshold); ejected and draining ones do not. 0 turns it off.
    pub fn panic_threshold(&self) -> f64 {
        self.settings.panic_threshold
    }
    /// The latency assumed for an instance with no sample yet when no
    /// candidate it is compared with has one either; otherwise it is taken
    /// to be as fast as those (the other of two choices, the mean for
    /// least response time), so a new instance gets its share at once.
    pub fn unknown_latency(&self) -> Duration {
        self.settings.unknown_latency
    }
}

impl Default for BalanceConfig {
    /// Power of two choices over the peak-sensitive latency estimate x (in
    /// flight + 1) (linkerd's and Finagle's default: a slow instance gets
    /// few calls), no affinity, no connection limit, a 50% panic threshold
    /// (as Envoy's), 10 ms assumed for unmeasured instances.
    fn default() -> Self {
        BalanceConfig {
            settings: Settings::default(),
        }
    }
}

// === impl Settings ===

impl Default for Settings {
    /// The values [`BalanceConfig::default`] describes.
    fn default() -> Self {
        Settings {
            strategy: Strategy::PowerOfTwoChoices,
            sticky: Vec::new(),
            max_connections_per_instance: None,
            wait_at_capacity: None,
            panic_threshold: 50.0,
            unknown_latency: Duration::from_millis(10),
        }
    }
}

impl Settings {
    /// Checks every value, naming the first key out of range.
    fn validate(&self) -> Result<(), ConfigError> {
        if !(0.0..=100.0).contains(&self.panic_threshold) {
            return Err(ConfigError::new(
                "balance.panic_threshold",
                format!(
                    "{} is outside [0, 100]: it is a percentage of instances",
                    self.panic_threshold
                ),
            ));
        }
        if self.max_connections_per_instance == Some(0) {
            return Err(ConfigError::new(
                "balance.max_connections_per_instance",
                "must be at least 1",
            ));
        }
        if let Some(w) = self.wait_at_capacity {
            if w.is_zero() || w > Duration::from_secs(60) {
                return Err(ConfigError::new(
                    "balance.wait_at_capacity",
                    format!("{w:?} is outside (0, 60s]"),
                ));
            }
        }
        if self.unknown_latency.is_zero() || self.unknown_latency > Duration::from_secs(60) {
            return Err(ConfigError::new(
                "balance.unknown_latency",
                format!("{:?} is outside (0, 60s]", self.unknown_latency),
            ));
        }
        Ok(())
    }
}

/// Builds a [`BalanceConfig`].
#[derive(Clone, Debug)]
pub struct BalanceConfigBuilder {
    settings: Settings,
}

impl From<BalanceConfig> for BalanceConfigBuilder {
    /// Starts from an existing configuration.
    fn from(config: BalanceConfig) -> Self {
        BalanceConfigBuilder {
            settings: config.settings,
        }
    }
}

impl BalanceConfigBuilder {
    /// Picks with `strategy`.
    pub fn strategy(mut self, strategy: Strategy) -> Self {
        self.settings.strategy = strategy;
        self
    }
    /// Session affinity by these key sources, tried in order.
    pub fn sticky_by(mut self, sources: impl IntoIterator<Item = KeySource>) -> Self {
        self.settings.sticky = sources.into_iter().collect();
        self
    }
    /// At most `n` requests in flight per instance; an instance at its
    /// limit is skipped, and with every instance at its limit the request
    /// fails at once with [`mesh_core::MeshError::AtCapacity`] (or waits, see
    /// [`BalanceConfigBuilder::wait_at_capacity`]).
    pub fn max_connections_per_instance(mut self, n: u32) -> Self {
        self.settings.max_connections_per_instance = Some(n);
        self
    }
    /// With every instance at its limit, waits up to `max` for a slot
    /// (woken when a call of this balancer ends) instead of failing at once.
    pub fn wait_at_capacity(mut self, max: Duration) -> Self {
        self.settings.wait_at_capacity = Some(max);
        self
    }
    /// The panic threshold in percent (0 to 100; 0 turns it off).
    pub fn panic_threshold(mut self, percent: f64) -> Self {
        self.settings.panic_threshold = percent;
        self
    }
    /// The latency assumed for an instance with no sample yet.
    pub fn unknown_latency(mut self, d: Duration) -> Self {
        self.settings.unknown_latency = d;
        self
    }

    /// Validates the settings.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] whose [`key`](ConfigError::key) is the field out
    /// of range (`balance.panic_threshold`).
    pub fn build(self) -> Result<BalanceConfig, ConfigError> {
        BalanceConfig::try_from(self.settings)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_key_is_read_with_human_durations_and_written_back() {
        let config: BalanceConfig = toml::from_str(
            r#"
            strategy = "consistent_hash"
            sticky = [{ header = "x-client-id" }, { cookie = "session" }, "extension"]
            max_connections_per_instance = 500
            wait_at_capacity = "10ms"
            panic_threshold = 0.0
            unknown_latency = "50ms"
            "#,
        )
        .expect("valid");
        assert_eq!(config.strategy(), &Strategy::ConsistentHash);
        assert_eq!(
            config.sticky(),
            [
                KeySource::Header(HeaderName::from_static("x-client-id")),
                KeySource::Cookie("session".into()),
                KeySource::Extension,
            ]
        );
        assert_eq!(config.wait_at_capacity(), Some(Duration::from_millis(10)));
        assert_eq!(config.unknown_latency(), Duration::from_millis(50));

        let text = toml::to_string(&config).expect("serializes");
        assert_eq!(
            toml::from_str::<BalanceConfig>(&text).expect("reads back"),
            config
        );
    }

    #[test]
    fn the_builder_refuses_values_out_of_range_naming_the_key() {
        let b = BalanceConfig::builder;
        for (builder, key) in [
            (b().panic_threshold(120.0), "balance.panic_threshold"),
            (
                b().max_connections_per_instance(0),
                "balance.max_connections_per_instance",
            ),
            (
                b().wait_at_capacity(Duration::ZERO),
                "balance.wait_at_capacity",
            ),
            (
                b().unknown_latency(Duration::from_secs(61)),
                "balance.unknown_latency",
            ),
        ] {
            let err = builder.build().expect_err(key);
            assert_eq!(err.key(), key);
            assert!(err.to_string().contains(key), "{err}");
        }
    }

    #[test]
    fn a_bad_header_name_says_why_once() {
        let err = toml::from_str::<BalanceConfig>("sticky = [{ header = \"bad header\" }]")
            .expect_err("refused");
        let text = err.to_string();
        assert!(
            text.contains(
                "invalid configuration: balance.sticky.header: \"bad header\" is not a header name: invalid HTTP header name"
            ),
            "{text}"
        );
    }

    #[test]
    fn an_empty_section_is_the_default() {
        let config: BalanceConfig = toml::from_str("").expect("valid");
        assert_eq!(config, BalanceConfig::default());
    }

    #[test]
    fn bad_keys_and_values_are_refused_naming_them() {
        for (text, expected) in [
            ("panic_treshold = 10.0", "panic_treshold"),
            ("strategy = \"fastest\"", "fastest"),
            (
                "sticky = [{ header = \"bad header\" }]",
                "balance.sticky.header",
            ),
            ("sticky = [{ query = \"id\" }]", "query"),
            (
                "max_connections_per_instance = 0",
                "balance.max_connections_per_instance",
            ),
            ("wait_at_capacity = \"2m\"", "balance.wait_at_capacity"),
            ("unknown_latency = \"0s\"", "balance.unknown_latency"),
        ] {
            let err = toml::from_str::<BalanceConfig>(text).expect_err(text);
            assert!(err.to_string().contains(expected), "{text}: {err}");
        }
    }
}
