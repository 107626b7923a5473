//! [`MeshConfig`]: the whole client from one file, with profiles,
//! per-service overrides and environment overrides.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::Duration;

use mesh_balance::BalanceConfig;
use mesh_breaker::{BreakerConfig, BreakerScope};
use mesh_core::{MeshError, Secret, ServiceName};
use mesh_health::{HealthConfig, UpstreamCheckConfig};
use mesh_retry::{Backoff, Jitter, RetryConfig};
use mesh_tls::{SpiffeId, TlsConfig};
use serde::{Deserialize, Serialize};

/// How strict the defaults are (the design document's environment
/// profiles). Sections written in the file override them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Profile {
    /// Relaxed: long timeouts, one retry, a breaker that trips only on a
    /// long run of failures, so a developer's flaky laptop stack keeps
    /// answering.
    Development,
    /// Production-like: production's settings, to find problems before
    /// production does.
    Staging,
    /// Strict: short timeouts, retries within a budget, per-endpoint
    /// breakers on failure rate.
    #[default]
    Production,
}

impl Profile {
    /// The per-attempt timeout.
    pub fn timeout(self) -> Duration {
        match self {
            Profile::Development => Duration::from_secs(30),
            Profile::Staging | Profile::Production => Duration::from_secs(5),
        }
    }

    /// The retry defaults for the profile's own per-attempt timeout.
    pub fn retry(self) -> Result<RetryConfig, MeshError> {
        self.retry_within(self.timeout())
    }

    /// The retry defaults for calls whose attempts may take `attempt`:
    /// the whole call bounded by [`deadline_for`] it, a server's
    /// `Retry-After` honoured only up to [`retry_after_for`] it.
    pub fn retry_within(self, attempt: Duration) -> Result<RetryConfig, MeshError> {
        let builder = match self {
            Profile::Development => RetryConfig::builder()
                .max_retries(1)
                .backoff(Backoff::constant(Duration::from_millis(100))),
            Profile::Staging | Profile::Production => RetryConfig::builder()
                .max_retries(2)
                .backoff(Backoff::exponential(Duration::from_millis(50), 2.0))
                .budget(20.0, 10, Duration::from_secs(10)),
        };
        builder
            .deadline(deadline_for(attempt))
            .max_retry_after(retry_after_for(attempt))
            .build()
    }

    /// The breaker defaults: per endpoint, so one bad instance is ejected
    /// rather than the whole service refused.
    pub fn breaker(self) -> Result<BreakerConfig, MeshError> {
        let base = match self {
            Profile::Development => BreakerConfig::builder()
                .consecutive_failures(20)
                .no_failure_rate()
                .open_duration(Duration::from_secs(5)),
            Profile::Staging | Profile::Production => BreakerConfig::builder()
                .consecutive_failures(5)
                .failure_rate_threshold(50.0)
                .minimum_calls(20)
                .open_duration(Duration::from_secs(30)),
        };
        base.scope(BreakerScope::Endpoint).build()
    }
}

/// The longest a whole call may take when its attempts may take `attempt`
/// each, retries and their waits included: two attempts' worth, so one
/// slow attempt still leaves room for a retry elsewhere, and no call waits
/// for ever.
pub fn deadline_for(attempt: Duration) -> Duration {
    attempt.saturating_mul(2)
}

/// The longest `Retry-After` honoured by default when attempts may take
/// `attempt`: mesh-retry's default (1 s), or less when attempts are
/// shorter. A server asking for longer gets its answer back at once rather
/// than holding the call.
pub fn retry_after_for(attempt: Duration) -> Duration {
    attempt.min(RetryConfig::DEFAULT_MAX_RETRY_AFTER)
}

/// The local service (the design document's `createServiceMeshClient("api-gateway")`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LocalService {
    /// Its name (`SERVICE_NAME` overrides it).
    pub name: String,
    /// Where others reach it, for registration.
    #[serde(default)]
    pub address: Option<std::net::IpAddr>,
    /// Its port, for registration.
    #[serde(default)]
    pub port: Option<u16>,
    /// Tags it registers with (`v1`, `canary`...).
    #[serde(default)]
    pub tags: Vec<String>,
}

/// Where the instances of other services are found.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum DiscoveryConfig {
    /// Fixed lists: service name to `ip:port` entries.
    Static {
        /// The lists.
        services: BTreeMap<String, Vec<String>>,
    },
    /// A JSON or TOML file of the same shape, watched for changes.
    File {
        /// The file (relative paths are from the configuration file).
        path: PathBuf,
        /// How often it is checked.
        #[serde(default, with = "humantime_serde")]
        check_every: Option<Duration>,
    },
    /// Consul's health API with blocking queries (`CONSUL_URL` overrides
    /// the address).
    Consul {
        /// `http://consul:8500`.
        url: String,
        /// ACL token: never printed (`Debug` and `Serialize` show
        /// `<redacted>`).
        #[serde(default)]
        token: Option<Secret>,
        /// Datacenter.
        #[serde(default)]
        datacenter: Option<String>,
        /// Only instances with all these tags.
        #[serde(default)]
        tags: Vec<String>,
        /// Register the local service with the agent (needs `service.address`
        /// and `service.port`), deregistered on shutdown.
        #[serde(default)]
        register: bool,
    },
    /// Kubernetes DNS: the headless Service `<name>.<namespace>.svc.<zone>`
    /// (A/AAAA records with a fixed port, or SRV records for a named port).
    Kubernetes {
        /// The port every instance serves on (A/AAAA records).
        #[serde(default)]
        port: Option<u16>,
        /// A named port to look up with SRV records (`http`), when `port`
        /// is not given.
        #[serde(default)]
        port_name: Option<String>,
        /// The namespace (`default`).
        #[serde(default)]
        namespace: Option<String>,
        /// The cluster zone (`cluster.local`).
        #[serde(default)]
        zone: Option<String>,
        /// The DNS server (else the system's resolver configuration).
        #[serde(default)]
        nameserver: Option<std::net::SocketAddr>,
    },
}

/// Retry settings as written in a file; [`RetrySettings::build`] turns them
/// into a validated [`RetryConfig`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetrySettings {
    /// Retries after the first attempt.
    pub max_retries: u32,
    /// `exponential`, `linear`, `constant` or `fibonacci`.
    #[serde(default = "default_backoff")]
    pub backoff: String,
    /// The first delay.
    #[serde(default = "default_initial", with = "humantime_serde")]
    pub initial: Duration,
    /// Growth per retry, for `exponential`.
    #[serde(default = "default_multiplier")]
    pub multiplier: f64,
    /// The longest delay.
    #[serde(default, with = "humantime_serde")]
    pub max_delay: Option<Duration>,
    /// `none`, `full`, `equal` or `decorrelated`.
    #[serde(default = "default_jitter")]
    pub jitter: String,
    /// Statuses worth another attempt (else the retry crate's defaults:
    /// 408, 429, 500, 502, 503, 504).
    #[serde(default)]
    pub retryable_statuses: Option<Vec<u16>>,
    /// Retry POST and PATCH too (they may apply twice).
    #[serde(default)]
    pub retry_non_idempotent: bool,
    /// Retries may add at most this percent of the service's requests
    /// (plus 10 retries a second so a quiet service can still retry);
    /// `0` allows no retries at all.
    #[serde(default = "default_budget")]
    pub budget_percent: f64,
    /// The whole call, retries included, must end within this (else the
    /// profile's deadline: two per-attempt timeouts).
    #[serde(default, with = "humantime_serde")]
    pub deadline: Option<Duration>,
    /// The longest `Retry-After` honoured; a server asking for longer gets
    /// no retry and its answer goes back to the caller (else 1 s, or the
    /// per-attempt timeout when shorter).
    #[serde(default, with = "humantime_serde")]
    pub max_retry_after: Option<Duration>,
}

fn default_backoff() -> String {
    "exponential".to_owned()
}
fn default_initial() -> Duration {
    Duration::from_millis(50)
}
fn default_multiplier() -> f64 {
    2.0
}
fn default_jitter() -> String {
    "full".to_owned()
}
fn default_budget() -> f64 {
    20.0
}

impl RetrySettings {
    /// The validated configuration for attempts that may take `attempt`:
    /// where the settings name none, the deadline is [`deadline_for`] it
    /// and `Retry-After` is honoured up to [`retry_after_for`] it. Errors
    /// name the setting.
    pub fn build(&self, attempt: Duration) -> Result<RetryConfig, MeshError> {
        let invalid = |what: &str, reason: String| MeshError::InvalidConfig {
            what: format!("retry.{what}"),
            reason,
        };
        let mut backoff = match self.backoff.as_str() {
            "exponential" => Backoff::exponential(self.initial, self.multiplier),
            "linear" => Backoff::linear(self.initial),
            "constant" => Backoff::constant(self.initial),
            "fibonacci" => Backoff::fibonacci(self.initial),
            other => {
                return Err(invalid(
                    "backoff",
                    format!("{other:?}: use exponential, linear, constant or fibonacci"),
                ))
            }
        };
        if let Some(max) = self.max_delay {
            backoff = backoff.max_delay(max);
        }
        backoff = backoff.jitter(match self.jitter.as_str() {
            "none" => Jitter::None,
            "full" => Jitter::Full,
            "equal" => Jitter::Equal,
            "decorrelated" => Jitter::Decorrelated,
            other => {
                return Err(invalid(
                    "jitter",
                    format!("{other:?}: use none, full, equal or decorrelated"),
                ))
            }
        });
        let mut builder = RetryConfig::builder()
            .max_retries(self.max_retries)
            .backoff(backoff)
            .retry_non_idempotent(self.retry_non_idempotent);
        if let Some(codes) = &self.retryable_statuses {
            let mut statuses = Vec::new();
            for code in codes {
                statuses.push(http::StatusCode::from_u16(*code).map_err(|_| {
                    invalid("retryable_statuses", format!("{code} is not a status"))
                })?);
            }
            builder = builder.retryable_statuses(statuses);
        }
        if !(0.0..=100.0).contains(&self.budget_percent) {
            return Err(invalid(
                "budget_percent",
                format!("{} is outside [0, 100]", self.budget_percent),
            ));
        }
        // A zero budget funds nothing, the per-second minimum included.
        let minimum = if self.budget_percent == 0.0 { 0 } else { 10 };
        builder
            .budget(self.budget_percent, minimum, Duration::from_secs(10))
            .deadline(self.deadline.unwrap_or_else(|| deadline_for(attempt)))
            .max_retry_after(
                self.max_retry_after
                    .unwrap_or_else(|| retry_after_for(attempt)),
            )
            .build()
    }
}

/// Limits on calls to a service: over them, a call is refused at once
/// with [`MeshError::LimitExceeded`] rather than queued.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    /// Calls in flight at most.
    #[serde(default)]
    pub concurrency: Option<u32>,
    /// Calls per `per` at most (a token bucket: bursts up to `requests`).
    #[serde(default)]
    pub requests: Option<u32>,
    /// The period for `requests` (1 s by default).
    #[serde(default, with = "humantime_serde")]
    pub per: Option<Duration>,
}

impl LimitsConfig {
    fn validate(&self, what: &str) -> Result<(), MeshError> {
        let invalid = |field: &str, reason: &str| {
            Err(MeshError::InvalidConfig {
                what: format!("{what}.{field}"),
                reason: reason.to_owned(),
            })
        };
        if self.concurrency == Some(0) {
            return invalid("concurrency", "must be at least 1");
        }
        if self.requests == Some(0) {
            return invalid("requests", "must be at least 1");
        }
        if let Some(per) = self.per {
            if per.is_zero() || per > Duration::from_secs(3600) {
                return invalid("per", "must be within (0, 1h]");
            }
            if self.requests.is_none() {
                return invalid("per", "needs requests");
            }
        }
        if let Some(n) = self.requests {
            let per = self.per.unwrap_or(Duration::from_secs(1));
            if per.as_nanos() < u128::from(n) {
                return invalid("requests", "more than one call per nanosecond");
            }
        }
        Ok(())
    }
}

/// Which HTTP version calls to a service use.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// HTTP/1.1 over plain TCP; over mutual TLS, whatever ALPN agrees
    /// (h2 or HTTP/1.1). The default.
    #[default]
    Http1,
    /// HTTP/2 only, by prior knowledge, as gRPC services speak it: h2c
    /// over plain TCP, h2 inside mutual TLS when `[tls]` is on (`h2` is
    /// accepted as another name for it).
    #[serde(alias = "h2")]
    H2c,
}

/// What may differ for one service (the design document's gateway, auth,
/// payment and notification examples).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceOverride {
    /// `http1` (the default) or `h2c` (HTTP/2 only, as gRPC needs).
    #[serde(default)]
    pub protocol: Protocol,
    /// Call this service over plain TCP although `[tls]` is on: the one
    /// way a route leaves mutual TLS, so it must be written down.
    #[serde(default)]
    pub plaintext: bool,
    /// The SPIFFE ID this service's instances must present
    /// (`spiffe://cluster.local/ns/payments/sa/payment`), over
    /// `[tls] peer_identity`'s template.
    #[serde(default)]
    pub identity: Option<String>,
    /// Per-attempt timeout.
    #[serde(default, with = "humantime_serde")]
    pub timeout: Option<Duration>,
    /// Balancing.
    #[serde(default)]
    pub balance: Option<BalanceConfig>,
    /// Circuit breaking.
    #[serde(default)]
    pub breaker: Option<BreakerConfig>,
    /// Retries.
    #[serde(default)]
    pub retry: Option<RetrySettings>,
    /// Rate and concurrency limits.
    #[serde(default)]
    pub limits: Option<LimitsConfig>,
    /// A canary split between subsets of the service's instances
    /// (`[[services.user-service.split]]` tables); changeable at run time
    /// with [`crate::MeshClient::set_split`].
    #[serde(default)]
    pub split: Vec<crate::split::Subset>,
}

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
/// # Ok::<(), mesh_core::MeshError>(())
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

impl MeshConfig {
    /// Reads a TOML file (or YAML, for a `.yaml` or `.yml` file), applies
    /// the environment overrides (`SERVICE_NAME`, `CONSUL_URL`,
    /// `MESH_PROFILE`) and validates. A relative discovery file path is
    /// taken from the file's directory.
    pub fn load(path: impl AsRef<Path>) -> Result<MeshConfig, MeshError> {
        Self::load_with_env(path, |k| std::env::var(k).ok())
    }

    /// [`MeshConfig::load`] with the environment read through `var`
    /// (tests, or a process that keeps its settings elsewhere).
    pub fn load_with_env(
        path: impl AsRef<Path>,
        var: impl Fn(&str) -> Option<String>,
    ) -> Result<MeshConfig, MeshError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| MeshError::InvalidConfig {
            what: path.display().to_string(),
            reason: format!("cannot read: {e}"),
        })?;
        let yaml = path.extension().is_some_and(|e| e == "yaml" || e == "yml");
        let parsed = match yaml {
            true => Self::parse_yaml(&text),
            false => Self::parse(&text),
        };
        let mut config = parsed.map_err(|e| e.within(&format!("{}: ", path.display())))?;
        if let DiscoveryConfig::File { path: file, .. } = &mut config.discovery {
            if file.is_relative() {
                if let Some(dir) = path.parent() {
                    *file = dir.join(&*file);
                }
            }
        }
        config.apply_env(var)?;
        config.validate()?;
        Ok(config)
    }

    /// Parses TOML text and validates it (no environment overrides).
    pub fn from_toml_str(text: &str) -> Result<MeshConfig, MeshError> {
        let config = Self::parse(text)?;
        config.validate()?;
        Ok(config)
    }

    /// Parses YAML text and validates it (no environment overrides).
    pub fn from_yaml_str(text: &str) -> Result<MeshConfig, MeshError> {
        let config = Self::parse_yaml(text)?;
        config.validate()?;
        Ok(config)
    }

    fn parse_yaml(text: &str) -> Result<MeshConfig, MeshError> {
        Self::deserialize(serde_norway::Deserializer::from_str(text))
    }

    fn parse(text: &str) -> Result<MeshConfig, MeshError> {
        let de = toml::de::Deserializer::parse(text).map_err(|e| MeshError::InvalidConfig {
            what: "the configuration".to_owned(),
            reason: e.to_string(),
        })?;
        Self::deserialize(de)
    }

    /// Deserializes, naming the path of the key at fault.
    fn deserialize<'de, D: serde::Deserializer<'de>>(de: D) -> Result<MeshConfig, MeshError> {
        serde_path_to_error::deserialize(de).map_err(|e| {
            let path = e.path().to_string();
            MeshError::InvalidConfig {
                what: if path == "." {
                    "the configuration".to_owned()
                } else {
                    path
                },
                reason: e.into_inner().to_string(),
            }
        })
    }

    /// Applies the overrides the design document's Deployment sets, read
    /// through `var`: `SERVICE_NAME`, `CONSUL_URL` (for Consul discovery),
    /// `MESH_PROFILE`.
    pub fn apply_env(&mut self, var: impl Fn(&str) -> Option<String>) -> Result<(), MeshError> {
        if let Some(name) = var("SERVICE_NAME").filter(|v| !v.is_empty()) {
            self.service.name = name;
        }
        if let (Some(consul), DiscoveryConfig::Consul { url, .. }) = (
            var("CONSUL_URL").filter(|v| !v.is_empty()),
            &mut self.discovery,
        ) {
            *url = consul;
        }
        if let Some(profile) = var("MESH_PROFILE").filter(|v| !v.is_empty()) {
            self.profile = match profile.as_str() {
                "development" => Profile::Development,
                "staging" => Profile::Staging,
                "production" => Profile::Production,
                other => {
                    return Err(MeshError::InvalidConfig {
                        what: "MESH_PROFILE".to_owned(),
                        reason: format!("{other:?}: use development, staging or production"),
                    })
                }
            };
        }
        Ok(())
    }

    /// Checks what serde alone cannot; the error names the value.
    pub fn validate(&self) -> Result<(), MeshError> {
        let invalid = |what: String, reason: String| Err(MeshError::InvalidConfig { what, reason });
        ServiceName::new(&self.service.name).map_err(|e| MeshError::InvalidConfig {
            what: "service.name".to_owned(),
            reason: e.to_string(),
        })?;
        for name in self.services.keys() {
            match ServiceName::new(name) {
                Err(e) => return invalid(format!("services.{name}"), e.to_string()),
                // Names are matched in lower case: an upper-case key would
                // validate and then never apply.
                Ok(n) if n.as_str() != name => {
                    return invalid(
                        format!("services.{name}"),
                        format!("service names are lower case: write {n}"),
                    )
                }
                Ok(_) => {}
            }
        }
        if let Some(stale) = self.max_staleness {
            if stale.is_zero() {
                return invalid("max_staleness".to_owned(), "must be above zero".to_owned());
            }
        }
        match &self.discovery {
            DiscoveryConfig::Static { services } => {
                for (name, entries) in services {
                    ServiceName::new(name).map_err(|e| MeshError::InvalidConfig {
                        what: format!("discovery.services.{name}"),
                        reason: e.to_string(),
                    })?;
                    for (i, entry) in entries.iter().enumerate() {
                        if entry.parse::<std::net::SocketAddr>().is_err() {
                            return invalid(
                                format!("discovery.services.{name}[{i}]"),
                                format!("{entry:?} is not ip:port"),
                            );
                        }
                    }
                }
            }
            DiscoveryConfig::File { .. } => {}
            DiscoveryConfig::Kubernetes {
                port: None,
                port_name: None,
                ..
            } => {
                return invalid(
                    "discovery".to_owned(),
                    "kubernetes discovery needs port (A records) or port_name (SRV records)"
                        .to_owned(),
                )
            }
            DiscoveryConfig::Kubernetes { .. } => {}
            DiscoveryConfig::Consul { url, register, .. } => {
                if !url.starts_with("http://") && !url.starts_with("https://") {
                    return invalid(
                        "discovery.url".to_owned(),
                        format!("{url:?} is not an http(s) URL"),
                    );
                }
                // The URL is printed (Debug, metrics, errors); a credential
                // belongs in `token`, which never is.
                if url
                    .parse::<http::Uri>()
                    .ok()
                    .and_then(|u| u.authority().map(|a| a.as_str().contains('@')))
                    .unwrap_or(false)
                {
                    return invalid(
                        "discovery.url".to_owned(),
                        "holds credentials (user:password@): give Consul's ACL token as `token`, \
                         which is never printed"
                            .to_owned(),
                    );
                }
                if *register && (self.service.address.is_none() || self.service.port.is_none()) {
                    return invalid(
                        "discovery.register".to_owned(),
                        "registration needs service.address and service.port".to_owned(),
                    );
                }
            }
        }
        for (what, timeout) in std::iter::once(("timeout".to_owned(), self.timeout)).chain(
            self.services
                .iter()
                .map(|(name, o)| (format!("services.{name}.timeout"), o.timeout)),
        ) {
            if let Some(t) = timeout {
                if t.is_zero() || t > Duration::from_secs(3600) {
                    return invalid(what, format!("{t:?} is outside (0, 1h]"));
                }
            }
        }
        if let Some(retry) = &self.retry {
            retry.build(self.timeout_for(""))?;
        }
        for (name, o) in &self.services {
            if let Some(retry) = &o.retry {
                retry
                    .build(self.timeout_for(name))
                    .map_err(|e| e.within(&format!("services.{name}.")))?;
            }
        }
        if let Some(limits) = &self.limits {
            limits.validate("limits")?;
        }
        for (name, o) in &self.services {
            crate::split::validate_split(name, &o.split, &self.services)?;
            if let Some(limits) = &o.limits {
                limits.validate(&format!("services.{name}.limits"))?;
            }
        }
        if self.event_capacity == 0 {
            return invalid("event_capacity".to_owned(), "must be at least 1".to_owned());
        }
        if let Some(health) = &self.health {
            health.validate()?;
        }
        if let Some(upstream) = &self.upstream_health {
            upstream.validate().map_err(|e| match e {
                // Named as the file names it.
                MeshError::InvalidConfig { what, reason } => MeshError::InvalidConfig {
                    what: what.replacen("health.upstream", "upstream_health", 1),
                    reason,
                },
                other => other,
            })?;
        }
        if let Some(tls) = &self.tls {
            tls.validate().map_err(|e| MeshError::InvalidConfig {
                what: "tls".to_owned(),
                reason: e.to_string(),
            })?;
        }
        let identities = self.identities()?;
        if let Some(tls) = self.tls.as_ref().filter(|t| t.enabled) {
            if tls.peer_identity.is_none() && identities.is_empty() {
                return invalid(
                    "tls.peer_identity".to_owned(),
                    "required with mutual TLS on: the SPIFFE ID each called service must present, \
                     such as \"spiffe://cluster.local/ns/default/sa/{service}\" (Kubernetes) or \
                     \"spiffe://dc1.consul/ns/default/dc/dc1/svc/{service}\" (Consul); without it \
                     any certificate of the mesh CA could answer for any service"
                        .to_owned(),
                );
            }
        }
        Ok(())
    }

    /// Whether calls go over mutual TLS (`[tls]` present and enabled).
    pub fn tls_enabled(&self) -> bool {
        self.tls.as_ref().is_some_and(|t| t.enabled)
    }

    /// The SPIFFE IDs configured per service (`services.<name>.identity`),
    /// parsed; each needs `[tls]` on.
    pub fn identities(&self) -> Result<HashMap<ServiceName, SpiffeId>, MeshError> {
        let mut identities = HashMap::new();
        for (name, o) in &self.services {
            let Some(identity) = &o.identity else {
                continue;
            };
            let what = || format!("services.{name}.identity");
            if !self.tls_enabled() {
                return Err(MeshError::InvalidConfig {
                    what: what(),
                    reason: "an expected identity needs mutual TLS: add an enabled [tls] section"
                        .to_owned(),
                });
            }
            let id = identity
                .parse::<SpiffeId>()
                .map_err(|e| MeshError::InvalidConfig {
                    what: what(),
                    reason: e.to_string(),
                })?;
            let service = ServiceName::new(name).map_err(|e| MeshError::InvalidConfig {
                what: format!("services.{name}"),
                reason: e.to_string(),
            })?;
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

    /// The retry settings for `service`.
    pub fn retry_for(&self, service: &str) -> Result<RetryConfig, MeshError> {
        match self.pick(service, |o| o.retry.as_ref(), self.retry.as_ref()) {
            Some(retry) => retry.build(self.timeout_for(service)),
            None => self.profile.retry_within(self.timeout_for(service)),
        }
    }

    /// The breaker settings for `service`.
    pub fn breaker_for(&self, service: &str) -> Result<BreakerConfig, MeshError> {
        match self.pick(service, |o| o.breaker.as_ref(), self.breaker.as_ref()) {
            Some(breaker) => Ok(breaker.clone()),
            None => self.profile.breaker(),
        }
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
