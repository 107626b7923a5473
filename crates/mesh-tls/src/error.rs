//! What can go wrong: loading material ([`TlsError`]) and handshakes
//! ([`HandshakeRejection`]).

use std::error::Error as StdError;

use mesh_core::ConfigError;
use tokio_rustls::rustls;

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

/// Why a TLS handshake was refused or failed.
///
/// The side that verified the peer's certificate sees the specific cause;
/// the refused side sees [`HandshakeRejection::RefusedByPeer`] with the
/// TLS alert it received.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HandshakeRejection {
    /// The peer's certificate is not signed by a trusted CA.
    #[error("the peer's certificate is not signed by a trusted CA (unknown CA)")]
    UnknownCa,
    /// The peer's certificate has expired.
    #[error("the peer's certificate has expired")]
    Expired,
    /// The peer's certificate is not valid yet.
    #[error("the peer's certificate is not valid yet")]
    NotYetValid,
    /// The peer's workload identity is not on the allow-list.
    #[error("the peer's identity {identity} is not allowed (allowed: {allowed})")]
    IdentityNotAllowed {
        /// The identity the peer presented.
        identity: String,
        /// What the allow-list holds.
        allowed: String,
    },
    /// The server presented a valid mesh certificate for another workload
    /// than the destination service's: an impostor, or an endpoint
    /// registered under the wrong service. Refused at the handshake, so no
    /// request is sent to it.
    #[error("the peer presented the identity {identity}, not the expected {expected}")]
    UnexpectedIdentity {
        /// The identity the peer presented.
        identity: String,
        /// The identity the destination service must present.
        expected: String,
    },
    /// Identities are checked, but the peer's certificate has no SPIFFE
    /// URI SAN.
    #[error("the peer's certificate carries no workload identity (SPIFFE URI SAN)")]
    NoIdentity,
    /// The peer's certificate carries more than one URI SAN; an X.509-SVID
    /// carries exactly one, and which of several to trust is ambiguous.
    #[error("the peer's certificate carries several URI SANs ({uris}); a workload identity must be exactly one")]
    AmbiguousIdentity {
        /// The URIs presented.
        uris: String,
    },
    /// The server requires a client certificate and the client sent none.
    #[error("the peer presented no client certificate")]
    NoClientCertificate,
    /// The server's certificate is not valid for the name connected to.
    #[error("the peer's certificate is not valid for the name connected to: {detail}")]
    NameMismatch {
        /// What was expected and presented.
        detail: String,
    },
    /// The peer refused this end's certificate (or the handshake) with a
    /// TLS alert.
    #[error("the peer refused the handshake (TLS alert {alert})")]
    RefusedByPeer {
        /// The alert, as rustls names it (`UnknownCA`, `CertificateRequired`...).
        alert: String,
    },
    /// Anything else (a protocol error, a timeout).
    #[error("TLS handshake failed: {0}")]
    Other(String),
}

impl HandshakeRejection {
    /// Every label [`HandshakeRejection::label`] can return, for metrics.
    pub const LABELS: [&'static str; 11] = [
        "unknown-ca",
        "expired",
        "not-yet-valid",
        "identity-not-allowed",
        "unexpected-identity",
        "no-identity",
        "ambiguous-identity",
        "no-client-certificate",
        "name-mismatch",
        "refused-by-peer",
        "other",
    ];

    /// A short, stable label for metrics and events.
    pub fn label(&self) -> &'static str {
        Self::LABELS[self.index()]
    }

    pub(crate) fn index(&self) -> usize {
        match self {
            HandshakeRejection::UnknownCa => 0,
            HandshakeRejection::Expired => 1,
            HandshakeRejection::NotYetValid => 2,
            HandshakeRejection::IdentityNotAllowed { .. } => 3,
            HandshakeRejection::UnexpectedIdentity { .. } => 4,
            HandshakeRejection::NoIdentity => 5,
            HandshakeRejection::AmbiguousIdentity { .. } => 6,
            HandshakeRejection::NoClientCertificate => 7,
            HandshakeRejection::NameMismatch { .. } => 8,
            HandshakeRejection::RefusedByPeer { .. } => 9,
            HandshakeRejection::Other(_) => 10,
        }
    }

    /// The reason behind a rustls error.
    pub fn from_rustls(error: &rustls::Error) -> Self {
        use rustls::CertificateError as C;
        match error {
            rustls::Error::InvalidCertificate(cert) => match cert {
                C::UnknownIssuer => HandshakeRejection::UnknownCa,
                C::Expired | C::ExpiredContext { .. } => HandshakeRejection::Expired,
                C::NotValidYet | C::NotValidYetContext { .. } => HandshakeRejection::NotYetValid,
                C::NotValidForName | C::NotValidForNameContext { .. } => {
                    HandshakeRejection::NameMismatch {
                        detail: cert.to_string(),
                    }
                }
                C::Other(other) => match other.0.downcast_ref::<HandshakeRejection>() {
                    Some(rejection) => rejection.clone(),
                    None => HandshakeRejection::Other(other.to_string()),
                },
                other => HandshakeRejection::Other(other.to_string()),
            },
            rustls::Error::NoCertificatesPresented => HandshakeRejection::NoClientCertificate,
            rustls::Error::AlertReceived(alert) => HandshakeRejection::RefusedByPeer {
                alert: format!("{alert:?}"),
            },
            other => HandshakeRejection::Other(other.to_string()),
        }
    }

    /// The reason behind any error whose source chain holds a rustls error
    /// (hyper's and hyper-util's errors do), or `None` when the failure
    /// was not TLS's (a refused TCP connection).
    pub fn find(error: &(dyn StdError + 'static)) -> Option<Self> {
        let mut current = Some(error);
        while let Some(e) = current {
            if let Some(tls) = e.downcast_ref::<rustls::Error>() {
                return Some(Self::from_rustls(tls));
            }
            if let Some(rejection) = e.downcast_ref::<HandshakeRejection>() {
                return Some(rejection.clone());
            }
            // After the handshake, rustls reports an alert received while
            // reading as text only ("received fatal alert: UnknownCA"): with
            // TLS 1.3 that is how a client learns its certificate was
            // refused.
            if let Some(alert) = e
                .to_string()
                .strip_prefix("received fatal alert: ")
                .filter(|_| e.downcast_ref::<std::io::Error>().is_none())
            {
                return Some(HandshakeRejection::RefusedByPeer {
                    alert: alert.to_owned(),
                });
            }
            // An io::Error's `source` skips the error it wraps (it returns
            // that error's source): step into the wrapped error instead.
            current = match e
                .downcast_ref::<std::io::Error>()
                .and_then(|io| io.get_ref())
            {
                Some(inner) => Some(inner as &(dyn StdError + 'static)),
                None => e.source(),
            };
        }
        None
    }

    /// This rejection as the error a verifier hands rustls, so the side
    /// that verified sees it unchanged.
    pub(crate) fn into_rustls(self) -> rustls::Error {
        match self {
            HandshakeRejection::UnknownCa => {
                rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer)
            }
            other => rustls::Error::InvalidCertificate(rustls::CertificateError::Other(
                rustls::OtherError(std::sync::Arc::new(other)),
            )),
        }
    }
}
