//! Load balancing for tower-mesh.
//!
//! The [`BalanceLayer`] sits below discovery: each request arrives carrying
//! its service's [`EndpointSet`](mesh_core::EndpointSet), and the balancer
//!
//! 1. picks one *available* endpoint (healthy or unchecked, not ejected by
//!    a breaker, not draining), preferring any endpoint that an earlier
//!    attempt of the same request did not fail on
//!    ([`AvoidEndpoints`](mesh_core::ext::AvoidEndpoints));
//! 2. rewrites the URI's authority to that endpoint's address, keeping the
//!    logical name in the `Host` header, and records the choice as a
//!    [`SelectedEndpoint`](mesh_core::ext::SelectedEndpoint) on the request
//!    (for the breaker below) and on the response (for retry above);
//! 3. counts the request in the endpoint's in-flight gauge from dispatch
//!    until the response body ends, fails or is dropped, and records its
//!    latency then. The count travels in the response body
//!    ([`TrackedBody`]), so a caller streaming a long download keeps the
//!    endpoint loaded until it is done, and a cancelled request leaves no
//!    count behind.
//!
//! The picking strategy lives in its own module with no tower in it, so it
//! can be tested exhaustively. Round robin is the first; the other
//! strategies of the design document come next.
//!
//! ```
//! use mesh_balance::BalanceLayer;
//! use mesh_core::{Endpoint, EndpointSet, ServiceName};
//! use tower::{service_fn, Layer, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
//! let set = EndpointSet::new(
//!     ServiceName::new("users")?,
//!     vec![Endpoint::builder("127.0.0.1:8080".parse()?).build()],
//! );
//! // The inner service sees the rewritten URI.
//! let inner = service_fn(|req: http::Request<String>| async move {
//!     Ok::<_, std::convert::Infallible>(http::Response::new(req.uri().to_string()))
//! });
//! let mut req = http::Request::get("http://users/api?q=1").body(String::new())?;
//! req.extensions_mut().insert(set); // DiscoverLayer does this in a real stack
//! let response = BalanceLayer::round_robin().layer(inner).oneshot(req).await?;
//! assert_eq!(response.into_body().into_inner(), "http://127.0.0.1:8080/api?q=1");
//! # Ok(()) }
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs, clippy::unwrap_used)]

mod body;
mod future;
mod layer;
mod round_robin;
mod service;

pub use body::TrackedBody;
pub use future::ResponseFuture;
pub use layer::BalanceLayer;
pub use round_robin::RoundRobin;
pub use service::Balance;
