//! Certificates made for the tests with rcgen: CAs, and leaves with DNS
//! names, SPIFFE identities and chosen validity periods, written to a
//! temporary directory when a test needs files.

#![allow(dead_code)]

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};

/// A certificate authority.
pub struct Ca {
    pub pem: String,
    params: CertificateParams,
    key: KeyPair,
}

impl Ca {
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

    /// A leaf certificate for `leaf`.
    pub fn issue(&self, leaf: Leaf) -> Issued {
        let mut params = CertificateParams::new(leaf.dns.clone()).expect("params");
        for uri in &leaf.uris {
            params
                .subject_alt_names
                .push(SanType::URI(uri.as_str().try_into().expect("uri")));
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
#[derive(Clone)]
pub struct Leaf {
    pub common_name: String,
    pub dns: Vec<String>,
    pub ips: Vec<std::net::IpAddr>,
    pub uris: Vec<String>,
    pub valid_from: time::Duration,
    pub valid_until: time::Duration,
}

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

    pub fn expired(mut self) -> Leaf {
        self.valid_from = -time::Duration::days(2);
        self.valid_until = -time::Duration::days(1);
        self
    }

    pub fn not_yet_valid(mut self) -> Leaf {
        self.valid_from = time::Duration::days(1);
        self.valid_until = time::Duration::days(2);
        self
    }

    pub fn dns_only(mut self, name: &str) -> Leaf {
        self.dns = vec![name.to_owned()];
        self.ips.clear();
        self
    }
}

/// A leaf certificate and its key, PEM encoded.
pub struct Issued {
    pub cert_pem: String,
    pub key_pem: String,
    pub der: Vec<u8>,
}

/// A temporary directory removed when dropped.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("mesh-tls-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("dir");
        TempDir(dir)
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }

    /// Writes `cert`, `key` and `ca` files and returns their paths.
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

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Writes to a temporary file and renames it over `path`.
pub fn write_atomically(path: &Path, contents: &str) {
    let tmp = path.with_extension("tmp-write");
    std::fs::write(&tmp, contents).expect("write");
    std::fs::rename(&tmp, path).expect("rename");
}
