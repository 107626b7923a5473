//! [`BreakerConfig`]: validated breaker settings, from code or from a file.

use std::str::FromStr;
use std::time::Duration;

use mesh_core::grpc::{GrpcCode, GrpcCodes};
use mesh_core::ConfigError;
use serde::{Deserialize, Deserializer, Serialize};

/// What one breaker guards.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BreakerScope {
    /// One breaker per service (the default): the service as a whole is
    /// judged.
    #[default]
    Service,
    /// One breaker per endpoint of a service (from the balancer's
    /// selection): a failing instance is cut off, the others keep
    /// serving, and the open breaker ejects its endpoint from balancing.
    Endpoint,
}

/// The state HALF_OPEN ends in when [`BreakerConfig::half_open_max_wait`]
/// runs out before its probes decide (resilience4j's
/// `transitionToStateAfterWaitDuration`). A probe that reports after that
/// decides nothing.
///
/// In a file, `half_open_expiry = "open"` or `"closed"`; any other word is
/// refused naming the key.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum HalfOpenExpiry {
    /// Presume the worst and open again (the default): probes that take
    /// that long are as bad as failed ones.
    #[default]
    Open,
    /// Presume recovery and close: for an upstream whose silence means
    /// little (probes that are rare, or calls that are long by nature).
    Closed,
}

/// When HALF_OPEN judges its probes.
///
/// In a file, `half_open_verdict = "early"` or `"after_all_probes"`; any
/// other word is refused naming the key.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ProbeVerdict {
    /// As soon as the outcome is certain (the default): reopen once the
    /// failed (or slow) probes reach the threshold's share of all the
    /// probes, close once the remaining ones could no longer reach it.
    #[default]
    Early,
    /// Only once every permitted probe has reported (resilience4j's
    /// behaviour): the rates over all probes decide, so a single slow
    /// probe holds the verdict back until it reports or the maximum wait
    /// runs out.
    AfterAllProbes,
}

/// Parses a one-word setting, refusing any other word with an error that
/// names `key` and the words it accepts.
fn parse_word<T: Copy>(key: &str, word: &str, words: &[(&str, T)]) -> Result<T, ConfigError> {
    words
        .iter()
        .find(|(w, _)| *w == word)
        .map(|(_, value)| *value)
        .ok_or_else(|| {
            let accepted: Vec<String> = words.iter().map(|(w, _)| format!("{w:?}")).collect();
            ConfigError::new(
                key,
                format!("{word:?} is not one of {}", accepted.join(", ")),
            )
        })
}

impl FromStr for HalfOpenExpiry {
    type Err = ConfigError;

    fn from_str(word: &str) -> Result<Self, ConfigError> {
        parse_word(
            "breaker.half_open_expiry",
            word,
            &[
                ("open", HalfOpenExpiry::Open),
                ("closed", HalfOpenExpiry::Closed),
            ],
        )
    }
}

impl<'de> Deserialize<'de> for HalfOpenExpiry {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

impl FromStr for ProbeVerdict {
    type Err = ConfigError;

    fn from_str(word: &str) -> Result<Self, ConfigError> {
        parse_word(
            "breaker.half_open_verdict",
            word,
            &[
                ("early", ProbeVerdict::Early),
                ("after_all_probes", ProbeVerdict::AfterAllProbes),
            ],
        )
    }
}

impl<'de> Deserialize<'de> for ProbeVerdict {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// The rolling window that failure and slow-call rates are computed over.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum WindowConfig {
    /// The last `size` calls.
    Count {
        /// How many calls.
        size: u32,
    },
    /// The calls of the last `duration`, kept in `buckets` fixed slices
    /// (a call leaves the window one slice at a time).
    Time {
        /// How far back.
        #[serde(with = "humantime_serde")]
        duration: Duration,
        /// Into how many slices the duration is cut.
        buckets: u32,
    },
}

/// Settings of a circuit breaker. Every value is checked when built, by
/// [`BreakerConfig::builder`] or when deserialized, and a bad one is refused
/// with a message naming the field.
///
/// Trip conditions combine: the circuit opens when *any* configured
/// condition is met.
///
/// - `consecutive_failures`: that many failures in a row.
/// - `failure_rate_threshold`: failed calls in the window, in percent,
///   reach the threshold (`>=`, as resilience4j), once the window holds at
///   least `minimum_calls`.
/// - `slow_call_rate_threshold`: calls slower than `slow_call_duration`
///   reach that share of the window, failed or not, so an upstream that is
///   slow but not failing still trips.
///
/// Leaving OPEN and HALF_OPEN:
///
/// - `automatic_half_open`: OPEN moves to HALF_OPEN when its open duration
///   ends, on a timer, instead of on the first call after it. Unset, it
///   follows the scope: **on** for [`BreakerScope::Endpoint`] (an ejected
///   endpoint must come back to the balancer by itself, or no call would
///   ever reach it to probe), **off** for the others (the next call probes
///   anyway). [`BreakerConfig::automatic_half_open`] answers for the
///   scope; a value written (or set with
///   [`BreakerConfigBuilder::automatic_half_open`]) wins over it.
/// - `half_open_max_wait`: the longest HALF_OPEN waits for its probes,
///   from the first probe's admission (an idle half-open circuit waits for
///   its first probe without a deadline), enforced on a timer; it then
///   ends in `half_open_expiry`
///   ([`HalfOpenExpiry`], OPEN by default), and a probe reporting later
///   decides nothing.
/// - `half_open_verdict` ([`ProbeVerdict`]): decide as soon as the probes
///   make the outcome certain (the default), or only once all have
///   reported.
///
/// Timers need a tokio runtime where the breaker changes state (a call, a
/// handle); without one, the same deadlines apply on the next call.
///
/// ```
/// use std::time::Duration;
/// use mesh_breaker::{BreakerConfig, WindowConfig};
///
/// let config = BreakerConfig::builder()
///     .failure_rate_threshold(50.0)
///     .window(WindowConfig::Count { size: 100 })
///     .minimum_calls(20)
///     .slow_calls(Duration::from_secs(2), 80.0)
///     .open_duration(Duration::from_secs(10))
///     .half_open_probes(3)
///     .build()?;
/// assert_eq!(config.half_open_probes(), 3);
///
/// let err = BreakerConfig::builder().failure_rate_threshold(0.0).build().unwrap_err();
/// assert_eq!(err.key(), "breaker.failure_rate_threshold");
/// # Ok::<(), mesh_core::ConfigError>(())
/// ```
///
/// From a file, with human durations; unknown keys are refused:
///
/// ```
/// let config: mesh_breaker::BreakerConfig = serde_json::from_str(r#"{
///     "scope": "endpoint",
///     "consecutive_failures": 5,
///     "failure_rate_threshold": 50,
///     "window": { "kind": "time", "duration": "30s", "buckets": 10 },
///     "minimum_calls": 10,
///     "open_duration": "15s",
///     "open_duration_max": "2m",
///     "call_timeout": "3s"
/// }"#)?;
/// assert_eq!(config.open_duration(), std::time::Duration::from_secs(15));
/// # Ok::<(), serde_json::Error>(())
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "Settings", into = "Settings")]
pub struct BreakerConfig {
    settings: Settings,
}

/// The settings of a [`BreakerConfig`], each declared once, in the form a
/// file writes them: a key left out takes its value from
/// [`Settings::default`]. A `BreakerConfig` holds them once
/// [`Settings::validate`] has accepted them, so a file and the builder
/// share one set of checks.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct Settings {
    scope: BreakerScope,
    #[serde(skip_serializing_if = "Option::is_none")]
    consecutive_failures: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    failure_rate_threshold: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    slow_call_rate_threshold: Option<f64>,
    #[serde(with = "humantime_serde")]
    slow_call_duration: Duration,
    window: WindowConfig,
    minimum_calls: u32,
    /// Unset: 30 s, growing on repeated trips. Set alone (without
    /// `open_duration_max` and `open_duration_multiplier`), a fixed
    /// duration: growth is asked for explicitly, in a file as with
    /// [`BreakerConfigBuilder::open_duration_growth`].
    #[serde(with = "humantime_serde", skip_serializing_if = "Option::is_none")]
    open_duration: Option<Duration>,
    /// Unset: `open_duration` when that is set, else 5 min.
    #[serde(with = "humantime_serde", skip_serializing_if = "Option::is_none")]
    open_duration_max: Option<Duration>,
    /// Unset: 1 (no growth) when `open_duration` is set, else 2.
    #[serde(skip_serializing_if = "Option::is_none")]
    open_duration_multiplier: Option<f64>,
    open_duration_jitter: f64,
    max_ejection_percent: f64,
    /// gRPC codes that count as failures (by number).
    grpc_failure_codes: Vec<u32>,
    half_open_probes: u32,
    #[serde(with = "humantime_serde")]
    half_open_max_wait: Duration,
    /// Unset: on for the endpoint scope, off for the service scope.
    #[serde(skip_serializing_if = "Option::is_none")]
    automatic_half_open: Option<bool>,
    half_open_expiry: HalfOpenExpiry,
    half_open_verdict: ProbeVerdict,
    #[serde(with = "humantime_serde", skip_serializing_if = "Option::is_none")]
    call_timeout: Option<Duration>,
    max_breakers: u32,
    #[serde(with = "humantime_serde")]
    idle_timeout: Duration,
}

/// The open duration when none is written.
const OPEN_DURATION: Duration = Duration::from_secs(30);
/// The longest the default open duration grows to.
const OPEN_DURATION_MAX: Duration = Duration::from_secs(300);
/// The growth of the default open duration on each repeated trip.
const OPEN_DURATION_MULTIPLIER: f64 = 2.0;

impl TryFrom<Settings> for BreakerConfig {
    type Error = ConfigError;

    fn try_from(settings: Settings) -> Result<Self, ConfigError> {
        settings.validate()?;
        Ok(BreakerConfig { settings })
    }
}

impl From<BreakerConfig> for Settings {
    fn from(config: BreakerConfig) -> Self {
        config.settings
    }
}

// === impl BreakerConfig ===

impl BreakerConfig {
    /// Starts from [`BreakerConfig::default`].
    pub fn builder() -> BreakerConfigBuilder {
        BreakerConfigBuilder {
            settings: Settings::default(),
        }
    }

    /// For an authentication service (the design document's "strict"
    /// profile): trips early on a small sample and probes carefully, since
    /// every caller depends on it and failing fast beats piling up.
    pub fn strict() -> BreakerConfig {
        BreakerConfig::preset(Settings {
            consecutive_failures: Some(3),
            failure_rate_threshold: Some(25.0),
            slow_call_rate_threshold: Some(50.0),
            slow_call_duration: Duration::from_secs(1),
            window: WindowConfig::Count { size: 50 },
            minimum_calls: 10,
            open_duration: Some(Duration::from_secs(10)),
            open_duration_max: Some(Duration::from_secs(120)),
            open_duration_multiplier: Some(OPEN_DURATION_MULTIPLIER),
            half_open_probes: 3,
            call_timeout: Some(Duration::from_secs(2)),
            ..Settings::default()
        })
    }

    /// For a payment service (the design document's "conservative"
    /// profile): trips only on strong evidence over a longer window, since
    /// refusing a payment costs more than a slow one, and lets slow calls
    /// run long before judging them.
    pub fn conservative() -> BreakerConfig {
        BreakerConfig::preset(Settings {
            consecutive_failures: Some(10),
            failure_rate_threshold: Some(60.0),
            slow_call_rate_threshold: Some(90.0),
            slow_call_duration: Duration::from_secs(10),
            window: WindowConfig::Time {
                duration: Duration::from_secs(60),
                buckets: 12,
            },
            minimum_calls: 30,
            open_duration: Some(Duration::from_secs(30)),
            open_duration_max: Some(Duration::from_secs(300)),
            open_duration_multiplier: Some(OPEN_DURATION_MULTIPLIER),
            half_open_probes: 5,
            call_timeout: Some(Duration::from_secs(15)),
            ..Settings::default()
        })
    }

    /// For a notification service (the design document's "fallbacks
    /// enabled" profile): trips readily and stays open longer, because
    /// callers answer from a fallback (see [`crate::FallbackLayer`]) and a
    /// delayed notification is cheap.
    pub fn lenient() -> BreakerConfig {
        BreakerConfig::preset(Settings {
            consecutive_failures: Some(5),
            failure_rate_threshold: Some(50.0),
            slow_call_rate_threshold: None,
            window: WindowConfig::Count { size: 20 },
            minimum_calls: 5,
            open_duration: Some(Duration::from_secs(60)),
            open_duration_max: Some(Duration::from_secs(600)),
            open_duration_multiplier: Some(OPEN_DURATION_MULTIPLIER),
            half_open_probes: 1,
            call_timeout: Some(Duration::from_secs(5)),
            ..Settings::default()
        })
    }

    /// A preset's settings, which the tests prove valid
    /// (`presets_and_the_default_are_valid`), so they skip the checks.
    fn preset(settings: Settings) -> BreakerConfig {
        BreakerConfig { settings }
    }

    /// One breaker per service or per endpoint.
    pub fn scope(&self) -> BreakerScope {
        self.settings.scope
    }
    /// Failures in a row that open the circuit, if that condition is on.
    pub fn consecutive_failures(&self) -> Option<u32> {
        self.settings.consecutive_failures
    }
    /// The failure rate (percent) that opens the circuit, if on.
    pub fn failure_rate_threshold(&self) -> Option<f64> {
        self.settings.failure_rate_threshold
    }
    /// The slow-call rate (percent) that opens the circuit, if on.
    pub fn slow_call_rate_threshold(&self) -> Option<f64> {
        self.settings.slow_call_rate_threshold
    }
    /// How long a call may take before it counts as slow.
    pub fn slow_call_duration(&self) -> Duration {
        self.settings.slow_call_duration
    }
    /// The rolling window of the rates.
    pub fn window(&self) -> WindowConfig {
        self.settings.window
    }
    /// Calls the window must hold before its rates are judged.
    pub fn minimum_calls(&self) -> u32 {
        self.settings.minimum_calls
    }
    /// How long the circuit stays open after its first trip (the design
    /// document's `resetTimeout`).
    pub fn open_duration(&self) -> Duration {
        self.settings.open_duration()
    }
    /// The longest the open duration grows to on repeated trips.
    pub fn open_duration_max(&self) -> Duration {
        self.settings.open_duration_max()
    }
    /// The factor the open duration grows by on each trip that follows a
    /// failed recovery (1 = no growth).
    pub fn open_duration_multiplier(&self) -> f64 {
        self.settings.open_duration_multiplier()
    }
    /// The share (0 to 1) by which each open duration is randomly
    /// lengthened or shortened, so that many clients do not probe at once.
    pub fn open_duration_jitter(&self) -> f64 {
        self.settings.open_duration_jitter
    }
    /// The most of a service's endpoints (percent, at least one endpoint)
    /// per-endpoint breakers eject at once, as Envoy's outlier detection
    /// caps it, so a full outage never leaves the balancer with nothing and
    /// the service recovers as soon as its instances do.
    ///
    /// The circuit asks before it opens: a breaker past the cap never
    /// enters OPEN (it refuses no call and publishes no transition); from
    /// CLOSED it counts its endpoint's failures afresh, and a failed probe
    /// closes it instead of reopening. Counting the ejected endpoints and
    /// ejecting this one is one step under a lock of the layer, so
    /// concurrent trips of two endpoints never both take the last room.
    /// The count is of the service's endpoints as the call saw them (its
    /// `EndpointSet`), and includes ejections made elsewhere (another
    /// layer, a half-open endpoint whose probes are all out), which that
    /// lock does not order: beyond this layer's own trips, the cap is best
    /// effort. HALF_OPEN's maximum wait running out with no verdict (on
    /// the timer, or on a refused call) reopens without asking.
    pub fn max_ejection_percent(&self) -> f64 {
        self.settings.max_ejection_percent
    }
    /// The gRPC codes that count against an instance (by default
    /// `UNKNOWN`, `DEADLINE_EXCEEDED`, `RESOURCE_EXHAUSTED`, `INTERNAL`,
    /// `UNAVAILABLE`; application codes such as `NOT_FOUND` never should),
    /// whether the status comes in the headers or in trailers after
    /// messages.
    pub fn grpc_failures(&self) -> GrpcCodes {
        GrpcCodes::of(
            self.settings
                .grpc_failure_codes
                .iter()
                .filter_map(|&n| GrpcCode::new(n)),
        )
    }
    /// Probe calls admitted in HALF_OPEN.
    pub fn half_open_probes(&self) -> u32 {
        self.settings.half_open_probes
    }
    /// The longest HALF_OPEN waits for its probes before opening again,
    /// counted from its first probe's admission: a half-open circuit that
    /// no call reaches has no deadline.
    pub fn half_open_max_wait(&self) -> Duration {
        self.settings.half_open_max_wait
    }
    /// Whether OPEN moves to HALF_OPEN on a timer when its open duration
    /// ends. Unless set explicitly, on for [`BreakerScope::Endpoint`] and
    /// off otherwise.
    ///
    /// ```
    /// use mesh_breaker::{BreakerConfig, BreakerScope};
    ///
    /// let endpoint = BreakerConfig::builder().scope(BreakerScope::Endpoint).build()?;
    /// assert!(endpoint.automatic_half_open());
    /// assert!(!BreakerConfig::default().automatic_half_open());
    /// let explicit = BreakerConfig::builder()
    ///     .scope(BreakerScope::Endpoint)
    ///     .automatic_half_open(false)
    ///     .build()?;
    /// assert!(!explicit.automatic_half_open());
    /// # Ok::<(), mesh_core::ConfigError>(())
    /// ```
    pub fn automatic_half_open(&self) -> bool {
        self.settings
            .automatic_half_open
            .unwrap_or(self.settings.scope == BreakerScope::Endpoint)
    }
    /// The state HALF_OPEN ends in when its maximum wait runs out.
    pub fn half_open_expiry(&self) -> HalfOpenExpiry {
        self.settings.half_open_expiry
    }
    /// When HALF_OPEN judges its probes.
    pub fn half_open_verdict(&self) -> ProbeVerdict {
        self.settings.half_open_verdict
    }
    /// The per-call timeout (the design document's `timeout`), if any.
    pub fn call_timeout(&self) -> Option<Duration> {
        self.settings.call_timeout
    }
    /// The most breakers one layer keeps (one per key).
    pub fn max_breakers(&self) -> u32 {
        self.settings.max_breakers
    }
    /// How long a breaker may go unused before it may be evicted.
    pub fn idle_timeout(&self) -> Duration {
        self.settings.idle_timeout
    }
}

impl Default for BreakerConfig {
    /// One breaker per service; trips on 5 failures in a row, or on a 50%
    /// failure rate over the last 100 calls once 20 were seen; open for
    /// 30 s, doubling on repeated trips up to 5 min, with 10% jitter; 3
    /// probes judged early, at most 30 s of half-open, then open again;
    /// half-open on the next call (on a timer for the endpoint scope); no
    /// slow-call rule and no call timeout (tower's timeout below the
    /// breaker usually does that).
    fn default() -> Self {
        BreakerConfig {
            settings: Settings::default(),
        }
    }
}

// === impl Settings ===

impl Default for Settings {
    /// The values [`BreakerConfig::default`] describes.
    fn default() -> Self {
        Settings {
            scope: BreakerScope::Service,
            consecutive_failures: Some(5),
            failure_rate_threshold: Some(50.0),
            slow_call_rate_threshold: None,
            slow_call_duration: Duration::from_secs(5),
            window: WindowConfig::Count { size: 100 },
            minimum_calls: 20,
            open_duration: None,
            open_duration_max: None,
            open_duration_multiplier: None,
            open_duration_jitter: 0.1,
            max_ejection_percent: 50.0,
            grpc_failure_codes: GrpcCodes::failures()
                .iter()
                .map(|c| c.get().into())
                .collect(),
            half_open_probes: 3,
            half_open_max_wait: Duration::from_secs(30),
            automatic_half_open: None,
            half_open_expiry: HalfOpenExpiry::Open,
            half_open_verdict: ProbeVerdict::Early,
            call_timeout: None,
            max_breakers: 10_000,
            idle_timeout: Duration::from_secs(600),
        }
    }
}

impl Settings {
    fn open_duration(&self) -> Duration {
        self.open_duration.unwrap_or(OPEN_DURATION)
    }

    fn open_duration_max(&self) -> Duration {
        self.open_duration_max
            .unwrap_or_else(|| self.open_duration.unwrap_or(OPEN_DURATION_MAX))
    }

    fn open_duration_multiplier(&self) -> f64 {
        self.open_duration_multiplier
            .unwrap_or(match self.open_duration {
                Some(_) => 1.0,
                None => OPEN_DURATION_MULTIPLIER,
            })
    }

    /// Checks every value, naming the first key out of range.
    fn validate(&self) -> Result<(), ConfigError> {
        self.validate_trip_conditions()?;
        self.validate_window()?;
        self.validate_open_state()?;
        self.validate_limits()
    }

    /// The conditions that open the circuit: at least one, each in range.
    fn validate_trip_conditions(&self) -> Result<(), ConfigError> {
        if self.consecutive_failures == Some(0) {
            return Err(ConfigError::new(
                "breaker.consecutive_failures",
                "must be at least 1 (0 would open the circuit before any call)",
            ));
        }
        for (key, rate) in [
            (
                "breaker.failure_rate_threshold",
                self.failure_rate_threshold,
            ),
            (
                "breaker.slow_call_rate_threshold",
                self.slow_call_rate_threshold,
            ),
        ] {
            if let Some(rate) = rate {
                if !(rate > 0.0 && rate <= 100.0) {
                    return Err(ConfigError::new(
                        key,
                        format!("{rate} is outside (0, 100]: it is a percentage of calls"),
                    ));
                }
            }
        }
        if self.consecutive_failures.is_none()
            && self.failure_rate_threshold.is_none()
            && self.slow_call_rate_threshold.is_none()
        {
            return Err(ConfigError::new("breaker.consecutive_failures", "no trip condition is set: set consecutive_failures, failure_rate_threshold or slow_call_rate_threshold (use a disabled breaker to never trip)"));
        }
        if self.slow_call_duration.is_zero() {
            return Err(ConfigError::new(
                "breaker.slow_call_duration",
                "must be more than 0",
            ));
        }
        Ok(())
    }

    /// The window the rates are computed over, and the calls it must hold.
    fn validate_window(&self) -> Result<(), ConfigError> {
        match self.window {
            WindowConfig::Count { size } => {
                if size == 0 || size > 100_000 {
                    return Err(ConfigError::new(
                        "breaker.window.size",
                        format!("{size} is outside 1..=100000"),
                    ));
                }
                if self.minimum_calls > size {
                    return Err(ConfigError::new("breaker.minimum_calls", format!("{} is more than the window's {size} calls, so rates would never be judged", self.minimum_calls)));
                }
            }
            WindowConfig::Time { duration, buckets } => {
                if duration.is_zero() || duration > DAY {
                    return Err(ConfigError::new(
                        "breaker.window.duration",
                        format!("{duration:?} is out of range: use more than 0 and at most 24h"),
                    ));
                }
                if buckets == 0 || buckets > 100 {
                    return Err(ConfigError::new(
                        "breaker.window.buckets",
                        format!("{buckets} is outside 1..=100 (each call reads every bucket)"),
                    ));
                }
                if duration.as_nanos() < u128::from(buckets) * 1_000_000 {
                    return Err(ConfigError::new(
                        "breaker.window.buckets",
                        format!("{buckets} buckets over {duration:?} are shorter than 1ms each"),
                    ));
                }
            }
        }
        if self.minimum_calls == 0 {
            return Err(ConfigError::new(
                "breaker.minimum_calls",
                "must be at least 1",
            ));
        }
        Ok(())
    }

    /// How long the circuit stays open, and how it probes its way out.
    fn validate_open_state(&self) -> Result<(), ConfigError> {
        let (open, max) = (self.open_duration(), self.open_duration_max());
        if open.is_zero() || open > DAY {
            return Err(ConfigError::new(
                "breaker.open_duration",
                format!("{open:?} is out of range: use more than 0 and at most 24h"),
            ));
        }
        if max < open || max > DAY {
            return Err(ConfigError::new(
                "breaker.open_duration_max",
                format!("{max:?} must be at least open_duration ({open:?}) and at most 24h"),
            ));
        }
        let multiplier = self.open_duration_multiplier();
        if !(1.0..=100.0).contains(&multiplier) {
            return Err(ConfigError::new(
                "breaker.open_duration_multiplier",
                format!("{multiplier} is outside [1, 100]"),
            ));
        }
        if !(self.max_ejection_percent > 0.0 && self.max_ejection_percent <= 100.0) {
            return Err(ConfigError::new(
                "breaker.max_ejection_percent",
                format!(
                    "{} is outside (0, 100]: it is a share of the service's endpoints",
                    self.max_ejection_percent
                ),
            ));
        }
        if let Some(n) = self
            .grpc_failure_codes
            .iter()
            .find(|&&n| GrpcCode::new(n).is_none())
        {
            return Err(ConfigError::new(
                "breaker.grpc_failure_codes",
                format!("{n} is not a gRPC code: use codes from 0 to 16"),
            ));
        }
        if !(0.0..=1.0).contains(&self.open_duration_jitter) {
            return Err(ConfigError::new(
                "breaker.open_duration_jitter",
                format!(
                    "{} is outside [0, 1]: it is a share of the duration",
                    self.open_duration_jitter
                ),
            ));
        }
        if self.half_open_probes == 0 || self.half_open_probes > 1000 {
            return Err(ConfigError::new(
                "breaker.half_open_probes",
                format!("{} is outside 1..=1000", self.half_open_probes),
            ));
        }
        if self.half_open_max_wait.is_zero() || self.half_open_max_wait > DAY {
            return Err(ConfigError::new(
                "breaker.half_open_max_wait",
                format!(
                    "{:?} is out of range: use more than 0 and at most 24h",
                    self.half_open_max_wait
                ),
            ));
        }
        Ok(())
    }

    /// The call timeout and the bounds on the breakers kept.
    fn validate_limits(&self) -> Result<(), ConfigError> {
        if let Some(t) = self.call_timeout {
            if t.is_zero() || t > DAY {
                return Err(ConfigError::new(
                    "breaker.call_timeout",
                    format!("{t:?} is out of range: use more than 0 and at most 24h"),
                ));
            }
        }
        if self.max_breakers == 0 {
            return Err(ConfigError::new(
                "breaker.max_breakers",
                "must be at least 1",
            ));
        }
        if self.idle_timeout.is_zero() {
            return Err(ConfigError::new(
                "breaker.idle_timeout",
                "must be more than 0",
            ));
        }
        Ok(())
    }
}

/// The longest any duration of a breaker may be.
const DAY: Duration = Duration::from_secs(86_400);

/// Builds a [`BreakerConfig`].
#[derive(Clone, Debug)]
pub struct BreakerConfigBuilder {
    settings: Settings,
}

// === impl BreakerConfigBuilder ===

impl BreakerConfigBuilder {
    /// Starts from a preset instead of the default.
    pub fn from_config(config: BreakerConfig) -> Self {
        BreakerConfigBuilder {
            settings: config.settings,
        }
    }
    /// One breaker per service or per endpoint.
    pub fn scope(mut self, scope: BreakerScope) -> Self {
        self.settings.scope = scope;
        self
    }
    /// Opens after `n` failures in a row.
    pub fn consecutive_failures(mut self, n: u32) -> Self {
        self.settings.consecutive_failures = Some(n);
        self
    }
    /// Turns the consecutive-failures condition off.
    pub fn no_consecutive_failures(mut self) -> Self {
        self.settings.consecutive_failures = None;
        self
    }
    /// Opens when failed calls reach `percent` of the window.
    pub fn failure_rate_threshold(mut self, percent: f64) -> Self {
        self.settings.failure_rate_threshold = Some(percent);
        self
    }
    /// Turns the failure-rate condition off.
    pub fn no_failure_rate(mut self) -> Self {
        self.settings.failure_rate_threshold = None;
        self
    }
    /// Opens when calls slower than `duration` reach `percent` of the window.
    pub fn slow_calls(mut self, duration: Duration, percent: f64) -> Self {
        self.settings.slow_call_duration = duration;
        self.settings.slow_call_rate_threshold = Some(percent);
        self
    }
    /// The window the rates are computed over.
    pub fn window(mut self, window: WindowConfig) -> Self {
        self.settings.window = window;
        self
    }
    /// Judges rates only once the window holds `n` calls.
    pub fn minimum_calls(mut self, n: u32) -> Self {
        self.settings.minimum_calls = n;
        self
    }
    /// Stays open `d` after a trip, with no growth on repeated trips (call
    /// [`BreakerConfigBuilder::open_duration_growth`] after this to add
    /// growth; a file does the same with `open_duration_multiplier` and
    /// `open_duration_max`).
    pub fn open_duration(mut self, d: Duration) -> Self {
        self.settings.open_duration = Some(d);
        self.settings.open_duration_max = None;
        self.settings.open_duration_multiplier = None;
        self
    }
    /// Grows the open duration by `multiplier` on each trip that follows a
    /// failed recovery, up to `max`.
    pub fn open_duration_growth(mut self, multiplier: f64, max: Duration) -> Self {
        self.settings.open_duration_multiplier = Some(multiplier);
        self.settings.open_duration_max = Some(max);
        self
    }
    /// Lengthens or shortens each open duration by up to `share` (0 to 1).
    pub fn open_duration_jitter(mut self, share: f64) -> Self {
        self.settings.open_duration_jitter = share;
        self
    }
    /// Ejects at most `percent` of a service's endpoints at once (at least
    /// one); 100 lifts the cap. See [`BreakerConfig::max_ejection_percent`].
    pub fn max_ejection_percent(mut self, percent: f64) -> Self {
        self.settings.max_ejection_percent = percent;
        self
    }
    /// Counts exactly the gRPC calls answered with `codes` as failures.
    /// See [`BreakerConfig::grpc_failures`].
    pub fn grpc_failure_codes(mut self, codes: GrpcCodes) -> Self {
        self.settings.grpc_failure_codes = codes.iter().map(|c| c.get().into()).collect();
        self
    }
    /// Admits `n` probes in HALF_OPEN.
    pub fn half_open_probes(mut self, n: u32) -> Self {
        self.settings.half_open_probes = n;
        self
    }
    /// Leaves HALF_OPEN (to [`BreakerConfigBuilder::half_open_expiry`],
    /// OPEN by default) if it has not decided within `d` of its first
    /// probe.
    pub fn half_open_max_wait(mut self, d: Duration) -> Self {
        self.settings.half_open_max_wait = d;
        self
    }
    /// Moves OPEN to HALF_OPEN on a timer when its open duration ends
    /// (`true`), or on the first call after it (`false`). Unset, the
    /// scope decides: see [`BreakerConfig::automatic_half_open`].
    pub fn automatic_half_open(mut self, automatic: bool) -> Self {
        self.settings.automatic_half_open = Some(automatic);
        self
    }
    /// The state HALF_OPEN ends in when its maximum wait runs out.
    pub fn half_open_expiry(mut self, state: HalfOpenExpiry) -> Self {
        self.settings.half_open_expiry = state;
        self
    }
    /// When HALF_OPEN judges its probes: early, or once all reported.
    pub fn half_open_verdict(mut self, verdict: ProbeVerdict) -> Self {
        self.settings.half_open_verdict = verdict;
        self
    }
    /// Cancels, and counts as failed (unless the layer's classifier says
    /// otherwise), any call longer than `d`: the per-attempt timeout of a
    /// stack, timed here so a slow endpoint counts against its circuit.
    pub fn call_timeout(mut self, d: Duration) -> Self {
        self.settings.call_timeout = Some(d);
        self
    }
    /// No call timeout (a preset's removed), for a stack whose calls are
    /// timed elsewhere.
    pub fn no_call_timeout(mut self) -> Self {
        self.settings.call_timeout = None;
        self
    }
    /// Keeps at most `n` breakers, evicting idle ones.
    pub fn max_breakers(mut self, n: u32) -> Self {
        self.settings.max_breakers = n;
        self
    }
    /// A breaker unused for `d` may be evicted.
    pub fn idle_timeout(mut self, d: Duration) -> Self {
        self.settings.idle_timeout = d;
        self
    }

    /// Validates the settings.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] whose [`key`](ConfigError::key) is the first
    /// field out of range (`breaker.failure_rate_threshold`).
    pub fn build(self) -> Result<BreakerConfig, ConfigError> {
        BreakerConfig::try_from(self.settings)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_values_are_refused_naming_the_field() {
        let b = BreakerConfig::builder;
        let cases = [
            (
                b().failure_rate_threshold(0.0),
                "breaker.failure_rate_threshold",
            ),
            (
                b().failure_rate_threshold(100.5),
                "breaker.failure_rate_threshold",
            ),
            (
                b().failure_rate_threshold(f64::NAN),
                "breaker.failure_rate_threshold",
            ),
            (
                b().slow_calls(Duration::from_secs(1), -1.0),
                "breaker.slow_call_rate_threshold",
            ),
            (
                b().window(WindowConfig::Count { size: 0 }),
                "breaker.window.size",
            ),
            (
                b().window(WindowConfig::Time {
                    duration: Duration::ZERO,
                    buckets: 10,
                }),
                "breaker.window.duration",
            ),
            (
                b().window(WindowConfig::Time {
                    duration: Duration::from_secs(10),
                    buckets: 0,
                }),
                "breaker.window.buckets",
            ),
            (b().half_open_probes(0), "breaker.half_open_probes"),
            (
                b().window(WindowConfig::Count { size: 10 })
                    .minimum_calls(11),
                "breaker.minimum_calls",
            ),
            (b().consecutive_failures(0), "breaker.consecutive_failures"),
            (b().open_duration(Duration::ZERO), "breaker.open_duration"),
            (
                b().open_duration_jitter(1.5),
                "breaker.open_duration_jitter",
            ),
        ];
        for (builder, key) in cases {
            assert_eq!(builder.build().expect_err(key).key(), key);
        }
    }

    #[test]
    fn presets_and_the_default_are_valid() {
        for preset in [
            BreakerConfig::default(),
            BreakerConfig::strict(),
            BreakerConfig::conservative(),
            BreakerConfig::lenient(),
        ] {
            let rebuilt = BreakerConfigBuilder::from_config(preset.clone())
                .build()
                .unwrap();
            assert_eq!(rebuilt, preset);
        }
        assert!(
            BreakerConfig::strict().failure_rate_threshold()
                < BreakerConfig::conservative().failure_rate_threshold()
        );
    }

    #[test]
    fn an_open_duration_written_alone_is_fixed_and_growth_is_asked_for() {
        let secs = Duration::from_secs;
        let growth = |c: &BreakerConfig| {
            (
                c.open_duration(),
                c.open_duration_max(),
                c.open_duration_multiplier(),
            )
        };
        let unwritten: BreakerConfig = toml::from_str("").unwrap();
        assert_eq!(unwritten, BreakerConfig::default());
        assert_eq!(growth(&unwritten), (secs(30), secs(300), 2.0));

        let fixed: BreakerConfig = toml::from_str("open_duration = \"15s\"").unwrap();
        assert_eq!(growth(&fixed), (secs(15), secs(15), 1.0));
        let built = BreakerConfig::builder()
            .open_duration(secs(15))
            .build()
            .unwrap();
        assert_eq!(fixed, built);

        let growing: BreakerConfig = toml::from_str(
            "open_duration = \"15s\"\nopen_duration_multiplier = 3.0\nopen_duration_max = \"1m\"",
        )
        .unwrap();
        assert_eq!(growth(&growing), (secs(15), secs(60), 3.0));
        let built = BreakerConfig::builder()
            .open_duration(secs(15))
            .open_duration_growth(3.0, secs(60))
            .build()
            .unwrap();
        assert_eq!(growing, built);

        let err =
            toml::from_str::<BreakerConfig>("open_duration = \"15s\"\nopen_duration_max = \"10s\"")
                .unwrap_err();
        assert!(
            err.to_string().contains("breaker.open_duration_max"),
            "{err}"
        );
    }

    #[test]
    fn files_use_human_durations_and_refuse_unknown_keys() {
        let config: BreakerConfig = toml::from_str(
            r#"
            scope = "endpoint"
            failure_rate_threshold = 40.0
            window = { kind = "count", size = 50 }
            minimum_calls = 10
            open_duration = "250ms"
            call_timeout = "2s"
            "#,
        )
        .unwrap();
        assert_eq!(config.scope(), BreakerScope::Endpoint);
        assert_eq!(config.open_duration(), Duration::from_millis(250));
        assert_eq!(config.call_timeout(), Some(Duration::from_secs(2)));

        let err = toml::from_str::<BreakerConfig>("failure_rate = 40.0").unwrap_err();
        assert!(err.to_string().contains("failure_rate"), "{err}");
        let err = toml::from_str::<BreakerConfig>("failure_rate_threshold = 140.0").unwrap_err();
        assert!(
            err.to_string().contains("breaker.failure_rate_threshold"),
            "{err}"
        );
        let err =
            toml::from_str::<BreakerConfig>("window = { kind = \"count\", size = 5, extra = 1 }")
                .unwrap_err();
        assert!(err.to_string().contains("extra"), "{err}");

        // What serializes, deserializes to the same config.
        let json = serde_json::to_string(&config).unwrap();
        assert_eq!(
            serde_json::from_str::<BreakerConfig>(&json).unwrap(),
            config
        );
    }

    #[test]
    fn the_half_open_keys_read_from_a_file_and_refuse_other_words_naming_the_key() {
        let config: BreakerConfig = toml::from_str(
            r#"
            automatic_half_open = true
            half_open_expiry = "closed"
            half_open_verdict = "after_all_probes"
            "#,
        )
        .unwrap();
        assert!(config.automatic_half_open());
        assert_eq!(config.half_open_expiry(), HalfOpenExpiry::Closed);
        assert_eq!(config.half_open_verdict(), ProbeVerdict::AfterAllProbes);
        let built = BreakerConfig::builder()
            .automatic_half_open(true)
            .half_open_expiry(HalfOpenExpiry::Closed)
            .half_open_verdict(ProbeVerdict::AfterAllProbes)
            .build()
            .unwrap();
        assert_eq!(config, built);
        let json = serde_json::to_string(&config).unwrap();
        assert_eq!(
            serde_json::from_str::<BreakerConfig>(&json).unwrap(),
            config
        );

        for (file, key) in [
            (
                "half_open_expiry = \"half_open\"",
                "breaker.half_open_expiry",
            ),
            ("half_open_verdict = \"late\"", "breaker.half_open_verdict"),
        ] {
            let err = toml::from_str::<BreakerConfig>(file).unwrap_err();
            assert!(err.to_string().contains(key), "{err}");
        }
        let err = "sometimes".parse::<HalfOpenExpiry>().unwrap_err();
        assert_eq!(err.key(), "breaker.half_open_expiry");
        assert!(err.reason().contains("\"open\", \"closed\""), "{err}");
        assert!(toml::from_str::<BreakerConfig>("automatic_half_open = \"yes\"").is_err());
    }

    #[test]
    fn automatic_half_open_follows_the_scope_unless_written() {
        let endpoint: BreakerConfig = toml::from_str("scope = \"endpoint\"").unwrap();
        assert!(endpoint.automatic_half_open());
        let service: BreakerConfig = toml::from_str("scope = \"service\"").unwrap();
        assert!(!service.automatic_half_open());
        let off: BreakerConfig =
            toml::from_str("scope = \"endpoint\"\nautomatic_half_open = false").unwrap();
        assert!(!off.automatic_half_open());
        // Unwritten stays unwritten: a config saved and read back still
        // follows its scope.
        let json = serde_json::to_string(&endpoint).unwrap();
        assert!(!json.contains("automatic_half_open"), "{json}");
        // A preset rebuilt as per endpoint follows the new scope.
        let rebuilt = BreakerConfigBuilder::from_config(BreakerConfig::strict())
            .scope(BreakerScope::Endpoint)
            .build()
            .unwrap();
        assert!(rebuilt.automatic_half_open());
    }

    #[test]
    fn a_preset_s_call_timeout_can_be_cleared() {
        let strict = BreakerConfig::strict();
        assert!(strict.call_timeout().is_some());
        let untimed = BreakerConfigBuilder::from_config(strict)
            .no_call_timeout()
            .build()
            .unwrap();
        assert_eq!(untimed.call_timeout(), None);
    }
}
