//! [`DiscoveryConfig`]: where the instances of other services are found.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use mesh_core::Secret;
use serde::{Deserialize, Serialize};

/// Where the instances of other services are found.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum DiscoveryConfig {
    /// Fixed lists: service name to `ip:port` entries.
    Static {
        /// The lists.
        services: BTreeMap<String, Vec<String>>,
    },
    /// A JSON or TOML file of the same shape, watched for changes.
    File {
        /// The file (relative paths are from the configuration file).
        path: PathBuf,
        /// How often it is checked.
        #[serde(default, with = "humantime_serde")]
        check_every: Option<Duration>,
    },
    /// Consul's health API with blocking queries (`CONSUL_URL` overrides
    /// the address).
    Consul {
        /// `http://consul:8500`.
        url: String,
        /// ACL token: never printed (`Debug` and `Serialize` show
        /// `<redacted>`).
        #[serde(default)]
        token: Option<Secret>,
        /// Datacenter.
        #[serde(default)]
        datacenter: Option<String>,
        /// Only instances with all these tags.
        #[serde(default)]
        tags: Vec<String>,
        /// Register the local service with the agent (needs `service.address`
        /// and `service.port`), deregistered on shutdown.
        #[serde(default)]
        register: bool,
        /// The longest pause between queries while Consul fails (30 s by
        /// default).
        #[serde(default, with = "humantime_serde")]
        max_error_backoff: Option<Duration>,
        /// How long resolving an instance's hostname address may take (2 s
        /// by default).
        #[serde(default, with = "humantime_serde")]
        hostname_lookup_timeout: Option<Duration>,
    },
    /// Kubernetes DNS: the headless Service `<name>.<namespace>.svc.<zone>`
    /// (A/AAAA records with a fixed port, or SRV records for a named port).
    Kubernetes {
        /// The port every instance serves on (A/AAAA records).
        #[serde(default)]
        port: Option<u16>,
        /// A named port to look up with SRV records (`http`), when `port`
        /// is not given.
        #[serde(default)]
        port_name: Option<String>,
        /// The namespace (`default`).
        #[serde(default)]
        namespace: Option<String>,
        /// The cluster zone (`cluster.local`).
        #[serde(default)]
        zone: Option<String>,
        /// The DNS server (else the system's resolver configuration).
        #[serde(default)]
        nameserver: Option<std::net::SocketAddr>,
        /// How long one DNS query may take (2 s by default).
        #[serde(default, with = "humantime_serde")]
        resolver_timeout: Option<Duration>,
        /// How many times a query is tried (2 by default): a DNS outage is
        /// reported within `resolver_timeout` x `resolver_attempts`.
        #[serde(default)]
        resolver_attempts: Option<u8>,
    },
}
