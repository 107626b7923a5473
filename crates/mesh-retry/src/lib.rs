#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]
#![warn(missing_docs, clippy::unwrap_used)]

mod backoff;
mod budget;
mod call_policy;
mod config;
mod future;
mod grpc;
mod hedge;
mod layer;
mod policy;
#[cfg(feature = "opentelemetry")]
mod propagate;
mod replay;
mod retrying;
mod service;
mod service_budgets;
mod settings;
mod stats;
mod trace;

pub use backoff::{Backoff, Delays, Growth, Jitter};
pub use budget::{RetryBudget, RetryBudgetConfig};
pub use call_policy::{CallPolicy, CallPolicyBuilder};
pub use config::{RetryConfig, RetryConfigBuilder, RetryContext, RetryPredicate};
pub use future::ResponseFuture;
pub use hedge::{HedgeFuture, Hedging, HedgingSettings};
pub use layer::RetryLayer;
pub use policy::RetryPolicy;
pub use replay::{ReplayBody, ReplayError, ReplayableBody};
pub use service::{AttemptFuture, AttemptTimeout, Retry};
pub use settings::{BackoffKind, RetrySettings};
pub use stats::RetryStats;
pub use trace::{AttemptAnswer, MethodPolicyNames};
