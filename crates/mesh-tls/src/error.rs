//! What can go wrong: loading material ([`TlsError`]) and handshakes
//! ([`HandshakeRejection`], in its own module).

use mesh_core::ConfigError;
use tokio_rustls::rustls;

pub use crate::rejection::HandshakeRejection;

/// Loading or configuring TLS failed. Every variant names the file (or the
/// in-memory source) and the cause, or, for [`TlsError::Config`], the
/// configuration key and why it was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// A file could not be read.
    #[error("cannot read {what}: {source}")]
    Unreadable {
        /// The file.
        what: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The contents are not valid PEM, or hold something other than what
    /// was expected.
    #[error("{what} is not valid PEM: {detail}")]
    MalformedPem {
        /// The file or in-memory source.
        what: String,
        /// What the parser said.
        detail: String,
    },
    /// No certificate in a certificate file.
    #[error("{what} holds no certificate")]
    NoCertificate {
        /// The file or in-memory source.
        what: String,
    },
    /// No private key (PKCS#8, PKCS#1 RSA or SEC1 EC) in a key file.
    #[error("{what} holds no private key (PKCS#8, RSA or EC PEM)")]
    NoPrivateKey {
        /// The file or in-memory source.
        what: String,
    },
    /// The key cannot be used (an unsupported algorithm or curve).
    #[error("{what}: unusable private key: {detail}")]
    UnusableKey {
        /// The file or in-memory source.
        what: String,
        /// Why.
        detail: String,
    },
    /// The private key is not the certificate's.
    #[error("the private key in {key} does not match the certificate in {cert}")]
    KeyMismatch {
        /// The certificate's file or source.
        cert: String,
        /// The key's file or source.
        key: String,
    },
    /// The certificate cannot be used: unparsable, expired or not valid yet.
    #[error("{what}: {detail}")]
    BadCertificate {
        /// The file or in-memory source.
        what: String,
        /// Why.
        detail: String,
    },
    /// The certificate's validity starts in the future (beyond a few
    /// minutes of tolerated clock skew). A rotation to it is retried until
    /// it becomes valid.
    #[error("{what} is not valid before {not_before_unix} (Unix time)")]
    NotYetValid {
        /// The file or in-memory source.
        what: String,
        /// When it becomes valid.
        not_before_unix: i64,
    },
    /// No usable CA certificate.
    #[error("{what} holds no usable CA certificate: {detail}")]
    InvalidCa {
        /// The file or in-memory source.
        what: String,
        /// Why.
        detail: String,
    },
    /// A configuration value is refused: out of range, inconsistent, or
    /// unusable here (the key at fault, such as `tls.trust_system_roots`,
    /// and why). Said exactly as the [`ConfigError`] says it.
    #[error(transparent)]
    Config(#[from] ConfigError),
}

// === impl TlsError ===

impl TlsError {
    /// Whether files caught in the middle of a rotation that does not
    /// write them atomically explain this error: the certificate written
    /// before the key (or the reverse), a file truncated before it is
    /// rewritten, or removed before it is written again.
    pub(crate) fn may_be_mid_write(&self) -> bool {
        matches!(
            self,
            TlsError::KeyMismatch { .. }
                | TlsError::NoCertificate { .. }
                | TlsError::NoPrivateKey { .. }
                | TlsError::MalformedPem { .. }
                | TlsError::Unreadable { .. }
        )
    }

    /// The credentials' crypto provider cannot make a configuration with
    /// rustls's safe default protocol versions (a provider without key
    /// exchange groups or usable cipher suites): refused under
    /// `tls.protocol_versions`, with rustls's error kept as the cause.
    pub(crate) fn unusable_protocol_versions(error: rustls::Error) -> Self {
        ConfigError::new(
            "tls.protocol_versions",
            "the crypto provider cannot be used with the safe default protocol versions \
             (TLS 1.3 and 1.2)",
        )
        .caused_by(error)
        .into()
    }
}

/// A connector that requires TLS was asked for a plaintext connection
/// (an `http` URI, or one without a scheme). Refused before any TCP
/// connection is opened, so nothing reached the peer.
///
/// This is a configuration error, not a transport failure: it is not a
/// [`mesh_core::ConnectError`], so retry policies do not treat it as a
/// call that may go to another endpoint (every endpoint would refuse it
/// the same way). [`crate::ClientTlsBuilder::allow_plaintext`] is the
/// explicit opt-out.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("refusing to send plaintext to {authority}: mutual TLS is required (use an https URI)")]
pub struct PlaintextRefused {
    /// Where the connection would have gone (the whole URI when it has no
    /// authority).
    pub authority: String,
}
