//! tower-mesh: a service-mesh client as `tower` layers.
//!
//! This facade re-exports every tower-mesh crate under one name, so an
//! application depends on `mesh` alone:
//!
//! | module | crate | what it does |
//! |---|---|---|
//! | [`core`] | `mesh-core` | endpoints, live state, extensions, events, errors |
//! | [`discover`] | `mesh-discover` | resolves a request's service to its endpoints |
//! | [`balance`] | `mesh-balance` | picks one endpoint and tracks its load |
//! | [`breaker`] | `mesh-breaker` | fails fast on failing endpoints |
//! | [`retry`] | `mesh-retry` | sends failed requests again, elsewhere |
//! | [`health`] | `mesh-health` | probes and active health checks (in progress) |
//! | [`tls`] | `mesh-tls` | mutual TLS (in progress) |
//!
//! The configuration-driven `MeshClient` (profiles, per-service overrides,
//! registration, metrics export, graceful shutdown) is the next step for
//! this crate. Today the stack is assembled with `tower::ServiceBuilder`,
//! outermost layer first:
//!
//! ```
//! use std::time::Duration;
//! use bytes::Bytes;
//! use http_body_util::Full;
//! use hyper_util::client::legacy::Client;
//! use hyper_util::rt::TokioExecutor;
//! use mesh::prelude::*;
//! use tower::ServiceBuilder;
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
//! let events = EventBus::default();
//! let registry = StaticRegistry::builder()
//!     .service("user-service", ["127.0.0.1:8080", "127.0.0.1:8081"])
//!     .build()?;
//! let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
//! let stack = ServiceBuilder::new()
//!     .layer(RetryLayer::new(RetryConfig::default()).events(events.clone()))
//!     .layer(DiscoverLayer::new(registry.catalog()))
//!     .layer(BalanceLayer::round_robin())
//!     .layer(BreakerLayer::new(BreakerConfig::default()).events(events.clone()))
//!     .timeout(Duration::from_secs(2))
//!     .service(client);
//! # let _ = stack;
//! # Ok(()) }
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs, clippy::unwrap_used)]

pub use mesh_balance as balance;
pub use mesh_breaker as breaker;
pub use mesh_core as core;
pub use mesh_discover as discover;
pub use mesh_health as health;
pub use mesh_retry as retry;
pub use mesh_tls as tls;

/// The names most stacks need, in one `use`.
pub mod prelude {
    pub use mesh_balance::BalanceLayer;
    pub use mesh_breaker::{BreakerConfig, BreakerLayer};
    pub use mesh_core::ext::{AffinityKey, TargetService};
    pub use mesh_core::{BoxError, EventBus, MeshError, MeshEvent, ServiceName};
    pub use mesh_discover::{DiscoverLayer, StaticRegistry};
    pub use mesh_retry::{Backoff, RetryConfig, RetryLayer};
}

#[cfg(doctest)]
#[doc = include_str!("../../../README.md")]
pub struct ReadmeDoctests;
