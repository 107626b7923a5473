//! Workload identities: SPIFFE IDs in certificates, the allow-list peers
//! are checked against, and the verified identity handed to handlers.

use std::fmt;
use std::sync::Arc;

use mesh_core::ConfigError;
use tokio_rustls::rustls::pki_types::CertificateDer;

use crate::error::HandshakeRejection;

/// A SPIFFE ID (`spiffe://trust-domain/path`), as carried in a
/// certificate's URI SAN: a workload identity such as
/// `spiffe://cluster.local/ns/default/sa/api-service`.
///
/// ```
/// use mesh_tls::SpiffeId;
/// let id: SpiffeId = "spiffe://cluster.local/ns/default/sa/api".parse()?;
/// assert_eq!(id.trust_domain(), "cluster.local");
/// assert_eq!(id.path(), "/ns/default/sa/api");
/// let err = "https://cluster.local/x".parse::<SpiffeId>().unwrap_err();
/// assert_eq!(err.to_string(), r#""https://cluster.local/x" is not a SPIFFE ID: must start with spiffe://"#);
/// assert_eq!(err.reason(), "must start with spiffe://");
/// # Ok::<(), mesh_tls::InvalidSpiffeId>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SpiffeId {
    uri: Arc<str>,
    domain_end: usize,
}

impl SpiffeId {
    /// The trust domain (`cluster.local`).
    pub fn trust_domain(&self) -> &str {
        &self.uri["spiffe://".len()..self.domain_end]
    }

    /// The path (`/ns/default/sa/api`), empty for the trust domain itself.
    pub fn path(&self) -> &str {
        &self.uri[self.domain_end..]
    }

    /// The whole URI.
    pub fn as_str(&self) -> &str {
        &self.uri
    }
}

/// A string refused as a [`SpiffeId`]: which, and why.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{id:?} is not a SPIFFE ID: {reason}")]
pub struct InvalidSpiffeId {
    id: String,
    reason: &'static str,
}

// === impl InvalidSpiffeId ===

impl InvalidSpiffeId {
    /// The string refused.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Why, without the string: for a caller that names the configuration
    /// key it came from instead.
    pub fn reason(&self) -> &str {
        self.reason
    }
}

impl std::str::FromStr for SpiffeId {
    type Err = InvalidSpiffeId;

    /// Parses per the SPIFFE ID specification: scheme `spiffe`, a lower
    /// case trust domain of letters, digits, `.`, `-` and `_`, and a path
    /// of non-empty segments other than `.` and `..`, with no query,
    /// fragment, port or user info.
    fn from_str(s: &str) -> Result<Self, InvalidSpiffeId> {
        let invalid = |reason: &'static str| InvalidSpiffeId {
            id: s.to_owned(),
            reason,
        };
        let rest = s
            .strip_prefix("spiffe://")
            .ok_or_else(|| invalid("must start with spiffe://"))?;
        if s.len() > 2048 {
            return Err(invalid("longer than 2048 bytes"));
        }
        let (domain, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
        if domain.is_empty() {
            return Err(invalid("the trust domain is empty"));
        }
        if domain.len() > 255 {
            return Err(invalid("the trust domain is longer than 255 bytes"));
        }
        if !domain
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
        {
            return Err(invalid(
                "the trust domain may hold only lower case letters, digits, '.', '-' and '_'",
            ));
        }
        if !path.is_empty() {
            for segment in path[1..].split('/') {
                if segment.is_empty() || segment == "." || segment == ".." {
                    return Err(invalid("path segments must be non-empty and not . or .."));
                }
                if !segment
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
                {
                    return Err(invalid(
                        "path segments may hold only letters, digits, '.', '-' and '_'",
                    ));
                }
            }
        }
        Ok(SpiffeId {
            uri: Arc::from(s),
            domain_end: "spiffe://".len() + domain.len(),
        })
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.uri)
    }
}

/// Which peer identities are accepted (the design document's
/// `verifyPeer` with workload identities): exact SPIFFE IDs, whole trust
/// domains, or both. An empty policy admits no one; use
/// [`IdentityPolicy::any`] to accept any identity the CA vouches for.
///
/// ```
/// use mesh_tls::IdentityPolicy;
/// let policy = IdentityPolicy::new()
///     .allow("spiffe://cluster.local/ns/default/sa/api-service".parse()?)
///     .allow_trust_domain("staging.local")?;
/// assert!(IdentityPolicy::new().allow_trust_domain("Staging.Local").is_err());
/// assert!(policy.admits(&"spiffe://staging.local/ns/x/sa/y".parse()?));
/// assert!(!policy.admits(&"spiffe://cluster.local/ns/default/sa/other".parse()?));
/// # Ok::<(), mesh_core::BoxError>(())
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IdentityPolicy {
    ids: Vec<SpiffeId>,
    domains: Vec<String>,
    any: bool,
}

impl IdentityPolicy {
    /// A policy that admits no one yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Admits any SPIFFE identity (the peer must still carry one).
    pub fn any() -> Self {
        IdentityPolicy {
            any: true,
            ..Self::default()
        }
    }

    /// Admits exactly `id`.
    pub fn allow(mut self, id: SpiffeId) -> Self {
        self.ids.push(id);
        self
    }

    /// Admits every identity of `trust_domain` (`cluster.local`), which
    /// must be a valid SPIFFE trust domain (lower case letters, digits,
    /// `.`, `-`, `_`): a malformed one would silently match no one.
    pub fn allow_trust_domain(mut self, trust_domain: &str) -> Result<Self, ConfigError> {
        let key = || format!("trust domain {trust_domain:?}");
        let id: SpiffeId = format!("spiffe://{trust_domain}")
            .parse()
            .map_err(|e: InvalidSpiffeId| ConfigError::new(key(), e.reason()))?;
        if !id.path().is_empty() {
            return Err(ConfigError::new(key(), "a trust domain has no path"));
        }
        self.domains.push(id.trust_domain().to_owned());
        Ok(self)
    }

    /// Whether `id` is admitted.
    pub fn admits(&self, id: &SpiffeId) -> bool {
        self.any || self.ids.contains(id) || self.domains.iter().any(|d| d == id.trust_domain())
    }

    /// Checks a peer's certificate: it must carry exactly one SPIFFE ID
    /// (as an X.509-SVID does), and the policy must admit it.
    pub(crate) fn check(&self, cert: &CertificateDer<'_>) -> Result<(), HandshakeRejection> {
        let facts = CertFacts::parse(cert).map_err(HandshakeRejection::Other)?;
        let id = facts.spiffe_id()?.ok_or(HandshakeRejection::NoIdentity)?;
        if self.admits(&id) {
            return Ok(());
        }
        Err(HandshakeRejection::IdentityNotAllowed {
            identity: id.to_string(),
            allowed: self.describe(),
        })
    }

    fn describe(&self) -> String {
        if self.any {
            return "any SPIFFE identity".to_owned();
        }
        let mut parts: Vec<String> = self.ids.iter().map(|i| i.to_string()).collect();
        parts.extend(self.domains.iter().map(|d| format!("spiffe://{d}/*")));
        match parts.is_empty() {
            true => "no one".to_owned(),
            false => parts.join(", "),
        }
    }
}

/// The verified identity of the peer at the other end of a connection,
/// inserted into each request's extensions by [`crate::ServerTls::serve`].
///
/// ```
/// # fn handler(req: http::Request<()>) {
/// use mesh_tls::PeerIdentity;
/// if let Some(peer) = req.extensions().get::<PeerIdentity>() {
///     tracing::info!(identity = ?peer.spiffe_id(), "call from");
/// }
/// # }
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerIdentity(Arc<PeerFacts>);

#[derive(Debug, PartialEq, Eq)]
struct PeerFacts {
    spiffe: Option<SpiffeId>,
    dns_names: Vec<String>,
    subject: String,
    not_after_unix: i64,
}

impl PeerIdentity {
    pub(crate) fn from_cert(cert: &CertificateDer<'_>) -> Option<Self> {
        let facts = CertFacts::parse(cert).ok()?;
        Some(PeerIdentity(Arc::new(PeerFacts {
            // Ambiguous (several URI SANs): no identity rather than a
            // guess, so handlers never authorise by the wrong one.
            spiffe: facts.spiffe_id().ok().flatten(),
            dns_names: facts.dns_names,
            subject: facts.subject,
            not_after_unix: facts.not_after_unix,
        })))
    }

    /// The peer's SPIFFE ID, if its certificate carries one.
    pub fn spiffe_id(&self) -> Option<&SpiffeId> {
        self.0.spiffe.as_ref()
    }

    /// The DNS names of the peer's certificate.
    pub fn dns_names(&self) -> &[String] {
        &self.0.dns_names
    }

    /// The subject distinguished name, as text.
    pub fn subject(&self) -> &str {
        &self.0.subject
    }

    /// When the peer's certificate expires, in seconds since the Unix epoch.
    pub fn not_after_unix(&self) -> i64 {
        self.0.not_after_unix
    }
}

/// What this crate reads from a certificate.
#[derive(Debug)]
pub(crate) struct CertFacts {
    pub(crate) uris: Vec<String>,
    pub(crate) dns_names: Vec<String>,
    pub(crate) subject: String,
    pub(crate) not_before_unix: i64,
    pub(crate) not_after_unix: i64,
}

impl CertFacts {
    pub(crate) fn parse(cert: &CertificateDer<'_>) -> Result<Self, String> {
        use x509_parser::extensions::GeneralName;
        let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref())
            .map_err(|e| format!("unparsable certificate: {e}"))?;
        let mut uris = Vec::new();
        let mut dns_names = Vec::new();
        if let Ok(Some(san)) = parsed.subject_alternative_name() {
            for name in &san.value.general_names {
                match name {
                    GeneralName::URI(uri) => uris.push((*uri).to_owned()),
                    GeneralName::DNSName(dns) => dns_names.push((*dns).to_owned()),
                    _ => {}
                }
            }
        }
        Ok(CertFacts {
            uris,
            dns_names,
            subject: parsed.subject().to_string(),
            not_before_unix: parsed.validity().not_before.timestamp(),
            not_after_unix: parsed.validity().not_after.timestamp(),
        })
    }

    /// The certificate's SPIFFE ID: `None` without URI SANs, an error with
    /// several (an X.509-SVID has exactly one) or one that is not a valid
    /// SPIFFE ID.
    pub(crate) fn spiffe_id(&self) -> Result<Option<SpiffeId>, HandshakeRejection> {
        match self.uris.as_slice() {
            [] => Ok(None),
            [uri] => uri
                .parse()
                .map(Some)
                .map_err(|_| HandshakeRejection::NoIdentity),
            several => Err(HandshakeRejection::AmbiguousIdentity {
                uris: several.join(", "),
            }),
        }
    }

    /// The identity to report for this certificate: its SPIFFE ID, else its
    /// first DNS name.
    pub(crate) fn identity(&self) -> Option<String> {
        match self.spiffe_id() {
            Ok(Some(id)) => Some(id.to_string()),
            _ => self.dns_names.first().cloned(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spiffe_ids_follow_the_specification() {
        for good in [
            "spiffe://cluster.local",
            "spiffe://cluster.local/ns/default/sa/api-service",
            "spiffe://a_b.c-d/x.y",
        ] {
            assert!(good.parse::<SpiffeId>().is_ok(), "{good}");
        }
        for bad in [
            "spiffe://",
            "spiffe:///ns",
            "spiffe://Cluster.local/x",
            "spiffe://cluster.local/ns//x",
            "spiffe://cluster.local/ns/../x",
            "spiffe://cluster.local/x?y",
            "spiffe://cluster.local:8443/x",
            "spiffe://user@cluster.local/x",
            "https://cluster.local/x",
            "spiffe://cluster.local/",
        ] {
            assert!(bad.parse::<SpiffeId>().is_err(), "{bad}");
        }
    }

    #[test]
    fn an_empty_policy_admits_no_one_and_says_so() {
        let id: SpiffeId = "spiffe://cluster.local/ns/a/sa/b".parse().unwrap();
        assert!(!IdentityPolicy::new().admits(&id));
        assert!(IdentityPolicy::any().admits(&id));
        assert_eq!(IdentityPolicy::new().describe(), "no one");
    }
}
