#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]
#![warn(missing_docs, clippy::unwrap_used)]

pub mod checks;
mod config;
mod future;
pub mod grpc;
mod health_check;
mod layer;
mod manager;
mod probe;
mod redact;
mod report;
mod state;
#[cfg(feature = "opentelemetry")]
pub mod trace_context;
mod upstream;

pub use config::{HealthConfig, PathsConfig};
pub use future::ResponseFuture;
pub use health_check::{CheckError, CheckFuture, HealthCheck, HealthCheckBuilder};
pub use layer::{HealthLayer, HealthPaths, HealthService};
pub use manager::{HealthCheckManager, HealthCheckManagerBuilder};
pub use mesh_core::{Probe, ProbeStatus};
pub use probe::{ProbeBody, ProbeClient};
pub use report::{CheckMetrics, CheckReport, ProbeReport};
pub use state::CheckStatus;
#[cfg(feature = "opentelemetry")]
pub use trace_context::{TraceContext, TraceContextLayer};
pub use upstream::{
    UpstreamCheckConfig, UpstreamHealthChecker, UpstreamHealthCheckerBuilder, UpstreamProbe,
};
