//! A gRPC service config (`grpc_service_config = "greeter.json"`), read as
//! the gRPC libraries read it: its `methodConfig` entries, each naming
//! methods and setting their `timeout` and `retryPolicy` or
//! `hedgingPolicy` (gRFC A6). Values the gRPC libraries refuse are refused
//! here, naming where they are in the JSON; `maxAttempts` above 5 counts as
//! 5, as the gRPC libraries clamp it.
//!
//! Only `methodConfig` is read. What the rest of a service config sets has
//! a place of its own in the mesh's file: balancing (`[balance]`), retry
//! throttling (`[retry] budget_percent`) and health checks
//! (`[upstream_health]`); writing it here is refused as an unknown field.

use std::collections::HashSet;
use std::path::Path;
use std::time::Duration;

use mesh_core::grpc::{GrpcCode, GrpcCodes};
use mesh_core::ConfigError;
use mesh_retry::{CallPolicy, Hedging};
use serde::Deserialize;

use super::methods::full_jitter;
use crate::policies::{Applied, PathMatch, Rule};

/// The most attempts the gRPC libraries allow; more count as this many.
const MAX_ATTEMPTS: u32 = 5;

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ServiceConfig {
    #[serde(default)]
    method_config: Vec<MethodConfig>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct MethodConfig {
    #[serde(default)]
    name: Vec<Name>,
    timeout: Option<String>,
    retry_policy: Option<RetryPolicy>,
    hedging_policy: Option<HedgingPolicy>,
}

#[derive(Deserialize, PartialEq, Eq, Hash)]
#[serde(deny_unknown_fields)]
struct Name {
    #[serde(default)]
    service: String,
    #[serde(default)]
    method: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RetryPolicy {
    max_attempts: u32,
    initial_backoff: String,
    max_backoff: String,
    backoff_multiplier: f64,
    retryable_status_codes: Vec<Code>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct HedgingPolicy {
    max_attempts: u32,
    #[serde(default)]
    hedging_delay: Option<String>,
    #[serde(default)]
    non_fatal_status_codes: Vec<Code>,
}

/// A status code as a name (`"UNAVAILABLE"`) or a number (`14`).
#[derive(Deserialize)]
#[serde(untagged)]
enum Code {
    Name(String),
    Number(u32),
}

/// The rules of the service config at `path`; errors are keyed `key` and
/// say where in the JSON the value is.
pub(crate) fn load(path: &Path, key: &str) -> Result<Vec<Rule>, ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigError::new(key, format!("reading {}", path.display())).caused_by(e))?;
    parse(&text).map_err(|(at, why)| {
        let reason = format!("{}: {at}: {why}", path.display());
        ConfigError::new(key, reason)
    })
}

/// The rules of a service config's JSON text, or where it is wrong and why.
fn parse(text: &str) -> Result<Vec<Rule>, (String, String)> {
    let json = &mut serde_json::Deserializer::from_str(text);
    let config: ServiceConfig = serde_path_to_error::deserialize(json)
        .map_err(|e| (e.path().to_string(), e.inner().to_string()))?;
    let mut seen = HashSet::new();
    let mut rules = Vec::new();
    for (i, method) in config.method_config.iter().enumerate() {
        let at = |field: &str| format!("methodConfig[{i}]{field}");
        let applied = method.applied(&at)?;
        for (j, name) in method.name.iter().enumerate() {
            let at_name = at(&format!(".name[{j}]"));
            if !seen.insert(name) {
                return Err((at_name, "named by an earlier methodConfig too".into()));
            }
            rules.push(Rule {
                method: None,
                path: name.path().map_err(|why| (at_name, why.into()))?,
                applied: applied.clone(),
            });
        }
    }
    Ok(rules)
}

impl Name {
    /// The paths it names: a method, a whole service, or everything.
    fn path(&self) -> Result<PathMatch, &'static str> {
        match (self.service.as_str(), self.method.as_str()) {
            ("", "") => Ok(PathMatch::Any),
            ("", _) => Err("a method needs its service"),
            (service, "") => Ok(PathMatch::Prefix(format!("/{service}/"))),
            (service, method) => Ok(PathMatch::Exact(format!("/{service}/{method}"))),
        }
    }
}

type Refusal = (String, String);

impl MethodConfig {
    /// What applies to the methods it names.
    fn applied(&self, at: &dyn Fn(&str) -> String) -> Result<Applied, Refusal> {
        let timeout = match &self.timeout {
            Some(t) => Some(positive(t).ok_or_else(|| (at(".timeout"), bad_duration(t)))?),
            None => None,
        };
        let call = match (&self.retry_policy, &self.hedging_policy) {
            (Some(_), Some(_)) => {
                let why = "retryPolicy and hedgingPolicy cannot both be set";
                return Err((at(""), why.into()));
            }
            (Some(retry), None) => Some(retry.policy(&|f| at(&format!(".retryPolicy{f}")))?),
            (None, Some(hedging)) => Some(hedging.policy(&|f| at(&format!(".hedgingPolicy{f}")))?),
            (None, None) => None,
        };
        Ok(Applied { timeout, call })
    }
}

impl RetryPolicy {
    fn policy(&self, at: &dyn Fn(&str) -> String) -> Result<CallPolicy, Refusal> {
        let attempts =
            attempts(self.max_attempts).ok_or_else(|| (at(".maxAttempts"), at_least_two()))?;
        let initial = positive(&self.initial_backoff)
            .ok_or_else(|| (at(".initialBackoff"), bad_duration(&self.initial_backoff)))?;
        let max = positive(&self.max_backoff)
            .ok_or_else(|| (at(".maxBackoff"), bad_duration(&self.max_backoff)))?;
        if !(1.0..=100.0).contains(&self.backoff_multiplier) {
            let why = format!("{} is outside [1, 100]", self.backoff_multiplier);
            return Err((at(".backoffMultiplier"), why));
        }
        if self.retryable_status_codes.is_empty() {
            return Err((
                at(".retryableStatusCodes"),
                "must name at least one code".into(),
            ));
        }
        let codes = codes(&self.retryable_status_codes)
            .map_err(|why| (at(".retryableStatusCodes"), why))?;
        CallPolicy::builder()
            .max_attempts(attempts)
            .backoff(full_jitter(initial, self.backoff_multiplier, max))
            .retryable_grpc_codes(codes)
            .build()
            .map_err(|e| (at(""), e.to_string()))
    }
}

impl HedgingPolicy {
    fn policy(&self, at: &dyn Fn(&str) -> String) -> Result<CallPolicy, Refusal> {
        let attempts =
            attempts(self.max_attempts).ok_or_else(|| (at(".maxAttempts"), at_least_two()))?;
        let delay = match &self.hedging_delay {
            Some(d) => duration(d).ok_or_else(|| (at(".hedgingDelay"), bad_duration(d)))?,
            None => Duration::ZERO,
        };
        let codes =
            codes(&self.non_fatal_status_codes).map_err(|why| (at(".nonFatalStatusCodes"), why))?;
        let hedging = Hedging::new(attempts, delay)
            .map_err(|e| (at(""), e.to_string()))?
            .non_fatal_grpc_codes(codes)
            // A gRPC answer's HTTP status is 200: only its code decides.
            .non_fatal_statuses([]);
        CallPolicy::builder()
            .hedging(hedging)
            .build()
            .map_err(|e| (at(""), e.to_string()))
    }
}

/// `maxAttempts`, clamped to 5 as the gRPC libraries do; `None` below 2.
fn attempts(n: u32) -> Option<u32> {
    (n >= 2).then_some(n.min(MAX_ATTEMPTS))
}

fn at_least_two() -> String {
    "must be at least 2 (values above 5 count as 5)".into()
}

/// Codes by name or number.
fn codes(codes: &[Code]) -> Result<GrpcCodes, String> {
    let each = codes.iter().map(|code| match code {
        Code::Name(name) => GrpcCode::from_name(name)
            .ok_or_else(|| format!("{name:?} is not a gRPC code name (UNAVAILABLE...)")),
        Code::Number(n) => {
            GrpcCode::new(*n).ok_or_else(|| format!("{n} is not a gRPC code (0 to 16)"))
        }
    });
    Ok(GrpcCodes::of(each.collect::<Result<Vec<_>, _>>()?))
}

/// A duration in protobuf's JSON form: seconds with up to nine decimals
/// and an `s` (`"1.5s"`, `"0.000340012s"`).
fn duration(text: &str) -> Option<Duration> {
    let number = text.strip_suffix('s')?;
    let (secs, frac) = number.split_once('.').unwrap_or((number, ""));
    let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if secs.is_empty() || !digits(secs) || !digits(frac) || frac.len() > 9 {
        return None;
    }
    let nanos = format!("{frac:0<9}").parse::<u32>().ok()?;
    Some(Duration::new(secs.parse().ok()?, nanos))
}

/// A duration above zero.
fn positive(text: &str) -> Option<Duration> {
    duration(text).filter(|d| !d.is_zero())
}

fn bad_duration(text: &str) -> String {
    format!("{text:?} is not a duration above 0 in seconds (\"1.5s\")")
}

#[cfg(test)]
mod tests;
