#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]
#![warn(missing_docs, clippy::unwrap_used)]

mod circuit;
mod config;
mod future;
mod layer;
mod registry;
mod service;

pub use circuit::{Circuit, Permit, Rejected, Transition};
pub use config::{BreakerConfig, BreakerConfigBuilder};
pub use future::ResponseFuture;
pub use layer::BreakerLayer;
pub use registry::BreakerKey;
pub use service::Breaker;
