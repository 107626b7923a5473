//! The shared vocabulary of tower-mesh.
//!
//! Every tower-mesh layer (discovery, balancing, circuit breaking, retries,
//! health checking) is its own crate, and none of them imports another. They
//! meet only through the types defined here:
//!
//! - **Names**: [`ServiceName`] (the logical service a request is for, taken
//!   from the URI authority) and [`EndpointId`] (one instance of it).
//! - **Endpoints**: an [`Endpoint`] is an immutable description (address,
//!   [`Weight`], tags, metadata, zone) plus a shared [`EndpointState`] of
//!   atomics (in-flight count, latency estimate, health, ejected-until) that
//!   the balancer reads and the breaker, health checker and discovery write.
//!   An [`EndpointSet`] is an immutable snapshot of a service's endpoints,
//!   cheap to clone and swapped in whole when discovery sees a change.
//! - **Request extensions** ([`ext`]): what one layer tells the layers below
//!   it about a request: the target service, the resolved endpoint set, the
//!   selected endpoint, the attempt number, the endpoints to avoid.
//! - **Events** ([`MeshEvent`], [`EventBus`]): state transitions published on
//!   a broadcast channel that never blocks the request path.
//! - **Errors** ([`MeshError`]): one enum whose `Display` says what to do.
//! - **Failure classification** ([`FailureClassifier`]): one answer, shared
//!   by breaker and retry, to "did this call fail?".
//!
//! ```
//! use mesh_core::{Endpoint, EndpointSet, ServiceName, Weight};
//!
//! let service = ServiceName::new("user-service")?;
//! let set = EndpointSet::new(
//!     service.clone(),
//!     vec![
//!         Endpoint::builder("127.0.0.1:8080".parse()?).build(),
//!         Endpoint::builder("127.0.0.1:8081".parse()?)
//!             .weight(Weight::new(3)?)
//!             .tag("canary")
//!             .build(),
//!     ],
//! );
//! assert_eq!(set.len(), 2);
//! assert_eq!(set.available(mesh_core::clock::now()).count(), 2);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs, clippy::unwrap_used)]

mod classify;
pub mod clock;
mod endpoint;
mod error;
mod event;
pub mod ext;
mod name;
mod set;
mod state;

pub use classify::{FailureClassifier, FailureKind, Outcome, StatusSet};
pub use endpoint::{Endpoint, EndpointBuilder, Weight};
pub use error::{BoxError, MeshError};
pub use event::{CircuitState, EventBus, MeshEvent};
pub use name::{EndpointId, InvalidName, ServiceName};
pub use set::EndpointSet;
pub use state::{EndpointState, Health};
