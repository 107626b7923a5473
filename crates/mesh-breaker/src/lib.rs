//! Circuit breaking for tower-mesh.
//!
//! A circuit breaker stops sending to an upstream that keeps failing, so
//! that the failure costs one fast error instead of a timeout per request
//! and the upstream gets room to recover. [`BreakerLayer`] keeps one circuit
//! per *endpoint* when the balancer above has chosen one (the
//! [`SelectedEndpoint`](mesh_core::ext::SelectedEndpoint) extension), else
//! one per service, else one per authority, so it also works alone.
//!
//! - **CLOSED**: calls pass. After `consecutive_failures` failures in a row
//!   (as judged by the shared [`FailureClassifier`](mesh_core::FailureClassifier):
//!   errors, timeouts and 5xx by default) the circuit opens.
//! - **OPEN**: calls fail at once with
//!   [`MeshError::CircuitOpen`](mesh_core::MeshError::CircuitOpen), and a
//!   per-endpoint circuit *ejects* its endpoint in the shared live state, so
//!   the balancer stops choosing it at all.
//! - **HALF_OPEN**: after `open_duration`, exactly one probe call passes.
//!   Success closes the circuit and returns the endpoint to the balancer;
//!   failure opens it for another `open_duration`.
//!
//! Every transition is published as a
//! [`MeshEvent::BreakerTransition`](mesh_core::MeshEvent::BreakerTransition).
//! The state machine ([`Circuit`]) knows nothing of tower and is tested on
//! its own. Rate-based thresholds, rolling windows, slow calls, fallbacks
//! and bounded registries come next.
//!
//! ```
//! use std::time::Duration;
//! use mesh_breaker::{BreakerConfig, BreakerLayer};
//! use tower::{service_fn, Layer, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
//! let config = BreakerConfig::builder()
//!     .consecutive_failures(2)
//!     .open_duration(Duration::from_secs(10))
//!     .build()?;
//! let layer = BreakerLayer::new(config);
//! let failing = service_fn(|_req: http::Request<()>| async {
//!     Ok::<_, std::convert::Infallible>(
//!         http::Response::builder().status(503).body(()).unwrap(),
//!     )
//! });
//! let svc = layer.layer(failing);
//! for _ in 0..2 {
//!     let response = svc.clone().oneshot(http::Request::get("http://db/").body(())?).await?;
//!     assert_eq!(response.status(), 503); // failures pass through, and count
//! }
//! let refused = svc.oneshot(http::Request::get("http://db/").body(())?).await;
//! assert!(refused.unwrap_err().to_string().starts_with("circuit open"));
//! # Ok(()) }
//! ```
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
