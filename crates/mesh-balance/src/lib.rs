#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]
#![warn(missing_docs, clippy::unwrap_used)]

mod body;
mod config;
mod future;
mod layer;
mod round_robin;
mod service;
mod slots;
mod strategy;

pub use body::TrackedBody;
pub use config::{BalanceConfig, BalanceConfigBuilder};
pub use future::ResponseFuture;
pub use layer::BalanceLayer;
pub use round_robin::RoundRobin;
pub use service::Balance;
pub use strategy::{
    hash_key, InstanceMetrics, KeySource, NoPick, PickContext, Picker, ServiceMetrics, Strategy,
};
