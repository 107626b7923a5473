//! The rustls hooks that read the current material at each handshake:
//! certificate resolvers for this end, verifiers for the peer's.

use std::sync::Arc;

use tokio_rustls::rustls::client::danger::{
    HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier,
};
use tokio_rustls::rustls::client::{
    verify_server_cert_signed_by_trust_anchor, verify_server_name, ResolvesClientCert,
};
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use tokio_rustls::rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use tokio_rustls::rustls::server::{ClientHello, ParsedCertificate, ResolvesServerCert};
use tokio_rustls::rustls::sign::CertifiedKey;
use tokio_rustls::rustls::{
    self, DigitallySignedStruct, DistinguishedName, RootCertStore, SignatureScheme,
};

use crate::credentials::Credentials;
use crate::error::HandshakeRejection;
use crate::identity::{CertFacts, IdentityPolicy, SpiffeId};

/// The signature algorithms of the credentials' crypto provider: handshake
/// signatures are checked the same way on both sides.
fn algorithms(credentials: &Credentials) -> &rustls::crypto::WebPkiSupportedAlgorithms {
    &credentials.provider().signature_verification_algorithms
}

/// Presents the current certificate (client and server side).
#[derive(Debug)]
pub(crate) struct CurrentCert(pub(crate) Credentials);

impl ResolvesClientCert for CurrentCert {
    fn resolve(&self, _hints: &[&[u8]], _schemes: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        Some(Arc::clone(&self.0.current().certified))
    }

    fn has_certs(&self) -> bool {
        true
    }
}

impl ResolvesServerCert for CurrentCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(Arc::clone(&self.0.current().certified))
    }
}

/// How a client checks the server it connected to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PeerVerification {
    /// The certificate must be valid for the host of the URI (DNS name or
    /// IP address), as browsers check.
    ServerName,
    /// The certificate must carry a SPIFFE identity the policy admits; the
    /// host name is not checked (mesh certificates name workloads, not
    /// hosts).
    Identity(IdentityPolicy),
    /// The certificate must carry exactly this SPIFFE identity: the one
    /// the destination service is known by. Any other identity, however
    /// valid, is refused as [`HandshakeRejection::UnexpectedIdentity`];
    /// the host name is not checked (the balancer connects to endpoint
    /// addresses, and mesh certificates name workloads, not hosts).
    ///
    /// [`HandshakeRejection::UnexpectedIdentity`]: crate::HandshakeRejection::UnexpectedIdentity
    ExpectedIdentity(SpiffeId),
}

/// The client's check of the server: chains to the current CA (and the
/// system roots when configured), then the name or the identity.
#[derive(Debug)]
pub(crate) struct ServerVerifier {
    pub(crate) credentials: Credentials,
    pub(crate) system_roots: Option<Arc<RootCertStore>>,
    pub(crate) verification: PeerVerification,
}

impl ServerCertVerifier for ServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        _ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let parsed = ParsedCertificate::try_from(end_entity)?;
        let algorithms = self
            .credentials
            .provider()
            .signature_verification_algorithms;
        let material = self.credentials.current();
        let mut chained = verify_server_cert_signed_by_trust_anchor(
            &parsed,
            &material.roots,
            intermediates,
            now,
            algorithms.all,
        );
        // The system roots (name verification only) are a fallback for an
        // unknown issuer; any other failure (expired...) keeps its cause.
        let unknown_issuer = matches!(
            chained,
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::UnknownIssuer
            ))
        );
        if let (true, Some(system)) = (unknown_issuer, &self.system_roots) {
            chained = verify_server_cert_signed_by_trust_anchor(
                &parsed,
                system,
                intermediates,
                now,
                algorithms.all,
            );
        }
        chained?;
        match &self.verification {
            PeerVerification::ServerName => verify_server_name(&parsed, server_name)?,
            PeerVerification::Identity(policy) => {
                policy.check(end_entity).map_err(|r| r.into_rustls())?
            }
            PeerVerification::ExpectedIdentity(expected) => {
                check_expected(expected, end_entity).map_err(|r| r.into_rustls())?
            }
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, algorithms(&self.credentials))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, algorithms(&self.credentials))
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        algorithms(&self.credentials).supported_schemes()
    }
}

/// The peer's certificate must carry exactly one SPIFFE ID, and it must be
/// `expected`.
fn check_expected(
    expected: &SpiffeId,
    cert: &CertificateDer<'_>,
) -> Result<(), HandshakeRejection> {
    let facts = CertFacts::parse(cert).map_err(HandshakeRejection::Other)?;
    let id = facts.spiffe_id()?.ok_or(HandshakeRejection::NoIdentity)?;
    if id == *expected {
        return Ok(());
    }
    Err(HandshakeRejection::UnexpectedIdentity {
        identity: id.to_string(),
        expected: expected.to_string(),
    })
}

/// The server's check of a client: a certificate is required, it must
/// chain to the current CA, and, with a policy, carry an admitted identity.
#[derive(Debug)]
pub(crate) struct ClientVerifier {
    pub(crate) credentials: Credentials,
    pub(crate) policy: Option<IdentityPolicy>,
}

impl ClientCertVerifier for ClientVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        // Hints are optional; the current CA's live behind a swap and
        // cannot be lent out from here.
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verified = self
            .credentials
            .current()
            .client_verifier
            .verify_client_cert(end_entity, intermediates, now)?;
        if let Some(policy) = &self.policy {
            policy.check(end_entity).map_err(|r| r.into_rustls())?;
        }
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, algorithms(&self.credentials))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, algorithms(&self.credentials))
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        algorithms(&self.credentials).supported_schemes()
    }
}
