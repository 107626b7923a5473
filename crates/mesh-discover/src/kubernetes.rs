//! [`KubernetesDnsRegistry`]: instances from Kubernetes DNS.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::rr::{Name, RData};
use hickory_resolver::TokioResolver;
use mesh_core::{ConfigError, Endpoint, EndpointSet, ServiceName};

use crate::kubernetes_lookup::{srv_endpoints, Dns, SrvRecord};
use crate::registry::{BoxFuture, BoxStream, DiscoveryError, Registry};

/// How long one DNS query may take by default.
const DEFAULT_RESOLVER_TIMEOUT: Duration = Duration::from_secs(2);
/// How many times a DNS query is tried by default.
const DEFAULT_RESOLVER_ATTEMPTS: u8 = 2;

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
///
/// A DNS outage is an error within a bound you set: each query is tried
/// [`resolver_attempts`](KubernetesDnsRegistryBuilder::resolver_attempts)
/// times, each attempt given
/// [`resolver_timeout`](KubernetesDnsRegistryBuilder::resolver_timeout),
/// and a whole resolution fails once `timeout x attempts` has passed (4 s
/// by default), so the catalog keeps the last good set and reports the
/// failure instead of the watch waiting on DNS.
#[derive(Clone)]
pub struct KubernetesDnsRegistry {
    dns: Dns,
    resolver_timeout: Duration,
    resolver_attempts: u8,
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
            .field("resolver_timeout", &self.resolver_timeout)
            .field("resolver_attempts", &self.resolver_attempts)
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
    resolver_timeout: Duration,
    resolver_attempts: u8,
}

impl KubernetesDnsRegistry {
    /// Starts configuring: namespace `default`, zone `cluster.local`, the
    /// system's name servers, re-resolution between 1 s and 30 s, each DNS
    /// query given 2 s and tried twice.
    pub fn builder(port: PortSource) -> KubernetesDnsRegistryBuilder {
        KubernetesDnsRegistryBuilder {
            nameserver: None,
            namespace: "default".into(),
            zone: "cluster.local".into(),
            port,
            min_refresh: Duration::from_secs(1),
            max_refresh: Duration::from_secs(30),
            resolver_timeout: DEFAULT_RESOLVER_TIMEOUT,
            resolver_attempts: DEFAULT_RESOLVER_ATTEMPTS,
        }
    }

    fn name(&self, service: &ServiceName) -> String {
        format!("{service}.{}.svc.{}.", self.namespace, self.zone)
    }

    /// The set now, and how long the answer is good for; an error once
    /// the resolution has taken [`Dns::bound`].
    async fn lookup(
        &self,
        service: &ServiceName,
    ) -> Result<(EndpointSet, Duration), DiscoveryError> {
        let bound = self.dns.bound();
        tokio::time::timeout(bound, self.lookup_unbounded(service))
            .await
            .map_err(|_| {
                DiscoveryError::Unavailable(format!(
                    "DNS {}: no complete answer within {bound:?} ({})",
                    self.name(service),
                    self.dns.limits()
                ))
            })?
    }

    async fn lookup_unbounded(
        &self,
        service: &ServiceName,
    ) -> Result<(EndpointSet, Duration), DiscoveryError> {
        let now = Instant::now();
        let (endpoints, valid_until) = match &self.port {
            PortSource::Fixed(port) => {
                let name = self.name(service);
                let answer = self
                    .dns
                    .ask(&name, || self.dns.resolver().lookup_ip(name.as_str()))
                    .await?;
                match answer {
                    Some(ips) => (
                        ips.iter()
                            .map(|ip| Endpoint::builder(SocketAddr::new(ip, *port)).build())
                            .collect(),
                        Some(ips.valid_until()),
                    ),
                    None => (Vec::new(), None),
                }
            }
            PortSource::Srv { name, protocol } => {
                let srv_name = format!("_{name}._{protocol}.{}", self.name(service));
                let answer = self
                    .dns
                    .ask(&srv_name, || {
                        self.dns.resolver().srv_lookup(srv_name.as_str())
                    })
                    .await?;
                match answer {
                    Some(lookup) => {
                        let records: Vec<SrvRecord> = lookup
                            .answers()
                            .iter()
                            .filter_map(|r| match &r.data {
                                RData::SRV(srv) => Some((
                                    srv.priority,
                                    srv.weight,
                                    srv.port,
                                    Name::clone(&srv.target),
                                )),
                                _ => None,
                            })
                            .collect();
                        (
                            srv_endpoints(&self.dns, &records).await?,
                            Some(lookup.valid_until()),
                        )
                    }
                    None => (Vec::new(), None),
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
    /// How long one attempt of a DNS query may take (2 s by default),
    /// between 1 ms and 60 s. With
    /// [`resolver_attempts`](Self::resolver_attempts) it bounds how long a
    /// DNS outage goes unreported: a resolution fails after `timeout x
    /// attempts` (an SRV resolution included: its SRV query and then its
    /// targets, resolved concurrently, share that bound), the catalog
    /// keeps the last good set and reports the failure, and the watch
    /// tries again after the lower bound of
    /// [`refresh_between`](Self::refresh_between).
    ///
    /// ```
    /// use std::time::Duration;
    /// use mesh_discover::{KubernetesDnsRegistry, PortSource};
    /// // A DNS outage is an error within 500 ms x 3 = 1.5 s.
    /// let registry = KubernetesDnsRegistry::builder(PortSource::Fixed(8080))
    ///     .nameserver("127.0.0.1:5353".parse()?)
    ///     .resolver_timeout(Duration::from_millis(500))
    ///     .resolver_attempts(3)
    ///     .build()?;
    /// # let _ = registry;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn resolver_timeout(mut self, timeout: Duration) -> Self {
        self.resolver_timeout = timeout;
        self
    }
    /// How many times a DNS query is tried before the resolution fails (2
    /// by default), between 1 and 10. A timeout, a refused connection or a
    /// server failure is tried again; NXDOMAIN or no records is an answer
    /// (no instances) and is not. See
    /// [`resolver_timeout`](Self::resolver_timeout) for the bound they make
    /// together.
    pub fn resolver_attempts(mut self, attempts: u8) -> Self {
        self.resolver_attempts = attempts;
        self
    }

    /// Validates the settings and makes the resolver.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] naming the value at fault:
    /// `kubernetes_dns.namespace` (not a DNS label), `kubernetes_dns.zone`
    /// (not a DNS name), `kubernetes_dns.refresh_between`,
    /// `kubernetes_dns.resolver_timeout` (outside 1 ms to 60 s),
    /// `kubernetes_dns.resolver_attempts` (outside 1 to 10),
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
        if self.resolver_timeout < Duration::from_millis(1)
            || self.resolver_timeout > Duration::from_secs(60)
        {
            return Err(ConfigError::new(
                "kubernetes_dns.resolver_timeout",
                format!("{:?} is outside [1ms, 60s]", self.resolver_timeout),
            ));
        }
        if !(1..=10).contains(&self.resolver_attempts) {
            return Err(ConfigError::new(
                "kubernetes_dns.resolver_attempts",
                format!("{} is outside [1, 10]", self.resolver_attempts),
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
        // One attempt's limit; the attempts are ours (kubernetes_lookup).
        builder.options_mut().timeout = self.resolver_timeout;
        let resolver = builder.build().map_err(|e| {
            ConfigError::new("kubernetes_dns.nameserver", "cannot make a resolver").caused_by(e)
        })?;
        Ok(KubernetesDnsRegistry {
            dns: Dns::new(resolver, self.resolver_timeout, self.resolver_attempts),
            resolver_timeout: self.resolver_timeout,
            resolver_attempts: self.resolver_attempts,
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
    async fn resolver_limits_are_validated_naming_their_key() {
        let with = |timeout: Duration, attempts: u8| {
            KubernetesDnsRegistry::builder(PortSource::Fixed(80))
                .nameserver(SocketAddr::from(([127, 0, 0, 1], 53)))
                .resolver_timeout(timeout)
                .resolver_attempts(attempts)
                .build()
        };
        let ok = with(Duration::from_millis(200), 3).expect("valid");
        assert_eq!(ok.dns.bound(), Duration::from_millis(600));
        for timeout in [Duration::ZERO, Duration::from_secs(61)] {
            let err = with(timeout, 2).expect_err("out of range");
            assert_eq!(err.key(), "kubernetes_dns.resolver_timeout", "{err}");
        }
        for attempts in [0, 11] {
            let err = with(Duration::from_secs(1), attempts).expect_err("out of range");
            assert_eq!(err.key(), "kubernetes_dns.resolver_attempts", "{err}");
        }
        let defaults = KubernetesDnsRegistry::builder(PortSource::Fixed(80))
            .nameserver(SocketAddr::from(([127, 0, 0, 1], 53)))
            .build()
            .expect("valid");
        assert_eq!(defaults.dns.bound(), Duration::from_secs(4));
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
