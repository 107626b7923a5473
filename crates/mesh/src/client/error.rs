//! [`StartError`]: why a [`MeshClient`](super::MeshClient) did not start.

use mesh_core::{BoxError, ConfigError, ServiceName};

/// Why [`MeshClient::from_config`](super::MeshClient::from_config) (or the
/// builder's `build`) did not start a client: its configuration was
/// refused, or the registry would not take the local service.
///
/// Errors of the calls a started client makes are
/// [`mesh_core::MeshError`]s; this type is only ever met once, at start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// A configuration value was refused: the key and why (a file that
    /// cannot be read, a certificate that does not load, a value out of
    /// range), the cause kept as the source.
    #[error(transparent)]
    Config(#[from] ConfigError),

    /// The local service could not be registered with its registry (a
    /// network or agent failure, not a configuration mistake).
    #[error("registering {service} with {registry} failed: {}; check that the agent is reachable and accepts the registration", mesh_core::root_cause(source.as_ref()))]
    Registration {
        /// The local service.
        service: ServiceName,
        /// The registry, as it describes itself (`consul at http://...`).
        registry: String,
        /// Why.
        #[source]
        source: BoxError,
    },
}
