#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]
#![warn(missing_docs, clippy::unwrap_used)]

mod backoff;
mod catalog;
mod consul;
mod consul_agent;
mod consul_hosts;
mod consul_lookup;
mod error;
mod file;
mod follow;
mod followers;
mod future;
#[cfg(feature = "kubernetes")]
mod kubernetes;
#[cfg(feature = "kubernetes")]
mod kubernetes_lookup;
mod layer;
mod registry;
mod service;
mod static_list;

pub use catalog::Catalog;
pub use consul::{ConsulRegistry, ConsulRegistryBuilder};
pub use consul_agent::{AgentCheck, Registration};
pub use error::TooManyServices;
pub use file::FileRegistry;
pub use follow::Follow;
pub use future::ResponseFuture;
#[cfg(feature = "kubernetes")]
pub use kubernetes::{KubernetesDnsRegistry, KubernetesDnsRegistryBuilder, PortSource};
pub use layer::{DiscoverLayer, DEFAULT_IDLE_TIMEOUT, DEFAULT_MAX_FOLLOWED};
pub use registry::{
    poll_watch, watch_task, BoxFuture, BoxStream, DiscoveryError, Registry, WatchSender,
};
pub use service::DiscoverService;
pub use static_list::{StaticRegistry, StaticRegistryBuilder};
