//! Discovery from configuration: the catalog every call resolves against
//! and the layer that resolves them, fed by the registry `[discovery]`
//! names.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use mesh_core::{ConfigError, EventBus, Secret};
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
            DiscoveryConfig::Consul {
                url,
                token,
                datacenter,
                tags,
                ..
            } => {
                let consul = consul_registry(url, token.as_ref(), datacenter.as_deref(), tags)?;
                let mut discovery = Self::following(Arc::new(consul.clone()), config, bus);
                discovery.consul = Some(consul);
                Ok(discovery)
            }
            DiscoveryConfig::Kubernetes {
                port,
                port_name,
                namespace,
                zone,
                nameserver,
            } => {
                let source = port_source(*port, port_name.as_deref());
                let registry = kubernetes_registry(
                    source,
                    namespace.as_deref(),
                    zone.as_deref(),
                    *nameserver,
                )?;
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

/// Consul's health API at `url`.
fn consul_registry(
    url: &str,
    token: Option<&Secret>,
    datacenter: Option<&str>,
    tags: &[String],
) -> Result<ConsulRegistry, ConfigError> {
    let mut builder = ConsulRegistry::builder(url.to_owned());
    if let Some(token) = token {
        builder = builder.token(token.clone());
    }
    if let Some(dc) = datacenter {
        builder = builder.datacenter(dc.to_owned());
    }
    for tag in tags {
        builder = builder.tag(tag.clone());
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

/// Kubernetes DNS for headless Services.
fn kubernetes_registry(
    source: PortSource,
    namespace: Option<&str>,
    zone: Option<&str>,
    nameserver: Option<SocketAddr>,
) -> Result<KubernetesDnsRegistry, ConfigError> {
    let mut builder = KubernetesDnsRegistry::builder(source);
    if let Some(ns) = namespace {
        builder = builder.namespace(ns);
    }
    if let Some(zone) = zone {
        builder = builder.zone(zone);
    }
    if let Some(addr) = nameserver {
        builder = builder.nameserver(addr);
    }
    builder
        .build()
        .map_err(|e| e.renamed("kubernetes_dns.", "discovery."))
}
