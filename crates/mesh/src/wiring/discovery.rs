//! Discovery from configuration: the catalog every call resolves against
//! and the layer that resolves them, fed by the registry `[discovery]`
//! names.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use mesh_core::{ConfigError, EventBus};
use mesh_discover::{
    Catalog, ConsulRegistry, DiscoverLayer, FileRegistry, KubernetesDnsRegistry, PortSource,
    Registry, StaticRegistry,
};

use crate::config::{DiscoveryConfig, MeshConfig};

/// How long a service's first call waits for the registry's first answer.
const FIRST_RESOLVE: Duration = Duration::from_secs(5);

/// Discovery as the configuration chose it.
pub(crate) struct Discovery {
    /// The instances of every service known so far.
    pub(crate) catalog: Catalog,
    /// Resolves each call's service against the catalog.
    pub(crate) layer: DiscoverLayer,
    /// The Consul registry, when discovery is Consul's: the local service
    /// registers with it.
    pub(crate) consul: Option<ConsulRegistry>,
}

// === impl Discovery ===

impl Discovery {
    /// The discovery `[discovery]` describes, its events on `bus`.
    pub(crate) fn from_config(
        config: &MeshConfig,
        bus: &EventBus,
    ) -> Result<Discovery, ConfigError> {
        match &config.discovery {
            DiscoveryConfig::Static { services } => Self::fixed(services, bus),
            DiscoveryConfig::File { path, check_every } => {
                let registry = file_registry(path, *check_every)?;
                Ok(Self::following(Arc::new(registry), config, bus))
            }
            DiscoveryConfig::Consul { .. } => {
                let consul = consul_registry(&config.discovery)?;
                let mut discovery = Self::following(Arc::new(consul.clone()), config, bus);
                discovery.consul = Some(consul);
                Ok(discovery)
            }
            DiscoveryConfig::Kubernetes { .. } => {
                let registry = kubernetes_registry(&config.discovery)?;
                Ok(Self::following(Arc::new(registry), config, bus))
            }
        }
    }

    /// Fixed lists, known in full from the start.
    fn fixed(
        services: &BTreeMap<String, Vec<String>>,
        bus: &EventBus,
    ) -> Result<Discovery, ConfigError> {
        let mut builder = StaticRegistry::builder().events(bus.clone());
        for (service, entries) in services {
            builder = builder.service(service, entries.iter().cloned());
        }
        let catalog = builder
            .build()
            .map_err(|e| e.within("discovery."))?
            .catalog();
        Ok(Discovery {
            layer: DiscoverLayer::new(catalog.clone()),
            catalog,
            consul: None,
        })
    }

    /// A registry-backed catalog: services followed on their first call,
    /// which waits up to [`FIRST_RESOLVE`] for the registry's first answer.
    fn following(registry: Arc<dyn Registry>, config: &MeshConfig, bus: &EventBus) -> Discovery {
        let catalog = Catalog::new(bus.clone());
        let layer = DiscoverLayer::with_registry(catalog.clone(), registry, FIRST_RESOLVE);
        let layer = match config.max_staleness {
            Some(limit) => layer.max_staleness(limit),
            None => layer,
        };
        Discovery {
            catalog,
            layer,
            consul: None,
        }
    }
}

/// The discovery file at `path`, read once now: a missing or malformed
/// file fails the start, naming the file, instead of every first call.
fn file_registry(path: &Path, check_every: Option<Duration>) -> Result<FileRegistry, ConfigError> {
    let registry = FileRegistry::open(path).map_err(|e| e.within("discovery."))?;
    Ok(match check_every {
        Some(every) => registry.check_every(every),
        None => registry,
    })
}

/// Consul's health API, as a `kind = "consul"` section describes it.
fn consul_registry(discovery: &DiscoveryConfig) -> Result<ConsulRegistry, ConfigError> {
    let DiscoveryConfig::Consul {
        url,
        token,
        datacenter,
        tags,
        max_error_backoff,
        hostname_lookup_timeout,
        ..
    } = discovery
    else {
        return Err(ConfigError::new("discovery.kind", "not consul"));
    };
    let mut builder = ConsulRegistry::builder(url.clone());
    if let Some(token) = token {
        builder = builder.token(token.clone());
    }
    if let Some(dc) = datacenter {
        builder = builder.datacenter(dc.clone());
    }
    for tag in tags {
        builder = builder.tag(tag.clone());
    }
    if let Some(cap) = max_error_backoff {
        builder = builder.max_error_backoff(*cap);
    }
    if let Some(limit) = hostname_lookup_timeout {
        builder = builder.hostname_lookup_timeout(*limit);
    }
    // Named as the file names them.
    builder.build().map_err(|e| {
        e.renamed("consul.address", "discovery.url")
            .renamed("consul.", "discovery.")
    })
}

/// Where Kubernetes instances' ports come from: the fixed `port`, else
/// the SRV records of `port_name`.
fn port_source(port: Option<u16>, port_name: Option<&str>) -> PortSource {
    match (port, port_name) {
        (Some(port), _) => PortSource::Fixed(port),
        (None, Some(name)) => PortSource::Srv {
            name: name.to_owned(),
            protocol: "tcp".to_owned(),
        },
        // Refused by validation; 80 keeps this total.
        (None, None) => PortSource::Fixed(80),
    }
}

/// Kubernetes DNS for headless Services, as a `kind = "kubernetes"`
/// section describes it.
fn kubernetes_registry(discovery: &DiscoveryConfig) -> Result<KubernetesDnsRegistry, ConfigError> {
    let DiscoveryConfig::Kubernetes {
        port,
        port_name,
        namespace,
        zone,
        nameserver,
        resolver_timeout,
        resolver_attempts,
    } = discovery
    else {
        return Err(ConfigError::new("discovery.kind", "not kubernetes"));
    };
    let mut builder = KubernetesDnsRegistry::builder(port_source(*port, port_name.as_deref()));
    if let Some(ns) = namespace {
        builder = builder.namespace(ns);
    }
    if let Some(zone) = zone {
        builder = builder.zone(zone);
    }
    if let Some(addr) = nameserver {
        builder = builder.nameserver(*addr);
    }
    if let Some(limit) = resolver_timeout {
        builder = builder.resolver_timeout(*limit);
    }
    if let Some(attempts) = resolver_attempts {
        builder = builder.resolver_attempts(*attempts);
    }
    builder
        .build()
        .map_err(|e| e.renamed("kubernetes_dns.", "discovery."))
}
