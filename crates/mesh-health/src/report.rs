//! What a probe answers: its verdict and each check's standing, as served
//! on `/health/*`.

use mesh_core::{Probe, ProbeStatus};
use serde::Serialize;

use crate::state::CheckStatus;

/// One probe's verdict with the checks behind it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ProbeReport {
    /// The probe.
    #[serde(serialize_with = "probe_name")]
    pub probe: Probe,
    /// Its verdict.
    #[serde(serialize_with = "status_name")]
    pub status: ProbeStatus,
    /// Why it is unhealthy without a failing check (`waiting for startup`,
    /// `stopping`), if so.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<&'static str>,
    /// The checks that feed it.
    pub checks: Vec<CheckReport>,
}

/// One check's standing.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct CheckReport {
    /// Its name.
    pub name: String,
    /// Pending, passing or failing.
    pub status: CheckStatus,
    /// Whether a failure makes the probe unhealthy (else degraded).
    pub critical: bool,
    /// The last failure, until the check recovers from failing (a passing
    /// check keeps the error of a failure below its threshold, as a hint).
    pub last_error: Option<String>,
    /// How long the last run took, in milliseconds.
    pub last_duration_ms: Option<f64>,
    /// Failures in a row.
    pub consecutive_failures: u32,
}

/// Per-check counters, for metrics.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct CheckMetrics {
    /// The check's name.
    pub name: String,
    /// Where it stands.
    pub status: CheckStatus,
    /// Runs so far.
    pub runs: u64,
    /// Failed runs so far.
    pub failures: u64,
    /// Failures in a row.
    pub consecutive_failures: u32,
    /// How long the last run took, in milliseconds.
    pub last_duration_ms: Option<f64>,
}

fn probe_name<S: serde::Serializer>(probe: &Probe, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(probe.as_str())
}

fn status_name<S: serde::Serializer>(status: &ProbeStatus, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(status.as_str())
}
