//! [`TlsConfig`]: mutual TLS from configuration (the design document's
//! `mtls` block), validated with messages that name the value at fault.

use std::path::PathBuf;
use std::time::Duration;

use mesh_core::ConfigError;
use serde::{Deserialize, Serialize};

use crate::client::{ClientTls, ClientTlsBuilder};
use crate::credentials::Credentials;
use crate::error::TlsError;
use crate::identity::{IdentityPolicy, SpiffeId};
use crate::material::PemSource;
use crate::server::ServerTls;
use crate::template;

/// Mutual TLS settings, as read from a file:
///
/// ```
/// let config: mesh_tls::TlsConfig = serde_json::from_str(r#"{
///     "cert_path": "/etc/certs/tls.crt",
///     "key_path": "/etc/certs/tls.key",
///     "ca_path": "/etc/certs/ca.crt",
///     "peer_identity": "spiffe://cluster.local/ns/default/sa/{service}",
///     "allowed_callers": ["spiffe://cluster.local/ns/default/sa/api-gateway"],
///     "watch_interval": "500ms"
/// }"#)?;
/// config.validate()?;
/// // The identity the `users` service must present when called.
/// let users = config.peer_identity_for("users")?.expect("a template is set");
/// assert_eq!(users.as_str(), "spiffe://cluster.local/ns/default/sa/users");
/// // The callers this service's server admits.
/// let gateway: mesh_tls::SpiffeId = "spiffe://cluster.local/ns/default/sa/api-gateway".parse()?;
/// assert_eq!(config.caller_policy()?.map(|p| p.admits(&gateway)), Some(true));
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
    /// The server side: the workload identities admitted as callers. Exact
    /// SPIFFE IDs, `spiffe://trust-domain/*` for a whole trust domain, or
    /// `*` for any identity the CA vouches for. Empty: any certificate the
    /// CA signed is admitted.
    #[serde(default)]
    pub allowed_callers: Vec<String>,
    /// The client side: the SPIFFE ID every destination service must
    /// present, as a template in which `{service}` stands for the name of
    /// the service being called:
    /// `spiffe://cluster.local/ns/default/sa/{service}` (the Kubernetes
    /// convention, with service accounts named after their services) or
    /// `spiffe://dc1.consul/ns/default/dc/dc1/svc/{service}` (Consul's).
    /// A server presenting any other identity, however valid its
    /// certificate, is refused at the handshake. Unset: servers are
    /// verified by host name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer_identity: Option<String>,
    /// Also trust the system's root certificates (client side, with name
    /// verification only).
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
            allowed_callers: Vec::new(),
            peer_identity: None,
            trust_system_roots: false,
            watch_interval: default_watch(),
        }
    }

    /// Checks every value without reading any file; the error names the
    /// first one at fault (`tls.verify_peer`, `tls.allowed_callers[2]`,
    /// `tls.peer_identity`...). A configuration read as part of a larger
    /// one can be relabelled with [`ConfigError::within`].
    ///
    /// ```
    /// let mut config = mesh_tls::TlsConfig::new("tls.crt", "tls.key", "ca.crt");
    /// config.allowed_callers = vec!["spiffe://cluster.local/*".into(), "http://nope".into()];
    /// let err = config.validate().unwrap_err();
    /// assert_eq!(err.key(), "tls.allowed_callers[1]");
    /// assert_eq!(
    ///     err.to_string(),
    ///     r#"invalid configuration: tls.allowed_callers[1]: "http://nope": must start with spiffe://"#
    /// );
    /// ```
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !self.verify_peer {
            return Err(ConfigError::new(
                "tls.verify_peer",
                "must be true: mutual TLS without peer verification authenticates no one; \
                 issue the peers' certificates from the configured CA instead",
            ));
        }
        if !self.watch_interval.is_zero() && self.watch_interval < Duration::from_millis(10) {
            return Err(ConfigError::new(
                "tls.watch_interval",
                format!("{:?} is below 10ms", self.watch_interval),
            ));
        }
        self.caller_policy()?;
        if let Some(template) = &self.peer_identity {
            template::check(template)?;
            if self.trust_system_roots {
                return Err(ConfigError::new(
                    "tls.trust_system_roots",
                    "cannot be combined with tls.peer_identity: only the mesh CA may \
                     vouch for workload identities",
                ));
            }
        }
        Ok(())
    }

    /// The server side's allow-list of callers ([`TlsConfig::allowed_callers`]),
    /// `None` when empty. A refused entry is named by its index
    /// (`tls.allowed_callers[2]`).
    pub fn caller_policy(&self) -> Result<Option<IdentityPolicy>, ConfigError> {
        if self.allowed_callers.is_empty() {
            return Ok(None);
        }
        let mut policy = IdentityPolicy::new();
        for (i, entry) in self.allowed_callers.iter().enumerate() {
            let key = || format!("tls.allowed_callers[{i}]");
            // Named by its key, the entry said once.
            let invalid = |reason: &str| ConfigError::new(key(), format!("{entry:?}: {reason}"));
            policy = if entry == "*" {
                IdentityPolicy::any()
            } else if let Some(domain) = entry
                .strip_prefix("spiffe://")
                .and_then(|d| d.strip_suffix("/*"))
            {
                // Validated as the trust domain of a SPIFFE ID.
                let id = format!("spiffe://{domain}")
                    .parse::<SpiffeId>()
                    .map_err(|e| invalid(e.reason()))?;
                if !id.path().is_empty() {
                    // Read as its trust domain, it would admit far more
                    // than it says.
                    return Err(ConfigError::new(
                        key(),
                        format!(
                            "{entry:?}: a wildcard covers a whole trust domain only \
                             (spiffe://{}/*); list exact SPIFFE IDs for anything narrower",
                            id.trust_domain()
                        ),
                    ));
                }
                policy
                    .allow_trust_domain(id.trust_domain())
                    .map_err(|e| invalid(e.reason()))?
            } else {
                policy.allow(entry.parse::<SpiffeId>().map_err(|e| invalid(e.reason()))?)
            };
        }
        Ok(Some(policy))
    }

    /// The identity `service` must present when called: the
    /// [`TlsConfig::peer_identity`] template with `{service}` replaced by
    /// `service`, or `None` when no template is set (servers are then
    /// verified by name). The name is inserted as given; it must be one
    /// SPIFFE path segment (ASCII letters, digits, `.`, `-`, `_`), so a
    /// name can never reach into another part of the ID.
    ///
    /// ```
    /// let mut config = mesh_tls::TlsConfig::new("tls.crt", "tls.key", "ca.crt");
    /// config.peer_identity = Some("spiffe://dc1.consul/ns/default/dc/dc1/svc/{service}".to_owned());
    /// let id = config.peer_identity_for("billing")?.expect("a template is set");
    /// assert_eq!(id.as_str(), "spiffe://dc1.consul/ns/default/dc/dc1/svc/billing");
    /// let err = config.peer_identity_for("billing/admin").unwrap_err();
    /// assert_eq!(err.key(), "tls.peer_identity");
    /// # Ok::<(), mesh_core::ConfigError>(())
    /// ```
    pub fn peer_identity_for(&self, service: &str) -> Result<Option<SpiffeId>, ConfigError> {
        let Some(template) = &self.peer_identity else {
            return Ok(None);
        };
        template::expand(template, service).map(Some)
    }

    /// Loads the files, and starts watching them if configured (which needs
    /// a tokio runtime: an error otherwise). A refused configuration is
    /// [`TlsError::Config`] (`tls.enabled` when off, or what
    /// [`TlsConfig::validate`] refuses); files that cannot be read or used
    /// are the other [`TlsError`]s, naming the file.
    pub fn credentials(&self) -> Result<Credentials, TlsError> {
        if !self.enabled {
            return Err(ConfigError::new(
                "tls.enabled",
                "mutual TLS is disabled; check `enabled` before loading credentials",
            )
            .into());
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

    /// The client side for calls to `service`: servers must present the
    /// identity [`TlsConfig::peer_identity_for`] gives, or are verified by
    /// name when no template is set. Give each service's client its own
    /// connection pool, so a connection verified for one service is never
    /// reused for another.
    pub fn client_for(
        &self,
        credentials: Credentials,
        service: &str,
    ) -> Result<ClientTls, TlsError> {
        self.client_expecting(credentials, self.peer_identity_for(service)?)
    }

    /// The client side, accepting only servers that present exactly
    /// `identity` (chained to the CA) when it is `Some`, else verifying
    /// servers by name (and trusting the system roots when
    /// [`TlsConfig::trust_system_roots`] is set). Plaintext is refused.
    pub fn client_expecting(
        &self,
        credentials: Credentials,
        identity: Option<SpiffeId>,
    ) -> Result<ClientTls, TlsError> {
        self.client_builder(credentials, identity)?.build()
    }

    /// The builder behind [`TlsConfig::client_expecting`], for settings
    /// the configuration does not hold (such as
    /// [`crate::ClientTlsBuilder::allow_plaintext`] for a route configured
    /// as plaintext). Refused only as [`TlsConfig::validate`] refuses;
    /// [`ClientTlsBuilder::build`] may still fail (system roots that
    /// cannot be loaded).
    pub fn client_builder(
        &self,
        credentials: Credentials,
        identity: Option<SpiffeId>,
    ) -> Result<ClientTlsBuilder, ConfigError> {
        self.validate()?;
        let builder = ClientTls::builder(credentials).trust_system_roots(self.trust_system_roots);
        Ok(match identity {
            Some(identity) => builder.expect_identity(identity),
            None => builder,
        })
    }

    /// The client side for a configuration without
    /// [`TlsConfig::peer_identity`]: servers verified by name. With a
    /// template set, refused (naming `tls.peer_identity`): every
    /// destination has its own identity, so build each service's client
    /// with [`TlsConfig::client_for`].
    pub fn client(&self, credentials: Credentials) -> Result<ClientTls, TlsError> {
        if self.peer_identity.is_some() {
            return Err(ConfigError::new(
                "tls.peer_identity",
                "is a template per destination service: build each service's client \
                 with TlsConfig::client_for(credentials, service)",
            )
            .into());
        }
        self.client_expecting(credentials, None)
    }

    /// The server side: callers admitted by [`TlsConfig::allowed_callers`]
    /// when set, else any certificate the CA signed.
    pub fn server(&self, credentials: Credentials) -> Result<ServerTls, TlsError> {
        let builder = ServerTls::builder(credentials);
        match self.caller_policy()? {
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
        let err = config.validate().unwrap_err();
        assert_eq!(err.key(), "tls.verify_peer", "{err}");
        assert!(err.reason().starts_with("must be true"), "{err}");
        let mut config = TlsConfig::new("c", "k", "a");
        config.allowed_callers = vec!["spiffe://ok.local/*".into(), "http://nope".into()];
        let err = config.validate().unwrap_err();
        assert_eq!(err.key(), "tls.allowed_callers[1]", "{err}");
        assert_eq!(
            err.to_string(),
            "invalid configuration: tls.allowed_callers[1]: \"http://nope\": \
             must start with spiffe://"
        );
        config.allowed_callers = vec!["spiffe://Bad Domain/*".into()];
        let err = config.validate().unwrap_err();
        assert_eq!(err.key(), "tls.allowed_callers[0]", "{err}");
        assert!(err.reason().contains("trust domain"), "{err}");
        // A path wildcard is not silently widened to its trust domain.
        config.allowed_callers = vec!["spiffe://cluster.local/ns/ops/*".into()];
        let err = config.validate().unwrap_err();
        assert_eq!(err.key(), "tls.allowed_callers[0]", "{err}");
        assert!(err.reason().contains("whole trust domain only"), "{err}");
        let mut config = TlsConfig::new("c", "k", "a");
        config.watch_interval = Duration::from_millis(1);
        let err = config.validate().unwrap_err();
        assert_eq!(err.key(), "tls.watch_interval", "{err}");
        assert!(err.reason().contains("below 10ms"), "{err}");
    }

    #[test]
    fn the_old_single_allow_list_is_refused_by_name() {
        let err = parse(
            r#"{"cert_path": "c", "key_path": "k", "ca_path": "a",
                "allowed_identities": ["spiffe://cluster.local/*"]}"#,
        )
        .unwrap_err();
        assert!(err.to_string().contains("allowed_identities"), "{err}");
    }

    #[test]
    fn peer_identity_is_expanded_only_when_set() {
        let mut config = TlsConfig::new("c", "k", "a");
        assert_eq!(config.peer_identity_for("users").unwrap(), None);
        config.peer_identity = Some("spiffe://cluster.local/ns/default/sa/{service}".to_owned());
        let id = config.peer_identity_for("users").unwrap();
        assert_eq!(
            id.map(|id| id.to_string()).as_deref(),
            Some("spiffe://cluster.local/ns/default/sa/users")
        );
    }

    #[test]
    fn bad_peer_identity_templates_are_named() {
        for (template, says) in [
            ("https://cluster.local/ns/default/sa/{service}", "spiffe://"),
            ("spiffe://cluster.local/ns/default/sa/users", "{service}"),
            ("spiffe://{service}.local/ns/default", "{service}"),
            (
                "spiffe://cluster.local/ns/{namespace}/sa/{service}",
                "placeholder",
            ),
            ("spiffe://Cluster.local/sa/{service}", "trust domain"),
            ("spiffe://cluster.local//sa/{service}", "path segments"),
        ] {
            let mut config = TlsConfig::new("c", "k", "a");
            config.peer_identity = Some(template.to_owned());
            let err = config.validate().unwrap_err();
            assert_eq!(err.key(), "tls.peer_identity", "{template}: {err}");
            assert!(err.reason().contains(says), "{template}: {err}");
            let err = err.to_string();
            assert!(
                err.starts_with("invalid configuration: tls.peer_identity: "),
                "{template}: {err}"
            );
            // Said once: neither label nor key is repeated inside the reason.
            assert_eq!(err.matches("invalid configuration").count(), 1, "{err}");
            assert_eq!(err.matches("tls.peer_identity").count(), 1, "{err}");
            assert!(!err.contains("SPIFFE ID \""), "{err}");
        }
        let mut config = TlsConfig::new("c", "k", "a");
        config.peer_identity = Some("spiffe://cluster.local/sa/{service}".to_owned());
        config.trust_system_roots = true;
        let err = config.validate().unwrap_err();
        assert_eq!(err.key(), "tls.trust_system_roots", "{err}");
        assert!(err.reason().contains("tls.peer_identity"), "{err}");
    }
}
