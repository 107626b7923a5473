//! Loading certificates, keys and CAs from PEM, and the checked bundle
//! ([`Material`]) handshakes use.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio_rustls::rustls::crypto::CryptoProvider;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::server::danger::ClientCertVerifier;
use tokio_rustls::rustls::server::WebPkiClientVerifier;
use tokio_rustls::rustls::sign::CertifiedKey;
use tokio_rustls::rustls::{self, RootCertStore};

use crate::error::TlsError;
use crate::identity::CertFacts;

/// Where TLS material comes from: files (the design document's `certPath`,
/// `keyPath`, `caPath`), re-read on rotation, or PEM held in memory.
///
/// `Debug` shows paths, or the sizes of in-memory PEM, never its text: an
/// in-memory source holds a private key.
#[derive(Clone, PartialEq, Eq)]
pub enum PemSource {
    /// PEM files. The certificate file may hold a chain (leaf first).
    Files {
        /// The certificate (chain).
        cert: PathBuf,
        /// The private key: PKCS#8, PKCS#1 (RSA) or SEC1 (EC).
        key: PathBuf,
        /// The CA certificate(s) peers must chain to.
        ca: PathBuf,
    },
    /// PEM text.
    Memory {
        /// The certificate (chain).
        cert: String,
        /// The private key.
        key: String,
        /// The CA certificate(s).
        ca: String,
    },
}

impl PemSource {
    /// PEM files.
    pub fn files(
        cert: impl Into<PathBuf>,
        key: impl Into<PathBuf>,
        ca: impl Into<PathBuf>,
    ) -> Self {
        PemSource::Files {
            cert: cert.into(),
            key: key.into(),
            ca: ca.into(),
        }
    }

    /// PEM text.
    pub fn memory(cert: impl Into<String>, key: impl Into<String>, ca: impl Into<String>) -> Self {
        PemSource::Memory {
            cert: cert.into(),
            key: key.into(),
            ca: ca.into(),
        }
    }

    /// The files to watch for rotation (none for memory).
    pub(crate) fn paths(&self) -> Vec<&Path> {
        match self {
            PemSource::Files { cert, key, ca } => vec![cert, key, ca],
            PemSource::Memory { .. } => Vec::new(),
        }
    }

    fn read(&self) -> Result<[(String, Vec<u8>); 3], TlsError> {
        match self {
            PemSource::Files { cert, key, ca } => Ok([read(cert)?, read(key)?, read(ca)?]),
            PemSource::Memory { cert, key, ca } => Ok([
                (
                    "the certificate (in memory)".to_owned(),
                    cert.clone().into_bytes(),
                ),
                (
                    "the private key (in memory)".to_owned(),
                    key.clone().into_bytes(),
                ),
                ("the CA (in memory)".to_owned(), ca.clone().into_bytes()),
            ]),
        }
    }
}

impl std::fmt::Debug for PemSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        /// Stands in for PEM text: its size only.
        struct Pem(usize);
        impl std::fmt::Debug for Pem {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                write!(f, "<{} bytes of PEM>", self.0)
            }
        }
        match self {
            PemSource::Files { cert, key, ca } => f
                .debug_struct("Files")
                .field("cert", cert)
                .field("key", key)
                .field("ca", ca)
                .finish(),
            PemSource::Memory { cert, key, ca } => f
                .debug_struct("Memory")
                .field("cert", &Pem(cert.len()))
                .field("key", &Pem(key.len()))
                .field("ca", &Pem(ca.len()))
                .finish(),
        }
    }
}

fn read(path: &Path) -> Result<(String, Vec<u8>), TlsError> {
    let what = path.display().to_string();
    match std::fs::read(path) {
        Ok(bytes) => Ok((what, bytes)),
        Err(source) => Err(TlsError::Unreadable { what, source }),
    }
}

/// A loaded and checked set of TLS material: the certificate chain with
/// its matching key, the trusted CAs, and what the certificate says.
///
/// `Debug` shows the identity, the expiry and the size of the chain, never
/// the key.
#[derive(Clone)]
pub struct Material {
    pub(crate) certified: Arc<CertifiedKey>,
    pub(crate) roots: Arc<RootCertStore>,
    pub(crate) client_verifier: Arc<dyn ClientCertVerifier>,
    identity: Option<String>,
    not_after_unix: i64,
}

impl Material {
    /// Loads and checks material: the certificate parses and is within its
    /// validity period, the key is the certificate's, the CA file holds at
    /// least one usable CA.
    pub fn load(source: &PemSource, provider: &Arc<CryptoProvider>) -> Result<Self, TlsError> {
        let [(cert_what, cert_pem), (key_what, key_pem), (ca_what, ca_pem)] = source.read()?;
        let chain = certificates(&cert_what, &cert_pem)?;
        let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| match e {
            _ if key_pem.windows(9).any(|w| w == b"ENCRYPTED") => TlsError::UnusableKey {
                what: key_what.clone(),
                detail: "the key is encrypted; give it unencrypted (as Kubernetes secrets hold it)"
                    .to_owned(),
            },
            rustls::pki_types::pem::Error::NoItemsFound => TlsError::NoPrivateKey {
                what: key_what.clone(),
            },
            other => TlsError::MalformedPem {
                what: key_what.clone(),
                detail: other.to_string(),
            },
        })?;
        let facts = CertFacts::parse(&chain[0]).map_err(|detail| TlsError::BadCertificate {
            what: cert_what.clone(),
            detail,
        })?;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        if facts.not_after_unix < now {
            return Err(TlsError::BadCertificate {
                what: cert_what,
                detail: format!("expired at {} (Unix time)", facts.not_after_unix),
            });
        }
        // A certificate issued a moment ago by a CA whose clock runs a
        // little ahead must not be refused for good.
        if facts.not_before_unix > now + CLOCK_SKEW_SECS {
            return Err(TlsError::NotYetValid {
                what: cert_what,
                not_before_unix: facts.not_before_unix,
            });
        }
        let signing =
            provider
                .key_provider
                .load_private_key(key)
                .map_err(|e| TlsError::UnusableKey {
                    what: key_what.clone(),
                    detail: e.to_string(),
                })?;
        let certified = CertifiedKey::new(chain, signing);
        match certified.keys_match() {
            Ok(()) => {}
            Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {}
            Err(_) => {
                return Err(TlsError::KeyMismatch {
                    cert: cert_what,
                    key: key_what,
                })
            }
        }
        let mut roots = RootCertStore::empty();
        let cas = certificates(&ca_what, &ca_pem).map_err(|e| match e {
            TlsError::NoCertificate { what } => TlsError::InvalidCa {
                what,
                detail: "no certificate found".to_owned(),
            },
            other => other,
        })?;
        for ca in cas {
            roots.add(ca).map_err(|e| TlsError::InvalidCa {
                what: ca_what.clone(),
                detail: e.to_string(),
            })?;
        }
        let roots = Arc::new(roots);
        warn_if_not_issued_by(&certified, &roots, &cert_what, &ca_what, provider);
        let client_verifier =
            WebPkiClientVerifier::builder_with_provider(Arc::clone(&roots), Arc::clone(provider))
                .build()
                .map_err(|e| TlsError::InvalidCa {
                    what: ca_what,
                    detail: e.to_string(),
                })?;
        Ok(Material {
            certified: Arc::new(certified),
            roots,
            client_verifier,
            identity: facts.identity(),
            not_after_unix: facts.not_after_unix,
        })
    }

    /// The certificate's workload identity (SPIFFE ID), else its first DNS
    /// name.
    pub fn identity(&self) -> Option<&str> {
        self.identity.as_deref()
    }

    /// When the certificate expires, in seconds since the Unix epoch.
    pub fn not_after_unix(&self) -> i64 {
        self.not_after_unix
    }

    /// The certificate chain, leaf first.
    pub fn chain(&self) -> &[CertificateDer<'static>] {
        &self.certified.cert
    }
}

impl std::fmt::Debug for Material {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Material")
            .field("identity", &self.identity)
            .field("not_after_unix", &self.not_after_unix)
            .field("chain_len", &self.certified.cert.len())
            .field("roots", &self.roots.len())
            .finish_non_exhaustive()
    }
}

/// Peers that trust only this CA will refuse a certificate it did not
/// issue; legitimate during a CA migration (a bundle on the peers' side), so
/// a warning rather than a refusal.
fn warn_if_not_issued_by(
    certified: &CertifiedKey,
    roots: &RootCertStore,
    cert_what: &str,
    ca_what: &str,
    provider: &CryptoProvider,
) {
    let Some((leaf, intermediates)) = certified.cert.split_first() else {
        return;
    };
    let Ok(parsed) = rustls::server::ParsedCertificate::try_from(leaf) else {
        return;
    };
    let verdict = rustls::client::verify_server_cert_signed_by_trust_anchor(
        &parsed,
        roots,
        intermediates,
        rustls::pki_types::UnixTime::now(),
        provider.signature_verification_algorithms.all,
    );
    if let Err(error) = verdict {
        tracing::warn!(
            certificate = cert_what,
            ca = ca_what,
            %error,
            "this certificate does not chain to the configured CA: peers trusting only that CA will refuse it"
        );
    }
}

/// How far in the future a certificate's validity may start and still be
/// loaded: clocks of issuers and nodes differ.
const CLOCK_SKEW_SECS: i64 = 300;

fn certificates(what: &str, pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let chain = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::MalformedPem {
            what: what.to_owned(),
            detail: e.to_string(),
        })?;
    if chain.is_empty() {
        return Err(TlsError::NoCertificate {
            what: what.to_owned(),
        });
    }
    Ok(chain)
}
