#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]
#![warn(missing_docs, clippy::unwrap_used)]

mod backoff;
mod config;
mod layer;
mod policy;
mod service;

pub use backoff::Backoff;
pub use config::{RetryConfig, RetryConfigBuilder};
pub use layer::RetryLayer;
pub use policy::{RetryPolicy, RetryStats};
pub use service::{BoxErrors, BoxErrorsFuture, Retry};
