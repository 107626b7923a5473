//! [`TlsConfig`]: mutual TLS from configuration (the design document's
//! `mtls` block), validated with messages that name the value at fault.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::client::ClientTls;
use crate::credentials::Credentials;
use crate::error::TlsError;
use crate::identity::{IdentityPolicy, SpiffeId};
use crate::material::PemSource;
use crate::server::ServerTls;

/// Mutual TLS settings, as read from a file:
///
/// ```
/// let config: mesh_tls::TlsConfig = serde_json::from_str(r#"{
///     "cert_path": "/etc/certs/tls.crt",
///     "key_path": "/etc/certs/tls.key",
///     "ca_path": "/etc/certs/ca.crt",
///     "allowed_identities": ["spiffe://cluster.local/ns/default/sa/api-gateway", "spiffe://cluster.local/*"],
///     "watch_interval": "500ms"
/// }"#)?;
/// let someone: mesh_tls::SpiffeId = "spiffe://cluster.local/ns/x/sa/y".parse()?;
/// assert_eq!(config.identity_policy()?.map(|p| p.admits(&someone)), Some(true));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// Whether mutual TLS is on (`enabled`). Whoever builds the stack reads
    /// it (the `mesh` facade does); [`TlsConfig::credentials`] refuses to
    /// load while it is off, so a disabled block is never half used.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// The certificate (chain), PEM (`certPath`).
    pub cert_path: PathBuf,
    /// The private key, PEM: PKCS#8, RSA or EC (`keyPath`).
    pub key_path: PathBuf,
    /// The CA peers must chain to, PEM (`caPath`).
    pub ca_path: PathBuf,
    /// Whether peers are verified (`verifyPeer`). Only `true` is accepted:
    /// mutual TLS that does not verify the peer authenticates no one.
    #[serde(default = "yes")]
    pub verify_peer: bool,
    /// Workload identities admitted: exact SPIFFE IDs,
    /// `spiffe://trust-domain/*` for a whole trust domain, or `*` for any
    /// identity the CA vouches for. Empty: clients verify servers by name
    /// and servers admit any certificate the CA signed. One list serves
    /// both directions (the peers a service calls and the peers that call
    /// it), as in a mesh where one trust domain is the usual policy; build
    /// [`ClientTls`] and [`ServerTls`] directly for different lists.
    #[serde(default)]
    pub allowed_identities: Vec<String>,
    /// Also trust the system's root certificates (client side).
    #[serde(default)]
    pub trust_system_roots: bool,
    /// How often the files are checked for rotation; `0s` turns the watch
    /// off.
    #[serde(default = "default_watch", with = "humantime_serde")]
    pub watch_interval: Duration,
}

fn yes() -> bool {
    true
}

fn default_watch() -> Duration {
    Duration::from_millis(250)
}

impl TlsConfig {
    /// A configuration for these files with the defaults.
    pub fn new(
        cert_path: impl Into<PathBuf>,
        key_path: impl Into<PathBuf>,
        ca_path: impl Into<PathBuf>,
    ) -> Self {
        TlsConfig {
            enabled: true,
            cert_path: cert_path.into(),
            key_path: key_path.into(),
            ca_path: ca_path.into(),
            verify_peer: true,
            allowed_identities: Vec::new(),
            trust_system_roots: false,
            watch_interval: default_watch(),
        }
    }

    /// Checks every value; the error names the first one at fault.
    pub fn validate(&self) -> Result<(), TlsError> {
        if !self.verify_peer {
            return Err(TlsError::InvalidConfig {
                what: "tls.verify_peer".to_owned(),
                reason: "must be true: mutual TLS without peer verification authenticates no one; \
                         issue the peers' certificates from the configured CA instead"
                    .to_owned(),
            });
        }
        if !self.watch_interval.is_zero() && self.watch_interval < Duration::from_millis(10) {
            return Err(TlsError::InvalidConfig {
                what: "tls.watch_interval".to_owned(),
                reason: format!("{:?} is below 10ms", self.watch_interval),
            });
        }
        self.identity_policy().map(|_| ())
    }

    /// The identity allow-list, `None` when empty.
    pub fn identity_policy(&self) -> Result<Option<IdentityPolicy>, TlsError> {
        if self.allowed_identities.is_empty() {
            return Ok(None);
        }
        let mut policy = IdentityPolicy::new();
        for (i, entry) in self.allowed_identities.iter().enumerate() {
            let what = || format!("tls.allowed_identities[{i}]");
            policy = if entry == "*" {
                IdentityPolicy::any()
            } else if let Some(domain) = entry
                .strip_prefix("spiffe://")
                .and_then(|d| d.strip_suffix("/*"))
            {
                // Validated as the trust domain of a SPIFFE ID.
                let id = format!("spiffe://{domain}")
                    .parse::<SpiffeId>()
                    .map_err(|e| TlsError::InvalidConfig {
                        what: what(),
                        reason: e.to_string(),
                    })?;
                policy.allow_trust_domain(id.trust_domain()).map_err(|e| {
                    TlsError::InvalidConfig {
                        what: what(),
                        reason: e.to_string(),
                    }
                })?
            } else {
                let id = entry
                    .parse::<SpiffeId>()
                    .map_err(|e| TlsError::InvalidConfig {
                        what: what(),
                        reason: e.to_string(),
                    })?;
                policy.allow(id)
            };
        }
        Ok(Some(policy))
    }

    /// Loads the files, and starts watching them if configured (which needs
    /// a tokio runtime: an error otherwise).
    pub fn credentials(&self) -> Result<Credentials, TlsError> {
        if !self.enabled {
            return Err(TlsError::InvalidConfig {
                what: "tls.enabled".to_owned(),
                reason: "mutual TLS is disabled; check `enabled` before loading credentials"
                    .to_owned(),
            });
        }
        self.validate()?;
        let credentials = Credentials::load(PemSource::files(
            &self.cert_path,
            &self.key_path,
            &self.ca_path,
        ))?;
        if !self.watch_interval.is_zero() {
            credentials.watch(self.watch_interval)?;
        }
        Ok(credentials)
    }

    /// The client side: servers verified by identity when an allow-list is
    /// set, else by name.
    pub fn client(&self, credentials: Credentials) -> Result<ClientTls, TlsError> {
        let builder = ClientTls::builder(credentials).trust_system_roots(self.trust_system_roots);
        match self.identity_policy()? {
            Some(policy) => builder.verify_identity(policy),
            None => builder,
        }
        .build()
    }

    /// The server side: clients admitted by the allow-list when set, else
    /// any certificate the CA signed.
    pub fn server(&self, credentials: Credentials) -> Result<ServerTls, TlsError> {
        let builder = ServerTls::builder(credentials);
        match self.identity_policy()? {
            Some(policy) => builder.allow(policy),
            None => builder,
        }
        .build()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Result<TlsConfig, serde_json::Error> {
        serde_json::from_str(json)
    }

    #[test]
    fn defaults_and_durations() {
        let config = parse(r#"{"cert_path": "c", "key_path": "k", "ca_path": "a"}"#).unwrap();
        assert_eq!(config, TlsConfig::new("c", "k", "a"));
        let config =
            parse(r#"{"cert_path": "c", "key_path": "k", "ca_path": "a", "watch_interval": "2s"}"#)
                .unwrap();
        assert_eq!(config.watch_interval, Duration::from_secs(2));
    }

    #[test]
    fn unknown_keys_are_refused_by_name() {
        let err = parse(r#"{"cert_path": "c", "key_path": "k", "ca_path": "a", "verify": true}"#)
            .unwrap_err();
        assert!(err.to_string().contains("verify"), "{err}");
    }

    #[test]
    fn bad_values_are_named() {
        let mut config = TlsConfig::new("c", "k", "a");
        config.verify_peer = false;
        assert!(config
            .validate()
            .unwrap_err()
            .to_string()
            .contains("tls.verify_peer"));
        let mut config = TlsConfig::new("c", "k", "a");
        config.allowed_identities = vec!["spiffe://ok.local/*".into(), "http://nope".into()];
        let err = config.validate().unwrap_err().to_string();
        assert!(err.contains("tls.allowed_identities[1]"), "{err}");
        config.allowed_identities = vec!["spiffe://Bad Domain/*".into()];
        let err = config.validate().unwrap_err().to_string();
        assert!(err.contains("tls.allowed_identities[0]"), "{err}");
        let mut config = TlsConfig::new("c", "k", "a");
        config.watch_interval = Duration::from_millis(1);
        assert!(config
            .validate()
            .unwrap_err()
            .to_string()
            .contains("watch_interval"));
    }
}
