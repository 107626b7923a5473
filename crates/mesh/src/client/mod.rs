//! [`MeshClient`]: the whole stack for one local service, built from
//! configuration.
//!
//! The client is wiring and a few jobs, one module each: building it
//! ([`MeshClientBuilder`], `start`), sending ([`CallOptions`], `send`),
//! the response body that keeps a call counted ([`MeshBody`]), the state
//! kept per destination service (`state`), its life after start
//! (`lifecycle`: registration, drain, shutdown) and its face as a
//! [`tower::Service`]. The parts it is wired from live in
//! [`crate::wiring`].

use std::sync::{Arc, Mutex, Weak};

use mesh_core::{ConfigError, EventBus, MeshEvent, Probe, ServiceName};
use mesh_discover::Catalog;
use mesh_health::{HealthCheckManager, ProbeReport};
use tokio::sync::broadcast;

use crate::config::MeshConfig;
use crate::metrics::MeshMetrics;
use crate::services::ServiceStates;
use crate::split::{Splits, Subset};
use crate::transport::Transports;
use crate::wiring::discovery::Discovery;
use crate::wiring::routes::{Route, Routes};

mod body;
mod builder;
mod error;
mod lifecycle;
mod options;
mod request_body;
mod send;
mod service;
mod start;
mod state;

pub use body::MeshBody;
pub use builder::MeshClientBuilder;
pub use error::StartError;
pub use options::CallOptions;
pub use request_body::RequestBody;
pub(crate) use request_body::SentBody;

/// A service mesh client for one local service (the design document's
/// `createServiceMeshClient("api-gateway")`): discovery, balancing,
/// circuit breaking, retries, timeouts and (optionally) mutual TLS on
/// every outgoing call, health probes for the service itself, metrics,
/// events, registration and graceful shutdown.
///
/// Calls go to a logical service by name (`client.get("users", "/api/users",
/// options)`), or as `http://users/api/users` requests through its
/// [`tower::Service`] implementation. Clones share everything.
///
/// ```no_run
/// # async fn run() -> Result<(), mesh_core::BoxError> {
/// let client = mesh::MeshClient::from_config(mesh::MeshConfig::load("mesh.toml")?).await?;
/// let response = client
///     .get("user-service", "/api/users", mesh::CallOptions::client_id("client-123"))
///     .await?;
/// println!("{}", response.status());
/// client.shutdown(std::time::Duration::from_secs(10)).await;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct MeshClient {
    inner: Arc<Inner>,
}

/// A client held weakly (by a Prometheus registry).
#[derive(Clone, Debug)]
pub(crate) struct WeakClient(Weak<Inner>);

impl WeakClient {
    /// The client, while a clone of it lives.
    pub(crate) fn upgrade(&self) -> Option<MeshClient> {
        self.0.upgrade().map(|inner| MeshClient { inner })
    }
}

/// Everything clones of a client share.
struct Inner {
    /// The configuration it was built from.
    config: MeshConfig,
    /// The local service's name.
    name: ServiceName,
    /// Where every layer's events go.
    bus: EventBus,
    /// The catalog calls resolve against, its layer, and Consul.
    discovery: Discovery,
    /// The canary splits in force, changeable at run time.
    splits: Arc<Splits>,
    /// Each service's stack of layers.
    routes: Routes,
    /// What the client keeps per destination service (limits, fallback,
    /// upstream checker), bounded.
    services: ServiceStates,
    /// The mutual TLS clients, for upstream probes over mutual TLS.
    transports: Transports,
    /// The calls in flight, and whether new ones are admitted.
    calls: lifecycle::Calls,
    /// Every call's outcome and latency, by service and endpoint.
    call_metrics: crate::call_metrics::CallMetrics,
    /// The local service's health manager, when configured.
    health: Option<HealthCheckManager>,
    /// Fallbacks written in code, by service.
    fallbacks: std::collections::HashMap<ServiceName, crate::fallback::FallbackFn>,
    /// The registration with Consul, while registered.
    registered: Mutex<Option<lifecycle::Registered>>,
    /// The client's mutual TLS credentials, while `[tls]` is on.
    tls: Option<mesh_tls::Credentials>,
}

// === impl MeshClient ===

impl std::fmt::Debug for MeshClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MeshClient")
            .field("service", &self.inner.name)
            .field("profile", &self.inner.config.profile)
            .finish_non_exhaustive()
    }
}

impl MeshClient {
    /// The local service's name.
    pub fn service_name(&self) -> &ServiceName {
        &self.inner.name
    }

    /// The configuration it was built from.
    pub fn config(&self) -> &MeshConfig {
        &self.inner.config
    }

    /// A [`mesh_health::HealthLayer`] serving this client's probes on the
    /// configured paths (`[health] paths`), for the service's own router:
    /// the status only, unless `[health] details = true`.
    pub fn health_layer(&self) -> Option<mesh_health::HealthLayer> {
        let health = self.inner.health.as_ref()?;
        match &self.inner.config.health {
            // Validated at start, so the paths are good.
            Some(config) => config.layer(health.clone()).ok(),
            None => Some(mesh_health::HealthLayer::new(health.clone())),
        }
    }

    /// The catalog every call resolves against.
    pub fn catalog(&self) -> &Catalog {
        &self.inner.discovery.catalog
    }

    /// The health manager of the local service, when `health` is
    /// configured (register checks through its builder before building
    /// the client, or serve its probes with [`mesh_health::HealthLayer`]).
    pub fn health(&self) -> Option<&HealthCheckManager> {
        self.inner.health.as_ref()
    }

    /// Splits `service`'s calls between subsets of its instances by weight
    /// (a canary: `v1` 95, `v2` 5), from the next call on, without a
    /// restart. A subset without instances gets nothing (its weight goes
    /// to the others); with no subsets, calls go to every instance again.
    /// Each subset is balanced, broken and reported as `service.subset`. A
    /// call with an affinity key always lands in the same subset.
    pub fn set_split(&self, service: &str, subsets: Vec<Subset>) -> Result<(), ConfigError> {
        let name = ServiceName::new(service)
            .map_err(|e| ConfigError::new(format!("split of {service:?}"), e))?;
        crate::split::validate_split(service, &subsets, &self.inner.config.services)?;
        self.inner.splits.set(name, subsets);
        Ok(())
    }

    /// The split in force for `service`, if any.
    pub fn split(&self, service: &str) -> Option<Vec<Subset>> {
        let name = ServiceName::new(service).ok()?;
        self.inner.splits.get(&name)
    }

    /// The liveness report (`None` when the client has no health manager:
    /// no `[health]` section and no checks).
    pub fn liveness(&self) -> Option<ProbeReport> {
        self.inner
            .health
            .as_ref()
            .map(|h| h.report(Probe::Liveness))
    }

    /// The readiness report (`None` without a health manager); unhealthy
    /// once shutdown has begun.
    pub fn readiness(&self) -> Option<ProbeReport> {
        self.inner
            .health
            .as_ref()
            .map(|h| h.report(Probe::Readiness))
    }

    /// A subscription to every [`MeshEvent`]: breaker transitions, retries,
    /// discovery changes, health, TLS, and one `RequestCompleted` per call.
    /// Publishing never blocks a call: a subscriber that falls more than
    /// `event_capacity` events behind loses the oldest ones and is told how
    /// many with `RecvError::Lagged`.
    pub fn subscribe(&self) -> broadcast::Receiver<MeshEvent> {
        self.inner.bus.subscribe()
    }

    /// Counters from every layer, for the design document's `getMetrics()`.
    pub fn metrics(&self) -> MeshMetrics {
        crate::metrics::collect(self)
    }

    /// Every metric of [`crate::prometheus`] (calls by outcome, latency
    /// histograms, the layers' counters, health checks, TLS) in
    /// Prometheus's text format, for a `/metrics` endpoint: serve it with
    /// the [`crate::prometheus::CONTENT_TYPE`] content type. Safe at any
    /// time, during and after shutdown included.
    ///
    /// ```no_run
    /// # async fn run(client: mesh::MeshClient) {
    /// let text = client.prometheus();
    /// assert!(text.contains("# TYPE mesh_requests_total counter"));
    /// # }
    /// ```
    pub fn prometheus(&self) -> String {
        let mut registry = prometheus_client::registry::Registry::default();
        self.register_prometheus(&mut registry);
        crate::prometheus::render(&registry)
    }

    /// Exports this client's metrics (those of [`MeshClient::prometheus`])
    /// into `registry`, beside your own, read at each scrape. The registry
    /// holds the client weakly: once every clone is dropped it exports
    /// nothing of it.
    ///
    /// ```no_run
    /// # async fn run(client: mesh::MeshClient) {
    /// use prometheus_client::registry::Registry;
    ///
    /// let mut registry = Registry::default();
    /// client.register_prometheus(&mut registry);
    /// let mut text = String::new();
    /// prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
    /// # }
    /// ```
    pub fn register_prometheus(&self, registry: &mut prometheus_client::registry::Registry) {
        let client = WeakClient(Arc::downgrade(&self.inner));
        registry.register_collector(Box::new(crate::prometheus::ClientCollector { client }));
    }

    /// The call series for a scrape; those of endpoints discovery no
    /// longer lists leave once shown, except once shutdown has begun (a
    /// last scrape then still finds every count).
    pub(crate) fn scrape_calls(&self) -> Vec<crate::call_metrics::SeriesSnapshot> {
        let catalog = &self.inner.discovery.catalog;
        let closed = self.inner.calls.closed();
        self.inner
            .call_metrics
            .scrape(|service, endpoint| match endpoint {
                _ if closed => true,
                Some(endpoint) => catalog
                    .get(service.as_str())
                    .is_some_and(|set| set.get(endpoint).is_some()),
                None => self.knows(service),
            })
    }

    /// Every route's layers, for Prometheus.
    pub(crate) fn route_layers(&self) -> Vec<crate::prometheus::Layers> {
        self.routes()
            .into_iter()
            .map(|(name, route)| {
                crate::prometheus::Layers::new(name)
                    .balance(&route.balance)
                    .breaker(&route.breaker)
                    .retry(&route.retry)
            })
            .collect()
    }

    /// Every route by name (`*` for the default), for metrics.
    pub(crate) fn routes(&self) -> Vec<(String, Route)> {
        self.inner.routes.all()
    }

    /// How many calls are in flight, response bodies included.
    pub(crate) fn in_flight(&self) -> usize {
        self.inner.calls.in_flight()
    }

    /// The client's mutual TLS credentials, while `[tls]` is on.
    pub(crate) fn tls(&self) -> Option<&mesh_tls::Credentials> {
        self.inner.tls.as_ref()
    }

    /// The server side of this service's mutual TLS, for its own axum or
    /// hyper server (`server_tls.serve(listener, router)`): the client's
    /// rotating credentials, admitting only the callers `[tls]
    /// allowed_callers` lists (any certificate of the CA when the list is
    /// empty). `None` while `[tls]` is off.
    pub fn server_tls(&self) -> Result<Option<mesh_tls::ServerTls>, ConfigError> {
        let (Some(config), Some(credentials)) = (&self.inner.config.tls, &self.inner.tls) else {
            return Ok(None);
        };
        config
            .server(credentials.clone())
            .map(Some)
            .map_err(crate::wiring::transport::tls_error)
    }
}
