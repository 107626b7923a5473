//! Service discovery for tower-mesh.
//!
//! A request names a *logical* service in its authority
//! (`http://user-service/api/users`). Discovery turns that name into the
//! service's current [`EndpointSet`](mesh_core::EndpointSet) and attaches it
//! to the request, where the balancer below picks one endpoint.
//!
//! The pieces:
//!
//! - [`Catalog`]: the cache every registry writes into and every request
//!   reads from. Reads are a lock-free snapshot load, so a request never
//!   waits on a registry; writes swap a service's set in whole and keep each
//!   surviving endpoint's live state.
//! - [`StaticRegistry`]: endpoints listed in code or configuration, validated
//!   when built.
//! - [`DiscoverLayer`]: the `tower` layer that resolves each request.
//!
//! Consul, Kubernetes DNS, watched files and the trait for custom registries
//! (etcd, Redis, SQL) come next; they feed the same [`Catalog`].
//!
//! ```
//! use mesh_discover::{DiscoverLayer, StaticRegistry};
//! use mesh_core::EndpointSet;
//! use tower::{service_fn, Layer, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
//! let registry = StaticRegistry::builder()
//!     .service("user-service", ["127.0.0.1:8080", "127.0.0.1:8081"])
//!     .build()?;
//!
//! // The inner service sees the resolved set in the request's extensions.
//! let inner = service_fn(|req: http::Request<()>| async move {
//!     let set = req.extensions().get::<EndpointSet>().cloned();
//!     Ok::<_, std::convert::Infallible>(set.map_or(0, |s| s.len()))
//! });
//! let svc = DiscoverLayer::new(registry.catalog()).layer(inner);
//! let req = http::Request::get("http://user-service/api/users").body(())?;
//! assert_eq!(svc.oneshot(req).await?, 2);
//! # Ok(()) }
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs, clippy::unwrap_used)]

mod catalog;
mod future;
mod layer;
mod service;
mod static_list;

pub use catalog::Catalog;
pub use future::ResponseFuture;
pub use layer::DiscoverLayer;
pub use service::Discover;
pub use static_list::{StaticRegistry, StaticRegistryBuilder};
