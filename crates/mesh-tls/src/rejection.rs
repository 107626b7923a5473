//! [`HandshakeRejection`]: why a handshake was refused, named for people
//! (a `Display` that says what to fix) and for metrics (a stable label).
//!
//! Every certificate error rustls can report while verifying has its own
//! variant, so a dashboard never has to group causes under `other` with a
//! rustls-internal name: `other` is left for I/O failures and the
//! unforeseen. Alerts received from the peer keep their standard (RFC
//! 8446) name, which does not change with the rustls version.

use std::error::Error as StdError;
use std::time::Duration;

use tokio_rustls::rustls;

use crate::alert::{alert_hint, alert_name, alert_name_from_debug};

/// Why a TLS handshake was refused or failed.
///
/// The side that verified the peer's certificate sees the specific cause;
/// the refused side sees [`HandshakeRejection::RefusedByPeer`] with the
/// TLS alert it received. Each reason has a stable
/// [`label`](HandshakeRejection::label) for metrics and events, and a
/// `Display` that says what to fix.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HandshakeRejection {
    /// The peer's certificate is not signed by a trusted CA.
    #[error(
        "the peer's certificate is not signed by a trusted CA (unknown CA): \
         give this end the CA that issued it, or give the peer a certificate from this end's CA"
    )]
    UnknownCa,
    /// The peer's certificate has expired.
    #[error("the peer's certificate has expired: the peer must rotate it")]
    Expired,
    /// The peer's certificate is not valid yet.
    #[error(
        "the peer's certificate is not valid yet: check the clocks of the issuer and of both ends"
    )]
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
    #[error(
        "the peer presented no client certificate: configure the client's certificate and key"
    )]
    NoClientCertificate,
    /// The server's certificate is not valid for the name connected to.
    #[error("the peer's certificate is not valid for the name connected to: {detail}")]
    NameMismatch {
        /// What was expected and presented.
        detail: String,
    },
    /// The peer refused this end's certificate (or the handshake) with a
    /// TLS alert.
    #[error(
        "the peer refused the handshake with the TLS alert {alert}: {}",
        alert_hint(alert)
    )]
    RefusedByPeer {
        /// The alert, by its standard name (`certificate_required`,
        /// `unknown_ca`, `certificate_expired`, `access_denied`...), or
        /// `alert_N` for a code without one.
        alert: String,
    },
    /// The peer's certificate could not be parsed (rustls's
    /// `CertificateError::BadEncoding`).
    #[error("the peer's certificate is malformed (not valid DER): reissue it")]
    MalformedCertificate,
    /// The peer's certificate was revoked by its CA.
    #[error("the peer's certificate has been revoked: the peer needs a new certificate")]
    Revoked,
    /// Whether the peer's certificate is revoked could not be determined:
    /// a revocation list is missing or expired, or an OCSP response is
    /// invalid.
    #[error(
        "the revocation status of the peer's certificate is unknown (a revocation list \
         missing or expired, or an invalid OCSP response): refresh the revocation data"
    )]
    RevocationUnknown,
    /// The peer's certificate has a critical extension this end does not
    /// understand, so it cannot be trusted.
    #[error(
        "the peer's certificate has a critical extension this end does not support: \
         reissue it without that extension, or with it marked non-critical"
    )]
    UnsupportedCriticalExtension,
    /// A signature in the peer's certificate chain does not verify: the
    /// certificate was altered, or signed by another key than the trusted
    /// CA's (a CA of the same name, reissued).
    #[error(
        "a signature in the peer's certificate chain does not verify (altered, or signed by \
         another key than the trusted CA's): reissue it from the trusted CA"
    )]
    BadSignature,
    /// The peer's certificate is signed with an algorithm this end does not
    /// support.
    #[error(
        "the peer's certificate is signed with an unsupported algorithm: reissue it with \
         ECDSA (P-256, P-384), Ed25519 or RSA with SHA-256 or better"
    )]
    UnsupportedSignatureAlgorithm,
    /// The peer's certificate is not issued for this use: its extended key
    /// usage lacks `serverAuth` (a server) or `clientAuth` (a client).
    #[error(
        "the peer's certificate is not issued for this use ({detail}): reissue it with the \
         extended key usage serverAuth for a server, clientAuth for a client (both for a mesh workload)"
    )]
    InvalidPurpose {
        /// What was required and presented, when known.
        detail: String,
    },
    /// A certificate verifier of the application refused the peer's
    /// certificate (rustls's `ApplicationVerificationFailure`).
    #[error("the application's certificate verifier refused the peer's certificate: see its logs")]
    ApplicationVerificationFailure,
    /// The two ends have no TLS version, cipher suite, key exchange or
    /// signature scheme in common.
    #[error(
        "the peer has no TLS version, cipher suite or signature scheme in common with this end \
         ({detail}): the peer must support TLS 1.2 or 1.3 with current cipher suites"
    )]
    Incompatible {
        /// What rustls found missing.
        detail: String,
    },
    /// The peer broke the TLS protocol, or does not speak TLS at all (a
    /// plaintext HTTP client on a TLS port looks like this).
    #[error(
        "the peer did not follow the TLS protocol ({detail}): a plaintext client on a TLS \
         port looks like this; make it use https"
    )]
    ProtocolViolation {
        /// What rustls found wrong.
        detail: String,
    },
    /// The peer did not complete its handshake in time (the server's
    /// [`handshake_timeout`](crate::ServerTlsBuilder::handshake_timeout)).
    #[error(
        "the peer did not complete its handshake within {timeout:?}: a stalled or non-TLS \
         client, or a network too slow for the handshake timeout"
    )]
    HandshakeTimeout {
        /// The timeout that passed.
        timeout: Duration,
    },
    /// Anything else (an I/O error, a connection closed mid-handshake).
    #[error("TLS handshake failed: {0}")]
    Other(String),
}

// === impl HandshakeRejection ===

impl HandshakeRejection {
    /// Every label [`HandshakeRejection::label`] can return, for metrics.
    /// New labels are added before `other`, which stays last.
    pub const LABELS: [&'static str; 22] = [
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
        "malformed-certificate",
        "revoked",
        "revocation-unknown",
        "unsupported-critical-extension",
        "bad-signature",
        "unsupported-signature-algorithm",
        "invalid-purpose",
        "application-verification-failure",
        "incompatible",
        "protocol-violation",
        "handshake-timeout",
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
            HandshakeRejection::MalformedCertificate => 10,
            HandshakeRejection::Revoked => 11,
            HandshakeRejection::RevocationUnknown => 12,
            HandshakeRejection::UnsupportedCriticalExtension => 13,
            HandshakeRejection::BadSignature => 14,
            HandshakeRejection::UnsupportedSignatureAlgorithm => 15,
            HandshakeRejection::InvalidPurpose { .. } => 16,
            HandshakeRejection::ApplicationVerificationFailure => 17,
            HandshakeRejection::Incompatible { .. } => 18,
            HandshakeRejection::ProtocolViolation { .. } => 19,
            HandshakeRejection::HandshakeTimeout { .. } => 20,
            HandshakeRejection::Other(_) => 21,
        }
    }

    /// The reason behind a rustls error.
    pub fn from_rustls(error: &rustls::Error) -> Self {
        use rustls::Error as E;
        match error {
            E::InvalidCertificate(cert) => Self::from_certificate_error(cert),
            E::NoCertificatesPresented => HandshakeRejection::NoClientCertificate,
            E::AlertReceived(alert) => HandshakeRejection::RefusedByPeer {
                alert: alert_name(*alert),
            },
            E::PeerIncompatible(why) => HandshakeRejection::Incompatible {
                detail: format!("{why:?}"),
            },
            E::InvalidMessage(_)
            | E::InappropriateMessage { .. }
            | E::InappropriateHandshakeMessage { .. }
            | E::PeerMisbehaved(_)
            | E::DecryptError
            | E::PeerSentOversizedRecord => HandshakeRejection::ProtocolViolation {
                detail: error.to_string(),
            },
            other => HandshakeRejection::Other(other.to_string()),
        }
    }

    /// The reason behind a certificate that failed verification.
    fn from_certificate_error(cert: &rustls::CertificateError) -> Self {
        use rustls::CertificateError as C;
        #[allow(deprecated)] // UnsupportedSignatureAlgorithm, still reported.
        match cert {
            C::UnknownIssuer => HandshakeRejection::UnknownCa,
            C::Expired | C::ExpiredContext { .. } => HandshakeRejection::Expired,
            C::NotValidYet | C::NotValidYetContext { .. } => HandshakeRejection::NotYetValid,
            C::NotValidForName | C::NotValidForNameContext { .. } => {
                HandshakeRejection::NameMismatch {
                    detail: cert.to_string(),
                }
            }
            C::BadEncoding => HandshakeRejection::MalformedCertificate,
            C::Revoked => HandshakeRejection::Revoked,
            C::UnknownRevocationStatus
            | C::ExpiredRevocationList
            | C::ExpiredRevocationListContext { .. }
            | C::InvalidOcspResponse => HandshakeRejection::RevocationUnknown,
            C::UnhandledCriticalExtension => HandshakeRejection::UnsupportedCriticalExtension,
            C::BadSignature => HandshakeRejection::BadSignature,
            C::UnsupportedSignatureAlgorithm
            | C::UnsupportedSignatureAlgorithmContext { .. }
            | C::UnsupportedSignatureAlgorithmForPublicKeyContext { .. } => {
                HandshakeRejection::UnsupportedSignatureAlgorithm
            }
            C::InvalidPurpose => HandshakeRejection::InvalidPurpose {
                detail: "wrong extended key usage".to_owned(),
            },
            C::InvalidPurposeContext { .. } => HandshakeRejection::InvalidPurpose {
                detail: cert.to_string(),
            },
            C::ApplicationVerificationFailure => HandshakeRejection::ApplicationVerificationFailure,
            C::Other(other) => match other.0.downcast_ref::<HandshakeRejection>() {
                Some(rejection) => rejection.clone(),
                None => HandshakeRejection::Other(other.to_string()),
            },
            // A variant added by a later rustls.
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
            // After the handshake, a refusal may reach here as text only:
            // h2 keeps an I/O error's kind and message, not the error. With
            // TLS 1.3 that is how a client learns its certificate was
            // refused: rustls's words ("received fatal alert: UnknownCA"),
            // or this crate's once the connection reported it.
            if e.downcast_ref::<std::io::Error>().is_none() {
                let text = e.to_string();
                if let Some(alert) = text.strip_prefix("received fatal alert: ") {
                    return Some(HandshakeRejection::RefusedByPeer {
                        alert: alert_name_from_debug(alert),
                    });
                }
                if let Some((_, rest)) = text.split_once(REFUSED_BY_PEER) {
                    let alert = rest.split(':').next().unwrap_or(rest);
                    return Some(HandshakeRejection::RefusedByPeer {
                        alert: alert.to_owned(),
                    });
                }
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

/// How [`HandshakeRejection::RefusedByPeer`]'s `Display` starts, up to the
/// alert's name: read back by [`HandshakeRejection::find`] from errors
/// that kept only the text.
const REFUSED_BY_PEER: &str = "the peer refused the handshake with the TLS alert ";

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::{AlertDescription, CertificateError as C};

    #[test]
    fn every_label_is_unique_and_every_variant_has_its_own() {
        let mut labels = HandshakeRejection::LABELS.to_vec();
        labels.sort_unstable();
        labels.dedup();
        assert_eq!(labels.len(), HandshakeRejection::LABELS.len());
        assert_eq!(HandshakeRejection::LABELS.last(), Some(&"other"));
    }

    #[test]
    #[allow(deprecated)]
    fn every_certificate_error_of_verification_has_a_named_reason() {
        let cases = [
            (C::BadEncoding, "malformed-certificate"),
            (C::Expired, "expired"),
            (C::NotValidYet, "not-yet-valid"),
            (C::Revoked, "revoked"),
            (
                C::UnhandledCriticalExtension,
                "unsupported-critical-extension",
            ),
            (C::UnknownIssuer, "unknown-ca"),
            (C::UnknownRevocationStatus, "revocation-unknown"),
            (C::ExpiredRevocationList, "revocation-unknown"),
            (C::InvalidOcspResponse, "revocation-unknown"),
            (C::BadSignature, "bad-signature"),
            (
                C::UnsupportedSignatureAlgorithm,
                "unsupported-signature-algorithm",
            ),
            (C::NotValidForName, "name-mismatch"),
            (C::InvalidPurpose, "invalid-purpose"),
            (
                C::ApplicationVerificationFailure,
                "application-verification-failure",
            ),
        ];
        for (error, label) in cases {
            let rejection =
                HandshakeRejection::from_rustls(&rustls::Error::InvalidCertificate(error.clone()));
            assert_eq!(rejection.label(), label, "{error:?}");
            // Says what it is and what to fix, in this crate's words.
            let text = rejection.to_string();
            assert!(!text.contains("TLS handshake failed"), "{error:?}: {text}");
        }
    }

    #[test]
    fn peer_alerts_keep_their_standard_name_and_say_what_to_fix() {
        let cases = [
            (
                AlertDescription::CertificateRequired,
                "certificate_required",
                "client certificate",
            ),
            (
                AlertDescription::UnknownCA,
                "unknown_ca",
                "does not trust the CA",
            ),
            (
                AlertDescription::CertificateExpired,
                "certificate_expired",
                "rotate",
            ),
            (
                AlertDescription::AccessDenied,
                "access_denied",
                "allow-list",
            ),
            (
                AlertDescription::CertificateUnknown,
                "certificate_unknown",
                "allow-list",
            ),
            (AlertDescription::from(200), "alert_200", "peer's logs"),
        ];
        for (alert, name, hint) in cases {
            let rejection = HandshakeRejection::from_rustls(&rustls::Error::AlertReceived(alert));
            assert_eq!(
                rejection,
                HandshakeRejection::RefusedByPeer {
                    alert: name.to_owned()
                }
            );
            assert_eq!(rejection.label(), "refused-by-peer");
            assert!(rejection.to_string().contains(hint), "{rejection}");
        }
        // This crate's words, kept as text only (as h2 keeps I/O errors).
        #[derive(Debug, thiserror::Error)]
        #[error("TLS to users:443 failed: {0}")]
        struct Ours(String);
        let refused = HandshakeRejection::RefusedByPeer {
            alert: "unknown_ca".to_owned(),
        };
        assert!(refused.to_string().starts_with(REFUSED_BY_PEER));
        assert_eq!(
            HandshakeRejection::find(&Ours(refused.to_string())),
            Some(refused)
        );
        // The same alert reported as text only (after a TLS 1.3 handshake).
        #[derive(Debug, thiserror::Error)]
        #[error("received fatal alert: CertificateRequired")]
        struct Text;
        assert_eq!(
            HandshakeRejection::find(&Text),
            Some(HandshakeRejection::RefusedByPeer {
                alert: "certificate_required".to_owned()
            })
        );
    }

    #[test]
    fn protocol_errors_are_named_apart_from_io_failures() {
        let plaintext = rustls::Error::InvalidMessage(rustls::InvalidMessage::InvalidContentType);
        assert_eq!(
            HandshakeRejection::from_rustls(&plaintext).label(),
            "protocol-violation"
        );
        let old = rustls::Error::PeerIncompatible(rustls::PeerIncompatible::Tls12NotOffered);
        assert_eq!(
            HandshakeRejection::from_rustls(&old).label(),
            "incompatible"
        );
        let timeout = HandshakeRejection::HandshakeTimeout {
            timeout: Duration::from_secs(10),
        };
        assert_eq!(timeout.label(), "handshake-timeout");
    }
}
