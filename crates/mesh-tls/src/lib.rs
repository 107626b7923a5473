#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]
#![warn(missing_docs, clippy::unwrap_used)]

mod alert;
mod client;
mod config;
mod credentials;
mod error;
mod identity;
mod material;
mod metrics;
mod rejection;
mod server;
mod stream;
mod template;
mod verify;

pub use client::{ClientTls, ClientTlsBuilder, HandshakeError, MeshConnector};
pub use config::TlsConfig;
pub use credentials::Credentials;
pub use error::{HandshakeRejection, PlaintextRefused, TlsError};
pub use identity::{IdentityPolicy, InvalidSpiffeId, PeerIdentity, SpiffeId};
pub use material::{Material, PemSource};
pub use metrics::{TlsMetrics, TlsMetricsSnapshot};
pub use server::{ServerTls, ServerTlsBuilder};
pub use stream::MeshStream;
pub use verify::PeerVerification;

/// rustls, as this crate uses it (for configurations built by hand).
pub use tokio_rustls::rustls;
