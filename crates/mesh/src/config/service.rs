//! The services a configuration names: the local one ([`LocalService`])
//! and what differs for the ones it calls ([`ServiceOverride`]).

use std::time::Duration;

use mesh_balance::BalanceConfig;
use mesh_breaker::BreakerConfig;
use serde::{Deserialize, Serialize};

use super::{FallbackConfig, LimitsConfig, MethodSettings, RetrySettings};

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
    /// How many bytes of a streamed request body are kept for retries
    /// (over the file's `replay_buffer`).
    #[serde(default)]
    pub replay_buffer: Option<usize>,
    /// A gRPC service config (JSON, as the gRPC libraries take it): its
    /// `methodConfig` entries give methods their own `timeout` and
    /// `retryPolicy` or `hedgingPolicy`.
    #[serde(default)]
    pub grpc_service_config: Option<std::path::PathBuf>,
    /// Per path prefix and HTTP method: a deadline and a retry or hedging
    /// policy (`[[services.<name>.methods]]`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub methods: Vec<MethodSettings>,
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
    /// What answers its failed calls (`[services.<name>.fallback]`).
    #[serde(default)]
    pub fallback: Option<FallbackConfig>,
    /// A canary split between subsets of the service's instances
    /// (`[[services.user-service.split]]` tables); changeable at run time
    /// with [`crate::MeshClient::set_split`].
    #[serde(default)]
    pub split: Vec<crate::split::Subset>,
}
