//! [`KubernetesDnsRegistry`]: instances from Kubernetes DNS.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::rr::RData;
use hickory_resolver::TokioResolver;
use mesh_core::{ConfigError, Endpoint, EndpointSet, ServiceName, Weight};

use crate::registry::{BoxFuture, BoxStream, DiscoveryError, Registry};

/// Which port an instance is reached on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PortSource {
    /// A/AAAA records, all on this port.
    Fixed(u16),
    /// SRV records of this named port and protocol (`http`, `tcp`).
    Srv {
        /// The port's name in the Service spec.
        name: String,
        /// `tcp` or `udp`.
        protocol: String,
    },
}

/// Services from Kubernetes DNS.
///
/// Per the Kubernetes DNS specification, a headless service
/// `<service>.<namespace>.svc.<zone>` has one A (or AAAA) record per ready
/// pod, and `_<port>._<proto>.<service>.<namespace>.svc.<zone>` one SRV
/// record per pod and named port. This registry reads either: the A/AAAA
/// records with a port you give, or the SRV records (ports, priorities and
/// weights from DNS, targets resolved to addresses). NXDOMAIN or an empty
/// answer means the service has no instances, not an error (a
/// [`DiscoverLayer`](crate::DiscoverLayer) takes such a *first* answer for
/// a service it never saw as "unknown service" and follows nothing). A watch
/// re-resolves when the records' TTL runs out, kept within configured
/// bounds.
#[derive(Clone)]
pub struct KubernetesDnsRegistry {
    resolver: Arc<TokioResolver>,
    nameserver: Option<SocketAddr>,
    namespace: String,
    zone: String,
    port: PortSource,
    min_refresh: Duration,
    max_refresh: Duration,
}

impl std::fmt::Debug for KubernetesDnsRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubernetesDnsRegistry")
            .field("namespace", &self.namespace)
            .field("zone", &self.zone)
            .field("port", &self.port)
            .field("nameserver", &self.nameserver)
            .finish_non_exhaustive()
    }
}

/// Builds a [`KubernetesDnsRegistry`].
#[derive(Clone, Debug)]
pub struct KubernetesDnsRegistryBuilder {
    nameserver: Option<SocketAddr>,
    namespace: String,
    zone: String,
    port: PortSource,
    min_refresh: Duration,
    max_refresh: Duration,
}

impl KubernetesDnsRegistry {
    /// Starts configuring: namespace `default`, zone `cluster.local`, the
    /// system's name servers, re-resolution between 1 s and 30 s.
    pub fn builder(port: PortSource) -> KubernetesDnsRegistryBuilder {
        KubernetesDnsRegistryBuilder {
            nameserver: None,
            namespace: "default".into(),
            zone: "cluster.local".into(),
            port,
            min_refresh: Duration::from_secs(1),
            max_refresh: Duration::from_secs(30),
        }
    }

    fn name(&self, service: &ServiceName) -> String {
        format!("{service}.{}.svc.{}.", self.namespace, self.zone)
    }

    /// The set now, and how long the answer is good for.
    async fn lookup(
        &self,
        service: &ServiceName,
    ) -> Result<(EndpointSet, Duration), DiscoveryError> {
        let now = Instant::now();
        let mut endpoints = Vec::new();
        let valid_until = match &self.port {
            PortSource::Fixed(port) => match self.resolver.lookup_ip(self.name(service)).await {
                Ok(ips) => {
                    for ip in ips.iter() {
                        endpoints.push(Endpoint::builder(SocketAddr::new(ip, *port)).build());
                    }
                    Some(ips.valid_until())
                }
                Err(e) if e.is_no_records_found() || e.is_nx_domain() => None,
                Err(e) => {
                    return Err(DiscoveryError::Unavailable(format!(
                        "DNS {}: {e}",
                        self.name(service)
                    )))
                }
            },
            PortSource::Srv { name, protocol } => {
                let srv_name = format!("_{name}._{protocol}.{}", self.name(service));
                match self.resolver.srv_lookup(srv_name.as_str()).await {
                    Ok(lookup) => {
                        let records: Vec<_> = lookup
                            .answers()
                            .iter()
                            .filter_map(|r| match &r.data {
                                RData::SRV(srv) => {
                                    Some((srv.priority, srv.weight, srv.port, srv.target.clone()))
                                }
                                _ => None,
                            })
                            .collect();
                        // The lowest priority with an instance serves; the
                        // others are fallbacks (RFC 2782).
                        let mut priorities: Vec<u16> = records.iter().map(|r| r.0).collect();
                        priorities.sort_unstable();
                        priorities.dedup();
                        for serving in priorities {
                            for (priority, weight, port, target) in &records {
                                if *priority != serving {
                                    continue;
                                }
                                let ips = match self.resolver.lookup_ip(target.clone()).await {
                                    Ok(ips) => ips,
                                    // The pod behind the record is gone.
                                    Err(e) if e.is_no_records_found() || e.is_nx_domain() => {
                                        tracing::debug!(%target, "SRV target has no address; skipped");
                                        continue;
                                    }
                                    // Anything else (timeout, SERVFAIL) makes the
                                    // answer incomplete: fail, so the last good
                                    // set stays instead of a partial one.
                                    Err(e) => {
                                        return Err(DiscoveryError::Unavailable(format!(
                                            "DNS {target}: {e}"
                                        )))
                                    }
                                };
                                // SRV weight 0 means "rarely": the smallest
                                // weight there is.
                                let weight = Weight::new(u32::from(*weight)).unwrap_or(Weight::ONE);
                                for ip in ips.iter() {
                                    endpoints.push(
                                        Endpoint::builder(SocketAddr::new(ip, *port))
                                            .weight(weight)
                                            .build(),
                                    );
                                }
                            }
                            if !endpoints.is_empty() {
                                break;
                            }
                        }
                        Some(lookup.valid_until())
                    }
                    Err(e) if e.is_no_records_found() || e.is_nx_domain() => None,
                    Err(e) => {
                        return Err(DiscoveryError::Unavailable(format!("DNS {srv_name}: {e}")))
                    }
                }
            }
        };
        let ttl = valid_until.map_or(self.min_refresh, |until| {
            until.saturating_duration_since(now)
        });
        Ok((
            EndpointSet::new(service.clone(), endpoints),
            ttl.clamp(self.min_refresh, self.max_refresh),
        ))
    }
}

impl KubernetesDnsRegistryBuilder {
    /// Asks this name server (`127.0.0.1:5353`) instead of the system's.
    pub fn nameserver(mut self, address: SocketAddr) -> Self {
        self.nameserver = Some(address);
        self
    }
    /// The services' namespace.
    pub fn namespace(mut self, namespace: impl Into<String>) -> Self {
        self.namespace = namespace.into();
        self
    }
    /// The cluster's DNS zone; a trailing dot (`cluster.local.`) is
    /// accepted.
    pub fn zone(mut self, zone: impl Into<String>) -> Self {
        let zone = zone.into();
        self.zone = zone.strip_suffix('.').map(str::to_owned).unwrap_or(zone);
        self
    }
    /// Re-resolves no sooner than `min` and no later than `max`, whatever
    /// the records' TTL says.
    pub fn refresh_between(mut self, min: Duration, max: Duration) -> Self {
        self.min_refresh = min;
        self.max_refresh = max;
        self
    }

    /// Validates the settings and makes the resolver.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] naming the value at fault:
    /// `kubernetes_dns.namespace` (not a DNS label), `kubernetes_dns.zone`
    /// (not a DNS name), `kubernetes_dns.refresh_between`,
    /// `kubernetes_dns.port` (an SRV port without a name or with a
    /// protocol other than tcp or udp), or `kubernetes_dns.nameserver`
    /// when no name server is given and the system's configuration cannot
    /// be read (the resolver's error is kept as the cause).
    pub fn build(self) -> Result<KubernetesDnsRegistry, ConfigError> {
        if !is_dns_label(&self.namespace) {
            return Err(ConfigError::new(
                "kubernetes_dns.namespace",
                format!("{:?} is not a DNS label", self.namespace),
            ));
        }
        if !self.zone.split('.').all(is_dns_label) {
            return Err(ConfigError::new(
                "kubernetes_dns.zone",
                format!("{:?} is not a DNS name", self.zone),
            ));
        }
        if self.min_refresh.is_zero() || self.min_refresh > self.max_refresh {
            return Err(ConfigError::new(
                "kubernetes_dns.refresh_between",
                format!(
                    "{:?}..{:?} is not a range above 0",
                    self.min_refresh, self.max_refresh
                ),
            ));
        }
        if let PortSource::Srv { name, protocol } = &self.port {
            if name.is_empty() || !matches!(protocol.as_str(), "tcp" | "udp") {
                return Err(ConfigError::new(
                    "kubernetes_dns.port",
                    format!("SRV port {name:?}/{protocol:?}: a port name and tcp or udp"),
                ));
            }
        }
        let provider = TokioRuntimeProvider::default();
        let builder = match self.nameserver {
            Some(addr) => {
                let mut udp = ConnectionConfig::udp();
                udp.port = addr.port();
                let mut tcp = ConnectionConfig::tcp();
                tcp.port = addr.port();
                let server = NameServerConfig::new(addr.ip(), true, vec![udp, tcp]);
                TokioResolver::builder_with_config(
                    ResolverConfig::from_name_servers(vec![server]),
                    provider,
                )
            }
            None => TokioResolver::builder(provider).map_err(|e| {
                ConfigError::new("kubernetes_dns.nameserver", "no system DNS configuration")
                    .caused_by(e)
            })?,
        };
        let mut builder = builder;
        // Our own refresh follows the TTL; the resolver's cache must not
        // hold answers past it.
        builder.options_mut().cache_size = 0;
        let resolver = builder.build().map_err(|e| {
            ConfigError::new("kubernetes_dns.nameserver", "cannot make a resolver").caused_by(e)
        })?;
        Ok(KubernetesDnsRegistry {
            resolver: Arc::new(resolver),
            nameserver: self.nameserver,
            namespace: self.namespace,
            zone: self.zone,
            port: self.port,
            min_refresh: self.min_refresh,
            max_refresh: self.max_refresh,
        })
    }
}

impl Registry for KubernetesDnsRegistry {
    fn describe(&self) -> String {
        let servers = match self.nameserver {
            Some(addr) => format!("nameserver {addr}"),
            None => "system name servers".to_owned(),
        };
        format!(
            "kubernetes dns *.{}.svc.{} ({servers})",
            self.namespace, self.zone
        )
    }

    fn resolve(&self, service: &ServiceName) -> BoxFuture<Result<EndpointSet, DiscoveryError>> {
        let (this, service) = (self.clone(), service.clone());
        Box::pin(async move { this.lookup(&service).await.map(|(set, _)| set) })
    }

    fn watch(&self, service: &ServiceName) -> BoxStream<Result<EndpointSet, DiscoveryError>> {
        let (this, service) = (self.clone(), service.clone());
        crate::registry::watch_task(move |tx| async move {
            loop {
                let (answer, wait) = match this.lookup(&service).await {
                    Ok((set, ttl)) => (Ok(set), ttl),
                    Err(e) => (Err(e), this.min_refresh),
                };
                if tx.send(answer).await.is_err() {
                    return;
                }
                tokio::time::sleep(wait).await;
            }
        })
    }
}

/// One DNS label as Kubernetes names use them (RFC 1123): 1 to 63 letters,
/// digits or hyphens, not starting or ending with a hyphen.
fn is_dns_label(label: &str) -> bool {
    (1..=63).contains(&label.len())
        && label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        && !label.starts_with('-')
        && !label.ends_with('-')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn build(namespace: &str, zone: &str) -> Result<KubernetesDnsRegistry, ConfigError> {
        KubernetesDnsRegistry::builder(PortSource::Fixed(80))
            .namespace(namespace)
            .zone(zone)
            .build()
    }

    #[tokio::test]
    async fn names_are_validated_as_dns() {
        assert!(build("default", "cluster.local").is_ok());
        assert!(build("default", "cluster.local.").is_ok());
        let long = "a".repeat(64);
        for (namespace, zone) in [
            ("bad_ns", "cluster.local"),
            ("a.b", "cluster.local"),
            ("", "cluster.local"),
            ("-x", "cluster.local"),
            ("default", "a..b"),
            ("default", ""),
            ("default", long.as_str()),
        ] {
            let error = build(namespace, zone).expect_err("not DNS names");
            let key = match namespace {
                "default" => "kubernetes_dns.zone",
                _ => "kubernetes_dns.namespace",
            };
            assert_eq!(error.key(), key, "{namespace:?} / {zone:?}: {error}");
        }
    }
}
