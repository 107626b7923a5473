//! The transports calls go out on, from configuration: plain HTTP, and
//! mutual TLS with the client's own credentials when `[tls]` is on.

use std::collections::HashMap;

use mesh_core::{ConfigError, EventBus, ServiceName};
use mesh_discover::Catalog;
use mesh_tls::{Credentials, SpiffeId, TlsError};

use crate::config::MeshConfig;
use crate::transport::Transports;

/// The client's mutual TLS credentials, loaded (and watched for rotation)
/// with their events on `bus`; `None` while `[tls]` is off.
pub(crate) fn credentials(
    config: &MeshConfig,
    bus: &EventBus,
) -> Result<Option<Credentials>, ConfigError> {
    let Some(tls) = config.tls.as_ref().filter(|t| t.enabled) else {
        return Ok(None);
    };
    let credentials = tls.credentials().map_err(tls_error)?;
    Ok(Some(credentials.with_events(bus.clone())))
}

/// Every transport the routes choose from: mutual TLS ones too when
/// `credentials` were loaded, each called service held to its identity
/// in `identities` (else `[tls] peer_identity`'s).
pub(crate) fn transports(
    config: &MeshConfig,
    credentials: Option<&Credentials>,
    identities: HashMap<ServiceName, SpiffeId>,
    catalog: &Catalog,
) -> Transports {
    let tls = config.tls.as_ref().filter(|t| t.enabled);
    let tls = tls
        .zip(credentials)
        .map(|(config, credentials)| (config, credentials, identities));
    Transports::new(tls, catalog)
}

/// A TLS failure while setting up, reported against `tls`, the
/// [`TlsError`] kept as its cause.
pub(crate) fn tls_error(e: TlsError) -> ConfigError {
    match e {
        TlsError::Config(e) => e,
        other => ConfigError::new("tls", &other).caused_by(other),
    }
}
