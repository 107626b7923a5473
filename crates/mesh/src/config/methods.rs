//! `[[services.<name>.methods]]`: a deadline and a retry or hedging
//! policy per path prefix and HTTP method, what a gRPC service config's
//! `methodConfig` sets per method.

use std::time::Duration;

use http::Method;
use mesh_core::grpc::{GrpcCode, GrpcCodes};
use mesh_core::ConfigError;
use mesh_retry::{Backoff, CallPolicy, HedgingSettings, Jitter};
use serde::{Deserialize, Serialize};

use crate::policies::{Applied, PathMatch, Rule};

/// One entry of `[[services.<name>.methods]]`.
///
/// ```toml
/// [[services.users.methods]]
/// path = "/api/search"      # this path and those below it
/// method = "GET"            # only GETs (else every method)
/// timeout = "300ms"         # the whole call, retries included
/// retry = { max_attempts = 4, initial_backoff = "20ms", max_backoff = "200ms" }
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MethodSettings {
    /// The path prefix it applies to, from `/`, matched segment by
    /// segment (`/api/search` does not match `/api/searchable`).
    pub path: String,
    /// The HTTP method it is limited to (else every method).
    #[serde(default)]
    pub method: Option<String>,
    /// The whole call's time limit, retries included; the sooner of it
    /// and a caller's own deadline applies.
    #[serde(default, with = "humantime_serde")]
    pub timeout: Option<Duration>,
    /// Its retry policy, over the service's `[retry]`.
    #[serde(default)]
    pub retry: Option<RetryPolicySettings>,
    /// Its hedging policy instead of retries.
    #[serde(default)]
    pub hedging: Option<HedgingSettings>,
}

/// A method's retry policy, as gRPC's `retryPolicy` has it: attempts,
/// exponential backoff with full jitter, retryable gRPC codes. What else
/// is retried (statuses, errors), the budget and idempotency stay the
/// service's `[retry]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetryPolicySettings {
    /// Attempts in all, the first included (1 to 101).
    pub max_attempts: u32,
    /// The first backoff's ceiling.
    #[serde(with = "humantime_serde")]
    pub initial_backoff: Duration,
    /// The most any backoff may be.
    #[serde(with = "humantime_serde")]
    pub max_backoff: Duration,
    /// How much each backoff's ceiling grows.
    pub backoff_multiplier: f64,
    /// gRPC codes (trailers-only answers) retried.
    pub retryable_grpc_codes: Vec<u32>,
}

impl Default for RetryPolicySettings {
    /// 3 attempts, 100 ms doubling up to 1 s, `UNAVAILABLE` retried.
    fn default() -> Self {
        RetryPolicySettings {
            max_attempts: 3,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(1),
            backoff_multiplier: 2.0,
            retryable_grpc_codes: vec![14],
        }
    }
}

// === impl MethodSettings ===

impl MethodSettings {
    /// The rule it writes; errors name the key under `at`
    /// (`services.users.methods[0]`).
    pub(crate) fn rule(&self, at: &str) -> Result<Rule, ConfigError> {
        if !self.path.starts_with('/') {
            let why = format!("{:?} must start with /", self.path);
            return Err(ConfigError::new(format!("{at}.path"), why));
        }
        let method = self
            .method
            .as_deref()
            .map(|m| method_named(m, &format!("{at}.method")))
            .transpose()?;
        let call = match (&self.retry, &self.hedging) {
            (Some(_), Some(_)) => {
                let why = "a method is retried or hedged, not both: keep one of retry and hedging";
                return Err(ConfigError::new(format!("{at}.hedging"), why));
            }
            (Some(retry), None) => Some(retry.policy().map_err(|e| e.within(&format!("{at}.")))?),
            (None, Some(hedging)) => {
                Some(hedged(hedging).map_err(|e| e.within(&format!("{at}.")))?)
            }
            (None, None) => None,
        };
        if self.timeout.is_some_and(|t| t.is_zero()) {
            return Err(ConfigError::new(
                format!("{at}.timeout"),
                "must be more than 0",
            ));
        }
        Ok(Rule {
            method,
            path: PathMatch::Prefix(self.path.clone()),
            applied: Applied {
                timeout: self.timeout,
                call,
            },
        })
    }
}

/// The HTTP method named `name` (`GET`, upper case as HTTP writes it).
fn method_named(name: &str, key: &str) -> Result<Method, ConfigError> {
    let refused = || {
        ConfigError::new(
            key,
            format!("{name:?} is not an HTTP method (GET, POST...)"),
        )
    };
    if name.is_empty() || name.bytes().any(|b| !b.is_ascii_uppercase()) {
        return Err(refused());
    }
    Method::from_bytes(name.as_bytes()).map_err(|_| refused())
}

/// A call policy that hedges with `hedging`.
fn hedged(hedging: &HedgingSettings) -> Result<CallPolicy, ConfigError> {
    CallPolicy::builder().hedging(hedging.build()?).build()
}

// === impl RetryPolicySettings ===

impl RetryPolicySettings {
    /// The call policy it writes; errors are keyed `retry.*`.
    pub(crate) fn policy(&self) -> Result<CallPolicy, ConfigError> {
        let codes = self.retryable_grpc_codes.iter().map(|&n| {
            GrpcCode::new(n).ok_or_else(|| {
                ConfigError::new(
                    "retry.retryable_grpc_codes",
                    format!("{n} is not a gRPC code: use codes from 0 to 16"),
                )
            })
        });
        let codes = GrpcCodes::of(codes.collect::<Result<Vec<_>, _>>()?);
        if self.initial_backoff.is_zero() || self.max_backoff.is_zero() {
            let why = "initial_backoff and max_backoff must be more than 0";
            return Err(ConfigError::new("retry.initial_backoff", why));
        }
        if !(1.0..=100.0).contains(&self.backoff_multiplier) {
            let why = format!("{} is outside [1, 100]", self.backoff_multiplier);
            return Err(ConfigError::new("retry.backoff_multiplier", why));
        }
        if self.max_backoff > Duration::from_secs(3600) {
            let why = format!("{:?} is more than one hour", self.max_backoff);
            return Err(ConfigError::new("retry.max_backoff", why));
        }
        CallPolicy::builder()
            .max_attempts(self.max_attempts)
            .backoff(full_jitter(
                self.initial_backoff,
                self.backoff_multiplier,
                self.max_backoff,
            ))
            .retryable_grpc_codes(codes)
            .build()
            .map_err(|e| e.renamed("call_policy", "retry"))
    }
}

/// gRPC's backoff: a random delay up to `initial` times `multiplier` to
/// the retry's power, at most `max`.
pub(crate) fn full_jitter(initial: Duration, multiplier: f64, max: Duration) -> Backoff {
    Backoff::exponential(initial, multiplier)
        .max_delay(max)
        .jitter(Jitter::Full)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(toml_text: &str) -> MethodSettings {
        toml::from_str(toml_text).expect("settings")
    }

    #[test]
    fn a_method_rule_is_read_and_bad_values_are_named() {
        let rule = parse(
            "path = \"/api\"\nmethod = \"GET\"\ntimeout = \"300ms\"\nretry = { max_attempts = 4 }",
        )
        .rule("services.users.methods[0]")
        .expect("rule");
        assert_eq!(rule.method, Some(Method::GET));
        assert_eq!(rule.applied.timeout, Some(Duration::from_millis(300)));
        assert_eq!(rule.applied.call.expect("policy").max_attempts(), 4);
        let cases = [
            ("path = \"api\"", "m.path"),
            ("path = \"/a\"\nmethod = \"get\"", "m.method"),
            ("path = \"/a\"\ntimeout = \"0s\"", "m.timeout"),
            (
                "path = \"/a\"\nretry = { max_attempts = 0 }",
                "m.retry.max_attempts",
            ),
            (
                "path = \"/a\"\nretry = { retryable_grpc_codes = [17] }",
                "m.retry.retryable_grpc_codes",
            ),
            (
                "path = \"/a\"\nretry = { backoff_multiplier = 0.0 }",
                "m.retry.backoff_multiplier",
            ),
            (
                "path = \"/a\"\nhedging = { max_attempts = 1 }",
                "m.hedging.max_attempts",
            ),
            ("path = \"/a\"\nretry = {}\nhedging = {}", "m.hedging"),
        ];
        for (text, key) in cases {
            let err = parse(text).rule("m").expect_err(text);
            assert_eq!(err.key(), key, "{err}");
        }
    }
}
