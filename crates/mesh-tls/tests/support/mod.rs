//! What several of this crate's tests share.

use mesh_testkit::pki::{Ca, Issued};
use mesh_tls::{Credentials, PemSource};

/// `issued`'s certificate and key, trusting `ca`, loaded from memory.
pub fn credentials(ca: &Ca, issued: &Issued) -> Credentials {
    Credentials::load(PemSource::memory(
        issued.cert_pem.clone(),
        issued.key_pem.clone(),
        ca.pem.clone(),
    ))
    .expect("credentials")
}
