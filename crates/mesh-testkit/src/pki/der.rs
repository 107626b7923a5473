//! The test certificates as rustls wants them, for peers built with plain
//! rustls (the bad peers of the rejection matrix, the benchmark's anchor).
//!
//! The rustls here is the one `mesh_tls::rustls` re-exports (both come
//! through tokio-rustls), so these values go straight into its
//! configurations.

use std::sync::Arc;

use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::{self, RootCertStore};

use super::{Ca, Issued};

/// rustls's ring provider.
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The certificate chain of `issued`.
pub fn chain(issued: &Issued) -> Vec<CertificateDer<'static>> {
    CertificateDer::pem_slice_iter(issued.cert_pem.as_bytes())
        .collect::<Result<_, _>>()
        .expect("chain")
}

/// The private key of `issued`.
pub fn key(issued: &Issued) -> PrivateKeyDer<'static> {
    PrivateKeyDer::from_pem_slice(issued.key_pem.as_bytes()).expect("key")
}

/// A root store trusting `ca`.
pub fn roots(ca: &Ca) -> Arc<RootCertStore> {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca.pem.as_bytes()) {
        roots.add(cert.expect("ca")).expect("add");
    }
    Arc::new(roots)
}
