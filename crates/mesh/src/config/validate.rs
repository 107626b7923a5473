//! [`MeshConfig::validate`]: what serde alone cannot check, one section at
//! a time, each error naming the key at fault.

use std::collections::BTreeMap;
use std::time::Duration;

use mesh_core::{ConfigError, ServiceName};

use super::{DiscoveryConfig, MeshConfig};

// === impl MeshConfig ===

impl MeshConfig {
    /// Checks what serde alone cannot; the error names the value.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.validate_names()?;
        self.validate_discovery()?;
        self.validate_timeouts()?;
        self.validate_replay_buffers()?;
        for service in self.services.keys() {
            self.method_policies_for(service)?;
        }
        self.validate_retries()?;
        self.validate_limits_and_splits()?;
        if self.event_capacity == 0 {
            return Err(ConfigError::new("event_capacity", "must be at least 1"));
        }
        self.validate_health()?;
        self.validate_tls()
    }

    /// The local service's name and the overridden services' names.
    fn validate_names(&self) -> Result<(), ConfigError> {
        ServiceName::new(&self.service.name)
            .map_err(|e| ConfigError::new("service.name", e.to_string()))?;
        for name in self.services.keys() {
            let what = || format!("services.{name}");
            let parsed =
                ServiceName::new(name).map_err(|e| ConfigError::new(what(), e.to_string()))?;
            // Names are matched in lower case: an upper-case key would
            // validate and then never apply.
            if parsed.as_str() != name {
                return Err(ConfigError::new(
                    what(),
                    format!("service names are lower case: write {parsed}"),
                ));
            }
        }
        Ok(())
    }

    /// `max_staleness` and the `[discovery]` section of its kind.
    fn validate_discovery(&self) -> Result<(), ConfigError> {
        if self.max_staleness.is_some_and(|stale| stale.is_zero()) {
            return Err(ConfigError::new("max_staleness", "must be above zero"));
        }
        match &self.discovery {
            DiscoveryConfig::Static { services } => validate_static(services),
            DiscoveryConfig::File { .. } => Ok(()),
            DiscoveryConfig::Kubernetes {
                port: None,
                port_name: None,
                ..
            } => Err(ConfigError::new(
                "discovery",
                "kubernetes discovery needs port (A records) or port_name (SRV records)",
            )),
            DiscoveryConfig::Kubernetes { .. } => Ok(()),
            DiscoveryConfig::Consul { url, register, .. } => {
                validate_consul_url(url)?;
                if *register && (self.service.address.is_none() || self.service.port.is_none()) {
                    return Err(ConfigError::new(
                        "discovery.register",
                        "registration needs service.address and service.port",
                    ));
                }
                Ok(())
            }
        }
    }

    /// The per-attempt timeouts, the file's and each service's, the only
    /// ones: a breaker's call timeout is the per-attempt timeout here.
    fn validate_timeouts(&self) -> Result<(), ConfigError> {
        let breakers = self
            .services
            .iter()
            .filter_map(|(name, o)| Some((format!("services.{name}."), o.breaker.as_ref()?)));
        for (at, breaker) in self
            .breaker
            .iter()
            .map(|b| (String::new(), b))
            .chain(breakers)
        {
            if breaker.call_timeout().is_some() {
                return Err(ConfigError::new(
                    format!("{at}breaker.call_timeout"),
                    format!(
                        "an attempt's time limit is `{at}timeout`, which the breaker counts \
                         against a slow endpoint; write it there and remove call_timeout \
                         (in code, BreakerConfig's presets set one: clear it with \
                         BreakerConfigBuilder::no_call_timeout)"
                    ),
                ));
            }
        }
        let overridden = self
            .services
            .iter()
            .map(|(name, o)| (format!("services.{name}.timeout"), o.timeout));
        let timeouts = std::iter::once(("timeout".to_owned(), self.timeout)).chain(overridden);
        for (what, timeout) in timeouts {
            let Some(t) = timeout else { continue };
            if t.is_zero() || t > Duration::from_secs(3600) {
                return Err(ConfigError::new(what, format!("{t:?} is outside (0, 1h]")));
            }
        }
        Ok(())
    }

    /// The replay buffers, the file's and each service's: each streamed
    /// call may hold that much, so it is bounded (0 is allowed: streamed
    /// bodies are then never retried).
    fn validate_replay_buffers(&self) -> Result<(), ConfigError> {
        let overridden = self
            .services
            .iter()
            .map(|(name, o)| (format!("services.{name}.replay_buffer"), o.replay_buffer));
        let buffers = std::iter::once(("replay_buffer".to_owned(), self.replay_buffer));
        for (what, buffer) in buffers.chain(overridden) {
            match buffer {
                Some(bytes) if bytes > MeshConfig::MAX_REPLAY_BUFFER => {
                    return Err(ConfigError::new(
                        what,
                        format!(
                            "{bytes} bytes is more than the {} a call may keep",
                            MeshConfig::MAX_REPLAY_BUFFER
                        ),
                    ))
                }
                _ => continue,
            }
        }
        Ok(())
    }

    /// The retry settings, the file's and each service's, against the
    /// timeout their attempts get.
    fn validate_retries(&self) -> Result<(), ConfigError> {
        if let Some(retry) = &self.retry {
            retry.build(self.timeout_for(""))?;
        }
        for (name, o) in &self.services {
            let Some(retry) = &o.retry else { continue };
            retry
                .build(self.timeout_for(name))
                .map_err(|e| e.within(&format!("services.{name}.")))?;
        }
        Ok(())
    }

    /// The limits, the file's and each service's, and each service's
    /// canary split and fallback.
    fn validate_limits_and_splits(&self) -> Result<(), ConfigError> {
        if let Some(limits) = &self.limits {
            limits.validate("limits")?;
        }
        for (name, o) in &self.services {
            crate::split::validate_split(name, &o.split, &self.services)?;
            if let Some(limits) = &o.limits {
                limits.validate(&format!("services.{name}.limits"))?;
            }
            if let Some(fallback) = &o.fallback {
                let what = format!("services.{name}.fallback");
                fallback.validate(&what)?;
                if o.protocol == super::Protocol::H2c && fallback.answers() {
                    return Err(ConfigError::new(
                        what,
                        "a gRPC (h2c) service cannot be answered with a kept or fixed HTTP \
                         body (gRPC reads its status from trailers): answer in code with \
                         MeshClientBuilder::fallback",
                    ));
                }
            }
        }
        Ok(())
    }

    /// `[health]` and `[upstream_health]`.
    fn validate_health(&self) -> Result<(), ConfigError> {
        if let Some(health) = &self.health {
            health.validate()?;
        }
        let Some(upstream) = &self.upstream_health else {
            return Ok(());
        };
        // Named as the file names it.
        upstream
            .validate()
            .map_err(|e| e.renamed("health.upstream", "upstream_health"))
    }

    /// `[tls]`, and the identities called services must present.
    fn validate_tls(&self) -> Result<(), ConfigError> {
        if let Some(tls) = &self.tls {
            tls.validate()?;
        }
        let identities = self.identities()?;
        let Some(tls) = self.tls.as_ref().filter(|t| t.enabled) else {
            return Ok(());
        };
        if tls.trust_system_roots {
            return Err(ConfigError::new(
                "tls.trust_system_roots",
                "cannot be used by MeshClient, which verifies every called service by its \
                 SPIFFE identity, and only the mesh CA may vouch for those; system roots are \
                 for a mesh-tls client built by hand that verifies servers by name",
            ));
        }
        if tls.peer_identity.is_none() && identities.is_empty() {
            return Err(ConfigError::new(
                "tls.peer_identity",
                "required with mutual TLS on: the SPIFFE ID each called service must present, \
                 such as \"spiffe://cluster.local/ns/default/sa/{service}\" (Kubernetes) or \
                 \"spiffe://dc1.consul/ns/default/dc/dc1/svc/{service}\" (Consul); without it \
                 any certificate of the mesh CA could answer for any service",
            ));
        }
        Ok(())
    }
}

/// Static discovery: each service's name, each entry an `ip:port`.
fn validate_static(services: &BTreeMap<String, Vec<String>>) -> Result<(), ConfigError> {
    for (name, entries) in services {
        ServiceName::new(name)
            .map_err(|e| ConfigError::new(format!("discovery.services.{name}"), e.to_string()))?;
        let bad = entries
            .iter()
            .enumerate()
            .find(|(_, entry)| entry.parse::<std::net::SocketAddr>().is_err());
        if let Some((i, entry)) = bad {
            return Err(ConfigError::new(
                format!("discovery.services.{name}[{i}]"),
                format!("{entry:?} is not ip:port"),
            ));
        }
    }
    Ok(())
}

/// Consul's address: an http URL without credentials in it. Its text is
/// quoted in no error: it may hold a password.
fn validate_consul_url(url: &str) -> Result<(), ConfigError> {
    // First, and by any '@' rather than a parser's idea of userinfo: a
    // password holding '/', '?' or '#' would end a parser's authority
    // early. The URL is printed (Debug, metrics, errors); a credential
    // belongs in `token`, which never is.
    let after_scheme = url.split_once("://").map_or(url, |(_, rest)| rest);
    if after_scheme.contains('@') {
        return Err(ConfigError::new(
            "discovery.url",
            "holds credentials (user:password@): give Consul's ACL token as `token`, \
             which is never printed",
        ));
    }
    if after_scheme.contains(['?', '#']) {
        return Err(ConfigError::new(
            "discovery.url",
            "holds a query or a fragment: Consul's address is http://host:port",
        ));
    }
    if url.starts_with("https://") {
        return Err(ConfigError::new(
            "discovery.url",
            "https to Consul needs a TLS connector, which a file cannot give: \
             talk to the local agent over http, or build the registry in code \
             (ConsulRegistryBuilder::connector)",
        ));
    }
    if !url.starts_with("http://") {
        return Err(ConfigError::new(
            "discovery.url",
            "is not an http URL (http://host:port)",
        ));
    }
    Ok(())
}
