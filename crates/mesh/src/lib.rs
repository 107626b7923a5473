#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]
#![warn(missing_docs, clippy::unwrap_used)]

mod call_metrics;
mod client;
mod config;
mod endpoint_client;
mod fallback;
mod grpc;
mod lanes;
mod limits;
pub mod metrics;
mod policies;
pub mod prometheus;
mod services;
mod split;
mod transport;
mod wiring;

pub use client::{CallOptions, MeshBody, MeshClient, MeshClientBuilder, RequestBody, StartError};
pub use config::{
    deadline_for, retry_after_for, DiscoveryConfig, FallbackConfig, LimitsConfig, LocalService,
    MeshConfig, MethodSettings, Profile, Protocol, RetryPolicySettings, RetrySettings,
    ServiceOverride,
};
pub use endpoint_client::{EndpointClient, ResponseFuture as EndpointResponseFuture};
pub use fallback::{FallbackCause, FallbackFn, FallbackUsed};
pub use grpc::GrpcChannel;
pub use split::Subset;

pub use mesh_balance as balance;
pub use mesh_breaker as breaker;
pub use mesh_core as core;
pub use mesh_discover as discover;
pub use mesh_health as health;
pub use mesh_retry as retry;
pub use mesh_tls as tls;

/// The names most stacks need, in one `use`.
pub mod prelude {
    pub use crate::{CallOptions, EndpointClient, MeshClient, MeshConfig, StartError};
    pub use mesh_balance::{BalanceConfig, BalanceLayer, KeySource, Strategy};
    pub use mesh_breaker::{BreakerConfig, BreakerLayer, BreakerScope, FallbackLayer, Fault};
    pub use mesh_core::ext::{AffinityKey, TargetService};
    pub use mesh_core::{BoxError, ConfigError, EventBus, MeshError, MeshEvent, ServiceName};
    pub use mesh_discover::{DiscoverLayer, StaticRegistry};
    pub use mesh_health::{HealthCheck, HealthCheckManager, HealthLayer, UpstreamHealthChecker};
    pub use mesh_retry::{Backoff, Jitter, ReplayBody, RetryConfig, RetryLayer};
    pub use mesh_tls::{ClientTls, Credentials, ServerTls, TlsConfig};
}

#[cfg(doctest)]
#[doc = include_str!("../../../README.md")]
pub struct ReadmeDoctests;
