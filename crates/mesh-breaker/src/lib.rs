#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]
#![warn(missing_docs, clippy::unwrap_used)]

mod body;
mod circuit;
mod config;
mod error;
mod fallback;
mod future;
mod handle;
mod layer;
mod registry;
mod service;
mod timer;
mod window;

pub use body::ResponseBody;
pub use circuit::{Admitted, BreakerMetrics, Circuit, Permit, Recorded, Rejected, Transition};
pub use config::{
    BreakerConfig, BreakerConfigBuilder, BreakerScope, HalfOpenExpiry, ProbeVerdict, WindowConfig,
};
pub use error::IllegalTransition;
pub use fallback::{Fallback, FallbackFuture, FallbackLayer, Fault};
pub use future::ResponseFuture;
pub use handle::BreakerHandle;
pub use layer::{BreakerLayer, KeyFn, RequestParts};
pub use registry::BreakerKey;
pub use service::Breaker;
pub use window::WindowCounts;
