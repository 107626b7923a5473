//! Retries for tower-mesh.
//!
//! [`RetryLayer`] sits at the top of the stack and sends a request again
//! when an attempt fails in a way worth retrying:
//!
//! - a response whose status is retryable (by default the design
//!   document's 408, 429, 500, 502, 503 and 504), or
//! - an error that the shared [`FailureClassifier`](mesh_core::FailureClassifier)
//!   names a connect error, a reset, a timeout or an open circuit;
//!
//! and only when the request may safely be sent twice: an idempotent method
//! (GET, HEAD, OPTIONS, PUT, DELETE, TRACE), an `Idempotency-Key` header, or
//! an explicit opt-in. After at most `max_retries` retries the caller gets
//! the last real response or error, never a new error that hides it.
//!
//! Every attempt passes through the layers below again: discovery resolves
//! afresh, and the endpoint that failed is added to the request's
//! [`AvoidEndpoints`](mesh_core::ext::AvoidEndpoints) so the balancer tries
//! another instance. The attempt number travels as an
//! [`Attempt`](mesh_core::ext::Attempt) extension.
//!
//! The decisions are a [`RetryPolicy`], a [`tower::retry::Policy`], so the
//! service is tower's own `Retry`. Replaying a body needs the body to be
//! `Clone`, which buffered bodies (`Full<Bytes>`, `String`, `Empty`) are at
//! the cost of a reference count. Exponential, linear and fibonacci
//! backoff, jitter, budgets, Retry-After, deadlines and streaming bodies
//! come next.
//!
//! ```
//! use std::sync::atomic::{AtomicUsize, Ordering};
//! use std::sync::Arc;
//! use std::time::Duration;
//! use mesh_retry::{Backoff, RetryConfig, RetryLayer};
//! use tower::{service_fn, Layer, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
//! let calls = Arc::new(AtomicUsize::new(0));
//! let flaky = {
//!     let calls = Arc::clone(&calls);
//!     service_fn(move |_req: http::Request<String>| {
//!         // The first attempt gets a 503, the second succeeds.
//!         let status = if calls.fetch_add(1, Ordering::SeqCst) == 0 { 503 } else { 200 };
//!         async move { Ok::<_, std::convert::Infallible>(http::Response::builder().status(status).body(()).unwrap()) }
//!     })
//! };
//! let layer = RetryLayer::new(
//!     RetryConfig::builder()
//!         .max_retries(2)
//!         .backoff(Backoff::constant(Duration::from_millis(1)))
//!         .build()?,
//! );
//! let svc = layer.layer(flaky);
//! let response = svc.oneshot(http::Request::get("http://users/").body(String::new())?).await?;
//! assert_eq!(response.status(), 200);
//! assert_eq!(calls.load(Ordering::SeqCst), 2);
//! assert_eq!(layer.stats().retries, 1);
//! # Ok(()) }
//! ```
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
