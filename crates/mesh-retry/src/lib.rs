#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]
#![warn(missing_docs, clippy::unwrap_used)]

mod backoff;
mod budget;
mod config;
mod layer;
mod policy;
mod replay;
mod service;
mod settings;

pub use backoff::{Backoff, Delays, Growth, Jitter};
pub use budget::{RetryBudget, RetryBudgetConfig};
pub use config::{RetryConfig, RetryConfigBuilder, RetryContext, RetryPredicate};
pub use layer::RetryLayer;
pub use policy::{RetryPolicy, RetryStats};
pub use replay::{ReplayBody, ReplayError, ReplayableBody};
pub use service::{AttemptFuture, AttemptTimeout, Retry};
pub use settings::{BackoffKind, RetrySettings};
