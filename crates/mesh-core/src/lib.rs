#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]
#![warn(missing_docs, clippy::unwrap_used)]

mod call_context;
mod classify;
pub mod clock;
mod config_error;
mod endpoint;
mod error;
mod event;
pub mod ext;
pub mod grpc;
mod host;
mod name;
mod name_values;
mod secret;
mod set;
mod shown;
mod state;
mod static_text;

pub use classify::{FailureClassifier, FailureKind, Outcome, StatusSet};
pub use config_error::ConfigError;
pub use endpoint::{Endpoint, EndpointBuilder, Weight};
pub use error::{error_chain, root_cause, BoxError, ConnectError, MeshError};
pub use event::{CircuitState, EventBus, MeshEvent, Probe, ProbeStatus};
pub use name::{EndpointId, InvalidName, ServiceName};
pub use secret::Secret;
pub use set::EndpointSet;
pub use shown::{HeaderNames, ShownUri};
pub use state::{EndpointState, Health};
