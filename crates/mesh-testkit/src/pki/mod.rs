//! Certificates made for the tests with rcgen: CAs, and leaves with DNS
//! names, SPIFFE identities and chosen validity periods, written to a
//! temporary directory when a test needs files.
//!
//! [`der`] holds the same certificates as rustls takes them, for peers
//! built with plain rustls.
//!
//! ```
//! use mesh_testkit::pki::{Ca, Leaf};
//!
//! let ca = Ca::new("mesh CA");
//! let users = ca.issue(Leaf::service("users"));
//! assert!(users.cert_pem.starts_with("-----BEGIN CERTIFICATE-----"));
//! let expired = ca.issue(Leaf::service("users").expired());
//! assert_ne!(expired.der, users.der);
//! ```

pub mod der;

use std::path::PathBuf;

use crate::fs::{write_atomically, TempDir};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};

/// A certificate authority: its certificate, and the key it signs with.
pub struct Ca {
    /// Its certificate, PEM.
    pub pem: String,
    params: CertificateParams,
    key: KeyPair,
}

// === impl Ca ===

impl Ca {
    /// A self-signed root CA whose common name is `name`.
    pub fn new(name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, name);
        params.distinguished_name = dn;
        let key = KeyPair::generate().expect("key");
        let pem = params.self_signed(&key).expect("self-signed").pem();
        Ca { pem, params, key }
    }

    /// The CA's private key, PEM (PKCS#8).
    pub fn key_pem(&self) -> String {
        self.key.serialize_pem()
    }

    /// An intermediate CA signed by this one.
    pub fn intermediate(&self, name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, name);
        params.distinguished_name = dn;
        let key = KeyPair::generate().expect("key");
        let issuer = Issuer::from_params(&self.params, &self.key);
        let pem = params.signed_by(&key, &issuer).expect("signed").pem();
        Ca { pem, params, key }
    }

    /// A leaf certificate for `leaf`, signed by this CA, for server and
    /// client authentication both.
    ///
    /// # Panics
    ///
    /// When a name in `leaf` cannot go in a certificate: a DNS name or a
    /// URI that is not ASCII.
    pub fn issue(&self, leaf: Leaf) -> Issued {
        let mut params = CertificateParams::new(leaf.dns.clone())
            .unwrap_or_else(|e| panic!("DNS names {:?} must be ASCII: {e}", leaf.dns));
        for uri in &leaf.uris {
            params.subject_alt_names.push(SanType::URI(
                uri.as_str()
                    .try_into()
                    .unwrap_or_else(|e| panic!("URI {uri:?} must be ASCII: {e}")),
            ));
        }
        for ip in &leaf.ips {
            params.subject_alt_names.push(SanType::IpAddress(*ip));
        }
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, leaf.common_name.as_str());
        params.distinguished_name = dn;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now + leaf.valid_from;
        params.not_after = now + leaf.valid_until;
        let key = KeyPair::generate().expect("key");
        let issuer = Issuer::from_params(&self.params, &self.key);
        let cert = params.signed_by(&key, &issuer).expect("signed");
        Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            der: cert.der().to_vec(),
        }
    }
}

/// What a leaf certificate says.
#[derive(Clone, Debug)]
pub struct Leaf {
    /// The subject's common name.
    pub common_name: String,
    /// DNS names among its subject alternative names.
    pub dns: Vec<String>,
    /// IP addresses among its subject alternative names.
    pub ips: Vec<std::net::IpAddr>,
    /// URIs (SPIFFE IDs) among its subject alternative names.
    pub uris: Vec<String>,
    /// Start of validity, from now (negative: in the past).
    pub valid_from: time::Duration,
    /// End of validity, from now (negative: already expired).
    pub valid_until: time::Duration,
}

// === impl Leaf ===

impl Leaf {
    /// `localhost` and 127.0.0.1, with a SPIFFE ID for `service`, valid
    /// from an hour ago for a day.
    pub fn service(service: &str) -> Leaf {
        Leaf {
            common_name: service.to_owned(),
            dns: vec!["localhost".to_owned()],
            ips: vec![std::net::Ipv4Addr::LOCALHOST.into()],
            uris: vec![format!("spiffe://cluster.local/ns/default/sa/{service}")],
            valid_from: -time::Duration::hours(1),
            valid_until: time::Duration::days(1),
        }
    }

    /// The same leaf, valid two days ago until yesterday.
    pub fn expired(mut self) -> Leaf {
        self.valid_from = -time::Duration::days(2);
        self.valid_until = -time::Duration::days(1);
        self
    }

    /// The same leaf, valid from tomorrow.
    pub fn not_yet_valid(mut self) -> Leaf {
        self.valid_from = time::Duration::days(1);
        self.valid_until = time::Duration::days(2);
        self
    }

    /// The same leaf naming `name` as its only DNS name, and no IP address.
    pub fn dns_only(mut self, name: &str) -> Leaf {
        self.dns = vec![name.to_owned()];
        self.ips.clear();
        self
    }
}

/// A leaf certificate and its key, PEM encoded.
#[derive(Clone, Debug)]
pub struct Issued {
    /// The certificate, PEM.
    pub cert_pem: String,
    /// Its private key, PEM (PKCS#8).
    pub key_pem: String,
    /// The certificate, DER.
    pub der: Vec<u8>,
}

// Certificate files belong with the directory a test writes them to.
impl TempDir {
    /// Writes `prefix.crt`, `prefix.key` and `prefix-ca.crt` (the
    /// certificate of `issued`, its key and `ca_pem`), each atomically, and
    /// returns their paths in that order.
    pub fn write(&self, prefix: &str, issued: &Issued, ca_pem: &str) -> [PathBuf; 3] {
        let paths = [
            self.path(&format!("{prefix}.crt")),
            self.path(&format!("{prefix}.key")),
            self.path(&format!("{prefix}-ca.crt")),
        ];
        write_atomically(&paths[0], &issued.cert_pem);
        write_atomically(&paths[1], &issued.key_pem);
        write_atomically(&paths[2], ca_pem);
        paths
    }
}
